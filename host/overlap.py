"""Execution of a split graph: stages per device, pipelined requests and a timeline of both.

A split :class:`torch.fx.GraphModule` (host ops, and ``call_module`` nodes of accelerator
partitions) is cut into :class:`Stage` s, maximal runs of nodes on one device in topological
order. :func:`run_stages` runs one request's stages in order. :func:`run_pipelined` runs many
requests (sub-batches, NeuPIMs style) on one host thread, with the accelerator's programs
launched asynchronously: an accelerator stage's drivers launch each program
(``Program.launch``, one register write) and poll it (``Run.poll``); between polls the thread
runs the host stage of another request (the device's ``while_waiting`` hook), so while the
accelerator runs request ``i``'s partition the host runs request ``i + 1``'s host stage and both
are busy at once. No thread is needed for the accelerator: the board (the simulator, in its own
process) runs the program while the host computes. Accelerator stages run one at a time in
request order (one device, one program at a time); a host stage started during a poll runs to
its end, so a program that finishes meanwhile waits for it to be collected (the accelerator
stage's event ends when its results are back on the host).

When the host device is CUDA, host stages run on a side CUDA stream; an accelerator stage
waits for the event recorded at the end of the stage before it, copies its inputs through
pinned host buffers, and its results go back with non-blocking copies on that stream.

:class:`Timeline` records every stage as (device, label, request, start, end) in seconds of
wall time since the run began, plus the board cycles of each accelerator stage;
:meth:`Timeline.both_busy` is the share of the span when both devices were busy;
:meth:`Timeline.plot` draws it with matplotlib.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
import torch.fx

__all__ = ["Stage", "Timeline", "build_stages", "run_stages", "run_pipelined"]


@dataclass
class Stage:
    device: str  # "accel" or "host"
    nodes: list
    label: str


@dataclass
class Event:
    device: str
    label: str
    request: int
    start: float
    end: float
    cycles: int | None = None  # board cycles of an accelerator stage


@dataclass
class Timeline:
    """Stage events of one run (seconds from its start); ``clock_hz`` converts board cycles."""

    clock_hz: float
    events: list[Event] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    def add(self, device, label, request, start, end, cycles=None) -> None:
        self.events.append(Event(device, label, request, start - self.t0, end - self.t0, cycles))

    @property
    def span(self) -> float:
        return max((e.end for e in self.events), default=0.0)

    def busy(self, device: str) -> float:
        return _union([(e.start, e.end) for e in self.events if e.device == device])

    def both_busy(self) -> float:
        """Share of the span during which the host and the accelerator were both busy."""
        a = _merge([(e.start, e.end) for e in self.events if e.device == "accel"])
        h = _merge([(e.start, e.end) for e in self.events if e.device == "host"])
        both = sum(max(0.0, min(a1, h1) - max(a0, h0)) for a0, a1 in a for h0, h1 in h)
        return both / self.span if self.span else 0.0

    def board_cycles(self) -> int:
        return sum(e.cycles or 0 for e in self.events if e.device == "accel")

    def to_dict(self) -> dict:
        return {"clock_hz": self.clock_hz, "events": [e.__dict__ for e in self.events]}

    def plot(self, path, title: str = "gatesmith timeline") -> None:
        """A Gantt chart of the events, one row per device, coloured by request."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 2.6))
        rows = {"host": 1, "accel": 0}
        cmap = plt.get_cmap("tab10")
        for e in self.events:
            ax.broken_barh([(e.start * 1e3, (e.end - e.start) * 1e3)], (rows[e.device] - 0.4, 0.8),
                           facecolors=cmap(e.request % 10), edgecolor="black", linewidth=0.3)  # fmt: skip
        ax.set_yticks([0, 1], ["accelerator", "host"])
        ax.set_xlabel("wall time (ms)")
        ax.set_title(f"{title}: both busy {self.both_busy():.0%} of {self.span * 1e3:,.0f} ms")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def _merge(iv):
    out = []
    for s, e in sorted(iv):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def _union(iv) -> float:
    return sum(e - s for s, e in _merge(iv))


def build_stages(gm: torch.fx.GraphModule, accel_targets: set[str]) -> list[Stage]:
    """Maximal runs of compute nodes per device (``call_module`` of ``accel_targets`` on the
    accelerator, every other call on the host)."""
    stages: list[Stage] = []
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        dev = "accel" if node.op == "call_module" and node.target in accel_targets else "host"
        if dev == "accel" or not stages or stages[-1].device != dev:
            label = node.target if dev == "accel" else f"host {len(stages)}"
            stages.append(Stage(dev, [], str(label)))
        stages[-1].nodes.append(node)
    return stages


class _Request:
    def __init__(self, env: dict):
        self.env = env
        self.next = 0
        self.running = False
        self.event = None  # the CUDA event at the end of the last host stage


def _exec_node(gm, node, env):
    args = torch.fx.node.map_arg(node.args, env.__getitem__)
    kwargs = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
    if node.op == "call_module":
        return gm.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _run_stage(gm, stage: Stage, req: _Request, index: int, timeline, stream, backend):
    t0 = time.perf_counter()
    cycles = None
    if stage.device == "accel":
        if req.event is not None:
            req.event.synchronize()
        (node,) = stage.nodes
        part = gm.get_submodule(node.target)
        args = torch.fx.node.map_arg(node.args, req.env.__getitem__)
        req.env[node], cycles = part.run(args, backend, stream)
    elif stream is not None:
        with torch.cuda.stream(stream):
            for node in stage.nodes:
                req.env[node] = _exec_node(gm, node, req.env)
            req.event = torch.cuda.Event()
            req.event.record(stream)
        req.event.synchronize()  # the stage's wall time is its device time
    else:
        for node in stage.nodes:
            req.env[node] = _exec_node(gm, node, req.env)
    if timeline is not None:
        timeline.add(stage.device, stage.label, index, t0, time.perf_counter(), cycles)


def _base_env(gm, inputs) -> dict:
    env = {}
    it = iter(inputs)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = next(it)
        elif node.op == "get_attr":
            env[node] = _fetch(gm, node.target)
    return env


def _fetch(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _outputs(gm, env):
    out = next(n for n in gm.graph.nodes if n.op == "output")
    return torch.fx.node.map_arg(out.args[0], env.__getitem__)


def run_stages(gm, stages, inputs, *, backend="device", timeline=None, stream=None, index=0):
    """One request through every stage in order; returns the graph's output value."""
    req = _Request(_base_env(gm, inputs))
    for st in stages:
        _run_stage(gm, st, req, index, timeline, stream, backend)
    return _outputs(gm, req.env)


def run_pipelined(gm, stages, requests: list, *, backend="device", timeline=None,
                  stream=None, device=None) -> list:  # fmt: skip
    """Many requests on this thread: accelerator stages in request order, the host stages of
    other requests run while the accelerator's programs run (see the module doc); ``device``:
    the open :class:`~gatesmith.host.Device` the accelerator stages use (None: the golden models,
    which compute on the host, so nothing overlaps). Returns the outputs in request order."""
    reqs = [_Request(_base_env(gm, r)) for r in requests]
    n = len(stages)

    def ready(device_kind: str) -> int | None:
        return next((i for i, r in enumerate(reqs) if r.next < n and not r.running
                     and stages[r.next].device == device_kind), None)  # fmt: skip

    def step(i: int) -> None:
        r = reqs[i]
        r.running = True
        try:
            _run_stage(gm, stages[r.next], r, i, timeline, stream, backend)
        finally:
            r.running = False
        r.next += 1

    busy = [False]

    def while_waiting() -> bool:
        """One host stage of another request while a program runs (not nested)."""
        if busy[0]:
            return False
        i = ready("host")
        if i is None:
            return False
        busy[0] = True
        try:
            step(i)
        finally:
            busy[0] = False
        return True

    with _waiting_hook(device if backend == "device" else None, while_waiting):
        while any(r.next < n for r in reqs):
            i = ready("accel")
            if i is None:
                i = ready("host")
            step(i)
    return [_outputs(gm, r.env) for r in reqs]


@contextlib.contextmanager
def _waiting_hook(dev, fn):
    if dev is None:
        yield
        return
    old = getattr(dev, "while_waiting", None)
    dev.while_waiting = fn
    try:
        yield
    finally:
        dev.while_waiting = old
