"""A timing model of whole programs: predicted PERF_PROGRAM cycles before a program runs.

The engines' cycle models are exact for one instruction; a program adds the controller and the
DMA around them. :func:`predict_program` replays a :class:`~gatesmith.host.program.Program`
the way the controller runs it (``generators/accel/controller.py``):

* the fetcher reads one 5-word entry every ``FETCH`` cycles in program order and stalls while
  the entry's queue (``queue_depth`` deep) is full; an entry leaves its queue when it starts;
* each queue (load, compute, store) starts its entries in order, one at a time, once the
  entry's tokens have been pushed (VTA semantics: a push happens when its entry retires);
* durations: an engine instruction is its engine's cycle model + ``DISPATCH``; a LOAD is
  ``LOAD_FIXED + mem_latency - 12 + words * beat``; a STORE ``STORE_FIXED + words * beat +
  first + words / 32``, ``first`` the beats of its first burst (the writer waits for them:
  at most one row, ``max_burst`` and the words to a 4 KiB boundary); a COPY ``COPY_FIXED +
  max(elements, words written)``; LOAD, STORE and COPY on the same engine share its window
  port: one that starts while another queue still has words to move on that engine waits for
  them (the port alternates, so the pair ends together).

The constants were measured on the simulated board (single-entry programs, tests/test_timing.py
holds whole programs to the model). Unknown entries make the prediction None.
"""

from __future__ import annotations

from collections import deque

from ..generators.accel.isa import WIDTH_CODES, CopyDst, CopySrc, DmaInstr, Op, Queue, QUEUE_OF
from ..hdl.axi4 import burst_len
from ..hdl.fields import struct_fields

__all__ = ["predict_program"]

FETCH = 6  # cycles per program entry (5 words + the hand-off)
FIRST = 19  # program start -> first entry classified
END = 2  # last retirement -> PERF_PROGRAM stops
DISPATCH = 3
LOAD_FIXED = 18
STORE_FIXED = 19
COPY_FIXED = 8
NOP = 3
TOKEN = 2  # a pushed token -> the popping unit starts

_DMA = struct_fields(DmaInstr)
_SRC = struct_fields(CopySrc)
_DST = struct_fields(CopyDst)


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


def predict_program(prog) -> int | None:
    """Predicted PERF_PROGRAM cycles of ``prog`` on its device (see the module docstring)."""
    dev = prog.dev
    acfg = dev.config
    beat = acfg.mem_cycles_per_beat
    depth = acfg.queue_depth
    # per entry: queue, duration (or DMA words), token bits
    items = []
    copy_src = None
    for deps, words, _what in prog.entries:
        op = int(words[0]) & 0xFF
        q = QUEUE_OF(op)
        if op in (Op.LOAD, Op.STORE):
            rw = _field(words, _DMA, "row_words")
            n = _field(words, _DMA, "rows") * rw
            eng = _field(words, _DMA, "engine")
            if op == Op.LOAD:
                fixed = LOAD_FIXED + acfg.mem_latency - 12
            else:  # the writer waits for the words of its first burst (a row's at most)
                first = burst_len(_field(words, _DMA, "mem_addr"), rw, acfg.mem_max_burst)
                fixed = STORE_FIXED + first + n / 32
            items.append((q, fixed + n * beat, [(eng, n)], deps))
        elif op in (Op.NOP, Op.SYNC):
            items.append((q, NOP, [], deps))
        elif op == Op.COPY_SRC:
            copy_src = words
            items.append((q, NOP, [], deps))
        elif op == Op.COPY:
            if copy_src is None:
                return None
            rows, length = _field(words, _DST, "rows"), _field(words, _DST, "len")
            widths = {v: k for k, v in WIDTH_CODES.items()}
            sw = widths.get(_field(copy_src, _SRC, "width"), 32)
            dw = widths.get(_field(words, _DST, "width"), 32)
            in_words = rows * -(-length // (32 // sw))
            out_words = rows * -(-length // (32 // dw))
            ports = [(_field(copy_src, _SRC, "engine"), in_words),
                     (_field(words, _DST, "engine"), out_words)]  # fmt: skip
            items.append((q, COPY_FIXED + max(rows * length, out_words), ports, deps))
        else:
            c = _engine_cycles(dev, words)
            if c is None:
                return None
            items.append((q, DISPATCH + c, [], deps))
    # replay
    tokens = {n: deque() for n in ("l2c", "c2l", "c2s", "s2c")}
    pops = {Queue.LOAD: [("pop_next", "c2l")],
            Queue.COMPUTE: [("pop_prev", "l2c"), ("pop_next", "s2c")],
            Queue.STORE: [("pop_prev", "c2s")]}  # fmt: skip
    pushes = {Queue.LOAD: [("push_next", "l2c")],
              Queue.COMPUTE: [("push_prev", "c2l"), ("push_next", "c2s")],
              Queue.STORE: [("push_prev", "s2c")]}  # fmt: skip
    free = {q: 0.0 for q in Queue}
    starts = {q: [] for q in Queue}  # start times, in queue order (for queue space)
    dma_busy = {}  # engine -> [(end of word phase, queue)]
    fetched = float(FIRST)
    last = 0.0
    pending = deque(items)
    while pending:
        q, dur, ports, deps = pending.popleft()
        qs = starts[q]
        space = qs[-depth] if len(qs) >= depth else 0.0
        accept = max(fetched, space)
        fetched = accept + FETCH
        t = max(accept + 1, free[q])
        for bit, name in pops[q]:
            if getattr(deps, bit):
                if not tokens[name]:
                    return None  # a token pushed by a later entry: not modelled
                t = max(t, tokens[name].popleft() + TOKEN)
        extra = 0.0
        for eng, words in ports:
            other = [e for e, qq in dma_busy.get(eng, []) if qq != q and e > t]
            if other and words:
                extra = max(extra, min(words * beat, max(other) - t))
        dur += extra
        for eng, words in ports:
            if words:
                dma_busy.setdefault(eng, []).append((t + dur, q))
        end = t + dur
        qs.append(t)
        free[q] = end
        for bit, name in pushes[q]:
            if getattr(deps, bit):
                tokens[name].append(end)
        last = max(last, end)
    return int(round(last + END))
