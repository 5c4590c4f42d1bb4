"""What stays in the systolic scratchpad between ops: the graph side of :mod:`.alloc`.

The runtime can keep one kind of intermediate on chip across programs: the output of a
nonlinear op (softmax along the last dim, GELU, LayerNorm) that ``linear`` ops read as their
activation. Kept, the nonlinear op's program COPYs each output row through the requantiser
(one dyadic ``mult, shift`` per row: the consumer's per-row int8 scale) straight into the
systolic engine's left scratchpad, in the WS panel layout, at an offset the allocator chose,
and the consumers' programs later run WS GEMMs on it there (:func:`gemm_resident`), loading
only their weights. The engine memories keep their contents between programs; nothing else
may write those entries while the tensor is live, which is what the allocation guarantees.
Otherwise the value goes through device memory as today (a STORE, a LOAD per consumer chunk).

:func:`problem` states it for :func:`.alloc.allocate`: one candidate tensor per such
nonlinear op (its consumers must share one activation scale), live from the producer to its
last consumer, ``ceil(K / rows) * M`` left entries; every other systolic op streams its
operands through the left entries its plan touches (:func:`left_span`; fused attention: all of
them), a :class:`.alloc.Block` (gone, for a consumer, when its operand is resident). ``base``
and the savings come from the exact
device-memory word counts of the programs each way (:func:`op_words`), the same words the
PERF_LOAD / PERF_STORE counters count.

Limits (honest): only nonlinear -> ``linear`` edges; a GEMM's accumulator result cannot stay
on chip (its per-channel weight scales make the requantisation per element, which one COPY
cannot do), and neither can ``matmul`` operands (they go through fused attention instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from ...hdl.requant import dyadic
from .alloc import Block, Problem, Tensor

__all__ = ["problem", "op_words", "resident_plan", "ResidentPlan", "row_requant", "nl_resident",
           "gemm_resident", "predict_resident", "NL_KINDS"]  # fmt: skip

NL_KINDS = {"softmax": "softmax", "gelu": "gelu", "layer_norm": "layernorm"}
LEFT = "systolic.left"


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _lay(acfg):
    from ...generators.systolic.engine import window_layout

    return window_layout(acfg.engine("systolic"))


def _nl_windows(kind, acfg):
    from ..chain import engine_model

    return {w.name: w for w in engine_model(kind, acfg.engine(kind)).windows()}


def _nl_rows(op, acfg) -> tuple[int, int]:
    """(rows, n) as host.nonlinear issues an op's input (GELU: flat rows of max_len)."""
    kind = NL_KINDS[op.kind]
    cfg = acfg.engine(kind)
    numel = math.prod(op.shape)
    if kind == "gelu":
        n = min(cfg.max_len, cfg.depth * cfg.lanes, numel)
        return _ceil(numel, n), n
    n = op.shape[op.attrs["dim"]] if kind == "softmax" else op.shape[-1]
    return numel // n, n


def _nl_words(kind, rows, n, acfg, store=True) -> int:
    cfg, w = acfg.engine(kind), _nl_windows(kind, acfg)
    wpr = _ceil(n, cfg.lanes)
    return rows * wpr * (w["in"].stride + (w["out"].stride if store else 0))


def _gemm_calls(graph, op) -> list[tuple[int, int, int]]:
    if op.kind == "linear":
        x = graph.op(op.inputs[0]).shape
        return [(math.prod(x[:-1]), x[-1], op.shape[-1])]
    a, b = graph.op(op.inputs[0]).shape, graph.op(op.inputs[1]).shape
    batch = math.prod(torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2])))
    return [(a[-2], a[-1], op.shape[-1])] * batch


def op_words(graph, op, engine, acfg, consts, *, resident=None, store=True) -> int:
    """Device-memory words of ``op``'s programs: through device memory (``resident=None``),
    or with the operand resident (``"operand"``: a consumer's :func:`gemm_resident`;
    ``"output"``: a producer writing into the scratchpad, storing its output when ``store``)."""
    from .report import predict

    if engine == "attention":
        from .fuse import on_chip, ops_calls

        f = consts[op.name]["fusion"]
        h, s, d = f["heads"], f["seq"], f["dim"]
        calls = [(h, s, d)] if on_chip(f) else ops_calls(h, s, s, d)
        return predict("attention", calls, acfg)["words"]
    if engine == "systolic":
        if resident == "operand":
            m, k, n = _gemm_calls(graph, op)[0]
            return resident_words(m, k, n, acfg)
        df = consts[op.name]["schedule"]["dataflow"]
        return predict("systolic", [(*c, df) for c in _gemm_calls(graph, op)], acfg)["words"]
    kind = NL_KINDS[op.kind]
    if resident == "output":
        m, k = math.prod(op.shape[:-1]), op.shape[-1]
        return _nl_words(kind, m, k, acfg, store)
    return _nl_words(kind, *_nl_rows(op, acfg), acfg)


@lru_cache(maxsize=4096)
def left_span(m: int, k: int, n: int, df: str, acfg) -> int:
    """Left-scratchpad entries ``0..span-1`` a streamed GEMM (``host.systolic.matmul``'s plan
    for ``a (m x k) @ b (k x n)`` in dataflow ``df``) writes: chunk ``i`` at ``(i % 2) * half``."""
    from ..systolic import _hw_df, plan_dma

    scfg = acfg.engine("systolic")
    hm, hk, hn = (n, k, m) if df == "is" else (m, k, n)
    p, _ = plan_dma(hm, hk, hn, df, scfg, acfg)
    R, hw = scfg.rows, _hw_df(df)
    mt, kc = min(p.mt, hm), min(p.kc, hk)
    size = _ceil(mt, R) * kc if hw == "os" else _ceil(kc, R) * mt
    chunks = sum(1 for _ in p.chunks(hm, hk, hn))
    return size if chunks == 1 else scfg.spad_depth // 2 + size


# ---- the GEMM on a resident operand ----------------------------------------------------------


@dataclass(frozen=True)
class ResidentPlan:
    """Tiles of :func:`gemm_resident`: output tiles of ``nt`` columns (all ``m`` rows), K chunks
    of ``kc`` (multiples of the array's rows); ``bufs`` weight chunks in the top scratchpad and
    output tiles in the accumulator at once (2: the next chunk loads and the last tile stores
    while one computes; 1: each step waits for the last)."""

    nt: int
    kc: int
    bufs: int


def resident_plan(m: int, k: int, n: int, scfg, acfg=None) -> ResidentPlan | None:
    """The plan of :func:`gemm_resident` for an ``m x k`` resident A (WS) with the fewest
    modelled cycles (GEMM from the exact cycle model against its DMA words, as
    ``host.systolic.plan_dma``), or None when none fits."""
    from ...generators.systolic.model import cycles as gemm_cycles
    from ..systolic import DMA_EFFICIENCY

    R, C = scfg.rows, scfg.cols
    if m > scfg.acc_depth or m > 65535 or _ceil(k, R) * m > scfg.spad_depth:
        return None
    beat = 1 if acfg is None else acfg.mem_cycles_per_beat
    best = None
    for bufs in (2, 1):
        for blocks in range(min(_ceil(n, C), scfg.acc_depth // bufs // m), 0, -1):
            room = scfg.spad_depth // bufs // blocks
            kc = min(_ceil(k, R) * R, room // R * R, 65535 // R * R)
            if kc < R:
                continue
            p = ResidentPlan(min(n, blocks * C), min(k, kc), bufs)
            cost = 0.0
            for _, _, ntc, kcc, _, last in _chunks(m, k, n, p.nt, p.kc):
                load = _ceil(ntc, C) * kcc * beat / DMA_EFFICIENCY
                store = _ceil(ntc, C) * m * C * beat / DMA_EFFICIENCY if last else 0
                g = gemm_cycles(m, kcc, ntc, "ws", scfg) + 4
                cost += max(g, load) + (store if bufs == 1 else 0)
            if best is None or cost < best[0]:
                best = (cost, p)
    return None if best is None else best[1]


def resident_words(m: int, k: int, n: int, acfg) -> int:
    """Words :func:`gemm_resident` moves: the weight once, the result once."""
    scfg = acfg.engine("systolic")
    lay = _lay(acfg)
    tw, aw = lay["top"].width // 32, scfg.cols * _ceil(scfg.acc_width, 32)
    return _ceil(n, scfg.cols) * (k * tw + m * aw)


def _chunks(m, k, n, nt, kc):
    for n0 in range(0, n, nt):
        for k0 in range(0, k, kc):
            yield n0, k0, min(nt, n - n0), min(kc, k - k0), k0 == 0, k0 + kc >= k


def gemm_resident(dev, left_base: int, m: int, k: int, top, out, acfg) -> None:
    """``out = A @ top`` with A (m x k, WS panels) resident in the left scratchpad from entry
    ``left_base``; ``top`` a weight buffer packed for WS, ``out`` a result buffer (m x n).
    One program (:func:`resident_plan`): per chunk LOAD the weight panels, GEMM, per tile
    STORE; with two buffers tokens let chunk ``i + 1`` load and tile ``t - 1`` store while
    chunk ``i`` computes (the pattern of ``host.systolic.gemm_program``)."""
    from ..program import Deps
    from ..systolic import gemm_instr

    scfg = acfg.engine("systolic")
    R, C = scfg.rows, scfg.cols
    lay = _lay(acfg)
    tw, aw = lay["top"], lay["acc"]
    twords, awords = tw.width // 32, C * _ceil(scfg.acc_width, 32)
    n = top.layout.cols
    p = resident_plan(m, k, n, scfg, acfg)
    nb = p.bufs
    top_room, acc_room = scfg.spad_depth // nb, scfg.acc_depth // nb
    chunks = list(_chunks(m, k, n, p.nt, p.kc))
    n_tiles = _ceil(n, p.nt)
    prog = dev.program()

    def loads(i):
        n0, k0, ntc, kcc, _, _ = chunks[i]
        ops = _panel_dmas(twords, tw.stride, n0 // C, _ceil(ntc, C), k0, kcc, k,
                          tw.offset + (i % nb) * top_room * tw.stride)  # fmt: skip
        for j, d in enumerate(ops):
            prog.load("systolic", buf=top, deps=Deps(pop_next=i >= nb and j == 0,
                                                   push_next=j == len(ops) - 1), **d)  # fmt: skip

    loads(0)
    for i, (n0, k0, ntc, kcc, first, last) in enumerate(chunks):
        if i + 1 < len(chunks):
            loads(i + 1)
        tile = n0 // p.nt
        acc_base = (tile % nb) * acc_room
        prog.instr(gemm_instr("ws", m, kcc, ntc, acc=acc_base, left=left_base + (k0 // R) * m,
                              top=(i % nb) * top_room, accumulate=not first),
                   deps=Deps(pop_prev=True, pop_next=first and tile >= nb,
                             push_prev=i + nb < len(chunks), push_next=last),
                   what=f"GEMM ws {m}x{kcc}x{ntc}, resident operand (tile {tile})")  # fmt: skip
        if last:
            ops = _panel_dmas(awords, aw.stride, n0 // C, _ceil(ntc, C), 0, m, m,
                              aw.offset + acc_base * aw.stride)  # fmt: skip
            for j, d in enumerate(ops):
                prog.store("systolic", buf=out, deps=Deps(
                    pop_prev=j == 0, push_prev=tile + nb < n_tiles and j == len(ops) - 1), **d)
    try:
        prog.run()
    except BaseException:
        if out.busy:  # interrupted: the result buffer goes when the program has finished
            prog.temporaries.append(out)
        raise


def _panel_dmas(words, stride, first_panel, n_panels, entry0, per_panel, panel_entries, win0):
    """DMA arguments moving entries [entry0, entry0 + per_panel) of ``n_panels`` panels (of
    ``panel_entries`` entries in device memory) to consecutive window entries from ``win0``
    (as ``host.systolic.gemm_program`` lays a chunk out)."""
    if words == stride:
        return [dict(offset=4 * stride * (first_panel * panel_entries + entry0), rows=n_panels,
                     row_words=per_panel * stride, mem_stride=panel_entries * stride,
                     win_addr=win0, win_stride=per_panel * stride)]  # fmt: skip
    return [dict(offset=4 * stride * ((first_panel + q) * panel_entries + entry0), rows=per_panel,
                 row_words=words, mem_stride=stride, win_addr=win0 + q * per_panel * stride,
                 win_stride=stride) for q in range(n_panels)]  # fmt: skip


# ---- the nonlinear op writing into the scratchpad ----------------------------------------------


def row_requant(out_scale: float, a_scale: torch.Tensor, rows: int) -> list[tuple[int, int]]:
    """Per row, the dyadic (mult, shift) from the nonlinear output's scale to the consumer's
    int8 scale (what ``quant.to_int`` applies, row by row)."""
    s = a_scale.reshape(-1) if a_scale.dim() else a_scale.expand(rows)
    return [dyadic(float(out_scale / float(v))) for v in s.double()]


def nl_resident(dev, kind: str, x: torch.Tensor, requants, left_base: int, *, gamma=None,
                beta=None, store: bool) -> torch.Tensor | None:  # fmt: skip
    """Rows ``x`` [M, K] (the engine's input integers) through engine ``kind`` in chunks, each
    output row COPYd with its ``requants[r]`` into the left scratchpad (WS panels of an
    M x K operand from entry ``left_base``); with ``store`` the outputs also go to device
    memory and are returned (else None)."""
    from ..chain import rows as nl_rows
    from ..chain import spad_rows
    from ..nonlinear import _OPCODES, _write_region, pack_rows, unpack_rows
    from ..program import Deps
    from ...hdl.nonlinear_common import pack_row_instr

    cfg = dev.config.engine(kind)
    wins = _nl_windows(kind, dev.config)
    if kind == "layernorm":
        _write_region(dev, kind, wins["gamma"], gamma.long()[None].numpy(), cfg.lanes)
        _write_region(dev, kind, wins["beta"], beta.long()[None].numpy(), cfg.lanes)
    m, k = x.shape
    wi, wo = wins["in"], wins["out"]
    wpr = _ceil(k, cfg.lanes)
    row_in, row_out = wpr * wi.stride, wpr * wo.stride
    per = cfg.depth // wpr
    words = pack_rows(x.numpy(), lanes=cfg.lanes, width=wi.width // cfg.lanes, stride=wi.stride)
    bin_ = dev.alloc((words.size,), torch.int32, label=f"{kind} in")
    bin_.write_raw(words)
    bout = dev.alloc((m * row_out,), torch.int32, label=f"{kind} out") if store else None
    prog = dev.program()
    try:
        starts = list(range(0, m, per))
        for i, r0 in enumerate(starts):
            cnt = min(per, m - r0)
            lastc = i + 1 == len(starts)
            prog.load(kind, win_addr=wi.offset, buf=bin_, offset=4 * r0 * row_in, rows=cnt,
                      row_words=row_in, deps=Deps(pop_next=i > 0, push_next=True))  # fmt: skip
            prog.instr(pack_row_instr(_OPCODES[kind], src=0, dst=0, length=k, rows=cnt),
                       deps=Deps(pop_prev=True, pop_next=store and i > 0,
                                 push_prev=not lastc, push_next=store),
                       what=f"{kind} rows {r0}..{r0 + cnt}")  # fmt: skip
            for a, b, (mult, shift) in _runs(requants[r0 : r0 + cnt]):
                prog.copy(nl_rows(dev, kind, "out", base=a * wpr, n=k),
                          spad_rows(dev, "left", base=left_base + r0 + a, entries=m),
                          rows=b - a, length=k, mult=mult, shift=shift)  # fmt: skip
            if store:
                prog.store(kind, win_addr=wo.offset, buf=bout, offset=4 * r0 * row_out,
                           rows=cnt, row_words=row_out,
                           deps=Deps(pop_prev=True, push_prev=not lastc))  # fmt: skip
        prog.run()
        if not store:
            return None
        raw = bout.read_raw().view("<u4")
        return torch.from_numpy(unpack_rows(raw, rows=m, n=k, lanes=cfg.lanes,
                                            width=wo.width // cfg.lanes, stride=wo.stride,
                                            signed=kind != "softmax"))  # fmt: skip
    finally:
        for b in (bin_, bout):
            if b is not None and not b.freed:
                if b.busy:  # interrupted: freed when the program has finished
                    prog.temporaries.append(b)
                else:
                    b.free()


def _runs(pairs):
    """(first, end, value) runs of equal consecutive values."""
    i = 0
    while i < len(pairs):
        j = i + 1
        while j < len(pairs) and pairs[j] == pairs[i]:
            j += 1
        yield i, j, pairs[i]
        i = j


def predict_resident(engine: str, call: dict, acfg) -> dict:
    """Predicted engine cycles and device words of a resident producer or consumer call."""
    from ...generators.systolic.model import cycles as gemm_cycles
    from ..chain import engine_model

    if engine == "systolic":
        m, k, n = call["m"], call["k"], call["n"]
        scfg = acfg.engine("systolic")
        p = resident_plan(m, k, n, scfg, acfg)
        cyc = sum(gemm_cycles(m, kcc, ntc, "ws", scfg) for _, _, ntc, kcc, _, _ in
                  _chunks(m, k, n, p.nt, p.kc))  # fmt: skip
        return {"cycles": cyc, "program": None, "words": resident_words(m, k, n, acfg)}
    cfg = acfg.engine(engine)
    eng = engine_model(engine, cfg)
    x = call["x"]
    m, k = x.shape
    per = cfg.depth // _ceil(k, cfg.lanes)
    cyc = 0
    for r0 in range(0, m, per):
        chunk = x[r0 : r0 + per]
        if engine == "softmax":
            cyc += eng.cycles(k, len(chunk), int((chunk == cfg.in_fmt.min).all(dim=1).sum()))
        elif engine == "gelu":
            cyc += eng.cycles(k, len(chunk))
        else:
            cyc += eng.cycles(chunk.tolist())
    return {"cycles": cyc, "program": None,
            "words": _nl_words(engine, m, k, acfg, call["store"])}  # fmt: skip


# ---- the problem --------------------------------------------------------------------------------


def problem(graph, placement: dict, consts: dict, acfg) -> tuple[Problem, dict]:
    """The allocation problem of a placed, quantised, scheduled graph, and per candidate
    ``{producer: {"consumers": [...], "store": bool, "m", "k"}}``."""
    engines = {k: v[0] for k, v in placement.items()}
    device = [op for op in graph.ops if engines.get(op.name) in
              ("systolic", "softmax", "gelu", "layernorm")
              or (engines.get(op.name) == "attention" and "fusion" in consts.get(op.name, {}))]
    step = {op.name: i for i, op in enumerate(device)}
    scfg = acfg.engine("systolic")
    users: dict[str, list] = {}
    for op in graph.ops:
        for i in op.inputs:
            users.setdefault(i, []).append(op)
    cands: dict[str, dict] = {}
    # a resident tensor is written by the on-chip COPY: without it nothing can stay on chip
    if scfg is not None and "ws" in scfg.dataflows and acfg.copy_unit:
        for op in device:
            info = _candidate(graph, op, engines, consts, users, scfg)
            if info:
                cands[op.name] = info
    consumer_of = {c: p for p, info in cands.items() for c in info["consumers"]}
    base = 0
    tensors, blocks = [], []
    for op in device:
        e = engines[op.name]
        base += op_words(graph, op, e, acfg, consts)
        if e == "attention":
            blocks.append(Block(LEFT, 0, scfg.spad_depth, step[op.name]))
        elif e == "systolic":
            df = consts[op.name]["schedule"]["dataflow"]
            hi = max(left_span(*c, df, acfg) for c in _gemm_calls(graph, op))
            blocks.append(Block(LEFT, 0, hi, step[op.name], unless=consumer_of.get(op.name)))
    for p, info in cands.items():
        op = graph.op(p)
        saving = (op_words(graph, op, engines[p], acfg, consts)
                  - op_words(graph, op, engines[p], acfg, consts, resident="output",
                             store=info["store"]))  # fmt: skip
        for c in info["consumers"]:
            cop = graph.op(c)
            saving += (op_words(graph, cop, "systolic", acfg, consts)
                       - op_words(graph, cop, "systolic", acfg, consts, resident="operand"))
        size = _ceil(info["k"], scfg.rows) * info["m"]
        tensors.append(Tensor(p, LEFT, size, step[p], max(step[c] for c in info["consumers"]),
                              saving))  # fmt: skip
    cap = {LEFT: scfg.spad_depth} if scfg is not None else {}
    return Problem(cap, tensors, blocks, base), cands


def _candidate(graph, op, engines, consts, users, scfg) -> dict | None:
    if engines[op.name] not in ("softmax", "gelu", "layernorm"):
        return None
    if op.kind == "softmax" and op.attrs["dim"] != len(op.shape) - 1:
        return None
    m, k = math.prod(op.shape[:-1]), op.shape[-1]
    chained, store = [], op.name in graph.outputs
    for u in users.get(op.name, []):
        ok = (u.kind == "linear" and engines.get(u.name) == "systolic" and u.inputs[0] == op.name
              and resident_plan(m, k, u.shape[-1], scfg) is not None)  # fmt: skip
        if ok and chained:
            ok = torch.equal(consts[u.name]["a_scale"], consts[chained[0]]["a_scale"])
        if ok:
            chained.append(u.name)
        else:
            store = True
    if not chained:
        return None
    return {"consumers": chained, "store": store, "m": m, "k": k}
