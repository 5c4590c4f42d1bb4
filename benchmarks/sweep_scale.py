"""Wall time of a 16-configuration generate+cycles sweep on the local pool and on local Ray.

The sweep: int8/int16 systolic arrays, rows 2 and 4 x cols 1..4 (16 configurations), each through
``generate`` (Amaranth -> Verilog of both tops + ``verilator --lint-only -Wall``) and ``cycles``
(a BERT-like GEMM list on the exact cycle model), with the stage cache off, run by
``flows.sweep.run_sweep`` at ``-j 1``, ``-j 2`` and on a Ray instance started in this process
(``--ray local``, 2 CPUs, on 127.0.0.1).

Ray's overhead per trial against the pool is measured twice:

* on the same sweep: (Ray wall - pool -j 2 wall) / 16, Ray's start-up included and excluded;
* on a cycles-only sweep of the same 16 configurations (each trial does ~1 ms of work), where
  the wall time per trial is almost all overhead: task dispatch, result return, worker start.

    python benchmarks/sweep_scale.py

Writes ``benchmarks/results/sweep_scale.{md,json}``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path

import yaml

from gatesmith.flows.sweep import run_sweep

RESULTS = Path(__file__).resolve().parent / "results"
SWEEP = {
    "name": "scale16",
    "base": {"name": "bench", "engines": {"systolic": {"rows": 1, "cols": 1}}},
    "axes": {
        "engines.systolic.dtype": ["int8", "int16"],
        "engines.systolic.rows": [2, 4],
        "engines.systolic.cols": [1, 2, 3, 4],
    },
    "stages": ["generate", "cycles"],
    "workload": {"gemms": [{"name": "qkv", "m": 128, "k": 768, "n": 768},
                           {"name": "tail", "m": 7, "k": 100, "n": 33}]},
}  # fmt: skip


def run(tmp: Path, label: str, stages, **kw) -> dict:
    data = dict(SWEEP, stages=stages)
    path = tmp / f"{label}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    t0 = time.monotonic()
    res = run_sweep(path, tmp / label, use_cache=False, **kw)
    wall = time.monotonic() - t0
    trials = res["trials"]
    ok = sum(t["status"] == "ok" for t in trials)
    stage_s = sum(sum(t["seconds"].values()) for t in trials)
    row = {"run": label, "stages": "+".join(stages), "executor": res["sweep"]["executor"],
           "trials": len(trials), "ok": ok, "wall_s": round(wall, 2),
           "startup_s": res["sweep"]["startup_s"], "stage_s_sum": round(stage_s, 2),
           "failures": sorted({f"{t['error']['stage']}: {t['error']['message'][:120]}"
                               for t in trials if t["error"]}),
           "records": [{k: v for k, v in t.items() if k not in ("seconds", "config")}
                       for t in trials]}  # fmt: skip
    print(f"{label}: {len(trials)} trials ({ok} ok) in {wall:.1f} s (start-up "
          f"{row['startup_s']} s, stage time summed {stage_s:.1f} s)", flush=True)
    return row


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("gatesmith", "amaranth", "verilator", "torch", "ray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def main() -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on 127.0.0.1
    gen = ["generate", "cycles"]
    with tempfile.TemporaryDirectory(prefix="sweep_scale") as d:
        tmp = Path(d)
        rows = [
            run(tmp, "pool-j1", gen, jobs=1),
            run(tmp, "pool-j2", gen, jobs=2),
            run(tmp, "ray-local", gen, ray="local", local_ray_cpus=2),
            run(tmp, "pool-j2-cycles", ["cycles"], jobs=2),
            run(tmp, "ray-local-cycles", ["cycles"], ray="local", local_ray_cpus=2),
        ]
    by = {r["run"]: r for r in rows}
    same = all(by[a]["records"] == by[b]["records"]
               for a, b in (("pool-j1", "pool-j2"), ("pool-j2", "ray-local"),
                            ("pool-j2-cycles", "ray-local-cycles")))  # fmt: skip
    n = 16
    ray_s, pool_s = by["ray-local"]["wall_s"], by["pool-j2"]["wall_s"]
    ray_up = by["ray-local"]["startup_s"]
    over = {
        "same_sweep_per_trial_s": round((ray_s - pool_s) / n, 3),
        "same_sweep_per_trial_s_without_startup": round((ray_s - ray_up - pool_s) / n, 3),
        "cycles_only_pool_per_trial_s": round(by["pool-j2-cycles"]["wall_s"] / n, 3),
        "cycles_only_ray_per_trial_s": round(
            (by["ray-local-cycles"]["wall_s"] - by["ray-local-cycles"]["startup_s"]) / n, 3),
        "ray_startup_s": by["ray-local-cycles"]["startup_s"],
    }  # fmt: skip
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": platform.machine(), "nproc": os.cpu_count(),
            "loadavg": [round(x, 1) for x in os.getloadavg()], "versions": versions(),
            "records_identical": same}  # fmt: skip
    for r in rows:
        r.pop("records")
    RESULTS.mkdir(exist_ok=True)
    out = {"meta": meta, "sweep": SWEEP, "runs": rows, "ray_overhead": over}
    (RESULTS / "sweep_scale.json").write_text(json.dumps(out, indent=1) + "\n")
    v = ", ".join(f"{k} {x}" for k, x in meta["versions"].items())
    lines = [
        "# Sweep scaling: local pool vs local Ray", "",
        f"Measured {meta['date']} on {meta['machine']} (`nproc` = {meta['nproc']}, load average at "
        f"the end {', '.join(map(str, meta['loadavg']))}); versions: {v}.", "",
        "- Sweep: 16 int8/int16 systolic configurations (rows 2, 4; cols 1-4), stage cache off; "
        "`generate` = Amaranth -> Verilog of both tops + `verilator --lint-only -Wall`, `cycles` = "
        "the exact cycle model on 128x768x768 + 7x100x33. Script: `benchmarks/sweep_scale.py`.",
        "- The machine has 2 cores shared with other jobs: absolute times are longer than idle.",
        f"- Trial records (config, status, metrics) identical across pool and Ray runs: "
        f"{'yes' if same else 'NO'}.", "",
        "| run | executor | stages | trials ok | wall s | executor start-up s | stage s summed |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['run']} | {r['executor']} | {r['stages']} | {r['ok']}/{r['trials']} "
                     f"| {r['wall_s']:.1f} | {r['startup_s']} "
                     f"| {r['stage_s_sum']:.1f} |")  # fmt: skip
    fails = sorted({f for r in rows for f in r["failures"]})
    if fails:
        lines += ["", "Failed trials (the same in every run; a failed trial still ran its "
                  "generate + lint, only the ~1 ms cycles stage is skipped):", ""]
        lines += [f"- {f}" for f in fails]
    lines += [
        "", "Ray's overhead per trial against the pool (seconds):", "",
        "| measure | s |", "|---|---|",
        f"| same sweep, (Ray wall - pool -j 2 wall) / 16 | {over['same_sweep_per_trial_s']} |",
        f"| same sweep, Ray start-up excluded | {over['same_sweep_per_trial_s_without_startup']} |",
        f"| cycles-only sweep, pool -j 2 wall / 16 | {over['cycles_only_pool_per_trial_s']} |",
        f"| cycles-only sweep, Ray wall (start-up excluded) / 16 | "
        f"{over['cycles_only_ray_per_trial_s']} |",
        f"| Ray start-up (in-process `ray.init`, 2 CPUs) | {over['ray_startup_s']} |",
    ]  # fmt: skip
    (RESULTS / "sweep_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
