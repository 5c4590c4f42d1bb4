"""Bit-exact golden model of the softmax engine (torch int64 ops).

Both methods produce, per element, ``e = exp(x - max)`` as an unsigned integer with 1.0 == 2**16
(``E_ONE``), a row sum ``l`` in the same units, ``R = floor(2**46 / l)`` (one division per row)
and ``out = min(round_half_up(e * R / 2**31), 65535)``: a probability with 1.0 == 2**15.

``online``: exp by base-2 range reduction. ``T = round(d * log2(e) * 2**(12 - f))`` (d = max - x in
input LSBs), ``q = T >> 12``, ``r = T & 4095``; ``2**-(r/4096)`` is the product of two 64-entry
tables (``TAB_HI[r >> 6] * TAB_LO[r & 63]``, rounded to 16 bits), shifted right by ``q`` with
rounding. Lane ``k`` keeps two running states (max ``m``, sum ``l``), one over the elements
of the row's even vector words (``k, k + 2 lanes, ...``) and one over its odd vector words (so
in hardware a state updates every other cycle): a new maximum rescales
``l <- round(l * exp(m_old - x)) + 1``; otherwise ``l <- l + exp(x - m)``. The ``2 lanes`` states
are combined with ``l = sum round(l_j * exp(m_j - M))``.

``shiftmax``: I-ViT's shift exp: ``x * log2 e ~ x + (x >> 1) - (x >> 4)``, clamp at ``-15``
(n = 15, in 2**-f units times 2**f), ``q = -x >> f``, ``r = x + q * 2**f``, ``e = (r / 2 + 2**f)
* 2**(15 - q)``, then rescaled to 1.0 == 2**16 with rounding. The sum is exact.

Masked entries (the input format's minimum) and a fully masked row: masked entries give 0; a
fully masked row gives all zeros.
"""

from __future__ import annotations

import math

import torch

from ...hdl.requant import rshift_round
from .config import SoftmaxConfig

__all__ = [
    "softmax_model",
    "exp_online",
    "exp_shift",
    "E_ONE",
    "DIV_SHIFT",
    "TAB_HI",
    "TAB_LO",
    "LOG2E_Q20",
    "tables",
    "SETS",
]

E_ONE = 1 << 16  # exp(0)
DIV_SHIFT = 46  # R = floor(2**46 / l)
OUT_SHIFT = 31  # out = round(e * R / 2**31): 1.0 == 2**15
LOG2E_Q20 = round(math.log2(math.e) * (1 << 20))
T_FRAC = 12  # fraction bits of the base-2 exponent T
TAB_BITS = 6
SETS = 4  # online running states per lane (vector words by index modulo 4)


def tables() -> tuple[list[int], list[int]]:
    hi = [round(2.0 ** (-i / 64) * E_ONE) for i in range(64)]
    lo = [round(2.0 ** (-j / 4096) * E_ONE) for j in range(64)]
    return hi, lo


TAB_HI, TAB_LO = tables()
_HI = torch.tensor(TAB_HI, dtype=torch.int64)
_LO = torch.tensor(TAB_LO, dtype=torch.int64)


def exp_online(d, in_frac: int):
    """``exp(-d * 2**-in_frac)`` with 1.0 == 2**16 for ``d >= 0`` (the online method's unit)."""
    d = torch.as_tensor(d, dtype=torch.int64)
    t = rshift_round(d * LOG2E_Q20, 20 + in_frac - T_FRAC)
    q = (t >> T_FRAC).clamp(max=31)
    r = t & ((1 << T_FRAC) - 1)
    frac = rshift_round(_HI[r >> TAB_BITS] * _LO[r & 63], 16)
    half = (torch.ones_like(q) << q) >> 1
    return (frac + half) >> q


def exp_shift(x, in_frac: int, n: int = 15):
    """I-ViT's shift exp of ``x <= 0`` (input LSBs), rescaled to 1.0 == 2**16."""
    x = torch.as_tensor(x, dtype=torch.int64)
    f = in_frac
    xl = x + (x >> 1) - (x >> 4)
    xl = xl.clamp(min=-n * (1 << f))
    q = (-xl) >> f
    r = xl + (q << f)
    e = ((r + (2 << f)) << (n - q)) >> 1  # 1.0 == 2**(f + n)
    return rshift_round(e, f + n - 16)


def _rows(x: torch.Tensor, cfg: SoftmaxConfig):
    """[R, W, L] view of the rows padded to whole vector words, with the valid mask."""
    x = torch.as_tensor(x, dtype=torch.int64)
    if x.dim() == 1:
        x = x[None]
    rows, n = x.shape
    L = cfg.lanes
    w = -(-n // L)
    pad = torch.full((rows, w * L), cfg.in_fmt.min, dtype=torch.int64)
    pad[:, :n] = x
    valid = pad != cfg.in_fmt.min
    return pad.view(rows, w, L), valid.view(rows, w, L)


def _online_stats(xw, vw, cfg):
    rows, w, L = xw.shape
    # state j = (word % SETS) * lanes + lane runs over the words of its index modulo SETS, in order
    w2 = -(-w // SETS)
    pad = w2 * SETS - w
    xw = torch.cat([xw, torch.zeros(rows, pad, L, dtype=torch.int64)], dim=1)
    vw = torch.cat([vw, torch.zeros(rows, pad, L, dtype=torch.bool)], dim=1)
    xw = xw.view(rows, w2, SETS * L)
    vw = vw.view(rows, w2, SETS * L)
    w, L = w2, SETS * L
    f = cfg.in_frac
    m = torch.zeros(rows, L, dtype=torch.int64)
    has = torch.zeros(rows, L, dtype=torch.bool)
    lsum = torch.zeros(rows, L, dtype=torch.int64)
    for k in range(w):
        x, v = xw[:, k], vw[:, k]
        new_max = v & (~has | (x > m))
        d = torch.where(new_max, x - m, m - x).clamp(min=0)
        e = exp_online(torch.where(has, d, 0), f)
        upd = torch.where(
            ~has, E_ONE, torch.where(new_max, rshift_round(lsum * e, 16) + E_ONE, lsum + e)
        )
        lsum = torch.where(v, upd, lsum)
        m = torch.where(new_max, x, m)
        has = has | v
    big = torch.where(has, m, torch.iinfo(torch.int64).min)
    mx = big.max(dim=1, keepdim=True).values
    d = torch.where(has, mx - m, 0)
    total = torch.where(has, rshift_round(lsum * exp_online(d, f), 16), 0).sum(dim=1)
    return mx[:, 0], has.any(dim=1), total


def softmax_model(x, cfg: SoftmaxConfig) -> torch.Tensor:
    """Engine output for rows ``x`` ([rows, len] or [len], int): uint16 values as int64.

    Row length and the lane count matter only to the online method's running statistics.
    """
    x = torch.as_tensor(x, dtype=torch.int64)
    squeeze = x.dim() == 1
    n = x.shape[-1]
    xw, vw = _rows(x, cfg)
    rows = xw.shape[0]
    f = cfg.in_frac
    if cfg.method == "online":
        mx, any_valid, total = _online_stats(xw, vw, cfg)
        ex = lambda d: exp_online(d, f)  # noqa: E731
    else:
        big = torch.where(vw, xw, torch.iinfo(torch.int64).min).view(rows, -1)
        mx = big.max(dim=1).values
        any_valid = vw.view(rows, -1).any(dim=1)
        ex = lambda d: exp_shift(-d, f)  # noqa: E731
    xf, vf = xw.view(rows, -1), vw.view(rows, -1)
    d = torch.where(vf, mx[:, None] - xf, 0)
    e = torch.where(vf, ex(d), 0)
    if cfg.method == "shiftmax":
        total = e.sum(dim=1)
    recip = torch.where(any_valid, (1 << DIV_SHIFT) // total.clamp(min=1), 0)
    out = rshift_round(e * recip[:, None], OUT_SHIFT).clamp(max=0xFFFF)
    out = out[:, :n]
    return out[0] if squeeze else out
