"""Configuration of the softmax engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...hdl.formats import IntFormat, parse_int_format
from ...hdl.nonlinear_common import check_common, check_int

__all__ = ["SoftmaxConfig", "SOFTMAX_METHODS", "PROB_FRAC"]

SOFTMAX_METHODS = ("online", "shiftmax")
PROB_FRAC = 15  # output probabilities: uint16, 1.0 == 2**15


@dataclass(frozen=True)
class SoftmaxConfig:
    """A ``lanes``-wide softmax over rows of an int8/int16 fixed-point input.

    * ``method``: ``online`` (single-pass running max and rescaled running sum, exp by base-2
      range reduction and two 64-entry tables, then a normalisation pass) or ``shiftmax`` (I-ViT:
      max pass, shift-only exp and sum pass, normalisation pass).
    * ``in_dtype``/``in_frac``: input int8 or int16 with value ``x * 2**-in_frac``. The format's
      minimum (-128 / -32768) is a masked entry (-inf).
    * ``lanes``: elements per cycle (1..16). Memories hold vector words of ``lanes`` elements.
    * ``depth``: vector words in the input memory and in the output memory.
    * ``max_len``: the longest row an instruction may name (1..4096).
    * ``divider_bits``: quotient bits the row's reciprocal divider takes a cycle: 2 (radix 4,
      17 cycles a row) or 1 (radix 2, 32 cycles, one carry chain in its step instead of three
      side by side: a shorter path for timing closure).

    Output: uint16 probabilities, 1.0 == 2**15, round-half-up.
    """

    kind: ClassVar[str] = "softmax"

    method: str = "online"
    in_dtype: str = "int16"
    in_frac: int = 8
    lanes: int = 4
    depth: int = 1024
    max_len: int = 4096
    divider_bits: int = 2

    def __post_init__(self):
        if self.method not in SOFTMAX_METHODS:
            raise ValueError(f"method must be online or shiftmax, not {self.method!r}")
        check_common(self)
        check_int("divider_bits", self.divider_bits, 1, 2)

    @property
    def in_fmt(self) -> IntFormat:
        return parse_int_format(self.in_dtype)

    @property
    def out_fmt(self) -> IntFormat:
        return IntFormat(16, signed=False)
