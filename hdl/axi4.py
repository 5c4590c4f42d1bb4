"""AXI4 (full) manager-side blocks: the bus signature, a burst reader, a burst writer, and an
in-order interconnect that shares one manager port among several requesters.

Requesters speak two small stream interfaces instead of raw AXI:

* :class:`ReadReqSignature`: ``ar`` (byte address, beats - 1) out, ``r`` (data, last, resp) in;
* :class:`WriteReqSignature`: ``aw`` out, ``w`` (data, last) out, ``b`` (resp) in.

:class:`AXI4Interconnect` grants the AR channel by fixed priority (requester 0 first; a request
waiting for ARREADY keeps its grant, so the address stays stable while VALID) and keeps
a tag FIFO of who asked, so read bursts may be outstanding from several requesters at once and
their data is routed back in order (all transactions use ID 0, so the subordinate answers in
order). Writes are granted a burst at a time: the AW of the winner, then all its W beats; the
next AW is granted in the cycle of the last W beat, so a writer with its next burst's words in
hand (:class:`BurstWriter`) sends bursts back to back (writes are 16/16 of the port's beats, not
16/17, on 16-beat bursts).

:class:`BurstReader` and :class:`BurstWriter` cut a strided 2-D transfer (``rows`` rows of
``row_words`` 32-bit words, ``stride`` words apart) into INCR bursts of at most ``max_burst``
beats that never cross a 4 KiB boundary (AXI4's rule), with a data FIFO whose free space is the
reader's credit, so the R channel is never back-pressured by a full FIFO.
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

__all__ = [
    "AXI4Signature",
    "BurstReq",
    "ReadReqSignature",
    "WriteReqSignature",
    "AXI4Interconnect",
    "BurstReader",
    "BurstWriter",
    "burst_len",
    "AXI4RAM",
    "registered_level",
]

BurstReq = data.StructLayout({"addr": 32, "len": 8})  # len = beats - 1, as AXI's AxLEN
RBeat = data.StructLayout({"data": 32, "last": 1, "resp": 2})
WBeat = data.StructLayout({"data": 32, "last": 1})


class AXI4Signature(wiring.Signature):
    """AXI4 with bursts, manager's view: 32-bit data, ``id_width``-bit IDs (always 0 here)."""

    def __init__(self, *, addr_width: int = 32, data_width: int = 32, id_width: int = 1):
        if data_width != 32:
            raise ValueError(f"data_width must be 32, not {data_width}")
        self.addr_width, self.data_width, self.id_width = addr_width, data_width, id_width
        super().__init__(
            {
                "awid": Out(id_width),
                "awaddr": Out(addr_width),
                "awlen": Out(8),
                "awsize": Out(3),
                "awburst": Out(2),
                "awvalid": Out(1),
                "awready": In(1),
                "wdata": Out(data_width),
                "wstrb": Out(data_width // 8),
                "wlast": Out(1),
                "wvalid": Out(1),
                "wready": In(1),
                "bid": In(id_width),
                "bresp": In(2),
                "bvalid": In(1),
                "bready": Out(1),
                "arid": Out(id_width),
                "araddr": Out(addr_width),
                "arlen": Out(8),
                "arsize": Out(3),
                "arburst": Out(2),
                "arvalid": Out(1),
                "arready": In(1),
                "rid": In(id_width),
                "rdata": In(data_width),
                "rresp": In(2),
                "rlast": In(1),
                "rvalid": In(1),
                "rready": Out(1),
            }
        )

    def __eq__(self, other):
        return isinstance(other, AXI4Signature) and (
            (self.addr_width, self.data_width, self.id_width)
            == (other.addr_width, other.data_width, other.id_width)
        )

    def __repr__(self):
        return f"AXI4Signature(addr_width={self.addr_width}, id_width={self.id_width})"


class ReadReqSignature(wiring.Signature):
    def __init__(self):
        super().__init__({"ar": Out(stream.Signature(BurstReq)), "r": In(stream.Signature(RBeat))})


class WriteReqSignature(wiring.Signature):
    def __init__(self):
        super().__init__(
            {
                "aw": Out(stream.Signature(BurstReq)),
                "w": Out(stream.Signature(WBeat)),
                "b": In(stream.Signature(2)),
            }
        )


def registered_level(m, q, name: str):
    """``q.level`` of a :class:`~amaranth.lib.fifo.SyncFIFOBuffered` as a register that holds the
    same value every cycle, counted from the FIFO's own handshakes. A compare against it starts
    at a flip-flop; one against ``q.level`` starts after the FIFO's ``inner_level + r_rdy`` adder,
    and on the ECP5 that adder sat on the path from a DMA's FIFO through the window arbiter."""
    level = Signal.like(q.level, name=name)
    m.d.sync += level.eq(level + (q.w_en & q.w_rdy) - (q.r_en & q.r_rdy))
    return level


def burst_len(addr: int, words_left: int, max_burst: int) -> int:
    """Beats of the next burst (the reference for the RTL and for the host's traffic model)."""
    to_4k = (4096 - (addr & 0xFFF)) // 4
    return min(max_burst, words_left, to_4k)


class AXI4Interconnect(wiring.Component):
    """``n_read`` read and ``n_write`` write requesters on one AXI4 manager port ``bus``."""

    def __init__(self, n_read: int, n_write: int, *, tags: int = 8):
        self.n_read, self.n_write, self.tags = n_read, n_write, tags
        members = {"bus": Out(AXI4Signature())}
        for i in range(n_read):
            members[f"rd{i}"] = In(ReadReqSignature())
        for i in range(n_write):
            members[f"wr{i}"] = In(WriteReqSignature())
        members["outstanding"] = Out(1)  # a read or write is still in flight
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        rds = [getattr(self, f"rd{i}") for i in range(self.n_read)]
        wrs = [getattr(self, f"wr{i}") for i in range(self.n_write)]
        tbits = max(1, ceil_log2(max(self.n_read, self.n_write)))
        m.d.comb += [
            bus.arsize.eq(2), bus.arburst.eq(1), bus.awsize.eq(2), bus.awburst.eq(1),
            bus.wstrb.eq(0xF), bus.arid.eq(0), bus.awid.eq(0),
        ]  # fmt: skip

        # ---- reads: fixed-priority AR, in-order R routed by a tag FIFO --------------------------
        m.submodules.rtag = rtag = fifo.SyncFIFO(width=tbits, depth=self.tags)
        granted, any_ar = _grant(m, [rd.ar.valid for rd in rds], bus.arvalid & ~bus.arready,
                                 tbits, "ar")  # fmt: skip
        with m.Switch(granted):
            for i, rd in enumerate(rds):
                with m.Case(i):
                    m.d.comb += [bus.araddr.eq(rd.ar.payload.addr), bus.arlen.eq(rd.ar.payload.len)]
        m.d.comb += [bus.arvalid.eq(any_ar & rtag.w_rdy), rtag.w_data.eq(granted)]
        with m.If(bus.arvalid & bus.arready):
            m.d.comb += rtag.w_en.eq(1)
            for i, rd in enumerate(rds):
                with m.If(granted == i):
                    m.d.comb += rd.ar.ready.eq(1)
        for i, rd in enumerate(rds):
            m.d.comb += [
                rd.r.payload.data.eq(bus.rdata),
                rd.r.payload.last.eq(bus.rlast),
                rd.r.payload.resp.eq(bus.rresp),
                rd.r.valid.eq(bus.rvalid & rtag.r_rdy & (rtag.r_data == i)),
            ]
            with m.If(rtag.r_rdy & (rtag.r_data == i)):
                m.d.comb += bus.rready.eq(rd.r.ready)
        with m.If(bus.rvalid & bus.rready & bus.rlast):
            m.d.comb += rtag.r_en.eq(1)

        # ---- writes: one burst's W beats at a time; the next burst's AW is taken with the last
        # beat of the one before (no idle cycle between bursts); B routed by a tag FIFO -------
        m.submodules.btag = btag = fifo.SyncFIFO(width=tbits, depth=self.tags)
        wsel = Signal(tbits)
        can_aw = Signal()  # IDLE, or DATA with its last beat in this cycle
        pick, any_aw = _grant(m, [wr.aw.valid for wr in wrs], bus.awvalid & ~bus.awready, tbits,
                              "aw")  # fmt: skip
        with m.Switch(pick):
            for i, wr in enumerate(wrs):
                with m.Case(i):
                    m.d.comb += [bus.awaddr.eq(wr.aw.payload.addr), bus.awlen.eq(wr.aw.payload.len)]
        m.d.comb += [bus.awvalid.eq(any_aw & btag.w_rdy & can_aw), btag.w_data.eq(pick)]
        aw_fire = Signal()
        m.d.comb += aw_fire.eq(bus.awvalid & bus.awready)
        with m.If(aw_fire):
            m.d.comb += btag.w_en.eq(1)
            for i, wr in enumerate(wrs):
                with m.If(pick == i):
                    m.d.comb += wr.aw.ready.eq(1)
            m.d.sync += wsel.eq(pick)
        with m.FSM(name="wr"):
            with m.State("IDLE"):
                m.d.comb += can_aw.eq(1)
                with m.If(aw_fire):
                    m.next = "DATA"
            with m.State("DATA"):
                with m.Switch(wsel):
                    for i, wr in enumerate(wrs):
                        with m.Case(i):
                            m.d.comb += [
                                bus.wdata.eq(wr.w.payload.data),
                                bus.wlast.eq(wr.w.payload.last),
                                bus.wvalid.eq(wr.w.valid),
                                wr.w.ready.eq(bus.wready),
                            ]
                with m.If(bus.wvalid & bus.wready & bus.wlast):
                    m.d.comb += can_aw.eq(1)
                    with m.If(~aw_fire):
                        m.next = "IDLE"
        for i, wr in enumerate(wrs):
            m.d.comb += [wr.b.payload.eq(bus.bresp),
                         wr.b.valid.eq(bus.bvalid & btag.r_rdy & (btag.r_data == i))]  # fmt: skip
            with m.If(btag.r_rdy & (btag.r_data == i)):
                m.d.comb += bus.bready.eq(wr.b.ready)
        with m.If(bus.bvalid & bus.bready):
            m.d.comb += btag.r_en.eq(1)
        m.d.comb += self.outstanding.eq(rtag.r_rdy | btag.r_rdy)
        return m


def _grant(m, valids, stalled, tbits: int, name: str):
    """Fixed priority over the requesters' ``valids`` (index 0 first); a request left waiting
    (``stalled``: VALID without READY this cycle) keeps its grant the next cycle, so its address
    stays stable while VALID (AXI). Returns (the granted index, any request)."""
    pick, any_req = Signal(tbits, name=f"{name}_pick"), Signal(name=f"{name}_any")
    locked, lock_sel = Signal(name=f"{name}_locked"), Signal(tbits, name=f"{name}_lock_sel")
    with m.If(locked):
        m.d.comb += [pick.eq(lock_sel), any_req.eq(1)]
    with m.Else():
        for i in reversed(range(len(valids))):
            with m.If(valids[i]):
                m.d.comb += [pick.eq(i), any_req.eq(1)]
    m.d.sync += [locked.eq(stalled), lock_sel.eq(pick)]
    return pick, any_req


def _next_burst(m, cur, words_left, max_burst):
    """Combinational beats of the next burst: min(max_burst, words_left, words to 4 KiB)."""
    to_4k = Signal(11)
    m.d.comb += to_4k.eq((4096 - cur[:12]) >> 2)
    beats = Signal(range(max_burst + 1))
    lim = Signal(17)
    m.d.comb += lim.eq(Mux(words_left < to_4k, words_left, to_4k))
    m.d.comb += beats.eq(Mux(lim < max_burst, lim, max_burst))
    return beats


class _Transfer:
    """Strided 2-D address walk shared by the reader and the writer.

    ``beats`` (the next burst's, :func:`burst_len` of ``cur`` and ``words_left``) is a register,
    computed with ``cur`` and ``words_left`` from the values they take: a request's VALID and the
    interconnect's grant then start at flip-flops, and the grant's READY only selects which
    next values are taken.
    """

    def __init__(self, m, comp, max_burst, addr_width=32):
        self.cur = Signal(addr_width)
        self.row_base = Signal(addr_width)
        self.rows_left = Signal(17)
        self.words_left = Signal(17)
        self.row_words = Signal(16)
        self.stride = Signal(addr_width)
        self.active = Signal()
        self.beats = Signal(range(max_burst + 1))
        # the next values, from registers only (outside any condition: plain logic)
        self.nxt = Signal(addr_width)  # the next row's start
        self.step = Signal(addr_width)  # the next burst in this row
        self.left = Signal.like(self.words_left)
        m.d.comb += [
            self.nxt.eq(self.row_base + self.stride),
            self.step.eq(self.cur + (self.beats << 2)),
            self.left.eq(self.words_left - self.beats),
        ]
        self.beats_row = _next_burst(m, self.nxt, self.row_words, max_burst)
        self.beats_step = _next_burst(m, self.step, self.left, max_burst)
        beats_start = _next_burst(m, comp.addr, comp.row_words, max_burst)
        with m.If(comp.start):
            m.d.sync += [
                self.cur.eq(comp.addr),
                self.row_base.eq(comp.addr),
                self.rows_left.eq(comp.rows),
                self.words_left.eq(comp.row_words),
                self.row_words.eq(comp.row_words),
                self.stride.eq(comp.stride << 2),
                self.active.eq((comp.rows != 0) & (comp.row_words != 0)),
                self.beats.eq(beats_start),
            ]

    def advance(self, m):
        """One burst of ``beats`` issued: step the address walk."""
        with m.If(self.words_left == self.beats):
            m.d.sync += [
                self.rows_left.eq(self.rows_left - 1),
                self.row_base.eq(self.nxt),
                self.cur.eq(self.nxt),
                self.words_left.eq(self.row_words),
                self.beats.eq(self.beats_row),
            ]
            with m.If(self.rows_left == 1):
                m.d.sync += self.active.eq(0)
        with m.Else():
            m.d.sync += [self.cur.eq(self.step), self.words_left.eq(self.left),
                         self.beats.eq(self.beats_step)]  # fmt: skip


def _transfer_ports():
    return {
        "start": In(1),  # latch addr/rows/row_words/stride and begin
        "addr": In(32),  # byte address (4-byte aligned)
        "rows": In(16),
        "row_words": In(16),
        "stride": In(24),  # words between row starts
        "busy": Out(1),
        "err": Out(1),  # a response was not OKAY (sticky until the next start)
    }


class BurstReader(wiring.Component):
    """A strided 2-D read from device memory; the words come out of ``data`` in order.

    ``addr_width`` < 32 walks addresses in that many bits (the upper address bits are zero): for
    a requester whose transfers are known to lie in the first ``2**addr_width`` bytes.

    ``hold`` (optional, 0 when not driven) keeps the next burst's request back; a request already
    presented stays until it is taken (AXI: ARVALID does not drop before ARREADY). ``owed`` is
    the beats requested and not yet taken from ``data``.
    """

    def __init__(self, *, max_burst: int = 16, addr_width: int = 32):
        self.max_burst, self.addr_width = max_burst, addr_width
        self.depth = 2 * max_burst
        super().__init__(
            {**_transfer_ports(), "mem": Out(ReadReqSignature()), "data": Out(stream.Signature(32)),
             "hold": In(1), "owed": Out(range(2 * max_burst + 1))}  # fmt: skip
        )

    def elaborate(self, platform):
        m = Module()
        t = _Transfer(m, self, self.max_burst, self.addr_width)
        m.submodules.buf = buf = fifo.SyncFIFOBuffered(width=32, depth=self.depth)
        owed = self.owed  # beats requested and not yet taken from the FIFO
        issue = Signal()
        waiting = Signal()  # a request presented and not yet taken
        m.d.sync += waiting.eq(self.mem.ar.valid & ~self.mem.ar.ready)
        m.d.comb += [
            self.mem.ar.payload.addr.eq(t.cur),
            self.mem.ar.payload.len.eq(t.beats - 1),
            self.mem.ar.valid.eq(t.active & (owed + t.beats <= self.depth)
                                 & (~self.hold | waiting)),  # fmt: skip
            issue.eq(self.mem.ar.valid & self.mem.ar.ready),
        ]
        with m.If(issue):
            t.advance(m)
        popped = Signal()
        m.d.comb += [
            buf.w_data.eq(self.mem.r.payload.data),
            buf.w_en.eq(self.mem.r.valid),
            self.mem.r.ready.eq(buf.w_rdy),
            self.data.payload.eq(buf.r_data),
            self.data.valid.eq(buf.r_rdy),
            buf.r_en.eq(self.data.ready),
            popped.eq(buf.r_rdy & self.data.ready),
        ]
        m.d.sync += owed.eq(owed + Mux(issue, t.beats, 0) - popped)
        with m.If(self.start):
            m.d.sync += self.err.eq(0)
        with m.Elif(self.mem.r.valid & self.mem.r.ready & (self.mem.r.payload.resp != 0)):
            m.d.sync += self.err.eq(1)
        m.d.comb += self.busy.eq(t.active | (owed != 0))
        return m


class BurstWriter(wiring.Component):
    """A strided 2-D write to device memory of the words that arrive on ``data``.

    ``space`` is the free room of the input FIFO: a producer with a read latency pushes only
    what fits (``data.ready`` is high whenever ``space`` is non-zero). ``addr_width``: as for
    :class:`BurstReader`.
    """

    def __init__(self, *, max_burst: int = 16, addr_width: int = 32):
        self.max_burst, self.addr_width = max_burst, addr_width
        self.depth = 2 * max_burst
        super().__init__(
            {
                **_transfer_ports(),
                "mem": Out(WriteReqSignature()),
                "data": In(stream.Signature(32)),
                "space": Out(range(2 * max_burst + 1)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        t = _Transfer(m, self, self.max_burst, self.addr_width)
        m.submodules.buf = buf = fifo.SyncFIFOBuffered(width=32, depth=self.depth)
        level = registered_level(m, buf, "buf_level")
        space = Signal(range(self.depth + 1), init=self.depth)  # depth - level, a register too
        m.d.sync += space.eq(space - (buf.w_en & buf.w_rdy) + (buf.r_en & buf.r_rdy))
        m.d.comb += [
            buf.w_data.eq(self.data.payload),
            buf.w_en.eq(self.data.valid),
            self.data.ready.eq(buf.w_rdy),
            self.space.eq(space),
        ]
        left = Signal(range(self.max_burst + 1))
        unacked = Signal(16)
        aw_fire = Signal()
        b_fire = Signal()
        # the next burst's request (VALID in AW, or with the last beat of the burst before)
        m.d.comb += [
            self.mem.aw.payload.addr.eq(t.cur),
            self.mem.aw.payload.len.eq(t.beats - 1),
            aw_fire.eq(self.mem.aw.valid & self.mem.aw.ready),
        ]
        with m.FSM(name="burst"):
            with m.State("AW"):
                m.d.comb += self.mem.aw.valid.eq(t.active & (level >= t.beats))
                with m.If(aw_fire):
                    m.next = "W"
            with m.State("W"):
                m.d.comb += [
                    self.mem.w.payload.data.eq(buf.r_data),
                    self.mem.w.payload.last.eq(left == 1),
                    self.mem.w.valid.eq(buf.r_rdy),
                    buf.r_en.eq(self.mem.w.ready),
                ]
                with m.If(self.mem.w.valid & self.mem.w.ready):
                    m.d.sync += left.eq(left - 1)
                    with m.If(left == 1):
                        # the next burst's request goes with this last beat when its words are
                        # in (the beat leaving now not counted): no cycle between bursts
                        m.d.comb += self.mem.aw.valid.eq(t.active & (level > t.beats))
                        with m.If(~aw_fire):
                            m.next = "AW"
        with m.If(aw_fire):  # after the FSM: its beats replace the W state's count
            t.advance(m)
            m.d.sync += left.eq(t.beats)
        m.d.comb += [self.mem.b.ready.eq(1), b_fire.eq(self.mem.b.valid)]
        m.d.sync += unacked.eq(unacked + aw_fire - b_fire)
        with m.If(self.start):
            m.d.sync += self.err.eq(0)
        with m.Elif(b_fire & (self.mem.b.payload != 0)):
            m.d.sync += self.err.eq(1)
        m.d.comb += self.busy.eq(t.active | (unacked != 0) | (left != 0))
        return m


class AXI4RAM(wiring.Component):
    """Device memory in block RAM: an AXI4 subordinate of ``size`` bytes (a power of two).

    What a board's device memory is until an SDRAM controller exists. One read or write burst
    at a time, one beat per cycle; addresses wrap modulo ``size`` (the accelerator checks its DMA
    ranges against ``mem_bytes`` before it issues them).

    The block RAM's read address comes from a register, never from the bus: a burst's address
    is taken into ``cur``, and the words are read ahead into a 4-entry FIFO whenever it has room
    counting the read in flight, and RVALID is that FIFO's. So no path runs from the
    accelerator's AR or R handshakes into the RAM (on the ECP5 such a path, through the
    controller's fetch hold and the interconnect's arbitration, set the whole design's Fmax). A
    burst's first beat comes 3 cycles after its AR; then one a cycle while RREADY is high.
    """

    def __init__(self, size: int):
        if size < 4 or size & (size - 1):
            raise ValueError(f"size must be a power of two of at least 4 bytes, not {size}")
        self.size = size
        super().__init__({"bus": In(AXI4Signature())})

    def elaborate(self, platform):
        from amaranth.lib import memory

        m = Module()
        bus = self.bus
        depth = self.size // 4
        aw = max(1, ceil_log2(depth))
        m.submodules.mem = mem = memory.Memory(shape=32, depth=depth, init=[])
        rd = mem.read_port()
        wp = mem.write_port(granularity=8)
        m.submodules.rq = rq = fifo.SyncFIFO(width=33, depth=4)  # (rlast, rdata)
        cur = Signal(aw)
        issue_left = Signal(9)  # words of the burst still to read (0: none)
        deliver_left = Signal(8)  # beats of the burst still to hand over, minus one
        inflight = Signal()  # a word read last cycle, into the FIFO this cycle
        inflight_last = Signal()
        active = Signal()
        m.d.comb += [bus.rid.eq(0), bus.bid.eq(0), bus.rresp.eq(0), bus.bresp.eq(0)]
        m.d.comb += [
            rd.addr.eq(cur),
            rq.w_en.eq(inflight),
            rq.w_data.eq(Cat(rd.data, inflight_last)),
            bus.rvalid.eq(rq.r_rdy),
            bus.rdata.eq(rq.r_data[:32]),
            bus.rlast.eq(rq.r_data[32]),
            rq.r_en.eq(bus.rready),
            bus.arready.eq(~active),
        ]
        issue = Signal()
        m.d.comb += issue.eq((issue_left != 0) & (rq.level + inflight < rq.depth))
        m.d.sync += [inflight.eq(issue), inflight_last.eq(issue & (issue_left == 1))]
        with m.If(issue):
            m.d.sync += [cur.eq(cur + 1), issue_left.eq(issue_left - 1)]
        with m.If(~active & bus.arvalid):
            m.d.sync += [cur.eq(bus.araddr[2 : 2 + aw]), issue_left.eq(bus.arlen + 1),
                         deliver_left.eq(bus.arlen), active.eq(1)]  # fmt: skip
        with m.If(active & bus.rvalid & bus.rready):
            m.d.sync += deliver_left.eq(deliver_left - 1)
            with m.If(deliver_left == 0):
                m.d.sync += active.eq(0)
        wcur = Signal(aw)
        with m.FSM(name="wr"):
            with m.State("IDLE"):
                m.d.comb += bus.awready.eq(1)
                with m.If(bus.awvalid):
                    m.d.sync += wcur.eq(bus.awaddr[2 : 2 + aw])
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += [
                    bus.wready.eq(1),
                    wp.addr.eq(wcur),
                    wp.data.eq(bus.wdata),
                    wp.en.eq(Mux(bus.wvalid, bus.wstrb, 0)),
                ]
                with m.If(bus.wvalid):
                    m.d.sync += wcur.eq(wcur + 1)
                    with m.If(bus.wlast):
                        m.next = "RESP"
            with m.State("RESP"):
                m.d.comb += bus.bvalid.eq(1)
                with m.If(bus.bready):
                    m.next = "IDLE"
        return m
