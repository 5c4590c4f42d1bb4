"""LUT/FF/DSP/BRAM and Fmax of PIM GEMV accelerators on the ULX3S (ECP5-85F), real builds.

Each configuration is the whole accelerator (UART PHY, host-link bridge, AXI4-Lite controller,
instruction queue) with one PIM engine, built with :func:`gatesmith.flows.bitstream.build_bitstream`
(yowasp yosys ``synth_ecp5`` + nextpnr-ecp5, timed against ``--freq``). Figures come from the
tools' own reports.

    python benchmarks/pim_fpga.py                       # the default configurations
    python benchmarks/pim_fpga.py --configs b4l8,b8l8

Writes ``benchmarks/results/pim_fpga.{md,json}``; build files under ``--work-dir``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from gatesmith.config import AccelConfig
from gatesmith.errors import BuildError
from gatesmith.flows.bitstream import build_bitstream
from gatesmith.generators.pim import PimConfig

BASE = dict(row_size=256, rows_per_bank=64, vector_depth=1024, result_depth=64, t_rcd=4, t_rp=4,
            t_ccd=2, burst=2)  # fmt: skip
CONFIGS = {
    "b4l8": PimConfig(**BASE, banks=4, lanes=8),
    "b4l8_dual": PimConfig(**BASE, banks=4, lanes=8, dual_row_buffer=True),
    "b8l8": PimConfig(**BASE, banks=8, lanes=8),
    "b4l16_int4": PimConfig(**BASE, banks=4, lanes=16, dtype="int4"),
}


def build(name, engine, args) -> dict:
    cfg = AccelConfig(name=f"pim_{name}", engines=(engine,))
    row = dict(design=name, banks=engine.banks, lanes=engine.lanes, dtype=engine.dtype,
               dual=engine.dual_row_buffer, weight_kib=engine.banks * engine.rows_per_bank
               * engine.row_size * engine.fmt.width // 8 // 1024,
               macs_per_cycle=engine.macs_per_cycle, target_mhz=args.freq)  # fmt: skip
    t0 = time.monotonic()

    def progress(ev):
        if ev.status == "done":
            print(f"  {name}: {ev.stage} {ev.elapsed_s:.1f} s {ev.message}", flush=True)

    try:
        rep = build_bitstream(cfg, "ulx3s", Path(args.work_dir) / name, freq_mhz=args.freq,
                              clock="pll", progress=progress, seed=1, timeout_s=args.timeout)  # fmt: skip
    except BuildError as e:
        row.update(error=str(e)[:300], seconds=round(time.monotonic() - t0))
        return row
    for key, use in rep.utilisation.items():
        row[key] = use.used
    row.update(fmax_mhz=rep.fmax_mhz, met=rep.timing_met, seconds=round(rep.total_seconds),
               notes=rep.notes)  # fmt: skip
    if rep.fmax_mhz:
        row["gmacs"] = round(engine.macs_per_cycle * rep.fmax_mhz / 1000, 2)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--freq", type=float, default=50.0)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--work-dir", default="build/pim_fpga")
    ap.add_argument("--out", default="benchmarks/results/pim_fpga")
    args = ap.parse_args(argv)
    rows = [build(n, CONFIGS[n], args) for n in args.configs.split(",")]
    cols = ["design", "banks", "lanes", "dtype", "dual", "weight_kib", "lut", "ff", "dsp",
            "bram", "fmax_mhz", "met", "gmacs", "seconds"]  # fmt: skip
    md = ["# PIM GEMV accelerator on ECP5-85F (ULX3S)", "",
          f"`benchmarks/pim_fpga.py` on {platform.node() or 'this machine'}: whole accelerator "
          f"(UART link, controller, queue, PIM engine), yowasp yosys + nextpnr, target "
          f"{args.freq:g} MHz. Common engine fields: {BASE}. gmacs = banks x lanes x Fmax.", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]  # fmt: skip
    for r in rows:
        if "error" in r:
            md.append(f"| {r['design']} | failed: {r['error']} |")
        else:
            md.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    text = "\n".join(md) + "\n"
    print(text)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
