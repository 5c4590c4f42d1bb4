"""cocotb bench: the accelerator's AXI4-Lite subordinate driven by cocotbext-axi's AxiLiteMaster.

The config comes in ``GATESMITH_CFG`` (JSON), the seed in ``GATESMITH_SEED``. Checked here: the
identity block and config ROM, CSRs, the instruction queue, GEMMs in every built dataflow
(bit-exact against the golden model, shapes that are not multiples of the array), back-to-back
instructions, errors (bad opcode, a dataflow not built, read-only and unmapped addresses) and
the performance counters, with and without pauses on every AXI channel (backpressure).
"""

import itertools
import json
import os
import random

import cocotb
import numpy as np
import torch
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles
from cocotbext.axi import AxiLiteBus, AxiLiteMaster, AxiResp

from gatesmith.config import AccelConfig
from gatesmith.generators.accel.regs import CONFIG_ROM_BASE, MAGIC, REG
from gatesmith.generators.accel.top import config_rom_words
from gatesmith.generators.engine import ENGINE_WINDOW_BASE, ErrorCode
from gatesmith.generators.systolic import model
from gatesmith.generators.systolic.engine import window_layout
from gatesmith.generators.systolic.layout import os_operands, pack_words, unpack_acc, ws_operands
from gatesmith.host.systolic import gemm_instr

CFG = AccelConfig.from_dict(json.loads(os.environ["GATESMITH_CFG"]))
SEED = int(os.environ.get("GATESMITH_SEED", "1"))


async def setup(dut, pause=False):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    master = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "axi_"), dut.clk, dut.rst)
    if pause:
        pattern = [0, 1, 1, 0, 0, 0, 1]
        for ch in (master.write_if.aw_channel, master.write_if.w_channel,
                   master.write_if.b_channel, master.read_if.ar_channel,
                   master.read_if.r_channel):  # fmt: skip
            ch.set_pause_generator(itertools.cycle(pattern))
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    return master


async def rd(master, addr):
    r = await master.read(addr, 4)
    assert r.resp == AxiResp.OKAY, f"read {addr:#x}: {r.resp}"
    return int.from_bytes(r.data, "little")


async def wr_words(master, addr, words):
    data = np.asarray(words, dtype="<u4").tobytes()
    r = await master.write(addr, data)
    assert r.resp == AxiResp.OKAY, f"write {addr:#x}: {r.resp}"


async def push(master, instr):
    for w in instr:
        await master.write_dword(REG["QUEUE"], w)


async def wait_idle(dut, master, limit=200_000):
    for _ in range(limit // 20):
        st = await rd(master, REG["STATUS"])
        if st & 1:
            return st
        await ClockCycles(dut.clk, 20)
    raise AssertionError("accelerator never became idle")


async def run_gemm(dut, master, df, a, b, scfg):
    lay = window_layout(scfg)
    base = ENGINE_WINDOW_BASE + CFG.engine_index("systolic") * 0x0100_0000
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


@cocotb.test()
async def identity_block(dut):
    master = await setup(dut)
    assert await rd(master, REG["MAGIC"]) == MAGIC
    words, length, digest = config_rom_words(CFG)
    assert await rd(master, REG["CONFIG_LEN"]) == length
    assert await rd(master, REG["CONFIG_HASH"]) == digest
    assert await rd(master, REG["N_ENGINES"]) == len(CFG.engines)
    r = await master.read(CONFIG_ROM_BASE, 4 * len(words))
    assert json.loads(r.data[:length].decode()) == json.loads(CFG.to_json())
    await master.write_dword(REG["SCRATCH"], 0xDEADBEEF)
    assert await rd(master, REG["SCRATCH"]) == 0xDEADBEEF
    # read-only and unmapped locations answer with errors, never silently
    assert (await master.write(REG["MAGIC"], b"\0\0\0\0")).resp == AxiResp.SLVERR
    assert (await master.read(0x00F0_0000, 4)).resp == AxiResp.DECERR
    assert (await master.read(REG["QUEUE"], 4)).resp == AxiResp.SLVERR
    bad_engine = ENGINE_WINDOW_BASE + len(CFG.engines) * 0x0100_0000
    assert (await master.read(bad_engine, 4)).resp == AxiResp.DECERR


async def _gemms(dut, pause):
    master = await setup(dut, pause=pause)
    scfg = CFG.engine("systolic")
    rng = random.Random(SEED)
    g = torch.Generator().manual_seed(SEED)
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


@cocotb.test()
async def gemms_every_dataflow(dut):
    await _gemms(dut, pause=False)


@cocotb.test()
async def gemms_with_backpressure(dut):
    await _gemms(dut, pause=True)


@cocotb.test()
async def back_to_back_and_errors(dut):
    master = await setup(dut)
    scfg = CFG.engine("systolic")
    # NOP, SYNC and several GEMMs queued back to back; all retire
    await push(master, [0x00, 0, 0, 0])
    await push(master, gemm_instr(scfg.dataflows[0], 3, 5, 2))
    await push(master, gemm_instr(scfg.dataflows[0], 2, 2, 2, accumulate=True))
    await push(master, [0x01, 0, 0, 0])
    await wait_idle(dut, master)
    assert await rd(master, REG["RETIRED"]) == 4
    assert await rd(master, REG["ERROR"]) == 0
    # an opcode no engine owns
    await push(master, [0x7F, 0, 0, 0])
    await wait_idle(dut, master)
    assert await rd(master, REG["ERROR"]) == (0xFF << 8) | ErrorCode.BAD_OPCODE
    assert (await rd(master, REG["STATUS"])) & 2
    await master.write_dword(REG["CTRL"], 1)
    assert await rd(master, REG["ERROR"]) == 0
    # a zero dimension
    await push(master, gemm_instr(scfg.dataflows[0], 0, 4, 4))
    await wait_idle(dut, master)
    idx = CFG.engine_index("systolic")
    assert await rd(master, REG["ERROR"]) == (idx << 8) | ErrorCode.BAD_SHAPE
    await master.write_dword(REG["CTRL"], 1)
    missing = [d for d in ("os", "ws", "is") if d not in scfg.dataflows]
    if missing:
        await push(master, gemm_instr(missing[0], 2, 2, 2))
        await wait_idle(dut, master)
        assert await rd(master, REG["ERROR"]) == (idx << 8) | ErrorCode.BAD_DATAFLOW
