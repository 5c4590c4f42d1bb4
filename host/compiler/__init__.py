"""The schedule compiler's front end: a torch model -> a quantised graph placed on the engines.

    from gatesmith.host.compiler import compile, GoldenBackend, DeviceBackend
    c = compile(model, (x,), "accel.yaml", calibration=[(x1,), (x2,)])
    print(c.report)                                  # per op: engine or host (why), cycles
    y = c.run((x,))                                  # the bit-exact golden model
    with gatesmith.host.open("sim", config=c.config) as dev:
        y_dev = c.run((x,), DeviceBackend(dev))      # == y, bit for bit
    c.save("model.pt"); c2 = Compiled.load("model.pt")

Stages: :func:`graph.capture` (torch.export -> IR), :func:`report.place` (engine per op),
:func:`quant.calibrate` + :func:`quant.prepare` (static scales, int8 weights), :func:`schedule`
(per GEMM the dataflow and tiles with the fewest modelled cycles, from the engine's exact cycle
model and the DMA traffic model), then a golden run on the example inputs fills the report's
predicted cycles and device-memory words. The artefact holds only plain
tensors, dicts and strings (``torch.load(..., weights_only=True)`` reads it).
"""

from __future__ import annotations

import torch

from ...errors import CompileError, UsageError
from .golden import Backend, DeviceBackend, GoldenBackend, check_run_inputs, execute, run_float
from .graph import Graph, Op, capture
from .quant import GRANULARITIES, Calibration, calibrate, prepare
from .fuse import fuse_attention, on_chip, prepare_fused
from .pim import route_gemv
from .report import Report, place

__all__ = ["compile", "schedule", "allocate_scratchpad", "MODES", "Compiled", "capture", "calibrate", "place", "Graph", "Op", "Report",
           "Backend", "GoldenBackend", "DeviceBackend", "CompileError"]  # fmt: skip

FORMAT = "gatesmith.compiled/1"


class Compiled:
    """A captured, placed and quantised graph for one accelerator config."""

    def __init__(self, graph: Graph, config, placement: dict, consts: dict, report: Report,
                 granularity: str, alloc: dict | None = None):  # fmt: skip
        self.graph, self.config, self.consts = graph, config, consts
        self.placement = placement  # {op: (engine, reason)}
        self.report = report
        self.granularity = granularity
        self.alloc = alloc or {}  # resident tensors: {producer: {"offset", "consumers", ...}}

    def run(self, inputs, backend: Backend | None = None):
        """The quantised graph on ``inputs`` (shaped as the example inputs): the golden model
        by default, or ``backend`` (a :class:`DeviceBackend`). Returns a float tensor (a tuple
        for several outputs). A backend that measures fills the report's measured columns."""
        inputs = check_run_inputs(self.graph, inputs)
        backend = GoldenBackend(self.config) if backend is None else backend
        if backend.config.content_hash != self.config.content_hash:
            raise UsageError(
                f"the backend's accelerator ({backend.config.name}) is not the one this model "
                f"was compiled for ({self.config.name})"
            )
        trace: list = []
        engines = {k: v[0] for k, v in self.placement.items()}
        with torch.no_grad():
            outs = execute(self.graph, self.consts, engines, backend, inputs, trace, self.alloc)
        self.report.update(trace)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def run_float(self, inputs):
        """The captured graph in float (the semantic reference the quantised run approximates)."""
        with torch.no_grad():
            outs = run_float(self.graph, check_run_inputs(self.graph, inputs))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def save(self, path) -> None:
        torch.save({"format": FORMAT, "graph": self.graph.to_dict(),
                    "config": self.config.to_dict(),
                    "placement": {k: list(v) for k, v in self.placement.items()},
                    "consts": self.consts, "report": self.report.to_dict(),
                    "granularity": self.granularity, "alloc": self.alloc}, path)  # fmt: skip

    @classmethod
    def load(cls, path) -> Compiled:
        from ...config import AccelConfig

        try:
            d = torch.load(path, weights_only=True)
        except FileNotFoundError:
            raise UsageError(f"compiled model file {str(path)!r} does not exist") from None
        except Exception as e:  # noqa: BLE001 - a file that is not a torch archive of plain data
            raise UsageError(f"{str(path)!r} is not a compiled gatesmith model: {e}") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise UsageError(f"{str(path)!r} is not a compiled gatesmith model ({FORMAT})")
        return cls(Graph.from_dict(d["graph"]), AccelConfig.from_dict(d["config"]),
                   {k: tuple(v) for k, v in d["placement"].items()}, d["consts"],
                   Report.from_dict(d["report"]), d["granularity"], d.get("alloc"))  # fmt: skip


def schedule(graph: Graph, placement: dict, cfg) -> dict:
    """Each systolic op's dataflow and tiles (:func:`gatesmith.host.systolic.choose`: the
    built dataflow with the fewest modelled program cycles for its GEMM shape)."""
    import math

    from ..systolic import choose

    out = {}
    scfg = cfg.engine("systolic")
    for op in graph.ops:
        if placement.get(op.name, ("host",))[0] != "systolic":
            continue
        if op.kind == "linear":
            x = graph.op(op.inputs[0]).shape
            m, k, n = math.prod(x[:-1]), x[-1], op.shape[-1]
        else:  # matmul: one GEMM per batch element
            a = graph.op(op.inputs[0]).shape
            m, k, n = a[-2], a[-1], op.shape[-1]
        out[op.name] = choose(m, k, n, scfg, cfg)
    return out


MODES = ("auto", "sequential")


def allocate_scratchpad(graph: Graph, placement: dict, consts: dict, cfg, *, progress=None,
                        ilp_limit: int | None = None, time_limit: float = 60.0):  # fmt: skip
    """The scratchpad allocation (:mod:`.residency`, :mod:`.alloc`): ``(resident, summary)``
    with ``resident = {producer: {"offset", "consumers", "store", "m", "k"}}`` and a summary
    for the report (method "ilp" or "heuristic", status, objective words, solve time)."""
    from . import alloc as _alloc
    from .residency import problem

    prob, cands = problem(graph, placement, consts, cfg)
    limit = _alloc.ILP_LIMIT if ilp_limit is None else ilp_limit
    a = _alloc.allocate(prob, ilp_limit=limit, time_limit=time_limit, progress=progress)
    _alloc.check(prob, a.offsets)
    resident = {p: {**cands[p], "offset": o} for p, o in a.offsets.items()}
    summary = {**a.to_dict(), "offsets": dict(a.offsets), "base": prob.base,
               "tensors": len(prob.tensors), "resident": sorted(a.offsets)}  # fmt: skip
    return resident, summary


def compile(model: torch.nn.Module, example_inputs: tuple, config, calibration=None, *,
            granularity: str = "row", mode: str = "auto", progress=None,
            ilp_limit: int | None = None, gemv: list[str] | None = None,
            decode_attention: bool = False) -> Compiled:  # fmt: skip
    """Capture, place, calibrate (on ``calibration``, a list of input tuples; default: the
    example inputs alone) and quantise ``model`` for the accelerator ``config`` (anything
    :func:`gatesmith.config.load_config` takes). ``progress(stage)`` is told each stage.

    ``mode`` (InTAR's choice per task): ``"auto"`` runs every chain that fits on chip in
    dataflow mode (attention: the intermediates never leave the chip) and the rest
    sequentially, one op at a time through device memory; ``"sequential"`` runs every op that
    way (the baseline). In ``"auto"`` mode the scratchpad is allocated across the graph
    (:func:`allocate_scratchpad`: one ILP, or the greedy heuristic above ``ilp_limit`` integer
    variables); the report says which ran, its objective in device-memory words and its time.
    ``gemv``: the engine (``"pim"`` or not) of each ``M = 1`` linear in op
    order, when the caller has routed them (``compiler.pim.route_gemv``; default: routed here).
    ``decode_attention``: run decode-step attention over a KV cache as one on-chip program
    (``compiler.decode_attention``: the offloading option)."""
    from ...config import load_config

    say = progress or (lambda _msg: None)
    cfg = load_config(config)
    if granularity not in GRANULARITIES:
        raise CompileError(f"granularity must be 'row' or 'tensor', not {granularity!r}")
    if mode not in MODES:
        raise CompileError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    say("capture: torch.export")
    was_training = model.training if isinstance(model, torch.nn.Module) else False
    if was_training:
        model.eval()
    try:
        graph = capture(model, example_inputs)
    finally:
        if was_training:
            model.train()
    say(f"place: {sum(o.kind != 'input' for o in graph.ops)} ops on {cfg.name}")
    placement = place(graph, cfg)
    route_gemv(graph, placement, cfg, gemv)
    fusions = fuse_attention(graph, placement, cfg, on_chip=mode != "sequential")
    if decode_attention:
        from .decode_attention import fuse_decode_attention

        fusions.update(fuse_decode_attention(graph, placement, cfg))
    if fusions:
        n = sum(map(on_chip, fusions.values()))
        say(f"fuse: {len(fusions)} attention chain(s), {n} on chip, {len(fusions) - n} op by op")
    samples = [tuple(example_inputs)] if calibration is None else calibration
    say(f"calibrate: {len(samples) if isinstance(samples, (list, tuple)) else '?'} samples")
    calib: Calibration = calibrate(graph, samples, granularity=granularity)
    say("quantise: int8 weights per channel, static activation scales")
    consts = prepare(graph, calib, cfg, {k: v[0] for k, v in placement.items()})
    prepare_fused(fusions, calib, cfg, consts)
    say("schedule: dataflow and tiles per GEMM from the cycle and traffic models")
    schedules = schedule(graph, placement, cfg)
    for name, sc in schedules.items():
        consts[name]["schedule"] = sc
    report = Report.build(graph, placement)
    report.set_schedule(schedules)
    resident = {}
    if mode == "auto":
        say("allocate: scratchpad residency across the graph")
        resident, summary = allocate_scratchpad(graph, placement, consts, cfg, progress=say,
                                                ilp_limit=ilp_limit)  # fmt: skip
        report.set_allocation(summary, resident, cfg)
        say(f"allocate: {summary['method']} ({summary['status']}) in "
            f"{summary['solve_s'] * 1e3:.1f} ms: {summary['objective']:,} device-memory words "
            f"(nothing resident: {summary['base']:,}), resident: "
            f"{', '.join(summary['resident']) or 'none'}")  # fmt: skip
    compiled = Compiled(graph, cfg, placement, consts, report, granularity, resident)
    say("predict: golden run on the example inputs")
    compiled.run(tuple(example_inputs))
    return compiled
