"""Host driver of the bit-serial engine: integer matmul at any precision, and quantised linear.

* :func:`matmul` ``(dev, a, w, w_bits=B)``: ``a @ w`` for integer tensors, ``a`` (M x K) with
  ``a_bits``-bit values, ``w`` (K x N) with ``w_bits``-bit values (two's complement, or odd
  bipolar-INT values). Returns torch.int32, equal to ``(a.long() @ w.long())`` mod 2**32.
* :func:`linear` ``(dev, x, qw)``: ``x @ W.T`` for float activations and weights quantised by
  :func:`gatesmith.host.quant.quantize_weights` (BitMoD or plain INT). Activations are quantised
  per row to ``a_bits``; the engine returns exact integers that the host scales by the row
  exponents and activation scales. Equal to ``x_q @ qw.dequantize().T`` (float64) up to
  rounding, with ``x_q`` the dequantised activations.

Operands that do not fit the engine's memories are split: K in multiples of the group size,
weight rows in tiles of ``pes``, activation rows to fit; partial results add up on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError
from ..generators.bitserial.config import BitserialConfig
from ..generators.bitserial.engine import window_layout
from ..generators.bitserial.model import (
    Instr,
    act_image,
    group_image,
    result_from_image,
    weight_image,
)
from .quant import (
    ENCODINGS,
    QuantizedWeight,
    encode_int,
    int_range,
    quantize_activations,
    quantize_weights,
)
from .ranges import check_policy, fit_bounds

__all__ = ["matmul", "linear", "quantize", "Plan", "plan"]

_MAX_M, _MAX_N, _MAX_K = (1 << 14) - 1, (1 << 14) - 1, (1 << 16) - 1


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def engine_config(dev) -> BitserialConfig:
    cfg = dev.config.engine("bitserial")
    if cfg is None:
        have = ", ".join(type(e).kind for e in dev.config.engines)
        raise UsageError(f"this accelerator has no bitserial engine (it has: {have})")
    return cfg


@dataclass(frozen=True)
class Plan:
    """Blocks per instruction: ``kb`` K elements (a multiple of the group size unless all of
    K), ``nb`` weight rows (a multiple of ``pes`` unless all of N), ``mb`` activation rows."""

    kb: int
    nb: int
    mb: int


def plan(cfg: BitserialConfig, m: int, n: int, k: int) -> Plan:
    """The largest blocks whose operands and results fit the engine's memories."""
    per_k = min(cfg.w_depth, cfg.a_depth) * cfg.lanes  # one tile, one row
    kb = k if k <= per_k else per_k // cfg.group_size * cfg.group_size
    kc, ng = _cdiv(kb, cfg.lanes), _cdiv(kb, cfg.group_size)
    tiles = max(1, min(cfg.w_depth // kc, cfg.g_depth // ng, cfg.r_depth, _MAX_N // cfg.pes))
    nb = min(n, tiles * cfg.pes)
    nt = _cdiv(nb, cfg.pes)
    mb = max(1, min(m, cfg.a_depth // kc, cfg.r_depth // nt, _MAX_M))
    return Plan(kb=kb, nb=nb, mb=mb)


def _window(dev, cfg):
    base = dev.window_base("bitserial")
    return base, {w.name: w for w in window_layout(cfg)}


def _run(dev, cfg, a_codes, w_codes, dts, scales, **fields) -> torch.Tensor:
    """Exact int64 results [M, N] (each block wrapped to acc_width), summed over K blocks."""
    m, k = a_codes.shape
    n = w_codes.shape[0]
    base, win = _window(dev, cfg)
    p = plan(cfg, m, n, k)
    out = torch.zeros(m, n, dtype=torch.int64)
    uses_g = fields.get("mixed") or fields.get("scaled")
    blocks = []  # (loads [(region, image)], instr, m0, m1, n0, n1)
    for k0 in range(0, k, p.kb):
        k1 = min(k, k0 + p.kb)
        g0, g1 = k0 // cfg.group_size, _cdiv(k1, cfg.group_size)
        for n0 in range(0, n, p.nb):
            n1 = min(n, n0 + p.nb)
            loads = [("weights", weight_image(cfg, w_codes[n0:n1, k0:k1].numpy()))]
            if uses_g:
                loads.append(("groups", group_image(cfg, dts[n0:n1, g0:g1].numpy(),
                                                    scales[n0:n1, g0:g1].numpy())))  # fmt: skip
            for m0 in range(0, m, p.mb):
                m1 = min(m, m0 + p.mb)
                loads.append(("acts", act_image(cfg, a_codes[m0:m1, k0:k1].numpy())))
                blocks.append((loads, Instr(m=m1 - m0, n=n1 - n0, k=k1 - k0, **fields),
                               m0, m1, n0, n1))  # fmt: skip
                loads = []
    r = win["results"]
    if hasattr(dev, "program"):
        results = _run_program(dev, blocks, win)
    else:
        results = []
        for loads, ins, m0, m1, n0, n1 in blocks:
            for name, img in loads:
                dev.write(base + 4 * win[name].offset, img.reshape(-1))
            dev.execute([ins.words()])
            dev.wait()
            entries = _cdiv(n1 - n0, cfg.pes) * (m1 - m0)
            results.append(dev.read(base + 4 * r.offset, entries * r.stride))
    for (_, _, m0, m1, n0, n1), words in zip(blocks, results, strict=True):
        entries = _cdiv(n1 - n0, cfg.pes) * (m1 - m0)
        words = np.asarray(words, dtype=np.uint32).reshape(entries, r.stride)
        out[m0:m1, n0:n1] += result_from_image(cfg, words, m1 - m0, n1 - n0)
    return out


def _run_program(dev, blocks, win) -> list:
    """All blocks as one program: each block's operand images LOADed from device memory, its
    MATMUL, its results STOREd. Block ``b + 1``'s loads wait for block ``b``'s MATMUL (they
    overwrite its operands) and overlap its store; a MATMUL waits for the previous store."""
    from .program import Deps

    cfg = engine_config(dev)
    r = win["results"]
    images = [img.reshape(-1).astype(np.uint32) for loads, *_ in blocks for _, img in loads]
    sizes = [_cdiv(bl[5] - bl[4], cfg.pes) * (bl[3] - bl[2]) * r.stride for bl in blocks]
    staged = np.concatenate(images) if images else np.zeros(1, dtype=np.uint32)
    with dev.alloc((staged.size,), torch.int32, label="bitserial operands") as bin_, \
            dev.alloc((max(1, sum(sizes)),), torch.int32, label="bitserial results") as bout:  # fmt: skip
        bin_.write_raw(staged)
        prog = dev.program()
        off, outs = 0, []
        for b, (loads, ins, *_) in enumerate(blocks):
            more = b + 1 < len(blocks)
            for i, (name, img) in enumerate(loads):
                prog.load("bitserial", win_addr=win[name].offset, buf=bin_, offset=4 * off,
                          row_words=img.size, deps=Deps(pop_next=b > 0 and i == 0,
                                                        push_next=i == len(loads) - 1))  # fmt: skip
                off += img.size
            prog.instr(ins.words(), deps=Deps(pop_prev=bool(loads), pop_next=b > 0,
                                              push_prev=more, push_next=True),
                       what=f"MATMUL block {b}")  # fmt: skip
            o = sum(sizes[:b])
            prog.store("bitserial", win_addr=r.offset, buf=bout, offset=4 * o, row_words=sizes[b],
                       deps=Deps(pop_prev=True, push_prev=True))  # fmt: skip
            outs.append((o, sizes[b]))
        prog.nop(deps=Deps(pop_next=True))  # the last store's token
        prog.run()
        words = bout.read_raw().view("<u4")
        return [words[o : o + n].copy() for o, n in outs]


def _check_int2d(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise UsageError(f"{name} must be a torch tensor, not {type(t).__name__}")
    if t.dim() != 2:
        raise UsageError(f"{name} must be 2-D, not {t.dim()}-D {tuple(t.shape)}")
    return t


def _check_common(cfg, m, n, k, w_bits, a_bits, w_encoding, a_encoding):
    for arg, bits, top in (("w_bits", w_bits, cfg.w_max_bits), ("a_bits", a_bits, cfg.a_max_bits)):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= top:
            raise UsageError(f"{arg} must be an integer in 1..{top} on this engine, not {bits!r}")
    for arg, enc in (("w_encoding", w_encoding), ("a_encoding", a_encoding)):
        if enc not in ENCODINGS:
            raise UsageError(f"{arg} must be 'twos' or 'bipolar', not {enc!r}")
        if enc not in cfg.encodings:
            raise UsageError(f"{arg} {enc!r} is not built into this engine "
                             f"(built: {', '.join(cfg.encodings)})")  # fmt: skip
    for dim, v, top in (("M", m, _MAX_M), ("N", n, _MAX_N), ("K", k, _MAX_K)):
        if v == 0 or v > top:
            raise UsageError(f"{dim} must be in 1..{top}, not {v}")


def matmul(dev, a: torch.Tensor, w: torch.Tensor, *, w_bits: int, a_bits: int = 8,
           w_encoding: str = "twos", a_encoding: str = "twos",
           range: str = "error") -> torch.Tensor:  # fmt: skip
    """``a @ w`` on the bit-serial engine at ``w_bits``-bit weights (see the module doc).
    ``range``: "error" or "saturate" for values outside the ``a_bits`` / ``w_bits`` integers
    (``host/ranges.py``; a bipolar value saturates to the odd end of its range)."""
    policy = check_policy(range)
    cfg = engine_config(dev)
    a, w = _check_int2d("a", a), _check_int2d("w", w)
    if a.shape[1] != w.shape[0]:
        raise UsageError(
            f"a and w do not chain: a is {a.shape[0]}x{a.shape[1]}, w is "
            f"{w.shape[0]}x{w.shape[1]} (a's columns must equal w's rows)"
        )
    m, k, n = a.shape[0], a.shape[1], w.shape[1]
    _check_common(cfg, m, n, k, w_bits, a_bits, w_encoding, a_encoding)
    a = _fit(a, a_bits, a_encoding, policy, "a")
    w = _fit(w, w_bits, w_encoding, policy, "w")
    ac = encode_int(a, a_bits, a_encoding, name="a")
    wc = encode_int(w, w_bits, w_encoding, name="w").T.contiguous()
    r = _run(dev, cfg, ac, wc, None, None, w_bits=w_bits, a_bits=a_bits, w_enc=w_encoding,
             a_enc=a_encoding)  # fmt: skip
    return r.to(torch.int32)


def _fit(t: torch.Tensor, bits: int, enc: str, policy: str, name: str) -> torch.Tensor:
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        return t  # encode_int names the dtype
    lo, hi = int_range(bits, enc)
    return fit_bounds(t, lo, hi, f"{bits}-bit {enc}", policy, op="matmul", name=name)


def quantize(dev_or_cfg, w: torch.Tensor, *, bits: int = 4, types: str = "bitmod",
             encoding: str = "twos") -> QuantizedWeight:  # fmt: skip
    """Quantise float weights [N, K] (``nn.Linear`` layout) for this engine's group size."""
    cfg = dev_or_cfg if isinstance(dev_or_cfg, BitserialConfig) else engine_config(dev_or_cfg)
    return quantize_weights(w, bits=bits, group_size=cfg.group_size, types=types,
                            encoding=encoding)


def linear(dev, x: torch.Tensor, qw: QuantizedWeight, *, a_bits: int = 8) -> torch.Tensor:
    """``x @ W.T`` for float ``x`` [M, K] and quantised ``qw`` [N, K]; float32 [M, N]."""
    cfg = engine_config(dev)
    if not isinstance(qw, QuantizedWeight):
        raise UsageError(f"qw must be a QuantizedWeight (from quantize), not {type(qw).__name__}")
    x = _check_int2d("x", x)
    if not x.is_floating_point():
        raise UsageError(f"x must be a float tensor, not {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        # each row is scaled by its absmax: one infinity would zero the rest of its row
        raise UsageError("x must be finite (no inf or NaN): its rows are scaled by their absmax")
    if qw.group_size != cfg.group_size:
        raise UsageError(f"qw was quantised with group_size {qw.group_size}, but this engine's "
                         f"group_size is {cfg.group_size}")  # fmt: skip
    n, k = qw.shape
    if x.shape[1] != k:
        raise UsageError(f"x has {x.shape[1]} columns but the weights have {k} (in features)")
    _check_common(cfg, x.shape[0], n, k, qw.bits, a_bits, qw.encoding, "twos")
    if qw.mixed and (not cfg.bitmod or qw.bits not in (3, 4)):
        raise UsageError("BitMoD datatypes need an engine built with bitmod and 3- or 4-bit "
                         f"weights, not bits={qw.bits}")  # fmt: skip
    xq, sx = quantize_activations(x, a_bits)
    ac = encode_int(xq, a_bits, "twos", name="x")
    r = _run(dev, cfg, ac, qw.codes, qw.dtypes, qw.scale_q, w_bits=qw.bits, a_bits=a_bits,
             w_enc=qw.encoding, mixed=qw.mixed, scaled=True)  # fmt: skip
    y = r.double() * torch.pow(2.0, qw.row_exp.double())[None, :] * sx[:, None]
    return y.float()
