"""``gatesmith``: generate Verilog, verify it, build bitstreams, run work on an accelerator.

    gatesmith generate systolic --rows 8 --cols 8 --dtype int8 -o out/
    gatesmith generate --config accel.yaml -o out/
    gatesmith verify --config accel.yaml
    gatesmith build --board ulx3s --config accel.yaml -o out/
    gatesmith asic accel.yaml -o out/ [--engine systolic] [--openlane]
    gatesmith run --config accel.yaml --m 64 --k 64 --n 64
    gatesmith sweep examples/sweep.yaml -o sweep_out/ [-j 2 | --ray auto] [--resume]
    gatesmith compile model.py --config accel.yaml -o out/

Exit codes: 0 ok, 1 user or config error, 2 build error, 3 missing tool, 4 device error,
130 interrupted. Tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import yaml

from .errors import ConfigError, GatesmithError

__all__ = ["main"]

log = logging.getLogger("gatesmith")

_SYSTOLIC_FLAGS = {
    # flag -> (config field, type, help)
    "rows": ("rows", int, "array rows, 1..64"),
    "cols": ("cols", int, "array columns, 1..64"),
    "dtype": ("dtype", str, "operand format: int4, int8, int16, uint4, uint8, uint16"),
    "acc_width": ("acc_width", int, "accumulator bits (2 x operand bits .. 64)"),
    "dataflows": ("dataflows", str, "built-in dataflows, comma-separated subset of os,ws,is"),
    "accumulation": ("accumulation", str, "cpa or carry_save"),
    "spad_depth": ("spad_depth", int, "words per operand memory (power of two)"),
    "acc_depth": ("acc_depth", int, "accumulator rows (power of two)"),
}


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _add_config_args(p: argparse.ArgumentParser, *, engine_positional: bool = True) -> None:
    if engine_positional:
        p.add_argument("engine", nargs="?", help="engine kind to generate alone (e.g. systolic)")
    p.add_argument("--config", "-c", help="accelerator config (YAML)")
    g = p.add_argument_group("systolic engine (with the 'systolic' engine or no --config)")
    for flag, (_, typ, hlp) in _SYSTOLIC_FLAGS.items():
        g.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=typ, help=hlp)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="set an engine field (repeatable): --set lanes=4",
    )
    p.add_argument("--name", help="design name (Verilog module and file names)")


def _config_from_args(args):
    """An AccelConfig from --config and/or engine flags (flags override the file's engine)."""
    from .config import AccelConfig, load_config
    from .generators.registry import engines

    engine = getattr(args, "engine", None)
    fields = {}
    for flag, (field, _, _) in _SYSTOLIC_FLAGS.items():
        v = getattr(args, flag, None)
        if v is not None:
            fields[field] = v
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set takes FIELD=VALUE, not {item!r}")
        k, v = item.split("=", 1)
        fields[k.strip().replace("-", "_")] = yaml.safe_load(v)
    if args.config:
        if engine:
            raise ConfigError("give either an engine or --config, not both")
        cfg = load_config(args.config)
        if fields:
            if len(cfg.engines) != 1:
                raise ConfigError("engine flags need a config with exactly one engine")
            kind = type(cfg.engines[0]).kind
            d = cfg.to_dict()
            d["engines"][kind].update(fields)
            cfg = AccelConfig.from_dict(d)
    else:
        kind = engine or "systolic"
        specs = engines()
        if kind not in specs:
            raise ConfigError(f"engine must be one of {', '.join(sorted(specs))}, not {kind!r}")
        if kind != "systolic":
            extra = set(fields) & {f for f, _, _ in _SYSTOLIC_FLAGS.values()}
            bad = extra - {f.name for f in __import__("dataclasses").fields(specs[kind].config_cls)}
            if bad:
                raise ConfigError(f"--{sorted(bad)[0].replace('_', '-')} is not a {kind} field")
        cfg = AccelConfig.from_dict({"engines": {kind: fields}})
    if getattr(args, "name", None):
        d = cfg.to_dict()
        d["name"] = args.name
        cfg = AccelConfig.from_dict(d)
    return cfg


# ---- subcommands ------------------------------------------------------------------------------
def cmd_generate(args) -> int:
    from .flows.verilog import generate

    cfg = _config_from_args(args)
    con = _console()
    with con.status("generating") as st:
        res = generate(cfg, args.output, lint_output=not args.no_lint,
                       progress=lambda msg: st.update(msg))  # fmt: skip
    for name, path in res.files.items():
        print(path)
    if res.lint_warnings:
        for w in res.lint_warnings:
            con.print(f"[yellow]{w}")
        con.print(f"[red]lint: {len(res.lint_warnings)} warnings")
        return 2
    con.print(
        f"[green]generated[/] {cfg.name} in {res.seconds:.1f} s "
        f"({'lint clean' if not args.no_lint else 'lint skipped'}); "
        f"content hash {res.manifest['content_hash'][:12]}"
    )
    return 0


def cmd_verify(args) -> int:
    from .flows.verify import verify

    cfg = _config_from_args(args)
    con = _console()
    report = verify(cfg, seed=args.seed, count=args.count, console=con, cocotb=not args.no_cocotb)
    return 0 if report.ok else 1


def cmd_build(args) -> int:
    from .flows.bitstream import build_bitstream, rich_progress

    cfg = _config_from_args(args)
    con = _console()
    with rich_progress(console=con) as progress:
        rep = build_bitstream(
            cfg,
            args.board,
            args.output,
            freq_mhz=args.freq,
            clock=args.clock,
            margin=args.margin,
            progress=progress,
        )
    print(rep.to_markdown())
    return 0


def cmd_asic(args) -> int:
    """Generic Yosys synthesis of each engine and of the whole accelerator (no PDK): cells,
    flip-flops, memory bits and an area estimate whose assumptions are printed with it; with
    --openlane, a LibreLane (OpenLane 2) design directory in OUT/openlane."""
    from rich.table import Table

    from .config import load_config
    from .flows.asic import TABLE_COLUMNS, asic_view, table_rows

    cfg = load_config(args.config)
    con = _console()
    with con.status("ASIC view") as st:

        def progress(ev):
            if ev.status == "start":
                st.update(f"{ev.unit}: {ev.stage} ({ev.message})")
            else:
                con.print(f"{ev.unit}: {ev.stage} {ev.elapsed_s:.1f} s {ev.message}")

        rep = asic_view(cfg, args.output, engine=args.engine, memories=args.memories,
                        macro_min_words=args.macro_min_words, openlane=args.openlane,
                        liberty=args.liberty, progress=progress,
                        timeout_s=args.timeout)  # fmt: skip
    t = Table(title=f"gatesmith asic: {cfg.name} (generic synthesis, {rep.tools['yosys']})")
    for i, col in enumerate(TABLE_COLUMNS):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in table_rows(rep.units):
        t.add_row(*row)
    con.print(t)
    for key in ("nand2_eq", "um2_per_nand2", "liberty", "memories", "sram_um2_per_bit"):
        if key in rep.assumptions:
            con.print(f"[dim]{key}: {rep.assumptions[key]}")
    print(f"{args.output}/asic.md")
    print(f"{args.output}/asic.json")
    if rep.openlane_dir:
        print(f"{args.output}/{rep.openlane_dir}/config.json")
    return 0


def cmd_run_model(args) -> int:
    """``gatesmith run MODEL.py``: split the model between the accelerator and the host, run
    its ``requests()`` (default: the example inputs, 4 times) pipelined over both devices, and
    print the placement table and the timing."""
    import importlib.util

    from rich.table import Table

    from . import compile as split

    con = _console()
    model, inputs, calib = _load_model_file(args.model)
    spec = importlib.util.spec_from_file_location("_gatesmith_requests", args.model)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    reqs = mod.requests() if callable(getattr(mod, "requests", None)) else [inputs] * 4
    config = _config_from_args(args) if (args.config or args.set) else None
    with con.status("compiling") as st:
        m = split(model, inputs, device=args.device, config=config, placement=args.placement,
                  host=args.host, calibration=calib, progress=lambda msg: st.update(msg),
                  offload_attention=args.offload_attention)  # fmt: skip
    with m:
        with con.status(f"running {len(reqs)} requests ({args.device})"):
            t0 = time.monotonic()
            m.run_many(reqs)
            wall = time.monotonic() - t0
        print(m.report())
        tl = m.last_timeline
        if args.timeline:
            tl.plot(args.timeline, title=f"{args.model} ({m.policy})")
        cyc = tl.board_cycles()
        t = Table(title=f"gatesmith run {args.model}: {m.config.name} beside {m.host}")
        t.add_column("what")
        t.add_column("value", justify="right")
        t.add_row("requests", str(len(reqs)))
        t.add_row("wall s (simulated board)" if m.device else "wall s (golden models)",
                  f"{wall:.3f}")  # fmt: skip
        t.add_row("requests/s (wall)", f"{len(reqs) / wall:,.1f}")
        t.add_row(f"accelerator board cycles ({m.config.clock_hz / 1e6:g} MHz)", f"{cyc:,}")
        t.add_row("accelerator time at the clock, ms", f"{cyc / m.config.clock_hz * 1e3:.3f}")
        t.add_row("both devices busy (share of wall)", f"{tl.both_busy():.1%}")
        con.print(t)
    return 0


def cmd_run(args) -> int:
    import torch

    from . import host

    if args.model:
        return cmd_run_model(args)

    cfg = _config_from_args(args)
    con = _console()
    g = torch.Generator().manual_seed(args.seed)
    scfg = cfg.engine("systolic")
    if scfg is None:
        raise ConfigError("gatesmith run needs a config with a systolic engine")
    fmt = scfg.fmt
    dtype = {"int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16}.get(fmt.name, torch.int16)
    a = torch.randint(fmt.min, fmt.max + 1, (args.m, args.k), generator=g).to(dtype)
    b = torch.randint(fmt.min, fmt.max + 1, (args.k, args.n), generator=g).to(dtype)
    t0 = time.monotonic()
    with con.status("starting the simulated board") as st:
        dev = host.open("sim", config=cfg, progress=lambda m: st.update(m))
    t_open = time.monotonic() - t0
    with dev:
        dev.reset_perf()
        t1 = time.monotonic()
        with con.status(f"running a {args.m}x{args.k}x{args.n} GEMM on the simulated accelerator"):
            c = dev.matmul(a, b, dataflow=args.dataflow)
        t_run = time.monotonic() - t1
        perf = dev.perf()
        stats = dict(dev.stats)
    ref = a.long() @ b.long()
    ok = torch.equal(c.long(), ref)
    macs = args.m * args.k * args.n
    ideal = macs / (scfg.rows * scfg.cols)
    from rich.table import Table

    t = Table(title=f"gatesmith run: {cfg.name} ({scfg.rows}x{scfg.cols} {scfg.dtype})")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("result == a.long() @ b.long()", "[green]yes" if ok else "[red]NO")
    t.add_row("dataflow", args.dataflow or "default")
    t.add_row("open (build or cached) s", f"{t_open:.2f}")
    t.add_row("matmul wall s", f"{t_run:.2f}")
    t.add_row("compute cycles (engine busy)", f"{perf['busy']:,}")
    t.add_row("ideal cycles (MACs / PEs)", f"{ideal:,.0f}")
    t.add_row("compute utilisation", f"{ideal / max(1, perf['busy']):.1%}")
    t.add_row("program cycles (start to end)", f"{perf['program']:,}")
    t.add_row("end-to-end utilisation (ideal / program)", f"{ideal / max(1, perf['program']):.1%}")
    t.add_row("DMA words in / out (device memory)", f"{perf['load']:,} / {perf['store']:,}")
    t.add_row("total simulated cycles", f"{perf['cycles']:,}")
    t.add_row("simulated cycles / s", f"{perf['cycles'] / max(t_run, 1e-9):,.0f}")
    t.add_row("host-link bytes (sent + received)", f"{stats['bytes_sent'] + stats['bytes_received']:,}")
    con.print(t)
    return 0 if ok else 1


def cmd_sweep(args) -> int:
    from .flows.sweep import rich_sweep_progress, run_sweep, summary

    con = _console()
    with rich_sweep_progress(console=con) as progress:
        res = run_sweep(args.sweep, args.output, jobs=args.jobs, ray=args.ray, resume=args.resume,
                        cache_dir=args.cache, use_cache=not args.no_cache, progress=progress)
    con.print(summary(res, args.output))
    return 0


def _load_model_file(path: str):
    """``(model, example_inputs, calibration or None)`` from a MODEL.py (see cmd_compile)."""
    import importlib.util
    from pathlib import Path

    from .errors import UsageError

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"model file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_gatesmith_model_{p.stem}", p)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - the user's file: report what it raised
        raise UsageError(f"model file {path!r} failed to import: {type(e).__name__}: {e}") from e
    for fn in ("model", "example_inputs"):
        if not callable(getattr(mod, fn, None)):
            raise UsageError(f"model file {path!r} must define a function {fn}()")
    calib = getattr(mod, "calibration", None)
    return mod.model(), mod.example_inputs(), calib() if callable(calib) else None


def cmd_compile(args) -> int:
    """MODEL.py defines ``model()`` (an nn.Module), ``example_inputs()`` (a tuple of tensors)
    and optionally ``calibration()`` (a list of such tuples; default: the example inputs)."""
    from pathlib import Path

    from .config import load_config
    from .host.compiler import compile as compile_model

    if not args.config:
        raise ConfigError("gatesmith compile needs --config ACCEL.yaml")
    cfg = load_config(args.config)

    con = _console()
    with con.status("compile") as st:

        def progress(msg):
            st.update(f"compile: {msg}")  # the live line (the ILP's running time included)
            if not msg.endswith("(running)"):
                print(f"compile: {msg}", file=sys.stderr, flush=True)

        progress(f"load {args.model}")
        model, inputs, calib = _load_model_file(args.model)
        compiled = compile_model(model, inputs, cfg, calibration=calib,
                                 granularity=args.granularity, mode=args.mode,
                                 progress=progress)  # fmt: skip
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    compiled.save(out / "compiled.pt")
    text = compiled.report.to_markdown()
    (out / "report.md").write_text(f"# {Path(args.model).name} on {cfg.name}\n\n{text}\n")
    progress(f"wrote {out / 'compiled.pt'} and {out / 'report.md'}")
    if args.specialise:
        import yaml

        from .host.compiler.specialise import specialise

        lines = [f"# {cfg.name} specialised to {Path(args.model).name}", ""]
        for variant, fname in (("schedule", "specialised"), ("dataflow", "dataflow"),
                               ("sequential", "sequential")):  # fmt: skip
            spec, notes = specialise(compiled, variant=variant)
            (out / f"{fname}.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
            lines += [f"## {fname}.yaml ({spec.name})", "", *(f"- {n}" for n in notes), ""]
        (out / "specialised.md").write_text("\n".join(lines))
        progress(f"wrote {out / 'specialised.yaml'}, {out / 'dataflow.yaml'}, "
                 f"{out / 'sequential.yaml'} (see specialised.md)")
    print(text)
    return 0


class _ArgumentParser(argparse.ArgumentParser):
    """argparse exits 2 on a bad flag; here 2 means a build error, so a usage error exits 1."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _ArgumentParser(prog="gatesmith", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="emit Verilog + manifest.json")
    _add_config_args(g)
    g.add_argument("-o", "--output", required=True, help="output directory")
    g.add_argument("--no-lint", action="store_true", help="skip verilator --lint-only -Wall")
    g.set_defaults(func=cmd_generate)

    v = sub.add_parser("verify", help="run the cocotb benches and random regressions on Verilator")
    _add_config_args(v)
    v.add_argument("--seed", type=int, default=1)
    v.add_argument("--count", type=int, default=8, help="random GEMMs per dataflow")
    v.add_argument("--no-cocotb", action="store_true", help="skip the AXI4-Lite cocotb bench")
    v.set_defaults(func=cmd_verify)

    b = sub.add_parser("build", help="build a bitstream with yosys + nextpnr (yowasp)")
    _add_config_args(b, engine_positional=False)
    b.add_argument("--board", required=True, help="board: icebreaker or ulx3s")
    b.add_argument("-o", "--output", required=True, help="output directory")
    b.add_argument("--freq", type=float, help="clock to build for, MHz (default: config)")
    b.add_argument(
        "--clock",
        choices=("closure", "pll", "board"),
        default="closure",
        help="closure (default): a PLL at --freq, rebuilt below the reached Fmax when timing "
        "fails; pll: one build with the PLL at --freq; board: the oscillator, timed at --freq",
    )
    b.add_argument(
        "--margin", type=float, default=0.05, help="closure: run this fraction below Fmax"
    )
    b.set_defaults(func=cmd_build)

    a = sub.add_parser("asic", help="ASIC view: generic yosys synthesis, cells and area "
                       "(no PDK); LibreLane export", description=cmd_asic.__doc__)  # fmt: skip
    a.add_argument("config", help="accelerator config (YAML)")
    a.add_argument("-o", "--output", required=True, help="output directory")
    a.add_argument("--engine", help="synthesise only this engine of the config (not the whole)")
    a.add_argument("--openlane", action="store_true",
                   help="also write a LibreLane / OpenLane 2 design directory (OUT/openlane)")
    a.add_argument("--memories", choices=("macro", "flops"), default="macro",
                   help="macro: memories >= --macro-min-words words are SRAM macros, their bits "
                   "counted apart (default); flops: every memory becomes flip-flops and gates")
    a.add_argument("--macro-min-words", type=int, default=32,
                   help="smallest memory (words) counted as an SRAM macro (default 32)")
    a.add_argument("--liberty", metavar="FILE.lib",
                   help="map to this Liberty file's cells (e.g. a PDK's) and take its areas")
    a.add_argument("--timeout", type=float, help="seconds one yosys run may take")
    a.set_defaults(func=cmd_asic)

    r = sub.add_parser("run", help="run MODEL.py split between the accelerator and the host "
                       "(without MODEL.py: a GEMM on the simulated accelerator)")  # fmt: skip
    r.add_argument("model", nargs="?", help="MODEL.py defining model() and example_inputs()")
    _add_config_args(r, engine_positional=False)
    r.add_argument("--device", default="sim", choices=("sim", "golden"),
                   help="MODEL.py: the simulated board (default) or the golden models")
    r.add_argument("--placement", default="balance",
                   choices=("roofline", "balance", "accelerator", "host"), help="MODEL.py placement")
    r.add_argument("--host", default="auto", help="MODEL.py host device: auto, cpu or cuda")
    r.add_argument("--timeline", metavar="PNG", help="MODEL.py: save the timeline plot here")
    r.add_argument("--offload-attention", action="store_true",
                   help="MODEL.py: decode-step attention over a KV cache on the accelerator")
    r.add_argument("--m", type=int, default=64)
    r.add_argument("--k", type=int, default=64)
    r.add_argument("--n", type=int, default=64)
    r.add_argument("--dataflow", choices=("os", "ws", "is"))
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("sweep", help="run a design-space sweep (local pool or Ray)")
    s.add_argument("sweep", help="sweep file (YAML: base config, axes, stages)")
    s.add_argument("-o", "--output", required=True, help="output directory (results.json, .md)")
    s.add_argument("-j", "--jobs", type=int, default=1, help="local worker processes")
    s.add_argument("--ray", metavar="ADDRESS", help="run on Ray: local, auto or HOST:PORT")
    s.add_argument("--resume", action="store_true", help="keep the trials OUT already recorded")
    s.add_argument("--cache", metavar="DIR", help="stage cache (default OUT/cache)")
    s.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    s.set_defaults(func=cmd_sweep)

    c = sub.add_parser("compile", help="compile a torch model for an accelerator (golden model)",
                       description=cmd_compile.__doc__)  # fmt: skip
    c.add_argument("model", help="MODEL.py defining model() and example_inputs()")
    c.add_argument("--config", "-c", help="accelerator config (YAML)")
    c.add_argument("-o", "--output", required=True, help="output directory")
    c.add_argument("--mode", choices=("auto", "sequential"), default="auto",
                   help="auto: chains that fit run on chip (dataflow); sequential: op by op")
    c.add_argument("--granularity", choices=("row", "tensor"), default="row",
                   help="GEMM activation scales per row (default) or per tensor")
    c.add_argument("--specialise", action="store_true",
                   help="also write specialised.yaml (only the engines, dataflows and COPY the "
                   "schedule uses), dataflow.yaml (every on-chip connection) and "
                   "sequential.yaml (no on-chip chaining); all three give the same outputs")
    c.set_defaults(func=cmd_compile)
    return p


def main(argv=None) -> int:
    p = _parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (1): returned like every other code
        return e.code if isinstance(e.code, int) else 1
    logging.basicConfig(
        level=logging.WARNING - 10 * args.verbose if not args.quiet else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        p.print_help()
        return 1
    for dim in ("m", "k", "n"):
        if getattr(args, dim, 1) is not None and getattr(args, dim, 1) < 1:
            print(f"error: --{dim} must be at least 1, not {getattr(args, dim)}", file=sys.stderr)
            return 1
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except GatesmithError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
