"""The systolic engine's verify bench: GEMMs through the accelerator's AXI4-Lite bus, then
through the host driver on the simulated board.

The cocotb tests here run on the generated accelerator (``GATESMITH_CFG``, ``GATESMITH_SEED``):
GEMMs in every built dataflow (bit-exact against the golden model, shapes that are not multiples
of the array), with and without pauses on every AXI channel, back-to-back GEMMs, and the
engine's errors (a zero dimension, a dataflow not built) with the performance counters.
:func:`verify` is the engine's ``EngineSpec.verify`` entry: it runs them, then seeded random GEMMs
(random shapes around the array size and every product at the format's extremes) through
``gatesmith.host`` on the simulated board, each compared bit-exact with the golden model.
"""

import random
import time

import cocotb
import numpy as np
import torch
from cocotbext.axi import AxiResp

from gatesmith.generators.accel.regs import REG
from gatesmith.generators.engine import ENGINE_WINDOW_BASE, ENGINE_WINDOW_SIZE, ErrorCode
from gatesmith.generators.systolic import model
from gatesmith.generators.systolic.engine import window_layout
from gatesmith.generators.systolic.layout import os_operands, pack_words, unpack_acc, ws_operands
from gatesmith.host.systolic import gemm_instr
from gatesmith.tests.bench_axi import config, push, rd, seed, setup, wait_idle, wr_words


async def run_gemm(dut, master, df, a, b, scfg):
    lay = window_layout(scfg)
    base = ENGINE_WINDOW_BASE + config().engine_index("systolic") * ENGINE_WINDOW_SIZE
    if df == "is":
        ha, hb = b.t(), a.t()
    else:
        ha, hb = a, b
    hm, hk, hn = ha.shape[0], ha.shape[1], hb.shape[1]
    left, top = os_operands(ha, hb, scfg) if df == "os" else ws_operands(ha, hb, scfg)
    lw, tw, aw = lay["left"], lay["top"], lay["acc"]
    w = scfg.fmt.width
    await wr_words(master, base + 4 * lw.offset, pack_words(left, w, lw.width // 32, lw.stride))
    await wr_words(master, base + 4 * tw.offset, pack_words(top, w, tw.width // 32, tw.stride))
    await push(master, gemm_instr(df, hm, hk, hn))
    st = await wait_idle(dut, master)
    assert not st & 2, f"error {await rd(master, REG['ERROR']):#x}"
    rows = -(-hn // scfg.cols) * hm
    r = await master.read(base + 4 * aw.offset, 4 * rows * aw.stride)
    assert r.resp == AxiResp.OKAY
    res = unpack_acc(np.frombuffer(r.data, dtype="<u4"), hm, hn, scfg, aw.stride)
    return res.t() if df == "is" else res


@cocotb.test
@cocotb.parametrize(pause=[False, True])
async def gemms_every_dataflow(dut, pause):
    master = await setup(dut, pause=pause)
    scfg = config().engine("systolic")
    rng = random.Random(seed())
    g = torch.Generator().manual_seed(seed())
    fmt = scfg.fmt
    await master.write_dword(REG["CTRL"], 2)
    n_ops = 0
    for df in scfg.dataflows:
        for _ in range(2):
            m = rng.randint(1, 2 * scfg.rows + 1)
            k = rng.randint(1, 3 * scfg.rows)
            n = rng.randint(1, 2 * scfg.cols + 1)
            a = torch.randint(fmt.min, fmt.max + 1, (m, k), generator=g)
            b = torch.randint(fmt.min, fmt.max + 1, (k, n), generator=g)
            res = await run_gemm(dut, master, df, a, b, scfg)
            assert torch.equal(res, model.gemm(a, b, scfg)), (df, m, k, n)
            n_ops += 1
    assert await rd(master, REG["RETIRED"]) == n_ops
    busy = await rd(master, REG["PERF_BUSY_LO"])
    macs = await rd(master, REG["PERF_MACS_LO"])
    assert busy > 0 and macs > 0
    assert await rd(master, REG["PERF_MACS_HI"]) == 0


@cocotb.test
async def back_to_back_and_errors(dut):
    cfg = config()
    master = await setup(dut)
    scfg = cfg.engine("systolic")
    # NOP, SYNC and several GEMMs queued back to back; all retire
    await push(master, [0x00, 0, 0, 0])
    await push(master, gemm_instr(scfg.dataflows[0], 3, 5, 2))
    await push(master, gemm_instr(scfg.dataflows[0], 2, 2, 2, accumulate=True))
    await push(master, [0x01, 0, 0, 0])
    await wait_idle(dut, master)
    assert await rd(master, REG["RETIRED"]) == 4
    assert await rd(master, REG["ERROR"]) == 0
    # a zero dimension
    await push(master, gemm_instr(scfg.dataflows[0], 0, 4, 4))
    await wait_idle(dut, master)
    idx = cfg.engine_index("systolic")
    assert await rd(master, REG["ERROR"]) == (idx << 8) | ErrorCode.BAD_SHAPE
    await master.write_dword(REG["CTRL"], 1)
    missing = [d for d in ("os", "ws", "is") if d not in scfg.dataflows]
    if missing:
        await push(master, gemm_instr(missing[0], 2, 2, 2))
        await wait_idle(dut, master)
        assert await rd(master, REG["ERROR"]) == (idx << 8) | ErrorCode.BAD_DATAFLOW


# --------------------------------------------------------------------------------------------
# The engine's verify bench (runs in the host process, not in the simulator)
# --------------------------------------------------------------------------------------------


def random_gemm_cases(scfg, seed: int, count: int):
    """(dataflow, name, a, b) cases: random shapes around the array size, plus the format's
    extremes (every product min*min, min*max, max*max) on a shape one past the array."""
    g = torch.Generator().manual_seed(seed)
    fmt = scfg.fmt
    R, C = scfg.rows, scfg.cols
    cases = []
    for df in scfg.dataflows:
        for _ in range(count):
            m = int(torch.randint(1, 3 * R + 2, (1,), generator=g))
            k = int(torch.randint(1, 4 * max(R, C) + 2, (1,), generator=g))
            n = int(torch.randint(1, 3 * C + 2, (1,), generator=g))
            a = torch.randint(fmt.min, fmt.max + 1, (m, k), generator=g)
            b = torch.randint(fmt.min, fmt.max + 1, (k, n), generator=g)
            cases.append((df, f"random {m}x{k}x{n}", a, b))
        m, k, n = R + 1, 2 * R + 3, C + 1
        for lo_a, lo_b in ((fmt.min, fmt.min), (fmt.min, fmt.max), (fmt.max, fmt.max)):
            a = torch.full((m, k), lo_a)
            b = torch.full((k, n), lo_b)
            cases.append((df, f"extremes {lo_a}*{lo_b} {m}x{k}x{n}", a, b))
    return cases


def verify(cfg, scfg, *, seed: int = 1, count: int = 8, cocotb: bool = True, progress=None):
    """``EngineSpec.verify`` of the systolic engine: rows (check, case, ok, note)."""
    from gatesmith import host
    from gatesmith.generators.accel.top import Accelerator
    from gatesmith.sim.cocotb_runner import run_cocotb, verilog_of

    say = progress or (lambda msg: None)
    rows = []
    if cocotb:
        say("systolic: GEMMs over AXI4-Lite on Verilator (the first build takes a minute)")
        t0 = time.monotonic()
        run_cocotb(verilog_of(Accelerator(cfg), name="accel"), toplevel="accel",
                   test_module="gatesmith.tests.bench_axi_systolic",
                   env={"GATESMITH_CFG": cfg.to_json(), "GATESMITH_SEED": str(seed)},
                   seed=seed)  # fmt: skip
        rows.append(("cocotb bench_axi_systolic", "GEMMs, errors, backpressure", True,
                     f"{time.monotonic() - t0:.1f} s"))  # fmt: skip
    cases = random_gemm_cases(scfg, seed, count)
    say("systolic: starting the simulated board")
    with host.open("sim", config=cfg, progress=say) as dev:
        for i, (df, name, a, b) in enumerate(cases):
            say(f"systolic: GEMM {i + 1}/{len(cases)}: {df} {name}")
            got = dev.matmul(a, b, dataflow=df)
            gold = model.gemm(a, b, scfg)
            exact = torch.equal(got.long(), gold)
            ref = a.long() @ b.long()
            note = "== torch" if torch.equal(gold, ref) else "wrapped (acc overflow, as the model)"
            rows.append((f"GEMM {df}", name, exact, note))
    return rows
