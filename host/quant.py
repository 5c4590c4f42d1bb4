"""Weight quantisation for the bit-serial engine: BitMoD mixed datatypes and bipolar-INT.

* Integer encodings: :func:`encode_int` / :func:`decode_int` for two's complement and bipolar-INT
  (each bit means +/-1: value = sum_i (2 b_i - 1) 2^i = 2u - (2^b - 1)); :func:`int_to_bipolar`
  maps a signed ``b``-bit integer x losslessly to the bipolar value 2x + 1 (its code is
  x + 2^(b-1)).
* :func:`quantize_weights` (BitMoD, HPCA 2025): every group of ``group_size`` weights along K is
  quantised with each candidate datatype (INT-b, and the FP3/FP4 grids whose negative-zero code
  carries an extra-resolution or extra-asymmetry value) with an absmax scale, and keeps the one
  with the least squared error. Scales become 16-bit integers with a power-of-two exponent per
  row, exactly what the engine's dequantisation unit multiplies by.
* :func:`pack_weights` lays codes, datatype ids and scales out as the engine reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError
from ..generators.bitserial.config import SCALE_BITS, BitserialConfig
from ..generators.bitserial.model import (
    DATATYPES,
    DT_INT,
    datatype_grid,
    decode_int,
    decode_weights,
    group_image,
    weight_image,
)

__all__ = [
    "encode_int",
    "decode_int",
    "int_to_bipolar",
    "bipolar_to_int",
    "QuantizedWeight",
    "quantize_weights",
    "quantize_activations",
    "pack_weights",
    "candidate_types",
]

ENCODINGS = ("twos", "bipolar")


def _check_bits(name: str, bits) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise UsageError(f"{name} must be an integer in 1..8, not {bits!r}")


def _check_enc(name: str, enc) -> None:
    if enc not in ENCODINGS:
        raise UsageError(f"{name} must be 'twos' or 'bipolar', not {enc!r}")


def int_range(bits: int, enc: str) -> tuple[int, int]:
    """Smallest and largest value of a ``bits``-bit integer in ``enc``."""
    if enc == "bipolar":
        return -((1 << bits) - 1), (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def encode_int(x: torch.Tensor, bits: int, enc: str = "twos", *, name: str = "x") -> torch.Tensor:
    """Integer values -> ``bits``-bit codes (int64). Bipolar values must be odd."""
    _check_bits("bits", bits)
    _check_enc("encoding", enc)
    x = torch.as_tensor(x)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise UsageError(f"{name} must be an integer tensor, not {x.dtype}")
    x = x.to(torch.int64)
    lo, hi = int_range(bits, enc)
    if x.numel() and (int(x.min()) < lo or int(x.max()) > hi):
        raise UsageError(
            f"{name} must hold {bits}-bit {enc} integers in {lo}..{hi}, "
            f"not values in {int(x.min())}..{int(x.max())}"
        )
    if enc == "bipolar":
        if x.numel() and bool(((x & 1) == 0).any()):
            raise UsageError(f"{name} must hold odd integers for the bipolar encoding")
        return (x + (1 << bits) - 1) >> 1
    return x & ((1 << bits) - 1)


def int_to_bipolar(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed ``bits``-bit integers -> bipolar codes of the values 2x + 1 (lossless)."""
    _check_bits("bits", bits)
    return encode_int(2 * torch.as_tensor(x).to(torch.int64) + 1, bits, "bipolar")


def bipolar_to_int(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`int_to_bipolar`."""
    return (decode_int(codes, bits, "bipolar") - 1) >> 1


def candidate_types(bits: int, types: str = "bitmod") -> list[int]:
    """Datatype ids tried per group: INT-b alone (``int``) or with BitMoD's FP grids."""
    if types == "int":
        return [DT_INT]
    if types != "bitmod":
        raise UsageError(f"types must be 'bitmod' or 'int', not {types!r}")
    if bits not in (3, 4):
        raise UsageError(f"bits must be 3 or 4 for BitMoD datatypes, not {bits!r}")
    return [DT_INT] + [d for d, spec in DATATYPES.items() if spec[1] == bits]


@dataclass(frozen=True)
class QuantizedWeight:
    """Codes [N, K], datatype ids and 16-bit scales [N, NG], per-row exponent [N].

    The weight the engine multiplies by is ``value(code, dtype) * scale_q * 2**row_exp``.
    """

    codes: torch.Tensor
    dtypes: torch.Tensor
    scale_q: torch.Tensor
    row_exp: torch.Tensor
    bits: int
    group_size: int
    encoding: str
    mixed: bool

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def values(self) -> torch.Tensor:
        """Integer grid values [N, K] (int64)."""
        gid = torch.arange(self.codes.shape[1]) // self.group_size
        return decode_weights(self.codes, self.dtypes[:, gid], self.bits, self.encoding,
                              self.mixed)

    def scales(self) -> torch.Tensor:
        """Float64 group scales [N, NG]."""
        return self.scale_q.double() * torch.pow(2.0, self.row_exp.double())[:, None]

    def dequantize(self) -> torch.Tensor:
        gid = torch.arange(self.codes.shape[1]) // self.group_size
        return self.values().double() * self.scales()[:, gid]


def _grid(dt: int, bits: int, enc: str):
    """(sorted values float64, codes in that order) of datatype ``dt``."""
    g = datatype_grid(dt, bits, enc)
    order = torch.argsort(g)
    return g[order].double(), order.to(torch.int64)


def _nearest(y: torch.Tensor, gv: torch.Tensor) -> torch.Tensor:
    """Index of the nearest value of sorted ``gv`` for each element of ``y`` (ties go up)."""
    mids = (gv[1:] + gv[:-1]) / 2
    return torch.bucketize(y, mids, right=True)


def _absmax_scale(x: torch.Tensor, gv: torch.Tensor) -> torch.Tensor:
    """Per group: the smallest scale that keeps both extremes of x inside the grid."""
    xmax = x.amax(-1).clamp(min=0)
    xmin = x.amin(-1).clamp(max=0)
    s = torch.zeros_like(xmax)
    if gv[-1] > 0:
        s = torch.maximum(s, xmax / gv[-1])
    if gv[0] < 0:
        s = torch.maximum(s, xmin / gv[0])
    return torch.where(s > 0, s, torch.ones_like(s))


def quantize_weights(
    w: torch.Tensor,
    *,
    bits: int = 4,
    group_size: int = 128,
    types: str = "bitmod",
    encoding: str = "twos",
) -> QuantizedWeight:
    """Quantise float weights [N, K] per group of ``group_size`` along K (see module doc)."""
    w = torch.as_tensor(w)
    if w.dim() != 2 or not w.is_floating_point():
        raise UsageError(f"w must be a 2-D float tensor, not {tuple(w.shape)} {w.dtype}")
    _check_bits("bits", bits)
    _check_enc("encoding", encoding)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise UsageError(f"group_size must be a positive integer, not {group_size!r}")
    cands = candidate_types(bits, types)
    n, k = w.shape
    ng = -(-k // group_size)
    x = torch.zeros(n, ng * group_size, dtype=torch.float64)
    x[:, :k] = w.double()
    mask = torch.zeros_like(x)
    mask[:, :k] = 1
    x, mask = x.view(n, ng, group_size), mask.view(n, ng, group_size)

    grids = [_grid(dt, bits, encoding) for dt in cands]
    errs, scales = [], []
    for gv, _ in grids:
        s = _absmax_scale(x, gv)
        q = gv[_nearest(x / s[..., None], gv)] * s[..., None]
        errs.append((((x - q) ** 2) * mask).sum(-1))
        scales.append(s)
    best = torch.stack(errs).argmin(0)  # [N, NG] index into cands
    s = torch.stack(scales).gather(0, best[None])[0]

    # 16-bit scale mantissas with one exponent per row: the largest lands in [2^15, 2^16).
    row_exp = torch.floor(torch.log2(s.amax(-1))).to(torch.int64) - (SCALE_BITS - 1)
    scale_q = torch.round(s / torch.pow(2.0, row_exp.double())[:, None]).clamp(0, 65535)
    s_act = scale_q * torch.pow(2.0, row_exp.double())[:, None]
    s_div = torch.where(s_act > 0, s_act, torch.ones_like(s_act))

    codes = torch.zeros(n, ng, group_size, dtype=torch.int64)
    for i, (gv, order) in enumerate(grids):
        idx = _nearest(x / s_div[..., None], gv)
        codes = torch.where((best == i)[..., None], order[idx], codes)
    dtypes = torch.tensor(cands, dtype=torch.int64)[best]
    return QuantizedWeight(
        codes=codes.view(n, -1)[:, :k].contiguous(),
        dtypes=dtypes,
        scale_q=scale_q.to(torch.int64),
        row_exp=row_exp,
        bits=bits,
        group_size=group_size,
        encoding=encoding,
        mixed=types == "bitmod",
    )


def quantize_activations(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric absmax quantisation: ``(x_int [M, K] int64, scale [M] float64)``."""
    _check_bits("a_bits", bits)
    x = torch.as_tensor(x).double()
    qmax = max((1 << (bits - 1)) - 1, 1)
    s = x.abs().amax(-1) / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))
    lo, hi = int_range(bits, "twos")
    return torch.round(x / s[:, None]).clamp(lo, hi).to(torch.int64), s


def pack_weights(cfg: BitserialConfig, qw: QuantizedWeight) -> tuple[np.ndarray, np.ndarray]:
    """``(weight memory words, group memory words)`` for ``qw`` on an engine with ``cfg``."""
    if qw.group_size != cfg.group_size:
        raise UsageError(
            f"the weights were quantised with group_size {qw.group_size}, "
            f"but the engine's group_size is {cfg.group_size}"
        )
    return weight_image(cfg, qw.codes.numpy()), group_image(cfg, qw.dtypes.numpy(),
                                                            qw.scale_q.numpy())
