"""Configuration of the LayerNorm engine."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ...hdl.formats import IntFormat, parse_int_format
from ...hdl.nonlinear_common import check_common, check_int

__all__ = ["LayerNormConfig"]


@dataclass(frozen=True)
class LayerNormConfig:
    """A ``lanes``-wide LayerNorm over rows, with per-column gamma and beta.

    * ``in_dtype``/``in_frac``: int8 or int16 input, value ``x * 2**-in_frac``.
    * ``mean_frac``: extra fraction bits of the integer mean and the deviations (I-ViT uses 0;
      more bits keep small-variance rows accurate). ``in_width + mean_frac`` must be <= 24.
    * ``gamma_frac``: gamma is int16 with value ``g * 2**-gamma_frac``.
    * ``out_dtype``/``out_frac``: output (and beta) format, value ``y * 2**-out_frac``.
    * ``eps``: added to the variance, as ``torch.nn.functional.layer_norm``'s ``eps``.
    * ``lanes`` (1..16), ``depth`` (vector words per data memory), ``max_len`` (longest row;
      the gamma and beta memories hold ``ceil(max_len / lanes)`` vector words).
    * ``divider_bits``: quotient bits the shared divider (mean, variance, Newton steps,
      reciprocal) takes a cycle: 2 (radix 4, about half the division cycles) or 1 (radix 2,
      one carry chain in its step instead of three side by side: a shorter path for timing).
    """

    kind: ClassVar[str] = "layernorm"

    in_dtype: str = "int16"
    in_frac: int = 8
    mean_frac: int = 8
    gamma_frac: int = 12
    out_dtype: str = "int16"
    out_frac: int = 11
    eps: float = 1e-5
    lanes: int = 4
    depth: int = 1024
    max_len: int = 4096
    divider_bits: int = 2

    def __post_init__(self):
        check_common(self)
        check_int("divider_bits", self.divider_bits, 1, 2)
        w = self.in_fmt.width
        check_int("mean_frac", self.mean_frac, 0, 24 - w)
        check_int("gamma_frac", self.gamma_frac, 0, 15)
        out = parse_int_format(self.out_dtype, field="out_dtype", allowed=("int8", "int16"))
        check_int("out_frac", self.out_frac, 0, out.width - 1)
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)):
            raise TypeError(f"eps must be a number, not {self.eps!r}")
        if not (math.isfinite(self.eps) and 0 <= self.eps <= 1):
            raise ValueError(f"eps must be a number in 0..1, not {self.eps!r}")

    @property
    def in_fmt(self) -> IntFormat:
        return parse_int_format(self.in_dtype)

    @property
    def out_fmt(self) -> IntFormat:
        return parse_int_format(self.out_dtype)

    @property
    def param_depth(self) -> int:
        return -(-self.max_len // self.lanes)
