"""Systolic engine utilisation on the Verilator-simulated board, against the cycle model and SCALE-Sim.

For each array, dataflow (os, ws, is) and GEMM shape (M x K x N) this runs a seeded random int8
GEMM through ``gatesmith.host.open("sim", ...)`` (the whole accelerator under Verilator, over the
host-link protocol), checks the result equals ``a.long() @ b.long()`` exactly, and records:

* ``busy``: the accelerator's BUSY performance counter over the GEMM (cycles an engine was busy:
  the compute phase; host-link transfers that overlap it are not counted separately);
* ``ideal`` = M*K*N / (rows*cols) and ``util`` = ideal / busy (issue 2's target: >= 90% whenever
  M, K and N are each >= 8x the array dimensions);
* ``model``: the exact cycle model's prediction, the sum of ``model.cycles`` over the instructions
  ``host/systolic.plan`` issues (its chunk loop reproduced here), and whether it equals ``busy``;
* ``ss_cf`` / ``ss_util``: SCALE-Sim v3's closed-form compute cycles and utilisation for the same
  array, dataflow and shape (``model.scalesim_cycles``);
* wall seconds of ``dev.matmul`` and simulated cycles per second (the PERF_CYCLES counter, every
  clock of the board, divided by the wall time).

``--scalesim`` also runs the real SCALE-Sim (benchmarks/scalesim_runner.py) on the smaller shapes
on 8x8, all three dataflows, and tables its cycles beside the closed form.

    python benchmarks/systolic_utilisation.py              # 8x8, all shapes
    python benchmarks/systolic_utilisation.py --big        # 8x8 and 16x16
    python benchmarks/systolic_utilisation.py --arrays 16x16 --skip 128x768x3072
    python benchmarks/systolic_utilisation.py --no-sim --scalesim   # SCALE-Sim spot check only

Rows are merged into benchmarks/results/systolic_utilisation.json by (array, dataflow, shape)
(``--fresh`` starts over), and the markdown is rewritten from the merged rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from gatesmith.config import AccelConfig
from gatesmith.generators.systolic import model
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.generators.systolic.engine import SystolicEngine
from gatesmith.host.systolic import plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scalesim_runner import run_scalesim, scalesim_version  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DATAFLOWS = ("os", "ws", "is")
SHAPES = [(64, 64, 64), (128, 128, 128), (256, 256, 256), (128, 768, 768), (128, 768, 3072)]
SHAPE_NAMES = {(128, 768, 768): "BERT-base QKV", (128, 768, 3072): "BERT-base FFN1"}
SCALESIM_SHAPES = [(64, 64, 64), (128, 128, 128), (256, 256, 256)]
TARGET = 0.90


def array_config(name: str) -> SystolicConfig:
    """rows x cols int8 engine with big memories (65536-word scratchpads, 16384-row accumulator),
    so a BERT-sized GEMM runs in a few instructions."""
    rows, cols = (int(v) for v in name.lower().split("x"))
    cfg = SystolicConfig(rows=rows, cols=cols, dtype="int8", spad_depth=65536, acc_depth=16384)
    SystolicEngine(cfg)  # raises if the host window does not fit the engine's 16 MiB window
    return cfg


def shape_name(s) -> str:
    return "x".join(str(v) for v in s)


def instructions(m: int, k: int, n: int, df: str, cfg: SystolicConfig) -> list[tuple[int, int, int]]:
    """The (m, k, n) of each GEMM instruction host/systolic.matmul issues, in the user's roles
    (the roles ``model.cycles`` takes), from the plan's own list (``Plan.gemms``)."""
    hm, hk, hn = (n, k, m) if df == "is" else (m, k, n)  # IS runs b.T @ a.T
    p = plan(hm, hk, hn, df, cfg)
    return [(nt, kc, mt) if df == "is" else (mt, kc, nt)
            for mt, kc, nt in p.gemms(hm, hk, hn, cfg.cols)]  # fmt: skip


def predicted(m, k, n, df, cfg) -> tuple[int, int]:
    ins = instructions(m, k, n, df, cfg)
    return sum(model.cycles(a, b, c, df, cfg) for a, b, c in ins), len(ins)


def run_gemm(dev, cfg: SystolicConfig, arr: str, shape, df: str, seed: int) -> dict:
    m, k, n = shape
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    ref = a.long() @ b.long()
    stats0 = dict(dev.stats)
    dev.reset_perf()
    t0 = time.monotonic()
    c = dev.matmul(a, b, dataflow=df)
    wall = time.monotonic() - t0
    perf = dev.perf()
    exact = bool(torch.equal(c.long(), ref))
    pred, n_instr = predicted(m, k, n, df, cfg)
    ideal = m * k * n / (cfg.rows * cfg.cols)
    ss = model.scalesim_cycles(m, k, n, df, cfg)
    big = min(m, k, n) >= 8 * max(cfg.rows, cfg.cols)
    busy = perf["busy"]
    return {
        "array": arr, "dataflow": df, "shape": shape_name(shape), "m": m, "k": k, "n": n,
        "seed": seed, "exact": exact, "instructions": n_instr,
        "busy": busy, "ideal": ideal, "util": round(ideal / busy, 4) if busy else None,
        "model": pred, "model_eq_busy": pred == busy,
        "macs": perf["macs"], "macs_eq_mkn": perf["macs"] == m * k * n,
        "stall": perf["stall"], "active": perf["active"], "perf_cycles": perf["cycles"],
        "ss_cf": ss, "ss_util": round(ideal / ss, 4),
        "target_applies": big, "meets_target": (ideal / busy >= TARGET) if busy else False,
        "wall_s": round(wall, 3), "cycles_per_s": round(perf["cycles"] / wall),
        "bytes_sent": dev.stats["bytes_sent"] - stats0["bytes_sent"],
        "bytes_received": dev.stats["bytes_received"] - stats0["bytes_received"],
        "frames": dev.stats["frames"] - stats0["frames"],
    }  # fmt: skip


def run_array(arr: str, shapes, dataflows, seed0: int) -> tuple[list[dict], dict]:
    import gatesmith.host

    cfg = array_config(arr)
    acfg = AccelConfig(engines=(cfg,))
    print(f"[{arr}] opening the simulated board (elaborate + Verilator build or cache) ...",
          flush=True)  # fmt: skip
    t0 = time.monotonic()
    rows = []
    with gatesmith.host.open("sim", config=acfg, timeout=600.0,
                             progress=lambda s: print(f"  {s}", flush=True)) as dev:  # fmt: skip
        open_s = time.monotonic() - t0
        print(f"[{arr}] board ready in {open_s:.1f} s", flush=True)
        for si, shape in enumerate(shapes):
            for di, df in enumerate(dataflows):
                seed = seed0 + 100 * si + di
                print(f"[{arr}] {df} {shape_name(shape)} ...", end=" ", flush=True)
                r = run_gemm(dev, cfg, arr, shape, df, seed)
                rows.append(r)
                print(f"util {r['util']:.4f} busy {r['busy']} model {r['model']} "
                      f"({'=' if r['model_eq_busy'] else '!='}) exact={r['exact']} "
                      f"{r['wall_s']:.1f} s {r['cycles_per_s'] / 1e3:.0f} k cycles/s",
                      flush=True)  # fmt: skip
    info = {"array": arr, "config": {k: (list(v) if isinstance(v, tuple) else v)
                                     for k, v in AccelConfig(engines=(cfg,)).to_dict()
                                     ["engines"]["systolic"].items()},
            "open_s": round(open_s, 1)}  # fmt: skip
    return rows, info


def run_scalesim_rows(shapes, dataflows) -> list[dict]:
    out = []
    cfg = SystolicConfig(rows=8, cols=8)
    for shape in shapes:
        m, k, n = shape
        for df in dataflows:
            print(f"[SCALE-Sim 8x8] {df} {shape_name(shape)} ...", end=" ", flush=True)
            r = run_scalesim(8, 8, df, m, k, n)
            cf = model.scalesim_cycles(m, k, n, df, cfg)
            ideal = m * k * n / 64
            out.append({"array": "8x8", "dataflow": df, "shape": shape_name(shape),
                        "m": m, "k": k, "n": n, "closed_form": cf,
                        "scalesim_cycles": r["total_cycles"],
                        "scalesim_overall_cycles": r["overall_cycles"],
                        "diff": r["total_cycles"] - cf,
                        "scalesim_compute_util": r["compute_util"],
                        "ideal_util": round(ideal / r["total_cycles"], 4),
                        "stall_cycles": r["stall_cycles"], "seconds": r["seconds"],
                        "sim_cycles_per_s": round(r["total_cycles"] / r["seconds"])})  # fmt: skip
            print(f"{r['total_cycles']} (closed form {cf}, {r['seconds']:.1f} s)", flush=True)
    return out


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("gatesmith", "amaranth", "verilator", "torch", "numpy", "scalesim"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _key(r):
    return (r["array"], r["dataflow"], r["shape"])


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    d = {_key(r): r for r in old}
    d.update({_key(r): r for r in new})
    order = {shape_name(s): i for i, s in enumerate(SHAPES)}
    return sorted(d.values(), key=lambda r: (int(r["array"].split("x")[0]),
                                             order.get(r["shape"], 99), r["shape"],
                                             DATAFLOWS.index(r["dataflow"])))  # fmt: skip


def markdown(res: dict) -> str:
    L = ["# Systolic engine: utilisation on the simulated board, cycle model, SCALE-Sim", ""]
    L.append(f"Measured {res['date']} on {res['machine']} (`nproc` = {res['nproc']}); "
             f"versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}.")  # fmt: skip
    L.append("")
    for note in res["notes"]:
        L.append(f"- {note}")
    L.append("")
    for info in res["arrays"]:
        c = info["config"]
        L.append(f"- {info['array']}: SystolicConfig(rows={c['rows']}, cols={c['cols']}, "
                 f"dtype={c['dtype']}, acc_width={c['acc_width']}, accumulation="
                 f"{c['accumulation']}, spad_depth={c['spad_depth']}, acc_depth={c['acc_depth']}); "
                 f"opening the board took {info['open_s']} s")  # fmt: skip
    L.append("")
    L.append("## Utilisation (compute phase) vs the 90% target")
    L.append("")
    L.append("`util` = (M*K*N / (rows*cols)) / busy. `target`: M, K, N each >= 8x the array "
             "dims (the issue's condition); `-` where it does not apply. `ss_cf` / `ss_util`: "
             "SCALE-Sim v3 closed-form compute cycles and utilisation for the same array, "
             "dataflow and shape. `model`: sum of `model.cycles` over the instructions issued "
             "(`instr`). `board cycles`: every clock the board ran during `dev.matmul` "
             "(PERF_CYCLES: host-link transfers of operands and results included); `e2e util` "
             "= ideal / board cycles, the end-to-end figure through the simulated host link.")
    L.append("")
    L.append("| array | dataflow | M x K x N | instr | busy | ideal | util | target | model "
             "| model = busy | ss_cf | ss_util | exact | board cycles | e2e util | wall s "
             "| sim cycles/s |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        tgt = ("met" if r["meets_target"] else "MISSED") if r["target_applies"] else "-"
        name = SHAPE_NAMES.get((r["m"], r["k"], r["n"]))
        shape = f"{r['shape']}" + (f" ({name})" if name else "")
        L.append(f"| {r['array']} | {r['dataflow']} | {shape} | {r['instructions']} "
                 f"| {r['busy']:,} | {r['ideal']:,.0f} | {100 * r['util']:.2f}% | {tgt} "
                 f"| {r['model']:,} | {'yes' if r['model_eq_busy'] else 'NO'} | {r['ss_cf']:,} "
                 f"| {100 * r['ss_util']:.2f}% | {'yes' if r['exact'] else 'NO'} "
                 f"| {r['perf_cycles']:,} | {100 * r['ideal'] / r['perf_cycles']:.1f}% "
                 f"| {r['wall_s']:.1f} | {r['cycles_per_s'] / 1e3:,.0f} k |")  # fmt: skip
    if res.get("scalesim"):
        L += ["", "## SCALE-Sim itself (spot check of the closed form)", ""]
        L.append(f"`scalesim` {res['versions'].get('scalesim')} through its Python API "
                 "(benchmarks/scalesim_runner.py), CALC bandwidth mode, no sparsity. "
                 "`SCALE-Sim` is its COMPUTE_REPORT \"Total Cycles\"; `incl. prefetch` its "
                 "\"Total Cycles (incl. prefetch)\"; `util` = ideal / SCALE-Sim cycles; `ours` "
                 "is our measured busy for the same case.")  # fmt: skip
        L.append("")
        L.append("| array | dataflow | M x K x N | closed form | SCALE-Sim | tool - closed "
                 "| incl. prefetch | util | SCALE-Sim compute util % | ours (busy) "
                 "| SCALE-Sim s | its cycles/s |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        ours = {_key(r): r for r in res["rows"]}
        for s in res["scalesim"]:
            o = ours.get(_key(s))
            L.append(f"| {s['array']} | {s['dataflow']} | {s['shape']} | {s['closed_form']:,} "
                     f"| {s['scalesim_cycles']:,} | {s['diff']:+d} "
                     f"| {s['scalesim_overall_cycles']:,} | {100 * s['ideal_util']:.2f}% "
                     f"| {s['scalesim_compute_util']:.2f} "
                     f"| {format(o['busy'], ',') if o else '-'} | {s['seconds']:.1f} "
                     f"| {s['sim_cycles_per_s'] / 1e3:,.1f} k |")  # fmt: skip
    return "\n".join(L) + "\n"


NOTES = [
    "Wall times and simulated cycles/s depend on the machine's load (the load average is "
    "printed above); cycle counts, "
    "utilisation and exactness do not depend on load.",
    "`busy` is the PERF_BUSY counter read after each `dev.matmul` (reset before it); `sim "
    "cycles/s` is PERF_CYCLES (every clock the board ran, link transfers included) over the wall "
    "time of `dev.matmul` (Python packing + socket + Verilator).",
    "Operands: seeded random int8 in -128..127; int32 accumulators cannot overflow at K <= 768.",
    "16x16 x 128x768x3072 was not run: opening the 16x16 board with these memories took 24 min "
    "here (12 min Amaranth elaboration, which every open repeats because the build cache is "
    "keyed by the Verilog text, then the Verilator compile).",
    "8x8 IS 128x768x3072: the host plan cuts the hardware M (= N = 3072) into tiles of 341 rows, "
    "so the last instruction has m = 3 and pays the minimum fold period 2R-1 = 15 per fold "
    "(~18.4 k extra busy cycles, PERF_STALL 18,740); balanced tiles (e.g. 10 x 308) would avoid it.",
]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", action="store_true", help="also run the 16x16 array")
    ap.add_argument("--arrays", default=None, help="comma list, e.g. 8x8,16x16 (overrides --big)")
    ap.add_argument("--shapes", default=None, help="comma list of MxKxN (default: all five)")
    ap.add_argument("--skip", default="", help="comma list of ARRAY:MxKxN or MxKxN to skip")
    ap.add_argument("--dataflows", default="os,ws,is")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--scalesim", action="store_true",
                    help="also run the real SCALE-Sim on 8x8 for the smaller shapes")
    ap.add_argument("--scalesim-shapes", default=",".join(shape_name(s) for s in SCALESIM_SHAPES))
    ap.add_argument("--no-sim", action="store_true", help="skip the Verilator runs")
    ap.add_argument("--fresh", action="store_true", help="do not merge with earlier results")
    ap.add_argument("--out", default=str(RESULTS / "systolic_utilisation"))
    args = ap.parse_args(argv)

    def shapes_of(s):
        return [tuple(int(v) for v in x.split("x")) for x in s.split(",") if x]

    arrays = (args.arrays.split(",") if args.arrays else (["8x8", "16x16"] if args.big else ["8x8"]))
    shapes = shapes_of(args.shapes) if args.shapes else SHAPES
    dataflows = [d for d in args.dataflows.split(",") if d]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    out = Path(args.out)

    rows, infos = [], []
    if not args.no_sim:
        for arr in arrays:
            sh = [s for s in shapes if shape_name(s) not in skip and f"{arr}:{shape_name(s)}" not in skip]
            r, info = run_array(arr, sh, dataflows, args.seed)
            rows += r
            infos.append(info)
    ss_rows = run_scalesim_rows(shapes_of(args.scalesim_shapes), dataflows) if args.scalesim else []

    old = {}  # read now, not at start: another run may have written meanwhile
    if not args.fresh and out.with_suffix(".json").exists():
        old = json.loads(out.with_suffix(".json").read_text())
    arr_infos = {i["array"]: i for i in old.get("arrays", [])}
    arr_infos.update({i["array"]: i for i in infos})
    res = {
        "benchmark": "systolic_utilisation",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "nproc": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
        "versions": versions() | {"scalesim": scalesim_version()},
        "target": TARGET,
        "notes": NOTES,
        "arrays": sorted(arr_infos.values(), key=lambda i: int(i["array"].split("x")[0])),
        "rows": merge(old.get("rows", []), rows),
        "scalesim": merge(old.get("scalesim", []), ss_rows),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    out.with_suffix(".md").write_text(md)
    print()
    print(md)


if __name__ == "__main__":
    main()
