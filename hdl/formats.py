"""Integer number formats shared by the hardware and the golden models.

A format is defined once here; generators build datapaths from it, and golden models quantise,
wrap and saturate with the same object, so the two cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from amaranth.hdl import Shape, signed, unsigned

__all__ = ["IntFormat", "parse_int_format", "INT_FORMATS"]

INT_FORMATS = ("int4", "int8", "int16", "uint4", "uint8", "uint16")


@dataclass(frozen=True)
class IntFormat:
    """A fixed-width two's complement (``signed``) or unsigned integer format."""

    width: int
    signed: bool = True

    def __post_init__(self):
        if not isinstance(self.width, int) or not 1 <= self.width <= 64:
            raise ValueError(f"width must be an integer in 1..64, not {self.width!r}")

    @property
    def name(self) -> str:
        return f"{'' if self.signed else 'u'}int{self.width}"

    @property
    def shape(self) -> Shape:
        return signed(self.width) if self.signed else unsigned(self.width)

    @property
    def min(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    def contains(self, value: int) -> bool:
        return self.min <= value <= self.max

    def wrap(self, t):
        """Reduce a torch integer tensor modulo 2**width into this format (two's complement)."""
        mask = (1 << self.width) - 1
        t = t & mask
        if self.signed:
            t = t - ((t >> (self.width - 1)) & 1) * (1 << self.width)
        return t

    def saturate(self, t):
        """Clamp a torch integer tensor into this format's range."""
        return t.clamp(self.min, self.max)

    def __str__(self) -> str:
        return self.name


def parse_int_format(name: str, *, field: str = "dtype", allowed=INT_FORMATS) -> IntFormat:
    """Parse ``"int8"``, ``"uint4"``, ... into an :class:`IntFormat`; the message names ``field``."""
    if not isinstance(name, str) or name not in allowed:
        raise ValueError(f"{field} must be one of {', '.join(allowed)}, not {name!r}")
    m = re.fullmatch(r"(u?)int(\d+)", name)
    return IntFormat(int(m.group(2)), signed=not m.group(1))
