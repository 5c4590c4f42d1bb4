"""Golden models of the systolic engine: results (bit-exact) and cycles (exact).

* :func:`gemm` is what the hardware returns: the integer product accumulated in ``acc_width``
  bits, wrapping modulo ``2**acc_width`` (two's complement). With no overflow it equals
  ``a.long() @ b.long()`` (the semantic reference, checked in tests/test_systolic_model.py).
* :func:`cycles` is the number of cycles from accepting a GEMM instruction to its ``done``
  pulse; tests hold it equal to the RTL's count.
"""

from __future__ import annotations

import torch

from .config import SystolicConfig

__all__ = ["gemm", "cycles", "ideal_cycles", "scalesim_cycles"]


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def gemm(a: torch.Tensor, b: torch.Tensor, cfg: SystolicConfig, acc: torch.Tensor | None = None):
    """``(acc +) a @ b`` as the engine computes it (int64 tensor holding acc_width-bit values)."""
    fmt = cfg.fmt
    for name, t in (("a", a), ("b", b)):
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, not {t.dtype}")
        if t.numel() and (int(t.min()) < fmt.min or int(t.max()) > fmt.max):
            raise ValueError(f"{name} has values outside {fmt.name} ({fmt.min}..{fmt.max})")
    out = a.to(torch.int64) @ b.to(torch.int64)
    if acc is not None:
        out = out + acc.to(torch.int64)
    return cfg.acc_fmt.wrap(out)


def cycles(m: int, k: int, n: int, dataflow: str, cfg: SystolicConfig) -> int:
    """Cycles from instruction accept to done (exact for the RTL)."""
    R, C = cfg.rows, cfg.cols
    if dataflow == "is":
        m, n = n, m
    if dataflow == "os":
        folds = _ceil(m, R) * _ceil(n, C)
        # CHECK + folds of max(K, 2R-1) beats + flush + drain of the last fold
        return 1 + folds * max(k, 2 * R - 1) + 1 + (2 * R + C + 12)
    folds = _ceil(k, R) * _ceil(n, C)
    period = max(m, 2 * R - 1, 2)  # one-row arrays: the preloader needs a cycle between folds
    return 1 + R + (folds - 1) * period + m + (R + C + 13)


def ideal_cycles(m: int, k: int, n: int, cfg: SystolicConfig) -> float:
    """MACs / (rows x cols): the compute-bound lower limit."""
    return m * k * n / (cfg.rows * cfg.cols)


def scalesim_cycles(m: int, k: int, n: int, dataflow: str, cfg: SystolicConfig) -> int:
    """SCALE-Sim v3's closed-form compute cycles (shared/TOOLCHAIN.md), for comparison."""
    R, C = cfg.rows, cfg.cols
    if dataflow == "os":
        return _ceil(m, R) * _ceil(n, C) * (k + R + C - 2)
    if dataflow == "ws":
        return _ceil(k, R) * _ceil(n, C) * (2 * R + C + m - 2)
    return _ceil(k, R) * _ceil(m, C) * (2 * R + C + n - 2)
