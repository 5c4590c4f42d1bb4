"""The PIM GEMV engine: banks with row buffers and MAC lanes, and their channel controller.

Structure (all banks in lockstep, AiM's all-bank mode):

* **Bank** ``b``: a weight array (``rows_per_bank x row_size`` operands, stored as words of
  ``lanes`` operands), its own copy of the input vector buffer, ``lanes`` multipliers and an adder
  tree beside the row buffer, an accumulator, and ``result_depth`` partial-result slots.
* **Channel controller**: decodes a GEMV instruction (``isa.GemvInstr``) into activate, MAC-burst
  (column) and precharge commands under the DRAM timing of the config, with one or two row buffers
  per bank; the row and column command processes run side by side so a second row buffer hides
  activations. The schedule is exactly :func:`gatesmith.generators.pim.cycles.schedule`.

Timing: a GEMV takes :func:`~gatesmith.generators.pim.cycles.gemv_cycles` cycles from acceptance
to ``done``; during every beat each bank does ``lanes`` MACs (``perf_macs = banks * lanes``).
Datapath latency: a beat's products reach the accumulator 7 cycles after the beat (memory read,
operand register, the multiplier's input and output registers inside its DSP block, a product
register in the fabric, two adder-tree registers), so no memory output, multiplier or adder tree
shares a stage with other logic, and the route from a DSP block to the tree is a stage alone.

Host window (see ``isa.window_layout``): weight writes are refused (``err``) while a GEMV runs
unless ``dual_row_buffer`` is set (the second row buffer serves the host, as NeuPIMs proposes).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory

from ...hdl.arith import adder_tree
from ..dsp import multiply
from ..engine import ErrorCode, engine_ports
from .isa import FIELDS, OPCODE_GEMV, region_size

__all__ = ["PimEngine"]

PIPE_LATENCY = 7  # beat -> accumulator (memory read, operands, 2 in the DSP, product, 2 tree)
_TREE_CUT = 4  # products summed before the adder tree's first register


def _log2(n: int) -> int:
    return max(0, (n - 1).bit_length())


class PimEngine(wiring.Component):
    """PIM GEMV engine for a :class:`~gatesmith.generators.pim.config.PimConfig`.

    Besides the contract's ports, ``trace_act`` / ``trace_col`` (internal signals, not ports)
    pulse when the controller issues an activate / column command, for test benches.
    """

    kind = "pim"

    def __init__(self, cfg):
        self.cfg = cfg
        self.trace_act = Signal()
        self.trace_col = Signal()
        super().__init__(engine_ports())

    @property
    def latency(self) -> int:
        """Cycles from a beat to the accumulator holding its products."""
        return PIPE_LATENCY

    def windows(self):
        return list(self.cfg.windows().values())

    # -- elaboration ------------------------------------------------------------------------------

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        self._decode_host(m)
        self._controller(m, platform)
        self._banks(m, platform)
        return m

    def _region(self, m, name):
        """(hit, local word offset) of the host address in region ``name``."""
        win = self.cfg.windows()[name]
        size = region_size(self.cfg, name)
        bits = _log2(size)
        addr = self.host.addr
        hit = Signal(name=f"hit_{name}")
        local = Signal(max(1, bits), name=f"local_{name}")
        m.d.comb += [hit.eq((addr >> bits) == (win.offset >> bits)), local.eq(addr[:bits])]
        return hit, local

    def _decode_host(self, m):
        """Host window decode: region hits, entry/bank indices, ``err``."""
        cfg = self.cfg
        host = self.host
        self.sw = sw = max(1, -(-cfg.word_bits // 32))
        self.sr = sr = max(1, -(-cfg.acc_width // 32))
        hw, lw = self._region(m, "weights")
        hv, lv = self._region(m, "vector")
        hr, lr = self._region(m, "results")
        hx, lx = self._region(m, "xoff")
        bank_entries = cfg.rows_per_bank * cfg.words_per_row
        # weights: local = (bank * bank_entries + entry) * sw + sub
        self.h_sub_w = lw[: _log2(sw)] if sw > 1 else Const(0, 1)
        self.h_entry_w = lw[_log2(sw) : _log2(sw) + _log2(bank_entries)]
        self.h_bank_w = lw[_log2(sw) + _log2(bank_entries) :]
        self.h_sub_v = lv[: _log2(sw)] if sw > 1 else Const(0, 1)
        self.h_entry_v = lv[_log2(sw) :]
        self.h_sub_r = lr[: _log2(sr)] if sr > 1 else Const(0, 1)
        self.h_slot_r = lr[_log2(sr) : _log2(sr) + _log2(cfg.result_depth)]
        self.h_bank_r = lr[_log2(sr) + _log2(cfg.result_depth) :]
        self.h_bank_x = lx
        self.busy_sig = Signal()
        self.w_weights = Signal()
        self.w_vector = Signal()
        bad_w = (self.h_bank_w >= cfg.banks) | (self.busy_sig & Const(int(not cfg.dual_row_buffer)))
        err_w = Mux(host.r_en, 1, bad_w)
        err = Signal()
        m.d.comb += [
            err.eq(
                Mux(hw, err_w, 0)
                | Mux(hv, host.r_en, 0)
                | Mux(hr, host.w_en | (self.h_bank_r >= cfg.banks), 0)
                | Mux(hx, self.h_bank_x >= cfg.banks, 0)
                | ~(hw | hv | hr | hx)
            ),
            host.err.eq(err & (host.r_en | host.w_en)),
            self.w_weights.eq(host.w_en & hw & ~err),
            self.w_vector.eq(host.w_en & hv & ~err),
        ]
        self.xoff = Array(Signal(16, name=f"xoff{b}") for b in range(cfg.banks))
        # vector_segments - xoff per bank, kept beside it: a column-mode range check is a compare
        vs = cfg.vector_segments
        self.xlim = Array(Signal(signed(18), name=f"xlim{b}", init=vs) for b in range(cfg.banks))
        with m.If(host.w_en & hx & ~err):
            xb = self.h_bank_x[: max(1, _log2(cfg.banks))]
            m.d.sync += [self.xoff[xb].eq(host.w_data), self.xlim[xb].eq(vs - host.w_data[:16])]
        # reads: latch what was asked for; data comes the next cycle
        self.rd_results = Signal()
        self.rd_bank = Signal(range(max(2, cfg.banks)))
        self.rd_sub = Signal(max(1, _log2(sr)))
        rd_xoff = Signal(16)
        m.d.sync += self.rd_results.eq(0)
        with m.If(host.r_en & ~err):
            m.d.sync += [
                self.rd_results.eq(hr),
                self.rd_bank.eq(self.h_bank_r),
                self.rd_sub.eq(self.h_sub_r),
                rd_xoff.eq(self.xoff[self.h_bank_x[: max(1, _log2(cfg.banks))]]),
            ]
        self.rd_xoff = rd_xoff

    def _controller(self, m, platform):
        """Instruction decode and the row / column command processes (see cycles.py)."""
        cfg = self.cfg
        nb = cfg.row_buffers
        maxjob = cfg.t_rcd + cfg.cols_per_row * cfg.t_ccd + cfg.burst + cfg.t_rp + 8
        tw = _log2(4 * maxjob) + 1  # timestamps are compared modulo 2**tw
        now = Signal(tw)
        m.d.sync += now.eq(now + 1)

        def reached(t):
            return ~(now - t)[tw - 1]

        def reached_reg(t, name):
            """``reached(t)``, registered: computed a cycle ahead for an unchanged ``t``; where
            ``t`` is set to ``now + d`` the flag is set with it to ``d <= 1`` (``_set``), so the
            command decisions read flip-flops, not the subtraction (the same cycle counts)."""
            flag = Signal(init=1, name=f"{name}_ok")
            m.d.sync += flag.eq(~(now + 1 - t)[tw - 1])
            return flag

        def _set(t, flag, d):
            return [t.eq(now + d), flag.eq(int(d <= 1))]

        f = {k: Signal(w, name=f"f_{k}") for k, (_, w) in FIELDS.items()}
        # x_seg + segments and y_base + rounds, registered with the instruction
        self._x_end, self._y_end = Signal(17), Signal(17)
        self._room = Signal(signed(18))  # rows_per_bank - w_row: the weight rows left
        opcode = Signal(8)
        code_r = Signal(8)
        # rounds * segments in a DSP block: its input registers take the fields with the
        # instruction (IDLE), its output register the product in CHECK; RANGE copies it
        fo = {k: FIELDS[k][0] for k in ("rounds", "segments")}
        jobs_r = multiply(m, platform, self.cmd.payload[fo["rounds"] : fo["rounds"] + 16],
                          self.cmd.payload[fo["segments"] : fo["segments"] + 16], latency=2,
                          name="mul_jobs")  # fmt: skip

        # row process (activate) and column process (MAC bursts) state
        a_left = Signal(32)
        a_more = Signal()  # a_left != 0, registered
        a_buf = Signal(range(2))
        is_open = Array(Signal(name=f"open{k}") for k in range(nb))
        t_free = Array(Signal(tw, name=f"t_free{k}") for k in range(nb))
        t_ready = Array(Signal(tw, name=f"t_ready{k}") for k in range(nb))
        c_left = Signal(32)
        c_buf = Signal(range(2))
        c_s = Signal(16)
        c_p = Signal(16)
        c_col = Signal(16)
        c_row = Signal(16)
        t_col = Signal(tw)
        t_end = Signal(tw)
        free_ok = Array(reached_reg(t_free[k], f"t_free{k}") for k in range(nb))
        ready_ok = Array(reached_reg(t_ready[k], f"t_ready{k}") for k in range(nb))
        col_ok = reached_reg(t_col, "t_col")

        # beat generator (registered; a column command at cycle c gives beats c+1 .. c+burst)
        self.b_cnt = b_cnt = Signal(range(cfg.burst + 1))
        self.b_waddr = Signal(_log2(cfg.rows_per_bank * cfg.words_per_row) or 1)
        self.b_vaddr = Signal(max(1, _log2(cfg.vector_depth // cfg.lanes)) + 1)
        self.b_first = Signal()
        self.b_last_job = Signal()
        self.b_slot = Signal(16)
        self.b_valid = Signal()
        self.b_is_last = Signal()
        self.col_mode = f["col_mode"]
        m.d.comb += [
            self.b_valid.eq(b_cnt != 0),
            self.b_is_last.eq(self.b_last_job & (b_cnt == 1)),
        ]
        with m.If(self.b_valid):
            m.d.sync += [
                b_cnt.eq(b_cnt - 1),
                self.b_waddr.eq(self.b_waddr + 1),
                self.b_vaddr.eq(self.b_vaddr + 1),
                self.b_first.eq(0),
            ]

        self.pipe_empty = Signal()
        busy = Signal()
        m.d.comb += [
            self.busy.eq(busy),
            self.busy_sig.eq(busy),
            self.perf_macs.eq(Mux(self.b_valid, cfg.banks * cfg.lanes, 0)),
            self.perf_stall.eq(busy & ~self.b_valid),
        ]

        # segments - 1 and cols_last - 1 registered in CHECK, whether c_s is the last segment
        # kept in a register, so a column command's decision is one compare deep
        seg_m1, cl_m1 = Signal(16), Signal(16)
        last_seg = Signal()
        last_col = c_col == Mux(last_seg, cl_m1, cfg.cols_per_row - 1)
        act_fire = Signal()
        col_fire = Signal()
        m.d.comb += [self.trace_act.eq(act_fire), self.trace_col.eq(col_fire)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += opcode.eq(self.cmd.payload[:8])
                    for k, (off, w) in FIELDS.items():
                        m.d.sync += f[k].eq(self.cmd.payload[off : off + w])
                    pf = {k: self.cmd.payload[off : off + w] for k, (off, w) in FIELDS.items()}
                    m.d.sync += [self._x_end.eq(pf["x_seg"] + pf["segments"]),
                                 self._y_end.eq(pf["y_base"] + pf["rounds"]),
                                 self._room.eq(cfg.rows_per_bank - pf["w_row"])]
                    m.next = "CHECK"
            with m.State("CHECK"):  # register the checks (rounds * segments: in the DSP)
                m.d.comb += busy.eq(1)
                m.d.sync += [code_r.eq(self._check(m, f, opcode)),
                             seg_m1.eq(f["segments"] - 1), cl_m1.eq(f["cols_last"] - 1)]
                m.next = "RANGE"
            # the job counters take rounds * segments from the DSP block (its output changes
            # after RANGE); START compares it with the rows left, from those fabric registers,
            # into the verdict (`reject`, and `a_more`: no activate for a rejected instruction),
            # which RUN's first cycle acts on: no compare goes into the state register
            code = Signal(8)
            reject = Signal()
            with m.State("RANGE"):
                m.d.comb += busy.eq(1)
                m.d.sync += [a_left.eq(jobs_r), c_left.eq(jobs_r)]
                m.next = "START"
            with m.State("START"):
                m.d.comb += busy.eq(1)
                rows_oor = c_left > self._room
                bad = (code_r != 0) | rows_oor
                oor_code = Mux(rows_oor, ErrorCode.OUT_OF_RANGE, 0)
                # the run's state is set either way (a rejected instruction leaves it unused)
                m.d.sync += [
                    code.eq(Mux(code_r != 0, code_r, oor_code)),
                    reject.eq(bad),
                    a_more.eq(~bad),  # a run has one job at least
                    a_buf.eq(0),
                    c_buf.eq(0),
                    c_s.eq(0),
                    c_p.eq(0),
                    c_col.eq(0),
                    c_row.eq(f["w_row"]),
                    *_set(t_col, col_ok, 1),
                    last_seg.eq(seg_m1 == 0),
                ]
                for k in range(nb):
                    m.d.sync += [is_open[k].eq(0), *_set(t_free[k], free_ok[k], 1)]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += busy.eq(1)
                with m.If(reject):  # nothing was issued (a_more is 0): retire with the error
                    m.d.comb += [self.done.eq(1), self.error.eq(code)]
                    m.next = "IDLE"
                k_a = a_buf if nb == 2 else 0
                k_c = c_buf if nb == 2 else 0
                m.d.comb += [
                    act_fire.eq(a_more & ~is_open[k_a] & free_ok[k_a]),
                    # c_left != 0 throughout RUN: its last column command moves to DRAIN
                    col_fire.eq(is_open[k_c] & ready_ok[k_c] & col_ok),
                ]
                with m.If(act_fire):
                    m.d.sync += [
                        is_open[k_a].eq(1),
                        *_set(t_ready[k_a], ready_ok[k_a], cfg.t_rcd),
                        a_left.eq(a_left - 1),
                        a_more.eq(a_left != 1),
                    ]
                    if nb == 2:
                        m.d.sync += a_buf.eq(~a_buf)
                with m.If(col_fire):
                    wpr_bits = _log2(cfg.words_per_row)
                    bl_bits = _log2(cfg.burst)
                    m.d.sync += [
                        b_cnt.eq(cfg.burst),
                        self.b_waddr.eq((c_row << wpr_bits) | (c_col << bl_bits)),
                        self.b_vaddr.eq(((f["x_seg"] + c_s) << wpr_bits) | (c_col << bl_bits)),
                        self.b_first.eq((c_s == 0) & (c_col == 0)),
                        self.b_last_job.eq(last_seg & last_col),
                        self.b_slot.eq(f["y_base"] + c_p),
                        *_set(t_col, col_ok, cfg.t_ccd),
                        c_col.eq(c_col + 1),
                    ]
                    with m.If(last_col):
                        m.d.sync += [
                            is_open[k_c].eq(0),
                            *_set(t_free[k_c], free_ok[k_c], cfg.burst + cfg.t_rp),
                            t_end.eq(now + cfg.burst + cfg.t_rp),
                            c_col.eq(0),
                            c_row.eq(c_row + 1),
                            c_left.eq(c_left - 1),
                            c_s.eq(Mux(last_seg, 0, c_s + 1)),
                            last_seg.eq(Mux(last_seg, seg_m1 == 0, c_s + 1 == seg_m1)),
                            c_p.eq(c_p + last_seg),
                        ]
                        if nb == 2:
                            m.d.sync += c_buf.eq(~c_buf)
                        with m.If(c_left == 1):
                            m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += busy.eq(1)
                with m.If(reached(t_end) & self.pipe_empty):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"

    def _check(self, m, f, opcode):
        """The error code of the latched instruction (the order of ``isa.check_instr``), except
        the weight-row range, which needs ``rounds * segments`` and is checked a cycle later."""
        cfg = self.cfg
        code = Signal(8)
        bad_shape = (
            (f["rounds"] == 0)
            | (f["segments"] == 0)
            | (f["cols_last"] == 0)
            | (f["cols_last"] > cfg.cols_per_row)
        )
        x_bad = Const(0)
        for b in range(cfg.banks):
            lim = Mux(f["col_mode"], self.xlim[b], cfg.vector_segments)
            x_bad = x_bad | (self._x_end > lim)
        oor = (self._y_end > cfg.result_depth) | x_bad
        with m.If(opcode != OPCODE_GEMV):
            m.d.comb += code.eq(ErrorCode.BAD_OPCODE)
        with m.Elif(bad_shape):
            m.d.comb += code.eq(ErrorCode.BAD_SHAPE)
        with m.Elif(oor):
            m.d.comb += code.eq(ErrorCode.OUT_OF_RANGE)
        return code

    def _banks(self, m, platform):
        """Per-bank memories and MAC datapath; pipeline control is shared by all banks."""
        cfg = self.cfg
        host = self.host
        w = cfg.fmt.width
        wpr_bits = _log2(cfg.words_per_row)
        # shared pipeline flags, one set per stage: 1 memory data, 2 operands registered,
        # 3 operands in the DSP blocks, 4 products registered in them, 5 products registered
        # again in the fabric (the DSP blocks sit apart from the tree), 6 sums of _TREE_CUT
        # products, 7 dot product registered (the accumulator adds it)
        flags = [(self.b_valid, self.b_first, self.b_is_last, self.b_slot)]
        for k in range(1, PIPE_LATENCY + 1):
            st = (Signal(name=f"v{k}"), Signal(name=f"first{k}"), Signal(name=f"last{k}"),
                  Signal(16, name=f"slot{k}"))  # fmt: skip
            m.d.sync += [a.eq(b) for a, b in zip(st, flags[-1], strict=True)]
            flags.append(st)
        v_acc, first_acc, last_acc, slot_acc = flags[-1]
        m.d.comb += self.pipe_empty.eq(~Cat(f[0] for f in flags).any())
        rd_data = Array(Signal(cfg.acc_width, name=f"res_rd{b}") for b in range(cfg.banks))
        data_w = Cat(*([host.w_data] * self.sw))[: cfg.word_bits]
        gran = 32 if cfg.word_bits > 32 else None
        for b in range(cfg.banks):
            wmem = Memory(shape=unsigned(cfg.word_bits), depth=cfg.rows_per_bank * cfg.words_per_row,
                          init=[])  # fmt: skip
            vmem = Memory(shape=unsigned(cfg.word_bits), depth=cfg.vector_depth // cfg.lanes,
                          init=[])  # fmt: skip
            rmem = Memory(shape=unsigned(cfg.acc_width), depth=cfg.result_depth, init=[])
            m.submodules[f"weights{b}"] = wmem
            m.submodules[f"vector{b}"] = vmem
            m.submodules[f"results{b}"] = rmem
            for mem, sel, entry, sub in (
                (wmem, self.w_weights & (self.h_bank_w == b), self.h_entry_w, self.h_sub_w),
                (vmem, self.w_vector, self.h_entry_v, self.h_sub_v),
            ):
                wp = mem.write_port(granularity=gran)
                m.d.comb += [wp.addr.eq(entry), wp.data.eq(data_w)]
                if gran:
                    m.d.comb += wp.en.eq(Mux(sel, Const(1, self.sw) << sub, 0))
                else:
                    m.d.comb += wp.en.eq(sel)
            wr = wmem.read_port()
            vr = vmem.read_port()
            xo = Mux(self.col_mode, self.xoff[b], 0)
            m.d.comb += [wr.addr.eq(self.b_waddr), vr.addr.eq(self.b_vaddr + (xo << wpr_bits))]
            # stage 1 -> 2: operands registered; 2 -> 4: lane products (DSP input and output
            # registers); 4 -> 5: the products in fabric registers; 5 -> 6: sums of _TREE_CUT
            # products; 6 -> 7: their sum
            ow = Signal(cfg.word_bits, name=f"opw{b}")
            ox = Signal(cfg.word_bits, name=f"opx{b}")
            m.d.sync += [ow.eq(wr.data), ox.eq(vr.data)]
            prods = []
            for i in range(cfg.lanes):
                a, x = ow[i * w : (i + 1) * w], ox[i * w : (i + 1) * w]
                p = multiply(m, platform, a.as_signed(), x.as_signed(), latency=2,
                             name=f"mul{b}_{i}")  # fmt: skip
                pr = Signal(p.shape(), name=f"prod{b}_{i}")
                m.d.sync += pr.eq(p)
                prods.append(pr)
            dw = 2 * w + _log2(cfg.lanes) + 1
            parts = []
            for i in range(0, len(prods), _TREE_CUT):
                part = Signal(signed(dw), name=f"dot{b}_part{i // _TREE_CUT}")
                m.d.sync += part.eq(adder_tree(prods[i : i + _TREE_CUT]))
                parts.append(part)
            dot = Signal(signed(dw), name=f"dot{b}")
            m.d.sync += dot.eq(adder_tree(parts))
            # stage 7: accumulate, write the result of the dot product's last beat
            acc = Signal(signed(cfg.acc_width), name=f"acc{b}")
            acc_next = Signal(signed(cfg.acc_width), name=f"acc_next{b}")
            m.d.comb += acc_next.eq(Mux(first_acc, 0, acc) + dot)
            with m.If(v_acc):
                m.d.sync += acc.eq(acc_next)
            rwp = rmem.write_port()
            m.d.comb += [rwp.addr.eq(slot_acc), rwp.data.eq(acc_next),
                         rwp.en.eq(v_acc & last_acc)]  # fmt: skip
            rrp = rmem.read_port()
            m.d.comb += [rrp.addr.eq(self.h_slot_r), rd_data[b].eq(rrp.data)]
        res_word = Signal(32 * self.sr)
        m.d.comb += res_word.eq(rd_data[self.rd_bank].as_signed())
        with m.If(self.rd_results):
            m.d.comb += host.r_data.eq(res_word.word_select(self.rd_sub, 32))
        with m.Else():
            m.d.comb += host.r_data.eq(self.rd_xoff)
