"""The controller (contract v2): programs, three queues, dependency tokens, a watchdog.

Instructions come from two sources: the register-written queue (single instructions, bring-up;
no tokens) and the *program fetcher*, which reads ``count`` entries (header + instruction, see
``isa.py``) from device memory at ``addr`` once ``start`` is pulsed. Each instruction goes to the
load, compute or store queue by its opcode; the three run concurrently, each in order, and the
token counters between them (VTA's push/pop bits) order what must be ordered.

Errors: the first one wins and is latched (code, source, address, program entry) until
``clear``; while an error is latched no new instruction starts and queued ones are discarded, so
a program stops cleanly. The watchdog raises DEADLOCK when a program makes no progress (nothing
fetched, started or retired) for ``watchdog`` cycles: a token that can never arrive.
"""

from amaranth import Cat, Module, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ...hdl.axi4 import BurstReader, ReadReqSignature
from ..engine import INSTR_BITS, ErrorCode
from .copy import CopyUnit
from .dma import DmaCmdSignature, WinPortSignature
from .isa import ENTRY_WORDS, CopyDst, CopySrc, DmaInstr, EntryHeader, Op

__all__ = ["Controller", "SRC_CTRL", "SRC_LOAD", "SRC_STORE", "SRC_COPY", "PC_NONE"]

SRC_CTRL = 0xFF
SRC_LOAD = 0xFD
SRC_STORE = 0xFE
SRC_COPY = 0xFC
PC_NONE = 0xFFFF  # ERROR_PC of an instruction that came from the register queue

_ENTRY_BITS = 32 * ENTRY_WORDS
_Q_BITS = 4 + INSTR_BITS + 16  # token bits, instruction, program entry index


class Controller(wiring.Component):
    def __init__(self, engines, specs, *, queue_depth: int, mem_bytes: int, watchdog: int,
                 max_burst: int, copy: bool = True):  # fmt: skip
        self.engines, self.specs, self.copy = engines, specs, copy
        self.queue_depth, self.mem_bytes, self.watchdog = queue_depth, mem_bytes, watchdog
        self.max_burst = max_burst
        super().__init__(
            {
                "reg_instr": In(stream.Signature(INSTR_BITS)),
                "prog_start": In(1),
                "prog_addr": In(32),
                "prog_count": In(16),
                "fetch": Out(ReadReqSignature()),
                "load": Out(DmaCmdSignature()),
                "store": Out(DmaCmdSignature()),
                "copy_rd": Out(WinPortSignature()),  # the COPY unit's window ports
                "copy_wr": Out(WinPortSignature()),
                "copy_words": Out(1),
                "copy_busy": Out(1),
                "clear": In(1),
                "raise_code": In(8),  # an error the top detected (e.g. a full register queue)
                "err_code": Out(8),
                "err_src": Out(8),
                "err_addr": Out(32),
                "err_pc": Out(16),
                "retired": Out(32),
                "running": Out(1),  # a program is in progress
                "prog_done": Out(1),  # the last program finished (cleared on start)
                "idle": Out(1),
                "queued": Out(8),  # entries waiting in the three queues
            }
        )

    def elaborate(self, platform):
        m = Module()
        engines, specs = self.engines, self.specs
        halt = Signal()
        m.d.comb += halt.eq(self.err_code != 0)

        def raise_error(code, src, addr=0, pc=PC_NONE):
            with m.If(self.err_code == 0):
                m.d.sync += [self.err_code.eq(code), self.err_src.eq(src),
                             self.err_addr.eq(addr), self.err_pc.eq(pc)]  # fmt: skip

        # ---- program fetch -----------------------------------------------------------------------
        m.submodules.fetcher = fr = BurstReader(max_burst=self.max_burst)
        wiring.connect(m, fr.mem, wiring.flipped(self.fetch))
        running = self.running
        fetched = Signal(16)  # entries handed to a queue (or dropped after an error)
        m.d.comb += [
            fr.start.eq(self.prog_start & ~running),
            fr.addr.eq(self.prog_addr),
            # one row per entry: a row's length is 16 bits, a program's up to 65535 entries
            fr.rows.eq(self.prog_count),
            fr.row_words.eq(ENTRY_WORDS),
            fr.stride.eq(ENTRY_WORDS),
        ]
        word = Signal(range(ENTRY_WORDS))
        entry = Signal(_ENTRY_BITS)
        entry_valid = Signal()
        m.d.comb += fr.data.ready.eq(~entry_valid)
        with m.If(fr.data.valid & fr.data.ready):
            m.d.sync += [entry.word_select(word, 32).eq(fr.data.payload), word.eq(word + 1)]
            with m.If(word == ENTRY_WORDS - 1):
                m.d.sync += [word.eq(0), entry_valid.eq(1)]

        # ---- the three queues ----------------------------------------------------------------------
        qs = []
        for name in ("lq", "cq", "sq"):
            q = fifo.SyncFIFOBuffered(width=_Q_BITS, depth=self.queue_depth)
            m.submodules[name] = q
            qs.append(q)
        lq, cq, sq = qs
        m.d.comb += self.queued.eq(lq.level + cq.level + sq.level)

        # classify: program entries first, then register-written single instructions
        src_hdr, src_ins, src_pc, src_valid, from_prog = (
            Signal(32), Signal(INSTR_BITS), Signal(16), Signal(), Signal())  # fmt: skip
        with m.If(entry_valid):
            m.d.comb += [src_hdr.eq(entry[:32]), src_ins.eq(entry[32:]), src_pc.eq(fetched),
                         src_valid.eq(1), from_prog.eq(1)]  # fmt: skip
        with m.Elif(~running):
            m.d.comb += [src_hdr.eq(0), src_ins.eq(self.reg_instr.payload), src_pc.eq(PC_NONE),
                         src_valid.eq(self.reg_instr.valid)]  # fmt: skip
        op = src_ins[:8]
        target = Signal(2)
        m.d.comb += target.eq(1)
        with m.If(op == Op.LOAD):
            m.d.comb += target.eq(0)
        with m.Elif(op == Op.STORE):
            m.d.comb += target.eq(2)
        accept = Signal()
        for i, q in enumerate(qs):
            m.d.comb += q.w_data.eq(Cat(src_hdr[:4], src_ins, src_pc))
            with m.If(src_valid & (target == i) & q.w_rdy & ~halt):
                m.d.comb += [q.w_en.eq(1), accept.eq(1)]
        drop = Signal()
        m.d.comb += drop.eq(src_valid & halt)  # after an error: discard the rest
        with m.If(accept | drop):
            with m.If(from_prog):
                m.d.sync += [entry_valid.eq(0), fetched.eq(fetched + 1)]
            with m.Else():
                m.d.comb += self.reg_instr.ready.eq(1)

        # ---- tokens -------------------------------------------------------------------------------
        tok = {n: Signal(8, name=f"tok_{n}") for n in ("l2c", "c2l", "c2s", "s2c")}
        inc = {n: Signal(name=f"inc_{n}") for n in tok}
        dec = {n: Signal(name=f"dec_{n}") for n in tok}
        for n, t in tok.items():
            m.d.sync += t.eq(t + inc[n] - dec[n])
        retire = {n: Signal(name=f"retire_{n}") for n in ("load", "compute", "store")}
        m.d.sync += self.retired.eq(self.retired + retire["load"] + retire["compute"]
                                    + retire["store"])  # fmt: skip

        def head(q):
            return q.r_data[:4], q.r_data[4 : 4 + INSTR_BITS], q.r_data[4 + INSTR_BITS :]

        # ---- DMA units (load and store are the same machine on different tokens) ----------------
        progress = Signal()
        units_busy = []
        for q, cmdp, src, wait_tok, give_tok, pop_bit, push_bit, rname in (
            (lq, self.load, SRC_LOAD, "c2l", "l2c", 1, 3, "load"),
            (sq, self.store, SRC_STORE, "c2s", "s2c", 0, 2, "store"),
        ):
            hdr, ins, pc = head(q)
            ins_l = Signal(INSTR_BITS, name=f"{rname}_ins")
            hdr_l = Signal(4, name=f"{rname}_hdr")
            pc_l = Signal(16, name=f"{rname}_pc")
            d = DmaInstr(ins_l)
            busy = Signal(name=f"{rname}_unit_busy")
            units_busy.append(busy)
            end = Signal(40, name=f"{rname}_end")
            m.d.comb += end.eq(d.mem_addr + ((d.rows - 1) * d.mem_stride + d.row_words) * 4)
            with m.FSM(name=f"{rname}_unit"):
                with m.State("IDLE"):
                    with m.If(q.r_rdy):
                        with m.If(halt):
                            m.d.comb += q.r_en.eq(1)  # discard
                        with m.Elif(~hdr[pop_bit] | (tok[wait_tok] != 0)):
                            m.d.comb += [q.r_en.eq(1), dec[wait_tok].eq(hdr[pop_bit])]
                            m.d.sync += [ins_l.eq(ins), hdr_l.eq(hdr), pc_l.eq(pc)]
                            m.next = "CHECK"
                with m.State("CHECK"):
                    m.d.comb += busy.eq(1)
                    with m.If((d.rows == 0) | (d.row_words == 0)):
                        raise_error(ErrorCode.BAD_SHAPE, src, d.mem_addr, pc_l)
                        m.next = "RETIRE"
                    with m.Elif(d.mem_addr[:2] != 0):
                        raise_error(ErrorCode.MEM_ALIGN, src, d.mem_addr, pc_l)
                        m.next = "RETIRE"
                    with m.Elif(end > self.mem_bytes):
                        raise_error(ErrorCode.MEM_RANGE, src, d.mem_addr, pc_l)
                        m.next = "RETIRE"
                    with m.Elif(d.engine >= len(engines)):
                        raise_error(ErrorCode.BAD_FIELD, src, d.mem_addr, pc_l)
                        m.next = "RETIRE"
                    with m.Else():
                        m.d.comb += cmdp.start.eq(1)
                        m.next = "RUN"
                with m.State("RUN"):
                    m.d.comb += busy.eq(1)
                    with m.If(cmdp.done):
                        with m.If(cmdp.win_err):
                            raise_error(ErrorCode.WINDOW_RANGE, src, d.win_addr, pc_l)
                        with m.Elif(cmdp.mem_err):
                            raise_error(ErrorCode.BUS_ERROR, src, d.mem_addr, pc_l)
                        m.next = "RETIRE"
                with m.State("RETIRE"):
                    m.d.comb += [busy.eq(1), retire[rname].eq(1), inc[give_tok].eq(hdr_l[push_bit])]
                    m.next = "IDLE"
            m.d.comb += [
                cmdp.engine.eq(d.engine),
                cmdp.rows.eq(d.rows),
                cmdp.row_words.eq(d.row_words),
                cmdp.mem_stride.eq(d.mem_stride),
                cmdp.win_stride.eq(d.win_stride),
                cmdp.win_addr.eq(d.win_addr),
                cmdp.mem_addr.eq(d.mem_addr),
            ]

        # ---- COPY unit (on chip, window -> window; on the compute queue) ---------------------
        # Without it (copy_unit: false) its ports stay idle and COPY_SRC/COPY are BAD_OPCODE.
        cu = None
        if self.copy:
            m.submodules.copy = cu = CopyUnit()
            wiring.connect(m, cu.rd, wiring.flipped(self.copy_rd))
            wiring.connect(m, cu.wr, wiring.flipped(self.copy_wr))
            m.d.comb += [self.copy_words.eq(cu.words), self.copy_busy.eq(cu.busy)]
        copy_src = Signal(INSTR_BITS)

        # ---- compute unit ---------------------------------------------------------------------------
        hdr, ins, pc = head(cq)
        c_ins = Signal(INSTR_BITS)
        c_hdr = Signal(4)
        c_pc = Signal(16)
        c_busy = Signal()
        units_busy.append(c_busy)
        c_op = c_ins[:8]
        owner = Signal(range(len(engines) + 1))
        m.d.comb += owner.eq(len(engines))
        for i, spec in enumerate(specs):
            with m.If(Cat(c_op == o for o in spec.opcodes.values()).any()):
                m.d.comb += owner.eq(i)
        any_engine_busy = Signal()
        m.d.comb += any_engine_busy.eq(Cat(e.busy for e in engines).any())
        for eng in engines:
            m.d.comb += eng.cmd.payload.eq(c_ins)
        if cu is not None:
            m.d.comb += [cu.src_ins.eq(copy_src), cu.dst_ins.eq(c_ins)]
        with m.FSM(name="compute_unit"):
            with m.State("IDLE"):
                with m.If(cq.r_rdy):
                    with m.If(halt):
                        m.d.comb += cq.r_en.eq(1)
                    with m.Elif((~hdr[0] | (tok["l2c"] != 0)) & (~hdr[1] | (tok["s2c"] != 0))):
                        m.d.comb += [cq.r_en.eq(1), dec["l2c"].eq(hdr[0]), dec["s2c"].eq(hdr[1])]
                        m.d.sync += [c_ins.eq(ins), c_hdr.eq(hdr), c_pc.eq(pc)]
                        m.next = "DISPATCH"
            with m.State("DISPATCH"):
                m.d.comb += c_busy.eq(1)
                with m.If(owner != len(engines)):
                    for i, eng in enumerate(engines):
                        with m.If(owner == i):
                            m.d.comb += eng.cmd.valid.eq(1)
                            with m.If(eng.cmd.ready):
                                m.next = "WAIT"
                with m.Elif(c_op == Op.NOP):
                    m.next = "RETIRE"
                if cu is not None:
                    with m.Elif(c_op == Op.COPY_SRC):
                        m.d.sync += copy_src.eq(c_ins)
                        m.next = "RETIRE"
                    with m.Elif(c_op == Op.COPY):
                        cs, cd = CopySrc(copy_src), CopyDst(c_ins)
                        with m.If((cs.engine >= len(engines)) | (cd.engine >= len(engines))
                                  | (cs.width == 3) | (cd.width == 3)):  # fmt: skip
                            raise_error(ErrorCode.BAD_FIELD, SRC_COPY, 0, c_pc)
                            m.next = "RETIRE"
                        with m.Elif((cd.rows == 0) | (cd.len == 0)
                                    | (cs.seg == 0) | (cd.seg == 0)):  # fmt: skip
                            raise_error(ErrorCode.BAD_SHAPE, SRC_COPY, 0, c_pc)
                            m.next = "RETIRE"
                        with m.Else():
                            m.d.comb += cu.start.eq(1)
                            m.next = "COPY"
                with m.Elif(c_op == Op.SYNC):
                    with m.If((lq.level == 0) & (sq.level == 0) & ~units_busy[0] & ~units_busy[1]
                              & ~any_engine_busy):  # fmt: skip
                        m.next = "RETIRE"
                with m.Else():
                    raise_error(ErrorCode.BAD_OPCODE, SRC_CTRL, c_op, c_pc)
                    m.next = "RETIRE"
            with m.State("WAIT"):
                m.d.comb += c_busy.eq(1)
                for i, eng in enumerate(engines):
                    with m.If((owner == i) & eng.done):
                        with m.If(eng.error != 0):
                            raise_error(eng.error, i, 0, c_pc)
                        m.next = "RETIRE"
            if cu is not None:
                with m.State("COPY"):
                    m.d.comb += c_busy.eq(1)
                    with m.If(cu.done):
                        with m.If(cu.err):
                            raise_error(ErrorCode.WINDOW_RANGE, SRC_COPY, cu.err_addr, c_pc)
                        m.next = "RETIRE"
            with m.State("RETIRE"):
                m.d.comb += [c_busy.eq(1), retire["compute"].eq(1),
                             inc["c2l"].eq(c_hdr[2]), inc["c2s"].eq(c_hdr[3])]  # fmt: skip
                m.next = "IDLE"

        # ---- program state, watchdog, idle ----------------------------------------------------------
        queues_empty = Signal()
        # (level, not r_rdy: a buffered FIFO shows a new entry at its output a cycle later)
        m.d.comb += queues_empty.eq((lq.level == 0) & (cq.level == 0) & (sq.level == 0))
        all_idle = Signal()
        m.d.comb += all_idle.eq(queues_empty & ~Cat(*units_busy).any())
        with m.If(self.prog_start & ~running):
            m.d.sync += [running.eq(1), self.prog_done.eq(0), fetched.eq(0), word.eq(0)]
        with m.Elif(running & ((fetched == self.prog_count) | halt) & ~entry_valid & ~fr.busy
                    & all_idle & ~self.prog_start):  # fmt: skip
            # done: every entry retired, or an error stopped the program (the rest is dropped)
            m.d.sync += [running.eq(0), self.prog_done.eq(1)]
        m.d.comb += progress.eq(Cat(*units_busy).any() | accept | drop
                                | (fr.data.valid & fr.data.ready))  # fmt: skip
        quiet = Signal(range(self.watchdog + 1))
        with m.If(~running | progress | halt):
            m.d.sync += quiet.eq(0)
        with m.Elif(quiet == self.watchdog):
            pc_w = Signal(16)
            m.d.comb += pc_w.eq(PC_NONE)
            for q in (sq, lq, cq):
                with m.If(q.r_rdy):
                    m.d.comb += pc_w.eq(head(q)[2])
            raise_error(ErrorCode.DEADLOCK, SRC_CTRL, 0, pc_w)
        with m.Else():
            m.d.sync += quiet.eq(quiet + 1)
        with m.If(self.raise_code != 0):
            raise_error(self.raise_code, SRC_CTRL)
        with m.If(self.clear):
            m.d.sync += [self.err_code.eq(0), self.err_src.eq(0), self.err_addr.eq(0),
                         self.err_pc.eq(0)]  # fmt: skip
            for t in tok.values():
                m.d.sync += t.eq(0)
        m.d.comb += self.idle.eq(all_idle & ~running & ~self.reg_instr.valid & ~any_engine_busy)
        return m
