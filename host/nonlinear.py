"""Host API of the nonlinear engines: softmax, GELU and LayerNorm on an accelerator.

Layout in an engine's window (``generators/<engine>/engine.py``'s ``windows()``): rows are packed
into vector words of ``lanes`` elements (element ``j`` of a row in word ``j // lanes``, lane
``j % lanes``; the row's last word padded), each vector word little-endian over ``stride`` 32-bit
host words. Row ``r`` of an instruction starts at word ``src + r * ceil(n / lanes)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pack_rows", "unpack_rows"]


def pack_rows(x, *, lanes: int, width: int, stride: int) -> np.ndarray:
    """Integer rows ``[rows, n]`` -> the uint32 host words of their vector words."""
    x = np.asarray(x, dtype=np.int64)
    rows, n = x.shape
    wpr = -(-n // lanes)
    padded = np.zeros((rows, wpr * lanes), dtype=np.uint64)
    padded[:, :n] = x.astype(np.uint64) & np.uint64((1 << width) - 1)
    elems = padded.reshape(rows * wpr, lanes)
    per_word = 32 // width
    if lanes * width <= 32:
        shifts = (np.arange(lanes, dtype=np.uint64) * np.uint64(width))[None]
        return (elems << shifts).sum(axis=1).astype(np.uint32)
    # lanes * width > 32: each 32-bit word holds per_word elements
    out = np.zeros((rows * wpr, stride), dtype=np.uint64)
    for lane in range(lanes):
        w, k = divmod(lane, per_word)
        out[:, w] |= elems[:, lane] << np.uint64(k * width)
    return out.astype(np.uint32).reshape(-1)


def unpack_rows(words, *, rows: int, n: int, lanes: int, width: int, stride: int, signed: bool):
    """Inverse of :func:`pack_rows`: host words -> int64 rows ``[rows, n]``."""
    words = np.asarray(words, dtype=np.uint64)
    wpr = -(-n // lanes)
    mask = np.uint64((1 << width) - 1)
    if lanes * width <= 32:
        vec = words.reshape(rows * wpr, 1)
        elems = np.stack(
            [(vec[:, 0] >> np.uint64(i * width)) & mask for i in range(lanes)], axis=1
        )
    else:
        vec = words.reshape(rows * wpr, stride)
        per_word = 32 // width
        elems = np.stack(
            [
                (vec[:, lane // per_word] >> np.uint64((lane % per_word) * width)) & mask
                for lane in range(lanes)
            ],
            axis=1,
        )
    out = elems.astype(np.int64).reshape(rows, wpr * lanes)[:, :n]
    if signed:
        out = np.where(out >= 1 << (width - 1), out - (1 << width), out)
    return out
