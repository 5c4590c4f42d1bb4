"""Bit-exact golden model of the LayerNorm engine (torch int64 ops, Python ints for the scalars).

Per row of ``n`` inputs ``x`` (2**-f units), with ``G = mean_frac``, ``W`` the input width:

* ``S = sum(x)``; ``mean = sign(S) * floor((2 |S| 2**G + n) / (2 n))`` (2**-(f+G) units, rounded
  half away from zero);
* ``y = x * 2**G - mean``; ``V = sum(y * y)``;
  ``var = max(floor(V / n) + round(eps * 2**(2(f+G))), 1)`` (so ``R`` stays below ``2**K``);
* ``a = max(0, (34 - bitlen(var)) >> 1)``: the variance is scaled by ``4**a`` so the square root
  has >= 16 significant bits (I-ViT's integer std is coarse for small-variance rows);
* ``std = isqrt(var * 4**a)`` by Newton (I-ViT) from the table guess of :func:`root_guess`
  (``v``'s top 5-6 bits index ``ROOT_TABLE``, an upper bound of the root within ~3%, so two
  or three steps; ``2**ceil(bitlen / 2)`` below 13 bits), ``k <- floor((k + floor(v / k)) / 2)``
  while it decreases; ``std = max(std, 1)``. Any start at or above the root gives the same
  root, so the guess sets only the number of steps;
* ``R = floor(2**(K + a) / std)``, ``K = W + G + 16``; ``z = round(y * R / 2**(K - 16))``
  (1.0 == 2**16);
* ``out = sat(round(z * gamma / 2**(16 + gamma_frac - out_frac)) + beta)``.

Rounding is half-up unless stated. Every division is an exact integer floor division, so the
hardware's sequential divider reproduces it.
"""

from __future__ import annotations

import math

import torch

from ...hdl.requant import rshift_round
from .config import LayerNormConfig

__all__ = ["layernorm_model", "isqrt_newton", "root_guess", "row_stats", "Z_FRAC", "k_shift"]

Z_FRAC = 16
GUESS_BITS = 6  # the top bits of v the root's first guess reads
GUESS_FRAC = 4  # fraction bits of the table's entries
# ceil(sqrt(t + 1) * 2**GUESS_FRAC): above the root of every v whose top bits are t
ROOT_TABLE = [math.isqrt(((t + 1) << (2 * GUESS_FRAC)) - 1) + 1 for t in range(1 << GUESS_BITS)]
GUESS_MIN_BITS = 2 * GUESS_FRAC + GUESS_BITS - 1  # below this, the plain power of two


def k_shift(cfg: LayerNormConfig) -> int:
    return cfg.in_fmt.width + cfg.mean_frac + 16


def eps_int(cfg: LayerNormConfig) -> int:
    return round(cfg.eps * 2.0 ** (2 * (cfg.in_frac + cfg.mean_frac)))


def root_guess(v: int) -> int:
    """The Newton iteration's start for ``v > 0``: above ``sqrt(v)``.

    ``v``'s top bits ``t = v >> s`` (``s`` even, ``t`` of 5 or 6 bits) give
    ``ROOT_TABLE[t] << (s / 2 - GUESS_FRAC)`` >= ``sqrt(t + 1) * 2**(s / 2)`` > ``sqrt(v)``."""
    e = v.bit_length()
    if e < GUESS_MIN_BITS:
        return 1 << ((e + 1) // 2)
    s = (e - (GUESS_BITS - 1)) & ~1
    return ROOT_TABLE[v >> s] << (s // 2 - GUESS_FRAC)


def isqrt_newton(v: int) -> tuple[int, int]:
    """``(floor(sqrt(v)), iterations)`` by the Newton iteration the hardware runs."""
    if v == 0:
        return 0, 0
    k = root_guess(v)
    it = 0
    while True:
        it += 1
        k1 = (k + v // k) >> 1
        if k1 >= k:
            return k, it
        k = k1


def row_stats(x: list[int], cfg: LayerNormConfig) -> tuple[int, int, int]:
    """``(mean, std, R)`` of one row, as the hardware computes them."""
    n, G = len(x), cfg.mean_frac
    s = sum(x)
    mag = ((abs(s) << (G + 1)) + n) // (2 * n)
    mean = -mag if s < 0 else mag
    v = sum(((xi << G) - mean) ** 2 for xi in x)
    var = max(v // n + eps_int(cfg), 1)
    a = var_scale(var)
    std = max(isqrt_newton(var << (2 * a))[0], 1)
    return mean, std, (1 << (k_shift(cfg) + a)) // std


def var_scale(var: int) -> int:
    return max(0, (34 - var.bit_length()) >> 1)


def layernorm_model(x, gamma, beta, cfg: LayerNormConfig) -> torch.Tensor:
    """Engine output for rows ``x`` ([rows, n] or [n]) with int16 ``gamma``/``beta`` ([n])."""
    x = torch.as_tensor(x, dtype=torch.int64)
    squeeze = x.dim() == 1
    if squeeze:
        x = x[None]
    gamma = torch.as_tensor(gamma, dtype=torch.int64)
    beta = torch.as_tensor(beta, dtype=torch.int64)
    stats = [row_stats(r.tolist(), cfg) for r in x]
    mean = torch.tensor([s[0] for s in stats], dtype=torch.int64)[:, None]
    recip = torch.tensor([s[2] for s in stats], dtype=torch.int64)[:, None]
    y = (x << cfg.mean_frac) - mean
    z = rshift_round(y * recip, k_shift(cfg) - Z_FRAC)
    out = rshift_round(z * gamma, Z_FRAC + cfg.gamma_frac - cfg.out_frac) + beta
    out = cfg.out_fmt.saturate(out)
    return out[0] if squeeze else out
