"""PIM GEMV cycles against the bandwidth bound, from the exact cycle model and the RTL.

For each engine configuration and matrix shape the host mapper (``host/pim.py``) picks a
partition; the engine's cycles are the sum over its instructions of the cycle model
(``generators/pim/cycles.py``), which the regression holds equal to the RTL. ``--rtl`` also runs
the generated Verilog under Verilator (cocotb) for the shapes marked ``rtl`` and prints the
measured cycles beside the model's.

Bounds: ``bw`` = MACs / (banks x lanes), every MAC lane busy every cycle; ``bw+act`` adds, for a
single row buffer, ``t_rcd + t_rp`` per row each bank must open (a second row buffer hides them).

    python benchmarks/pim_gemv.py                 # model table
    python benchmarks/pim_gemv.py --rtl           # plus Verilator measurements (minutes)

Writes ``benchmarks/results/pim_gemv.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from gatesmith.generators.pim import PimConfig
from gatesmith.generators.pim.cycles import activation_bound, bandwidth_bound
from gatesmith.host.pim import plan_gemv

AIM = dict(banks=16, lanes=16, row_size=1024, burst=1, t_ccd=1, t_rcd=8, t_rp=8,
           rows_per_bank=512, vector_depth=8192, result_depth=256)  # fmt: skip
CONFIGS = {
    "b16l16_single": PimConfig(**AIM),
    "b16l16_dual": PimConfig(**AIM, dual_row_buffer=True),
    "b8l8_r256_bl2": PimConfig(banks=8, lanes=8, row_size=256, burst=2, t_ccd=2, t_rcd=4,
                               t_rp=4, rows_per_bank=4096, vector_depth=8192,
                               result_depth=256),
}  # fmt: skip
SHAPES = [(1, 4096), (256, 256), (1000, 1000), (1024, 1024), (2048, 2048), (4096, 1000),
          (2047, 2049), (4096, 2048)]  # fmt: skip
RTL_SHAPES = [(1, 4096), (256, 256), (1000, 1000), (1024, 1024), (2048, 1024), (9, 3000)]


def plan_row(name, cfg, n, k):
    plan = plan_gemv(cfg, n, k)
    bw = bandwidth_bound(cfg, n, k)
    act = activation_bound(cfg, n, k)
    instrs = [ins for ps in plan.passes for _, ins in ps.instrs(cfg.result_depth)]
    return dict(config=name, n=n, k=k, strategy=plan.strategy,
                parts=[ps.parts for ps in plan.passes], instructions=len(instrs),
                cycles=plan.cycles, bw_bound=round(bw, 1), bw_act_bound=round(act, 1),
                vs_bw=round(plan.cycles / bw, 4), vs_bw_act=round(plan.cycles / act, 4),
                mac_util=round(bw / plan.cycles, 4), plan=plan)  # fmt: skip


def rtl_cycles(cfg, plans) -> list[list[int]]:
    """Run each plan's instruction stream on the Verilog (Verilator); cycles per instruction."""
    from gatesmith.generators.pim.engine import PimEngine
    from gatesmith.sim.cocotb_runner import run_cocotb, verilog_of

    xoffs = {tuple(ps.xoff) for p in plans for ps in p.passes if ps.parts > 1}
    assert len(xoffs) <= 1 or all(len(p.passes) == 1 for p in plans)
    out = []
    verilog = verilog_of(PimEngine(cfg), name="pim")  # once: large memories convert slowly
    with tempfile.TemporaryDirectory() as tmp:
        for plan in plans:  # one simulation per plan: each may need its own xoff table
            xoff = next((ps.xoff for ps in plan.passes if ps.parts > 1), [0] * cfg.banks)
            stream = [ins.words() for ps in plan.passes for _, ins in ps.instrs(cfg.result_depth)]
            spec = Path(tmp, "spec.json")
            res = Path(tmp, "out.json")
            spec.write_text(json.dumps(dict(xoff=xoff, streams=[stream],
                                            xoff_offset=cfg.windows()["xoff"].offset)))
            run_cocotb(verilog, toplevel="pim",
                       test_module="gatesmith.tests.bench_pim_perf",
                       env={"PIM_PERF": str(spec), "PIM_PERF_OUT": str(res)},
                       results_dir=Path(tmp, "run"))  # fmt: skip
            out.append(json.loads(res.read_text())["cycles"][0])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rtl", action="store_true", help="also measure on Verilator")
    ap.add_argument("--out", default="benchmarks/results/pim_gemv")
    args = ap.parse_args(argv)
    rows = [plan_row(name, cfg, n, k) for name, cfg in CONFIGS.items() for n, k in SHAPES]
    rtl_rows = []
    if args.rtl:
        for name in ("b16l16_single", "b16l16_dual"):
            cfg = replace(CONFIGS[name], rows_per_bank=256, vector_depth=4096)
            t0 = time.monotonic()
            plans = [plan_row(name, cfg, n, k) for n, k in RTL_SHAPES]
            meas = rtl_cycles(cfg, [r["plan"] for r in plans])
            for r, m in zip(plans, meas, strict=True):
                r["rtl_cycles"] = sum(m)
                rtl_rows.append(r)
            print(f"{name}: Verilator runs took {time.monotonic() - t0:.0f} s")
    cols = ["config", "n", "k", "strategy", "parts", "instructions", "cycles", "bw_bound",
            "bw_act_bound", "vs_bw", "vs_bw_act", "mac_util"]  # fmt: skip
    md = ["# PIM GEMV: cycles vs the bandwidth bound", "",
          f"Cycle model (equal to the RTL by the regression); machine: {platform.machine()}.",
          "Configs: " + "; ".join(f"`{n}`: {c}" for n, c in CONFIGS.items()), "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]  # fmt: skip
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    if rtl_rows:
        c2 = ["config", "n", "k", "strategy", "instructions", "cycles", "rtl_cycles", "vs_bw_act"]
        md += ["", "## Measured on the generated Verilog (Verilator, rows_per_bank=256)", "",
               "| " + " | ".join(c2) + " |", "|" + "---|" * len(c2)]  # fmt: skip
        md += ["| " + " | ".join(str(r[c]) for c in c2) + " |" for r in rtl_rows]
    text = "\n".join(md) + "\n"
    print(text)
    for r in rows + rtl_rows:
        r.pop("plan")
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(dict(model=rows, rtl=rtl_rows), indent=1))


if __name__ == "__main__":
    main()
