"""cocotb bench for tests/test_pim_verilator.py: the PIM engine's generated Verilog.

The case file (``PIM_CASE``, JSON, built by the pytest side from the golden and cycle models)
lists window writes, instructions, and for each instruction the expected error code, cycle count
and the cycles of every activate and column command; then the expected result words. Inputs are
driven and outputs sampled at the falling clock edge, so each sample is one clock cycle.

:func:`build_case` writes such a case for any PIM config; :func:`verify` (the engine's
``EngineSpec.verify`` entry) runs this bench with it on the engine's generated Verilog.
"""

import json
import os
import random
import tempfile
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge


async def _reset(dut):
    dut.rst.value = 1
    for _ in range(2):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    dut.cmd__valid.value = 0
    dut.host__w_en.value = 0
    dut.host__r_en.value = 0
    await FallingEdge(dut.clk)


@cocotb.test()
async def gemv_matches_models(dut):
    case = json.loads(open(os.environ["PIM_CASE"]).read())
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns", impl="gpi").start())
    await _reset(dut)
    for addr, word in case["writes"]:
        dut.host__addr.value = addr
        dut.host__w_data.value = word
        dut.host__w_en.value = 1
        await FallingEdge(dut.clk)
        assert int(dut.host__err.value) == 0, f"write error at {addr}"
    dut.host__w_en.value = 0
    for i, ins in enumerate(case["instrs"]):
        assert int(dut.cmd__ready.value) == 1
        dut.cmd__payload.value = sum(w << (32 * j) for j, w in enumerate(ins["words"]))
        dut.cmd__valid.value = 1
        await FallingEdge(dut.clk)  # accepted at the rising edge before: cycle 0
        dut.cmd__valid.value = 0
        acts, cols, c = [], [], 1
        while True:
            if int(dut.trace_act.value):
                acts.append(c)
            if int(dut.trace_col.value):
                cols.append(c)
            if int(dut.done.value):
                break
            await FallingEdge(dut.clk)
            c += 1
            assert c < 1_000_000, "no done"
        got = dict(error=int(dut.error.value), cycles=c, acts=acts, cols=cols)
        want = {k: ins[k] for k in got}
        assert got == want, f"instruction {i}: {got} != {want}"
        await FallingEdge(dut.clk)
    got = []
    for addr in case["reads"]:
        dut.host__addr.value = addr
        dut.host__r_en.value = 1
        await FallingEdge(dut.clk)
        dut.host__r_en.value = 0
        got.append(int(dut.host__r_data.value))
    assert got == case["expect"], "results differ from the golden model"


# --------------------------------------------------------------------------------------------
# The engine's verify bench (runs in the host process, not in the simulator)
# --------------------------------------------------------------------------------------------


def build_case(cfg, seed: int, path, count: int = 6) -> None:
    """Write a case for this bench: seeded random weights and vector (with min x min products in
    every row-0 dot product), ``count`` random GEMV instructions in row and column mode with cut
    last segments, and one rejected instruction; expectations from the golden and cycle models."""
    import numpy as np
    import torch

    from gatesmith.generators.pim.cycles import schedule
    from gatesmith.generators.pim.isa import GemvInstr
    from gatesmith.generators.pim.model import PimState, gemv, pack_operands

    r = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    st = PimState(cfg)
    lo, hi = cfg.fmt.min, cfg.fmt.max
    st.weights = torch.randint(lo, hi + 1, st.weights.shape, generator=g)
    st.vector = torch.randint(lo, hi + 1, st.vector.shape, generator=g)
    st.weights[0, :4] = lo  # extremes: min x min products in every row-0 dot product
    st.vector[: cfg.row_size] = lo
    st.xoff = [r.randint(0, cfg.vector_segments - 1) for _ in range(cfg.banks)]
    instrs = []
    for _ in range(count):
        col = r.random() < 0.4
        room = cfg.vector_segments - (max(st.xoff) if col else 0)
        segs = r.randint(1, min(3, room))
        rounds = r.randint(1, min(cfg.result_depth, cfg.rows_per_bank // segs))
        instrs.append(GemvInstr(
            rounds=rounds, segments=segs, cols_last=r.randint(1, cfg.cols_per_row),
            w_row=r.randint(0, cfg.rows_per_bank - rounds * segs), x_seg=r.randint(0, room - segs),
            y_base=r.randint(0, cfg.result_depth - rounds), col_mode=col))  # fmt: skip
    instrs.insert(min(2, len(instrs)), GemvInstr(rounds=1, segments=1,
                                                 cols_last=cfg.cols_per_row + 1))  # fmt: skip
    win = cfg.windows()
    writes = []
    for name, words in (("weights", pack_operands(st.weights.flatten(), cfg)),
                        ("vector", pack_operands(st.vector, cfg)),
                        ("xoff", np.array(st.xoff, dtype=np.uint32))):  # fmt: skip
        writes += [(win[name].offset + i, int(w)) for i, w in enumerate(words)]
    ins_out = []
    for ins in instrs:
        sch = schedule(cfg, ins, st.xoff)
        err = gemv(st, ins)
        ins_out.append(dict(words=ins.words(), error=int(err), cycles=sch.done,
                            acts=sch.acts, cols=sch.cols))  # fmt: skip
    res = win["results"]
    vals = st.results.reshape(-1).tolist()
    expect = [(v >> (32 * s)) & 0xFFFF_FFFF for v in vals for s in range(res.stride)]
    reads = list(range(res.offset, res.offset + len(expect)))
    Path(path).write_text(json.dumps(dict(writes=writes, instrs=ins_out, reads=reads,
                                          expect=expect)))  # fmt: skip


def verify(cfg, pcfg, *, seed: int = 1, count: int = 8, cocotb: bool = True, progress=None):
    """``EngineSpec.verify`` of the PIM engine: rows (check, case, ok, note)."""
    from gatesmith.generators.pim.engine import PimEngine
    from gatesmith.sim.cocotb_runner import run_cocotb, verilog_of

    if not cocotb:
        return []
    (progress or (lambda msg: None))("pim: bench_pim on Verilator (the first build takes a minute)")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gatesmith-verify-pim-") as tmp:
        case = Path(tmp) / "case.json"
        build_case(pcfg, seed, case, count=count)
        run_cocotb(verilog_of(PimEngine(pcfg), name="pim"), toplevel="pim",
                   test_module="gatesmith.tests.bench_pim", env={"PIM_CASE": str(case)},
                   seed=seed)  # fmt: skip
    return [("cocotb bench_pim", f"{count + 1} GEMV instructions (one rejected)", True,
             f"== model, cycles and commands == cycle model; {time.monotonic() - t0:.1f} s")]
