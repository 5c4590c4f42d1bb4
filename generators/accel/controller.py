"""The controller (contract v2): programs, three queues, dependency tokens, a watchdog.

Instructions come from two sources: the register-written queue (single instructions, bring-up;
no tokens) and the *program fetcher*, which reads ``count`` entries (header + instruction, see
``isa.py``) from device memory at ``addr`` once ``start`` is pulsed, at most ``FETCH_AHEAD``
words ahead (the fullest queue's entries, and words requested and not yet assembled), so that
its bursts do not take read beats from the loads that start a program. Each instruction goes to
the
load, compute or store queue by its opcode; the three run concurrently, each in order, and the
token counters between them (VTA's push/pop bits) order what must be ordered.

Errors: the first one wins and is latched (code, source, address, program entry) until
``clear``; while an error is latched no new instruction starts and queued ones are discarded, so
a program stops cleanly. The watchdog raises DEADLOCK when a program makes no progress (nothing
fetched, started or retired) for ``watchdog`` cycles: a token that can never arrive.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ...hdl.axi4 import BurstReader, ReadReqSignature
from ..engine import INSTR_BITS, ErrorCode
from .copy import CopyUnit
from .dma import DmaCmdSignature, WinPortSignature
from .isa import ENTRY_WORDS, CopyDst, CopySrc, DmaInstr, EntryHeader, Op

__all__ = ["Controller", "SRC_CTRL", "SRC_LOAD", "SRC_STORE", "SRC_COPY", "PC_NONE"]

# how far the program fetcher reads ahead, in words: four entries (host/cyclemodel.py has it;
# measured there, 15-40 words all beat no limit, 20 the best of them)
FETCH_AHEAD = 4 * ENTRY_WORDS
SRC_CTRL = 0xFF
SRC_LOAD = 0xFD
SRC_STORE = 0xFE
SRC_COPY = 0xFC
PC_NONE = 0xFFFF  # ERROR_PC of an instruction that came from the register queue

_Q_BITS = 4 + INSTR_BITS + 16  # token bits, instruction, program entry index


# Errors a LOAD/STORE is checked for as it enters its queue, in priority order; the queue
# entry carries the index (0: none) and the unit raises the code when the entry reaches CHECK.
_DMA_ERRORS = (ErrorCode.BAD_SHAPE, ErrorCode.MEM_ALIGN, ErrorCode.MEM_RANGE, ErrorCode.BAD_FIELD)


class _DmaEntry:
    """A load/store queue entry: a LOAD/STORE already checked, as narrow as the config allows.

    A legal copy lies inside device memory (``mem_bytes`` = 2**k bytes, 2**(k-2) words), so its
    byte address needs k bits and, when it has two rows or more, its row stride k-2 bits (with one
    row the stride is never used). The entry keeps those, the engine index, the token bits the
    queue's unit uses (``pop``, ``push``), the program entry index and the check's result. An
    entry with an error needs none of the copy's fields but all 32 bits of ``mem_addr`` (the
    ERROR_ADDR it reports): the address bits above k go where ``win_addr`` would be.

    The range check ``mem_addr + ((rows - 1) * mem_stride + row_words) * 4 > mem_bytes`` clamps
    both factors at 2**(k-2) words first: a clamped factor times a non-zero one is already past
    the end, so the outcome is the same as with the full product, and the multiplier shrinks to
    (k-1) x (k-1) bits (one 16x16 DSP block for device memories up to 128 KiB).
    """

    def __init__(self, mem_bytes: int, n_engines: int):
        self.k = (mem_bytes - 1).bit_length()  # byte-address bits of device memory
        self.mem_bytes = mem_bytes
        self.n_engines = n_engines
        self.layout = [
            ("code", 3),
            ("pop", 1),
            ("push", 1),
            ("pc", 16),
            ("engine", max(1, (n_engines - 1).bit_length())),
            ("rows", 16),
            ("row_words", 12),
            ("mem_stride", min(18, max(1, self.k - 2))),
            ("win_stride", 16),
            ("win_addr", 22),
            ("mem_addr", min(32, self.k)),
        ]
        self.width = sum(w for _, w in self.layout)

    def product(self, m, ins, name="chk"):
        """``(rows - 1) x mem_stride`` of the LOAD/STORE ``ins``, both clamped to device memory's
        words (the check's one multiply), combinational: :meth:`check` takes it registered."""
        d = DmaInstr(ins)
        lim = 1 << max(0, self.k - 2)  # words of device memory
        clamp_bits = lim.bit_length()

        def clamp(v, width, part):
            if width <= clamp_bits:
                return v
            c = Signal(clamp_bits, name=f"{name}_{part}")
            m.d.comb += c.eq(Mux(v >= lim, lim, v))
            return c

        rows_m1 = Signal(16, name=f"{name}_rows_m1")
        m.d.comb += rows_m1.eq(d.rows - 1)
        return clamp(rows_m1, 16, "rows") * clamp(d.mem_stride, 18, "stride")

    def check(self, m, ins, prod):
        """The error index (0: none) of the LOAD/STORE ``ins``, combinational from ``ins`` and
        its :meth:`product` ``prod``."""
        d = DmaInstr(ins)
        end = Signal(40, name="chk_end")
        m.d.comb += end.eq(d.mem_addr + ((prod + d.row_words) << 2))
        code = Signal(3, name="chk_code")
        with m.If((d.rows == 0) | (d.row_words == 0)):
            m.d.comb += code.eq(1)
        with m.Elif(d.mem_addr[:2] != 0):
            m.d.comb += code.eq(2)
        with m.Elif(end > self.mem_bytes):
            m.d.comb += code.eq(3)
        with m.Elif(d.engine >= self.n_engines):
            m.d.comb += code.eq(4)
        return code

    def pack(self, ins, code, pop, push, pc):
        d = DmaInstr(ins)
        vals = {"code": code, "pop": pop, "push": push, "pc": pc}
        for name in ("engine", "rows", "row_words", "mem_stride", "win_stride", "win_addr",
                     "mem_addr"):  # fmt: skip
            vals[name] = getattr(d, name)
        if self.k < 32:  # an entry with an error keeps the address bits above k in win_addr
            vals["win_addr"] = Mux(code != 0, d.mem_addr[self.k :], d.win_addr)
        return Cat(*(vals[name][:w] for name, w in self.layout))

    def fields(self, value):
        """name -> slice of the entry ``value``; ``err_addr`` is the full ERROR_ADDR."""
        out, lsb = {}, 0
        for name, w in self.layout:
            out[name] = value[lsb : lsb + w]
            lsb += w
        index, code = out["code"], 0
        for i, err in reversed(list(enumerate(_DMA_ERRORS, start=1))):
            code = Mux(index == i, err, code)
        out["code"] = code
        if self.k < 32:
            out["err_addr"] = Cat(out["mem_addr"], out["win_addr"][: 32 - self.k])
        else:
            out["err_addr"] = out["mem_addr"]
        return out


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
        # the fetcher reads ahead at most FETCH_AHEAD words (the fullest queue's entries, and
        # words requested and not yet assembled): beyond that its bursts would only take read
        # beats from the loads that start the program (the fullest queue, not all three: entries
        # waiting for tokens in one queue do not hold back the others' next entries)
        m.d.comb += [
            fr.start.eq(self.prog_start & ~running),
            fr.addr.eq(self.prog_addr),
            # one row per entry: a row's length is 16 bits, a program's up to 65535 entries
            fr.rows.eq(self.prog_count),
            fr.row_words.eq(ENTRY_WORDS),
            fr.stride.eq(ENTRY_WORDS),
        ]
        word = Signal(range(ENTRY_WORDS))
        entry_hdr = Signal(4)  # the header's token bits (the rest of its word is reserved)
        entry_ins = Signal(INSTR_BITS)
        entry_valid = Signal()
        m.d.comb += fr.data.ready.eq(~entry_valid)
        with m.If(fr.data.valid & fr.data.ready):
            m.d.sync += word.eq(word + 1)
            with m.If(word == 0):
                m.d.sync += entry_hdr.eq(fr.data.payload[:4])
            for w in range(1, ENTRY_WORDS):
                with m.If(word == w):
                    m.d.sync += entry_ins.word_select(w - 1, 32).eq(fr.data.payload)
            with m.If(word == ENTRY_WORDS - 1):
                m.d.sync += [word.eq(0), entry_valid.eq(1)]

        # ---- the three queues ----------------------------------------------------------------------
        # The load and store queues hold a DMA instruction already checked (``_DmaEntry``): its
        # error code and the fields the channel needs, addresses as wide as device memory; the
        # compute queue holds whole instructions.
        de = _DmaEntry(self.mem_bytes, len(engines))
        qs = []
        for name in ("lq", "cq", "sq"):
            width = _Q_BITS if name == "cq" else de.width
            q = fifo.SyncFIFOBuffered(width=width, depth=self.queue_depth)
            m.submodules[name] = q
            qs.append(q)
        lq, cq, sq = qs
        m.d.comb += self.queued.eq(lq.level + cq.level + sq.level)
        # held while the fullest queue's entries' words and the words owed make FETCH_AHEAD:
        # the same as ``max(levels) * ENTRY_WORDS + owed >= FETCH_AHEAD``, written as one
        # comparison of ``owed`` with a constant per queue and level (no max, no multiplier:
        # this is on the path from the queues into the fetcher's AR request)
        def level_holds(q):
            need = [FETCH_AHEAD - ENTRY_WORDS * v for v in range(self.queue_depth + 1)]
            table = Cat((fr.owed >= n) if n > 0 else Const(1, 1) for n in need)
            return table.bit_select(q.level, 1)

        m.d.comb += fr.hold.eq(level_holds(lq) | level_holds(cq) | level_holds(sq))

        # classify: program entries first, then register-written single instructions
        src_hdr, src_ins, src_pc, src_valid, from_prog = (
            Signal(32), Signal(INSTR_BITS), Signal(16), Signal(), Signal())  # fmt: skip
        reg_seen = Signal()  # the register queue's head was there last cycle (so its product)
        m.d.sync += reg_seen.eq(self.reg_instr.valid & ~self.reg_instr.ready)
        with m.If(entry_valid):
            m.d.comb += [src_hdr.eq(entry_hdr), src_ins.eq(entry_ins), src_pc.eq(fetched),
                         src_valid.eq(1), from_prog.eq(1)]  # fmt: skip
        with m.Elif(~running):
            m.d.comb += [src_hdr.eq(0), src_ins.eq(self.reg_instr.payload), src_pc.eq(PC_NONE),
                         src_valid.eq(self.reg_instr.valid & reg_seen)]  # fmt: skip
        op = src_ins[:8]
        target = Signal(2)
        m.d.comb += target.eq(1)
        with m.If(op == Op.LOAD):
            m.d.comb += target.eq(0)
        with m.Elif(op == Op.STORE):
            m.d.comb += target.eq(2)
        accept = Signal()
        # one check serves both DMA queues (one entry a cycle). Its multiply is a cycle ahead,
        # from registers: a program entry's rows and stride are in its first two instruction
        # words, so the product of the entry being assembled is ready when its last word is; a
        # register-written instruction waits a cycle at the head of its queue for its product.
        # No path runs from the source multiplexer through the multiply into the queues.
        e_p, e_r = de.product(m, entry_ins, "chk_p"), de.product(m, self.reg_instr.payload, "chk_r")
        prod_p, prod_r = Signal(len(e_p)), Signal(len(e_r))
        m.d.sync += [prod_p.eq(e_p), prod_r.eq(e_r)]
        dma_code = de.check(m, src_ins, Mux(from_prog, prod_p, prod_r))
        m.d.comb += [
            lq.w_data.eq(de.pack(src_ins, dma_code, src_hdr[1], src_hdr[3], src_pc)),
            cq.w_data.eq(Cat(src_hdr[:4], src_ins, src_pc)),
            sq.w_data.eq(de.pack(src_ins, dma_code, src_hdr[0], src_hdr[2], src_pc)),
        ]
        for i, q in enumerate(qs):
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
        for q, cmdp, src, wait_tok, give_tok, rname in (
            (lq, self.load, SRC_LOAD, "c2l", "l2c", "load"),
            (sq, self.store, SRC_STORE, "c2s", "s2c", "store"),
        ):
            ent = Signal(de.width, name=f"{rname}_entry")
            f = de.fields(ent)
            head_pop = de.fields(q.r_data)["pop"]
            busy = Signal(name=f"{rname}_unit_busy")
            units_busy.append(busy)
            with m.FSM(name=f"{rname}_unit"):
                with m.State("IDLE"):
                    with m.If(q.r_rdy):
                        with m.If(halt):
                            m.d.comb += q.r_en.eq(1)  # discard
                        with m.Elif(~head_pop | (tok[wait_tok] != 0)):
                            m.d.comb += [q.r_en.eq(1), dec[wait_tok].eq(head_pop)]
                            m.d.sync += ent.eq(q.r_data)
                            m.next = "CHECK"
                with m.State("CHECK"):
                    m.d.comb += busy.eq(1)
                    with m.If(f["code"] != 0):
                        raise_error(f["code"], src, f["err_addr"], f["pc"])
                        m.next = "RETIRE"
                    with m.Else():
                        m.d.comb += cmdp.start.eq(1)
                        m.next = "RUN"
                with m.State("RUN"):
                    m.d.comb += busy.eq(1)
                    with m.If(cmdp.done):
                        with m.If(cmdp.win_err):
                            raise_error(ErrorCode.WINDOW_RANGE, src, f["win_addr"], f["pc"])
                        with m.Elif(cmdp.mem_err):
                            raise_error(ErrorCode.BUS_ERROR, src, f["mem_addr"], f["pc"])
                        m.next = "RETIRE"
                with m.State("RETIRE"):
                    m.d.comb += [busy.eq(1), retire[rname].eq(1), inc[give_tok].eq(f["push"])]
                    m.next = "IDLE"
            m.d.comb += [
                cmdp.engine.eq(f["engine"]),
                cmdp.rows.eq(f["rows"]),
                cmdp.row_words.eq(f["row_words"]),
                cmdp.mem_stride.eq(f["mem_stride"]),
                cmdp.win_stride.eq(f["win_stride"]),
                cmdp.win_addr.eq(f["win_addr"]),
                cmdp.mem_addr.eq(f["mem_addr"]),
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
                    m.d.comb += pc_w.eq(head(q)[2] if q is cq else de.fields(q.r_data)["pc"])
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
