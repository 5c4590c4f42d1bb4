"""Bit-exact golden model of the GELU engine (torch int64 ops).

``rom`` (Edge-MoE): ``GELU(x) = ReLU(x) - delta(|x|)``, ``delta(t) = t * Phi(-t)``. ``ROM[k] =
round(delta(k / 32) * 2**20)`` for k = 0..191, zero from k = 192 (t >= 6, delta < 6e-9). With
``t = |x|`` in 2**-f units: ``k = t >> (f - 5)``, ``u = t & (2**(f - 5) - 1)`` and
``delta = ROM[k] + round((ROM[k+1] - ROM[k]) * u / 2**(f - 5))`` (for f < 5, ``k = t << (5 - f)``
and no interpolation). ``y = round((ReLU(x) * 2**(20 - f) - delta) / 2**(20 - out_frac))``.

``shiftgelu`` (I-ViT ShiftGELU, made elementwise): ``s = 1.703125 x`` by shift-adds (I-ViT folds
1.702 into the scale; a shift-add keeps the exp's q and r shifts), ``E = shift_exp(-|s|)`` with
n = 23 (1.0 == 2**24 after a rounding rescale), ``sig_neg = floor(E * 2**16 / (E + 2**24))`` (one
integer division), ``sig = 2**16 - sig_neg`` for s >= 0, else ``sig_neg``;
``y = round(x * sig / 2**(f + 16 - out_frac))``. The row-max stabiliser of I-ViT is replaced by
the elementwise ``-|s|`` (mathematically equal, no row pass). Outputs saturate to ``out_dtype``.
"""

from __future__ import annotations

import math

import torch

from ...hdl.requant import rshift_round
from .config import GeluConfig

__all__ = ["gelu_model", "rom_table", "ROM_FRAC", "ROM_STEP_BITS", "ROM_ENTRIES", "SIG_ONE"]

ROM_FRAC = 20  # delta entries in 2**-20
ROM_STEP_BITS = 5  # table step 1/32
ROM_ENTRIES = 192  # t in [0, 6)
SHIFT_N = 23
SIG_BITS = 16
SIG_ONE = 1 << SIG_BITS
E_BITS = 24


def rom_table() -> list[int]:
    """delta(k / 32) * 2**20, rounded, for k = 0..191, followed by two zeros."""
    out = []
    for k in range(ROM_ENTRIES):
        t = k / (1 << ROM_STEP_BITS)
        out.append(round(t * 0.5 * math.erfc(t / math.sqrt(2)) * (1 << ROM_FRAC)))
    return out + [0, 0]


_ROM = torch.tensor(rom_table(), dtype=torch.int64)


def _gelu_rom(x, f: int, of: int):
    t = x.abs()
    if f >= ROM_STEP_BITS:
        sh = f - ROM_STEP_BITS
        k = (t >> sh).clamp(max=ROM_ENTRIES)
        u = t & ((1 << sh) - 1)
        a, b = _ROM[k], _ROM[k + 1]
        delta = a + rshift_round((b - a) * u, sh)
    else:
        k = (t << (ROM_STEP_BITS - f)).clamp(max=ROM_ENTRIES)
        delta = _ROM[k]
    y = (x.clamp(min=0) << (ROM_FRAC - f)) - delta
    return rshift_round(y, ROM_FRAC - of)


def shift_exp(x, f: int, n: int):
    """I-ViT's shift exp of ``x <= 0`` (2**-f units); 1.0 == 2**(f + n)."""
    xl = x + (x >> 1) - (x >> 4)
    xl = xl.clamp(min=-n * (1 << f))
    q = (-xl) >> f
    r = xl + (q << f)
    return ((r + (2 << f)) << (n - q)) >> 1


def _gelu_shift(x, f: int, of: int):
    s = x + (x >> 1) + (x >> 3) + (x >> 4) + (x >> 6)
    e = rshift_round(shift_exp(-s.abs(), f, SHIFT_N), f + SHIFT_N - E_BITS)
    sig_neg = (e << SIG_BITS) // (e + (1 << E_BITS))
    sig = torch.where(s >= 0, SIG_ONE - sig_neg, sig_neg)
    return rshift_round(x * sig, f + SIG_BITS - of)


def gelu_model(x, cfg: GeluConfig) -> torch.Tensor:
    """Engine output (int64 values of ``out_dtype``) for integer inputs ``x`` of any shape."""
    x = torch.as_tensor(x, dtype=torch.int64)
    if cfg.method == "rom":
        y = _gelu_rom(x, cfg.in_frac, cfg.out_frac)
    else:
        y = _gelu_shift(x, cfg.in_frac, cfg.out_frac)
    return cfg.out_fmt.saturate(y)
