"""Operand and result layouts of the systolic engine's memories (see engine.py's docstring).

Pure torch: used by the host driver to pack operands into scratchpad words and unpack results,
and by the test benches. Words are returned as numpy uint32 arrays, ``stride`` words per entry.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import SystolicConfig

__all__ = ["pack_words", "os_operands", "ws_operands", "unpack_acc", "acc_rows", "spad_words"]


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def pack_words(elems: torch.Tensor, width: int, words: int, stride: int) -> np.ndarray:
    """Pack a (n, e) integer tensor: entry i's element j in bits [width*j, width*(j+1))."""
    n, e = elems.shape
    mask = (1 << width) - 1
    v = (elems.to(torch.int64) & mask).numpy().astype(np.uint64)
    out = np.zeros((n, words * 32 // 8), dtype=np.uint8)
    bits = np.zeros((n, words * 32), dtype=np.uint8)
    for j in range(e):
        for b in range(width):
            bits[:, j * width + b] = (v[:, j] >> np.uint64(b)) & np.uint64(1)
    out = np.packbits(bits, axis=1, bitorder="little").view("<u4").reshape(n, words)
    if stride > words:
        out = np.concatenate([out, np.zeros((n, stride - words), dtype=np.uint32)], axis=1)
    return out.reshape(-1).astype(np.uint32)


def _tiles_along(x: torch.Tensor, tile: int) -> torch.Tensor:
    """Pad dim 1 of (k, n) to a multiple of ``tile``, return (n_tiles, k, tile)."""
    k, n = x.shape
    nt = _ceil(n, tile)
    padded = torch.zeros((k, nt * tile), dtype=x.dtype)
    padded[:, :n] = x
    return padded.reshape(k, nt, tile).permute(1, 0, 2)


def os_operands(a: torch.Tensor, b: torch.Tensor, cfg: SystolicConfig):
    """(left entries, top entries) as (n, elems) tensors for an OS GEMM of a (M,K) by b (K,N)."""
    left = _tiles_along(a.t(), cfg.rows).reshape(-1, cfg.rows)  # per m-tile: K words over i
    top = _tiles_along(b, cfg.cols).reshape(-1, cfg.cols)  # per n-tile: K words over j
    return left, top


def ws_operands(a: torch.Tensor, b: torch.Tensor, cfg: SystolicConfig):
    """(left entries, top entries) for a WS GEMM (for IS, call with (b.T, a.T))."""
    m, k = a.shape
    kt = _ceil(k, cfg.rows)
    padded = torch.zeros((m, kt * cfg.rows), dtype=a.dtype)
    padded[:, :k] = a
    left = padded.reshape(m, kt, cfg.rows).permute(1, 0, 2).reshape(-1, cfg.rows)
    top = _tiles_along(b, cfg.cols).reshape(-1, cfg.cols)
    return left, top


def acc_rows(m: int, n: int, cfg: SystolicConfig) -> int:
    """Accumulator rows a result of m x n occupies."""
    return _ceil(n, cfg.cols) * m


def spad_words(m: int, k: int, n: int, dataflow: str, cfg: SystolicConfig) -> tuple[int, int]:
    """(left entries, top entries) a GEMM of this shape needs."""
    if dataflow == "os":
        return _ceil(m, cfg.rows) * k, _ceil(n, cfg.cols) * k
    if dataflow == "is":
        m, n = n, m
    return _ceil(k, cfg.rows) * m, _ceil(n, cfg.cols) * k


def unpack_acc(words: np.ndarray, m: int, n: int, cfg: SystolicConfig, stride: int) -> torch.Tensor:
    """Results (m, n) from acc rows read back as 32-bit words (stride words per row)."""
    aw = _ceil(cfg.acc_width, 32)
    rows = words.reshape(-1, stride)[:, : cfg.cols * aw].astype(np.int64)
    vals = rows.reshape(-1, cfg.cols, aw)
    v = np.zeros(vals.shape[:2], dtype=np.int64)
    for k in range(aw):
        v |= (vals[:, :, k] & 0xFFFF_FFFF) << np.int64(32 * k)
    t = torch.from_numpy(v)
    # sign-extend from acc_width
    w = cfg.acc_width
    if w < 64:
        t = t & ((1 << w) - 1)
        t = t - ((t >> (w - 1)) & 1) * (1 << w)
    nt = _ceil(n, cfg.cols)
    t = t[: nt * m].reshape(nt, m, cfg.cols).permute(1, 0, 2).reshape(m, nt * cfg.cols)
    return t[:, :n]
