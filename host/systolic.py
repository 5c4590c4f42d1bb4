"""Host driver of the systolic engine: operands in device memory, one program per GEMM.

:func:`matmul` runs ``a @ b`` of any shape. The operands are packed once into the engine's
layout in device memory (:func:`upload`; a weight uploaded once stays resident and is reused).
The GEMM is cut into output tiles that fit half of the accumulator and K-chunks whose operands
fit half of each scratchpad memory, with tile sizes chosen by :func:`plan_dma` from the engine's
exact cycle model and a DMA traffic model. One program does it all: the load queue brings chunk
``i + 1``'s operands into the other scratchpad half while chunk ``i`` computes, and the store
queue writes a finished tile to device memory while the next tile accumulates in the other
accumulator half; dependency tokens order them (see ``generators/accel/isa.py``). A chunk whose
operand panel the chunk before it already loaded reads it where it is (:func:`panel_reuse`);
``Plan.snake`` orders the tiles so that every tile's first chunk finds one.

Device-memory layouts ("panels", ``stride`` words per entry as in the engine's window):

* left (OS): entry ``(mb, k)`` = ``A[mb*R + i, k]`` over ``i``, at ``(mb*K + k)``;
  left (WS): entry ``(kb, m)`` = ``A[m, kb*R + i]`` over ``i``, at ``(kb*M + m)``;
* top: entry ``(nb, k)`` = ``B[k, nb*C + j]`` over ``j``, at ``(nb*K + k)``;
* result: entry ``(nb, m)`` = ``C[m, nb*C + j]`` over ``j``, at ``(nb*M + m)``.
IS is WS with the roles swapped (``A^T`` in top, ``B^T`` in left; the result holds ``C^T``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..errors import UsageError
from ..generators.accel.isa import DmaInstr
from ..hdl.fields import pack_struct, struct_fields
from ..generators.systolic import OPCODES
from ..generators.systolic.config import SystolicConfig
from ..generators.systolic.engine import DATAFLOW_CODES, GemmInstr, window_layout
from ..generators.systolic.layout import _tiles_along, pack_words, unpack_acc
from ..generators.systolic.model import cycles as gemm_cycles
from .memory import Buffer
from .program import Deps
from .ranges import check_policy, fit_int

__all__ = [
    "matmul",
    "plan",
    "plan_dma",
    "Plan",
    "gemm_instr",
    "default_dataflow",
    "upload",
    "Packed",
    "gemm_program",
    "plan_traffic",
    "choose",
]

_MAX_DIM = 65535  # an instruction's M, N, K fields are 16 bits; the host tiles larger shapes
# Words per cycle the DMA achieves on an engine's window port when loads and stores share it
# (measured on the simulated board: 2,048 words per chunk took 2,365 cycles, 0.87 words/cycle).
DMA_EFFICIENCY = 0.85
_ROW_WORDS_MAX = (1 << struct_fields(DmaInstr)["row_words"][1]) - 1  # a DMA transfer's row


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def gemm_instr(dataflow: str, m: int, k: int, n: int, *, acc: int = 0, left: int = 0,
               top: int = 0, accumulate: bool = False) -> list[int]:  # fmt: skip
    """The 4 instruction words of one GEMM (hardware roles: IS passes M/N swapped)."""
    return pack_struct(GemmInstr, opcode=OPCODES["gemm"], dataflow=DATAFLOW_CODES[dataflow],
                       accumulate=accumulate, m=m, n=n, k=k, acc_base=acc, left_base=left,
                       top_base=top)  # fmt: skip


def default_dataflow(cfg: SystolicConfig) -> str:
    for d in ("os", "ws", "is"):
        if d in cfg.dataflows:
            return d
    raise AssertionError("a config always has a dataflow")


@dataclass(frozen=True)
class Plan:
    """Tile sizes in hardware roles: output tiles mt x nt, K chunks of kc; ``acc_bufs`` output
    tiles in the accumulator at once (2: the next tile accumulates while the last one is
    stored; 1: tiles twice as large, each store waited for). ``split``: the last tile's last
    K chunk runs as that many GEMMs over its column blocks, each stored as soon as it is done,
    so the program's final store overlaps the rest of that chunk's compute instead of
    following all of it (:func:`split_cols`); ``split_tiles``: the last that many tiles are
    split so (their stores start earlier and do not pile up at the end). ``head``: the
    program's first K chunk is cut in two, ``head`` then ``kc - head``, so the first GEMM
    waits for a smaller load.
    ``snake``: the tiles go back and forth along N (boustrophedon) and every other tile takes
    its K chunks in reverse, so each tile starts on the K chunk its predecessor ended on and
    one of the two operand panels is already in the scratchpad (:func:`panel_reuse`)."""

    mt: int
    nt: int
    kc: int
    acc_bufs: int = 2
    split: int = 1
    head: int = 0
    snake: bool = False
    split_tiles: int = 1

    def chunks(self, m: int, k: int, n: int):
        """(m0, n0, k0, tile_index, first_chunk, last_chunk, chunk_k) in issue order."""
        tile = 0
        for row, m0 in enumerate(range(0, m, self.mt)):
            cols = list(range(0, n, self.nt))
            for n0 in cols[::-1] if self.snake and row % 2 else cols:
                bounds = list(range(0, k, self.kc))
                if tile == 0 and 0 < self.head < min(self.kc, k):
                    bounds.insert(1, self.head)
                bounds.append(k)
                ranges = list(zip(bounds, bounds[1:]))
                if self.snake and tile % 2:
                    ranges.reverse()
                for j, (k0, k1) in enumerate(ranges):
                    yield m0, n0, k0, tile, j == 0, j + 1 == len(ranges), k1 - k0
                tile += 1

    def gemms(self, m: int, k: int, n: int, cols: int):
        """(mt, kc, nt) of each GEMM instruction the plan's program issues, in order, when it
        stores its result (on an array of ``cols`` columns: the last chunk's column parts
        included; a result kept in the accumulator is never split)."""
        chunks = list(self.chunks(m, k, n))
        n_tiles = chunks[-1][3] + 1 if chunks else 0
        for m0, n0, _, tile, _, last, kc in chunks:
            mt, nt = min(self.mt, m - m0), min(self.nt, n - n0)
            split = self.split if last and tile >= n_tiles - self.split_tiles else 1
            for _, cn in split_cols(nt, cols, split):
                yield mt, kc, cn


def panel_reuse(chunks: list, p: Plan, m: int, n: int) -> list[tuple[int, int, bool, bool]]:
    """Per chunk of :meth:`Plan.chunks`: (left half, top half, load left, load top).

    An operand panel the previous chunk already has in the scratchpad (the same rows, columns
    and K range) is not loaded again and is read from the half it is in; a panel that is
    loaded goes to the half its predecessor does not use. A load therefore only ever
    overwrites a half that chunk ``i - 2`` or earlier read, which the program's tokens already
    wait for."""
    out, prev = [], None
    for m0, n0, k0, _, _, _, kc in chunks:
        lkey = (m0, min(p.mt, m - m0), k0, kc)
        tkey = (n0, min(p.nt, n - n0), k0, kc)
        if prev is None:
            out.append((0, 0, True, True))
        else:
            (pl, pt), (lb, tb, _, _) = prev, out[-1]
            out.append((lb if pl == lkey else 1 - lb, tb if pt == tkey else 1 - tb,
                        pl != lkey, pt != tkey))  # fmt: skip
        prev = (lkey, tkey)
    return out


def split_cols(nt: int, cols: int, split: int) -> list[tuple[int, int]]:
    """(first column, columns) of the ``split`` GEMMs a chunk of ``nt`` columns runs as: whole
    column blocks of ``cols``, as even as they go (fewer parts when there are fewer blocks)."""
    blocks = _ceil(nt, cols)
    parts = max(1, min(split, blocks))
    out, b0 = [], 0
    for j in range(parts):
        nb = blocks // parts + (j < blocks % parts)
        c0 = b0 * cols
        out.append((c0, min(nt, (b0 + nb) * cols) - c0))
        b0 += nb
    return out


def plan(m: int, k: int, n: int, dataflow: str, cfg: SystolicConfig) -> Plan:
    """Largest tiles whose operands fit half a scratchpad and results half the accumulator."""
    R, C = cfg.rows, cfg.cols
    half, acc_half = cfg.spad_depth // 2, cfg.acc_depth // 2
    if dataflow == "os":
        kc = min(k, half)
        mt = min(m, (half // kc) * R)
        nt = min(n, (half // kc) * C)
    else:
        kc = min(k, (half // R) * R) if k > half else k
        nt = min(n, (half // kc) * C)
        mt = min(m, half // _ceil(kc, R))
    mt = min(mt, acc_half, _MAX_DIM)
    nt = min(nt, max(C, (acc_half // mt) * C), _MAX_DIM // C * C)
    while _ceil(nt, C) * mt > acc_half:
        mt = max(1, acc_half // _ceil(nt, C))
    if dataflow == "os":
        mt = max(R, mt // R * R) if mt >= R else mt
    # balance: the same number of tiles, evenly sized (a sliver of a last tile pays a whole
    # fold's minimum period); rounded up to the array's granularity, never above the limit
    mt = _balanced(m, max(1, mt), R if dataflow == "os" else 1)
    nt = _balanced(n, max(1, nt), C)
    kc = _balanced(k, max(1, kc), 1 if dataflow == "os" else R)
    return Plan(mt=mt, nt=nt, kc=kc)


def _balanced(total: int, limit: int, grain: int) -> int:
    """The smallest tile (a multiple of ``grain`` where possible) giving ceil(total/limit) tiles."""
    tiles = _ceil(total, limit)
    size = _ceil(total, tiles)
    rounded = _ceil(size, grain) * grain
    return rounded if rounded <= limit else size


def _check_operands(a, b, cfg: SystolicConfig, single: str | None = None, *,
                    policy: str = "error", op: str = "matmul") -> list[torch.Tensor]:  # fmt: skip
    """Type and shape checks; returns the operands as int64 in the engine's format (the
    range policy applied)."""
    fmt = cfg.fmt
    fitted = []
    want = {"int8": "torch.int8", "uint8": "torch.uint8", "int16": "torch.int16"}.get(
        fmt.name, "an integer dtype"
    )
    pairs = ((single, a),) if single else (("a", a), ("b", b))
    for name, t in pairs:
        if not isinstance(t, torch.Tensor):
            raise UsageError(f"{name} must be a torch tensor, not {type(t).__name__}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise UsageError(
                f"{name} must be an integer tensor ({want} for this {fmt.name} engine), "
                f"not {t.dtype}"
            )
        if t.dim() != 2:
            raise UsageError(f"{name} must be 2-D (rows x columns), not {t.dim()}-D {tuple(t.shape)}")
    if not single and a.shape[1] != b.shape[0]:
        raise UsageError(
            f"a and b do not chain: a is {a.shape[0]}x{a.shape[1]}, b is "
            f"{b.shape[0]}x{b.shape[1]} (a's columns must equal b's rows)"
        )
    return [fit_int(t, fmt, policy, op=op, name=name) for name, t in pairs]



# ---- operands in device memory ----------------------------------------------------------------


@dataclass(frozen=True)
class Packed:
    """How a buffer holds a systolic operand or result (``Buffer.layout``)."""

    role: str  # "left", "top" or "result"
    dataflow: str  # the hardware dataflow the layout is for ("os" or "ws"; IS uses "ws")
    rows: int  # hardware-role matrix shape: left is (M, K), top is (K, N), result is (M, N)
    cols: int
    transposed: bool = False  # the logical tensor is the transpose (IS)

    def unpack_from(self, buf: Buffer) -> torch.Tensor:
        return self.unpack(buf.read_raw(), _systolic_config(buf.dev))

    def unpack(self, raw: np.ndarray, cfg: SystolicConfig) -> torch.Tensor:
        if self.role != "result":
            raise UsageError("only results can be read back from their packed layout")
        acc = window_layout(cfg)["acc"]
        out = unpack_acc(raw.view("<u4"), self.rows, self.cols, cfg, acc.stride)
        out = out.t() if self.transposed else out
        dtype = torch.int32 if cfg.acc_width <= 32 else torch.int64
        return out.contiguous().to(dtype)


def _entries(t: torch.Tensor, role: str, df: str, cfg: SystolicConfig) -> torch.Tensor:
    """(entries, elements) of a hardware-role operand in its panel order."""
    if role == "top":
        return _tiles_along(t, cfg.cols).reshape(-1, cfg.cols)
    if df == "os":
        return _tiles_along(t.t(), cfg.rows).reshape(-1, cfg.rows)
    m, k = t.shape
    kt = _ceil(k, cfg.rows)
    padded = torch.zeros((m, kt * cfg.rows), dtype=t.dtype)
    padded[:, :k] = t
    return padded.reshape(m, kt, cfg.rows).permute(1, 0, 2).reshape(-1, cfg.rows)


def _hw_df(df: str) -> str:
    return "ws" if df == "is" else df


def upload(dev, t: torch.Tensor, role: str, dataflow: str, *, label: str = "",
           range: str = "error", op: str = "upload") -> Buffer:  # fmt: skip
    """Pack a logical operand into device memory for ``dataflow``; returns the resident buffer.

    ``role`` is the operand's place in ``a @ b``: ``"a"`` or ``"b"``. Keep the buffer to reuse
    a weight across calls (``dev.matmul(x, w_buf)``); free it when done. Values outside the
    engine's format raise, or with ``range="saturate"`` are clamped and reported
    (``host/ranges.py``).
    """
    cfg = _systolic_config(dev)
    (t,) = _check_operands(t, t.t() if role == "a" else t, cfg, single=role,
                           policy=check_policy(range), op=op)  # fmt: skip
    df = dataflow
    # hardware roles: IS swaps the operands and transposes them
    if df == "is":
        hw_role, ht = ("top", t.t()) if role == "a" else ("left", t.t())
    else:
        hw_role, ht = ("left", t) if role == "a" else ("top", t)
    win = window_layout(cfg)[hw_role]
    ent = _entries(ht.to(torch.int64), hw_role, _hw_df(df), cfg)
    words = pack_words(ent, cfg.fmt.width, win.width // 32, win.stride)
    buf = dev.alloc((words.size,), torch.int32, label=label or f"systolic {role}")
    buf.write_raw(words)
    r, c = ht.shape
    buf.layout = Packed(role=hw_role, dataflow=df, rows=r, cols=c)
    return buf


# ---- planning from the cycle and traffic models -------------------------------------------------


def _candidates(limit: int, grain: int) -> list[int]:
    out = {min(limit, _ceil(limit, grain) * grain)}
    v = grain
    while v < limit:
        out.add(v)
        v *= 2
    return sorted(x for x in out if x >= 1)


REFINE_BUDGET = 100_000  # simulated cycles plan_dma may spend timing plain tilings exactly
VARIANT_BUDGET = 150_000  # and the splits and heads of the fastest of them
DESCENT_BUDGET = 250_000  # then the order and split tiles of the fastest (:func:`_descend`)
REFINE_MAX = 16  # candidates it times at most


@lru_cache(maxsize=4096)
def plan_dma(m: int, k: int, n: int, dataflow: str, cfg: SystolicConfig, acfg=None) -> tuple:
    """(Plan, predicted cycles) minimising the program time (hardware roles).

    A closed form ranks the candidate plans: per chunk the program takes the longer of its GEMM
    (the exact cycle model) and its DMA traffic (load words + its share of the tile's store
    words over the window port at ``DMA_EFFICIENCY`` words per cycle, ``mem_cycles_per_beat``
    per word in device memory); the first chunk's loads and the last tile's stores are not
    overlapped. With the device's config ``acfg`` and a best estimate under ``REFINE_BUDGET``
    cycles, the best ``REFINE_MAX`` plain tilings (as many as the budget covers) are then
    timed by the cycle-level program model (:func:`gatesmith.host.timing.gemm_program_cycles`,
    exact on the board), then the ``split``/``head`` variants of the fastest (within
    ``VARIANT_BUDGET``), and the fastest of all wins: on small GEMMs the closed form's pick is
    up to ~30% slower than the best (8x8, 64^3: 10,485 -> 8,130 cycles). The cycles returned
    are then the exact model's.
    """
    R, C = cfg.rows, cfg.cols
    lay = window_layout(cfg)
    half = cfg.spad_depth // 2
    beat = 1 if acfg is None else acfg.mem_cycles_per_beat
    ls, ts, as_ = lay["left"].stride, lay["top"].stride, lay["acc"].stride
    hw = _hw_df(dataflow)
    ranked = {}
    for bufs in (2, 1):
        acc_room = cfg.acc_depth // bufs
        for mt in _candidates(min(m, acc_room), R if hw == "os" else 1):
            for nt in _candidates(n, C):
                if _ceil(nt, C) * mt > acc_room or mt > _MAX_DIM or nt > _MAX_DIM:
                    continue
                for kc in _candidates(k, 1 if hw == "os" else R):
                    if hw == "os":
                        left_e = _ceil(mt, R) * kc
                    else:
                        left_e = _ceil(kc, R) * mt
                    if left_e > half or _ceil(nt, C) * kc > half or kc > _MAX_DIM:
                        continue
                    p = Plan(mt=_balanced(m, mt, R if hw == "os" else 1), nt=_balanced(n, nt, C),
                             kc=_balanced(k, kc, 1 if hw == "os" else R), acc_bufs=bufs)  # fmt: skip
                    g = 1 if hw == "os" else R
                    for split in _splits(_sizes(n, p.nt)[-1][0], C):
                        for head in _heads(p.kc, k, g, (4, 2)):
                            q = dataclasses.replace(p, split=split, head=head)
                            if q not in ranked:
                                ranked[q] = _model(q, m, k, n, hw, cfg, ls, ts, as_, beat)
    if not ranked:
        p = plan(m, k, n, dataflow, cfg)
        return p, _model(p, m, k, n, hw, cfg, ls, ts, as_, beat)
    order = sorted(ranked.items(), key=lambda pc: pc[1])  # stable: ties keep the search order
    best = order[0]
    if acfg is not None and best[1] <= REFINE_BUDGET:
        from .timing import gemm_program_cycles

        def time_all(cands, budget, timed):
            for p, cost in cands:
                if timed and cost > budget:
                    break
                exact = gemm_program_cycles(m, k, n, hw, p, cfg, acfg)
                if exact is None:
                    break
                timed.append((exact, p))
                budget -= exact

        def tiling(p):
            return dataclasses.replace(p, split=1, head=0)

        # the plain tilings in the closed form's order (it ranks tilings well), then every split
        # and head of the fastest of them and of the closed form's best (it ranks those less
        # well), then the order and the split tiles, which only the exact model sees
        timed: list = []
        time_all([pc for pc in order if pc[0] == tiling(pc[0])][:REFINE_MAX], REFINE_BUDGET,
                 timed)  # fmt: skip
        if timed:
            bases = {tiling(order[0][0]), min(timed, key=lambda t: t[0])[1]}
            done = {p for _, p in timed}
            found: list = []
            time_all([pc for pc in order if tiling(pc[0]) in bases and pc[0] not in done],
                     VARIANT_BUDGET, found)  # fmt: skip
            timed += found
        if timed:
            best = _descend(min(timed, key=lambda t: t[0]), {p for _, p in timed}, m, k, n, hw,
                            cfg, acfg)  # fmt: skip
    return best


def _splits(nt: int, cols: int) -> tuple[int, ...]:
    """The ``Plan.split`` values worth trying for a last tile of ``nt`` columns."""
    return (1, 2, 4, 8)[: _ceil(nt, cols).bit_length()]


def _heads(kc: int, k: int, grain: int, fracs) -> list[int]:
    """The ``Plan.head`` values tried: 0 and ``kc / f`` for each ``f`` in ``fracs`` (whole
    ``grain``s, inside the first chunk)."""
    cuts = (kc // f // grain * grain for f in fracs)
    return sorted({0} | {h for h in cuts if 0 < h < min(kc, k)})


def _descend(start, done: set, m, k, n, hw, cfg, acfg) -> tuple:
    """(plan, cycles): from the timed ``start`` (cycles, plan), one group of parameters at a
    time (the tile order with the number of split tiles, then the split, then the head), the
    fastest values of each, all timed by the cycle-level program model within
    ``DESCENT_BUDGET`` cycles."""
    from .timing import gemm_program_cycles

    best, budget = start, DESCENT_BUDGET
    p0 = start[1]
    tiles = _ceil(m, p0.mt) * _ceil(n, p0.nt)
    g = 1 if hw == "os" else cfg.rows
    axes = [
        [dict(snake=s, split_tiles=t) for s in (False, True)[: 1 + (tiles > 1)]
         for t in sorted({1, min(2, tiles), tiles})],
        [dict(split=s) for s in _splits(min(p0.nt, n), cfg.cols)],
        [dict(head=h) for h in _heads(min(p0.kc, k), k, g, (8, 4, 2))],
    ]  # fmt: skip
    for values in axes:
        for v in values:
            q = dataclasses.replace(best[1], **v)
            if q.split == 1:
                q = dataclasses.replace(q, split_tiles=1)  # nothing to split
            if q in done or budget <= 0:
                continue
            done.add(q)
            exact = gemm_program_cycles(m, k, n, hw, q, cfg, acfg)
            if exact is None:
                return best[1], best[0]
            budget -= exact
            if exact < best[0]:
                best = (exact, q)
    return best[1], best[0]


def plan_traffic(p: Plan, m: int, k: int, n: int, hw: str, cfg: SystolicConfig) -> dict:
    """Device-memory words the program of plan ``p`` moves (hardware roles, ``hw`` "os"/"ws"):
    ``load`` (operand panels, once per chunk that does not find them in the scratchpad:
    :func:`panel_reuse`) and ``store`` (results, once per tile), exactly
    as :func:`gemm_program` issues them (the performance counters PERF_LOAD/PERF_STORE count
    the same words)."""
    R, C = cfg.rows, cfg.cols
    lay = window_layout(cfg)
    lw, tw = lay["left"].width // 32, lay["top"].width // 32
    aw = C * _ceil(cfg.acc_width, 32)
    load = store = 0
    chunks = list(p.chunks(m, k, n))
    for (m0, n0, _, _, _, last, kc), (_, _, ll, lt) in zip(chunks, panel_reuse(chunks, p, m, n)):
        mt, nt = min(p.mt, m - m0), min(p.nt, n - n0)
        left = _ceil(mt, R) * kc if hw == "os" else _ceil(kc, R) * mt
        load += ll * left * lw + lt * _ceil(nt, C) * kc * tw
        store += last * _ceil(nt, C) * mt * aw
    return {"load": load, "store": store}


def choose(m: int, k: int, n: int, cfg: SystolicConfig, acfg=None) -> dict:
    """The dataflow and tiles of ``a (m x k) @ b (k x n)`` with the fewest modelled program
    cycles among the built dataflows (ties: fewer device-memory words), from
    :func:`plan_dma`'s cycle and traffic model. Returns a plain dict (saved with a compiled
    model): dataflow, mt/nt/kc (hardware roles), cycles, load/store words and every option's
    cycles."""
    best, options = None, {}
    for df in cfg.dataflows:
        hm, hk, hn = (n, k, m) if df == "is" else (m, k, n)
        p, cyc = plan_dma(hm, hk, hn, df, cfg, acfg)
        t = plan_traffic(p, hm, hk, hn, _hw_df(df), cfg)
        options[df] = cyc
        key = (cyc, t["load"] + t["store"])
        if best is None or key < best[0]:
            best = (key, {"dataflow": df, "mt": p.mt, "nt": p.nt, "kc": p.kc, "cycles": cyc,
                          "load": t["load"], "store": t["store"]})  # fmt: skip
    out = best[1]
    out["options"] = options
    return out


def _sizes(total: int, tile: int) -> list[tuple[int, int]]:
    """(size, count) of the tiles along one dimension: full ones and the remainder."""
    full, rest = divmod(total, tile)
    return [(tile, full)] * (full > 0) + [(rest, 1)] * (rest > 0)


def _model(p: Plan, m, k, n, hw, cfg, ls, ts, as_, beat) -> int:
    R, C = cfg.rows, cfg.cols
    k_chunks = _ceil(k, p.kc)
    total = 0.0
    for mt, cm in _sizes(m, p.mt):
        for nt, cn in _sizes(n, p.nt):
            store = _ceil(nt, C) * mt * as_ * beat / DMA_EFFICIENCY
            for kc, ck in _sizes(k, p.kc):
                left = (_ceil(mt, R) * kc if hw == "os" else _ceil(kc, R) * mt) * ls
                load = (left + _ceil(nt, C) * kc * ts) * beat / DMA_EFFICIENCY
                compute = gemm_cycles(mt, kc, nt, hw, cfg) + 4
                if p.acc_bufs == 1:  # the store does not overlap the next tile's GEMMs
                    total += cm * cn * ck * max(compute, load)
                else:
                    total += cm * cn * ck * max(compute, load + store / k_chunks)
            if p.acc_bufs == 1:
                total += cm * cn * store
    # the first chunk's loads and the last tile's stores are not overlapped
    mt0, nt0, kc0 = min(p.mt, m), min(p.nt, n), min(p.kc, k)
    if 0 < p.head < kc0:  # the first chunk in two: the first GEMM waits for the head's loads
        total += (gemm_cycles(mt0, p.head, nt0, hw, cfg) + gemm_cycles(mt0, kc0 - p.head, nt0,
                  hw, cfg) + 4 - gemm_cycles(mt0, kc0, nt0, hw, cfg))  # fmt: skip
        kc0 = p.head
    left0 = (_ceil(mt0, R) * kc0 if hw == "os" else _ceil(kc0, R) * mt0) * ls
    first = (left0 + _ceil(nt0, C) * kc0 * ts) * beat / DMA_EFFICIENCY
    mt1, nt1 = _sizes(m, p.mt)[-1][0], _sizes(n, p.nt)[-1][0]
    last = _ceil(nt1, C) * mt1 * as_ * beat / DMA_EFFICIENCY
    parts = split_cols(nt1, C, p.split)
    if len(parts) > 1:  # the last chunk in column parts: stores overlap the later parts
        kc1 = _sizes(k, p.kc)[-1][0]
        comp = [gemm_cycles(mt1, kc1, cn, hw, cfg) + 4 for _, cn in parts]
        total += sum(comp) - (gemm_cycles(mt1, kc1, nt1, hw, cfg) + 4)
        last = max(last * parts[-1][1] / nt1, last - sum(comp[1:]))
    return int(total + first + last)


# ---- one program per GEMM ---------------------------------------------------------------------


def gemm_program(dev, left: Buffer, top: Buffer, out: Buffer, p: Plan, hw: str,
                 cfg: SystolicConfig, prog=None):  # fmt: skip
    """Append the double-buffered, token-ordered program of ``out = left @ top`` to ``prog``.

    With ``out=None`` the result stays in the accumulator (rows from 0, as
    :func:`gatesmith.host.chain.acc_tile` reads them) for an on-chip COPY: the plan must then
    have a single output tile."""
    prog = dev.program() if prog is None else prog
    lay = window_layout(cfg)
    lw, tw, aw = lay["left"], lay["top"], lay["acc"]
    half = cfg.spad_depth // 2
    hm, hk = left.layout.rows, left.layout.cols
    hn = top.layout.cols
    R, C = cfg.rows, cfg.cols
    lwords, twords = lw.width // 32, tw.width // 32
    awords = C * _ceil(cfg.acc_width, 32)
    chunks = list(p.chunks(hm, hk, hn))
    n_tiles = chunks[-1][3] + 1 if chunks else 0
    if out is None and n_tiles > 1:
        raise UsageError(f"a result kept in the accumulator must be one tile; {hm}x{hn} takes "
                         f"{n_tiles} tiles of {p.mt}x{p.nt}")  # fmt: skip

    def panels(kind, buf, win, words, stride, first_panel, n_panels, entry0, per_panel,
               panel_entries, win_entry, deps_first, deps_last):  # fmt: skip
        """Load ``n_panels`` panels' entries [entry0, entry0 + per_panel) into the window."""
        ops = []
        if words == stride and per_panel * stride <= _ROW_WORDS_MAX:  # one transfer a panel row
            ops.append(dict(offset=4 * stride * (first_panel * panel_entries + entry0),
                            rows=n_panels, row_words=per_panel * stride,
                            mem_stride=panel_entries * stride,
                            win_addr=win.offset + win_entry * stride,
                            win_stride=per_panel * stride))  # fmt: skip
        else:
            for q in range(n_panels):
                ops.append(dict(offset=4 * stride * ((first_panel + q) * panel_entries + entry0),
                                rows=per_panel, row_words=words, mem_stride=stride,
                                win_addr=win.offset + (win_entry + q * per_panel) * stride,
                                win_stride=stride))  # fmt: skip
        for j, op in enumerate(ops):
            d = Deps(
                pop_next=deps_first.pop_next and j == 0,
                pop_prev=deps_first.pop_prev and j == 0,
                push_next=deps_last.push_next and j == len(ops) - 1,
                push_prev=deps_last.push_prev and j == len(ops) - 1,
            )
            getattr(prog, kind)("systolic", buf=buf, deps=d, **op)

    reuse = panel_reuse(chunks, p, hm, hn)

    def loads(i):
        m0, n0, k0, _, _, _, kc = chunks[i]
        mt, nt = min(p.mt, hm - m0), min(p.nt, hn - n0)
        lbuf, tbuf, load_left, load_top = reuse[i]
        if hw == "os":
            left_args = (left, lw, lwords, lw.stride, m0 // R, _ceil(mt, R), k0, kc, hk)
        else:
            left_args = (left, lw, lwords, lw.stride, k0 // R, _ceil(kc, R), m0, mt, hm)
        todo = [("load", *left_args, lbuf * half)] * load_left + [
            ("load", top, tw, twords, tw.stride, n0 // C, _ceil(nt, C), k0, kc, hk, tbuf * half)
        ] * load_top
        for j, args in enumerate(todo):
            panels(*args, Deps(pop_next=i >= 2 and j == 0),
                   Deps(push_next=j + 1 == len(todo)))  # fmt: skip

    if chunks:
        loads(0)
    for i, (m0, n0, k0, tile, first, last, kc) in enumerate(chunks):
        if i + 1 < len(chunks):
            loads(i + 1)
        mt, nt = min(p.mt, hm - m0), min(p.nt, hn - n0)
        nb = p.acc_bufs
        acc_base = (tile % nb) * (cfg.acc_depth // nb)
        store = last and out is not None
        # the last chunk of the program's last split_tiles tiles in column parts, each stored
        # while the next one computes
        split = store and tile >= n_tiles - p.split_tiles
        parts = split_cols(nt, C, p.split) if split else [(0, nt)]
        for j, (c0, cn) in enumerate(parts):
            q0, end = c0 // C, j + 1 == len(parts)
            prog.instr(
                gemm_instr(hw, mt, kc, cn, acc=acc_base + q0 * mt, left=reuse[i][0] * half,
                           top=reuse[i][1] * half + q0 * kc, accumulate=not first),  # fmt: skip
                deps=Deps(pop_prev=j == 0,
                          pop_next=j == 0 and first and tile >= nb and out is not None,
                          push_prev=end and i + 2 < len(chunks), push_next=store),
                what=f"GEMM {hw} {mt}x{kc}x{cn} (tile {tile}, k0 {k0}"
                + (f", columns {c0}..{c0 + cn - 1})" if len(parts) > 1 else ")"),
            )
            if store:
                panels("store", out, aw, awords, aw.stride, n0 // C + q0, _ceil(cn, C), m0, mt,
                       hm, acc_base + q0 * mt, Deps(pop_prev=True),
                       Deps(push_prev=end and tile + nb < n_tiles))  # fmt: skip
    return prog


def _systolic_config(dev) -> SystolicConfig:
    cfg = dev.config.engine("systolic")
    if cfg is None:
        have = ", ".join(type(e).kind for e in dev.config.engines)
        raise UsageError(f"this accelerator has no systolic engine (it has: {have})")
    return cfg


def _operand(dev, x, role: str, df: str, cfg, temps: list, policy: str) -> Buffer:
    """A packed buffer for operand ``x`` (a tensor, or a buffer already packed for ``df``)."""
    if isinstance(x, Buffer):
        lay = x.layout
        if isinstance(lay, Packed) and lay.dataflow == df and lay.role != "result":
            return x
        if lay is not None:
            raise UsageError(
                f"{role} is a device buffer packed for {getattr(lay, 'dataflow', '?')} "
                f"{getattr(lay, 'role', '?')}; this matmul needs one packed for {df} "
                f"(upload it with dataflow={df!r})"
            )
        x = x.read()
    buf = upload(dev, x, role, df, range=policy, op="matmul")
    temps.append(buf)
    return buf


def matmul(dev, a, b, *, dataflow: str | None = None, out: str = "host", range: str = "error"):
    """``a @ b`` on the device's systolic engine.

    ``a`` (M x K) and ``b`` (K x N) are integer tensors whose values fit the engine's format
    (int8 by default), or device buffers from :func:`upload` (``dev.upload(w, "b",
    dataflow=...)``: a weight packed once and kept resident). Returns a torch.int32 tensor
    (int64 when acc_width > 32) equal to ``a.long() @ b.long()`` reduced modulo
    ``2**acc_width`` (equal outright when no partial sum overflows the accumulator); with
    ``out="device"`` it returns the result's device buffer instead (``.read()`` gives the
    tensor). ``dataflow`` picks one of the built-in dataflows (default: os if built, else ws,
    else is). Operand values outside the engine's format raise, or with ``range="saturate"``
    are clamped and reported (``host/ranges.py``).
    """
    cfg = _systolic_config(dev)
    policy = check_policy(range)
    df = dataflow or default_dataflow(cfg)
    if df not in DATAFLOW_CODES:
        raise UsageError(f"dataflow must be one of os, ws, is, not {df!r}")
    if df not in cfg.dataflows:
        raise UsageError(
            f"dataflow {df!r} is not built into this accelerator "
            f"(built: {', '.join(cfg.dataflows)})"
        )
    if out not in ("host", "device"):
        raise UsageError(f"out must be 'host' or 'device', not {out!r}")
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        a, b = _check_operands(a, b, cfg, policy=policy)
    M, K = _logical_shape(a, "a")
    K2, N = _logical_shape(b, "b")
    if K != K2:
        raise UsageError(
            f"a and b do not chain: a is {M}x{K}, b is {K2}x{N} (a's columns must equal b's rows)"
        )
    out_dtype = torch.int32 if cfg.acc_width <= 32 else torch.int64
    if 0 in (M, K, N):
        z = torch.zeros((M, N), dtype=out_dtype)
        return z
    temps: list[Buffer] = []
    try:
        la = _operand(dev, a, "a", df, cfg, temps, policy)
        lb = _operand(dev, b, "b", df, cfg, temps, policy)
        left, top = (lb, la) if df == "is" else (la, lb)
        hw = _hw_df(df)
        hm, hk, hn = left.layout.rows, left.layout.cols, top.layout.cols
        p, _ = plan_dma(hm, hk, hn, df, cfg, dev.config)
        acc = window_layout(cfg)["acc"]
        res = dev.alloc((_ceil(hn, cfg.cols) * hm * acc.stride,), torch.int32, label="systolic result")
        res.layout = Packed(role="result", dataflow=df, rows=hm, cols=hn, transposed=df == "is")
        prog = gemm_program(dev, left, top, res, p, hw, cfg)
        try:
            prog.run()
        except BaseException:
            # interrupted or failed: the buffers go when the program has finished
            prog.temporaries += [*temps, res]
            if not res.busy:
                res.free()
            raise
        if out == "device":
            return res
        with res:
            return res.layout.unpack(res.read_raw(), cfg)
    finally:
        for t in temps:
            if not t.freed and not t.busy:
                t.free()


def _logical_shape(x, name: str) -> tuple[int, int]:
    if isinstance(x, Buffer):
        lay = x.layout
        if isinstance(lay, Packed) and lay.role != "result":
            r, c = lay.rows, lay.cols
            # IS buffers hold the transpose of the logical operand
            return (c, r) if lay.dataflow == "is" else (r, c)
        if len(x.shape) != 2:
            raise UsageError(f"{name} must be a 2-D buffer, not {x.shape}")
        return x.shape
    if not isinstance(x, torch.Tensor):
        raise UsageError(f"{name} must be a torch tensor or a device buffer, not {type(x).__name__}")
    if x.dim() != 2:
        raise UsageError(f"{name} must be 2-D (rows x columns), not {x.dim()}-D {tuple(x.shape)}")
    return tuple(x.shape)
