"""A timing model of whole programs: predicted PERF_PROGRAM cycles before a program runs.

The engines' cycle models are exact for one instruction; a program adds the controller, the DMA,
the COPY unit and device memory around them, which :mod:`.cyclemodel` steps one clock at a time
as the RTL does. :func:`predict_program` turns a :class:`~gatesmith.host.program.Program`'s
entries into that model's items (DMA bursts, COPY word walks, engine cycles) and runs it.

Measured on the simulated board (``tests/test_timing.py``): GEMM programs in every dataflow,
row programs of the nonlinear engines, fused attention and DMA-only programs give the board's
PERF_PROGRAM count exactly or within a few cycles. The model assumes the simulated board's
memory (``mem_latency``, ``mem_cycles_per_beat``); on a board with another memory controller
it is a model of that memory, not of the board's. Entries it cannot model (an engine with no
cycle model of a whole instruction, e.g. LayerNorm, or a COPY without its COPY_SRC) make the
prediction None.
"""

from __future__ import annotations

from functools import lru_cache

from ..generators.accel.copy import walk_words
from ..generators.accel.isa import WIDTH_CODES, CopyDst, CopySrc, DmaInstr, Op, QUEUE_OF
from ..hdl.fields import struct_fields
from .cyclemodel import Item, dma_bursts, simulate

__all__ = ["predict_program"]

_DMA = struct_fields(DmaInstr)
_SRC = struct_fields(CopySrc)
_DST = struct_fields(CopyDst)
_WIDTH = {v: k for k, v in WIDTH_CODES.items()}


def _field(words, fields, name):
    value = sum(int(w) << (32 * i) for i, w in enumerate(words))
    off, width = fields[name]
    return (value >> off) & ((1 << width) - 1)


def _engine_cycles(dev, words):
    """Cycles of an engine instruction from its engine's cycle model, or None."""
    op = int(words[0]) & 0xFF
    for i, e in enumerate(dev.config.engines):
        kind = type(e).kind
        from ..generators.registry import engine_spec

        spec = engine_spec(kind)
        if op not in spec.opcodes.values():
            continue
        if kind == "systolic":
            from ..generators.systolic.engine import DATAFLOW_CODES, GEMM_FIELDS
            from ..generators.systolic.model import cycles

            f = {n: _field(words, GEMM_FIELDS, n) for n in ("m", "n", "k", "dataflow")}
            df = {v: k for k, v in DATAFLOW_CODES.items()}[f["dataflow"]]
            return cycles(f["m"], f["k"], f["n"], df, e)
        if kind in ("softmax", "gelu"):
            from ..hdl.nonlinear_common import INSTR_FIELDS

            from .chain import engine_model

            n, rows = _field(words, INSTR_FIELDS, "len"), _field(words, INSTR_FIELDS, "rows")
            return engine_model(kind, e).cycles(n, rows)
        return None
    return None


def _copy_side(words, fields, rows, length):
    """Elements in each word of one side's walk of a COPY."""
    return [n for _, n in walk_words(
        addr=0, row_stride=_field(words, fields, "row_stride"), seg=_field(words, fields, "seg"),
        seg_stride=_field(words, fields, "seg_stride"), rows=rows, length=length,
        width=_WIDTH.get(_field(words, fields, "width"), 32))]  # fmt: skip


def program_items(prog, engine_cycles=None) -> list[Item] | None:
    """The cycle model's items of ``prog``'s entries, or None if one cannot be modelled.

    ``engine_cycles``: the cycles of the program's engine instructions, in order, for engines
    whose cycles depend on the data (LayerNorm's do); otherwise from the cycle models."""
    acfg = prog.dev.config
    items, copy_src = [], None
    given = None if engine_cycles is None else iter(engine_cycles)
    for deps, words, _what in prog.entries:
        op = int(words[0]) & 0xFF
        q, hdr = int(QUEUE_OF(op)), deps.word()
        if op in (Op.LOAD, Op.STORE):
            rows, rw = _field(words, _DMA, "rows"), _field(words, _DMA, "row_words")
            bursts = dma_bursts(_field(words, _DMA, "mem_addr"), rows, rw,
                                _field(words, _DMA, "mem_stride"), acfg.mem_max_burst)  # fmt: skip
            items.append(Item(q, hdr, "dma", engine=_field(words, _DMA, "engine"),
                              bursts=bursts, rows=rows, row_words=rw))  # fmt: skip
        elif op == Op.SYNC:
            items.append(Item(q, hdr, "sync"))
        elif op in (Op.NOP, Op.COPY_SRC):
            copy_src = words if op == Op.COPY_SRC else copy_src
            items.append(Item(q, hdr, "nop"))  # both retire at once
        elif op == Op.COPY:
            if copy_src is None:
                return None
            rows, length = _field(words, _DST, "rows"), _field(words, _DST, "len")
            spec = (_field(copy_src, _SRC, "engine"), _copy_side(copy_src, _SRC, rows, length),
                    _field(words, _DST, "engine"), _copy_side(words, _DST, rows, length))
            items.append(Item(q, hdr, "copy", copy=spec))
        else:
            c = _engine_cycles(prog.dev, words) if given is None else next(given, None)
            if c is None:
                return None
            items.append(Item(q, hdr, "engine", cycles=c))
    return items


def predict_program(prog, engine_cycles=None) -> int | None:
    """Predicted PERF_PROGRAM cycles of ``prog`` on its device (see the module docstring;
    ``engine_cycles``: see :func:`program_items`).

    Where the program sits in device memory matters a little (an entry that crosses 4 KiB is
    fetched as two bursts): after a launch the model uses the address it was written to, before
    one it assumes address 0."""
    items = program_items(prog, engine_cycles)
    if items is None:
        return None
    acfg = prog.dev.config
    return simulate(items, queue_depth=acfg.queue_depth, mem_latency=acfg.mem_latency,
                    beat=acfg.mem_cycles_per_beat, max_burst=acfg.mem_max_burst,
                    n_engines=len(acfg.engines), copy_unit=acfg.copy_unit,
                    code_addr=getattr(prog, "code_addr", 0))  # fmt: skip


class _Planned:
    """A device buffer as :func:`~gatesmith.host.systolic.gemm_program` sees it, before any
    exists: an address and the operand's shape."""

    nbytes = 1 << 40

    def __init__(self, addr: int, rows: int, cols: int):
        from types import SimpleNamespace

        self.addr, self.layout = addr, SimpleNamespace(rows=rows, cols=cols)

    def _check(self, use: str) -> None:
        pass


class _PlanningDevice:
    """What a :class:`~gatesmith.host.program.Program` needs of a device to be built and
    predicted (its config), with no board behind it."""

    def __init__(self, acfg):
        self.config = acfg

    def _engine_index(self, kind: str) -> int:
        return self.config.engine_index(kind)


@lru_cache(maxsize=1024)
def gemm_program_cycles(hm: int, hk: int, hn: int, hw: str, plan, cfg, acfg) -> int | None:
    """Predicted PERF_PROGRAM cycles of the program ``dev.matmul`` runs for ``plan`` (hardware
    roles ``hm x hk @ hk x hn``, dataflow ``hw``), before any buffer exists: the operands are
    placed at 4 KiB-aligned addresses (the allocator's own placement moves a few 4 KiB burst
    splits, a few cycles at most)."""
    from .program import Program
    from .systolic import gemm_program

    dev = _PlanningDevice(acfg)
    span = 1 << 30
    left, top, out = _Planned(0, hm, hk), _Planned(span, hk, hn), _Planned(2 * span, hm, hn)
    prog = gemm_program(dev, left, top, out, plan, hw, cfg, Program(dev))
    prog.code_addr = 3 * span
    return predict_program(prog)


@lru_cache(maxsize=1024)
def rows_program_cycles(kind: str, rows: int, n: int, acfg, engine_cycles=None) -> int | None:
    """Predicted PERF_PROGRAM cycles of the row program ``host.nonlinear`` runs for ``rows``
    rows of ``n`` elements on engine ``kind`` (see :func:`gemm_program_cycles`);
    ``engine_cycles``: a tuple of each chunk's engine cycles where they depend on the data."""
    from .chain import windows
    from .nonlinear import rows_program
    from .program import Program

    dev = _PlanningDevice(acfg)
    cfg, wins = acfg.engine(kind), windows(dev, kind)
    wpr = -(-n // cfg.lanes)
    per_chunk = min(cfg.depth // wpr, 65535)
    span = 1 << 30
    prog = rows_program(Program(dev), kind, wins, _Planned(0, rows, n), _Planned(span, rows, n),
                        rows, n, wpr, per_chunk)  # fmt: skip
    prog.code_addr = 2 * span
    return predict_program(prog, engine_cycles)
