"""Bit-exact golden model of the PIM engine, in torch integer ops.

The engine's state is its memories: ``weights[bank, row, i]`` (operands of each bank's weight
array), ``vector[i]`` (the input vector buffer, the same in every bank), ``xoff[bank]`` (vector
segment offsets for ``col_mode``) and ``results[bank, slot]``. :func:`gemv` applies one GEMV
instruction to that state exactly as the RTL does: products of operands summed in any order and
wrapped modulo ``2**acc_width`` (wrapping commutes with addition, so the order is irrelevant).

Semantic reference: :func:`reference_gemv` (``w @ x`` in int64, wrapped to the accumulator). With
``acc_width >= 2 * width + log2(k)`` nothing wraps and the engine equals ``torch.matmul`` on the
integers exactly (error bound 0).
"""

from __future__ import annotations

import numpy as np
import torch

from ..engine import ErrorCode
from .isa import GemvInstr, check_instr

__all__ = [
    "PimState",
    "gemv",
    "reference_gemv",
    "pack_operands",
    "window_words_per_entry",
    "unpack_results",
]


class PimState:
    """The engine's memories, as int64 tensors (see the module docstring)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.weights = torch.zeros(cfg.banks, cfg.rows_per_bank, cfg.row_size, dtype=torch.int64)
        self.vector = torch.zeros(cfg.vector_depth, dtype=torch.int64)
        self.xoff = [0] * cfg.banks
        self.results = torch.zeros(cfg.banks, cfg.result_depth, dtype=torch.int64)


def gemv(state: PimState, instr: GemvInstr) -> ErrorCode:
    """Run ``instr`` on ``state`` (results updated in place); returns the engine's error code."""
    cfg = state.cfg
    err = check_instr(cfg, instr, state.xoff)
    if err != ErrorCode.NONE:
        return err
    b_, p_, s_, r_ = cfg.banks, instr.rounds, instr.segments, cfg.row_size
    rows = state.weights[:, instr.w_row : instr.w_row + p_ * s_, :].reshape(b_, p_, s_, r_)
    mask = torch.ones(s_, r_, dtype=torch.int64)
    mask[s_ - 1, instr.cols_last * cfg.lanes * cfg.burst :] = 0
    segs = state.vector.reshape(-1, r_)
    for b in range(b_):
        off = instr.x_seg + (state.xoff[b] if instr.col_mode else 0)
        xv = segs[off : off + s_] * mask  # [S, R]
        dots = (rows[b] * xv[None]).sum(dim=(1, 2))  # [P]
        state.results[b, instr.y_base : instr.y_base + p_] = cfg.acc_fmt.wrap(dots)
    return ErrorCode.NONE


def reference_gemv(w: torch.Tensor, x: torch.Tensor, acc_width: int = 32) -> torch.Tensor:
    """``w @ x`` for integer ``w [n, k]`` and ``x [k]`` in int64, wrapped to ``acc_width`` bits."""
    y = w.to(torch.int64) @ x.to(torch.int64)
    mask = (1 << acc_width) - 1
    y = y & mask if acc_width < 64 else y
    if acc_width < 64:
        y = y - ((y >> (acc_width - 1)) & 1) * (1 << acc_width)
    return y


def window_words_per_entry(bits: int) -> int:
    """32-bit window words one memory entry of ``bits`` occupies (its stride)."""
    return max(1, -(-bits // 32))


def pack_operands(values, cfg) -> np.ndarray:
    """Pack operands (last axis a multiple of ``lanes``) into the 32-bit host window words.

    Memory words hold ``lanes`` operands, lane 0 in the low bits; a word wider than 32 bits spans
    several window words, little-endian. Returns a flat ``uint32`` array.
    """
    w = cfg.fmt.width
    v = np.asarray(values, dtype=np.int64).reshape(-1, cfg.lanes) & ((1 << w) - 1)
    v = v.astype(np.uint64)
    if cfg.word_bits <= 32:
        shifts = np.arange(cfg.lanes, dtype=np.uint64) * np.uint64(w)
        return np.bitwise_or.reduce(v << shifts, axis=1).astype(np.uint32)
    per = 32 // w  # operands per 32-bit window word
    v = v.reshape(-1, per)
    shifts = np.arange(per, dtype=np.uint64) * np.uint64(w)
    return np.bitwise_or.reduce(v << shifts, axis=1).astype(np.uint32)


def unpack_results(words: np.ndarray, acc_width: int) -> torch.Tensor:
    """Window words of result entries -> signed int64 tensor (two's complement of acc_width)."""
    stride = window_words_per_entry(acc_width)
    words = np.asarray(words, dtype=np.uint64).reshape(-1, stride)
    val = np.zeros(words.shape[0], dtype=np.uint64)
    for i in range(stride):
        val |= words[:, i] << np.uint64(32 * i)
    t = torch.from_numpy(val.view(np.int64).copy())
    if acc_width < 64:
        mask = (1 << acc_width) - 1
        t = t & mask
        t = t - ((t >> (acc_width - 1)) & 1) * (1 << acc_width)
    return t
