"""Host-link bridge: framed bytes in, AXI4-Lite transactions, framed bytes out.

Request frame (host -> device), multi-byte fields little-endian::

    0xA5 | seq | cmd | addr[4] | count[2] | payload[4*count] (writes only) | crc[2]

Response frame (device -> host)::

    0x5A | seq | count[2] | payload[4*count] (reads only) | status | crc[2]

``crc`` is CRC-16/CCITT-FALSE over every byte after the start byte. Commands: ``PING`` (count
0), ``WRITE`` (count words to addr, addr+4, ...), ``READ`` (count words from addr, addr+4, ...),
``WRITE_FIXED`` (count words, all to addr: the instruction queue). A write frame is buffered
whole and executed only when its CRC is good, so a corrupted frame changes nothing. A write
stops at the first AXI error; its response's count says how many words were written. A read
returns all count words (zero where the bus answered an error) and the first error's status.
A frame that stops arriving for ``timeout`` cycles is dropped and the bridge hunts for the next
start byte; unexpected bytes between frames are ignored.

Exactly-once frames: ``cmd | Cmd.ONCE`` (PING, WRITE or WRITE_FIXED; the instruction queue and
anything else that must not run twice). The bridge records the sequence number, status and count
of the last ONCE frame it executed; a ONCE frame with a good CRC and that same sequence number
is not executed again but answered with the recorded status and count, with ``Flag.REPLAYED``
set. So a host that lost an answer re-sends the same frame and learns the outcome from the
device. The host must not reuse the last ONCE sequence number for a new ONCE frame.

The response's status byte: bits [5:0] the status code, bit 6 ``Flag.SESSION`` (the bridge has
executed a ONCE frame since reset: a host that opened a session with a ONCE PING sees a device
reset as this bit going low), bit 7 ``Flag.REPLAYED``.
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .bus import AXI4LiteSignature
from .crc import CRC_INIT, crc16_update

__all__ = ["HostLinkBridge", "SOF_REQ", "SOF_RSP", "Cmd", "Status", "Flag"]

SOF_REQ = 0xA5
SOF_RSP = 0x5A


class Cmd:
    PING = 0x00
    WRITE = 0x01
    READ = 0x02
    WRITE_FIXED = 0x03
    ONCE = 0x80  # flag: execute at most once (see the module docstring)


class Status:
    OK = 0
    CRC_ERROR = 1
    BAD_CMD = 2
    BAD_LENGTH = 3
    SLVERR = 4
    DECERR = 5


class Flag:
    """Bits of a response's status byte above the status code."""

    CODE_MASK = 0x3F
    SESSION = 0x40
    REPLAYED = 0x80


class HostLinkBridge(wiring.Component):
    """Frames on ``rx``/``tx`` byte streams <-> AXI4-Lite manager ``axi``.

    ``max_words``: largest payload (a power of two; the write buffer's depth).
    ``timeout``: cycles without a byte after which a partial frame is dropped.
    ``idle``: high when no frame is in progress (receiving, executing or answering).
    """

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))
    axi: Out(AXI4LiteSignature())
    idle: Out(1)

    def __init__(self, *, max_words: int = 256, timeout: int = 1 << 20):
        if max_words < 1 or max_words & (max_words - 1):
            raise ValueError(f"max_words must be a power of two >= 1, not {max_words}")
        if timeout < 16:
            raise ValueError(f"timeout must be at least 16 cycles, not {timeout}")
        self.max_words = max_words
        self.timeout = timeout
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        rx, tx, axi = self.rx, self.tx, self.axi
        m.submodules.buf = buf = memory.Memory(shape=32, depth=self.max_words, init=[])
        buf_w, buf_r = buf.write_port(), buf.read_port()  # synchronous: maps to block RAM

        # byte/word counter: a header of 8 bytes, or a payload word index and its byte
        idx = Signal(max(3, 2 + ceil_log2(self.max_words)))
        word = Signal(32)
        crc = Signal(16)
        crc_rx = Signal(16)
        status = Signal(8)
        done_words = Signal(16)
        silence = Signal(ceil_log2(self.timeout + 1))
        hdr = Signal(64)  # seq, cmd, addr, count as received
        # The frame's fields are the header register's own bits (it changes only while the next
        # header arrives); addr and count are then updated in place.
        seq, cmd, once = hdr[0:8], hdr[8:15], hdr[15]  # once: this frame has the ONCE flag
        addr, count = hdr[16:48], hdr[48:64]
        # the exactly-once record: the last ONCE frame executed (seq, status, count)
        once_exec = Signal()  # this frame is a ONCE frame being executed: record it
        once_valid = Signal()  # a ONCE frame was executed since reset (the SESSION flag)
        once_seq, once_status, once_count = Signal(8), Signal(8), Signal(16)

        byte_in = rx.payload
        crc_next = crc16_update(crc, byte_in)

        # ---- transmit helper: one byte per cycle when tx is ready ----------------------------
        tx_byte = Signal(8)
        tx_crc = crc16_update(crc, tx_byte)

        def send(byte, *, into_crc=True):
            m.d.comb += [tx_byte.eq(byte), tx.payload.eq(byte), tx.valid.eq(1)]
            if into_crc:
                with m.If(tx.ready):
                    m.d.sync += crc.eq(tx_crc)

        # inter-byte timeout while a request is arriving
        receiving = Signal()
        with m.If(~receiving | rx.valid):
            m.d.sync += silence.eq(0)
        with m.Else():
            m.d.sync += silence.eq(silence + 1)
        timed_out = silence >= self.timeout

        write_cmd = (cmd == Cmd.WRITE) | (cmd == Cmd.WRITE_FIXED)  # cmd: without ONCE
        step = Mux(cmd == Cmd.WRITE_FIXED, 0, 4)

        with m.FSM(name="link"):
            with m.State("HUNT"):
                m.d.comb += [rx.ready.eq(1), self.idle.eq(1)]
                with m.If(rx.valid & (byte_in == SOF_REQ)):
                    m.d.sync += [crc.eq(CRC_INIT), idx.eq(0)]
                    m.next = "HDR"
            with m.State("HDR"):
                m.d.comb += [rx.ready.eq(1), receiving.eq(1)]
                with m.If(timed_out):
                    m.next = "HUNT"
                with m.Elif(rx.valid):
                    m.d.sync += [crc.eq(crc_next), hdr.eq(Cat(hdr[8:], byte_in)), idx.eq(idx + 1)]
                    with m.If(idx == 7):
                        m.d.sync += idx.eq(0)
                        m.next = "HDR_DONE"
            with m.State("HDR_DONE"):
                m.d.sync += [
                    status.eq(Status.OK),
                    done_words.eq(0),
                    word.eq(0),
                ]
                h_cmd, h_once, h_count = hdr[8:15], hdr[15], hdr[48:64]
                with m.If((h_cmd > Cmd.WRITE_FIXED) | (h_once & (h_cmd == Cmd.READ))):
                    m.d.sync += status.eq(Status.BAD_CMD)
                with m.Elif((h_count > self.max_words) | ((h_cmd != Cmd.PING) & (h_count == 0))):
                    m.d.sync += status.eq(Status.BAD_LENGTH)
                is_write = (h_cmd == Cmd.WRITE) | (h_cmd == Cmd.WRITE_FIXED)
                with m.If(is_write & (h_count != 0) & (h_count <= self.max_words)):
                    m.next = "PAYLOAD"
                with m.Else():
                    m.next = "CRC"
            with m.State("PAYLOAD"):
                m.d.comb += [rx.ready.eq(1), receiving.eq(1)]
                with m.If(timed_out):
                    m.next = "HUNT"
                with m.Elif(rx.valid):
                    m.d.sync += [crc.eq(crc_next), word.eq(Cat(word[8:], byte_in)), idx.eq(idx + 1)]
                    with m.If(idx[:2] == 3):
                        m.d.comb += [
                            buf_w.addr.eq(idx[2:]),
                            buf_w.data.eq(Cat(word[8:], byte_in)),
                            buf_w.en.eq(1),
                        ]
                        with m.If(idx[2:] == count - 1):
                            m.d.sync += idx.eq(0)
                            m.next = "CRC"
            with m.State("CRC"):
                m.d.comb += [rx.ready.eq(1), receiving.eq(1)]
                with m.If(timed_out):
                    m.next = "HUNT"
                with m.Elif(rx.valid):
                    m.d.sync += [crc_rx.eq(Cat(crc_rx[8:], byte_in)), idx.eq(idx + 1)]
                    with m.If(idx == 1):
                        m.d.sync += idx.eq(0)
                        m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += crc.eq(CRC_INIT)
                with m.If(crc_rx != crc):
                    m.d.sync += [status.eq(Status.CRC_ERROR), count.eq(0)]
                    m.next = "RSP_SOF"
                with m.Elif(status != Status.OK):
                    m.d.sync += count.eq(0)
                    m.next = "RSP_SOF"
                with m.Elif(once & once_valid & (seq == once_seq)):
                    # a duplicate: answer what the first execution answered, execute nothing
                    m.d.sync += [status.eq(once_status | Flag.REPLAYED), count.eq(once_count)]
                    m.next = "RSP_SOF"
                with m.Else():
                    m.d.sync += once_exec.eq(once)
                    with m.If(write_cmd):
                        m.next = "W_FETCH"
                    with m.Else():
                        with m.If(cmd == Cmd.PING):
                            m.d.sync += count.eq(0)
                        m.next = "RSP_SOF"

            # ---- writes: one AXI4-Lite write per buffered word -------------------------------
            aw_done, w_done = Signal(), Signal()
            # the buffer's read port is synchronous: W_FETCH presents the address, W_ADDR uses the
            # word (and holds the address, so the word stays valid while the bus stalls)
            with m.State("W_FETCH"):
                m.d.comb += buf_r.addr.eq(done_words)
                m.next = "W_ADDR"
            with m.State("W_ADDR"):
                m.d.comb += buf_r.addr.eq(done_words)
                m.d.comb += [
                    axi.awaddr.eq(addr),
                    axi.awvalid.eq(~aw_done),
                    axi.wdata.eq(buf_r.data),
                    axi.wstrb.eq(0xF),
                    axi.wvalid.eq(~w_done),
                ]
                aw_ok = aw_done | axi.awready
                w_ok = w_done | axi.wready
                with m.If(aw_ok & w_ok):
                    m.d.sync += [aw_done.eq(0), w_done.eq(0)]
                    m.next = "W_RESP"
                with m.Else():
                    m.d.sync += [aw_done.eq(aw_ok), w_done.eq(w_ok)]
            with m.State("W_RESP"):
                m.d.comb += axi.bready.eq(1)
                with m.If(axi.bvalid):
                    with m.If(axi.bresp[1]):
                        m.d.sync += [
                            status.eq(Mux(axi.bresp[0], Status.DECERR, Status.SLVERR)),
                            count.eq(done_words),
                        ]
                        m.next = "RSP_SOF"
                    with m.Elif(done_words == count - 1):
                        m.next = "RSP_SOF"
                    with m.Else():
                        m.d.sync += [done_words.eq(done_words + 1), addr.eq(addr + step)]
                        m.next = "W_FETCH"

            # ---- response ---------------------------------------------------------------------
            with m.State("RSP_SOF"):
                # status and count are final here: record an executed ONCE frame's answer
                with m.If(once_exec):
                    m.d.sync += [
                        once_exec.eq(0),
                        once_valid.eq(1),
                        once_seq.eq(seq),
                        once_status.eq(status),
                        once_count.eq(count),
                    ]
                send(SOF_RSP, into_crc=False)
                with m.If(tx.ready):
                    m.d.sync += idx.eq(0)
                    m.next = "RSP_HDR"
            with m.State("RSP_HDR"):
                fields = Cat(seq, count)
                send(fields.word_select(idx[:2], 8))
                with m.If(tx.ready):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == 2):
                        m.d.sync += [idx.eq(0), done_words.eq(0)]
                        with m.If((cmd == Cmd.READ) & (count != 0)):
                            m.next = "R_ADDR"
                        with m.Else():
                            m.next = "RSP_STATUS"
            with m.State("R_ADDR"):
                m.d.comb += [axi.araddr.eq(addr), axi.arvalid.eq(1)]
                with m.If(axi.arready):
                    m.next = "R_DATA"
            with m.State("R_DATA"):
                m.d.comb += axi.rready.eq(1)
                with m.If(axi.rvalid):
                    m.d.sync += word.eq(Mux(axi.rresp[1], 0, axi.rdata))
                    with m.If(axi.rresp[1] & (status == Status.OK)):
                        m.d.sync += status.eq(Mux(axi.rresp[0], Status.DECERR, Status.SLVERR))
                    m.next = "R_SEND"
            with m.State("R_SEND"):
                send(word.word_select(idx[:2], 8))
                with m.If(tx.ready):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx[:2] == 3):
                        m.d.sync += [idx.eq(0), addr.eq(addr + 4), done_words.eq(done_words + 1)]
                        with m.If(done_words == count - 1):
                            m.next = "RSP_STATUS"
                        with m.Else():
                            m.next = "R_ADDR"
            with m.State("RSP_STATUS"):
                send(status | Mux(once_valid, Flag.SESSION, 0))
                with m.If(tx.ready):
                    m.next = "RSP_CRC0"
            with m.State("RSP_CRC0"):
                send(crc[0:8], into_crc=False)
                with m.If(tx.ready):
                    m.next = "RSP_CRC1"
            with m.State("RSP_CRC1"):
                send(crc[8:16], into_crc=False)
                with m.If(tx.ready):
                    m.next = "HUNT"

        return m
