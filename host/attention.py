"""Fused attention on chip: ``softmax(Q K^T * scale) V`` for many heads in one program.

Per head, the program LOADs ``Q`` (OS left panel), ``K^T`` (OS top) and ``V`` (WS top) from
device memory, runs ``S = Q K^T`` on the systolic array, COPYs the accumulators through the
requantiser into the softmax engine's rows (the scores never reach device memory), runs the
softmax, COPYs the probabilities into the WS left scratchpad as ``P`` (Q7: ``p * 128``), runs
``P V`` and STOREs only the context. Heads alternate between two halves of every on-chip
region, so head ``h + 1``'s loads overlap head ``h``'s compute and head ``h``'s store overlaps
head ``h + 1``'s; tokens order the rest.

Quantisation: ``Q`` and ``K`` per tensor (per head) to int8, so the scores have one scale and
one dyadic requantisation per head; ``V`` per column. :func:`attention_golden` is the bit-exact
integer model of what the device returns; :func:`attention` dequantises it.

Limits: one tile per head (``seq`` up to the softmax engine's ``max_len``, ``head_dim`` to fit
the scratchpad and the accumulator); the only mask is the causal one (``causal=True``, applied by
the COPY). Queries and keys may differ in number (``qq [H, Sq, D]``, ``kq``, ``vq [H, Sk, D]``):
a decode step is ``Sq = 1`` over a cache of ``Sk`` keys, its prefix mask the causal one with
``diag`` = the position (``host.compiler.decode_attention``). The COPY saturates into the softmax format's full range, so a score that saturates
at its minimum reads as masked, in the model as on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..hdl.formats import IntFormat
from ..hdl.nonlinear_common import pack_row_instr
from ..hdl.requant import requant
from .chain import acc_tile, requant_params, rows, spad_rows, windows
from .program import Deps
from .systolic import Packed, _systolic_config, gemm_instr, upload

__all__ = ["attention", "attention_int", "attention_golden", "quantise_heads", "AttentionQuant",
           "attention_int_golden", "fits", "P_SHIFT"]  # fmt: skip

_SOFTMAX = 0x20
P_SHIFT = 8  # probabilities (1.0 = 2**15) -> int8 P with 1.0 = 2**7


@dataclass
class AttentionQuant:
    qq: torch.Tensor  # [H, S, D] int8
    kq: torch.Tensor  # [H, S, D] int8
    vq: torch.Tensor  # [H, S, D] int8
    mult: list  # per head: the scores' requantisation into the softmax input format
    shift: list
    v_scale: torch.Tensor  # [H, D]: dequantisation of V per column


def _per_tensor(x):
    s = x.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12) / 127
    return (x / s).round().clamp(-127, 127).to(torch.int8), s.reshape(-1)


def quantise_heads(q, k, v, scale: float, in_frac: int) -> AttentionQuant:
    """int8 Q, K per head, V per head and column; the dyadic score requantisation per head."""
    qq, sq = _per_tensor(q)
    kq, sk = _per_tensor(k)
    sv = v.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127  # [H, 1, D]
    vq = (v / sv).round().clamp(-127, 127).to(torch.int8)
    mult, shift = [], []
    for h in range(q.shape[0]):
        m, s = requant_params(float(sq[h] * sk[h]) * scale * 2.0**in_frac)
        mult.append(m)
        shift.append(s)
    return AttentionQuant(qq, kq, vq, mult, shift, sv.reshape(q.shape[0], -1))


def attention_golden(aq: AttentionQuant, sm_cfg) -> torch.Tensor:
    """The device's int32 ``P V`` per head ([H, S, D], int64), bit for bit."""
    return attention_int_golden(aq.qq, aq.kq, aq.vq, aq.mult, aq.shift, sm_cfg)


def attention_int_golden(qq, kq, vq, mult, shift, sm_cfg, *, causal: bool = False,
                         diag: int = 0) -> torch.Tensor:  # fmt: skip
    """The bit-exact model of :func:`attention_int` (int8 ``qq``, ``kq``, ``vq`` [H, S, D])."""
    from ..generators.softmax.model import softmax_model

    H = qq.shape[0]
    mult = list(mult) if isinstance(mult, (list, tuple)) else [int(mult)] * H
    shift = list(shift) if isinstance(shift, (list, tuple)) else [int(shift)] * H
    out = []
    for h in range(H):
        acc = qq[h].long() @ kq[h].long().t()
        x = requant(acc, mult[h], shift[h], sm_cfg.in_fmt)
        if causal:
            sq, sk = x.shape
            mask = torch.ones(sq, sk, dtype=torch.bool).triu(diag + 1)
            x = x.masked_fill(mask, sm_cfg.in_fmt.min)
        p = requant(softmax_model(x, sm_cfg), 1, P_SHIFT, IntFormat(8))
        out.append(p @ vq[h].long())
    return torch.stack(out)


def _check_fits(dev, H, S, D, kv=None):
    cfg = _systolic_config(dev)
    why = fits(dev.config, S, D, kv)
    if why:
        raise UsageError(why)
    return cfg, dev.config.engine("softmax")


def _needs(cfg, S, D, kv=None) -> dict:
    R, C = cfg.rows, cfg.cols
    K = S if kv is None else kv
    return {"Q (left)": -(-S // R) * D, "P (left)": -(-S // R) * K,
            "K^T (top)": -(-K // C) * D, "V (top)": -(-D // C) * K}  # fmt: skip


def _acc_plan(cfg, S: int, D: int, kv=None):
    """(GEMM 1's accumulator rows, [GEMM 2's bases], or None): P V double-buffered across
    heads when the accumulator holds two results beside the scores, else single."""
    K = S if kv is None else kv
    a1, a2 = -(-K // cfg.cols) * S, -(-D // cfg.cols) * S
    if a1 + 2 * a2 <= cfg.acc_depth:
        return a1, [a1, a1 + a2]
    if a1 + a2 <= cfg.acc_depth:
        return a1, [a1]
    return None


def fits(acfg, S: int, D: int, kv: int | None = None) -> str:
    """'' when ``seq`` x ``head_dim`` attention (over ``kv`` keys, default ``seq``) fits
    ``acfg`` as one program per head, else why."""
    K = S if kv is None else kv
    cfg, sm = acfg.engine("systolic"), acfg.engine("softmax")
    if cfg is None:
        return "fused attention needs a systolic engine; this accelerator has none"
    if not acfg.copy_unit:
        return "fused attention needs the on-chip COPY unit; this accelerator has none"
    if sm is None:
        return "fused attention needs a softmax engine; this accelerator has none"
    if "ws" not in cfg.dataflows or "os" not in cfg.dataflows:
        return "fused attention needs the os and ws dataflows built in"
    if cfg.acc_width > 32:
        return "fused attention needs 32-bit accumulators"
    for what, entries in _needs(cfg, S, D, K).items():
        if entries > cfg.spad_depth // 4:
            return (f"seq {S} x head_dim {D}: {what} needs {entries} scratchpad entries, "
                    f"a quarter of the scratchpad is {cfg.spad_depth // 4}")  # fmt: skip
    if _acc_plan(cfg, S, D, K) is None:
        return f"seq {S} x head_dim {D} does not fit the accumulator ({cfg.acc_depth} rows)"
    if K > sm.max_len or -(-K // sm.lanes) * S > sm.depth:
        return f"seq {K} does not fit the softmax engine (max_len {sm.max_len}, depth {sm.depth})"
    return ""


def attention_int(dev, qq, kq, vq, mult, shift, *, causal: bool = False, diag: int = 0):
    """The device's integer ``P V`` ([H, S, D] int64) for int8 ``qq``, ``kq``, ``vq`` [H, S, D]
    and the scores' requantisation ``mult`` / ``shift`` (one per head, or one for all): one
    program for all heads (see the module docstring). ``causal``: query ``r`` sees keys
    ``0..r + diag`` only (the mask is applied by the COPY into the softmax engine).
    :func:`attention_int_golden` models it."""
    H, S, D = qq.shape
    K = kq.shape[1]  # keys (S but for a decode step)
    if kq.shape != (H, K, D) or vq.shape != (H, K, D):
        raise UsageError(f"kq and vq must have shape (heads, keys, {D}) like qq {tuple(qq.shape)}, "
                         f"not {tuple(kq.shape)}, {tuple(vq.shape)}")  # fmt: skip
    cfg, sm = _check_fits(dev, H, S, D, K)
    mult = list(mult) if isinstance(mult, (list, tuple)) else [int(mult)] * H
    shift = list(shift) if isinstance(shift, (list, tuple)) else [int(shift)] * H
    C = cfg.cols
    quarter = cfg.spad_depth // 4
    _, acc2 = _acc_plan(cfg, S, D, K)
    nb = len(acc2)  # P V results in flight (2: double-buffered across heads)
    wins = windows(dev, "systolic")
    lw, tw, aw = wins["left"], wins["top"], wins["acc"]
    half = cfg.spad_depth // 2
    bufs, prog = [], dev.program()
    res_words = -(-D // C) * S * aw.stride
    res = dev.alloc((H * res_words,), torch.int32, label="attention context")
    try:
        for h in range(H):
            par = h % 2
            qb = upload(dev, qq[h].to(torch.int8), "a", "os")
            kb = upload(dev, kq[h].to(torch.int8).t().contiguous(), "b", "os")
            vb = upload(dev, vq[h].to(torch.int8), "b", "ws")
            bufs += [qb, kb, vb]
            q_base = k_base = par * quarter
            p_base = v_base = half + par * quarter
            for i, (buf, win, base) in enumerate(((qb, lw, q_base), (kb, tw, k_base),
                                                  (vb, tw, v_base))):  # fmt: skip
                prog.load("systolic", win_addr=win.offset + base * win.stride, buf=buf,
                          row_words=buf.nbytes // 4,
                          deps=Deps(pop_next=h >= 2 and i == 0, push_next=i == 2))  # fmt: skip
            prog.instr(gemm_instr("os", S, D, K, acc=0, left=q_base, top=k_base),
                       deps=Deps(pop_prev=True), what=f"head {h}: Q K^T")  # fmt: skip
            prog.copy(acc_tile(dev, base=0, mt=S, nt=K), rows(dev, "softmax", "in", base=0, n=K),
                      rows=S, length=K, mult=mult[h], shift=shift[h], causal=causal,
                      diag=diag)  # fmt: skip
            prog.instr(pack_row_instr(_SOFTMAX, src=0, dst=0, length=K, rows=S),
                       what=f"head {h}: softmax")  # fmt: skip
            prog.copy(rows(dev, "softmax", "out", base=0, n=K),
                      spad_rows(dev, "left", base=p_base, entries=S), rows=S, length=K,
                      shift=P_SHIFT)  # fmt: skip
            a2 = acc2[h % nb]
            prog.instr(gemm_instr("ws", S, K, D, acc=a2, left=p_base, top=v_base),
                       deps=Deps(pop_next=h >= nb, push_prev=h + 2 < H, push_next=True),
                       what=f"head {h}: P V")  # fmt: skip
            prog.store("systolic", win_addr=aw.offset + a2 * aw.stride, buf=res,
                       offset=4 * h * res_words, row_words=res_words,
                       deps=Deps(pop_prev=True, push_prev=h + nb < H))  # fmt: skip
        prog.temporaries += bufs
        prog.run()
        raw = res.read_raw()
    finally:
        for b in bufs:
            if not b.freed and not b.busy:
                b.free()
        if not res.busy:
            res.free()
    lay = Packed(role="result", dataflow="ws", rows=S, cols=D)
    words = raw.view("<u4")
    return torch.stack([lay.unpack(words[h * res_words : (h + 1) * res_words].view("u1"), cfg)
                        for h in range(H)]).long()  # fmt: skip


def attention(dev, q, k, v, *, scale: float | None = None, check: bool = False):
    """``softmax(q @ k^T * scale) @ v`` for ``[heads, seq, head_dim]`` float tensors, all heads
    in one program. Returns ``(context [heads, seq, head_dim] float32, ints)`` where ``ints`` is
    the device's integer ``P V`` (equal to :func:`attention_golden`; ``check=True`` asserts it)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or not t.is_floating_point():
            raise UsageError(f"{name} must be a float tensor [heads, seq, head_dim]")
    if not (q.shape == k.shape == v.shape):
        raise UsageError(f"q, k, v must have one shape, not {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")  # fmt: skip
    H, S, D = q.shape
    _, sm = _check_fits(dev, H, S, D)
    scale = D**-0.5 if scale is None else scale
    aq = quantise_heads(q.double(), k.double(), v.double(), scale, sm.in_frac)
    ints = attention_int(dev, aq.qq, aq.kq, aq.vq, aq.mult, aq.shift)
    if check:
        want = attention_golden(aq, sm)
        if not torch.equal(ints, want):
            raise AssertionError("fused attention differs from its golden model")
    ctx = ints.double() / 2**(15 - P_SHIFT) * aq.v_scale[:, None, :]
    return ctx.float(), ints
