"""Requantisation by a dyadic number: ``y = sat(round(x * mult / 2**shift))``.

The block every engine boundary uses to move an integer tensor from one scale to another (a GEMM
accumulator with scale ``s_a * s_b`` to the int8/int16 fixed point a nonlinear engine takes, for
instance). A real scale ``s`` is approximated by ``mult / 2**shift`` (:func:`dyadic`), so the
hardware is one multiplier and one rounding shift.

Rounding is round-half-up (``floor(v + 1/2)``), saturation clamps into ``out_fmt``. The Python
twin :func:`requant` is the bit-exact model; :func:`rshift_round` is the rounding shift all the
nonlinear golden models share.
"""

from __future__ import annotations

import math

import torch
from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .formats import IntFormat

__all__ = ["Requant", "requant", "dyadic", "rshift_round"]


def rshift_round(x, s: int):
    """``round_half_up(x / 2**s)`` for an integer torch tensor (``s`` >= 0), or ``x << -s``."""
    if s > 0:
        return (x + (1 << (s - 1))) >> s
    return x << (-s)


def dyadic(scale: float, *, mult_width: int = 16) -> tuple[int, int]:
    """``(mult, shift)`` with ``mult / 2**shift`` closest to ``scale`` and ``mult < 2**mult_width``.

    Relative error is at most ``2**-(mult_width - 1)`` for scales in 2**-40 .. 2**20.
    """
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, not {scale!r}")
    if not isinstance(mult_width, int) or not 2 <= mult_width <= 32:
        raise ValueError(f"mult_width must be an integer in 2..32, not {mult_width!r}")
    _, e = math.frexp(scale)  # scale = m * 2**e, 0.5 <= m < 1
    shift = mult_width - e
    mult = round(scale * 2.0**shift)
    if mult >= 1 << mult_width:  # m rounded up to 1.0
        mult //= 2
        shift -= 1
    if not 0 <= shift <= 63:
        raise ValueError(f"scale {scale!r} needs a shift of {shift}, outside 0..63")
    return mult, shift


def requant(x, mult: int, shift: int, out_fmt: IntFormat):
    """Bit-exact model of :class:`Requant`: ``sat(floor((x * mult + 2**(shift-1)) / 2**shift))``."""
    x = torch.as_tensor(x, dtype=torch.int64)
    return out_fmt.saturate(rshift_round(x * mult, shift))


class Requant(wiring.Component):
    """Dyadic requantiser, one result per cycle.

    Ports: ``i`` (input, ``in_fmt``), ``valid_i``; ``mult`` (unsigned ``mult_width``) and ``shift``
    (unsigned 6) are run-time inputs (a per-tensor register in practice); ``o`` (``out_fmt``) and
    ``valid_o``. Latency: ``latency`` cycles (2: the product is registered, then the rounded,
    saturated result). Throughput: one per cycle. ``o == requant(i, mult, shift, out_fmt)``.
    """

    latency = 2

    def __init__(self, *, in_fmt: IntFormat, out_fmt: IntFormat, mult_width: int = 16):
        if not isinstance(in_fmt, IntFormat):
            raise TypeError(f"in_fmt must be an IntFormat, not {in_fmt!r}")
        if not isinstance(out_fmt, IntFormat):
            raise TypeError(f"out_fmt must be an IntFormat, not {out_fmt!r}")
        if not isinstance(mult_width, int) or not 1 <= mult_width <= 32:
            raise ValueError(f"mult_width must be an integer in 1..32, not {mult_width!r}")
        self.in_fmt, self.out_fmt, self.mult_width = in_fmt, out_fmt, mult_width
        super().__init__(
            {
                "i": In(in_fmt.shape),
                "valid_i": In(1),
                "mult": In(unsigned(mult_width)),
                "shift": In(unsigned(6)),
                "o": Out(out_fmt.shape),
                "valid_o": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        pw = self.in_fmt.width + self.mult_width + 1
        prod = signed(pw)
        product = _reg(m, "product", prod, self.i * self.mult)
        shift = _reg(m, "shift_q", unsigned(6), self.shift)
        valid = _reg(m, "valid_q", 1, self.valid_i)
        half = (Const(1, 64) << shift) >> 1
        rounded = (product.as_signed() + half) >> shift
        lo, hi = self.out_fmt.min, self.out_fmt.max
        sat = Mux(rounded > hi, hi, Mux(rounded < lo, lo, rounded))
        m.d.sync += [self.o.eq(sat), self.valid_o.eq(valid)]
        return m


def _reg(m, name, shape, value):
    r = Signal(shape, name=name)
    m.d.sync += r.eq(value)
    return r
