"""The executor of a quantised graph, over a small backend interface: golden model or device.

:func:`execute` walks the ops in order. Engine-placed ops run in integers through a
:class:`Backend`; everything between engines (int8 activations, int32 bias adds, dyadic
requantisation, views, scale folding, masks) is computed here with torch integer ops, the same
way for every backend; host-placed ops dequantise their inputs and run the float ATen op. So
two backends that agree on the four engine calls give bit-identical graph outputs.

The backend interface (integers in, integers out, all int64 tensors unless stated):

* ``weight(key, w)``: ``w`` [K, N] int8 values, a GEMM's constant right operand; returns a
  handle ``matmul`` accepts (the device uploads it once and keeps it resident);
* ``matmul(a, b)``: ``a`` [M, K] torch.int8, ``b`` a handle or [K, N] int8; the int32
  accumulator (wrapping modulo ``2**acc_width``);
* ``softmax_int(x)`` (rows along the last dim, ``in_fmt``; its minimum is masked): uint16
  probabilities, 1.0 = 2**15; ``gelu_int(x)``: ``out_dtype``; ``layer_norm_int(x, gamma,
  beta)``: over the last dim, int16 gamma (``gamma_frac``) and beta (``out_frac``);
* ``gemv_weight(key, w)``: ``w`` [N, K] int8 values of an ``M = 1`` linear routed to the PIM
  engine (``compiler/pim.py``); a handle ``gemv`` accepts (the device keeps it in its banks);
  ``gemv(x, w)``: ``x`` [K] int8 values; the PIM accumulator [N] (wrapping modulo
  ``2**acc_width``);
* ``begin(op, engine)`` / ``end(op, engine)``: around each engine op; ``end`` returns measured
  counters or None.

:class:`GoldenBackend` computes them with the engines' bit-exact models
(``generators.systolic.model.gemm``, ``softmax_model``, ``gelu_model``, ``layernorm_model``);
:class:`DeviceBackend` with a :class:`gatesmith.host.Device` (``dev.matmul``,
``host.nonlinear.*_int``), reading ``dev.perf()`` around each op for its busy and program cycles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import CompileError, UsageError
from .fuse import run_fused
from .pim import run_gemv
from .graph import Graph, Op, call_aten, decode
from .quant import I8, QT, dequant, to_int

__all__ = ["Backend", "GoldenBackend", "DeviceBackend", "execute", "run_float",
           "check_run_inputs"]  # fmt: skip


# ---- the float graph (calibration, host-placed ops, the semantic reference) ----------------


def float_op(op: Op, vals: list, consts: dict):
    """The float result of ``op`` on float input values ``vals`` (in ``op.inputs`` order)."""
    a = op.attrs
    k = op.kind
    if k == "linear":
        b = None if a["bias"] is None else consts[a["bias"]]
        return F.linear(vals[0], consts[a["weight"]], b)
    if k == "matmul":
        return torch.matmul(vals[0], vals[1])
    if k == "softmax":
        return torch.softmax(vals[0], a["dim"])
    if k == "gelu":
        return F.gelu(vals[0], approximate=a["approximate"])
    if k == "layer_norm":
        w = None if a["weight"] is None else consts[a["weight"]]
        b = None if a["bias"] is None else consts[a["bias"]]
        return F.layer_norm(vals[0], (op.shape[-1],), w, b, a["eps"])
    if k == "scale":
        return vals[0] * a["factor"]
    if k == "mask":
        return vals[0].masked_fill(consts[a["mask"]], a["fill"])
    if k in ("view", "add", "host"):
        env = dict(zip(op.inputs, vals, strict=True))
        return _generic(op, env.__getitem__, consts)
    raise CompileError(f"op {op.name} has an unknown kind {k!r}")


def _generic(op: Op, value_of, consts):
    a = op.attrs
    out = call_aten(a["target"], decode(a["args"], value_of, consts),
                    {k: decode(v, value_of, consts) for k, v in a["kwargs"].items()})  # fmt: skip
    return out[a["index"]] if "index" in a else out


def check_run_inputs(graph: Graph, inputs, what: str = "inputs") -> tuple:
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)):
        raise UsageError(f"{what} must be a tuple of tensors, not {type(inputs).__name__}")
    if len(inputs) != len(graph.inputs):
        raise UsageError(
            f"{what} has {len(inputs)} tensors; the model was compiled for {len(graph.inputs)}"
        )
    for i, (t, shape) in enumerate(zip(inputs, graph.input_shapes, strict=True)):
        if not isinstance(t, torch.Tensor):
            raise UsageError(f"{what}[{i}] must be a torch tensor, not {type(t).__name__}")
        if tuple(t.shape) != tuple(shape):
            raise UsageError(
                f"{what}[{i}] has shape {tuple(t.shape)}; the model was compiled for "
                f"{tuple(shape)} (shapes are static)"
            )
    return tuple(inputs)


def run_float(graph: Graph, inputs: tuple, observe=None) -> list[torch.Tensor]:
    """The captured graph in float (``observe(op, input_values)`` sees every op first)."""
    env: dict = dict(zip(graph.inputs, inputs, strict=True))
    for op in graph.ops:
        if op.kind == "input":
            continue
        vals = [env[n] for n in op.inputs]
        if observe is not None:
            observe(op, vals)
        env[op.name] = float_op(op, vals, graph.consts)
    return [env[n] for n in graph.outputs]


# ---- backends ----------------------------------------------------------------------------------


class Backend:
    """Interface of the engine calls (see the module doc). ``config`` is the AccelConfig."""

    config = None

    def weight(self, key: str, w: torch.Tensor, dataflow: str | None = None):
        return w

    def matmul(self, a: torch.Tensor, b, dataflow: str | None = None) -> torch.Tensor:
        raise NotImplementedError

    def softmax_int(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gelu_int(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer_norm_int(self, x, gamma, beta) -> torch.Tensor:
        raise NotImplementedError

    def attention_int(self, qq, kq, vq, mult: int, shift: int, *, causal=False, diag=0):
        """Fused attention ([H, S, D] int8 each, see host/attention.py): the integer P V."""
        raise NotImplementedError

    def nl_resident(self, kind: str, x, requants, offset: int, *, gamma=None, beta=None,
                    store: bool):  # fmt: skip
        """Engine ``kind`` on rows ``x`` [M, K]; row ``r`` of the output requantised by
        ``requants[r]`` (mult, shift) into int8 and kept in the systolic left scratchpad (WS
        panels of an M x K operand from entry ``offset``); the output rows when ``store``."""
        raise NotImplementedError

    def matmul_resident(self, offset: int, m: int, k: int, b) -> torch.Tensor:
        """The int32 accumulator of (the M x K operand resident at ``offset``) @ ``b``."""
        raise NotImplementedError

    def gemv_weight(self, key: str, w: torch.Tensor):
        return w

    def gemv(self, x: torch.Tensor, w) -> torch.Tensor:
        raise NotImplementedError

    def begin(self, op: Op, engine: str | None = None) -> None:
        pass

    def end(self, op: Op, engine: str | None = None) -> dict | None:
        return None

    def close(self) -> None:
        pass


def default_dataflow(cfg):
    from ..systolic import default_dataflow as dd

    return dd(cfg)


class GoldenBackend(Backend):
    """The engines' bit-exact golden models for ``accel_cfg``'s engines."""

    def __init__(self, accel_cfg):
        from ...config import load_config

        self.config = load_config(accel_cfg)
        self.spad: dict[int, tuple[int, torch.Tensor]] = {}  # the left scratchpad: base -> A

    def nl_resident(self, kind, x, requants, offset, *, gamma=None, beta=None, store):
        from ...hdl.requant import requant

        out = {"softmax": self.softmax_int, "gelu": self.gelu_int,
               "layernorm": lambda t: self.layer_norm_int(t, gamma, beta)}[kind](x)  # fmt: skip
        a = torch.stack([requant(out[r], mu, sh, I8) for r, (mu, sh) in enumerate(requants)])
        size = -(-x.shape[1] // self._cfg("systolic").rows) * x.shape[0]
        self._overwrite(offset, offset + size)
        self.spad[offset] = (size, a)
        return out if store else None

    def matmul_resident(self, offset, m, k, b):
        from ...generators.systolic.model import gemm

        if offset not in self.spad or tuple(self.spad[offset][1].shape) != (m, k):
            raise CompileError(f"no {m}x{k} operand is resident at scratchpad entry {offset} "
                               "(overwritten: the allocation does not hold)")  # fmt: skip
        return gemm(self.spad[offset][1].to(torch.int8), b, self._cfg("systolic"))

    def _cfg(self, kind):
        cfg = self.config.engine(kind)
        if cfg is None:
            raise UsageError(f"this accelerator has no {kind} engine")
        return cfg

    def matmul(self, a, b, dataflow=None):
        from ...generators.systolic.model import gemm

        from .residency import left_span

        (m, k), n = a.shape, b.shape[1]
        df = dataflow or default_dataflow(self._cfg("systolic"))
        self._overwrite(0, left_span(m, k, n, df, self.config))  # the entries its chunks use
        return gemm(a, b, self._cfg("systolic"))

    def _overwrite(self, lo: int, hi: int) -> None:
        for base, (size, _) in list(self.spad.items()):
            if base < hi and lo < base + size:
                del self.spad[base]

    def softmax_int(self, x):
        from ...generators.softmax.model import softmax_model

        return softmax_model(x.reshape(-1, x.shape[-1]), self._cfg("softmax")).reshape(x.shape)

    def gelu_int(self, x):
        from ...generators.gelu.model import gelu_model

        return gelu_model(x, self._cfg("gelu"))

    def layer_norm_int(self, x, gamma, beta):
        from ...generators.layernorm.model import layernorm_model

        out = layernorm_model(x.reshape(-1, x.shape[-1]), gamma, beta, self._cfg("layernorm"))
        return out.reshape(x.shape)

    def gemv(self, x, w):
        from .pim import gemv_golden

        return gemv_golden(self._cfg("pim"), w, x)

    def attention_int(self, qq, kq, vq, mult, shift, *, causal=False, diag=0):
        from ..attention import attention_int_golden

        self.spad.clear()
        return attention_int_golden(qq, kq, vq, mult, shift, self._cfg("softmax"),
                                    causal=causal, diag=diag)  # fmt: skip


class DeviceBackend(Backend):
    """An open device; weights are uploaded once (per key) and stay resident until close()."""

    def __init__(self, dev):
        self.dev = dev
        self.config = dev.config
        self._weights: dict = {}
        self._pim: dict = {}
        self._pim_rows: list = []  # (first, end) bank rows of each weight loaded here
        self._before = None

    def weight(self, key, w, dataflow=None):
        buf = self._weights.get((key, dataflow))
        if buf is None:
            buf = self._weights[(key, dataflow)] = self.dev.upload(w.to(torch.int8), "b",
                                                                   dataflow=dataflow)  # fmt: skip
        return buf

    def matmul(self, a, b, dataflow=None):
        return self.dev.matmul(a, b, dataflow=dataflow)

    def softmax_int(self, x):
        from ..nonlinear import softmax_int

        return softmax_int(self.dev, x)

    def gelu_int(self, x):
        from ..nonlinear import gelu_int

        return gelu_int(self.dev, x)

    def layer_norm_int(self, x, gamma, beta):
        from ..nonlinear import layer_norm_int

        return layer_norm_int(self.dev, x, gamma, beta)

    def attention_int(self, qq, kq, vq, mult, shift, *, causal=False, diag=0):
        from ..attention import attention_int

        return attention_int(self.dev, qq, kq, vq, mult, shift, causal=causal, diag=diag)

    def nl_resident(self, kind, x, requants, offset, *, gamma=None, beta=None, store):
        from .residency import nl_resident

        return nl_resident(self.dev, kind, x, requants, offset, gamma=gamma, beta=beta,
                           store=store)  # fmt: skip

    def matmul_resident(self, offset, m, k, b):
        from ..systolic import Packed
        from .residency import gemm_resident

        cfg = self.config.engine("systolic")
        n = b.layout.cols
        acc = windows_acc(self.dev)
        res = self.dev.alloc((-(-n // cfg.cols) * m * acc.stride,), torch.int32,
                             label="systolic result")  # fmt: skip
        res.layout = Packed(role="result", dataflow="ws", rows=m, cols=n)
        try:
            gemm_resident(self.dev, offset, m, k, b, res, self.config)
            return res.layout.unpack(res.read_raw(), cfg).long()
        finally:
            if not res.freed and not res.busy:
                res.free()

    def gemv_weight(self, key, w):
        h = self._pim.get(key)
        if h is None:
            from ..pim import load_weights

            from ..pim import _dev_state

            st = _dev_state(self.dev)
            mark = st.next_row
            h = self._pim[key] = load_weights(self.dev, w.to(torch.int8))
            self._pim_rows.append((mark, st.next_row))
            if self._before is not None:  # the one-time bank load is not the op's time
                self._before = self.dev.perf()
        return h

    def gemv(self, x, w):
        from ..pim import gemv

        return gemv(self.dev, x.to(torch.int8), w)

    def begin(self, op, engine=None):
        self._before = self.dev.perf()
        self.dev.program_trace = []

    def end(self, op, engine=None):
        after, before = self.dev.perf(), self._before
        self._before = None
        progs, self.dev.program_trace = self.dev.program_trace or [], None
        kind = engine if engine in ("pim",) else _ENGINE_KIND[op.kind]
        idx = self.config.engine_index(kind)
        # the timing model of the programs the op ran (None where one cannot be modelled)
        model = [p.predict() for p in progs]
        return {"busy": after["engine_busy"][idx] - before["engine_busy"][idx],
                "program": after["program"] - before["program"],
                "words": after["load"] + after["store"] - before["load"] - before["store"],
                "model": None if None in model else sum(model)}  # fmt: skip

    def close(self):
        for buf in self._weights.values():
            if not buf.freed:
                buf.free()
        self._weights.clear()
        # the PIM rows are a stack per device (host.pim): give back the ones on its top
        from ..pim import _dev_state

        st = _dev_state(self.dev)
        for first, end in reversed(self._pim_rows):
            if st.next_row == end:
                st.next_row = first
        self._pim_rows.clear()
        self._pim.clear()


def windows_acc(dev):
    from ..chain import windows

    return windows(dev, "systolic")["acc"]


_ENGINE_KIND = {"linear": "systolic", "matmul": "systolic", "softmax": "softmax",
                "gelu": "gelu", "layer_norm": "layernorm"}  # fmt: skip


# ---- the executor ------------------------------------------------------------------------------


class OnChip:
    """The value of an op kept on chip only (the allocation's): no host or device-memory copy."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attr):
        raise CompileError(f"the value of {self.name} stays on chip; nothing can read it here")


def execute(graph: Graph, consts: dict, placement: dict, backend: Backend, inputs: tuple,
            trace: list | None = None, alloc: dict | None = None) -> list:  # fmt: skip
    """Run the quantised graph; ``trace`` (a list) receives one record per engine op.

    ``consts[op]`` holds the op's integer constants and scales (quant.prepare), ``placement[op]``
    its engine; ``alloc`` the resident tensors (``{producer: {"offset", "consumers", "store",
    "m", "k"}}``, see :mod:`.residency`)."""
    from .report import predict

    alloc = alloc or {}
    operand_of = {c: p for p, a in alloc.items() for c in a["consumers"]}
    env: dict = dict(zip(graph.inputs, inputs, strict=True))
    for op in graph.ops:
        if op.kind == "input":
            continue
        vals = [env[n] for n in op.inputs]
        engine = placement[op.name]
        if engine == "attention" and "fusion" not in consts.get(op.name, {}):
            out = None  # inside a fused chain: computed with its last op
        elif engine == "host":
            out = float_op(op, [dequant(v) for v in vals], graph.consts)
        elif engine == "fused":
            out = _fused(op, vals, graph.consts)
        else:
            backend.begin(op, engine)
            calls: list = []
            if engine == "attention":
                out = run_fused(op, env, consts[op.name], backend, calls)
            elif op.name in alloc:
                out = _nl_resident(op, vals, consts, backend, calls, alloc[op.name])
            elif op.name in operand_of:
                out = _linear_resident(op, consts[op.name], backend, calls,
                                       alloc[operand_of[op.name]])  # fmt: skip
            elif engine == "pim":
                out = run_gemv(op, vals, consts[op.name], backend, calls)
            else:
                out = _ENGINE_OPS[op.kind](op, vals, consts[op.name], backend, calls)
            measured = backend.end(op, engine)
            if trace is not None:
                trace.append({"name": op.name, "engine": engine,
                              "predicted": predict(engine, calls, backend.config),
                              "measured": measured})  # fmt: skip
        env[op.name] = out
    return [dequant(env[n]) for n in graph.outputs]


def _fused(op: Op, vals, consts):
    v = vals[0] if vals else None
    if not isinstance(v, QT):
        return float_op(op, [dequant(x) for x in vals], consts)
    if op.kind == "view":
        fn = lambda t: _generic(op, lambda _n: t, consts)  # noqa: E731
        return v.apply(fn)
    if op.kind == "scale":
        f = op.attrs["factor"]
        if f == 0:
            return dequant(v) * 0.0
        return QT(v.q if f > 0 else -v.q, v.scale * abs(f), v.masked)
    if op.kind == "mask":
        m = consts[op.attrs["mask"]].expand(v.shape)
        return QT(v.q, v.scale, m if v.masked is None else v.masked | m)
    raise CompileError(f"op {op.name} ({op.kind}) cannot be fused")


def _row_scale(s: torch.Tensor, lead: tuple) -> torch.Tensor:
    return s.reshape(*lead, 1) if s.dim() else s


def _linear(op, vals, c, backend, calls):
    x = vals[0]
    lead, k = tuple(x.shape[:-1]), x.shape[-1]
    sa, sw = c["a_scale"], c["w_scale"]
    xq = to_int(x, _row_scale(sa, lead), I8).reshape(-1, k)
    wq = c["w_q"]
    df = c.get("schedule", {}).get("dataflow")
    calls.append((xq.shape[0], k, wq.shape[1], df))
    acc = backend.matmul(xq.to(torch.int8), backend.weight(op.name, wq, df), df).long()
    if "bias_q" in c:
        acc = backend.config.engine("systolic").acc_fmt.wrap(acc + c["bias_q"])
    scale = (sa.reshape(-1, 1) if sa.dim() else sa) * sw[None, :]
    n = wq.shape[1]
    return QT(acc.reshape(*lead, n), scale.expand(acc.shape).reshape(*lead, n))


def _matmul(op, vals, c, backend, calls):
    a, b = vals
    sa, sb = c["a_scale"], c["b_scale"]
    aq = to_int(a, sa[..., None] if sa.dim() else sa, I8)
    bq = to_int(b, sb[..., None, :] if sb.dim() else sb, I8)
    (m, k), n = aq.shape[-2:], bq.shape[-1]
    batch = torch.broadcast_shapes(aq.shape[:-2], bq.shape[:-2])
    A = aq.expand(*batch, m, k).reshape(-1, m, k).to(torch.int8)
    B = bq.expand(*batch, k, n).reshape(-1, k, n).to(torch.int8)
    outs = []
    df = c.get("schedule", {}).get("dataflow")
    for i in range(A.shape[0]):
        calls.append((m, k, n, df))
        outs.append(backend.matmul(A[i], B[i], df).long())
    acc = torch.stack(outs).reshape(*batch, m, n)
    scale = (sa[..., :, None] * sb[..., None, :]) if sa.dim() else sa * sb
    return QT(acc, scale)


_NL_KIND = {"softmax": "softmax", "gelu": "gelu", "layer_norm": "layernorm"}


def _nl_resident(op, vals, consts, backend, calls, a):
    """A nonlinear op whose output stays in the scratchpad for its ``linear`` consumers."""
    from .residency import row_requant

    kind = _NL_KIND[op.kind]
    cfg, fmt, s = _in_fmt(backend, kind)
    q = to_int(vals[0], s, fmt, masked_min=kind == "softmax").reshape(a["m"], a["k"])
    out_scale = 2.0**-15 if kind == "softmax" else 2.0**-cfg.out_frac
    requants = row_requant(out_scale, consts[a["consumers"][0]]["a_scale"], a["m"])
    c = consts[op.name]
    out = backend.nl_resident(kind, q, requants, a["offset"], gamma=c.get("gamma_q"),
                              beta=c.get("beta_q"), store=a["store"])  # fmt: skip
    calls.append({"resident": "output", "x": q, "store": a["store"]})
    return QT(out.long().reshape(op.shape), out_scale) if a["store"] else OnChip(op.name)


def _linear_resident(op, c, backend, calls, a):
    """A ``linear`` on its activation resident in the scratchpad (as :func:`_linear` after)."""
    sa, sw, wq = c["a_scale"], c["w_scale"], c["w_q"]
    m, k, n = a["m"], a["k"], wq.shape[1]
    calls.append({"resident": "operand", "m": m, "k": k, "n": n})
    acc = backend.matmul_resident(a["offset"], m, k, backend.weight(op.name, wq, "ws")).long()
    if "bias_q" in c:
        acc = backend.config.engine("systolic").acc_fmt.wrap(acc + c["bias_q"])
    scale = (sa.reshape(-1, 1) if sa.dim() else sa) * sw[None, :]
    return QT(acc.reshape(*op.shape[:-1], n), scale.expand(acc.shape).reshape(*op.shape[:-1], n))


def _in_fmt(backend, kind):
    cfg = backend.config.engine(kind)
    return cfg, cfg.in_fmt, 2.0 ** -cfg.in_frac


def _softmax(op, vals, c, backend, calls):
    cfg, fmt, s = _in_fmt(backend, "softmax")
    d = op.attrs["dim"]
    x = vals[0]
    xt = x.apply(lambda t: t.movedim(d, -1)) if isinstance(x, QT) else x.movedim(d, -1)
    q = to_int(xt, s, fmt, masked_min=True)
    calls.append(q.reshape(-1, q.shape[-1]))
    return QT(backend.softmax_int(q).movedim(-1, d), 2.0**-15)


def _gelu(op, vals, c, backend, calls):
    cfg, fmt, s = _in_fmt(backend, "gelu")
    q = to_int(vals[0], s, fmt)
    calls.append(q.numel())
    return QT(backend.gelu_int(q), 2.0**-cfg.out_frac)


def _layer_norm(op, vals, c, backend, calls):
    cfg, fmt, s = _in_fmt(backend, "layernorm")
    q = to_int(vals[0], s, fmt)
    calls.append(q.reshape(-1, q.shape[-1]))
    return QT(backend.layer_norm_int(q, c["gamma_q"], c["beta_q"]), 2.0**-cfg.out_frac)


_ENGINE_OPS = {"linear": _linear, "matmul": _matmul, "softmax": _softmax, "gelu": _gelu,
               "layer_norm": _layer_norm}  # fmt: skip

