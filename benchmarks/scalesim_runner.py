"""Run the real SCALE-Sim (PyPI ``scalesim`` 3.0.0) on one GEMM and read its compute report.

SCALE-Sim is the peer cycle model the issue compares against. :mod:`gatesmith.generators.systolic.model`
carries its closed forms (``scalesim_cycles``); this runner runs the tool itself as a spot check
of those closed forms. It is slow (5-20 k simulated cycles per second), so it is meant for the
smaller shapes. Each run happens in its own temporary directory (config, topology and layout
files, then the reports), through the Python API with ``save_disk_space=True`` (the CLI ignores
``-s`` and writes huge traces). See ../shared/TOOLCHAIN.md, "SCALE-Sim 3.0.0".

    python benchmarks/scalesim_runner.py --rows 8 --cols 8 --dataflow os 64 64 64

Conventions: C[MxN] = A[MxK] B[KxN]; GEMM topology rows are ``name, M, N, K,`` (trailing comma).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import tempfile
import time
from pathlib import Path

__all__ = ["run_scalesim", "scalesim_version"]

_CONFIG = """\
[general]
run_name = {run_name}

[run_presets]
InterfaceBandwidth = CALC
UseRamulatorTrace = False

[architecture_presets]
ArrayHeight = {rows}
ArrayWidth = {cols}
ifmapsramszkB = {sram_kb}
filtersramszkB = {sram_kb}
ofmapsramszkB = {sram_kb}
IfmapOffset = 0
FilterOffset = 10000000
OfmapOffset = 20000000
Dataflow = {dataflow}
ReadRequestBuffer = 32
WriteRequestBuffer = 32

[layout]
IfmapCustomLayout = False
FilterCustomLayout = False
IfmapSRAMBankBandwidth = 10
IfmapSRAMBankNum = 10
IfmapSRAMBankPort = 2
FilterSRAMBankBandwidth = 10
FilterSRAMBankNum = 10
FilterSRAMBankPort = 2

[sparsity]
SparsitySupport = false
SparseRep = ellpack_block
OptimizedMapping = false
BlockSize = 8
RandomNumberGeneratorSeed = 40
"""


def scalesim_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("scalesim")
    except metadata.PackageNotFoundError:
        return "not installed"


def run_scalesim(rows: int, cols: int, dataflow: str, m: int, k: int, n: int, *,
                 sram_kb: int = 1024, quiet: bool = True) -> dict:  # fmt: skip
    """SCALE-Sim's compute report for C[MxN] = A[MxK] B[KxN] on a rows x cols array.

    Returns ``total_cycles`` (SCALE-Sim's "Total Cycles", the compute cycles), ``overall_cycles``
    ("Total Cycles (incl. prefetch)"), ``stall_cycles``, ``compute_util`` (%), ``mapping_eff``
    (%), ``overall_util`` (%) and ``seconds`` (wall time of the tool). The report is kept in
    the build cache (``$GATESMITH_CACHE/scalesim``, keyed by the inputs and SCALE-Sim's version):
    a large GEMM takes SCALE-Sim minutes, and its answer does not depend on gatesmith.
    """
    from scalesim.scale_sim import scalesim

    from gatesmith.sim.toolchain import cache_dir, content_hash

    if dataflow not in ("os", "ws", "is"):
        raise ValueError(f"dataflow must be os, ws or is, not {dataflow!r}")
    key = content_hash(scalesim_version(), _CONFIG, str((rows, cols, dataflow, m, k, n, sram_kb)))
    kept = cache_dir("scalesim") / f"{key}.json"
    if kept.exists():
        return json.loads(kept.read_text())
    with tempfile.TemporaryDirectory(prefix="gatesmith_scalesim_") as tmp:
        d = Path(tmp)
        name = f"gemm_{rows}x{cols}_{dataflow}"
        cfg = d / "scale.cfg"
        cfg.write_text(_CONFIG.format(run_name=name, rows=rows, cols=cols, sram_kb=sram_kb,
                                      dataflow=dataflow))  # fmt: skip
        topo = d / "gemm.csv"
        topo.write_text(f"Layer, M, N, K,\ngemm, {m}, {n}, {k},\n")
        layout = d / "layout.csv"  # always opened; unused without a custom layout
        layout.write_text("Layer,\n")
        out = d / "out"
        out.mkdir()
        t0 = time.monotonic()
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
            s = scalesim(save_disk_space=True, verbose=not quiet, config=str(cfg),
                         topology=str(topo), layout=str(layout), input_type_gemm=True)  # fmt: skip
            s.run_scale(top_path=str(out))
        seconds = time.monotonic() - t0
        report = next(out.rglob("COMPUTE_REPORT.csv"))
        rows_ = list(csv.reader(report.read_text().splitlines()))
    header = [h.strip() for h in rows_[0]]
    values = [v.strip() for v in rows_[1]]
    rec = dict(zip(header, values, strict=False))
    res = {
        "overall_cycles": int(float(rec["Total Cycles (incl. prefetch)"])),
        "total_cycles": int(float(rec["Total Cycles"])),
        "stall_cycles": int(float(rec["Stall Cycles"])),
        "overall_util": float(rec["Overall Util %"]),
        "mapping_eff": float(rec["Mapping Efficiency %"]),
        "compute_util": float(rec["Compute Util %"]),
        "seconds": round(seconds, 2),
    }
    kept.write_text(json.dumps(res))
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--dataflow", choices=("os", "ws", "is"), default="os")
    ap.add_argument("m", type=int)
    ap.add_argument("k", type=int)
    ap.add_argument("n", type=int)
    args = ap.parse_args(argv)
    from gatesmith.generators.systolic import model
    from gatesmith.generators.systolic.config import SystolicConfig

    r = run_scalesim(args.rows, args.cols, args.dataflow, args.m, args.k, args.n)
    closed = model.scalesim_cycles(args.m, args.k, args.n, args.dataflow,
                                   SystolicConfig(rows=args.rows, cols=args.cols))  # fmt: skip
    print(f"SCALE-Sim {scalesim_version()}: {args.rows}x{args.cols} {args.dataflow} "
          f"M={args.m} K={args.k} N={args.n}")  # fmt: skip
    for key, v in r.items():
        print(f"  {key}: {v}")
    print(f"  closed form (model.scalesim_cycles): {closed} (tool - closed = "
          f"{r['total_cycles'] - closed})")  # fmt: skip


if __name__ == "__main__":
    main()
