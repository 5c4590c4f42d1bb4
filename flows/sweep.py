"""Design-space sweeps: ``gatesmith sweep SWEEP.yaml -o OUT [-j N | --ray ADDRESS] [--resume]``.

The sweep file
--------------
::

    name: systolic-shapes            # optional, for titles
    base: demo.yaml                  # an accelerator YAML (relative to this file) or a mapping
    axes:                            # dotted config paths -> values
      engines.systolic.rows: [2, 4, 8]
      engines.systolic.cols: {from: 2, to: 8, step: 2}
      engines.bitserial.pes: [4, 8]            # any engine of the base, any field
      engines.systolic.rows, engines.systolic.cols: [[4, 4], [8, 8]]   # zipped axis
    mode: grid                       # grid (every combination) or random
    samples: 16                      # random: this many grid points, seeded, without replacement
    seed: 0
    stages: [generate, cycles]       # generate, verify, build, cycles (run in that order)
    generate: {lint: true}
    verify: {cocotb: false, count: 2, seed: 1}
    build: {board: ulx3s, freq_mhz: null, dsp: auto, timeout_s: 3600}
    workload:                        # for the cycles stage
      gemms: [[64, 64, 64], {name: qkv, m: 128, k: 768, n: 768}]
      engine: auto                   # or systolic, bitserial, pim
      dataflow: best                 # or os, ws, is
    resources: {cpus: 1, memory_mb: 4096}   # per trial, on Ray
    objectives: [cycles:min, verilog_bytes:min]

An axis path is a top-level AccelConfig field (``clock_hz``), an engine field
(``engines.systolic.rows``) or a whole engine (``engines.pim``: a mapping of fields, or null to
leave the engine out). Errors in the file name the axis (or key) and say what is valid; an axis
value that no trial can use is an error, a combination that is invalid becomes an ``invalid`` row.

Execution
---------
Every trial runs :func:`gatesmith.flows.sweep_stages.run_trial`, in a local process pool (``-j N``,
default 1) or as a Ray task (``--ray local|auto|HOST:PORT``, ``flows/sweep_exec.py``). Each stage's
successful result is cached in ``OUT/cache`` (or ``cache_dir``) under a hash of its inputs, so a
re-run, or a sweep with one more axis value, runs only the new work. Every finished trial is
appended to ``OUT/trials.jsonl`` at once; ``--resume`` keeps those records (failures included)
instead of retrying them. OUT remembers its sweep (``OUT/sweep.json``): base, stages, stage
options and workload must match to reuse it (axes may change).

Output: ``OUT/results.json``
----------------------------
``{"gatesmith_sweep": 1, "sweep": {...}, "metrics": {name: meaning}, "pareto": {...},
"trials": [record, ...]}`` where ``sweep`` holds ``name``, ``file``, ``identity``, ``mode``,
``axes`` (path -> values), ``stages``, ``options``, ``executor``, ``startup_s`` (joining Ray;
null when no trial ran), ``seconds`` (wall time of the run); ``pareto`` holds
``objectives`` (``[metric, "min"|"max"]`` pairs) and ``front`` (trial ids); and each record is:

* ``id``: first 12 hex digits of the trial config's SHA-256; ``index``: position in the sweep;
* ``point``: axis path -> value; ``config``: the whole AccelConfig as a mapping;
* ``status``: ``ok``, ``failed`` (a stage failed) or ``invalid`` (the combination is no config);
* ``error``: null, or ``{"stage", "type", "message"}`` (``traceback`` for unexpected errors);
* ``metrics``: flat name -> number of every stage run (``metrics`` at the top says what each is);
* ``stages``: stage -> ``{"status", "cached"}``; ``details``: per-GEMM cycles, build target;
* ``seconds``: stage -> wall seconds (the only field that differs between identical runs);
* ``pareto``: whether the trial is on the front.

``OUT/results.md`` tables the same; ``OUT/pareto.svg``/``.png`` plot the front. Default
objectives: ``lut:min, cycles:min, fmax_mhz:max`` with ``build``; otherwise ``verilog_bytes:min,
cycles:min`` (generated Verilog size stands in for area when nothing is synthesised).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
import time
from pathlib import Path

import yaml

from ..config import AccelConfig, load_config
from ..errors import ConfigError
from .sweep_stages import STAGE_METRICS, STAGES, StageCache, run_trial, source_digest, stage_key
from .workload import parse_workload

__all__ = ["SweepSpec", "load_sweep", "make_trials", "run_sweep", "run_trial", "summary",
           "rich_sweep_progress"]

_KEYS = {"name", "base", "axes", "mode", "samples", "seed", "stages", "generate", "verify",
         "build", "workload", "resources", "objectives"}  # fmt: skip
_OPTIONS = {"generate": {"lint"}, "verify": {"cocotb", "count", "seed"},
            "build": {"board", "freq_mhz", "clock", "dsp", "timeout_s", "seed"}}  # fmt: skip


@dataclasses.dataclass
class SweepSpec:
    name: str
    file: str
    base: dict  # the base AccelConfig as a mapping (defaults filled in)
    axes: list  # [(paths tuple, values list)]
    mode: str
    samples: int | None
    seed: int
    stages: tuple
    options: dict  # stage -> options (JSON-able; workload under "cycles")
    workload: dict | None  # parsed (Gemm objects), for run_trial
    resources: dict
    objectives: list  # [(metric, "min"|"max")]

    @property
    def identity(self) -> str:
        blob = json.dumps({"base": self.base, "stages": self.stages, "options": self.options},
                          sort_keys=True)  # fmt: skip
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---- the sweep file --------------------------------------------------------------------------
def _axis_values(key: str, vals) -> list:
    if isinstance(vals, dict):
        if set(vals) - {"from", "to", "step"} or not {"from", "to"} <= set(vals):
            raise ConfigError(f"axis {key!r}: a range is {{from: A, to: B, step: S}}, not {vals}")
        lo, hi, step = vals["from"], vals["to"], vals.get("step", 1)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi, step)) \
                or step < 1:  # fmt: skip
            raise ConfigError(f"axis {key!r}: from, to and step must be integers, step >= 1")
        vals = list(range(lo, hi + 1, step))
    if not isinstance(vals, list):
        raise ConfigError(f"axis {key!r} must be a list of values, not {vals!r}")
    if not vals:
        raise ConfigError(f"axis {key!r} has no values")
    seen = []
    for v in vals:
        if v in seen:
            raise ConfigError(f"axis {key!r} lists the value {v!r} twice")
        seen.append(v)
    return vals


def _check_path(key: str, path: str, base: dict) -> None:
    from ..generators.registry import engines

    parts = path.split(".")
    top = sorted(k for k in base if k != "engines")
    if parts[0] != "engines":
        if len(parts) != 1 or parts[0] not in base:
            raise ConfigError(f"axis {key!r}: the config has no field {path!r}; valid fields are "
                              f"{', '.join(top)} and engines.KIND.FIELD")  # fmt: skip
        return
    specs = engines()
    if len(parts) == 1 or parts[1] not in specs or len(parts) > 3:
        raise ConfigError(f"axis {key!r}: engine paths are engines.KIND or engines.KIND.FIELD "
                          f"with KIND one of {', '.join(sorted(specs))}")  # fmt: skip
    if len(parts) == 3:
        kind, field = parts[1], parts[2]
        if kind not in base["engines"]:
            raise ConfigError(f"axis {key!r}: the base config has no {kind} engine (it has "
                              f"{', '.join(base['engines'])}); add it to the base")  # fmt: skip
        names = [f.name for f in dataclasses.fields(specs[kind].config_cls)]
        if field not in names:
            raise ConfigError(f"axis {key!r}: engines.{kind} has no field {field!r}; valid "
                              f"fields are {', '.join(sorted(names))}")  # fmt: skip


def _parse_axes(axes, base: dict) -> list:
    if not isinstance(axes, dict) or not axes:
        raise ConfigError("axes must be a mapping of at least one config path to its values")
    out = []
    for key, vals in axes.items():
        paths = tuple(p.strip() for p in str(key).split(","))
        for p in paths:
            _check_path(key, p, base)
        vals = _axis_values(key, vals)
        if len(paths) > 1:
            for v in vals:
                if not isinstance(v, list) or len(v) != len(paths):
                    raise ConfigError(f"axis {key!r}: each value must be a list of "
                                      f"{len(paths)} values, not {v!r}")  # fmt: skip
        out.append((paths, vals))
    return out


def _parse_objectives(objs, stages) -> list:
    have = {m for s in stages for m in STAGE_METRICS[s]}
    if "cycles" in stages:
        have |= {f"cycles_{k}" for k in ("systolic", "bitserial", "pim")}
    if objs is None:
        objs = (["lut:min", "cycles:min", "fmax_mhz:max"] if "build" in stages
                else ["verilog_bytes:min", "cycles:min"])  # fmt: skip
        objs = [o for o in objs if o.split(":")[0] in have]
    if not isinstance(objs, list):
        raise ConfigError(f"objectives must be a list of METRIC:min|max, not {objs!r}")
    out = []
    for i, o in enumerate(objs):
        metric, _, sense = str(o).partition(":")
        if sense not in ("min", "max"):
            raise ConfigError(f"objectives[{i}] must be METRIC:min or METRIC:max, not {o!r}")
        if metric not in have:
            raise ConfigError(f"objectives[{i}]: metric {metric!r} is not produced by the "
                              f"stages {', '.join(stages)}; they give "
                              f"{', '.join(sorted(have))}")  # fmt: skip
        out.append((metric, sense))
    return out


def _stage_options(data: dict, stages) -> dict:
    opts = {}
    for stage, allowed in _OPTIONS.items():
        o = data.get(stage) or {}
        if not isinstance(o, dict) or set(o) - allowed:
            bad = sorted(set(o) - allowed) if isinstance(o, dict) else [o]
            raise ConfigError(f"{stage} has no option {bad[0]!r}; valid options are "
                              f"{', '.join(sorted(allowed))}")  # fmt: skip
        if stage in stages:
            opts[stage] = dict(o)
    if "build" in stages:
        from ..boards import board_names

        if opts["build"].get("board") not in board_names():
            raise ConfigError(f"build.board must be one of {', '.join(board_names())}, not "
                              f"{opts['build'].get('board')!r}")  # fmt: skip
    return opts


def load_sweep(path) -> SweepSpec:
    """Parse and check a sweep file (see the module docstring); ConfigError names what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep file {str(p)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {str(p)!r} must be a mapping with base, axes and stages")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"sweep file has no key {unknown[0]!r}; valid keys are "
                          f"{', '.join(sorted(_KEYS))}")  # fmt: skip
    base_src = data.get("base", {})
    try:
        base = load_config(p.parent / base_src if isinstance(base_src, str) else base_src or {})
    except ConfigError as e:
        raise ConfigError(f"base: {e}") from None
    stages = data.get("stages", ["generate", "cycles"])
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"stages must be a non-empty list of {', '.join(STAGES)}, not {stages!r}")
    for s in stages:
        if s not in STAGES:
            raise ConfigError(f"stages: {s!r} is not a stage; stages are {', '.join(STAGES)}")
    stages = tuple(s for s in STAGES if s in stages)
    options = _stage_options(data, stages)
    workload = None
    if "cycles" in stages:
        if "workload" not in data:
            raise ConfigError("the cycles stage needs a workload: {gemms: [[M, K, N], ...]}")
        workload = parse_workload(data["workload"])
        gemms = [dataclasses.asdict(g) for g in workload["gemms"]]
        options["cycles"] = {**workload, "gemms": gemms}
    mode = data.get("mode", "grid")
    if mode not in ("grid", "random"):
        raise ConfigError(f"mode must be grid or random, not {mode!r}")
    samples = data.get("samples")
    if mode == "random" and (isinstance(samples, bool) or not isinstance(samples, int)
                             or samples < 1):  # fmt: skip
        raise ConfigError(f"mode random needs samples, an integer >= 1, not {samples!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, not {seed!r}")
    res = data.get("resources") or {}
    if not isinstance(res, dict) or set(res) - {"cpus", "memory_mb"}:
        raise ConfigError(f"resources takes cpus and memory_mb, not {res!r}")
    for k, v in res.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(f"resources.{k} must be a positive number, not {v!r}")
    return SweepSpec(name=str(data.get("name", p.stem)), file=str(p), base=base.to_dict(),
                     axes=_parse_axes(data.get("axes"), base.to_dict()), mode=mode,
                     samples=samples, seed=seed, stages=stages, options=options,
                     workload=workload, resources=res,
                     objectives=_parse_objectives(data.get("objectives"), stages))  # fmt: skip


# ---- trials ----------------------------------------------------------------------------------
def _points(spec: SweepSpec) -> list[dict]:
    grid = [vals for _, vals in spec.axes]
    combos = list(itertools.product(*grid))
    if spec.mode == "random" and spec.samples < len(combos):
        picked = sorted(random.Random(spec.seed).sample(range(len(combos)), spec.samples))
        combos = [combos[i] for i in picked]
    points = []
    for combo in combos:
        pt = {}
        for (paths, _), v in zip(spec.axes, combo, strict=True):
            pt.update(zip(paths, v if len(paths) > 1 else [v], strict=True))
        points.append(pt)
    return points


def _apply(base: dict, point: dict) -> dict:
    d = json.loads(json.dumps(base))
    for path, v in point.items():
        parts = path.split(".")
        if parts[0] != "engines":
            d[path] = v
        elif len(parts) == 2:
            if v is None:
                d["engines"].pop(parts[1], None)
            else:
                d["engines"][parts[1]] = v
        else:
            d["engines"].setdefault(parts[1], {})[parts[2]] = v
    return d


def make_trials(spec: SweepSpec) -> list[dict]:
    """One dict per trial: ``index, point, config`` (a full AccelConfig mapping) or ``error``."""
    trials, seen, errors = [], set(), {}
    for i, pt in enumerate(_points(spec)):
        t = {"index": i, "point": pt}
        try:
            cfg = AccelConfig.from_dict(_apply(spec.base, pt))
            t["config"], t["id"] = cfg.to_dict(), cfg.content_hash[:12]
        except ConfigError as e:
            t["config"], t["error"] = _apply(spec.base, pt), str(e)
            blob = json.dumps(t["config"], sort_keys=True).encode()
            t["id"] = hashlib.sha256(blob).hexdigest()[:12]
        if t["id"] in seen:
            continue
        seen.add(t["id"])
        trials.append(t)
        for path, v in pt.items():
            errors.setdefault((path, json.dumps(v)), []).append(t.get("error"))
    for (path, v), errs in errors.items():  # a value no trial can use is the file's error
        if all(errs):
            key = next(k for k, _ in spec.axes if path in k)
            raise ConfigError(f"axis {', '.join(key)!r}: value {json.loads(v)!r} is invalid: "
                              f"{errs[0]}")  # fmt: skip
    return trials


# ---- OUT ----------------------------------------------------------------------------------------
def _claim_out(spec: SweepSpec, out: Path) -> None:
    meta = out / "sweep.json"
    mine = {"gatesmith_sweep": 1, "identity": spec.identity, "name": spec.name, "file": spec.file,
            "base": spec.base, "stages": list(spec.stages), "options": spec.options}  # fmt: skip
    if meta.exists():
        try:
            old = json.loads(meta.read_text())
        except ValueError:
            old = {}
        if old.get("identity") != spec.identity:
            diff = [k for k in ("base", "stages", "options") if old.get(k) != mine[k]]
            raise ConfigError(
                f"{out} holds a different sweep ({old.get('name')!r} from {old.get('file')!r}): "
                f"its {', '.join(diff) or 'contents'} differ; choose another -o directory"
            )
    elif out.exists() and any(p.name not in ("cache",) for p in out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no sweep; choose another -o directory")
    out.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(mine, indent=1) + "\n")


def _record(t: dict, stage_results: dict, cached: set, spec: SweepSpec) -> dict:
    rec = {"id": t["id"], "index": t["index"], "point": t["point"], "config": t["config"],
           "status": "ok", "error": None, "metrics": {}, "stages": {}, "details": {},
           "seconds": {}, "pareto": False}  # fmt: skip
    if "error" in t:
        rec["status"] = "invalid"
        rec["error"] = {"stage": "config", "type": "ConfigError", "message": t["error"]}
        return rec
    for stage, r in stage_results.items():
        rec["metrics"].update(r["metrics"])
        rec["details"].update(r.get("details", {}))
        rec["stages"][stage] = {"status": r["status"], "cached": stage in cached}
        rec["seconds"][stage] = r["seconds"]
        if r["status"] != "ok":
            rec["status"], rec["error"] = "failed", r["error"]
    m = rec["metrics"]
    if m.get("cycles") is not None:
        mhz = m.get("fmax_mhz") or t["config"]["clock_hz"] / 1e6
        m["clock_mhz"] = round(mhz, 3)
        m["time_s"] = m["cycles"] / (mhz * 1e6)
    return rec


class _Tally:
    def __init__(self, total: int, progress):
        self.total, self.progress = total, progress
        self.done = self.failed = self.cached = self.running = 0

    def update(self, rec: dict | None = None, cached: bool = False):
        if rec is not None:
            self.done += 1
            self.failed += rec["status"] != "ok"
            self.cached += cached
        if self.progress:
            self.progress(self)


def run_sweep(spec: SweepSpec | str | Path, out_dir, *, jobs: int = 1, ray: str | None = None,
              resume: bool = False, cache_dir=None, use_cache: bool = True,
              progress=None, local_ray_cpus: int | None = None) -> dict:  # fmt: skip
    """Run the sweep into ``out_dir``; returns the results.json mapping (module docstring).

    ``progress`` is called with a tally (``done, running, failed, cached, total``) as trials
    start and finish. Raises ConfigError for a bad sweep file, OUT or Ray address.
    """
    from .sweep_exec import PoolExecutor, RayExecutor

    spec = spec if isinstance(spec, SweepSpec) else load_sweep(spec)
    out = Path(out_dir)
    trials = make_trials(spec)
    executor = (RayExecutor(ray, cpus=spec.resources.get("cpus", 1),
                            memory_mb=spec.resources.get("memory_mb"), local_cpus=local_ray_cpus)
                if ray else PoolExecutor(jobs))  # fmt: skip
    _claim_out(spec, out)
    cache = StageCache((Path(cache_dir) if cache_dir else out / "cache") if use_cache else None)
    digest = {False: source_digest(), True: source_digest(tests=True)}
    journal = out / "trials.jsonl"
    kept = {}
    if resume and journal.exists():
        for line in journal.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:  # a line cut short by the interruption
                continue
            kept[r["id"]] = r
    records = {t["id"]: kept[t["id"]] for t in trials if t["id"] in kept}
    tally = _Tally(len(trials), progress)
    t0 = time.monotonic()
    with open(journal, "w") as jf:
        for r in records.values():
            jf.write(json.dumps(r) + "\n")
            tally.update(r, cached=True)

        def finish(t, results, cached):
            rec = _record(t, results, cached, spec)
            records[t["id"]] = rec
            jf.write(json.dumps(rec) + "\n")
            jf.flush()
            tally.update(rec, cached=bool(cached) and len(cached) == len(results))

        queue = []
        for t in trials:
            if t["id"] in records:
                continue
            if "error" in t:
                finish(t, {}, set())
                continue
            keys = {s: stage_key(s, t["config"], spec.options.get(s, {}), digest[s == "verify"])
                    for s in spec.stages}  # fmt: skip
            hits = {}
            for s in spec.stages:
                r = cache.get(s, keys[s])
                if r is None:
                    break
                hits[s] = r
            if len(hits) == len(spec.stages):
                finish(t, hits, set(hits))
                continue
            todo = [s for s in spec.stages if s not in hits]
            options = {s: dict(spec.options.get(s, {})) for s in todo}
            if "cycles" in options:
                options["cycles"]["workload"] = spec.workload
            queue.append((t, keys, hits, {"id": t["id"], "config": t["config"], "stages": todo,
                                          "options": options, "out_dir": str(out.resolve())}))
        try:
            _drive(executor, queue, cache, finish, tally)
        except KeyboardInterrupt:  # keep what finished: results of the trials done so far
            recs = sorted(records.values(), key=lambda r: r["index"])
            _write_outputs(spec, out, recs, executor, time.monotonic() - t0)
            raise
    recs = sorted(records.values(), key=lambda r: r["index"])
    return _write_outputs(spec, out, recs, executor, time.monotonic() - t0)


def _drive(executor, queue, cache, finish, tally) -> None:
    if not queue:
        return
    with executor:
        inflight = {}
        while queue or inflight:
            while queue and len(inflight) < executor.capacity:
                item = queue.pop(0)
                inflight[executor.submit(item[3])] = item
            tally.running = len(inflight)
            tally.update()
            for h, results, died in executor.wait(list(inflight), timeout=0.5):
                t, keys, hits, _task = inflight.pop(h)
                if died:
                    stage = next(s for s in keys if s not in hits)
                    results = {stage: {"status": "failed", "metrics": {}, "details": {},
                                       "seconds": 0.0, "error": {"stage": stage,
                                       "type": "WorkerDied", "message": died}}}  # fmt: skip
                for s, r in results.items():
                    if r["status"] == "ok" and s in keys:
                        cache.put(s, keys[s], r)
                tally.running = len(inflight)
                finish(t, {**hits, **results}, set(hits))


# ---- results.json, results.md, the plot ------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def _markdown(res: dict) -> str:
    sw, recs = res["sweep"], res["trials"]
    axes = list(sw["axes"])
    objs = [k for k, _ in res["pareto"]["objectives"]]
    extra = ("cycles", "utilisation", "time_s", "lut", "fmax_mhz", "verify_passed",
             "verify_failed")
    cols = list(dict.fromkeys(objs + [c for c in extra if any(c in r["metrics"] for r in recs)]))
    n_ok = sum(r["status"] == "ok" for r in recs)
    objectives = ", ".join(f"{k} ({s})" for k, s in res["pareto"]["objectives"]) or "none"
    lines = [f"# Sweep {sw['name']}", "",
             f"{len(recs)} trials ({n_ok} ok, {len(recs) - n_ok} failed or invalid), stages "
             f"{', '.join(sw['stages'])}, on {sw['executor']} in {sw['seconds']:.1f} s. Pareto "
             f"objectives: {objectives};"
             " front rows are marked *.", "",
             "| " + " | ".join(["id", *(a.rsplit(".", 1)[-1] for a in axes), "status", *cols,
                                 "front", "error"]) + " |",
             "|" + "---|" * (len(axes) + len(cols) + 4)]  # fmt: skip
    for r in recs:
        err = "" if not r["error"] else f"{r['error']['stage']}: {r['error']['message']}"
        err = err.replace("|", "/").replace("\n", " ")[:160]
        cells = [r["id"], *(_fmt(r["point"].get(a)) for a in axes), r["status"],
                 *(_fmt(r["metrics"].get(c)) for c in cols), "*" if r["pareto"] else "", err]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_outputs(spec: SweepSpec, out: Path, recs: list, executor, seconds: float) -> dict:
    from .pareto import pareto_front, plot_front

    front = pareto_front(recs, spec.objectives) if len(spec.objectives) >= 2 else []
    for r in recs:
        r["pareto"] = r["id"] in front
    metrics = {m: d for s in spec.stages for m, d in STAGE_METRICS[s].items()}
    res = {
        "gatesmith_sweep": 1,
        "sweep": {"name": spec.name, "file": spec.file, "identity": spec.identity,
                  "mode": spec.mode, "seed": spec.seed,
                  "axes": {", ".join(p): v for p, v in spec.axes}, "stages": list(spec.stages),
                  "options": spec.options, "executor": executor.name,
                  "startup_s": getattr(executor, "startup_s", None),
                  "seconds": round(seconds, 2)},
        "metrics": metrics,
        "pareto": {"objectives": [list(o) for o in spec.objectives], "front": front},
        "trials": recs,
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "results.md").write_text(_markdown(res))
    if front:
        plot_front(recs, spec.objectives, front, out / "pareto", title=f"sweep {spec.name}")
    return res


def summary(res: dict, out_dir) -> str:
    """Two lines for the terminal: counts, time, the front and where the files are."""
    recs = res["trials"]
    ok = sum(r["status"] == "ok" for r in recs)
    cached = sum(all(s["cached"] for s in r["stages"].values()) and bool(r["stages"])
                 for r in recs)  # fmt: skip
    front = res["pareto"]["front"]
    return (f"sweep {res['sweep']['name']}: {len(recs)} trials, {ok} ok, {len(recs) - ok} failed "
            f"or invalid, {cached} from cache, {res['sweep']['seconds']:.1f} s on "
            f"{res['sweep']['executor']}; Pareto front: {len(front)} trials\n"
            f"results in {Path(out_dir) / 'results.json'} and results.md")


def rich_sweep_progress(console=None):
    """A context manager giving a ``progress`` callback for :func:`run_sweep` drawn with rich:
    trials done of total, running, failed, served from cache, and the time left."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.progress import TimeElapsedColumn, TimeRemainingColumn

    @contextmanager
    def manager():
        bar = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.description}"), TimeElapsedColumn(),
                       TextColumn("left"), TimeRemainingColumn(), console=console)  # fmt: skip
        with bar:
            task = bar.add_task("", total=None)

            def progress(t):
                bar.update(task, total=t.total, completed=t.done,
                           description=f"running {t.running}, failed {t.failed}, "
                                       f"cached {t.cached}")  # fmt: skip

            yield progress

    return manager()
