"""LUT/FF/DSP/BRAM and Fmax of the systolic accelerator, built into real bitstreams.

Builds the whole accelerator (host-link bridge + controller + AXI4-Lite + systolic engine, behind
the board's UART) with :func:`gatesmith.flows.bitstream.build_bitstream` for each array size and
accumulation mode, and prints/writes a table. Defaults: int8 4x4 and 8x8 on the ULX3S (ECP5-85F),
accumulation cpa and carry_save, timed against 100 MHz, plus one iCEBreaker configuration that
fits the UP5K.

    python benchmarks/fpga_resources.py                     # the default table
    python benchmarks/fpga_resources.py --sizes 16x16 --accumulation carry_save
    python benchmarks/fpga_resources.py --no-icebreaker --out benchmarks/results/fpga_resources

Results: ``<out>.md`` and ``<out>.json``; each build's files under ``--work-dir``. Builds can run
as separate processes (``--sizes 8x8 --accumulation cpa``, ...) and be tabulated together with
``--collect``, which reads every ``report.json`` under ``--work-dir``. Times are wall
clock on this machine (2 shared cores); every figure comes from the tools' own reports.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from gatesmith.config import AccelConfig
from gatesmith.errors import BuildError
from gatesmith.flows.bitstream import build_bitstream
from gatesmith.flows.report import critical_path
from gatesmith.generators.systolic.config import SystolicConfig

# The smallest accelerator: the UP5K (5,280 logic cells) holds little beyond the control plane
# (host-link bridge, AXI4-Lite, controller, counters). Measured at 98.6% of the logic cells, so
# its build lifts the 85% fit limit (--icebreaker-max-fill) and place-and-route takes minutes.
ICEBREAKER_ENGINE = dict(
    rows=1, cols=1, dtype="int8", dataflows=("os",), acc_width=16, spad_depth=16, acc_depth=16
)
ICEBREAKER_TOP = dict(queue_depth=2, link_max_words=16)


def parse_size(text: str) -> tuple[int, int]:
    rows, _, cols = text.lower().partition("x")
    return int(rows), int(cols or rows)


def row_from_report(out_dir: Path) -> dict:
    """A table row from a finished build's ``report.json`` (and nextpnr's report beside it)."""
    rep = json.loads((out_dir / "report.json").read_text())
    cfg = rep["config"]
    (engine,) = cfg["engines"].values()
    row = {
        "design": rep["design"],
        "board": rep["board"],
        **{k: engine[k] for k in ("rows", "cols", "dtype", "accumulation", "dataflows")},
        **{k: engine[k] for k in ("spad_depth", "acc_depth", "acc_width")},
        "queue_depth": cfg["queue_depth"],
        "link_max_words": cfg["link_max_words"],
        "target_mhz": rep["target_mhz"],
    }
    for key, use in rep["utilisation"].items():
        row[key] = use["used"]
        row[f"{key}_available"] = use["available"]
    nextpnr = out_dir / "build" / "top.report.json"
    row.update(
        fmax_mhz=rep["fmax_mhz"],
        met=rep["timing_met"],
        seconds=rep["total_seconds"],
        stage_seconds=rep["stage_seconds"],
        critical_path=rep.get("critical_path") or critical_path(nextpnr),
        notes=rep["notes"],
    )
    return row


def build_one(name, engine, board, work_dir: Path, freq_mhz, args, *, top=None, max_fill=0.85):
    """Build one accelerator; its row (or the BuildError, as an ``error`` row)."""
    top = top or dict(queue_depth=args.queue_depth, link_max_words=args.link_max_words)
    cfg = AccelConfig(name=name, engines=(engine,), **top)
    t0 = time.monotonic()

    def progress(event):
        if event.status == "done" and not args.quiet:
            print(f"  {name}: {event.stage} {event.elapsed_s:.1f} s {event.message}", flush=True)

    try:
        build_bitstream(
            cfg,
            board,
            work_dir / name,
            freq_mhz=freq_mhz,
            clock="pll",  # one build timed at the target; the PLL runs it there
            progress=progress,
            seed=args.seed,
            timeout_s=args.timeout,
            max_fill=max_fill,
        )
    except BuildError as e:
        row = {"design": name, "board": board, "target_mhz": freq_mhz, **top}
        row.update({k: getattr(engine, k) for k in ("rows", "cols", "dtype", "accumulation")})
        row.update({k: getattr(engine, k) for k in ("spad_depth", "acc_depth", "acc_width")})
        row.update(dataflows=list(engine.dataflows), error=str(e))
        row.update(seconds=round(time.monotonic() - t0, 1))
        return row
    return row_from_report(work_dir / name)


def to_markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# FPGA resources of the systolic accelerator",
        "",
        f"Measured {meta['date']} on {meta['host']} with `benchmarks/fpga_resources.py` "
        f"(yowasp yosys + nextpnr, seed {meta['seed']}). The whole accelerator: UART PHY, "
        "host-link bridge, AXI4-Lite controller, instruction queue, systolic engine with its "
        "scratchpads. LUT = packed LUT4 (ECP5 TRELLIS_COMB; iCE40 logic cells), Fmax = "
        "nextpnr post-route.",
        "",
        "| board | array | dtype | accumulation | dataflows | acc bits | spad/acc depth | "
        "queue/link | LUT | FF | DSP | BRAM | Fmax MHz | target MHz | met | build s |",
        "| --- | --- | --- | --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: "
        "| ---: | --- | ---: |",
    ]
    for r in rows:
        head = (
            f"| {r['board']} | {r['rows']}x{r['cols']} | {r['dtype']} | {r['accumulation']} | "
            f"{'/'.join(r['dataflows'])} | {r['acc_width']} | {r['spad_depth']}/{r['acc_depth']} | "
            f"{r['queue_depth']}/{r['link_max_words']} |"
        )
        if "error" in r:
            lines.append(f"{head} failed: {r['error']} | | | | | {r['target_mhz']:g} | | |")
            continue
        lines.append(
            f"{head} {r['lut']} | {r['ff']} | {r['dsp']} | {r['bram']} | {r['fmax_mhz']:.1f} | "
            f"{r['target_mhz']:g} | {'yes' if r['met'] else 'no'} | {r['seconds']:.0f} |"
        )
    paths = [(r["design"], r["critical_path"]) for r in rows if r.get("critical_path")]
    if paths:
        lines += ["", "Critical paths (nextpnr, post-route):", ""]
        lines += [
            f"- {name}: `{cp['from']}` -> `{cp['to']}`, {cp['delay_ns']:.2f} ns "
            f"({cp['logic_ns']:.2f} logic, {cp['routing_ns']:.2f} routing)"
            for name, cp in paths
        ]
    notes = [n for r in rows for n in r.get("notes", [])]
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--board", default="ulx3s")
    p.add_argument("--sizes", default="4x4,8x8", help="comma-separated RxC list")
    p.add_argument("--dtype", default="int8")
    p.add_argument("--accumulation", default="cpa,carry_save")
    p.add_argument("--freq", type=float, default=100.0, help="timing target, MHz")
    p.add_argument("--spad-depth", type=int, default=1024)
    p.add_argument("--acc-depth", type=int, default=1024)
    p.add_argument("--queue-depth", type=int, default=16)
    p.add_argument("--link-max-words", type=int, default=256)
    p.add_argument("--no-icebreaker", action="store_true", help="skip the iCEBreaker build")
    p.add_argument("--icebreaker-freq", type=float, default=12.0)
    p.add_argument("--icebreaker-max-fill", type=float, default=1.0)
    p.add_argument("--append", action="store_true", help="add to (replace by name in) <out>.json")
    p.add_argument(
        "--collect",
        action="store_true",
        help="build nothing: tabulate every finished build found under --work-dir",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1800.0, help="per-stage limit, s")
    p.add_argument("--work-dir", default="build/fpga_resources")
    p.add_argument("--out", default="benchmarks/results/fpga_resources")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)

    work = Path(args.work_dir)
    out = Path(args.out)
    rows = []
    if args.collect:
        reports = sorted(work.glob("*/report.json"))
        rows = [row_from_report(r.parent) for r in reports]
        args.sizes, args.no_icebreaker = "", True
    for size in filter(None, args.sizes.split(",")):
        r, c = parse_size(size)
        for acc in args.accumulation.split(","):
            engine = SystolicConfig(
                rows=r,
                cols=c,
                dtype=args.dtype,
                accumulation=acc,
                spad_depth=args.spad_depth,
                acc_depth=args.acc_depth,
            )
            name = f"sys{r}x{c}_{args.dtype}_{acc}"
            rows.append(build_one(name, engine, args.board, work, args.freq, args))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "stage_seconds"}))
    if not args.no_icebreaker:
        engine = SystolicConfig(**ICEBREAKER_ENGINE)
        name = "sys1x1_int8_icebreaker"
        row = build_one(
            name,
            engine,
            "icebreaker",
            work,
            args.icebreaker_freq,
            args,
            top=ICEBREAKER_TOP,
            max_fill=args.icebreaker_max_fill,
        )
        rows.append(row)
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "stage_seconds"}))

    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "host": f"{platform.machine()} {platform.system()}, Python {sys.version.split()[0]}",
        "seed": args.seed,
    }
    if args.append and out.with_suffix(".json").is_file():
        old = json.loads(out.with_suffix(".json").read_text())["rows"]
        names = {r["design"] for r in rows}
        rows = [r for r in old if r["design"] not in names] + rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md = to_markdown(rows, meta)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
