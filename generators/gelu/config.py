"""Configuration of the GELU engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...hdl.formats import IntFormat, parse_int_format
from ...hdl.nonlinear_common import check_common, check_int

__all__ = ["GeluConfig", "GELU_METHODS"]

GELU_METHODS = ("rom", "shiftgelu")


@dataclass(frozen=True)
class GeluConfig:
    """A ``lanes``-wide elementwise GELU.

    * ``method``: ``rom`` (Edge-MoE: ``ReLU(x) - delta(|x|)``, ``delta(t) = t * Phi(-t)`` in a
      ROM of step 1/32 over [0, 6) built at elaboration, linearly interpolated) or ``shiftgelu``
      (I-ViT: ``x * sigmoid(1.702 x)`` with the shift exp, n = 23).
    * ``in_dtype``/``in_frac``: int8 or int16 input, value ``x * 2**-in_frac``.
    * ``out_dtype``/``out_frac``: int8 or int16 output, value ``y * 2**-out_frac``, rounded
      half-up and saturated.
    * ``lanes`` (1..16), ``depth`` (vector words per memory), ``max_len`` (longest row).
    """

    kind: ClassVar[str] = "gelu"

    method: str = "rom"
    in_dtype: str = "int16"
    in_frac: int = 12
    out_dtype: str = "int16"
    out_frac: int = 12
    lanes: int = 4
    depth: int = 1024
    max_len: int = 4096

    def __post_init__(self):
        if self.method not in GELU_METHODS:
            raise ValueError(f"method must be rom or shiftgelu, not {self.method!r}")
        check_common(self)
        out = parse_int_format(self.out_dtype, field="out_dtype", allowed=("int8", "int16"))
        check_int("out_frac", self.out_frac, 0, out.width - 1)

    @property
    def in_fmt(self) -> IntFormat:
        return parse_int_format(self.in_dtype)

    @property
    def out_fmt(self) -> IntFormat:
        return parse_int_format(self.out_dtype)
