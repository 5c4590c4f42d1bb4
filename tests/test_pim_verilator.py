"""PIM engine, generated Verilog under Verilator (cocotb): RTL == golden model, cycles == model.

Each case loads seeded random weights and vector (plus the format's extremes in one bank row)
through the host window, runs random GEMV instructions (row and column mode, cut last segments,
one rejected instruction), and compares every instruction's error, cycle count and command trace
(activates, column commands) with the cycle model, then every result word with the golden model.
"""

import json
import random

import numpy as np
import pytest
import torch

from gatesmith.generators.pim import PimConfig
from gatesmith.generators.pim.cycles import schedule
from gatesmith.generators.pim.engine import PimEngine
from gatesmith.generators.pim.isa import GemvInstr
from gatesmith.generators.pim.model import PimState, gemv, pack_operands
from gatesmith.sim.cocotb_runner import run_cocotb, verilog_of

CONFIGS = {
    "single_int8": dict(banks=3, lanes=4, row_size=32, burst=2, t_ccd=3, t_rcd=5, t_rp=3),
    "dual_int4": dict(banks=2, lanes=8, row_size=32, burst=1, t_ccd=1, t_rcd=4, t_rp=6,
                      dtype="int4", dual_row_buffer=True, acc_width=20),
    "wide_acc": dict(banks=4, lanes=8, row_size=64, burst=4, t_ccd=4, t_rcd=2, t_rp=1,
                     acc_width=40, dual_row_buffer=True),
}  # fmt: skip


def _case(cfg, seed, path):
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
    for _ in range(6):
        col = r.random() < 0.4
        room = cfg.vector_segments - (max(st.xoff) if col else 0)
        segs = r.randint(1, min(3, room))
        rounds = r.randint(1, min(cfg.result_depth, cfg.rows_per_bank // segs))
        instrs.append(GemvInstr(
            rounds=rounds, segments=segs, cols_last=r.randint(1, cfg.cols_per_row),
            w_row=r.randint(0, cfg.rows_per_bank - rounds * segs), x_seg=r.randint(0, room - segs),
            y_base=r.randint(0, cfg.result_depth - rounds), col_mode=col))  # fmt: skip
    instrs.insert(2, GemvInstr(rounds=1, segments=1, cols_last=cfg.cols_per_row + 1))
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
    path.write_text(json.dumps(dict(writes=writes, instrs=ins_out, reads=reads, expect=expect)))


def _run(name, tmp_path, seed):
    cfg = PimConfig(**CONFIGS[name], rows_per_bank=16, vector_depth=128, result_depth=8)
    print(f"config={name} seed={seed}")
    case = tmp_path / "case.json"
    _case(cfg, seed, case)
    run_cocotb(verilog_of(PimEngine(cfg), name="pim"), toplevel="pim",
               test_module="gatesmith.tests.bench_pim", env={"PIM_CASE": str(case)},
               results_dir=tmp_path)  # fmt: skip


@pytest.mark.parametrize("name", ["single_int8", "dual_int4"])
def test_verilator_bit_and_cycle_exact(name, tmp_path):
    _run(name, tmp_path, seed=11)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_verilator_bit_and_cycle_exact_slow(name, seed, tmp_path):
    _run(name, tmp_path, seed=100 + seed)
