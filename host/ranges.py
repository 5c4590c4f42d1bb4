"""The range policy: what a host call does with a value its engine's input format cannot hold.

Every host call that puts caller values into an engine's input format takes ``range=``:

* ``"error"`` (the default): a value outside the format's range raises :class:`UsageError`
  naming the input, how many values are outside, the farthest one, the range and the way out.
* ``"saturate"``: such values are clamped to the nearest end of the range, and a
  :class:`SaturationWarning` says so (``op``, ``name``, ``count`` and ``total`` are attributes of
  the warning, so a caller can collect them with ``warnings.catch_warnings(record=True)``).
  Saturation is never silent; to ignore it on purpose, filter the warning class.

The formats: the float calls (``dev.gelu``, ``dev.softmax``, ``dev.layer_norm`` and its weight
and bias) quantise ``round(x * 2**frac)`` into the engine's integer format; the integer calls
(``dev.matmul``, ``dev.upload``, the ``*_int`` nonlinear calls, ``dev.gemv``,
``dev.load_weights``, the bit-serial ``matmul``) take integers in it as they are.

Infinities are values like any other: outside every range, so ``"error"`` raises and
``"saturate"`` clamps and counts them (torch's own answer would be ``nan`` or ``inf``, which no
engine format holds). One exception follows torch: ``-inf`` in a softmax logit is a masked entry
(probability 0). NaN always raises.
"""

from __future__ import annotations

import warnings

import torch

from ..errors import UsageError

__all__ = [
    "RANGE_POLICIES",
    "SaturationWarning",
    "check_policy",
    "fit_int",
    "fit_bounds",
    "fit_float",
]

RANGE_POLICIES = ("error", "saturate")


class SaturationWarning(UserWarning):
    """Values were clamped into an engine's input format (``range="saturate"``)."""

    def __init__(self, message: str, *, op: str = "", name: str = "", count: int = 0,
                 total: int = 0):  # fmt: skip
        super().__init__(message)
        self.op, self.name, self.count, self.total = op, name, count, total


def check_policy(policy) -> str:
    """``policy`` if it is one of :data:`RANGE_POLICIES`; raises UsageError otherwise."""
    if not isinstance(policy, str) or policy not in RANGE_POLICIES:
        raise UsageError(f"range must be 'error' or 'saturate', not {policy!r}")
    return policy


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 2**53 else repr(float(v))


def _apply(values, q, lo, hi, policy, *, op, name, where, floor=None) -> torch.Tensor:
    """Clamp or refuse: ``q`` are the integers, ``values`` the caller's values they came from;
    values below ``lo`` clamp to ``floor`` (``lo`` unless given)."""
    check_policy(policy)
    out = (q < lo) | (q > hi)
    count = int(out.sum())
    if count == 0:
        return q
    bad = values[out].double()
    far = float(bad[bad.abs().argmax()])
    total = q.numel()
    if policy == "error":
        raise UsageError(
            f"{op}: {count} of {total} values of {name} lie outside {where}, the farthest "
            f"{_num(far)}; pass range='saturate' to clamp them"
        )
    warnings.warn(
        SaturationWarning(
            f"{op}: {count} of {total} values of {name} saturated to {where}, the farthest "
            f"{_num(far)}",
            op=op, name=name, count=count, total=total,
        ),  # fmt: skip
        stacklevel=4,
    )
    return torch.where(q < lo, lo if floor is None else floor, q.clamp(max=hi))


def fit_int(x: torch.Tensor, fmt, policy: str, *, op: str, name: str,
            floor: int | None = None) -> torch.Tensor:  # fmt: skip
    """Integer tensor ``x`` as int64 in ``fmt`` (an IntFormat) under ``policy``; saturated
    values below the range become ``floor`` (default ``fmt.min``)."""
    return fit_bounds(x, fmt.min, fmt.max, fmt.name, policy, op=op, name=name, floor=floor)


def fit_bounds(x: torch.Tensor, lo: int, hi: int, fmt_name: str, policy: str, *, op: str,
               name: str, floor: int | None = None) -> torch.Tensor:  # fmt: skip
    """Integer tensor ``x`` as int64 in ``lo..hi`` (a format called ``fmt_name``)."""
    q = x.long()
    where = f"the {fmt_name} range {lo}..{hi}"
    return _apply(q, q, lo, hi, policy, op=op, name=name, where=where, floor=floor)


def fit_float(x: torch.Tensor, frac: int, fmt, policy: str, *, op: str, name: str,
              lo: int | None = None) -> torch.Tensor:  # fmt: skip
    """``round(x * 2**frac)`` as int64 in ``fmt`` under ``policy`` (``lo`` raises the bottom
    of the range, e.g. above a code reserved for masked entries). ``x`` holds no NaN."""
    lo = fmt.min if lo is None else lo
    scaled = x.double() * 2.0**frac
    # infinities become just-outside values, so they are counted and clamped like the others
    q = torch.nan_to_num(scaled, posinf=fmt.max + 1.0, neginf=lo - 1.0).round()
    q = q.clamp(lo - 1, fmt.max + 1).long()
    where = (f"the input range {_num(lo / 2**frac)}..{_num(fmt.max / 2**frac)} "
             f"({fmt.name} with {frac} fraction bits)")  # fmt: skip
    return _apply(x, q, lo, fmt.max, policy, op=op, name=name, where=where)
