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

The chain's quantisation does not depend on where it runs. A chain that cannot run on chip
(``host.attention.fits`` says why, or the sequential mode asked for every op on its own) is
still recognised and quantised the same way, and runs op by op through device memory
(:func:`attention_ops`: ``S`` out as int32, requantised on the host with the same dyadic
``mult, shift`` the COPY applies, the softmax, ``P`` as int8 with ``P_SHIFT``, ``P V``), so the
sequential, mixed and dataflow schedules of one model give bit-identical outputs.

Traffic against the FlashAttention I/O bound (Theta(N^2 d^2 / M) for on-chip memory M): with
the whole ``S x S`` score tile on chip (S <= the softmax engine's max_len), one pass suffices
and the traffic is the compulsory ``Q, K, V, O`` term, the bound's floor; longer sequences
need the tiled online-softmax form, which is not built (such chains run op by op).
"""

from __future__ import annotations

import math

import torch

from ...hdl.requant import dyadic
from .graph import MASK_FILL_MAX, Graph
from .quant import act_scale

__all__ = ["fuse_attention", "prepare_fused", "FUSED", "on_chip", "attention_ops",
           "ops_calls"]

FUSED = "attention"


def _consumers(graph: Graph) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for op in graph.ops:
        for i in op.inputs:
            out.setdefault(i, []).append(op.name)
    return out


def fuse_attention(graph: Graph, placement: dict, cfg, *, on_chip: bool = True) -> dict:
    """Mark the attention chains in ``placement`` (in place); returns ``{last op: {"members":
    [...], "q": name, "kt": name, "v": name, "factor": f, "on_chip": bool, ...}}``.

    A chain runs as one on-chip program when ``on_chip`` and it fits the accelerator; otherwise
    (``on_chip=False``: the sequential mode) op by op, with the same quantisation."""
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
        why = fits(cfg, seq, dim) if on_chip else "the sequential mode"
        members = [*chain, last.name]
        what = f"attention chain, op by op ({why})" if why else "fused attention"
        mark_fused(graph, placement, members, what)
        out[last.name] = {"members": members, "q": q.name, "kt": kt.name, "v": v.name,
                          "factor": factor, "heads": math.prod(q.shape[:-2]), "seq": seq,
                          "dim": dim, "causal": diag is not None, "diag": diag or 0,
                          "on_chip": not why}  # fmt: skip
    return out


def on_chip(fusion: dict) -> bool:
    """Whether a chain (``fuse_attention``'s or ``decode_attention``'s) runs as one on-chip
    program."""
    return fusion.get("on_chip", True)


def ops_calls(heads: int, seq: int, keys: int, dim: int, x=None) -> list:
    """The engine calls of a chain run op by op (``report.predict``'s ``("ops", engine, call)``
    entries): per head Q K^T and P V on the systolic engine, the scores' rows on softmax
    (``x``: the requantised scores, for the masked rows; default none masked)."""
    rows = torch.zeros(heads * seq, keys, dtype=torch.long) if x is None else x
    return ([("ops", "systolic", (seq, dim, keys, None))] * heads
            + [("ops", "softmax", rows.reshape(-1, keys))]
            + [("ops", "systolic", (seq, keys, dim, None))] * heads)  # fmt: skip


def attention_ops(backend, qq, kq, vq, mult: int, shift: int, *, causal=False, diag=0,
                  calls: list | None = None) -> torch.Tensor:  # fmt: skip
    """The chain's integer ``P V`` ([H, Sq, D], int64) op by op through ``backend``: equal to
    ``host.attention.attention_int_golden`` bit for bit (the fused program's result)."""
    from ...hdl.formats import IntFormat
    from ...hdl.requant import requant
    from ..attention import P_SHIFT

    sm = backend.config.engine("softmax")
    H, S, D = qq.shape
    K = kq.shape[1]
    acc = torch.stack([backend.matmul(qq[h], kq[h].t().contiguous(), None).long()
                       for h in range(H)])  # fmt: skip
    x = requant(acc, int(mult), int(shift), sm.in_fmt)
    if causal:
        x = x.masked_fill(torch.ones(S, K, dtype=torch.bool).triu(diag + 1), sm.in_fmt.min)
    p = requant(backend.softmax_int(x), 1, P_SHIFT, IntFormat(8)).to(torch.int8)
    out = torch.stack([backend.matmul(p[h], vq[h], None).long() for h in range(H)])
    if calls is not None:
        calls.extend(ops_calls(H, S, K, D, x))
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
    into = "fused into" if what.startswith("fused") else "in the attention chain of"
    for n in members:
        placement[n] = (FUSED, f"{into} {last}")
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
    causal, diag = f.get("causal", False), f.get("diag", 0)
    if on_chip(f):
        calls.append((qq.shape[0], S, D))
        ints = backend.attention_int(qq, kq.contiguous(), vq, c["mult"], c["shift"],
                                     causal=causal, diag=diag)  # fmt: skip
    else:
        ints = attention_ops(backend, qq, kq.contiguous(), vq, c["mult"], c["shift"],
                             causal=causal, diag=diag, calls=calls)  # fmt: skip
    scale = torch.as_tensor(sv, dtype=torch.float64) * 2.0 ** -(15 - P_SHIFT)
    out_scale = scale[..., None, :].expand(*lead, S, D) if scale.dim() else scale
    return QT(ints.reshape(*lead, S, D), out_scale)
