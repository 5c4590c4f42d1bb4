"""Torch integration: one model split between the accelerator and the GPU (or CPU).

    import gatesmith, gatesmith.host
    with gatesmith.host.open("sim", config="examples/chain.yaml") as dev:
        m = gatesmith.compile(model, (x,), device=dev)         # or device="golden"
        y = m(x)                                               # split run
        print(m.report())                                      # every op: where, why, time
        fast = torch.compile(model, backend="gatesmith", options={"device": dev})

Steps of :func:`compile`:

1. **Capture**: ``torch.export`` (strict, then non-strict) of the model on the example inputs;
   the ATen graph (``ExportedProgram.module()``) is the fx graph that is partitioned, and the
   schedule compiler's IR of the same program says which ops an engine of the config can take
   (``host.compiler.report.place``: shape, dtype and format checks) and why not.
2. **Placement** (``host.placement``): each engine-capable op is priced on the accelerator's
   and the host's roofline; the policy (``"roofline"``, ``"accelerator"``, ``"host"``) keeps it
   on the accelerator or moves it to the host. Views, scalings and constant masks between
   engine ops follow them (the compiler folds them); residual adds and ops without an engine
   stay on the host, each with its reason. GEMV-shaped linears (``M = 1``) go to the PIM
   engine first when its cycle model beats the systolic engine's (``host.compiler.pim``;
   ``pim=False`` turns that off). ``offload_attention=True`` puts each decode-step attention
   over a KV cache on the accelerator as one program (``host.compiler.decode_attention``,
   the InstInfer / attention-offloading option), whatever the policy places around it.
3. **Partition**: ``CapabilityBasedPartitioner`` with :class:`AccelSupport` groups the
   accelerator ops into partitions (convex, so no cycle through the host); each partition is
   fused into a ``GraphModule`` by torch.fx and compiled by ``host.compiler.compile``, with
   activation scales calibrated on the partition's inputs of the calibration set (run in float
   through the split graph). Constants are folded first and each weight read gets its own
   ``get_attr``, so every partition holds its weights.
4. **Run**: host stages run eagerly on the host device (CUDA when available, else the CPU);
   accelerator partitions run through ``DeviceBackend(dev)`` (or the golden models with
   ``device="golden"``). ``host.overlap`` pipelines many requests over both devices on one
   host thread: accelerator programs are launched and polled, host stages run meanwhile.

The split's output equals the quantised golden model of its accelerator partitions composed
with the float host ops (``m(x, backend="golden")``), bit for bit on the accelerator part.

Shapes are static: a call with other input shapes is refused (``UsageError``) unless the model
was compiled with ``recompile=True``, which compiles again for the new shapes (and caches it).
The torch.compile backend always recompiles per input shape signature.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.fx
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
from torch.fx.passes.operator_support import OperatorSupportBase

from ..errors import CompileError, UsageError
from . import overlap
from .placement import POLICIES, AccelRoofline, Decision, HostRoofline, decide

__all__ = ["compile", "GatesmithModel", "AccelSupport", "gatesmith_backend", "resolve_host",
           "register"]  # fmt: skip

log = logging.getLogger(__name__)
ACCEL = ("systolic", "softmax", "gelu", "layernorm", "pim")
_HOST_ROOFLINES: dict[str, HostRoofline] = {}


def resolve_host(host: str = "auto") -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU), ``"cpu"`` or ``"cuda[:N]"``."""
    if not isinstance(host, str):
        raise UsageError(f"host must be 'auto', 'cpu' or 'cuda', not {host!r}")
    if host == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if host == "cpu":
        return torch.device("cpu")
    if host.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"host device {host!r} was requested but CUDA is not available "
                "(torch.cuda.is_available() is False)"
            )
        dev = torch.device(host)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"host device {host!r} does not exist "
                             f"({torch.cuda.device_count()} CUDA devices)")  # fmt: skip
        return dev
    raise UsageError(f"host must be 'auto', 'cpu' or 'cuda', not {host!r}")


def measured_host_roofline(dev: torch.device) -> HostRoofline:
    """The host's roofline, measured once per device per process."""
    key = str(dev)
    if key not in _HOST_ROOFLINES:
        _HOST_ROOFLINES[key] = HostRoofline.measure(key)
    return _HOST_ROOFLINES[key]


def _resolve_device(device, config):
    """(Device or None for the golden models, AccelConfig, opened-here flag)."""
    from ..config import load_config
    from .device import Device

    if isinstance(device, Device):
        if config is not None and load_config(config).content_hash != device.config.content_hash:
            raise UsageError(
                f"config {load_config(config).name!r} is not the open device's accelerator "
                f"({device.config.name!r})"
            )
        return device, device.config, False
    if device is None or device == "golden":
        if config is None:
            raise UsageError("give config= (the accelerator) when device is 'golden' or None")
        return None, load_config(config), False
    if device == "sim":
        from . import open as open_device

        cfg = load_config(config)
        return open_device("sim", config=cfg), cfg, True
    raise UsageError(
        f"device must be an open gatesmith.host.Device, 'sim' or 'golden', not {device!r}"
    )


# ---- operator support -------------------------------------------------------------------------


class AccelSupport(OperatorSupportBase):
    """Which fx nodes go to the accelerator: engine ops the placement kept there, and the
    views, scalings, constant masks and constant reads that feed them (see the module doc)."""

    def __init__(self, supported: set[str]):
        self.supported = supported

    def is_node_supported(self, submodules, node: torch.fx.Node) -> bool:
        return node.name in self.supported


def _decide_nodes(gm, ir, placement, cfg, acc, host, policy, chains=None) -> tuple[set, dict]:
    """(names of supported nodes, {IR op: Decision}) for every op of the model; ``chains``:
    offloaded decode attention (``compiler.decode_attention``), on the accelerator whatever
    the policy."""
    ops = {o.name: o for o in ir.ops}
    decisions: dict[str, Decision] = {}
    for op in ir.ops:
        if op.kind == "input":
            continue
        engine, reason = placement[op.name]
        if engine in ACCEL:
            d = decide(op, ir, cfg, engine, acc, host, "roofline" if policy == "balance" else policy)
            if reason and d.device == "accel":
                d.reason += f"; {reason}"
            decisions[op.name] = d
        elif engine == "fused":
            decisions[op.name] = Decision(op.name, op.kind, "fused", "fused",
                                          "data movement or scale, follows its neighbours")  # fmt: skip
        else:
            decisions[op.name] = Decision(op.name, op.kind, "host", "host", reason)
    if policy == "balance":
        _balance(decisions, host)
    for f in (chains or {}).values():
        _offload_chain(f, decisions, ir, cfg, acc, host)
    supported: set[str] = set()
    for node in reversed(list(gm.graph.nodes)):
        if node.op not in ("call_function", "get_attr"):
            continue
        d = decisions.get(node.name)
        if d is not None and node.name in ops:
            if d.device in ("accel", "fused"):  # partitions without an engine op are dropped
                supported.add(node.name)
        elif node.users and all(u.name in supported for u in node.users):
            supported.add(node.name)  # a weight read, a tuple node whose items all go there
    return supported, decisions


# ---- graph preparation --------------------------------------------------------------------------


def _offload_chain(f: dict, decisions: dict, ir, cfg, acc, host) -> None:
    """One decode attention chain on the accelerator: its matmuls and softmax there, its mask
    add and scalings folded into the one program; the reason gives the fused program's
    modelled time against the host's for the same ops."""
    from .compiler.report import predict

    p = predict("attention", [(f["heads"], 1, f["keys"], f["dim"])], cfg)
    t_acc = p["cycles"] / acc.clock_hz + acc.launch_s
    engine_ops = [decisions[n] for n in f["members"] if decisions[n].kind in ("matmul", "softmax")]
    t_host = sum(d.pred_host_s or 0.0 for d in engine_ops)
    why = (f"decode attention offloaded (option): one on-chip program for {f['heads']} heads "
           f"over {f['keys']} keys, {p['cycles']:,} engine cycles modelled ({t_acc * 1e6:,.1f} us) "
           f"vs {host.device} {t_host * 1e6:,.1f} us for its ops")  # fmt: skip
    for n in f["members"]:
        d = decisions[n]
        if d.kind in ("matmul", "softmax"):
            d.device, d.engine = "accel", d.planned or _engine_of(d)
            d.reason = why
        else:
            d.device, d.engine = "fused", "fused"
            d.reason = ("the additive mask, as the COPY's causal mask" if d.kind == "add"
                        else "folded into the offloaded decode attention")  # fmt: skip


def _balance(decisions: dict, host: HostRoofline) -> None:
    """Move engine ops to the accelerator, least slowed down first, while that lowers the
    busier device's load per request (both devices run at once when requests are pipelined)."""
    eng = [d for d in decisions.values() if d.pred_accel_s is not None]
    acc = sum(d.pred_accel_s for d in eng if d.device == "accel")
    hst = sum(d.pred_host_s for d in eng if d.device == "host")
    hst += host.op_s * sum(d.device == "host" and d.pred_host_s is None for d in decisions.values())
    for d in sorted((d for d in eng if d.device == "host"), key=lambda d: d.pred_accel_s / d.pred_host_s):
        if max(acc + d.pred_accel_s, hst - d.pred_host_s) >= max(acc, hst):
            continue
        acc, hst = acc + d.pred_accel_s, hst - d.pred_host_s
        d.device, d.engine = "accel", d.planned or _engine_of(d)
        d.reason = (f"balance: moved to the accelerator to share the load ({d.reason.split(': ', 1)[-1]})")
    for d in eng:
        if d.device == "accel" and not d.reason.startswith("balance"):
            d.reason = d.reason.replace("roofline", "balance: roofline", 1)


def _engine_of(d: Decision) -> str:
    return {"linear": "systolic", "matmul": "systolic", "layer_norm": "layernorm"}.get(d.kind, d.kind)


def _fold_constants(gm: torch.fx.GraphModule) -> None:
    """Replace every call that reads only constants by a ``get_attr`` of its value."""
    consts = {n for n in gm.graph.nodes if n.op == "get_attr"}
    for i, node in enumerate(list(gm.graph.nodes)):
        if node.op != "call_function" or not all(a in consts for a in node.all_input_nodes):
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        env = {a: overlap._fetch(gm, a.target) for a in node.all_input_nodes}
        with torch.no_grad():
            value = overlap._exec_node(gm, node, env)
        name = f"_gs_const_{i}"
        gm.register_buffer(name, value.detach().clone())
        with gm.graph.inserting_before(node):
            new = gm.graph.get_attr(name)
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        consts.add(new)
    _one_read_per_use(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def _one_read_per_use(gm) -> None:
    for node in [n for n in gm.graph.nodes if n.op == "get_attr"]:
        for user in list(node.users)[1:]:
            with gm.graph.inserting_before(user):
                dup = gm.graph.get_attr(node.target)
            dup.meta = dict(node.meta)
            user.replace_input_with(node, dup)


def _to_host_device(gm, dev: torch.device) -> None:
    """Ops that create tensors (arange, zeros, ...) make them on the host device."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and isinstance(node.kwargs.get("device"), torch.device):
            node.update_kwarg("device", dev)
    gm.recompile()


# ---- accelerator partitions ---------------------------------------------------------------------


class AccelPartition(torch.nn.Module):
    """One fused accelerator partition, compiled by the schedule compiler."""

    def __init__(self, name, compiled, multi: bool, owner):
        super().__init__()
        self.name, self.compiled, self.multi = name, compiled, multi
        self._owner = [owner]  # not a submodule

    def run(self, args, backend: str, stream=None):
        """(outputs on the host device, board cycles of this run)."""
        owner = self._owner[0]
        cpu = tuple(_to_cpu(a) for a in args)
        be = owner._backend(backend, self.name)
        out = self.compiled.run(cpu, be)
        rows = [r for r in self.compiled.report.rows if r["engine"] in (*ACCEL, "attention")]
        if backend == "device":
            cycles = sum((r["measured"] or {}).get("program", 0) for r in rows)
        else:
            cycles = sum(r["program"] or r["predicted"] or 0 for r in rows)
        outs = out if isinstance(out, tuple) else (out,)
        outs = tuple(_to_host(t, owner.host, stream) for t in outs)
        return (outs if self.multi else outs[0]), cycles

    def forward(self, *args):
        return self.run(args, self._owner[0].default_backend)[0]


def _to_cpu(t):
    if isinstance(t, torch.Tensor) and t.device.type != "cpu":
        buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return buf.copy_(t)
    return t


def _to_host(t, dev, stream):
    if dev.type == "cpu":
        return t
    if stream is not None:
        with torch.cuda.stream(stream):
            return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


# ---- the compiled model -------------------------------------------------------------------------


@dataclass
class _Shapes:
    shapes: tuple

    @classmethod
    def of(cls, inputs) -> _Shapes:
        return cls(tuple(tuple(t.shape) for t in inputs))


class GatesmithModel:
    """A model split between the accelerator and the host; call it like the model."""

    def __init__(self, *, gm, stages, parts, decisions, ir, cfg, dev, host, acc, hostr,
                 policy, shapes, out_kind, opened, make):  # fmt: skip
        self.gm, self.stages, self.parts, self.decisions = gm, stages, parts, decisions
        self.ir, self.config, self.device, self.host = ir, cfg, dev, host
        self.accel_roofline, self.host_roofline, self.policy = acc, hostr, policy
        self.input_shapes, self._out_kind, self._opened = shapes, out_kind, opened
        self._make = make  # compile again for other shapes (None: refuse)
        self._variants: dict[tuple, GatesmithModel] = {}
        self._golden = None
        self._device_be: dict = {}
        self.default_backend = "device" if dev is not None else "golden"
        self.stream = torch.cuda.Stream(host) if host.type == "cuda" else None
        self.last_timeline: overlap.Timeline | None = None
        for p in parts.values():
            p._owner[0] = self

    # ---- backends ----
    def _backend(self, which: str, part: str):
        """The golden models, or the device; one DeviceBackend per partition, as its resident
        weights are keyed by the partition's own op names."""
        from .compiler import DeviceBackend, GoldenBackend

        if which == "golden" or self.device is None:
            if self._golden is None:
                self._golden = GoldenBackend(self.config)
            return self._golden
        if which != "device":
            raise UsageError(f"backend must be 'device' or 'golden', not {which!r}")
        if part not in self._device_be:
            self._device_be[part] = DeviceBackend(self.device)
        return self._device_be[part]

    def close(self) -> None:
        """Free the resident weights (and close the device if this model opened it)."""
        for be in reversed(list(self._device_be.values())):  # last loaded first: PIM rows
            be.close()
        self._device_be.clear()
        for v in self._variants.values():
            v.close()
        if self._opened and self.device is not None:
            self.device.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- running ----
    def _check(self, inputs) -> GatesmithModel:
        if len(inputs) != len(self.input_shapes):
            raise UsageError(f"the model was compiled for {len(self.input_shapes)} inputs, "
                             f"not {len(inputs)}")  # fmt: skip
        got = _Shapes.of(inputs).shapes
        if got == self.input_shapes:
            return self
        if self._make is None:
            i = next(i for i, (a, b) in enumerate(zip(got, self.input_shapes)) if a != b)
            raise UsageError(
                f"inputs[{i}] has shape {got[i]}; the model was compiled for "
                f"{self.input_shapes[i]} (shapes are static: compile again for these shapes, "
                "or pass recompile=True)"
            )
        if got not in self._variants:
            self._variants[got] = self._make(tuple(inputs))
        return self._variants[got]

    def __call__(self, *inputs, backend: str | None = None):
        m = self._check(inputs)
        tl = overlap.Timeline(m.config.clock_hz)
        with torch.no_grad():
            out = overlap.run_stages(m.gm, m.stages, [_to(t, m.host) for t in inputs],
                                     backend=backend or m.default_backend, timeline=tl,
                                     stream=m.stream)  # fmt: skip
        self.last_timeline = m.last_timeline = tl
        return m._shape_out(out, inputs)

    def run_many(self, requests: list, *, backend: str | None = None, pipelined: bool = True):
        """Many requests (input tuples of the compiled shapes), pipelined over both devices;
        ``self.last_timeline`` holds what ran where and when."""
        if not requests:
            return []
        m = self._check(tuple(requests[0]))
        for r in requests[1:]:
            if m._check(tuple(r)) is not m:
                raise UsageError("run_many needs requests of one shape signature")
        tl = overlap.Timeline(m.config.clock_hz)
        reqs = [[_to(t, m.host) for t in r] for r in requests]
        be = backend or m.default_backend
        with torch.no_grad():
            if pipelined:
                outs = overlap.run_pipelined(m.gm, m.stages, reqs, backend=be, timeline=tl,
                                             stream=m.stream, device=m.device)  # fmt: skip
            else:
                outs = [overlap.run_stages(m.gm, m.stages, r, backend=be, timeline=tl,
                                           stream=m.stream, index=i)
                        for i, r in enumerate(reqs)]  # fmt: skip
        self.last_timeline = m.last_timeline = tl
        return [m._shape_out(o, r) for o, r in zip(outs, requests, strict=True)]

    def _shape_out(self, out, inputs):
        dev = inputs[0].device if inputs and isinstance(inputs[0], torch.Tensor) else None
        outs = out if isinstance(out, (tuple, list)) else (out,)
        outs = tuple(_to(t, dev) if dev is not None else t for t in outs)
        if self._out_kind == "tensor":
            return outs[0]
        return list(outs) if self._out_kind == "list" else outs

    # ---- reporting ----
    def accel_ops(self) -> list[str]:
        return [op for p in self.parts.values() for op in _part_ops(p)]

    def off_accelerator(self) -> dict[str, str]:
        """``{op: reason}`` for every compute op placed off the accelerator."""
        on = set(self.accel_ops())
        return {k: d.reason for k, d in self.decisions.items()
                if d.device != "fused" and k not in on}  # fmt: skip

    def report(self) -> str:
        """The placement table: every op, its device and engine, the reason, and predicted vs
        measured time (measured: the last run's board cycles at the clock for accelerator
        ops, a timed host run of each op for host ops, after :meth:`profile`)."""
        from .placement import ACCEL_ENGINES

        meas = {}
        for p in self.parts.values():
            for r in p.compiled.report.rows:
                if r["engine"] in ACCEL_ENGINES or r["op"] in p.op_map:
                    cyc = (r["measured"] or {}).get("program") or r["program"] or r["predicted"]
                    if cyc is None:  # inside a fused chain: its time is on the chain's last op
                        continue
                    src = "board" if r["measured"] else "model"
                    meas[p.op_map[r["op"]]] = (cyc / self.config.clock_hz, src)
        meas.update(getattr(self, "_host_meas", {}))
        on = set(self.accel_ops())
        lines = [f"placement ({self.policy}) of {len(self.decisions)} ops; "
                 f"{self.accel_roofline.describe()}; host {self.host_roofline.describe()}", "",
                 "| op | kind | device | engine | AI | pred accel us | pred host us | "
                 "measured us | reason |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, d in self.decisions.items():
            if d.device == "fused":
                continue
            where = d.engine if name in on else "host"
            dev = "accel" if name in on else str(self.host)
            m = meas.get(name)
            ms = "" if m is None else f"{m[0] * 1e6:,.1f} ({m[1]})"
            lines.append(f"| {name} | {d.kind} | {dev} | {where} | {_f(d.intensity, '.2f')} | "
                         f"{_f(d.pred_accel_s, ',.1f', 1e6)} | {_f(d.pred_host_s, ',.1f', 1e6)} | "
                         f"{ms} | {d.reason} |")  # fmt: skip
        lines.append("")
        lines.append(f"{len(on)} ops on the accelerator in {len(self.parts)} partitions; "
                     f"{len(self.off_accelerator())} on {self.host}")  # fmt: skip
        return "\n".join(lines)

    def profile(self, *inputs) -> None:
        """Time each host op of one run (synchronised), for the report's measured column."""
        m = self._check(inputs)
        env = overlap._base_env(m.gm, [_to(t, m.host) for t in inputs])
        times: dict = {}
        with torch.no_grad():
            for st in m.stages:
                if st.device == "accel":
                    (node,) = st.nodes
                    args = torch.fx.node.map_arg(node.args, env.__getitem__)
                    env[node] = m.gm.get_submodule(node.target).run(args, m.default_backend)[0]
                    continue
                for node in st.nodes:
                    t0 = time.perf_counter()
                    env[node] = overlap._exec_node(m.gm, node, env)
                    if m.host.type == "cuda":
                        torch.cuda.synchronize(m.host)
                    times[node.name] = (time.perf_counter() - t0, m.host.type)
        m._host_meas = times


def _accel_rows(compiled) -> list[dict]:
    """The report rows of the ops that run on an engine (a fused attention chain's matmuls and
    softmax included; its scale / mask steps are folded, as they are outside a chain)."""
    return [r for r in compiled.report.rows if r["engine"] in ACCEL
            or (r["engine"] == "attention" and r["kind"] in ("matmul", "softmax"))]  # fmt: skip


def _part_ops(p: AccelPartition) -> list[str]:
    return [p.op_map[r["op"]] for r in _accel_rows(p.compiled)]


def _op_map(compiled, orig: list[str], decisions, target) -> dict[str, str]:
    """The partition's re-exported op names -> the model's op names (same order and kinds)."""
    rows = _accel_rows(compiled)
    kinds = [decisions[n].kind for n in orig]
    if [r["kind"] for r in rows] != kinds:
        raise CompileError(f"partition {target}: the compiler placed {[r['kind'] for r in rows]} "
                           f"on engines, the split expected {kinds}")  # fmt: skip
    want = [decisions[n].engine for n in orig]
    got = [r["engine"] if r["engine"] != "attention" else decisions[n].engine
           for r, n in zip(rows, orig, strict=True)]  # fmt: skip
    if got != want:
        raise CompileError(f"partition {target}: the compiler placed its ops on {got}, "
                           f"the split decided {want}")  # fmt: skip
    return {r["op"]: n for r, n in zip(rows, orig, strict=True)}


def _f(v, fmt, mult=1.0):
    return "" if v is None else format(v * mult, fmt)


def _to(t, dev):
    return t.to(dev) if isinstance(t, torch.Tensor) and dev is not None else t


# ---- compile ----------------------------------------------------------------------------------


def compile(model: torch.nn.Module, example_inputs: tuple, *, device=None, config=None,
            placement: str = "roofline", host: str = "auto", calibration=None,
            recompile: bool = False, host_roofline: HostRoofline | None = None,
            clock_hz: float | None = None, progress=None,
            offload_attention: bool = False, pim: bool = True) -> GatesmithModel:  # fmt: skip
    """Split ``model`` between the accelerator and the host (see the module doc).

    ``device``: an open :class:`gatesmith.host.Device`, ``"sim"`` (opened here, closed by
    :meth:`GatesmithModel.close`) or ``"golden"`` / None (the golden models; needs ``config``).
    ``placement``: ``"roofline"``, ``"accelerator"`` or ``"host"``. ``host``: ``"auto"``,
    ``"cpu"`` or ``"cuda"``. ``calibration``: a list of input tuples (default: the example
    inputs). ``clock_hz``: the accelerator clock for the roofline (default: the config's).
    ``offload_attention``: decode-step attention over a KV cache runs on the accelerator as
    one program (``host.compiler.decode_attention``), whatever the placement of the rest.
    ``pim``: route ``M = 1`` linears to the PIM engine where its model says it is faster
    (``host.compiler.pim``; False keeps them on the systolic engine)."""
    if placement not in POLICIES:
        raise UsageError(f"placement must be one of {', '.join(POLICIES)}, not {placement!r}")
    hdev = resolve_host(host)
    dev, cfg, opened = _resolve_device(device, config)
    try:
        hostr = host_roofline or measured_host_roofline(hdev)
        acc = AccelRoofline.from_config(cfg, clock_hz)
        make = None
        if recompile:
            def make(inputs):  # noqa: E306
                return _compile(model, inputs, dev, cfg, placement, hdev, None, hostr, acc,
                                None, False, progress, offload_attention, pim)  # fmt: skip
        return _compile(model, tuple(example_inputs), dev, cfg, placement, hdev, calibration,
                        hostr, acc, make, opened, progress, offload_attention, pim)  # fmt: skip
    except BaseException:
        if opened:
            dev.close()
        raise


def _compile(model, example_inputs, dev, cfg, policy, hdev, calibration, hostr, acc, make,
             opened, progress, offload_attention=False, pim=True) -> GatesmithModel:  # fmt: skip
    from .compiler import compile as compile_partition
    from .compiler.graph import _Builder, _export, check_inputs
    from .compiler.decode_attention import fuse_decode_attention
    from .compiler.pim import route_gemv
    from .compiler.report import place

    say = progress or (lambda _m: None)
    if not isinstance(model, torch.nn.Module):
        raise CompileError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    check_inputs(model, example_inputs)
    say("capture: torch.export")
    was_training = model.training
    model.eval()
    try:
        ep = _export(model, example_inputs)
        with torch.no_grad():
            ref = model(*example_inputs)
    finally:
        model.train(was_training)
    out_kind = _out_kind(ref)
    ir = _Builder(ep).build([tuple(t.shape) for t in example_inputs])
    gm = ep.module()
    _fold_constants(gm)
    say(f"place: {sum(o.kind != 'input' for o in ir.ops)} ops ({policy}) on {cfg.name}")
    placed = place(ir, cfg)
    if pim:
        route_gemv(ir, placed, cfg)  # M = 1 linears to the PIM banks, as compile() does
    chains = fuse_decode_attention(ir, dict(placed), cfg) if offload_attention else {}
    if offload_attention:
        say(f"offload: {len(chains)} decode attention chain(s) to the accelerator")
        if not chains:
            log.warning("offload_attention: no decode attention chain of this model fits %s "
                        "(host.attention.fits); attention stays where the placement puts it",
                        cfg.name)  # fmt: skip
    supported, decisions = _decide_nodes(gm, ir, placed, cfg, acc, hostr, policy, chains)
    _no_engine_fallback(decisions, cfg)
    parts = CapabilityBasedPartitioner(gm, AccelSupport(supported),
                                       allows_single_node_partition=True).propose_partitions()  # fmt: skip
    keep = [p for p in parts if any(decisions.get(n.name) is not None
                                    and decisions[n.name].device == "accel" for n in p.nodes)]  # fmt: skip
    order = list(gm.graph.nodes)
    fused = CapabilityBasedPartitioner(gm, AccelSupport(supported)).fuse_partitions(keep)
    targets = sorted(n.target for n in fused.graph.nodes
                     if n.op == "call_module" and str(n.target).startswith("fused_"))  # fmt: skip
    samples = [tuple(example_inputs)] if calibration is None else [tuple(s) for s in calibration]
    seen = _partition_inputs(fused, targets, samples)
    accel_parts = {}
    for i, t in enumerate(targets):
        say(f"compile partition {i + 1}/{len(targets)} ({t})")
        sub = fused.get_submodule(t)
        calib = seen[t]
        with torch.no_grad():
            multi = isinstance(sub(*calib[0]), (tuple, list))
        orig = [n.name for n in order if n in keep[int(t.removeprefix("fused_"))].nodes
                and n.name in decisions and decisions[n.name].device == "accel"]  # fmt: skip
        gemv = [decisions[n].engine for n in orig if _is_gemv(ir, n)]
        compiled = compile_partition(sub, calib[0], cfg, calibration=calib, gemv=gemv,
                                     decode_attention=offload_attention)  # fmt: skip
        part = AccelPartition(t, compiled, multi, None)
        part.op_map = _op_map(compiled, orig, decisions, t)
        fused.delete_submodule(t)
        fused.add_submodule(t, part)
    fused.to(hdev)
    _to_host_device(fused, hdev)
    stages = overlap.build_stages(fused, set(targets))
    say(f"split: {len(targets)} accelerator partitions, {len(stages)} stages")
    return GatesmithModel(gm=fused, stages=stages, parts={t: fused.get_submodule(t) for t in targets},
                          decisions=decisions, ir=ir, cfg=cfg, dev=dev, host=hdev, acc=acc,
                          hostr=hostr, policy=policy, shapes=_Shapes.of(example_inputs).shapes,
                          out_kind=out_kind, opened=opened, make=make)  # fmt: skip


def _is_gemv(ir, name: str) -> bool:
    """A linear with one row (what ``compiler.pim.route_gemv`` considers)."""
    import math

    op = ir.op(name)
    return op.kind == "linear" and math.prod(ir.op(op.inputs[0]).shape[:-1]) == 1


def _no_engine_fallback(decisions, cfg) -> None:
    """A config with none of the engines the graph needs: everything on the host, said once."""
    engine_ops = [d for d in decisions.values() if d.device in ("accel",) or "has no" in d.reason]
    if engine_ops and not any(d.device == "accel" for d in decisions.values()):
        kinds = ", ".join(type(e).kind for e in cfg.engines)
        log.warning("the accelerator %s (%s) takes none of this model's engine ops: "
                    "the whole model runs on the host", cfg.name, kinds)


def _out_kind(ref) -> str:
    if isinstance(ref, torch.Tensor):
        return "tensor"
    if isinstance(ref, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in ref):
        return "list" if isinstance(ref, list) else "tuple"
    raise CompileError("the model's output must be a tensor or a flat tuple of tensors, "
                       f"not {type(ref).__name__}")  # fmt: skip


def _partition_inputs(fused, targets, samples) -> dict[str, list[tuple]]:
    """Each partition's inputs when the split graph runs in float on each sample."""
    seen: dict[str, list[tuple]] = {t: [] for t in targets}
    hooks = [fused.get_submodule(t).register_forward_pre_hook(
        lambda _m, args, t=t: seen[t].append(tuple(a.detach().clone() for a in args)))
        for t in targets]  # fmt: skip
    try:
        with torch.no_grad():
            for s in samples:
                fused(*s)
    finally:
        for h in hooks:
            h.remove()
    return seen


# ---- torch.compile ------------------------------------------------------------------------------


class _Frozen(torch.nn.Module):
    """A dynamo graph with its parameters and buffers held as buffers (constants to export)
    and its non-tensor inputs baked in; forward takes the user tensors."""

    def __init__(self, gm, args, user):
        super().__init__()
        self.gm, self.user, self.n = gm, user, len(args)
        self.fixed = {}
        for i, a in enumerate(args):
            if i in user:
                continue
            if isinstance(a, torch.Tensor):
                self.register_buffer(f"c{i}", a.detach())
            else:
                self.fixed[i] = a

    def forward(self, *xs):
        it = iter(xs)
        full = []
        for i in range(self.n):
            if i in self.user:
                full.append(next(it))
            elif i in self.fixed:
                full.append(self.fixed[i])
            else:
                full.append(getattr(self, f"c{i}"))
        return self.gm(*full)


def _user_indices(gm, args) -> list[int]:
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    user = []
    for i, (name, a) in enumerate(zip(names, args, strict=False)):
        if isinstance(a, torch.nn.Parameter) or "_parameters_" in name or "_buffers_" in name:
            continue
        if isinstance(a, torch.Tensor):
            user.append(i)
    return user


def gatesmith_backend(gm: torch.fx.GraphModule, example_inputs, options: dict | None = None,
                      **_kw):  # fmt: skip
    """The ``torch.compile`` backend: ``options`` takes ``device``, ``config``, ``placement``,
    ``host``, ``calibration`` (tuples of the model's inputs) and ``clock_hz``. Compiles on
    the first call of each input shape signature (the parameters become constants)."""
    opts = dict(options or {})
    bad = sorted(set(opts) - {"device", "config", "placement", "host", "calibration", "clock_hz",
                              "offload_attention"})  # fmt: skip
    if bad:
        raise UsageError(f"unknown gatesmith backend option {bad[0]!r} (options: device, "
                         "config, placement, host, calibration, clock_hz, "
                         "offload_attention)")  # fmt: skip
    device = opts.get("device", "golden")
    dev, cfg, opened = _resolve_device(device, opts.get("config"))
    hdev = resolve_host(opts.get("host", "auto"))
    cache: dict = {}

    def run(*args):
        key = tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else a for a in args)
        m = cache.get(key)
        if m is None:
            user = _user_indices(gm, args)
            frozen = _Frozen(gm, args, set(user))
            calib = opts.get("calibration")
            m = cache[key] = compile(frozen, tuple(args[i] for i in user), device=dev or "golden",
                                     config=cfg, placement=opts.get("placement", "roofline"),
                                     host=str(hdev), calibration=calib,
                                     clock_hz=opts.get("clock_hz"),
                                     offload_attention=opts.get("offload_attention", False))  # fmt: skip
            m._user = user
        out = m(*(args[i] for i in m._user))
        return out

    run.gatesmith_cache = cache
    run.opened_device = dev if opened else None
    return run


def register() -> None:
    """Register ``backend="gatesmith"`` with torch.compile (idempotent)."""
    from torch._dynamo import list_backends, register_backend

    if "gatesmith" not in list_backends(exclude_tags=()):
        register_backend(gatesmith_backend, name="gatesmith")

