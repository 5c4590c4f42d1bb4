"""On-chip chaining: COPY moves elements from one engine's window to another's, requantising.

Why a copy through the windows, not stream routes between engines or a shared scratchpad: every
engine already has one window port whose layout it publishes (``windows()``), so one copy unit
with a strided walk on each side joins any producer to any consumer (a GEMM's accumulators to
softmax, GELU or LayerNorm rows, their output rows to the next GEMM's scratchpad) without a
per-pair route in the RTL and without changing the engines. It costs one element per cycle on
the copy (the engines' own compute is many elements per cycle only for the systolic array, whose
results are a small share of its cycles), and it runs on the compute queue, in order with the
engine instructions, so a chain needs no tokens. What is chained is chosen per instruction.

A copy is ``rows`` rows of ``len`` elements. Each side walks its window the same way: row ``r``
starts at ``addr + r * row_stride``; a row is cut into segments of ``seg`` elements, segment
``s`` at ``row start + s * seg_stride``; a segment's elements are packed ``32 / width`` per word
in consecutive words, little-endian, its last word padded. So a systolic accumulator tile
(segments of ``cols`` int32 words, one per column block), a nonlinear engine's rows (segments of
``lanes`` elements, one vector word each) and a WS left or top scratchpad panel (segments of
``rows`` / ``cols`` elements) are all one walk. Padding lanes of a written word are 0.

Each element ``x`` (sign- or zero-extended from the source width) becomes
``y = sat(round_half_up(x * mult / 2**shift))`` in the destination format (``mult = 1``,
``shift = 0`` is a plain, saturating copy). With ``causal``, element ``e`` of row ``r`` with
``e > r + diag`` becomes the destination format's minimum instead: a causal attention mask
applied on the way into the softmax engine, which reads that minimum as a masked entry.
:func:`reference` is the bit-exact model.
"""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from ...hdl.axi4 import registered_level
from .dma import WinPortSignature
from .isa import CopyDst, CopySrc

__all__ = ["CopyUnit", "reference", "walk_words", "fmt_range"]

_WIDTHS = (8, 16, 32)


def fmt_range(width: int, is_signed: bool) -> tuple[int, int]:
    return (-(1 << (width - 1)), (1 << (width - 1)) - 1) if is_signed else (0, (1 << width) - 1)


def walk_words(*, addr, row_stride, seg, seg_stride, rows, length, width):
    """[(word address, elements in it)] of one side's walk, in order (the model of the RTL)."""
    epw = 32 // width
    out = []
    for r in range(rows):
        for s0 in range(0, length, seg):
            n_seg = min(seg, length - s0)
            base = addr + r * row_stride + (s0 // seg) * seg_stride
            for w in range(-(-n_seg // epw)):
                out.append((base + w, min(epw, n_seg - w * epw)))
    return out


def reference(src_win: np.ndarray, dst_win: np.ndarray, src: dict, dst: dict) -> None:
    """Bit-exact model: apply one COPY (fields as in ``CopySrc``/``CopyDst``, widths in bits)
    to the word arrays ``src_win`` -> ``dst_win`` (uint32, modified in place)."""
    rows, length = dst["rows"], dst["len"]
    sw, dw = src["width"], dst["width"]
    elems = []
    for a, n in walk_words(addr=src["addr"], row_stride=src["row_stride"], seg=src["seg"],
                           seg_stride=src["seg_stride"], rows=rows, length=length, width=sw):  # fmt: skip
        word = int(src_win[a])
        for lane in range(n):
            v = (word >> (lane * sw)) & ((1 << sw) - 1)
            if src["signed"] and v >> (sw - 1):
                v -= 1 << sw
            elems.append(v)
    lo, hi = fmt_range(dw, dst["signed"])
    mult, shift = src["mult"], src["shift"]
    causal, diag = src.get("causal", 0), src.get("diag", 0)
    ys = []
    for i, x in enumerate(elems):
        r, e = divmod(i, length)
        p = x * mult
        y = (p + ((1 << shift) >> 1)) >> shift
        ys.append(lo if causal and e > r + diag else min(hi, max(lo, y)))
    i = 0
    for a, n in walk_words(addr=dst["addr"], row_stride=dst["row_stride"], seg=dst["seg"],
                           seg_stride=dst["seg_stride"], rows=rows, length=length, width=dw):  # fmt: skip
        word = 0
        for lane in range(n):
            word |= (ys[i] & ((1 << dw) - 1)) << (lane * dw)
            i += 1
        dst_win[a] = word


def _min3(m, name, a, b, c):
    """min(a, b, c) as a combinational signal of ``c``'s width (``a`` is an elements-per-word
    count, at most 4)."""
    ab = Mux(a < b, a, b)
    out = Signal(3, name=name)
    m.d.comb += out.eq(Mux(ab < c, ab, c))
    return out


class _Walk:
    """One side's word walk (see the module docstring); ``n`` = elements in the current word.

    ``n`` (min(elements per word, left in the segment, left in the row)) is a register, set with
    the walk's counters from the values they take, so the step's conditions (``n`` against the
    counters) and the enables that call it start at flip-flops."""

    def __init__(self, m, name, start, ins, f, rows, length):
        self.addr = Signal(22, name=f"{name}_addr")
        self.row_base = Signal(22, name=f"{name}_row_base")
        self.seg_base = Signal(22, name=f"{name}_seg_base")
        self.seg_left = Signal(13, name=f"{name}_seg_left")
        self.row_left = Signal(13, name=f"{name}_row_left")
        self.rows_left = Signal(16, name=f"{name}_rows_left")
        self.f = f  # the latched instruction (``ins`` is the one arriving with ``start``)
        self.length = length  # latched elements per row
        self.n = Signal(3, name=f"{name}_n")
        self.done = Signal(name=f"{name}_done")
        epw = Signal(3, name=f"{name}_epw")
        m.d.comb += [epw.eq(_epw(f.width)), self.done.eq(self.rows_left == 0)]
        # the next values of the counters in step's three cases, and ``n`` for each (from
        # registers only)
        self.row_next = Signal(13, name=f"{name}_row_next")  # row_left - n
        self.seg_next = Signal(13, name=f"{name}_seg_next")  # seg_left - n
        m.d.comb += [self.row_next.eq(self.row_left - self.n),
                     self.seg_next.eq(self.seg_left - self.n)]  # fmt: skip
        self.n_row = _min3(m, f"{name}_n_row", epw, f.seg, length)
        self.n_seg = _min3(m, f"{name}_n_seg", epw, f.seg, self.row_next)
        self.n_word = _min3(m, f"{name}_n_word", epw, self.seg_next, self.row_next)
        n_start = _min3(m, f"{name}_n_start", _epw(ins.width), ins.seg, rows[1])
        with m.If(start):
            m.d.sync += [
                self.addr.eq(ins.addr),
                self.row_base.eq(ins.addr),
                self.seg_base.eq(ins.addr),
                self.seg_left.eq(ins.seg),
                self.row_left.eq(rows[1]),
                self.rows_left.eq(rows[0]),
                self.n.eq(n_start),
            ]

    def step(self, m):
        f = self.f
        with m.If(self.row_left == self.n):  # the row's last word
            nxt = self.row_base + f.row_stride
            m.d.sync += [self.rows_left.eq(self.rows_left - 1), self.row_base.eq(nxt),
                         self.seg_base.eq(nxt), self.addr.eq(nxt), self.row_left.eq(self.length),
                         self.seg_left.eq(f.seg), self.n.eq(self.n_row)]  # fmt: skip
        with m.Elif(self.seg_left == self.n):  # the segment's last word
            nxt = self.seg_base + f.seg_stride
            m.d.sync += [self.seg_base.eq(nxt), self.addr.eq(nxt), self.seg_left.eq(f.seg),
                         self.row_left.eq(self.row_next), self.n.eq(self.n_seg)]  # fmt: skip
        with m.Else():
            m.d.sync += [self.addr.eq(self.addr + 1), self.seg_left.eq(self.seg_next),
                         self.row_left.eq(self.row_next), self.n.eq(self.n_word)]  # fmt: skip


def _epw(width):
    """Elements per 32-bit word for a width code (0: 8-bit, 1: 16-bit, else 32-bit)."""
    return Mux(width == 0, 4, Mux(width == 1, 2, 1))


class CopyUnit(wiring.Component):
    """Runs one COPY: ``start`` with the latched COPY_SRC and COPY instructions; ``done`` pulses
    when the last word is written (``err``: a window refused a word). One element per cycle."""

    def __init__(self):
        super().__init__(
            {
                "start": In(1),
                "src_ins": In(CopySrc),
                "dst_ins": In(CopyDst),
                "busy": Out(1),
                "done": Out(1),
                "err": Out(1),
                "err_addr": Out(22),  # the first refused window word
                "words": Out(1),  # a word written this cycle (performance counter)
                "rd": Out(WinPortSignature()),
                "wr": Out(WinPortSignature()),
            }
        )

    def elaborate(self, platform):
        m = Module()
        rd, wr = self.rd, self.wr
        s = Signal(CopySrc)
        d = Signal(CopyDst)
        running, err = Signal(), Signal()
        with m.If(self.start):
            m.d.sync += [s.eq(self.src_ins), d.eq(self.dst_ins), running.eq(1), err.eq(0)]
        shape = (self.dst_ins.rows, self.dst_ins.len)
        sw = _Walk(m, "src", self.start, self.src_ins, s, shape, d.len)
        dw = _Walk(m, "dst", self.start, self.dst_ins, d, shape, d.len)
        m.d.comb += [rd.eng.eq(s.engine), wr.eng.eq(d.engine), self.busy.eq(running),
                     self.err.eq(err)]  # fmt: skip

        # ---- source: read words into a FIFO, with credit for the two in flight -------------
        # A granted read reaches the engine the next cycle (``landing``: its ``err`` is on
        # ``rd.err`` then) and its data arrives the cycle after (``arriving``).
        m.submodules.words = q = fifo.SyncFIFOBuffered(width=32 + 3, depth=8)
        q_level = registered_level(m, q, "words_level")
        landing, landing_n, landing_addr = Signal(), Signal(3), Signal(22)
        arriving, arriving_n = Signal(), Signal(3)
        m.d.comb += [
            rd.addr.eq(sw.addr),
            rd.r_en.eq(running & ~sw.done & (q_level + landing + arriving < 7)),
        ]
        rd_granted = Signal()
        m.d.comb += rd_granted.eq(rd.r_en & rd.grant)
        m.d.sync += [landing.eq(rd_granted), landing_n.eq(sw.n), landing_addr.eq(sw.addr),
                     arriving.eq(landing), arriving_n.eq(landing_n)]  # fmt: skip
        with m.If(rd_granted):
            sw.step(m)
        with m.If(landing & rd.err & ~err):
            m.d.sync += [err.eq(1), self.err_addr.eq(landing_addr)]
        m.d.comb += [q.w_data.eq(Cat(rd.r_data, arriving_n)), q.w_en.eq(arriving)]

        # ---- elements: unpack, requantise (4 stages), pack; all stall while 2 writes wait ------
        # Packed words go to a 2-entry write buffer (the head is the window write presented), so
        # the pipeline's enable ``go`` is a register compare, not the window arbiter's grant.
        wr_n = Signal(range(3))  # words in the buffer
        wr_data, wr_addr = Signal(32), Signal(22)  # the head
        skid_data, skid_addr = Signal(32), Signal(22)  # the second
        go = Signal()
        m.d.comb += go.eq(wr_n != 2)
        cur, cur_n, lane, cur_valid = Signal(32), Signal(3), Signal(3), Signal()
        taking = Signal()
        last_lane = Signal()
        m.d.comb += last_lane.eq(lane + 1 == cur_n)
        m.d.comb += taking.eq(go & q.r_rdy & (~cur_valid | last_lane))
        m.d.comb += q.r_en.eq(taking)
        x = Signal(signed(33))
        x8, x16 = cur.word_select(lane[:2], 8), cur.word_select(lane[:1], 16)
        with m.Switch(s.width):
            with m.Case(0):
                m.d.comb += x.eq(Mux(s.signed, x8.as_signed(), x8))
            with m.Case(1):
                m.d.comb += x.eq(Mux(s.signed, x16.as_signed(), x16))
            with m.Default():
                m.d.comb += x.eq(Mux(s.signed, cur.as_signed(), cur))
        v0 = Signal()
        m.d.comb += v0.eq(cur_valid)
        with m.If(go):
            with m.If(taking):
                m.d.sync += [cur.eq(q.r_data[:32]), cur_n.eq(q.r_data[32:]), lane.eq(0),
                             cur_valid.eq(1)]  # fmt: skip
            with m.Elif(cur_valid):
                m.d.sync += [lane.eq(lane + 1), cur_valid.eq(~last_lane)]
        # the element's row and index in its row (for the causal mask), and whether it is masked
        er, ee = Signal(16), Signal(13)
        with m.If(go & v0):
            with m.If(ee + 1 == d.len):
                m.d.sync += [ee.eq(0), er.eq(er + 1)]
            with m.Else():
                m.d.sync += ee.eq(ee + 1)
        with m.If(self.start):
            m.d.sync += [ee.eq(0), er.eq(0)]
        masked1, masked2, masked3 = Signal(), Signal(), Signal()
        prod, v1 = Signal(signed(50)), Signal()  # x * mult
        summed, v2 = Signal(signed(64)), Signal()  # + half
        shifted, v3 = Signal(signed(51)), Signal()  # >> shift (|value| < 2**49 + 1)
        y, v4 = Signal(signed(34)), Signal()  # saturated (or masked)
        lo, hi = Signal(signed(34)), Signal(signed(34))
        for code, width in enumerate(_WIDTHS):
            with m.If(d.width == code):
                m.d.comb += [
                    lo.eq(Mux(d.signed, -(1 << (width - 1)), 0)),
                    hi.eq(Mux(d.signed, (1 << (width - 1)) - 1, (1 << width) - 1)),
                ]
        # the rounding half from a register: ``s`` only changes on ``start``, and the first
        # element reaches this stage cycles later (the shift of a constant off the add's path)
        half = Signal(63)
        m.d.sync += half.eq((Const(1, 64) << s.shift) >> 1)
        # one operation a stage (multiply, add, shift, saturate), each within a clock at 150 MHz
        with m.If(go):
            m.d.sync += [
                prod.eq(x * s.mult),
                v1.eq(v0),
                masked1.eq(s.causal & (ee > er + s.diag)),
                summed.eq(prod + half),
                v2.eq(v1),
                masked2.eq(masked1),
                shifted.eq(summed >> s.shift),
                v3.eq(v2),
                masked3.eq(masked2),
                y.eq(Mux(masked3 | (shifted < lo), lo, Mux(shifted > hi, hi, shifted))),
                v4.eq(v3),
            ]
        # pack
        pword, plane = Signal(32), Signal(3)
        shamt = Signal(5)
        m.d.comb += shamt.eq(Mux(d.width == 0, plane << 3, Mux(d.width == 1, plane << 4, 0)))
        ymask = Signal(32)
        m.d.comb += ymask.eq(Mux(d.width == 0, y[:8], Mux(d.width == 1, y[:16], y[:32])))
        merged = Signal(32)
        m.d.comb += merged.eq(pword | (ymask << shamt)[:32])
        push = Signal()
        wr_landing, wr_landing_addr = Signal(), Signal(22)  # the write granted last cycle
        m.d.sync += [wr_landing.eq(wr.grant), wr_landing_addr.eq(wr_addr)]
        with m.If(wr_landing & wr.err & ~err):
            m.d.sync += [err.eq(1), self.err_addr.eq(wr_landing_addr)]
        with m.If(go & v4):
            with m.If(plane + 1 == dw.n):
                m.d.comb += push.eq(1)
                m.d.sync += [pword.eq(0), plane.eq(0)]
                dw.step(m)
            with m.Else():
                m.d.sync += [pword.eq(merged), plane.eq(plane + 1)]
        # the buffer: a push goes to the head when it is free or leaves now, else behind it
        with m.If(push & ((wr_n == 0) | wr.grant)):
            m.d.sync += [wr_data.eq(merged), wr_addr.eq(dw.addr)]
        with m.Elif(push):
            m.d.sync += [skid_data.eq(merged), skid_addr.eq(dw.addr)]
        with m.Elif(wr.grant):
            m.d.sync += [wr_data.eq(skid_data), wr_addr.eq(skid_addr)]
        m.d.sync += wr_n.eq(wr_n + push - wr.grant)
        m.d.comb += [
            wr.addr.eq(wr_addr),
            wr.w_data.eq(wr_data),
            wr.w_en.eq(wr_n != 0),
            self.words.eq(wr.grant),
        ]
        with m.If(running & ~self.start & dw.done & (wr_n == 0) & ~wr_landing):
            m.d.sync += running.eq(0)
            m.d.comb += self.done.eq(1)
        with m.If(self.start):
            m.d.sync += [pword.eq(0), plane.eq(0), cur_valid.eq(0), wr_n.eq(0)]
        return m
