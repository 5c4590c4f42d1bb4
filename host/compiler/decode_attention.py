"""Decode attention offloaded to the accelerator (the InstInfer / attention-offloading option).

A decode step's attention over the KV cache, ``softmax(q K^T * f + mask) V`` with one query
row (``q [..., 1, D]``, ``K``, ``V [..., S, D]`` the cache) and an additive mask that is 0 for
the cached positions up to the current one and very negative after it, runs as one on-chip
program for all heads (``host.attention.attention_int`` with ``Sq = 1``): the scores and the
probabilities never leave the chip, and the mask is the COPY's causal mask with ``diag`` = the
position. :func:`fuse_decode_attention` finds the chains ``matmul -> scale* / add(mask) ->
softmax -> matmul`` (one additive mask, values from outside the chain) whose shapes fit, and
places them on ``"attention"`` like ``fuse.fuse_attention`` does; ``gatesmith.compile(...,
offload_attention=True)`` asks for it. The constants are ``fuse.prepare_fused``'s (int8 Q, K per
tensor, V per column, the scores' dyadic requantisation into the softmax format).

At run time the mask value is checked: every entry must be 0 (visible) or at most
``MASK_FILL_MAX`` (masked), the visible entries a prefix ``0..t`` of the keys, the same ``t``
for every head; anything else raises (an additive bias, a mask with holes), never a wrong result.
"""

from __future__ import annotations

import math

import torch

from ...errors import UsageError
from .fuse import _consumers, mark_fused
from .graph import MASK_FILL_MAX, Graph
from .quant import QT, dequant, to_int

__all__ = ["fuse_decode_attention", "run_decode_attention", "prefix_position"]


def _chain_back(graph: Graph, op, users):
    """From a softmax back through scalings and one additive mask to the scores' matmul:
    ``(members, factor, mask name)`` or None."""
    chain, factor, mask = [op.name], 1.0, None
    src = graph.op(op.inputs[0])
    while len(users.get(src.name, [])) == 1:
        if src.kind == "scale":
            if mask is None:
                return None  # a scaling after the mask's add would scale the mask too
            factor *= src.attrs["factor"]
        elif src.kind == "add" and mask is None and len(src.inputs) == 2:
            a, b = (graph.op(i) for i in src.inputs)
            if a.shape != src.shape and b.shape != src.shape:
                return None
            scores, mask = (a, b.name) if a.shape == src.shape else (b, a.name)
            chain.insert(0, src.name)
            src = scores
            continue
        else:
            break
        chain.insert(0, src.name)
        src = graph.op(src.inputs[0])
    if src.kind != "matmul" or mask is None or len(users.get(src.name, [])) != 1:
        return None
    return [src.name, *chain], factor, mask


def fuse_decode_attention(graph: Graph, placement: dict, cfg) -> dict[str, dict]:
    """Mark the decode attention chains (see the module doc) in ``placement`` (in place);
    returns ``{last op: fusion}`` in ``fuse.fuse_attention``'s form plus ``decode``, ``mask``
    and ``keys``."""
    from ..attention import fits

    users = _consumers(graph)
    out: dict[str, dict] = {}
    for op in graph.ops:
        if op.kind != "softmax" or op.attrs["dim"] not in (-1, len(op.shape) - 1):
            continue
        found = _chain_back(graph, op, users)
        if found is None:
            continue
        members, factor, mask = found
        nxt = users.get(op.name, [])
        if len(nxt) != 1:
            continue
        last = graph.op(nxt[0])
        if last.kind != "matmul" or last.inputs[0] != op.name or factor <= 0:
            continue
        first = graph.op(members[0])
        q, kt = (graph.op(i) for i in first.inputs)
        v = graph.op(last.inputs[1])
        if len(q.shape) < 2 or q.shape[-2] != 1 or set(graph.outputs) & {*members, last.name}:
            continue
        d, keys = q.shape[-1], kt.shape[-1]
        if kt.shape[-2] != d or v.shape[-2:] != (keys, d):
            continue
        if not (q.shape[:-2] == kt.shape[:-2] == v.shape[:-2]):
            continue
        if fits(cfg, 1, d, keys):
            continue
        members = [*members, last.name]
        mark_fused(graph, placement, members, "decode attention offloaded")
        out[last.name] = {"members": members, "q": q.name, "kt": kt.name, "v": v.name,
                          "factor": factor, "heads": math.prod(q.shape[:-2]), "seq": 1,
                          "keys": keys, "dim": d, "decode": True, "mask": mask}  # fmt: skip
    return out


def prefix_position(mask: torch.Tensor, shape) -> int:
    """``t`` when the additive ``mask`` (broadcast to the scores' ``shape``) is 0 for keys
    ``0..t`` and masked after, the same for every row; raises otherwise."""
    m = dequant(mask).double().expand(shape).reshape(-1, shape[-1])
    visible, masked = m == 0, m <= MASK_FILL_MAX
    if not bool((visible | masked).all()):
        raise UsageError("offloaded decode attention: the additive mask must hold 0 (visible) "
                         f"or <= {MASK_FILL_MAX:g} (masked) only")  # fmt: skip
    t = int(visible[0].sum()) - 1
    want = torch.arange(shape[-1]) <= t
    if t < 0 or not bool((visible == want).all()):
        raise UsageError("offloaded decode attention: the visible keys must be a prefix "
                         "0..t, the same for every head")  # fmt: skip
    return t


def run_decode_attention(op, env: dict, c: dict, backend, calls: list):
    """The executor side: int8 q, K, V and the mask's position -> backend.attention_int."""
    from ...hdl.formats import IntFormat
    from ..attention import P_SHIFT

    f = c["fusion"]
    i8 = IntFormat(8)
    q, kt, v = env[f["q"]], env[f["kt"]], env[f["v"]]
    lead = tuple(q.shape[:-2])
    K, D = f["keys"], f["dim"]
    t = prefix_position(env[f["mask"]], (*lead, 1, K))
    qq = to_int(q, c["q_scale"], i8).reshape(-1, 1, D)
    kq = to_int(kt, c["k_scale"], i8).reshape(-1, D, K).transpose(1, 2)
    sv = c["v_scale"]
    vq = to_int(v, sv[..., None, :] if sv.dim() else sv, i8).reshape(-1, K, D)
    calls.append((qq.shape[0], 1, K, D))
    ints = backend.attention_int(qq, kq.contiguous(), vq, c["mult"], c["shift"], causal=True,
                                 diag=t)  # fmt: skip
    scale = torch.as_tensor(sv, dtype=torch.float64) * 2.0 ** -(15 - P_SHIFT)
    out_scale = scale[..., None, :].expand(*lead, 1, D) if scale.dim() else scale
    return QT(ints.reshape(*lead, 1, D), out_scale)
