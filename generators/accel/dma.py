"""The DMA: strided 2-D copies between device memory and the engines' windows.

Two channels run at once: :class:`LoadChannel` (device memory -> a window, over the AXI4 read
channel) serves the load queue, :class:`StoreChannel` (a window -> device memory, over the write
channel) serves the store queue, so the next tile's loads and the previous tile's stores overlap
the current tile's compute (decoupled access-execute). Both reach the engines' windows through
:class:`WinPortSignature`, one 32-bit word per granted cycle; the accelerator top arbitrates them
with the AXI4-Lite subordinate (which wins) on each engine's single window port.

The controller starts a channel only for a copy it has checked to lie inside device memory, so
``addr_width`` (the byte-address bits of device memory) is all the channels' address walks need.
"""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ...hdl.axi4 import BurstReader, BurstWriter, ReadReqSignature, WriteReqSignature

__all__ = ["WinPortSignature", "DmaCmdSignature", "LoadChannel", "StoreChannel"]


class WinPortSignature(wiring.Signature):
    """A requester's port onto the engines' windows.

    ``w_en``/``r_en`` request an access to ``eng``'s window word ``addr``; the request is taken
    in the cycle ``grant`` is high. The access reaches the engine through the accelerator's window
    stage, a register, in the next cycle: ``err`` then says whether the engine refused it, and
    read data is on ``r_data`` one cycle after that (two after the grant).
    """

    def __init__(self):
        super().__init__(
            {
                "eng": Out(4),
                "addr": Out(22),
                "w_en": Out(1),
                "w_data": Out(32),
                "r_en": Out(1),
                "grant": In(1),
                "err": In(1),
                "r_data": In(32),
            }
        )


class DmaCmdSignature(wiring.Signature):
    """Controller -> channel: ``start`` with the decoded LOAD/STORE fields; ``done`` pulses when
    the copy has finished (``win_err``: a window refused a word; ``mem_err``: device memory
    answered with an error)."""

    def __init__(self):
        super().__init__(
            {
                "start": Out(1),
                "engine": Out(4),
                "rows": Out(16),
                "row_words": Out(12),
                "mem_stride": Out(18),
                "win_stride": Out(16),
                "win_addr": Out(22),
                "mem_addr": Out(32),
                "busy": In(1),
                "done": In(1),
                "win_err": In(1),
                "mem_err": In(1),
                "words": In(1),  # one word moved this cycle (performance counter)
            }
        )


class _WindowWalk:
    """Word addresses of a strided 2-D walk over a window.

    ``more`` is set while words remain: a row counter and the column, not a ``rows *
    row_words`` word count, so the walk needs no multiplier (on a small part the multipliers
    are the DSP blocks the engines want)."""

    def __init__(self, m, cmd):
        self.addr = Signal(22)
        self.row_base = Signal(22)
        self.col = Signal(12)
        self.rows_left = Signal(16)  # rows not finished, the current one included
        self.more = Signal()  # words still to move
        self.row_words = Signal(12)
        self.stride = Signal(16)
        with m.If(cmd.start):
            m.d.sync += [
                self.addr.eq(cmd.win_addr),
                self.row_base.eq(cmd.win_addr),
                self.col.eq(0),
                self.rows_left.eq(cmd.rows),
                self.more.eq((cmd.rows != 0) & (cmd.row_words != 0)),
                self.row_words.eq(cmd.row_words),
                self.stride.eq(cmd.win_stride),
            ]

    def step(self, m):
        with m.If(self.col + 1 == self.row_words):
            nxt = self.row_base + self.stride
            m.d.sync += [self.col.eq(0), self.row_base.eq(nxt), self.addr.eq(nxt),
                         self.rows_left.eq(self.rows_left - 1)]  # fmt: skip
            with m.If(self.rows_left == 1):
                m.d.sync += self.more.eq(0)
        with m.Else():
            m.d.sync += [self.col.eq(self.col + 1), self.addr.eq(self.addr + 1)]


def _channel(m, cmd, win, xfer):
    """What both channels share: start the device-memory transfer ``xfer`` and the window walk
    on ``cmd.start``, address the window, step the walk on every granted word (latching a
    refused one, whose ``err`` comes the cycle after its grant) and report busy / errors.
    Returns (walk, running, granted, landing): ``landing``, the word granted last cycle reaches
    the engine now."""
    m.d.comb += [
        xfer.start.eq(cmd.start),
        xfer.addr.eq(cmd.mem_addr),
        xfer.rows.eq(cmd.rows),
        xfer.row_words.eq(cmd.row_words),
        xfer.stride.eq(cmd.mem_stride),
    ]
    walk = _WindowWalk(m, cmd)
    eng, running, werr, granted = Signal(4), Signal(), Signal(), Signal()
    with m.If(cmd.start):
        m.d.sync += [eng.eq(cmd.engine), running.eq(1), werr.eq(0)]
    m.d.comb += [
        win.eng.eq(eng),
        win.addr.eq(walk.addr),
        granted.eq((win.w_en | win.r_en) & win.grant),
        cmd.busy.eq(running),
        cmd.win_err.eq(werr),
        cmd.mem_err.eq(xfer.err),
    ]
    landing = Signal()
    m.d.sync += landing.eq(granted)
    with m.If(granted):
        walk.step(m)
    with m.If(landing & win.err):
        m.d.sync += werr.eq(1)
    return walk, running, granted, landing


def _finish(m, cmd, running, drained):
    """``done`` once every word has moved and the transfer has ``drained``."""
    with m.If(running & ~cmd.start & drained):
        m.d.sync += running.eq(0)
        m.d.comb += cmd.done.eq(1)


class LoadChannel(wiring.Component):
    """Device memory -> window (the load queue's copies)."""

    cmd: In(DmaCmdSignature())
    mem: Out(ReadReqSignature())
    win: Out(WinPortSignature())

    def __init__(self, *, max_burst: int = 16, addr_width: int = 32):
        self.max_burst, self.addr_width = max_burst, addr_width
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        cmd, win = self.cmd, self.win
        m.submodules.reader = rd = BurstReader(max_burst=self.max_burst, addr_width=self.addr_width)
        wiring.connect(m, rd.mem, wiring.flipped(self.mem))
        walk, running, granted, landing = _channel(m, cmd, win, rd)
        m.d.comb += [
            win.w_data.eq(rd.data.payload),
            win.w_en.eq(running & rd.data.valid & walk.more),
            rd.data.ready.eq(granted),
            cmd.words.eq(granted),
        ]
        _finish(m, cmd, running, ~walk.more & ~landing & ~rd.busy)
        return m


class StoreChannel(wiring.Component):
    """Window -> device memory (the store queue's copies)."""

    cmd: In(DmaCmdSignature())
    mem: Out(WriteReqSignature())
    win: Out(WinPortSignature())

    def __init__(self, *, max_burst: int = 16, addr_width: int = 32):
        self.max_burst, self.addr_width = max_burst, addr_width
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        cmd, win = self.cmd, self.win
        m.submodules.writer = wr = BurstWriter(max_burst=self.max_burst, addr_width=self.addr_width)
        wiring.connect(m, wr.mem, wiring.flipped(self.mem))
        walk, running, granted, landing = _channel(m, cmd, win, wr)
        inflight = Signal()  # a granted read whose data arrives this cycle
        room = Signal()
        m.d.comb += [
            room.eq(wr.space > landing + inflight),
            win.r_en.eq(running & walk.more & room),
            wr.data.payload.eq(win.r_data),
            wr.data.valid.eq(inflight),
            cmd.words.eq(inflight),
        ]
        m.d.sync += inflight.eq(landing)
        _finish(m, cmd, running, ~walk.more & ~landing & ~inflight & ~wr.busy)
        return m
