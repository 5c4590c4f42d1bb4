"""Cycles against weight precision on the bit-serial engine, measured in RTL simulation.

For each ``bits_per_cycle`` the engine's generated Verilog runs (Verilator, through the cocotb
bench ``tests/bench_bitserial.py``) one MATMUL per weight precision 1..8 and the BitMoD mixes at 3
and 4 bits, on the same shape. The bench checks every result word against the golden model and
records each instruction's cycles (accept -> done). The table compares them with the ideal
``passes x ceil(planes / bits_per_cycle)`` (passes = ceil(N/pes) x M x ceil(K/lanes)).

    python benchmarks/bitserial_cycles.py [--m 8 --n 32 --k 128]

Writes ``benchmarks/results/bitserial_cycles.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

from gatesmith.generators.bitserial import model as M
from gatesmith.generators.bitserial.config import BitserialConfig
from gatesmith.generators.bitserial.engine import BitserialEngine
from gatesmith.sim.cocotb_runner import run_cocotb, verilog_of
from gatesmith.tests.test_bitserial_verilator import build_case


def measure(bpc: int, args) -> list[dict]:
    cfg = BitserialConfig(lanes=args.lanes, pes=args.pes, bits_per_cycle=bpc, group_size=16,
                          w_depth=2048, a_depth=2048, g_depth=1024, r_depth=1024)  # fmt: skip
    shape = dict(m=args.m, n=args.n, k=args.k)
    specs = [dict(**shape, w_bits=b, a_bits=8) for b in range(1, 9)]
    specs += [dict(**shape, w_bits=b, a_bits=8, mixed=True, scaled=True) for b in (3, 4)]
    with tempfile.TemporaryDirectory() as tmp:
        case, log = Path(tmp) / "case.json", Path(tmp) / "log.json"
        build_case(cfg, torch.Generator().manual_seed(5), case, specs, reject=False, gaps=False)
        t0 = time.monotonic()
        run_cocotb(verilog_of(BitserialEngine(cfg), name="bitserial"), toplevel="bitserial",
                   test_module="gatesmith.tests.bench_bitserial",
                   env={"BITSERIAL_CASE": str(case), "BITSERIAL_LOG": str(log)})  # fmt: skip
        wall = time.monotonic() - t0
        measured = json.loads(log.read_text())["log"]
    rows = []
    passes = math.ceil(args.n / cfg.pes) * args.m * math.ceil(args.k / cfg.lanes)
    for spec, (acc, done, err) in zip(specs, measured, strict=True):
        assert err == 0
        planes = M.planes_of(spec["w_bits"], spec.get("mixed", False))
        ideal = passes * math.ceil(planes / bpc)
        cyc = done - acc
        rows.append(dict(bits_per_cycle=bpc, w_bits=spec["w_bits"],
                         datatypes="bitmod" if spec.get("mixed") else "int", planes=planes,
                         passes=passes, cycles=cyc, ideal=ideal, overhead=cyc - ideal,
                         per_pass_excess_pct=round(100 * ((cyc - M.OVERHEAD) / ideal - 1), 3),
                         macs_per_cycle=round(args.m * args.n * args.k / cyc, 2),
                         model_cycles=M.cycles(cfg, M.Instr(**spec)),
                         sim_wall_s=round(wall, 1)))  # fmt: skip
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=8)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--lanes", type=int, default=8)
    ap.add_argument("--pes", type=int, default=4)
    ap.add_argument("--bpc", default="1,2,4")
    ap.add_argument("--out", default="benchmarks/results/bitserial_cycles")
    args = ap.parse_args(argv)
    rows = [r for b in args.bpc.split(",") for r in measure(int(b), args)]
    cols = ["bits_per_cycle", "w_bits", "datatypes", "planes", "passes", "cycles", "ideal",
            "overhead", "per_pass_excess_pct", "macs_per_cycle", "model_cycles"]  # fmt: skip
    md = ["# Bit-serial engine: cycles against weight precision (RTL, Verilator)", "",
          f"`benchmarks/bitserial_cycles.py` on {platform.node() or 'this machine'}: "
          f"lanes={args.lanes}, pes={args.pes}, group_size=16, MATMUL M={args.m} N={args.n} "
          f"K={args.k}, 8-bit activations. cycles: accept -> done, measured on the generated "
          "Verilog; ideal = passes x ceil(planes / bits_per_cycle); per_pass_excess_pct = "
          f"(cycles - {M.OVERHEAD} fixed) / ideal - 1. Every result word matched the golden "
          "model. BitMoD at 4 bits walks 4 planes (FP4 +/-16 as 8 x doubled activation).", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]  # fmt: skip
    for r in rows:
        md.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    text = "\n".join(md) + "\n"
    print(text)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
