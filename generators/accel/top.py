"""The accelerator top (contract v2): engines, a controller with programs, a DMA, device memory.

:class:`Accelerator` is the contract of ../shared/DESIGN.md:

* ``axi``: an AXI4-Lite subordinate with the identity/capability block (the config as JSON, so a
  host discovers what it talks to), control/status registers, performance counters, the
  register-written instruction queue (single instructions, bring-up), one window per engine at
  ``0x0100_0000 * (i + 1)``, and device memory at ``MEM_WINDOW_BASE`` (single words: how the
  serial transport reaches device buffers);
* ``mem``: an AXI4 manager to device memory, shared (``hdl/axi4.py``) by the program fetcher, the
  load and store DMA channels and the AXI4-Lite window onto device memory.

The controller (``controller.py``) runs programs from device memory on three queues with
dependency tokens; the DMA (``dma.py``) moves strided 2-D blocks between device memory and the
engines' windows. An engine's single window port is shared: the AXI4-Lite subordinate wins, the
DMA channels and the COPY unit take turns when more than one wants the same engine, and the
winner's access reaches the engine through a register stage (see ``dma.WinPortSignature``).
:class:`LinkTop` puts the host-link bridge in front: bytes in, bytes out, the same on a board's
UART and in the Verilator harness; its ``mem`` port goes to the board's memory or the harness.
"""


import hashlib

from amaranth import Cat, ClockDomain, ClockSignal, DomainRenamer, Instance, Module, Mux
from amaranth import ResetSignal, Signal
from amaranth.lib import fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ...config import AccelConfig
from ...hdl.axi4 import AXI4Interconnect, AXI4Signature
from ...hdl.bus import AXI_DECERR, AXI_OKAY, AXI_SLVERR, AXI4LiteSignature
from ...hdl.hostlink import HostLinkBridge
from ..engine import INSTR_BITS, INSTR_WORDS, ErrorCode
from ..registry import engine_spec
from .controller import Controller
from .dma import LoadChannel, StoreChannel
from .regs import (
    CONFIG_ROM_BASE,
    CONFIG_ROM_BYTES,
    CTRL_BITS,
    MAGIC,
    MINIMAL_PERF_COUNTERS,
    PERF_COUNTERS,
    REG,
    STATUS_BITS,
    VERSION,
)

__all__ = ["Accelerator", "LinkTop", "config_rom_words", "SIM_GATE_MODULE", "SIM_GATE_HOLD"]

# Simulation only (``sim/board.py``): each engine's clock stops while the engine is idle, so
# Verilator skips its processes. An engine counts as active while it is busy, retiring, offered an
# instruction, or its window is accessed, and for SIM_GATE_HOLD cycles after: longer than any
# engine's pipeline runs on after ``busy`` falls. The gate is the usual latch-based clock gate
# (the enable is taken while the clock is low), written in Verilog because Amaranth has no
# latches; the harness's Verilog carries SIM_GATE_MODULE. tests/test_sim_gating.py checks that a
# gated board gives the same results and the same counters, cycle for cycle, as an ungated one.
SIM_GATE_HOLD = 32
SIM_GATE_MODULE = """\
module gatesmith_sim_clock_gate(input wire clk, input wire en, output wire gclk);
  reg en_l;
  /* verilator lint_off LATCH */
  always @* if (!clk) en_l = en;
  /* verilator lint_on LATCH */
  assign gclk = clk & en_l;
endmodule
"""


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
    """All engines of ``cfg`` behind the controller, the DMA and the AXI4-Lite subordinate."""

    def __init__(self, cfg: AccelConfig, *, sim_gates: bool = False):
        self.cfg = cfg
        self.sim_gates = sim_gates  # simulation only: see SIM_GATE_MODULE
        self.engines = [engine_spec(type(e).kind).build(e) for e in cfg.engines]
        self.specs = [engine_spec(type(e).kind) for e in cfg.engines]
        super().__init__(
            {"axi": In(AXI4LiteSignature()), "mem": Out(AXI4Signature()), "idle": Out(1)}
        )

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        engines = self.engines
        for i, eng in enumerate(engines):
            m.submodules[f"engine{i}_{eng.kind}"] = self._gated(m, i, eng) if self.sim_gates else eng

        rom_words, rom_len, cfg_hash = config_rom_words(cfg)
        m.submodules.rom = rom = memory.Memory(shape=32, depth=len(rom_words), init=rom_words)
        rom_r = rom.read_port()

        # ---- controller, DMA, device-memory interconnect ----------------------------------------
        m.submodules.regq = regq = fifo.SyncFIFOBuffered(width=INSTR_BITS, depth=cfg.queue_depth)
        m.submodules.ctrl = ctrl = Controller(
            engines, self.specs, queue_depth=cfg.queue_depth, mem_bytes=cfg.mem_bytes,
            watchdog=cfg.watchdog_cycles, max_burst=cfg.mem_max_burst, copy=cfg.copy_unit,
        )  # fmt: skip
        aw = (cfg.mem_bytes - 1).bit_length()  # the controller checks every copy against it
        m.submodules.load = ld = LoadChannel(max_burst=cfg.mem_max_burst, addr_width=aw)
        m.submodules.store = st = StoreChannel(max_burst=cfg.mem_max_burst, addr_width=aw)
        m.submodules.interconnect = ic = AXI4Interconnect(n_read=3, n_write=2)
        wiring.connect(m, ic.bus, wiring.flipped(self.mem))
        wiring.connect(m, ctrl.fetch, ic.rd1)
        wiring.connect(m, ld.mem, ic.rd2)
        wiring.connect(m, st.mem, ic.wr1)
        wiring.connect(m, ctrl.load, ld.cmd)
        wiring.connect(m, ctrl.store, st.cmd)
        m.d.comb += [
            ctrl.reg_instr.payload.eq(regq.r_data),
            ctrl.reg_instr.valid.eq(regq.r_rdy),
            regq.r_en.eq(ctrl.reg_instr.ready),
        ]
        host_rd, host_wr = ic.rd0, ic.wr0

        # ---- engine window ports: AXI4-Lite first, then the DMA ports in turn ------------------
        ax_sel = Signal(8)  # engine index + 1 of this cycle's AXI4-Lite window access (0: none)
        ax_addr, ax_wdata, ax_wen, ax_ren = Signal(22), Signal(32), Signal(), Signal()
        ax_err = Signal()
        # (port, writes?): load writes windows, store reads them, COPY reads one and writes one
        ports = [(ld.win, True), (st.win, False)]
        if cfg.copy_unit:
            ports += [(ctrl.copy_rd, False), (ctrl.copy_wr, True)]
        for port, _ in ports:
            m.d.comb += port.grant.eq(0)
        for i, eng in enumerate(engines):
            h = eng.host
            # The arbiter's choice goes through a register stage into the engine's port, so no
            # path runs from a requester's request through the arbiter into the engine's memory
            # decode: the access reaches the engine the cycle after its grant, the engine's
            # ``err`` goes back to its owner then, and read data is on ``r_data`` a cycle later.
            a_addr, a_wdata = Signal(22, name=f"win{i}_addr"), Signal(32, name=f"win{i}_wdata")
            a_wen, a_ren = Signal(name=f"win{i}_wen"), Signal(name=f"win{i}_ren")
            a_who = Signal(range(len(ports) + 2), name=f"win{i}_who")  # 1: AXI4-Lite, 2+j: port j
            s_who = Signal.like(a_who, name=f"win{i}_owner")
            m.d.sync += [h.addr.eq(a_addr), h.w_data.eq(a_wdata), h.w_en.eq(a_wen),
                         h.r_en.eq(a_ren), s_who.eq(a_who)]  # fmt: skip
            with m.If(s_who == 1):
                m.d.comb += ax_err.eq(h.err)
            for j, (port, _) in enumerate(ports):
                with m.If(s_who == j + 2):
                    m.d.comb += port.err.eq(h.err)
            hits = []
            for j, (port, writes) in enumerate(ports):
                hit = Signal(name=f"hit{i}_{j}")
                m.d.comb += hit.eq((port.w_en if writes else port.r_en) & (port.eng == i))
                hits.append(hit)
            last = Signal(range(len(ports)), name=f"last{i}")  # round robin: last granted port

            def grant(j, last=last, a=(a_addr, a_wdata, a_wen, a_ren, a_who)):
                port, writes = ports[j]
                addr, wdata, wen, ren, who = a
                m.d.comb += [addr.eq(port.addr), port.grant.eq(1), who.eq(j + 2)]
                if writes:
                    m.d.comb += [wdata.eq(port.w_data), wen.eq(1)]
                else:
                    m.d.comb += ren.eq(1)
                m.d.sync += last.eq(j)

            with m.If(ax_sel == i + 1):
                m.d.comb += [a_addr.eq(ax_addr), a_wdata.eq(ax_wdata), a_wen.eq(ax_wen),
                             a_ren.eq(ax_ren), a_who.eq(1)]  # fmt: skip
            with m.Else():
                with m.Switch(last):
                    for k in range(len(ports)):
                        with m.Case(k):
                            order = [(k + 1 + t) % len(ports) for t in range(len(ports))]
                            with m.If(hits[order[0]]):
                                grant(order[0])
                            for j in order[1:]:
                                with m.Elif(hits[j]):
                                    grant(j)
            for port, writes in ports:
                if not writes:
                    with m.If(port.eng == i):
                        m.d.comb += port.r_data.eq(h.r_data)

        # ---- performance counters ---------------------------------------------------------------
        any_busy = Signal()
        m.d.comb += any_busy.eq(Cat(e.busy for e in engines).any())
        clear_perf = Signal()
        names = [*PERF_COUNTERS, *(f"E{i}_BUSY" for i in range(len(engines)))]
        kept = set(names) if cfg.perf_counters == "all" else set(MINIMAL_PERF_COUNTERS)
        # Counters the config leaves out read 0. With one engine E0_BUSY counts what BUSY does:
        # the two registers read the same counter.
        alias = {"E0_BUSY": "BUSY"} if len(engines) == 1 and "BUSY" in kept else {}
        counters = {name: Signal(cfg.perf_width, name=f"perf_{name.lower()}")
                    for name in names if name in kept and name not in alias}  # fmt: skip
        absent = [name for name in names if name not in kept]
        increments = {
            "BUSY": any_busy,
            "MACS": sum((e.perf_macs for e in engines), start=0),
            "ACTIVE": Cat(e.perf_macs != 0 for e in engines).any(),
            "STALL": Cat(e.perf_stall for e in engines).any(),
            "CYCLES": 1,
            "LOAD": ld.cmd.words,
            "STORE": st.cmd.words,
            "DMA": ld.cmd.busy | st.cmd.busy,
            "PROGRAM": ctrl.running,
            "COPY": ctrl.copy_words,
            **{f"E{i}_BUSY": e.busy for i, e in enumerate(engines)},
        }
        for name, c in counters.items():
            with m.If(clear_perf):
                m.d.sync += c.eq(0)
            with m.Else():
                m.d.sync += c.eq(c + increments[name])
        for name, other in alias.items():
            if name in kept:
                counters[name] = counters[other]
        hi_latch = Signal(max(1, cfg.perf_width - 32))

        m.d.comb += self.idle.eq(ctrl.idle & (regq.level == 0) & ~ic.outstanding & ~ld.cmd.busy
                                 & ~st.cmd.busy & ~ctrl.copy_busy)  # fmt: skip
        status = Signal(32)
        for name, value in {
            "idle": self.idle, "error": ctrl.err_code != 0, "running": ctrl.running,
            "program_done": ctrl.prog_done, "queued": regq.level,
            "free": cfg.queue_depth - regq.level, "pending": ctrl.queued,
        }.items():  # fmt: skip
            lsb, width = STATUS_BITS[name]
            m.d.comb += status[lsb : lsb + width].eq(value)

        # ---- AXI4-Lite subordinate ------------------------------------------------------------
        self._axi_lite(m, rom_r, rom_words, rom_len, cfg_hash, regq, ctrl, host_rd, host_wr,
                       counters, absent, hi_latch, status, clear_perf,
                       (ax_sel, ax_addr, ax_wdata, ax_wen, ax_ren, ax_err))  # fmt: skip
        return m

    @staticmethod
    def _gated(m, i, eng):
        """``eng`` in a clock domain of its own whose clock runs only while it is active."""
        dom = f"engine{i}"
        m.domains += ClockDomain(dom, local=True)
        h = eng.host
        active, enable = Signal(name=f"engine{i}_active"), Signal(name=f"engine{i}_clock_en")
        hold = Signal(range(SIM_GATE_HOLD + 1), init=SIM_GATE_HOLD, name=f"engine{i}_hold")
        m.d.comb += [
            active.eq(eng.busy | eng.done | eng.cmd.valid | h.w_en | h.r_en | ResetSignal()),
            enable.eq(active | (hold != 0)),
            ResetSignal(dom).eq(ResetSignal()),
        ]
        with m.If(active):
            m.d.sync += hold.eq(SIM_GATE_HOLD)
        with m.Elif(hold != 0):
            m.d.sync += hold.eq(hold - 1)
        m.submodules[f"engine{i}_gate"] = Instance(
            "gatesmith_sim_clock_gate", i_clk=ClockSignal(), i_en=enable, o_gclk=ClockSignal(dom)
        )
        return DomainRenamer(dom)(eng)

    def _axi_lite(self, m, rom_r, rom_words, rom_len, cfg_hash, regq, ctrl, host_rd, host_wr,
                  counters, absent, hi_latch, status, clear_perf, win):  # fmt: skip
        cfg, axi, engines = self.cfg, self.axi, self.engines
        ax_sel, ax_addr, ax_wdata, ax_wen, ax_ren, ax_err = win
        rdata, rresp, bresp = Signal(32), Signal(2), Signal(2)
        from_rom, from_eng = Signal(), Signal(len(engines))
        assembling = Signal(INSTR_BITS - 32)
        word_idx = Signal(range(INSTR_WORDS))
        scratch, prog_addr, prog_count = Signal(32), Signal(32), Signal(16)
        # (a device-memory access is range-checked first: its address has the memory's width)
        mem_addr, mem_wdata = Signal((cfg.mem_bytes - 1).bit_length()), Signal(32)
        queue_full = Signal()
        m.d.comb += [ctrl.prog_addr.eq(prog_addr), ctrl.prog_count.eq(prog_count)]
        m.d.comb += ctrl.raise_code.eq(Mux(queue_full, ErrorCode.QUEUE_OVERFLOW, 0))
        m.d.comb += [
            host_rd.ar.payload.addr.eq(mem_addr),
            host_rd.ar.payload.len.eq(0),
            host_wr.aw.payload.addr.eq(mem_addr),
            host_wr.aw.payload.len.eq(0),
            host_wr.w.payload.data.eq(mem_wdata),
            host_wr.w.payload.last.eq(1),
        ]
        in_mem = Signal()

        def engine_of(address):
            return address[24:31], address[2:24]

        ctrl_bits = {n: lsb for n, (lsb, _) in CTRL_BITS.items()}
        with m.FSM(name="axi"):
            with m.State("IDLE"):
                with m.If(axi.awvalid & axi.wvalid):
                    m.d.comb += [axi.awready.eq(1), axi.wready.eq(1)]
                    a, d = axi.awaddr, axi.wdata
                    m.d.sync += bresp.eq(AXI_OKAY)
                    sel, waddr = engine_of(a)
                    m.next = "BRESP"
                    with m.If(a[31]):
                        m.d.sync += [mem_addr.eq(a[:31]), mem_wdata.eq(d)]
                        with m.If(a[:31] >= cfg.mem_bytes):
                            m.d.sync += bresp.eq(AXI_DECERR)
                        with m.Else():
                            m.next = "MEMW_A"
                    with m.Elif(sel != 0):
                        m.d.comb += [ax_sel.eq(sel), ax_addr.eq(waddr), ax_wdata.eq(d), ax_wen.eq(1)]
                        with m.If(sel > len(engines)):
                            m.d.sync += bresp.eq(AXI_DECERR)
                        with m.Else():
                            m.next = "WIN_W"  # the engine answers through the window stage
                    with m.Elif(a == REG["CTRL"]):
                        m.d.comb += [
                            ctrl.clear.eq(d[ctrl_bits["clear_error"]]),
                            clear_perf.eq(d[ctrl_bits["clear_perf"]]),
                            ctrl.prog_start.eq(d[ctrl_bits["start_program"]]),
                        ]
                    with m.Elif(a == REG["SCRATCH"]):
                        m.d.sync += scratch.eq(d)
                    with m.Elif(a == REG["PROG_ADDR"]):
                        m.d.sync += prog_addr.eq(d)
                    with m.Elif(a == REG["PROG_COUNT"]):
                        m.d.sync += prog_count.eq(d)
                    with m.Elif(a == REG["QUEUE"]):
                        with m.If(word_idx == INSTR_WORDS - 1):
                            m.d.comb += [regq.w_data.eq(Cat(assembling, d)), regq.w_en.eq(1)]
                            m.d.sync += word_idx.eq(0)
                            with m.If(~regq.w_rdy):
                                m.d.comb += queue_full.eq(1)
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
                with m.Elif(axi.arvalid):
                    m.d.comb += axi.arready.eq(1)
                    a = axi.araddr
                    m.d.sync += [rresp.eq(AXI_OKAY), rdata.eq(0), from_rom.eq(0), from_eng.eq(0),
                                 in_mem.eq(0)]  # fmt: skip
                    sel, waddr = engine_of(a)
                    regs = {
                        "MAGIC": MAGIC,
                        "VERSION": VERSION,
                        "CONFIG_HASH": cfg_hash,
                        "CONFIG_LEN": rom_len,
                        "N_ENGINES": len(engines),
                        "QUEUE_DEPTH": cfg.queue_depth,
                        "LINK_MAX_WORDS": cfg.link_max_words,
                        "MEM_BYTES": cfg.mem_bytes,
                        "MEM_MAX_BURST": cfg.mem_max_burst,
                        "STATUS": status,
                        "ERROR": Cat(ctrl.err_code, ctrl.err_src),
                        "ERROR_ADDR": ctrl.err_addr,
                        "ERROR_PC": ctrl.err_pc,
                        "RETIRED": ctrl.retired,
                        "SCRATCH": scratch,
                        "PROG_ADDR": prog_addr,
                        "PROG_COUNT": prog_count,
                    }
                    m.next = "RDATA"
                    with m.If(a[31]):
                        m.d.sync += mem_addr.eq(a[:31])
                        with m.If(a[:31] >= cfg.mem_bytes):
                            m.d.sync += rresp.eq(AXI_DECERR)
                        with m.Else():
                            m.next = "MEMR_A"
                    with m.Elif(sel != 0):
                        m.d.comb += [ax_sel.eq(sel), ax_addr.eq(waddr), ax_ren.eq(1)]
                        for i in range(len(engines)):
                            with m.If(sel == i + 1):
                                m.d.sync += from_eng.eq(1 << i)
                        with m.If(sel > len(engines)):
                            m.d.sync += rresp.eq(AXI_DECERR)
                        with m.Else():
                            m.next = "WIN_R"  # the engine answers through the window stage
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
                            if absent:  # left out by the config: they read 0
                                with m.Case(*(REG[f"PERF_{n}_{h}"] for n in absent
                                              for h in ("LO", "HI"))):  # fmt: skip
                                    pass
                            with m.Case(REG["CTRL"], REG["QUEUE"]):
                                m.d.sync += rresp.eq(AXI_SLVERR)  # write-only
                            with m.Default():
                                m.d.sync += rresp.eq(Mux(a[12:] == 0, AXI_OKAY, AXI_DECERR))
            with m.State("MEMW_A"):
                m.d.comb += host_wr.aw.valid.eq(1)
                with m.If(host_wr.aw.ready):
                    m.next = "MEMW_D"
            with m.State("MEMW_D"):
                m.d.comb += host_wr.w.valid.eq(1)
                with m.If(host_wr.w.ready):
                    m.next = "MEMW_B"
            with m.State("MEMW_B"):
                m.d.comb += host_wr.b.ready.eq(1)
                with m.If(host_wr.b.valid):
                    m.d.sync += bresp.eq(Mux(host_wr.b.payload != 0, AXI_SLVERR, AXI_OKAY))
                    m.next = "BRESP"
            with m.State("MEMR_A"):
                m.d.comb += host_rd.ar.valid.eq(1)
                with m.If(host_rd.ar.ready):
                    m.next = "MEMR_D"
            with m.State("MEMR_D"):
                m.d.comb += host_rd.r.ready.eq(1)
                with m.If(host_rd.r.valid):
                    m.d.sync += [
                        rdata.eq(host_rd.r.payload.data),
                        rresp.eq(Mux(host_rd.r.payload.resp != 0, AXI_SLVERR, AXI_OKAY)),
                        in_mem.eq(1),
                    ]
                    m.next = "RRESP"
            with m.State("WIN_W"):
                with m.If(ax_err):
                    m.d.sync += bresp.eq(AXI_SLVERR)
                m.next = "BRESP"
            with m.State("WIN_R"):
                with m.If(ax_err):
                    m.d.sync += rresp.eq(AXI_SLVERR)
                m.next = "RDATA"
            with m.State("BRESP"):
                m.d.comb += [axi.bvalid.eq(1), axi.bresp.eq(bresp)]
                with m.If(axi.bready):
                    m.next = "IDLE"
            with m.State("RDATA"):
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


class LinkTop(wiring.Component):
    """Host-link bridge + :class:`Accelerator`: the design a board or the simulator runs.

    ``rx``/``tx`` carry the host-link protocol's bytes (see ``hdl/hostlink.py``); ``mem`` is the
    accelerator's AXI4 manager to device memory; ``idle`` is high when no frame is in progress
    and the accelerator has nothing queued or running.
    """

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))
    mem: Out(AXI4Signature())
    idle: Out(1)

    def __init__(self, cfg: AccelConfig, *, sim_gates: bool = False):
        self.cfg = cfg
        self.accel = Accelerator(cfg, sim_gates=sim_gates)
        self.bridge = HostLinkBridge(max_words=cfg.link_max_words, timeout=cfg.link_timeout_cycles)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = bridge = self.bridge
        m.submodules.accel = accel = self.accel
        wiring.connect(m, bridge=bridge.axi, accel=accel.axi)
        wiring.connect(m, wiring.flipped(self.rx), bridge.rx)
        wiring.connect(m, bridge.tx, wiring.flipped(self.tx))
        wiring.connect(m, accel.mem, wiring.flipped(self.mem))
        m.d.comb += self.idle.eq(bridge.idle & accel.idle)
        return m

