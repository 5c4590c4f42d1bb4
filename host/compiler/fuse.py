"""Fused attention: ``matmul -> scale* -> softmax -> matmul`` becomes one on-chip program.

:func:`fuse_attention` finds, after placement, every chain ``S = Q @ K^T``, optional constant
scalings, ``P = softmax(S, -1)``, ``O = P @ V`` whose intermediate values have no other
consumer and no mask but a causal one (applied by the COPY into the softmax engine), and whose shape fits the accelerator (``host.attention.fits``). The
chain's ops are placed on ``"attention"``; the last one carries the fusion. At run time the
executor hands ``Q``, ``K`` and ``V`` as int8 with one scale per tensor (per head, from the
calibration ranges) to the backend's ``attention_int``: on the device the scores and the
probabilities stay on chip (``host/attention.py``: Q K^T, COPY through the requantiser into
the softmax rows, softmax, COPY into the next GEMM's scratchpad, P V), so device memory sees
Q, K, V and the context only: ``3 S D + S D`` elements per head against the unfused path's
extra ``2 S^2`` (the scores out and the probabilities back in, as int32 and int8).

Traffic against the FlashAttention I/O bound (Theta(N^2 d^2 / M) for on-chip memory M): with
the whole ``S x S`` score tile on chip (S <= the softmax engine's max_len), one pass suffices
and the traffic is the compulsory ``Q, K, V, O`` term, the bound's floor; longer sequences
need the tiled online-softmax form, which is not built (such chains stay unfused).
"""

from __future__ import annotations

import math

import torch

from ...hdl.requant import dyadic
from .graph import MASK_FILL_MAX, Graph
from .quant import act_scale

__all__ = ["fuse_attention", "prepare_fused", "FUSED"]

FUSED = "attention"


def _consumers(graph: Graph) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for op in graph.ops:
        for i in op.inputs:
            out.setdefault(i, []).append(op.name)
    return out


def fuse_attention(graph: Graph, placement: dict, cfg) -> dict[str, dict]:
    """Mark the fusable attention chains in ``placement`` (in place); returns
    ``{last op: {"members": [...], "q": name, "kt": name, "v": name, "factor": f}}``."""
    from ..attention import fits

    users = _consumers(graph)
    out: dict[str, dict] = {}
    outputs = set(graph.outputs)
    for op in graph.ops:
        if op.kind != "softmax" or placement[op.name][0] != "softmax":
            continue
        if op.attrs["dim"] not in (-1, len(op.shape) - 1):
            continue
        chain, factor, diag = [op.name], 1.0, None
        src = graph.op(op.inputs[0])
        while src.kind in ("scale", "mask") and len(users.get(src.name, [])) == 1:
            if src.kind == "mask":
                d = _causal_diag(graph.consts[src.attrs["mask"]], src.shape)
                if d is None or diag is not None or src.attrs["fill"] > MASK_FILL_MAX:
                    break
                diag = d
            else:
                factor *= src.attrs["factor"]
            chain.insert(0, src.name)
            src = graph.op(src.inputs[0])
        if src.kind != "matmul" or placement[src.name][0] != "systolic":
            continue
        if len(users.get(src.name, [])) != 1 or factor <= 0:
            continue
        chain.insert(0, src.name)
        nxt = users.get(op.name, [])
        if len(nxt) != 1:
            continue
        last = graph.op(nxt[0])
        if last.kind != "matmul" or last.inputs[0] != op.name or placement[last.name][0] != "systolic":
            continue
        if any(n in outputs for n in chain):
            continue
        q, kt = (graph.op(i) for i in src.inputs)
        v = graph.op(last.inputs[1])
        if q.shape != v.shape or len(q.shape) < 2 or kt.shape[-2:] != q.shape[-2:][::-1]:
            continue
        if q.shape[:-2] != kt.shape[:-2]:
            continue
        seq, dim = q.shape[-2], q.shape[-1]
        why = fits(cfg, seq, dim)
        if why:
            continue
        members = [*chain, last.name]
        mark_fused(graph, placement, members, "fused attention")
        out[last.name] = {"members": members, "q": q.name, "kt": kt.name, "v": v.name,
                          "factor": factor, "heads": math.prod(q.shape[:-2]), "seq": seq,
                          "dim": dim, "causal": diag is not None, "diag": diag or 0}  # fmt: skip
    return out


def _causal_diag(mask: torch.Tensor, shape) -> int | None:
    """``d`` when ``mask`` (True = masked, broadcast to ``shape``) masks exactly the entries
    ``e > r + d`` of every ``S x S`` score tile (a causal mask), else None."""
    s = shape[-1]
    if len(shape) < 2 or shape[-2] != s:
        return None
    m = mask.to(torch.bool).expand(shape).reshape(-1, s, s)
    for d in range(0, min(s, 1024)):
        want = torch.ones(s, s, dtype=torch.bool).triu(d + 1)
        if torch.equal(m[0], want):
            return d if bool((m == want).all()) else None
    return None


def mark_fused(graph, placement: dict, members: list, what: str) -> None:
    """Place ``members`` (the last one carries the chain) on the fused engine, with reasons."""
    last = members[-1]
    for n in members:
        placement[n] = (FUSED, f"fused into {last}")
    placement[last] = (FUSED, f"{what}: " + " -> ".join(graph.op(n).kind for n in members))


def prepare_fused(fusions: dict, calib, cfg, consts: dict) -> None:
    """The fused chains' constants: per-tensor int8 scales for Q and K (the largest of their
    calibrated ranges), V per column, and the scores' dyadic requantisation into softmax."""
    sm = cfg.engine("softmax")
    for last, f in fusions.items():
        first, final = f["members"][0], f["members"][-1]
        r1, r2 = calib.ranges[first], calib.ranges[final]
        sq = act_scale(r1["a"].amax())
        sk = act_scale(r1["b"].amax())
        sv = act_scale(r2["b"])  # V per column (0-d with tensor granularity)
        mult, shift = dyadic(float(sq * sk) * f["factor"] * 2.0**sm.in_frac)
        consts[last] = {"fusion": dict(f), "q_scale": sq, "k_scale": sk, "v_scale": sv,
                        "mult": mult, "shift": shift}  # fmt: skip


def run_fused(op, env: dict, c: dict, backend, calls: list):
    """The fused chain ending at ``op`` (executor side): int8 Q, K, V -> backend.attention_int."""
    from ...hdl.formats import IntFormat
    from ..attention import P_SHIFT
    from .quant import QT, to_int

    f = c["fusion"]
    if f.get("decode"):
        from .decode_attention import run_decode_attention

        return run_decode_attention(op, env, c, backend, calls)
    i8 = IntFormat(8)
    q, kt, v = env[f["q"]], env[f["kt"]], env[f["v"]]
    lead = tuple(q.shape[:-2])
    S, D = f["seq"], f["dim"]
    qq = to_int(q, c["q_scale"], i8).reshape(-1, S, D)
    kq = to_int(kt, c["k_scale"], i8).reshape(-1, D, S).transpose(1, 2)
    sv = c["v_scale"]
    vq = to_int(v, sv[..., None, :] if sv.dim() else sv, i8).reshape(-1, S, D)
    calls.append((qq.shape[0], S, D))
    ints = backend.attention_int(qq, kq.contiguous(), vq, c["mult"], c["shift"],
                                 causal=f.get("causal", False), diag=f.get("diag", 0))
    scale = torch.as_tensor(sv, dtype=torch.float64) * 2.0 ** -(15 - P_SHIFT)
    out_scale = scale[..., None, :].expand(*lead, S, D) if scale.dim() else scale
    return QT(ints.reshape(*lead, S, D), out_scale)
