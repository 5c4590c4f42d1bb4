"""Quantisation: calibrated static scales, int8 GEMMs, dyadic requantisation between engines.

The scheme (every scale is static, fixed at compile time from the calibration set):

* **Weights**: int8 per output channel, symmetric: ``s_w[n] = max|W[n, :]| / 127``,
  ``W_q = round(W / s_w)``; a bias becomes int32 in accumulator units,
  ``round(b[n] / (s_x[r] * s_w[n]))`` (saturated), added to the accumulator as the engine's
  accumulate mode would.
* **GEMM activations**: int8, symmetric, per row (``granularity="row"``, vector-wise: one scale
  per row of A and per column of B, from the largest ``|x|`` any calibration sample had in that
  row) or per tensor (``"tensor"``). ``s = absmax / 127``.
* **Accumulators**: int32 (the engine's ``acc_width``), scale ``s_a[r] * s_b[c]``.
* **Between engines**: a value is a :class:`QT`, integers ``q`` with a scale tensor (a 0-d
  scale or one per element) and an optional mask of -inf entries. Moving it into another
  format (an accumulator into int8 for the next GEMM, into softmax / GELU / LayerNorm's
  ``in_fmt`` with ``in_frac`` fraction bits) is ``hdl.requant.requant`` with the dyadic
  multiplier ``dyadic(s_in / s_out)`` (16-bit multiplier, relative error <= 2**-15): one
  (mult, shift) for a 0-d ratio (what the on-chip COPY implements), one per element otherwise.
* **Outputs of the nonlinear engines** are dequantised by their format: softmax ``2**-15``
  (1.0 = 2**15), GELU and LayerNorm ``2**-out_frac``.

Floats enter only where a value comes from or goes to a host-placed op (round-to-nearest into
the consumer's format, or ``q * scale`` out of it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import CompileError
from ...hdl.formats import IntFormat
from ...hdl.requant import dyadic, requant
from .graph import Graph

__all__ = ["QT", "Calibration", "calibrate", "quantize_weights", "to_int", "dequant",
           "dyadic_t", "requant_t", "I8", "GRANULARITIES"]  # fmt: skip

I8 = IntFormat(8)
GRANULARITIES = ("row", "tensor")


@dataclass
class QT:
    """Integers ``q`` (int64) worth ``q * scale``; ``masked`` entries are -inf."""

    q: torch.Tensor
    scale: torch.Tensor  # float64, 0-d or q's shape
    masked: torch.Tensor | None = None

    def __post_init__(self):
        self.scale = torch.as_tensor(self.scale, dtype=torch.float64)
        if self.scale.dim():
            self.scale = self.scale.expand(self.q.shape).contiguous()
        if self.masked is not None:
            self.masked = self.masked.expand(self.q.shape).contiguous()

    def apply(self, fn) -> QT:
        """A data-movement ``fn`` applied to the integers, the scales and the mask alike."""
        return QT(fn(self.q), fn(self.scale) if self.scale.dim() else self.scale,
                  None if self.masked is None else fn(self.masked))  # fmt: skip

    @property
    def shape(self):
        return self.q.shape


def dequant(v, dtype=torch.float32) -> torch.Tensor:
    """A float tensor of ``v`` (a :class:`QT` or already float)."""
    if not isinstance(v, QT):
        return v
    x = (v.q.double() * v.scale).to(dtype)
    if v.masked is not None:
        x = x.masked_fill(v.masked, float("-inf"))
    return x


def dyadic_t(ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise :func:`hdl.requant.dyadic` (the same function, once per distinct value)."""
    vals, inv = torch.unique(ratio.double().reshape(-1), return_inverse=True)
    pairs = [dyadic(float(v)) for v in vals]
    mult = torch.tensor([p[0] for p in pairs], dtype=torch.int64)[inv].reshape(ratio.shape)
    shift = torch.tensor([p[1] for p in pairs], dtype=torch.int64)[inv].reshape(ratio.shape)
    return mult, shift


def requant_t(x, mult: torch.Tensor, shift: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    """:func:`hdl.requant.requant` with per-element ``mult`` / ``shift`` tensors."""
    x = torch.as_tensor(x, dtype=torch.int64)
    half = torch.where(shift > 0, torch.ones_like(shift) << (shift - 1).clamp(min=0), 0)
    return fmt.saturate((x * mult + half) >> shift)


def to_int(v, scale, fmt: IntFormat, *, masked_min: bool = False) -> torch.Tensor:
    """``v`` (QT or float) as integers of ``fmt`` worth ``scale`` each (broadcastable).

    With ``masked_min`` (softmax input) masked / -inf entries become ``fmt.min`` and every other
    entry saturates at ``fmt.min + 1``; otherwise -inf saturates to ``fmt.min``."""
    scale = torch.as_tensor(scale, dtype=torch.float64)
    lo = fmt.min + 1 if masked_min else fmt.min
    if isinstance(v, QT):
        ratio = v.scale / scale
        if ratio.numel() == 1:
            mult, shift = dyadic(float(ratio))
            q = requant(v.q, mult, shift, fmt)
        else:
            q = requant_t(v.q, *dyadic_t(ratio.expand(v.q.shape)), fmt)
        q = q.clamp(min=lo)
        masked = v.masked
    else:
        x = v.double()
        q = torch.nan_to_num(x / scale, posinf=fmt.max, neginf=lo).round().clamp(lo, fmt.max).long()
        masked = torch.isneginf(x)
    if masked is not None:
        q = torch.where(masked, fmt.min, q)
    return q


# ---- calibration ---------------------------------------------------------------------------------


@dataclass
class Calibration:
    """Per GEMM op, the largest |x| seen: ``{"a": ..., "b": ...}`` (``linear``: ``"a"`` only).

    ``a`` is per row of A (shape ``A.shape[:-1]``), ``b`` per column of B (``B.shape[:-2] +
    (N,)``), or 0-d with ``granularity == "tensor"``."""

    ranges: dict[str, dict[str, torch.Tensor]]
    granularity: str
    samples: int


def calibrate(graph: Graph, samples: list[tuple], *, granularity: str = "row") -> Calibration:
    """Run the float graph on ``samples`` (tuples like the example inputs); record the ranges."""
    from .golden import check_run_inputs, run_float

    if granularity not in GRANULARITIES:
        raise CompileError(f"granularity must be 'row' or 'tensor', not {granularity!r}")
    if not isinstance(samples, (list, tuple)) or not samples:
        raise CompileError("the calibration set is empty: give at least one sample (a tuple of "
                           "tensors shaped like the example inputs)")  # fmt: skip
    ranges: dict[str, dict[str, torch.Tensor]] = {}

    def observe(op, vals):
        if op.kind == "linear":
            got = {"a": vals[0].detach().double().abs().amax(-1)}
        elif op.kind == "matmul":
            got = {"a": vals[0].detach().double().abs().amax(-1),
                   "b": vals[1].detach().double().abs().amax(-2)}  # fmt: skip
        else:
            return
        got = {k: _nan_free(v) for k, v in got.items()}
        if granularity == "tensor":
            got = {k: v.amax() for k, v in got.items()}
        old = ranges.get(op.name)
        ranges[op.name] = got if old is None else {k: torch.maximum(old[k], got[k]) for k in got}

    for i, s in enumerate(samples):
        s = check_run_inputs(graph, s, f"calibration[{i}]")
        with torch.no_grad():
            run_float(graph, s, observe=observe)
    return Calibration(ranges, granularity, len(samples))


def _nan_free(t):
    return torch.nan_to_num(t, nan=0.0, posinf=0.0)


def act_scale(absmax: torch.Tensor) -> torch.Tensor:
    """int8 scale from a range; all-zero rows take the largest row's scale (or 1)."""
    top = float(absmax.max()) if absmax.numel() else 0.0
    return torch.where(absmax > 0, absmax, top if top > 0 else 127.0) / 127.0


def quantize_weights(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_q^T [K, N] int8 values as int64, s_w [N] float64)`` of a float weight [N, K]."""
    w = w.detach().double()
    s = act_scale(w.abs().amax(-1))
    return torch.round(w / s[:, None]).clamp(-127, 127).long().t().contiguous(), s


def prepare(graph: Graph, calib: Calibration, cfg, placement: dict) -> dict[str, dict]:
    """Each engine op's integer constants and scales (plain tensors, saved with the artefact).

    ``linear``: ``w_q`` [K, N], ``w_scale`` [N], ``a_scale`` (per row [R] or 0-d), ``bias_q``
    [R or 1, N] int32 in accumulator units; ``matmul``: ``a_scale``, ``b_scale``;
    ``layer_norm``: ``gamma_q``, ``beta_q`` (int16 with ``gamma_frac`` / ``out_frac``)."""
    out: dict[str, dict] = {}
    for op in graph.ops:
        engine = placement[op.name]
        if engine in ("host", "fused", "input", "attention"):
            continue
        c: dict[str, torch.Tensor] = {}
        if op.kind in ("linear", "matmul"):
            r = calib.ranges.get(op.name)
            if r is None:
                raise CompileError(f"the calibration never reached op {op.name}")
            c["a_scale"] = act_scale(r["a"])
            if op.kind == "matmul":
                c["b_scale"] = act_scale(r["b"])
            else:
                c["w_q"], c["w_scale"] = quantize_weights(graph.consts[op.attrs["weight"]])
                if c["a_scale"].dim():
                    c["a_scale"] = c["a_scale"].reshape(-1)
                if op.attrs["bias"] is not None:
                    b = graph.consts[op.attrs["bias"]].double()
                    sa = c["a_scale"].reshape(-1, 1) if c["a_scale"].dim() else c["a_scale"]
                    acc = cfg.engine(engine).acc_fmt  # systolic or pim
                    c["bias_q"] = acc.saturate(torch.round(b[None, :] / (sa * c["w_scale"])).long())
        elif op.kind == "layer_norm":
            e = cfg.engine("layernorm")
            n = op.shape[-1]
            w, b = op.attrs["weight"], op.attrs["bias"]
            w = torch.ones(n) if w is None else graph.consts[w]
            b = torch.zeros(n) if b is None else graph.consts[b]
            i16 = IntFormat(16)
            c["gamma_q"] = i16.saturate(torch.round(w.double() * 2.0**e.gamma_frac).long())
            c["beta_q"] = i16.saturate(torch.round(b.double() * 2.0**e.out_frac).long())
        out[op.name] = c
    return out
