"""LUT/FF/DSP/BRAM and Fmax of the bit-serial engine on the ULX3S (ECP5-85F), beside the
bit-parallel systolic array configured for the same 8-bit throughput; throughput at 2/3/4/8 bits.

Each design is the whole accelerator (UART link, controller, queue, AXI4-Lite, one engine), built
with :func:`gatesmith.flows.bitstream.build_bitstream` (yowasp yosys ``synth_ecp5`` +
nextpnr-ecp5, timed against ``--freq``). Figures come from the tools' reports. Throughput is
MACs/cycle x Fmax: for the bit-serial engine lanes x pes / ceil(bits / bits_per_cycle); for the
systolic array rows x cols at any width up to 8 bits.

    python benchmarks/bitserial_fpga.py
    python benchmarks/bitserial_fpga.py --designs bs16x4 --freq 80

Writes ``benchmarks/results/bitserial_fpga.{md,json}``; build files under ``--work-dir``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

from gatesmith.config import AccelConfig
from gatesmith.errors import BuildError
from gatesmith.flows.bitstream import build_bitstream
from gatesmith.generators.bitserial.config import BitserialConfig
from gatesmith.generators.systolic.config import SystolicConfig

DEPTHS = dict(w_depth=256, a_depth=256, g_depth=64, r_depth=64)
DESIGNS = {
    # 16 MACs/cycle at 8-bit weights each
    "bs16x4_bpc2": BitserialConfig(lanes=16, pes=4, bits_per_cycle=2, **DEPTHS),
    "bs8x4_bpc4": BitserialConfig(lanes=8, pes=4, bits_per_cycle=4, **DEPTHS),
    "sys4x4_int8": SystolicConfig(rows=4, cols=4, dtype="int8", spad_depth=256, acc_depth=256),
}
BITS = (2, 3, 4, 8)


def macs_per_cycle(engine, bits: int) -> float:
    if isinstance(engine, BitserialConfig):
        return engine.lanes * engine.pes / math.ceil(bits / engine.bits_per_cycle)
    return engine.rows * engine.cols


def build(name, engine, args) -> dict:
    cfg = AccelConfig(name=name, engines=(engine,))
    row = dict(design=name, kind=type(engine).kind, target_mhz=args.freq)
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
    row.update(fmax_mhz=rep.fmax_mhz, met=rep.timing_met, seconds=round(rep.total_seconds))
    for b in BITS:
        row[f"gmacs_{b}b"] = round(macs_per_cycle(engine, b) * (rep.fmax_mhz or 0) / 1000, 3)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", default=",".join(DESIGNS))
    ap.add_argument("--freq", type=float, default=50.0)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--work-dir", default="build/bitserial_fpga")
    ap.add_argument("--out", default="benchmarks/results/bitserial_fpga")
    args = ap.parse_args(argv)
    rows = []
    for n in args.designs.split(","):
        rows.append(build(n, DESIGNS[n], args))
        Path(args.out + ".json").write_text(json.dumps(rows, indent=1))
    cols = ["design", "lut", "ff", "dsp", "bram", "fmax_mhz", "met"] + [
        f"gmacs_{b}b" for b in BITS] + ["seconds"]
    md = ["# Bit-serial engine vs systolic array on ECP5-85F (ULX3S)", "",
          f"`benchmarks/bitserial_fpga.py` on {platform.node() or 'this machine'}: whole "
          f"accelerator (UART link, controller, queue, one engine), yowasp yosys + nextpnr, "
          f"target {args.freq:g} MHz. Both engines do 16 MACs/cycle at 8 bits; gmacs_Nb = "
          "MACs/cycle at N-bit weights x Fmax / 1000 (the systolic array runs every width <= 8 "
          "at its 8-bit rate).", "",
          "Designs: " + "; ".join(f"{k}: {v}" for k, v in DESIGNS.items()), "",
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
