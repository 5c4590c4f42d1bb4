"""The accelerator top: engines behind a controller and one AXI4-Lite subordinate.

:class:`Accelerator` is the contract of ../shared/DESIGN.md: an AXI4-Lite slave with the
identity/capability block (including the config as JSON, so a host discovers what it talks to),
control/status registers, performance counters, the instruction queue, and one window per engine
(``0x0100_0000 * (i + 1)``). The controller pops instructions and hands each to the engine that
owns its opcode (``NOP`` 0x00 retires at once; ``SYNC`` 0x01 waits until every engine is idle).
:class:`LinkTop` puts the host-link bridge in front: bytes in, bytes out, the same on a board's
UART and in the Verilator harness.
"""


import hashlib

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ...config import AccelConfig
from ...hdl.bus import AXI_DECERR, AXI_OKAY, AXI_SLVERR, AXI4LiteSignature
from ...hdl.hostlink import HostLinkBridge
from ..engine import INSTR_BITS, INSTR_WORDS, ErrorCode
from ..registry import engine_spec
from .regs import CONFIG_ROM_BASE, CONFIG_ROM_BYTES, MAGIC, PERF_COUNTERS, REG, VERSION

__all__ = ["Accelerator", "LinkTop", "OP_NOP", "OP_SYNC", "config_rom_words"]

OP_NOP = 0x00
OP_SYNC = 0x01


def config_rom_words(cfg: AccelConfig) -> tuple:
    """(ROM words, JSON length in bytes, 32-bit config hash) for the identity block."""
    js = cfg.to_json().encode()
    if len(js) > CONFIG_ROM_BYTES:
        raise ValueError(f"config JSON is {len(js)} bytes; the identity ROM holds {CONFIG_ROM_BYTES}")
    padded = js + b"\0" * (-len(js) % 4)
    words = [int.from_bytes(padded[i : i + 4], "little") for i in range(0, len(padded), 4)]
    digest = int.from_bytes(hashlib.sha256(js).digest()[:4], "big")
    return words, len(js), digest


class Accelerator(wiring.Component):
    """All engines of ``cfg`` behind the controller and the AXI4-Lite subordinate ``axi``."""

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        self.engines = [engine_spec(type(e).kind).build(e) for e in cfg.engines]
        self.specs = [engine_spec(type(e).kind) for e in cfg.engines]
        super().__init__({"axi": In(AXI4LiteSignature()), "idle": Out(1)})

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        axi = self.axi
        engines = self.engines
        for i, eng in enumerate(engines):
            m.submodules[f"engine{i}_{eng.kind}"] = eng

        # ---- identity ROM ----------------------------------------------------------------------
        rom_words, rom_len, cfg_hash = config_rom_words(cfg)
        m.submodules.rom = rom = memory.Memory(shape=32, depth=len(rom_words), init=rom_words)
        rom_r = rom.read_port()

        # ---- instruction queue and controller ----------------------------------------------------
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=INSTR_BITS, depth=cfg.queue_depth)
        assembling = Signal(INSTR_BITS - 32)
        word_idx = Signal(range(INSTR_WORDS))
        retired = Signal(32)
        err_code, err_src = Signal(8), Signal(8)
        clear_err, clear_perf = Signal(), Signal()
        scratch = Signal(32)

        def raise_error(code, src):
            with m.If(err_code == 0):
                m.d.sync += [err_code.eq(code), err_src.eq(src)]

        opcode = queue.r_data[:8]
        any_busy = Signal()
        m.d.comb += any_busy.eq(Cat(e.busy for e in engines).any())
        owned = Signal()
        for i, (eng, spec) in enumerate(zip(engines, self.specs, strict=True)):
            mine = Signal(name=f"op_engine{i}")
            m.d.comb += mine.eq(Cat(opcode == op for op in spec.opcodes.values()).any())
            m.d.comb += [eng.cmd.payload.eq(queue.r_data), eng.cmd.valid.eq(queue.r_rdy & mine)]
            with m.If(queue.r_rdy & mine):
                m.d.comb += [owned.eq(1), queue.r_en.eq(eng.cmd.ready)]
        with m.If(queue.r_rdy & ~owned):
            with m.If(opcode == OP_NOP):
                m.d.comb += queue.r_en.eq(1)
            with m.Elif(opcode == OP_SYNC):
                m.d.comb += queue.r_en.eq(~any_busy)
            with m.Else():
                m.d.comb += queue.r_en.eq(1)
                raise_error(ErrorCode.BAD_OPCODE, 0xFF)
        ctrl_retire = queue.r_en & ~owned
        done_count = sum((e.done for e in engines), start=ctrl_retire)
        m.d.sync += retired.eq(retired + done_count)
        for i, eng in enumerate(engines):
            with m.If(eng.done & (eng.error != 0)):
                raise_error(eng.error, i)
        with m.If(clear_err):
            m.d.sync += [err_code.eq(0), err_src.eq(0)]
        m.d.comb += self.idle.eq(~queue.r_rdy & ~any_busy)

        # ---- performance counters ---------------------------------------------------------------
        counters = {
            name: Signal(cfg.perf_width, name=f"perf_{name.lower()}") for name in PERF_COUNTERS
        }
        increments = {
            "BUSY": any_busy,
            "MACS": sum((e.perf_macs for e in engines), start=0),
            "ACTIVE": Cat(e.perf_macs != 0 for e in engines).any(),
            "STALL": Cat(e.perf_stall for e in engines).any(),
            "CYCLES": 1,
        }
        for name, c in counters.items():
            with m.If(clear_perf):
                m.d.sync += c.eq(0)
            with m.Else():
                m.d.sync += c.eq(c + increments[name])
        hi_latch = Signal(max(1, cfg.perf_width - 32))

        # ---- AXI4-Lite subordinate ------------------------------------------------------------
        rdata = Signal(32)
        rresp = Signal(2)
        bresp = Signal(2)
        from_rom, from_eng = Signal(), Signal(len(engines))
        addr_w = Signal(32)

        def engine_of(address):
            """(engine select bits, word address in the window)."""
            sel = address[24:32]
            return sel, address[2:24]

        queue_full_err = Signal()
        with m.FSM(name="axi"):
            with m.State("IDLE"):
                with m.If(axi.awvalid & axi.wvalid):
                    m.d.comb += [axi.awready.eq(1), axi.wready.eq(1)]
                    a, d = axi.awaddr, axi.wdata
                    m.d.sync += [bresp.eq(AXI_OKAY), addr_w.eq(a)]
                    sel, waddr = engine_of(a)
                    with m.If(sel != 0):
                        for i, eng in enumerate(engines):
                            with m.If(sel == i + 1):
                                m.d.comb += [
                                    eng.host.addr.eq(waddr),
                                    eng.host.w_data.eq(d),
                                    eng.host.w_en.eq(1),
                                ]
                                with m.If(eng.host.err):
                                    m.d.sync += bresp.eq(AXI_SLVERR)
                        with m.If(sel > len(engines)):
                            m.d.sync += bresp.eq(AXI_DECERR)
                    with m.Elif(a == REG["CTRL"]):
                        m.d.comb += [clear_err.eq(d[0]), clear_perf.eq(d[1])]
                    with m.Elif(a == REG["SCRATCH"]):
                        m.d.sync += scratch.eq(d)
                    with m.Elif(a == REG["QUEUE"]):
                        with m.If(word_idx == INSTR_WORDS - 1):
                            m.d.comb += [queue.w_data.eq(Cat(assembling, d)), queue.w_en.eq(1)]
                            m.d.sync += word_idx.eq(0)
                            with m.If(~queue.w_rdy):
                                m.d.comb += queue_full_err.eq(1)
                                m.d.sync += bresp.eq(AXI_SLVERR)
                        with m.Else():
                            m.d.sync += [
                                assembling.word_select(word_idx, 32).eq(d),
                                word_idx.eq(word_idx + 1),
                            ]
                    with m.Elif(a[12:] == 0):
                        m.d.sync += bresp.eq(AXI_SLVERR)  # identity block is read-only
                    with m.Else():
                        m.d.sync += bresp.eq(AXI_DECERR)
                    m.next = "BRESP"
                with m.Elif(axi.arvalid):
                    m.d.comb += axi.arready.eq(1)
                    a = axi.araddr
                    m.d.sync += [rresp.eq(AXI_OKAY), rdata.eq(0), from_rom.eq(0), from_eng.eq(0)]
                    sel, waddr = engine_of(a)
                    regs = {
                        "MAGIC": MAGIC,
                        "VERSION": VERSION,
                        "CONFIG_HASH": cfg_hash,
                        "CONFIG_LEN": rom_len,
                        "N_ENGINES": len(engines),
                        "QUEUE_DEPTH": cfg.queue_depth,
                        "LINK_MAX_WORDS": cfg.link_max_words,
                        "STATUS": Cat(
                            self.idle,
                            err_code != 0,
                            Const(0, 6),
                            queue.level[:8],
                            (cfg.queue_depth - queue.level)[:8],
                        ),
                        "ERROR": Cat(err_code, err_src),
                        "RETIRED": retired,
                        "SCRATCH": scratch,
                    }
                    with m.If(sel != 0):
                        for i, eng in enumerate(engines):
                            with m.If(sel == i + 1):
                                m.d.comb += [eng.host.addr.eq(waddr), eng.host.r_en.eq(1)]
                                m.d.sync += from_eng.eq(1 << i)
                                with m.If(eng.host.err):
                                    m.d.sync += rresp.eq(AXI_SLVERR)
                        with m.If(sel > len(engines)):
                            m.d.sync += rresp.eq(AXI_DECERR)
                    with m.Elif((a >= CONFIG_ROM_BASE) & (a < CONFIG_ROM_BASE + CONFIG_ROM_BYTES)):
                        word = (a - CONFIG_ROM_BASE)[2:]
                        with m.If(word < len(rom_words)):
                            m.d.comb += [rom_r.addr.eq(word), rom_r.en.eq(1)]
                            m.d.sync += from_rom.eq(1)
                    with m.Else():
                        with m.Switch(a):
                            for name, value in regs.items():
                                with m.Case(REG[name]):
                                    m.d.sync += rdata.eq(value)
                            for name, c in counters.items():
                                with m.Case(REG[f"PERF_{name}_LO"]):
                                    m.d.sync += [rdata.eq(c[:32]), hi_latch.eq(c[32:])]
                                with m.Case(REG[f"PERF_{name}_HI"]):
                                    m.d.sync += rdata.eq(hi_latch)
                            with m.Case(REG["CTRL"], REG["QUEUE"]):
                                m.d.sync += rresp.eq(AXI_SLVERR)  # write-only
                            with m.Default():
                                m.d.sync += rresp.eq(Mux(a[12:] == 0, AXI_OKAY, AXI_DECERR))
                    m.next = "RDATA"
            with m.State("BRESP"):
                m.d.comb += [axi.bvalid.eq(1), axi.bresp.eq(bresp)]
                with m.If(axi.bready):
                    m.next = "IDLE"
            with m.State("RDATA"):
                # memory read data is valid now; hold it for the response
                with m.If(from_rom):
                    m.d.sync += rdata.eq(rom_r.data)
                for i, eng in enumerate(engines):
                    with m.If(from_eng[i]):
                        m.d.sync += rdata.eq(eng.host.r_data)
                m.next = "RRESP"
            with m.State("RRESP"):
                m.d.comb += [axi.rvalid.eq(1), axi.rdata.eq(rdata), axi.rresp.eq(rresp)]
                with m.If(axi.rready):
                    m.next = "IDLE"
        with m.If(queue_full_err):
            raise_error(ErrorCode.QUEUE_OVERFLOW, 0xFF)
        return m


class LinkTop(wiring.Component):
    """Host-link bridge + :class:`Accelerator`: the design a board or the simulator runs.

    ``rx``/``tx`` carry the host-link protocol's bytes (see ``hdl/hostlink.py``); ``idle`` is
    high when no frame is in progress and the accelerator has nothing queued or running.
    """

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))
    idle: Out(1)

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        self.accel = Accelerator(cfg)
        self.bridge = HostLinkBridge(max_words=cfg.link_max_words, timeout=cfg.link_timeout_cycles)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = bridge = self.bridge
        m.submodules.accel = accel = self.accel
        wiring.connect(m, bridge=bridge.axi, accel=accel.axi)
        wiring.connect(m, wiring.flipped(self.rx), bridge.rx)
        wiring.connect(m, bridge.tx, wiring.flipped(self.tx))
        m.d.comb += self.idle.eq(bridge.idle & accel.idle)
        return m

