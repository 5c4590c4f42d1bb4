"""Capture: a torch model -> ``torch.export`` ATen graph -> a small IR of engine-sized ops.

:func:`capture` exports the model (strict first, ``strict=False`` if strict tracing fails),
folds every computation that reads only parameters, buffers and constants into a constant
tensor (a causal mask built from a buffer, a transposed weight), and maps each remaining ATen
node to one :class:`Op`, in topological order:

========== ===================================================================================
kind       from (ATen)
========== ===================================================================================
input      a user input (placeholder)
linear     ``linear`` / ``addmm`` / ``mm`` / ``matmul`` with a constant weight; ``weight`` is
           [N, K] (``nn.Linear``'s orientation), ``bias`` [N] or None
matmul     ``matmul`` / ``bmm`` / ``mm`` of two activations (batch dims broadcast)
softmax    ``softmax`` / ``_softmax`` along ``dim``
gelu       ``gelu`` (``approximate`` kept)
layer_norm ``layer_norm`` over the last dimension (``weight``/``bias`` constants, ``eps``)
add        ``add.Tensor`` of two values (a residual) or a value and a constant
scale      ``mul`` / ``div`` by a Python number (or a one-element constant): ``factor``
view       ``view`` / ``reshape`` / ``transpose`` / ``permute`` / ``unsqueeze`` / ``squeeze`` /
           ``contiguous`` / ``clone`` / ``expand`` / ``t`` / ``slice`` / ``select`` / ``split``
           + ``getitem`` / ``alias`` / eval-mode ``dropout``: moves data, no arithmetic
mask       ``masked_fill`` / ``where`` with a constant mask and a fill <= -1e4 (-inf), or
           adding a constant of only 0 and <= -1e4: ``mask`` is True where masked
host       anything else: the ATen op and its arguments, with the ``reason`` it is not mapped
========== ===================================================================================

Generic ops (``view``, ``host``, ``add``) keep the ATen target as a string
(``"aten.cumsum.default"``) and their arguments as plain data, where ``{"ref": name}`` is an
op's value and ``{"const": name}`` a tensor of :attr:`Graph.consts`; nothing holds code, so a
graph saves with ``torch.save`` and loads with ``weights_only=True``. Shapes are static (those
of the example inputs).
"""

from __future__ import annotations

import inspect
import logging
import math
import operator
from dataclasses import dataclass, field

import torch

from ...errors import CompileError

__all__ = ["Op", "Graph", "capture", "call_aten", "encode", "decode", "MASK_FILL_MAX"]

MASK_FILL_MAX = -1e4  # a fill value at or below this is a masked (-inf) entry for softmax

_VIEW_OPS = {
    "view", "reshape", "_unsafe_view", "transpose", "permute", "unsqueeze", "squeeze",
    "contiguous", "clone", "expand", "t", "slice", "select", "alias", "flatten", "detach",
    "split", "split_with_sizes", "unbind", "chunk",
}  # fmt: skip
_TUPLE_VIEWS = {"split", "split_with_sizes", "unbind", "chunk"}


@dataclass
class Op:
    """One IR op. ``inputs`` are the names of the ops whose values it reads (in order)."""

    name: str
    kind: str
    inputs: list[str]
    attrs: dict
    shape: tuple[int, ...]
    reason: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "inputs": list(self.inputs),
                "attrs": self.attrs, "shape": list(self.shape), "reason": self.reason}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> Op:
        return cls(d["name"], d["kind"], list(d["inputs"]), d["attrs"], tuple(d["shape"]),
                   d["reason"])  # fmt: skip


@dataclass
class Graph:
    """Ops in topological order, the constant tensors they name, inputs and outputs by name."""

    ops: list[Op]
    consts: dict[str, torch.Tensor]
    inputs: list[str]
    outputs: list[str]
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)

    def op(self, name: str) -> Op:
        index = getattr(self, "_by_name", None)
        if index is None or len(index) != len(self.ops):
            index = self._by_name = {o.name: o for o in self.ops}
        return index[name]

    def to_dict(self) -> dict:
        return {"ops": [o.to_dict() for o in self.ops], "consts": dict(self.consts),
                "inputs": list(self.inputs), "outputs": list(self.outputs),
                "input_shapes": [list(s) for s in self.input_shapes]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> Graph:
        return cls([Op.from_dict(o) for o in d["ops"]], dict(d["consts"]), list(d["inputs"]),
                   list(d["outputs"]), [tuple(s) for s in d["input_shapes"]])  # fmt: skip


# ---- plain-data encoding of ATen arguments -------------------------------------------------------


@dataclass(frozen=True)
class _Ref:
    name: str


@dataclass(frozen=True)
class _Pending:
    """A tuple-valued node (``split``, ``native_layer_norm``, ...): made an op at ``getitem``."""

    node: object


def encode(v, const_name):
    """An ATen argument as plain data: refs, constants (via ``const_name(tensor)``), scalars."""
    if isinstance(v, _Ref):
        return {"ref": v.name}
    if isinstance(v, torch.Tensor):
        return {"const": const_name(v)}
    if isinstance(v, (list, tuple)):
        return [encode(x, const_name) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).removeprefix("torch.")}
    if isinstance(v, torch.device):
        return {"device": "cpu"}
    if isinstance(v, torch.memory_format):
        return {"memory_format": str(v).removeprefix("torch.")}
    if isinstance(v, torch.layout):
        return {"layout": str(v).removeprefix("torch.")}
    raise CompileError(f"cannot represent the argument {v!r} ({type(v).__name__}) in the graph")


def decode(v, value_of, consts):
    """Inverse of :func:`encode`; ``value_of(name)`` gives an op's value."""
    if isinstance(v, list):
        return [decode(x, value_of, consts) for x in v]
    if isinstance(v, dict):
        if "ref" in v:
            return value_of(v["ref"])
        if "const" in v:
            return consts[v["const"]]
        if "dtype" in v:
            return getattr(torch, v["dtype"])
        if "device" in v:
            return torch.device("cpu")
        if "memory_format" in v:
            return getattr(torch, v["memory_format"])
        if "layout" in v:
            return getattr(torch, v["layout"])
    return v


def refs_in(v) -> list[str]:
    if isinstance(v, list):
        return [r for x in v for r in refs_in(x)]
    if isinstance(v, dict) and "ref" in v:
        return [v["ref"]]
    return []


def call_aten(target: str, args, kwargs):
    """Call ``torch.ops.<ns>.<name>.<overload>`` named by ``target`` (``"aten.view.default"``)."""
    ns, name, overload = target.split(".")
    return getattr(getattr(getattr(torch.ops, ns), name), overload)(*args, **kwargs)


# ---- capture ------------------------------------------------------------------------------------


def _export(model, example_inputs):
    """``torch.export.export``, strict first, then ``strict=False``; CompileError naming the
    exception of the non-strict attempt (the model's own error, usually)."""
    quiet = logging.getLogger("torch._subclasses.fake_tensor")  # logs each failure's traceback
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        try:
            return torch.export.export(model, example_inputs)
        except Exception:  # noqa: BLE001 - any strict tracing failure: retry non-strict
            pass
        try:
            return torch.export.export(model, example_inputs, strict=False)
        except Exception as e:  # noqa: BLE001
            lines = str(e).strip().splitlines()
            raise CompileError(
                f"the model does not trace with torch.export: {type(e).__name__}"
                + (f": {lines[0]}" if lines else "")
            ) from e
    finally:
        quiet.setLevel(level)


def check_inputs(model, example_inputs) -> tuple:
    if not isinstance(example_inputs, tuple) or not example_inputs:
        raise CompileError(
            "example_inputs must be a non-empty tuple of tensors, "
            f"not {_describe(example_inputs)}"
        )
    for i, t in enumerate(example_inputs):
        if not isinstance(t, torch.Tensor):
            raise CompileError(f"example_inputs[{i}] must be a torch tensor, not {_describe(t)}")
    try:
        inspect.signature(model.forward).bind(*example_inputs)
    except TypeError:
        params = list(inspect.signature(model.forward).parameters)
        raise CompileError(
            f"example_inputs has {len(example_inputs)} tensors but the model's forward takes "
            f"({', '.join(params)})"
        ) from None
    except ValueError:  # no signature (a C-implemented forward): let export decide
        pass
    return example_inputs


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    if isinstance(x, tuple):
        return "an empty tuple" if not x else f"a tuple of {len(x)}"
    return type(x).__name__


def capture(model: torch.nn.Module, example_inputs: tuple) -> Graph:
    """Export ``model`` on ``example_inputs`` and map it to the IR (see the module doc)."""
    if not isinstance(model, torch.nn.Module):
        raise CompileError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    check_inputs(model, example_inputs)
    ep = _export(model, example_inputs)
    return _Builder(ep).build([tuple(t.shape) for t in example_inputs])


class _Builder:
    def __init__(self, ep):
        self.ep = ep
        self.ops: list[Op] = []
        self.consts: dict[str, torch.Tensor] = {}
        self._const_ids: dict[int, str] = {}
        self.env: dict = {}

    # constants are named by the node or parameter they came from
    def const(self, t: torch.Tensor, hint: str = "const") -> str:
        key = id(t)
        if key in self._const_ids:
            return self._const_ids[key]
        name = hint.replace(".", "_")
        while name in self.consts:
            name = f"{name}_"
        self.consts[name] = t.detach().clone()
        self._const_ids[key] = name
        return name

    def add(self, node, kind, inputs, attrs, reason="") -> _Ref:
        shape = _shape(node)
        self.ops.append(Op(node.name, kind, inputs, attrs, shape, reason))
        return _Ref(node.name)

    def build(self, input_shapes) -> Graph:
        sig = self.ep.graph_signature
        state = dict(self.ep.state_dict)
        consts = dict(getattr(self.ep, "constants", {}) or {})
        user = []
        specs = {s.arg.name: s for s in sig.input_specs}
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                spec = specs[node.name]
                kind = spec.kind.name
                if kind == "USER_INPUT":
                    self.env[node] = self.add(node, "input", [], {})
                    user.append(node.name)
                elif kind in ("PARAMETER", "BUFFER"):
                    src = state if spec.target in state else consts
                    self.env[node] = src[spec.target]
                    self._hint(self.env[node], spec.target)
                elif kind in ("CONSTANT_TENSOR", "CUSTOM_OBJ"):
                    if not isinstance(consts.get(spec.target), torch.Tensor):
                        raise CompileError(f"the model holds a non-tensor constant {spec.target!r}")
                    self.env[node] = consts[spec.target]
                else:
                    raise CompileError(f"the exported graph has an input of kind {kind}")
            elif node.op == "call_function":
                self.env[node] = self.visit(node)
            elif node.op == "output":
                outs = []
                for spec, v in zip(sig.output_specs, node.args[0], strict=True):
                    if spec.kind.name != "USER_OUTPUT":
                        raise CompileError(
                            f"the model mutates a buffer or input ({spec.kind.name}); "
                            "compile a model without in-place state updates"
                        )
                    outs.append(self._as_ref(node, self.env[v]))
                return Graph(self._prune(outs), self.consts, user, outs, list(input_shapes))
        raise CompileError("the exported graph has no output")

    def _hint(self, t, name):
        if isinstance(t, torch.Tensor):
            self._hints = getattr(self, "_hints", {})
            self._hints[id(t)] = name

    def _as_ref(self, node, v) -> str:
        if isinstance(v, _Ref):
            return v.name
        raise CompileError("a model output that does not depend on the inputs is not supported")

    def _prune(self, outs):
        """Drop consts no op names (folded intermediates)."""
        used = set()

        def walk(v):
            if isinstance(v, dict):
                if "const" in v:
                    used.add(v["const"])
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)

        for o in self.ops:
            walk(o.attrs)
            for key in ("weight", "bias", "mask"):
                if isinstance(o.attrs.get(key), str):
                    used.add(o.attrs[key])
        self.consts = {k: v for k, v in self.consts.items() if k in used}
        return self.ops

    # ---- one ATen node ----
    def visit(self, node):
        args = [self._val(a) for a in node.args]
        kwargs = {k: self._val(v) for k, v in node.kwargs.items()}
        target = node.target
        if target is operator.getitem:
            return self._getitem(node, args)
        if not isinstance(target, torch._ops.OpOverload):
            raise CompileError(f"the exported graph calls {target!r}, which is not an ATen op")
        if not _has_ref([args, kwargs]):  # all constant: fold it
            return target(*args, **kwargs)
        name = target._schema.name.split("::")[-1]
        mapped = self._map(node, name, args, kwargs)
        if mapped is not None:
            return mapped
        return self._host(node, args, kwargs, f"{_tname(target)} has no engine")

    def _val(self, a):
        if isinstance(a, torch.fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self._val(x) for x in a)
        return a

    def _getitem(self, node, args):
        src, idx = args
        if isinstance(src, _Pending):
            inner = src.node
            return self._generic(node, inner, idx)
        if isinstance(src, (list, tuple)):
            return src[idx]
        raise CompileError(f"getitem on {type(src).__name__} in the exported graph")

    def _generic(self, node, inner, index):
        """An op for element ``index`` of a tuple-valued node ``inner``."""
        args = [self._val(a) for a in inner.args]
        kwargs = {k: self._val(v) for k, v in inner.kwargs.items()}
        name = inner.target._schema.name.split("::")[-1]
        if name in _TUPLE_VIEWS:
            return self._emit(node, "view", inner.target, args, kwargs, index=index)
        if name == "native_layer_norm" and index == 0:
            x, shape, w, b, eps = args
            return self._layer_norm(node, x, shape, w, b, eps)
        return self._emit(node, "host", inner.target, args, kwargs, index=index,
                          reason=f"{_tname(inner.target)} has no engine")  # fmt: skip

    def _emit(self, node, kind, target, args, kwargs, index=None, reason=""):
        cn = lambda t: self.const(t, self._chint(t, node))  # noqa: E731
        attrs = {"target": _tname(target), "args": encode(list(args), cn),
                 "kwargs": {k: encode(v, cn) for k, v in kwargs.items()}}  # fmt: skip
        if index is not None:
            attrs["index"] = index
        refs = refs_in(attrs["args"]) + refs_in(list(attrs["kwargs"].values()))
        inputs = list(dict.fromkeys(refs))
        return self.add(node, kind, inputs, attrs, reason)

    def _chint(self, t, node):
        return getattr(self, "_hints", {}).get(id(t), f"{node.name}_const")

    def _host(self, node, args, kwargs, reason):
        if _tuple_valued(node):
            return _Pending(node)
        return self._emit(node, "host", node.target, args, kwargs, reason=reason)

    def _map(self, node, name, args, kwargs):
        if name in _VIEW_OPS:
            if name in _TUPLE_VIEWS:
                return _Pending(node)
            return self._emit(node, "view", node.target, args, kwargs)
        if name == "dropout" and len(args) >= 3 and args[2] is False:
            return self._emit(node, "view", torch.ops.aten.alias.default, args[:1], {})
        if kwargs and name not in ("gelu", "softmax", "_softmax", "where", "masked_fill"):
            return None
        if name == "linear":
            x, w, *rest = args
            b = rest[0] if rest else None
            if isinstance(x, _Ref) and isinstance(w, torch.Tensor) and not _has_ref(b):
                return self._linear(node, x, w, b)
            return None
        if name == "addmm" and len(args) == 3:
            b, x, w = args
            if isinstance(x, _Ref) and isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor):
                return self._linear(node, x, w.t(), b)
            return None
        if name in ("mm", "matmul", "bmm"):
            a, b = args
            if isinstance(a, _Ref) and isinstance(b, _Ref):
                return self.add(node, "matmul", [a.name, b.name], {})
            if isinstance(a, _Ref) and isinstance(b, torch.Tensor) and b.dim() == 2:
                return self._linear(node, a, b.t(), None)
            return None
        if name in ("softmax", "_softmax"):
            x, dim = args[0], args[1]
            if isinstance(x, _Ref):
                return self.add(node, "softmax", [x.name], {"dim": dim % len(_shape(node))})
            return None
        if name == "gelu":
            approx = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
            return self.add(node, "gelu", [args[0].name], {"approximate": approx})
        if name == "layer_norm":
            x, shape, w, b, eps = (list(args) + [None, None, 1e-5])[:5]
            return self._layer_norm(node, x, shape, w, b, eps)
        if name == "native_layer_norm":
            return _Pending(node)
        if name in ("mul", "div"):
            return self._scale(node, name, args)
        if name in ("masked_fill", "where"):
            return self._mask(node, name, args)
        if name == "add":
            return self._add(node, args, kwargs)
        return None

    def _linear(self, node, x, w, b):
        if w.dim() != 2 or (b is not None and (not isinstance(b, torch.Tensor) or b.dim() != 1)):
            return None
        attrs = {"weight": self.const(w, self._chint(w, node)),
                 "bias": None if b is None else self.const(b, self._chint(b, node))}  # fmt: skip
        return self.add(node, "linear", [x.name], attrs)

    def _layer_norm(self, node, x, shape, w, b, eps):
        if not isinstance(x, _Ref) or _has_ref([w, b]):
            return None
        n = _shape(node)[-1]
        if list(shape) != [n]:
            why = f"layer_norm over {list(shape)}, not the last dim only"
            return self._emit(node, "host", torch.ops.aten.layer_norm.default,
                              [x, shape, w, b, eps], {}, reason=why)  # fmt: skip
        attrs = {"weight": None if w is None else self.const(w, self._chint(w, node)),
                 "bias": None if b is None else self.const(b, self._chint(b, node)),
                 "eps": float(eps)}  # fmt: skip
        return self.add(node, "layer_norm", [x.name], attrs)

    def _scale(self, node, name, args):
        a, b = args
        if isinstance(b, _Ref) and name == "mul":
            a, b = b, a
        if not isinstance(a, _Ref):
            return None
        if isinstance(b, torch.Tensor) and b.numel() == 1 and b.is_floating_point():
            b = float(b)
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
            return None
        if name == "div":
            if b == 0:
                return None
            b = 1.0 / b
        return self.add(node, "scale", [a.name], {"factor": float(b)})

    def _mask(self, node, name, args):
        if name == "masked_fill":
            x, mask, value = args
            masked = mask
        else:
            if len(args) != 3:
                return None
            cond, x, value = args
            masked = torch.logical_not(cond) if isinstance(cond, torch.Tensor) else None
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value)
        if not (isinstance(x, _Ref) and isinstance(masked, torch.Tensor)):
            return None
        if masked.dtype != torch.bool or not isinstance(value, (int, float)):
            return None
        if value > MASK_FILL_MAX:
            return None
        return self._mask_op(node, x, masked, value)

    def _mask_op(self, node, x, masked, value):
        attrs = {"mask": self.const(masked, f"{node.name}_mask"), "fill": float(value)}
        return self.add(node, "mask", [x.name], attrs)

    def _add(self, node, args, kwargs):
        a, b = args[0], args[1]
        alpha = args[2] if len(args) > 2 else 1
        if isinstance(a, torch.Tensor) and isinstance(b, _Ref):
            a, b = b, a
        const = isinstance(b, torch.Tensor) and b.is_floating_point()
        if isinstance(a, _Ref) and const and alpha == 1:
            bad = b <= MASK_FILL_MAX
            if bad.any() and bool(((b == 0) | bad).all()):
                return self._mask_op(node, a, bad, float(b.min()))
        if not isinstance(a, _Ref) or not (isinstance(b, (_Ref, torch.Tensor))):
            return None
        why = "an elementwise add runs on the host (no elementwise engine)"
        return self._emit(node, "add", node.target, [a, b] + list(args[2:]), kwargs, reason=why)


def _has_ref(v) -> bool:
    if isinstance(v, _Ref | _Pending):
        return True
    if isinstance(v, (list, tuple)):
        return any(_has_ref(x) for x in v)
    if isinstance(v, dict):
        return any(_has_ref(x) for x in v.values())
    return False


def _tname(target) -> str:
    ns, name = target._schema.name.split("::")
    return f"{ns}.{name}.{target._overloadname}"


def _tuple_valued(node) -> bool:
    return isinstance(node.meta.get("val"), (list, tuple))


def _shape(node) -> tuple[int, ...]:
    v = node.meta.get("val")
    if isinstance(v, torch.Tensor):
        return tuple(int(d) for d in v.shape)
    raise CompileError(f"the exported node {node.name} has no static tensor shape")
