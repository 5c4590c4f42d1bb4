"""Bit-serial engine, generated Verilog under Verilator (cocotb): RTL == golden model.

Every weight precision 1..8 in both encodings, BitMoD mixes at 3 and 4 bits, scaled groups,
K not a multiple of the group size, back-to-back instructions with and without idle gaps, and
one rejected instruction in the stream. Memory images come from the host packer; the expected
result words from ``model.execute`` on the same images.
"""

import json

import numpy as np
import pytest
import torch

from gatesmith.generators.bitserial import model as M
from gatesmith.generators.bitserial.config import BitserialConfig
from gatesmith.generators.bitserial.engine import BitserialEngine
from gatesmith.sim.cocotb_runner import run_cocotb, verilog_of

SEED = 777

CONFIGS = {
    "bpc2": dict(lanes=4, pes=4, bits_per_cycle=2, group_size=8),
    "bpc1": dict(lanes=8, pes=2, bits_per_cycle=1, group_size=16),
    "bpc4": dict(lanes=2, pes=4, bits_per_cycle=4, group_size=4),
}


def _config(name):
    return BitserialConfig(**CONFIGS[name], w_depth=512, a_depth=512, g_depth=256, r_depth=128)


def _instructions(g):
    out = []
    for w_bits in range(1, 9):
        for w_enc, a_enc in (("twos", "bipolar"), ("bipolar", "twos")):
            a_bits = int(torch.randint(1, 9, (1,), generator=g))
            out.append(dict(m=2, n=5, k=19, w_bits=w_bits, a_bits=a_bits, w_enc=w_enc,
                            a_enc=a_enc, scaled=w_bits % 2 == 0))
    out.append(dict(m=3, n=6, k=37, w_bits=4, a_bits=8, mixed=True, scaled=True))
    out.append(dict(m=2, n=3, k=21, w_bits=3, a_bits=8, mixed=True, scaled=True))
    out.append(dict(m=1, n=1, k=1, w_bits=1, a_bits=1))
    return out


def build_case(cfg, g, path, specs=None, *, reject=True, gaps=True):
    """Write a case file for bench_bitserial: random operands for each instruction spec."""
    from gatesmith.generators.bitserial.engine import window_layout

    win = {w.name: w for w in window_layout(cfg)}
    mems = {w.name: np.zeros((w.depth, w.stride), np.uint32) for w in win.values()}
    bases = {"weights": 0, "acts": 0, "groups": 0, "results": 0}
    instrs, errors, cycles, macs = [], [], [], 0
    for f in specs or _instructions(g):
        ins = M.Instr(**f, w_base=bases["weights"], a_base=bases["acts"],
                      g_base=bases["groups"], r_base=bases["results"])
        a = torch.randint(0, 1 << ins.a_bits, (ins.m, ins.k), generator=g)
        w = torch.randint(0, 1 << ins.w_bits, (ins.n, ins.k), generator=g)
        ng = -(-ins.k // cfg.group_size)
        ids = torch.arange(9) if ins.mixed else torch.zeros(1, dtype=torch.int64)
        dts = ids[torch.randint(0, len(ids), (ins.n, ng), generator=g)]
        dts = torch.where(dts >= 5, dts * (ins.w_bits == 4), dts)  # FP4 only at 4 bits
        sc = torch.randint(0, 1 << 16, (ins.n, ng), generator=g)
        for name, img in (("weights", M.weight_image(cfg, w)), ("acts", M.act_image(cfg, a)),
                          ("groups", M.group_image(cfg, dts, sc))):
            mems[name][bases[name] : bases[name] + len(img)] = img
            bases[name] += len(img)
        bases["results"] += -(-ins.n // cfg.pes) * ins.m
        instrs.append(ins)
    if reject:
        instrs.insert(3, M.Instr(m=1, n=1, k=1, w_bits=3, mixed=True, r_base=cfg.r_depth))
    for ins in instrs:
        errors.append(int(M.execute(cfg, ins, mems["weights"], mems["acts"], mems["groups"],
                                    mems["results"])))
        cycles.append(M.cycles(cfg, ins))
        macs += ins.m * ins.n * ins.k if errors[-1] == 0 else 0
    writes = [(win[n].offset + e * win[n].stride + s, int(mems[n][e, s]))
              for n in ("weights", "acts", "groups")
              for e in range(bases[n]) for s in range(win[n].stride)]
    r = win["results"]
    reads = [r.offset + e * r.stride + s for e in range(bases["results"]) for s in range(r.stride)]
    expect = [int(mems["results"][e, s]) for e in range(bases["results"])
              for s in range(r.stride)]
    gaps = [int(x) * gaps for x in torch.randint(0, 3, (len(instrs),), generator=g)]
    gaps[0] = 0
    path.write_text(json.dumps(dict(writes=writes, instrs=[i.words() for i in instrs],
                                    gaps=gaps, reads=reads, expect=expect, errors=errors,
                                    cycles=cycles, macs=macs)))


@pytest.mark.parametrize("name", ["bpc2", pytest.param("bpc1", marks=pytest.mark.slow),
                                  pytest.param("bpc4", marks=pytest.mark.slow)])
def test_verilator_rtl_equals_model(name, tmp_path):
    cfg = _config(name)
    g = torch.Generator().manual_seed(SEED)
    print(f"seed {SEED}, config {cfg}")
    build_case(cfg, g, tmp_path / "case.json")
    run_cocotb(verilog_of(BitserialEngine(cfg), name="bitserial"), toplevel="bitserial",
               test_module="gatesmith.tests.bench_bitserial",
               env={"BITSERIAL_CASE": str(tmp_path / "case.json")})
