"""Host side of the PIM GEMV engine: a weight mapper and a driver for resident weights.

Mapping (PIM-GPT's two partitions, on all-bank lockstep hardware). A weight matrix ``w [n, k]``
is cut into row-sized segments (``kseg = ceil(k / row_size)`` per output). A *pass* splits each
output's segments into ``parts`` parts of ``S = ceil(kseg / parts)`` segments; bank
``b = q * parts + g`` computes part ``g`` of output ``q`` of each round:

* ``parts = 1``: **row partition**, every bank owns whole outputs, no reduction;
* ``parts > 1``: **column partition**, banks hold slices of one output's row and the host adds
  the partial sums (in int64, then wrapped to the accumulator: exact, as wrapping commutes with
  addition). The engine reads the vector at a per-bank segment offset (``xoff``).

:func:`plan_gemv` tries the row partition, column partitions and a hybrid (row partition for the
outputs that fill every bank, column partition for the remainder) and keeps the one with the
fewest cycles by the exact cycle model (``strategy="col"`` falls back to rows when nothing can be
split: one bank, or one segment), so shapes that are not multiples of banks, lanes or the
row size still keep the banks busy.

Driver: ``h = load_weights(dev, w)`` writes the banks once (weights stay resident); then
``gemv(dev, x, h)`` per call writes only ``x`` and reads the results. ``gemv(dev, x, w)`` is a
one-off. Integer tensors give the exact result: int32 for ``acc_width <= 32``, else int64.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UsageError
from ..generators.engine import ErrorCode
from ..generators.pim.cycles import schedule
from ..generators.pim.isa import GemvInstr
from ..generators.pim.model import pack_operands, unpack_results
from .ranges import check_policy, fit_int

__all__ = ["Pass", "Plan", "plan_gemv", "placements", "bank_images", "load_weights", "gemv",
           "WeightHandle", "STRATEGIES"]  # fmt: skip

STRATEGIES = ("auto", "row", "col")


@dataclass(frozen=True)
class Pass:
    """``count`` outputs from ``first`` on, each cut into ``parts`` parts of ``segments``."""

    first: int
    count: int
    parts: int
    segments: int
    cols_last: int
    row: int  # first weight-array row (the same in every bank)
    banks: int

    @property
    def per_round(self) -> int:
        return self.banks // self.parts

    @property
    def rounds(self) -> int:
        return -(-self.count // self.per_round)

    @property
    def rows(self) -> int:
        return self.rounds * self.segments

    @property
    def xoff(self) -> list[int]:
        """Vector segment offset of each bank (its part's first segment)."""
        used = self.per_round * self.parts
        return [(b % self.parts) * self.segments if b < used else 0 for b in range(self.banks)]

    def instrs(self, max_rounds: int) -> list[tuple[int, GemvInstr]]:
        """(first round, instruction) chunks of at most ``max_rounds`` rounds (result slots)."""
        out = []
        for p0 in range(0, self.rounds, max_rounds):
            rounds = min(max_rounds, self.rounds - p0)
            out.append((p0, GemvInstr(
                rounds=rounds, segments=self.segments, cols_last=self.cols_last,
                w_row=self.row + p0 * self.segments, col_mode=self.parts > 1)))  # fmt: skip
        return out


@dataclass(frozen=True)
class Plan:
    n: int
    k: int
    passes: tuple[Pass, ...]
    cycles: int  # engine cycles of all instructions, by the cycle model
    strategy: str

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.passes)


def _cols_needed(cfg, length: int) -> int:
    return -(-length // (cfg.lanes * cfg.burst))


def _make_pass(cfg, k, first, count, parts, row) -> Pass | None:
    kseg = -(-k // cfg.row_size)
    s = -(-kseg // parts)
    if parts > cfg.banks or parts * s > cfg.vector_segments or s * (parts - 1) >= kseg:
        return None  # a part would be empty or the offsets would leave the vector buffer
    # columns of each part's last local segment: a full row unless it is the matrix's last
    # segment (cut to what k needs) or padding past the end (any count reads zeros: take 1)
    cols_last = 1
    for g in range(parts):
        seg = g * s + s - 1
        if seg < kseg - 1:
            cols_last = cfg.cols_per_row
        elif seg == kseg - 1:
            cols_last = max(cols_last, _cols_needed(cfg, k - seg * cfg.row_size))
    return Pass(first, count, parts, s, cols_last, row, cfg.banks)


def _plan_cycles(cfg, passes) -> int:
    total = 0
    for ps in passes:
        for _, instr in ps.instrs(cfg.result_depth):
            sch = schedule(cfg, instr, ps.xoff)
            assert sch.error == ErrorCode.NONE, (instr, sch.error)
            total += sch.done
    return total


def plan_gemv(cfg, n: int, k: int, *, strategy: str = "auto", row: int = 0) -> Plan:
    """The mapping of an ``n x k`` weight matrix onto ``cfg``'s banks (see module docstring).

    Rows ``row ..`` of every bank are used; plans that do not fit the banks are not considered.
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if n < 1 or k < 1:
        raise UsageError(f"weights must have at least one row and column, not shape ({n}, {k})")
    if k > cfg.vector_depth:
        raise UsageError(
            f"weights have {k} columns but the engine's vector buffer holds {cfg.vector_depth}"
        )
    b = cfg.banks
    cands = []
    if strategy in ("auto", "row"):
        cands.append(("row", [_make_pass(cfg, k, 0, n, 1, row)]))
    if strategy in ("auto", "col"):
        for parts in range(2, b + 1):
            cands.append(("col", [_make_pass(cfg, k, 0, n, parts, row)]))
    if strategy == "auto" and n > b and n % b:
        main = _make_pass(cfg, k, 0, n - n % b, 1, row)
        for parts in range(2, b // (n % b) + 1):
            tail = _make_pass(cfg, k, n - n % b, n % b, parts, row + main.rows)
            cands.append(("auto", [main, tail]))
    if strategy == "col" and all(None in passes for _, passes in cands):
        cands.append(("row", [_make_pass(cfg, k, 0, n, 1, row)]))  # nothing to split
    best, need = None, None
    for name, passes in cands:
        if any(p is None for p in passes):
            continue
        rows = sum(p.rows for p in passes)
        if row + rows > cfg.rows_per_bank:
            need = rows if need is None else min(need, rows)
            continue
        cyc = _plan_cycles(cfg, passes)
        if best is None or cyc < best.cycles:
            best = Plan(n, k, tuple(passes), cyc, name)
    if best is None:
        raise UsageError(
            f"w needs {need} rows per bank but only {cfg.rows_per_bank - row} of "
            f"{cfg.rows_per_bank} are free"
        )
    return best


def placements(cfg, plan: Plan):
    """Yield ``(bank, row, n, k0, length)``: ``w[n, k0:k0+length]`` sits at the start of that row."""
    kseg = -(-plan.k // cfg.row_size)
    for ps in plan.passes:
        for p in range(ps.rounds):
            for q in range(ps.per_round):
                out = p * ps.per_round + q
                if out >= ps.count:
                    continue
                for g in range(ps.parts):
                    for s in range(ps.segments):
                        seg = g * ps.segments + s
                        if seg >= kseg:
                            continue
                        k0 = seg * cfg.row_size
                        yield (q * ps.parts + g, ps.row + p * ps.segments + s, ps.first + out,
                               k0, min(cfg.row_size, plan.k - k0))  # fmt: skip


def bank_images(cfg, plan: Plan, w: torch.Tensor) -> np.ndarray:
    """The plan's rows of every bank: int64 ``[banks, plan.rows, row_size]``, zero padded."""
    base = min(ps.row for ps in plan.passes)
    img = np.zeros((cfg.banks, plan.rows, cfg.row_size), dtype=np.int64)
    wn = w.to(torch.int64).numpy()
    for bank, row, n, k0, length in placements(cfg, plan):
        img[bank, row - base, :length] = wn[n, k0 : k0 + length]
    return img


# -- driver ---------------------------------------------------------------------------------------


@dataclass
class WeightHandle:
    """Weights resident in the engine's banks (from :func:`load_weights`)."""

    plan: Plan
    shape: tuple[int, int]
    dtype: torch.dtype
    _owner: object = field(repr=False, default=None)


@dataclass
class _DevState:
    next_row: int = 0
    xoff: tuple | None = None


_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _dev_state(dev) -> _DevState:
    if dev not in _STATE:
        _STATE[dev] = _DevState()
    return _STATE[dev]


def _pim_config(dev):
    cfg = dev.config.engine("pim")
    if cfg is None:
        have = ", ".join(type(e).kind for e in dev.config.engines)
        raise UsageError(f"dev has no pim engine (it has: {have})")
    return cfg


def _check_int_tensor(name, t, cfg, ndim, policy, op):
    """``t`` as int64 in the engine's format (the range policy applied)."""
    if not isinstance(t, torch.Tensor):
        raise UsageError(f"{name} must be a torch.Tensor, not {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise UsageError(f"{name} must be an integer tensor ({cfg.dtype} values), not {t.dtype}")
    if t.dim() != ndim:
        raise UsageError(f"{name} must have {ndim} dimension(s), not shape {tuple(t.shape)}")
    return fit_int(t, cfg.fmt, policy, op=op, name=name)


def _word(cfg, region: str, entry: int) -> int:
    win = cfg.windows()[region]
    return win.offset + entry * win.stride


def load_weights(dev, w: torch.Tensor, *, strategy: str = "auto",
                 range: str = "error") -> WeightHandle:  # fmt: skip
    """Place ``w [n, k]`` (integers in the engine's format) in the banks; returns a handle.

    The rows are taken from a per-device allocator, so several matrices stay resident together.
    On a device with device memory the bank images go there first and one program LOADs them
    into the banks by DMA. Values outside the engine's format raise, or with
    ``range="saturate"`` are clamped and reported (``host/ranges.py``).
    """
    policy = check_policy(range)
    return _load_weights(dev, w, strategy, policy)


def _load_weights(dev, w, strategy: str, policy: str) -> WeightHandle:
    cfg = _pim_config(dev)
    dtype = w.dtype if isinstance(w, torch.Tensor) else None
    w = _check_int_tensor("w", w, cfg, 2, policy, "load_weights")
    st = _dev_state(dev)
    plan = plan_gemv(cfg, w.shape[0], w.shape[1], strategy=strategy, row=st.next_row)
    img = bank_images(cfg, plan, w)
    base = dev.window_base("pim")
    images = [pack_operands(img[b].ravel(), cfg) for b in range(cfg.banks)]
    entries = [(b * cfg.rows_per_bank + st.next_row) * cfg.words_per_row for b in range(cfg.banks)]
    if hasattr(dev, "program"):
        words = np.concatenate(images)
        with dev.alloc((words.size,), torch.int32, label="pim weights") as buf:
            buf.write_raw(words)
            prog, off = dev.program(), 0
            for b, im in enumerate(images):
                prog.load("pim", win_addr=_word(cfg, "weights", entries[b]), buf=buf,
                          offset=4 * off, row_words=im.size)  # fmt: skip
                off += im.size
            prog.run()
    else:
        for b, im in enumerate(images):
            dev.write(base + 4 * _word(cfg, "weights", entries[b]), im)
    st.next_row += plan.rows
    return WeightHandle(plan, tuple(w.shape), dtype, dev)


def gemv(dev, x, w, *, range: str = "error") -> torch.Tensor:
    """``w @ x`` on the PIM engine; ``w`` is a :class:`WeightHandle` or an integer tensor;
    ``x`` an integer vector, or a device buffer holding one.

    Returns int32 (``acc_width <= 32``) or int64, equal to the integer product wrapped to the
    accumulator width. On a device with device memory one program does the whole GEMV: the
    vector is LOADed into the engine, each GEMV instruction's results STOREd to device memory
    while the next one runs on the other rows (column partitions are summed by the host).
    ``range``: "error" or "saturate" for values of ``x`` (and a matrix ``w``) outside the
    engine's format (``host/ranges.py``).
    """
    from .memory import Buffer

    cfg = _pim_config(dev)
    policy = check_policy(range)
    if isinstance(w, torch.Tensor):
        st = _dev_state(dev)
        mark = st.next_row
        try:
            return gemv(dev, x, load_weights(dev, w, range=policy), range=policy)
        finally:
            st.next_row = mark  # a one-off matrix does not stay resident
    if not isinstance(w, WeightHandle):
        raise UsageError(f"w must be a WeightHandle or an integer tensor, not {type(w).__name__}")
    if w._owner is not dev:
        raise UsageError("w is a WeightHandle of another device")
    if isinstance(x, Buffer):
        x = x.layout.unpack_from(x) if x.layout is not None else x.read()
    x = _check_int_tensor("x", x, cfg, 1, policy, "gemv")
    plan = w.plan
    if x.shape[0] != plan.k:
        raise UsageError(f"x must have {plan.k} elements to match w {w.shape}, not {x.shape[0]}")
    kpad = -(-plan.k // cfg.row_size) * cfg.row_size
    xv = torch.zeros(kpad, dtype=torch.int64)
    xv[: plan.k] = x.to(torch.int64)
    y = torch.zeros(plan.n, dtype=torch.int64)
    if hasattr(dev, "program"):
        _gemv_program(dev, cfg, plan, pack_operands(xv, cfg), y)
    else:
        base = dev.window_base("pim")
        dev.write(base + 4 * _word(cfg, "vector", 0), pack_operands(xv, cfg))
        for ps in plan.passes:
            _run_pass(dev, cfg, ps, y)
    y = cfg.acc_fmt.wrap(y)
    return y.to(torch.int32) if cfg.acc_width <= 32 else y


def _gather(cfg, ps: Pass, instr_rounds: int, p0: int, vals: torch.Tensor, y: torch.Tensor):
    """Sum one GEMV instruction's result entries into ``y`` (column parts added)."""
    used = ps.per_round * ps.parts
    n_entries = (used - 1) * cfg.result_depth + instr_rounds
    vals = torch.nn.functional.pad(vals[:n_entries], (0, used * cfg.result_depth - n_entries))
    part = vals.reshape(ps.per_round, ps.parts, cfg.result_depth)[:, :, :instr_rounds]
    sums = part.sum(dim=1).T.reshape(-1)  # output index (p0 + p) * per_round + q
    lo = p0 * ps.per_round
    cnt = min(sums.numel(), ps.count - lo)
    y[ps.first + lo : ps.first + lo + cnt] = sums[:cnt]


def _gemv_program(dev, cfg, plan, xwords: np.ndarray, y: torch.Tensor) -> None:
    from .program import Deps

    res = cfg.windows()["results"]
    st = _dev_state(dev)
    jobs = []  # (pass, p0, instr, entries) in program order
    for ps in plan.passes:
        used = ps.per_round * ps.parts
        for p0, instr in ps.instrs(cfg.result_depth):
            jobs.append((ps, p0, instr, (used - 1) * cfg.result_depth + instr.rounds))
    # which GEMVs need new column offsets first (the engine keeps the last ones it was given)
    xoff_loads, state = {}, st.xoff
    for j, (ps, *_rest) in enumerate(jobs):
        if ps.parts > 1 and state != tuple(ps.xoff):
            xoff_loads[j] = state = tuple(ps.xoff)
    in_words = np.concatenate([xwords, *(np.array(v, dtype=np.uint32) for v in xoff_loads.values())])
    out_words = sum(e * res.stride for *_, e in jobs)
    with dev.alloc((in_words.size,), torch.int32, label="pim vector") as bin_, \
            dev.alloc((max(1, out_words),), torch.int32, label="pim results") as bout:  # fmt: skip
        bin_.write_raw(in_words)
        prog = dev.program()
        # tokens: a GEMV waits for its operands' LOAD (the last one before it) and for the STORE
        # of the previous GEMV's results (one result memory); new offsets wait for that GEMV
        prog.load("pim", win_addr=_word(cfg, "vector", 0), buf=bin_, row_words=xwords.size,
                  deps=Deps(push_next=0 not in xoff_loads))  # fmt: skip
        x_off, o_off, offsets = 4 * xwords.size, 0, []
        for j, (_ps, _p0, instr, entries) in enumerate(jobs):
            fresh = j in xoff_loads
            if fresh:
                if j > 0:
                    prog.nop(deps=Deps(push_prev=True))  # after GEMV j-1: the offsets are free
                n_x = len(xoff_loads[j])
                prog.load("pim", win_addr=_word(cfg, "xoff", 0), buf=bin_, offset=x_off,
                          row_words=n_x, deps=Deps(pop_next=j > 0, push_next=True))  # fmt: skip
                x_off += 4 * n_x
            prog.instr(instr.words(), deps=Deps(pop_prev=fresh or j == 0, pop_next=j > 0,
                                                push_next=True), what=f"GEMV {j}")  # fmt: skip
            prog.store("pim", win_addr=res.offset, buf=bout, offset=4 * o_off,
                       row_words=entries * res.stride, deps=Deps(pop_prev=True, push_prev=True))  # fmt: skip
            offsets.append(o_off)
            o_off += entries * res.stride
        prog.nop(deps=Deps(pop_next=bool(jobs)))  # the last store's token
        st.xoff = None  # unknown until the program has finished
        prog.run()
        st.xoff = state
        words = bout.read_raw().view("<u4")
    for (ps, p0, instr, entries), off in zip(jobs, offsets, strict=True):
        vals = unpack_results(words[off : off + entries * res.stride], cfg.acc_width)
        _gather(cfg, ps, instr.rounds, p0, vals, y)


def _run_pass(dev, cfg, ps: Pass, y: torch.Tensor) -> None:
    base = dev.window_base("pim")
    st = _dev_state(dev)
    if ps.parts > 1 and st.xoff != tuple(ps.xoff):
        dev.write(base + 4 * _word(cfg, "xoff", 0), np.array(ps.xoff, dtype=np.uint32))
        st.xoff = tuple(ps.xoff)
    res = cfg.windows()["results"]
    used = ps.per_round * ps.parts
    for p0, instr in ps.instrs(cfg.result_depth):
        dev.execute([instr.words()])
        dev.wait()
        n_entries = (used - 1) * cfg.result_depth + instr.rounds
        words = dev.read(base + 4 * res.offset, n_entries * res.stride)
        _gather(cfg, ps, instr.rounds, p0, unpack_results(words, cfg.acc_width), y)
