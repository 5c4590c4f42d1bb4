"""The systolic engine: array + scratchpad + accumulator + the GEMM sequencer.

One GEMM instruction computes ``ACC[...] (+)= A @ B`` for operands already in the scratchpad, for
any M, K, N up to 65535 (within the memories), in the dataflow the instruction names.

Memories (all reachable through the engine's host window, see :meth:`SystolicEngine.windows`):

* ``left``: ``spad_depth`` words of ``rows`` operands (element ``i`` feeds array row ``i``).
* ``top``: ``spad_depth`` words of ``cols`` operands (element ``j`` feeds array column ``j``).
* ``acc``: ``acc_depth`` rows of ``cols`` accumulators (column ``j`` in bank ``j``).

Layouts the host writes (``host/systolic.py`` does this; the golden model states it too):

* OS (output-stationary): ``left[lb + mt*K + k] = A[mt*R + i, k]`` over ``i``;
  ``top[tb + nt*K + k] = B[k, nt*C + j]`` over ``j``; the result for ``(m, n)`` goes to
  ``acc[ab + (n // C) * M + m][n % C]``.
* WS (weight-stationary): ``top`` as for OS (B tiles are preloaded into the PEs, R rows at a time);
  ``left[lb + kt*M + m] = A[m, kt*R + i]`` over ``i``; results as for OS.
* IS (input-stationary): WS with the operands' roles swapped: the host stores ``A^T`` in ``top``
  and ``B^T`` in ``left`` and passes ``M``/``N`` swapped, so ``acc`` holds ``C^T``.

Elements past the matrix edge inside a word are zero (the host pads). Folds overlap: the next OS
fold streams while the previous one drains; the next WS tile is preloaded (double-buffered weight
registers) while the current one streams. Per fold the array is busy ``max(K, 2R-1)`` (OS) or
``max(M, 2R-1)`` (WS) cycles; :func:`.model.cycles` gives the exact count.

Instruction (128 bits): ``[7:0]`` opcode 0x10, ``[9:8]`` dataflow (0 os, 1 ws, 2 is),
``[10]`` accumulate into ACC (else overwrite), ``[47:32]`` M, ``[63:48]`` N, ``[79:64]`` K,
``[95:80]`` acc base row, ``[111:96]`` left base word, ``[127:112]`` top base word.
Errors: BAD_DATAFLOW (not built), BAD_SHAPE (a zero dimension), OUT_OF_RANGE (an operand or
result address past a memory's end; detected as the addresses are generated, reported at the
end, and the results must not be used).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, fifo, memory, wiring
from amaranth.utils import ceil_log2

from ...hdl.fields import struct_fields
from ..engine import ErrorCode, Window, engine_ports
from .array import SystolicArray
from .config import SystolicConfig

__all__ = ["SystolicEngine", "GemmInstr", "GEMM_FIELDS", "DATAFLOW_CODES", "window_layout"]

DATAFLOW_CODES = {"os": 0, "ws": 1, "is": 2}


# The GEMM instruction (128 bits, bit 0 first), shared by the decoder below and the host encoder.
GemmInstr = data.StructLayout(
    {
        "opcode": 8,
        "dataflow": 2,  # DATAFLOW_CODES
        "accumulate": 1,  # add into ACC (else overwrite)
        "reserved0": 21,
        "m": 16,
        "n": 16,
        "k": 16,
        "acc_base": 16,  # accumulator row
        "left_base": 16,  # left scratchpad word
        "top_base": 16,  # top scratchpad word
    }
)

GEMM_FIELDS = struct_fields(GemmInstr)  # name -> (bit offset, width)


def _sat(value, width: int):
    """``value`` (non-negative) in ``width`` bits, all ones when it does not fit.

    Address counters saturate instead of wrapping, so an address past a memory's end stays
    past it (and is reported) however far the instruction's fields would carry it.
    """
    if len(value) <= width:
        return value
    return Mux(value[width:].any(), (1 << width) - 1, value[:width])


def _sadd(a, b, width: int):
    return _sat(a + b, width)


def _pow2(x: int) -> int:
    return 1 << ceil_log2(max(1, x))


def window_layout(cfg: SystolicConfig) -> dict[str, Window]:
    """Host window regions of the engine (word offsets; see generators/engine.py)."""
    w = cfg.fmt.width
    left_words = -(-cfg.rows * w // 32)
    top_words = -(-cfg.cols * w // 32)
    acc_words = -(-cfg.acc_width // 32)
    spans = {
        "left": (cfg.spad_depth, _pow2(left_words), left_words * 32),
        "top": (cfg.spad_depth, _pow2(top_words), top_words * 32),
        "acc": (cfg.acc_depth, _pow2(cfg.cols * acc_words), cfg.cols * acc_words * 32),
    }
    region = max(_pow2(depth * stride) for depth, stride, _ in spans.values())
    docs = {
        "left": f"{cfg.rows} x {cfg.dtype} per word, element i in bits [{w}i, {w}(i+1))",
        "top": f"{cfg.cols} x {cfg.dtype} per word, element j in bits [{w}j, {w}(j+1))",
        "acc": f"{cfg.cols} accumulators per row, column j in words "
        f"[{acc_words}j, {acc_words}(j+1)), int{cfg.acc_width} sign-extended",
    }
    return {
        name: Window(
            name=name,
            offset=i * region,
            depth=depth,
            width=width,
            stride=stride,
            access="r" if name == "acc" else "rw",
            doc=docs[name],
            elem_width=32 * acc_words if name == "acc" else w,
            signed=True if name == "acc" else cfg.fmt.signed,
        )
        for i, (name, (depth, stride, width)) in enumerate(spans.items())
    }


class SystolicEngine(wiring.Component):
    """The systolic engine for ``cfg`` (see the module docstring for the contract)."""

    kind = "systolic"

    def __init__(self, cfg: SystolicConfig):
        self.cfg = cfg
        self.layout = window_layout(cfg)
        region = self.layout["top"].offset
        if 3 * region > 1 << 22:
            raise ValueError(
                "spad_depth and acc_depth make the host window larger than 16 MiB; "
                "use smaller memories"
            )
        super().__init__(engine_ports())

    def windows(self) -> list[Window]:
        return list(self.layout.values())

    # -- helpers ---------------------------------------------------------------------------
    def _unpack(self, word, count):
        w = self.cfg.fmt.width
        return [word[e * w : (e + 1) * w] for e in range(count)]

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        R, C, A = cfg.rows, cfg.cols, cfg.acc_width
        lay = self.layout
        m.submodules.array = arr = SystolicArray(cfg)

        # ---- memories --------------------------------------------------------------------
        # No read of a word in the cycle it is written needs a defined result: the scratchpads
        # are not written while a GEMM reads them (the program's tokens order that), and the
        # write-back forwards the sums it wrote in the last two beats. Without this attribute
        # yosys emulates read-old-data (ECP5's block RAM does not give it across its ports)
        # with a compare and a multiplexer after the block RAM.
        attrs = {"no_rw_check": 1}
        m.submodules.left = left = memory.Memory(
            shape=lay["left"].width, depth=cfg.spad_depth, init=[], attrs=attrs
        )
        m.submodules.top = top = memory.Memory(
            shape=lay["top"].width, depth=cfg.spad_depth, init=[], attrs=attrs
        )
        left_r, top_r = left.read_port(), top.read_port()
        left_h, top_h = left.read_port(), top.read_port()
        left_w, top_w = left.write_port(granularity=32), top.write_port(granularity=32)
        banks, bank_rd, bank_wr, bank_h = [], [], [], []
        for j in range(C):
            mem = memory.Memory(shape=A, depth=cfg.acc_depth, init=[], attrs=attrs)
            m.submodules[f"acc{j}"] = mem
            wp = mem.write_port()
            banks.append(mem)
            bank_wr.append(wp)
            bank_rd.append(mem.read_port())  # not transparent: the write-back forwards
            bank_h.append(mem.read_port())

        self._host_window(m, left_w, top_w, left_h, top_h, bank_h)

        # ---- instruction latch -----------------------------------------------------------
        f = {name: Signal(width, name=f"i_{name}") for name, (_, width) in GEMM_FIELDS.items()}
        is_os = Signal()
        m.d.comb += arr.mode_os.eq(is_os)
        self.aw = ceil_log2(cfg.spad_depth) + 1  # scratchpad address counters (saturating)
        self.acw = ceil_log2(cfg.acc_depth) + 1  # accumulator address counters (saturating)

        # ---- beat generation (address issue); data arrives one cycle later ---------------
        a_en, a_addr, a_first, a_drain, a_valid = (
            Signal(),
            Signal(self.aw),
            Signal(),
            Signal(),
            Signal(),
        )
        b_en, b_addr, b_shift, b_zero = Signal(), Signal(self.aw), Signal(), Signal()
        oob = Signal()  # an address ran past a memory's end during this instruction

        def delayed(sigs, n, tag):  # each signal through n registers
            return [SystolicArray._delay(m, x, n, f"{x.name}_{tag}") for x in sigs]

        # The feed is three register stages: the sequencer's addresses and flags (so its
        # address arithmetic ends at a register), the block RAMs' read, and the read data
        # itself (the RAMs' clock-to-out is most of a cycle at 150 MHz, so nothing but a
        # register follows them); the zeroing of idle beats comes after.
        a_en0, a_addr0, a_first0, a_drain0, a_valid0 = delayed(
            [a_en, a_addr, a_first, a_drain, a_valid], 1, "s0")
        b_en0, b_addr0, b_shift0, b_zero0 = delayed([b_en, b_addr, b_shift, b_zero], 1, "s0")
        m.d.comb += [
            left_r.addr.eq(a_addr0),
            left_r.en.eq(1),
            top_r.addr.eq(b_addr0),
            top_r.en.eq(1),
        ]
        with m.If((a_en0 & (a_addr0 >= cfg.spad_depth)) | (b_en0 & (b_addr0 >= cfg.spad_depth))):
            m.d.sync += oob.eq(1)
        # flags aligned with the memories' read data, then with its register
        a_en1, a_first1, a_drain1, a_valid1 = delayed(
            [a_en0, a_first0, a_drain0, a_valid0], 2, "rd")
        b_en1, b_shift1, b_zero1 = delayed([b_en0, b_shift0, b_zero0], 2, "rd")
        left_d = Signal.like(left_r.data, name="left_rdata")
        top_d = Signal.like(top_r.data, name="top_rdata")
        m.d.sync += [left_d.eq(left_r.data), top_d.eq(top_r.data)]
        a_elems = self._unpack(left_d, R)
        b_elems = self._unpack(top_d, C)
        for i in range(R):
            m.d.comb += arr.a_data[i].eq(Mux(a_en1 & a_valid1, a_elems[i], 0))
        for j in range(C):
            m.d.comb += arr.b_data[j].eq(Mux(b_en1 & ~b_zero1, b_elems[j], 0))
        m.d.comb += [
            arr.a_valid.eq(a_en1 & a_valid1),
            arr.a_first.eq(a_en1 & a_first1),
            arr.a_drain.eq(a_en1 & a_drain1),
            arr.b_shift.eq(b_en1 & b_shift1),
        ]
        m.d.comb += [
            self.perf_macs.eq(Mux(a_en & a_valid, R * C, 0)),
            self.perf_stall.eq(self.busy & ~(a_en & a_valid)),
        ]

        # ---- fold bookkeeping: one entry per fold, consumed as its results leave -----------
        ab = f["acc_base"].shape().width
        fold_layout = data.StructLayout({"base": self.acw, "rows": 8, "acc": 1})
        # deep enough for every fold in flight at the shortest period (one-row arrays)
        m.submodules.folds = folds = fifo.SyncFIFO(width=fold_layout.size, depth=16)
        push = data.View(fold_layout, folds.w_data)
        head = data.View(fold_layout, folds.r_data)
        del ab

        self._writeback(m, arr, folds, head, is_os, f, bank_rd, bank_wr, oob)

        # ---- sequencer ----------------------------------------------------------------------
        self._sequencer(
            m, f, is_os, folds, push, oob,
            (a_en, a_addr, a_first, a_drain, a_valid),
            (b_en, b_addr, b_shift, b_zero),
        )  # fmt: skip
        return m

    # ---- host window ---------------------------------------------------------------------------
    def _host_window(self, m, left_w, top_w, left_h, top_h, bank_h):
        cfg, lay, host = self.cfg, self.layout, self.host
        region_bits = ceil_log2(lay["top"].offset)
        region = host.addr[region_bits:]
        sub = host.addr[:region_bits]
        acc_words = -(-cfg.acc_width // 32)
        rd_sel = Signal(2)
        rd_sub = Signal(region_bits)  # the read's address inside its region, for the data mux
        for idx, (name, wp, rp) in enumerate((("left", left_w, left_h), ("top", top_w, top_h))):
            win = lay[name]
            sbits = ceil_log2(win.stride)
            entry, piece = sub[sbits:], sub[:sbits] if sbits else Const(0, 1)
            m.d.comb += [rp.addr.eq(entry), wp.addr.eq(entry), wp.data.eq(host.w_data.replicate(len(wp.en)))]
            with m.If(region == idx):
                with m.If(host.w_en & (piece < win.width // 32) & (entry < win.depth)):
                    m.d.comb += wp.en.eq(1 << piece)
                m.d.comb += rp.en.eq(host.r_en)
                with m.If((piece >= win.width // 32) | (entry >= win.depth)):
                    m.d.comb += host.err.eq(1)
        win = lay["acc"]
        sbits = ceil_log2(win.stride)
        entry, piece = sub[sbits:], sub[:sbits] if sbits else Const(0, 1)
        for rp in bank_h:
            m.d.comb += [rp.addr.eq(entry), rp.en.eq(host.r_en & (region == 2))]
        with m.If(region == 2):
            with m.If(host.w_en | (piece >= cfg.cols * acc_words) | (entry >= win.depth)):
                m.d.comb += host.err.eq(1)
        with m.If(region > 2):
            m.d.comb += host.err.eq(1)
        with m.If(host.r_en):
            m.d.sync += [rd_sel.eq(region), rd_sub.eq(sub)]

        def piece_of(name):
            return rd_sub[: ceil_log2(lay[name].stride)]

        # read data, one cycle after r_en
        with m.Switch(rd_sel):
            for idx, name, rp in ((0, "left", left_h), (1, "top", top_h)):
                with m.Case(idx):
                    n = len(rp.data) // 32
                    if n == 1:
                        m.d.comb += host.r_data.eq(rp.data)
                    else:
                        with m.Switch(piece_of(name)):
                            for k in range(n):
                                with m.Case(k):
                                    m.d.comb += host.r_data.eq(rp.data[32 * k : 32 * (k + 1)])
            with m.Case(2):
                words = [rp.data.as_signed()[32 * k : 32 * (k + 1)]
                         for rp in bank_h for k in range(acc_words)]  # fmt: skip
                if len(words) == 1:
                    m.d.comb += host.r_data.eq(words[0])
                else:
                    with m.Switch(piece_of("acc")):
                        for k, w in enumerate(words):
                            with m.Case(k):
                                m.d.comb += host.r_data.eq(w)

    # ---- result write-back -------------------------------------------------------------------
    def _writeback(self, m, arr, folds, head, is_os, f, bank_rd, bank_wr, oob):
        cfg = self.cfg
        C = cfg.cols
        ev0 = Mux(is_os, arr.top_valid[0], arr.bot_valid[0])
        count = Signal(16)
        tag_layout = data.StructLayout({"addr": self.acw, "we": 1, "acc": 1})
        tag0 = Signal(tag_layout)
        last = Mux(is_os, count == cfg.rows - 1, count == f["m"] - 1)
        m.d.comb += [
            tag0.addr.eq(_sadd(head.base, count, self.acw)),
            tag0.we.eq(Mux(is_os, count < head.rows, 1)),
            tag0.acc.eq(head.acc),
        ]
        with m.If(ev0 & folds.r_rdy):
            m.d.sync += count.eq(Mux(last, 0, count + 1))
            m.d.comb += folds.r_en.eq(last)
        tags = [tag0]
        for j in range(1, C):
            t = Signal(tag_layout, name=f"tag{j}")
            m.d.sync += t.eq(tags[-1])
            tags.append(t)
        for j in range(C):
            ev = Mux(is_os, arr.top_valid[j], arr.bot_valid[j])
            val = Mux(is_os, arr.top_data[j], arr.bot_data[j])
            rd, wr = bank_rd[j], bank_wr[j]
            s_v = Signal(name=f"wb{j}_v")
            s_tag = Signal(tag_layout, name=f"wb{j}_tag")
            s_val = Signal(cfg.acc_width, name=f"wb{j}_val")
            # Stage 1 registers the result and its tag (the fold FIFO's head and the address
            # sum reach the bank's read address from a register); stage 2 reads the bank.
            q_v = Signal(name=f"wb{j}_qv")
            q_tag = Signal(tag_layout, name=f"wb{j}_qtag")
            q_val = Signal(cfg.acc_width, name=f"wb{j}_qval")
            m.d.sync += [q_v.eq(ev), q_tag.eq(tags[j]), q_val.eq(val)]
            m.d.comb += [rd.addr.eq(q_tag.addr), rd.en.eq(1)]
            m.d.sync += [s_v.eq(q_v), s_tag.eq(q_tag), s_val.eq(q_val)]
            # Stage 3 registers the bank's read data (a block RAM's clock-to-out is most of a
            # cycle at 150 MHz), then adds and writes. The read port is not transparent (yosys
            # would emulate that with logic after the block RAM), so the sums written one and
            # two beats before are forwarded from registers when they hit the same address (a
            # short WS fold repeated over K).
            w_v = Signal(name=f"wb{j}_wv")
            w_tag = Signal(tag_layout, name=f"wb{j}_wtag")
            w_val = Signal(cfg.acc_width, name=f"wb{j}_wval")
            w_old = Signal(cfg.acc_width, name=f"wb{j}_wold")
            w_sum = Signal(cfg.acc_width, name=f"wb{j}_sum")
            writing = w_v & w_tag.we
            p_w, p_addr = Signal(name=f"wb{j}_pw"), Signal(self.acw, name=f"wb{j}_paddr")
            prev1 = Signal(cfg.acc_width, name=f"wb{j}_prev1")  # the sum written a beat ago
            prev2 = Signal(cfg.acc_width, name=f"wb{j}_prev2")  # ... two beats ago
            fwd1, fwd2 = Signal(name=f"wb{j}_fwd1"), Signal(name=f"wb{j}_fwd2")
            m.d.sync += [
                w_v.eq(s_v), w_tag.eq(s_tag), w_val.eq(s_val), w_old.eq(rd.data),
                p_w.eq(writing), p_addr.eq(w_tag.addr), prev1.eq(w_sum), prev2.eq(prev1),
                fwd1.eq(writing & (w_tag.addr == s_tag.addr)),
                fwd2.eq(p_w & (p_addr == s_tag.addr)),
            ]  # fmt: skip
            old = Mux(w_tag.acc, Mux(fwd1, prev1, Mux(fwd2, prev2, w_old)), 0)
            m.d.comb += w_sum.eq(old + w_val)
            m.d.comb += [
                wr.addr.eq(w_tag.addr),
                wr.data.eq(w_sum),
                wr.en.eq(writing),
            ]
            with m.If(s_v & s_tag.we & (s_tag.addr >= cfg.acc_depth)):
                m.d.sync += oob.eq(1)

    # ---- sequencer ----------------------------------------------------------------------------
    def _sequencer(self, m, f, is_os, folds, push, oob, a_port, b_port):
        cfg = self.cfg
        R, C = cfg.rows, cfg.cols
        a_en, a_addr, a_first, a_drain, a_valid = a_port
        b_en, b_addr, b_shift, b_zero = b_port
        cmd = self.cmd
        built = [DATAFLOW_CODES[d] for d in cfg.dataflows]

        # OS state
        k = Signal(16)
        period = Signal(17)  # the OS fold's last beat: max(K, 2R - 1) - 1
        rows_left = Signal(17)  # M - mt*R
        n_left = Signal(17)  # N - nt*C
        left_mt = Signal(self.aw)  # left_base + mt*K
        top_nt = Signal(self.aw)  # top_base + nt*K
        acc_mt = Signal(self.acw)  # acc_base + mt*R
        acc_nt = Signal(self.acw)  # nt*M
        any_fold = Signal()
        # "this is the last fold along N / M / K" flags, kept as registers beside the counters they
        # describe (updated with them), so no compare sits between a counter and its next value
        os_last_n, os_last_m = Signal(), Signal()
        pl_last_k, pl_last_n, st_last_k, st_last_n = Signal(), Signal(), Signal(), Signal()
        # WS state: preloader
        pl_r = Signal(8)
        pl_busy, pl_ready, pl_more = Signal(), Signal(), Signal()
        pl_tile = Signal(self.aw)  # top_base + nt*K + kt*R
        pl_ntb = Signal(self.aw)  # top_base + nt*K
        pl_k0 = Signal(17)  # kt*R
        pl_nleft = Signal(17)
        # WS state: streamer
        st_m = Signal(16)
        st_busy, st_more = Signal(), Signal()
        st_left = Signal(self.aw)  # left_base + kt*M
        st_acc = Signal(self.acw)  # acc_base + nt*M
        st_k0 = Signal(17)
        st_nleft = Signal(17)
        since = Signal(8)
        tail = Signal(8)

        m.d.comb += self.busy.eq(1)
        with m.FSM(name="seq"):
            with m.State("IDLE"):
                m.d.comb += [self.busy.eq(0), cmd.ready.eq(1)]
                with m.If(cmd.valid):
                    for name, (off, width) in GEMM_FIELDS.items():
                        m.d.sync += f[name].eq(cmd.payload[off : off + width])
                    m.d.sync += oob.eq(0)
                    m.next = "CHECK"
            with m.State("CHECK"):
                ok_df = Signal()
                m.d.comb += ok_df.eq(0)
                for code in built:
                    with m.If(f["dataflow"] == code):
                        m.d.comb += ok_df.eq(1)
                with m.If(~ok_df):
                    m.d.comb += [self.done.eq(1), self.error.eq(ErrorCode.BAD_DATAFLOW)]
                    m.next = "IDLE"
                with m.Elif((f["m"] == 0) | (f["n"] == 0) | (f["k"] == 0)):
                    m.d.comb += [self.done.eq(1), self.error.eq(ErrorCode.BAD_SHAPE)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [
                        is_os.eq(f["dataflow"] == 0),
                        # OS
                        k.eq(0),
                        period.eq(Mux(f["k"] > 2 * R - 1, f["k"] - 1, 2 * R - 2)),
                        rows_left.eq(f["m"]),
                        n_left.eq(f["n"]),
                        left_mt.eq(_sat(f["left_base"], self.aw)),
                        top_nt.eq(_sat(f["top_base"], self.aw)),
                        acc_mt.eq(_sat(f["acc_base"], self.acw)),
                        acc_nt.eq(0),
                        any_fold.eq(0),
                        os_last_n.eq(f["n"] <= C),
                        os_last_m.eq(f["m"] <= R),
                        pl_last_k.eq(f["k"] <= R),
                        pl_last_n.eq(f["n"] <= C),
                        st_last_k.eq(f["k"] <= R),
                        st_last_n.eq(f["n"] <= C),
                        # WS
                        pl_r.eq(0),
                        pl_busy.eq(0),
                        pl_ready.eq(0),
                        pl_more.eq(1),
                        pl_tile.eq(_sat(f["top_base"], self.aw)),
                        pl_ntb.eq(_sat(f["top_base"], self.aw)),
                        pl_k0.eq(0),
                        pl_nleft.eq(f["n"]),
                        st_m.eq(0),
                        st_busy.eq(0),
                        st_more.eq(1),
                        st_left.eq(_sat(f["left_base"], self.aw)),
                        st_acc.eq(_sat(f["acc_base"], self.acw)),
                        st_k0.eq(0),
                        st_nleft.eq(f["n"]),
                        since.eq(255),
                    ]
                    if cfg.has_os:
                        with m.If(f["dataflow"] == 0):
                            m.next = "OS"
                    if cfg.has_ws_path:
                        with m.If(f["dataflow"] != 0):
                            m.next = "WS"
            if cfg.has_os:
                with m.State("OS"):
                    self._os_beats(m, f, folds, push, k, period, rows_left, n_left, left_mt,
                                   top_nt, acc_mt, acc_nt, any_fold, a_port, b_port,
                                   os_last_n, os_last_m)  # fmt: skip
            if cfg.has_ws_path:
                with m.State("WS"):
                    self._ws_beats(m, f, folds, push, locals())
            if cfg.has_os:
                with m.State("FLUSH"):
                    # a drain token with no data: the last fold's results enter the drain chain
                    m.d.comb += [a_en.eq(1), a_first.eq(1), a_drain.eq(1), a_valid.eq(0)]
                    m.d.comb += [a_addr.eq(0), b_en.eq(0)]
                    m.next = "TAIL"
            with m.State("TAIL"):
                with m.If(folds.level != 0):
                    m.d.sync += tail.eq(0)
                with m.Elif(tail == C + 5):
                    m.d.comb += self.done.eq(1)
                    m.d.comb += self.error.eq(Mux(oob, ErrorCode.OUT_OF_RANGE, 0))
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += tail.eq(tail + 1)

    def _os_beats(self, m, f, folds, push, k, period, rows_left, n_left, left_mt, top_nt,
                  acc_mt, acc_nt, any_fold, a_port, b_port, last_n, last_m):  # fmt: skip
        R, C = self.cfg.rows, self.cfg.cols
        a_en, a_addr, a_first, a_drain, a_valid = a_port
        b_en, b_addr, b_shift, b_zero = b_port
        start = k == 0
        can = ~start | folds.w_rdy
        m.d.comb += [
            a_addr.eq(_sadd(left_mt, k, self.aw)),
            b_addr.eq(_sadd(top_nt, k, self.aw)),
            push.base.eq(_sadd(acc_mt, acc_nt, self.acw)),
            push.rows.eq(Mux(rows_left > R, R, rows_left)),
            push.acc.eq(f["accumulate"]),
        ]
        with m.If(can):
            m.d.comb += [
                a_en.eq(1),
                a_valid.eq(k < f["k"]),
                a_first.eq(start),
                a_drain.eq(start & any_fold),
                b_en.eq(k < f["k"]),
                b_zero.eq(0),
                folds.w_en.eq(start),
            ]
            m.d.sync += any_fold.eq(1)
            with m.If(k == period):
                m.d.sync += k.eq(0)
                with m.If(~last_n):
                    m.d.sync += [
                        n_left.eq(n_left - C),
                        last_n.eq(n_left <= 2 * C),
                        top_nt.eq(_sadd(top_nt, f["k"], self.aw)),
                        acc_nt.eq(_sadd(acc_nt, f["m"], self.acw)),
                    ]
                with m.Elif(~last_m):
                    m.d.sync += [
                        n_left.eq(f["n"]),
                        last_n.eq(f["n"] <= C),
                        top_nt.eq(_sat(f["top_base"], self.aw)),
                        acc_nt.eq(0),
                        rows_left.eq(rows_left - R),
                        last_m.eq(rows_left <= 2 * R),
                        left_mt.eq(_sadd(left_mt, f["k"], self.aw)),
                        acc_mt.eq(_sadd(acc_mt, R, self.acw)),
                    ]
                with m.Else():
                    m.next = "FLUSH"
            with m.Else():
                m.d.sync += k.eq(k + 1)

    def _ws_beats(self, m, f, folds, push, s):
        R, C = self.cfg.rows, self.cfg.cols
        a_en, a_addr, a_first, a_drain, a_valid = s["a_port"]
        b_en, b_addr, b_shift, b_zero = s["b_port"]
        pl_r, pl_busy, pl_ready, pl_more = s["pl_r"], s["pl_busy"], s["pl_ready"], s["pl_more"]
        pl_tile, pl_ntb, pl_k0, pl_nleft = s["pl_tile"], s["pl_ntb"], s["pl_k0"], s["pl_nleft"]
        pl_last_k, pl_last_n = s["pl_last_k"], s["pl_last_n"]
        st_last_k, st_last_n = s["st_last_k"], s["st_last_n"]
        st_m, st_busy, st_more = s["st_m"], s["st_busy"], s["st_more"]
        st_left, st_acc, st_k0, st_nleft = s["st_left"], s["st_acc"], s["st_k0"], s["st_nleft"]
        since = s["since"]
        K, M = f["k"], f["m"]

        with m.If(since != 255):
            m.d.sync += since.eq(since + 1)

        # Preloader: shifts the next R x C tile of B into the preload chain, bottom row first.
        row_k = pl_k0 + (R - 1) - pl_r
        m.d.comb += [b_addr.eq(_sadd(pl_tile, (R - 1) - pl_r, self.aw)), b_zero.eq(row_k >= K), b_shift.eq(1)]
        pl_go = Signal()
        m.d.comb += pl_go.eq(pl_busy | (pl_more & ~pl_ready & (since >= R - 1)))
        with m.If(pl_go):
            m.d.comb += b_en.eq(1)
            with m.If(b_zero):
                m.d.comb += b_addr.eq(0)  # not read; keep the range check quiet
            m.d.sync += pl_busy.eq(1)
            with m.If(pl_r == R - 1):
                m.d.sync += [pl_r.eq(0), pl_busy.eq(0), pl_ready.eq(1)]
                with m.If(~pl_last_k):
                    m.d.sync += [pl_k0.eq(pl_k0 + R), pl_tile.eq(_sadd(pl_tile, R, self.aw)),
                                 pl_last_k.eq(pl_k0 + 2 * R >= K)]  # fmt: skip
                with m.Elif(~pl_last_n):
                    m.d.sync += [
                        pl_k0.eq(0),
                        pl_last_k.eq(K <= R),
                        pl_nleft.eq(pl_nleft - C),
                        pl_last_n.eq(pl_nleft <= 2 * C),
                        pl_ntb.eq(_sadd(pl_ntb, K, self.aw)),
                        pl_tile.eq(_sadd(pl_ntb, K, self.aw)),
                    ]
                with m.Else():
                    m.d.sync += pl_more.eq(0)
            with m.Else():
                m.d.sync += pl_r.eq(pl_r + 1)

        # Streamer: M rows of A through the tile whose weights were just preloaded.
        start = ~st_busy & st_more & pl_ready & folds.w_rdy
        m.d.comb += [
            a_addr.eq(_sadd(st_left, st_m, self.aw)),
            push.base.eq(st_acc),
            push.rows.eq(0),
            push.acc.eq(f["accumulate"] | (st_k0 != 0)),
        ]
        with m.If(start | st_busy):
            m.d.comb += [a_en.eq(1), a_valid.eq(1), a_first.eq(st_m == 0), a_drain.eq(0)]
        with m.If(start):
            m.d.comb += folds.w_en.eq(1)
            m.d.sync += [st_busy.eq(1), pl_ready.eq(0), since.eq(1)]
        with m.If(start | st_busy):
            with m.If(st_m == M - 1):
                m.d.sync += [st_m.eq(0), st_busy.eq(0)]
                with m.If(~st_last_k):
                    m.d.sync += [st_k0.eq(st_k0 + R), st_left.eq(_sadd(st_left, M, self.aw)),
                                 st_last_k.eq(st_k0 + 2 * R >= K)]  # fmt: skip
                with m.Elif(~st_last_n):
                    m.d.sync += [
                        st_k0.eq(0),
                        st_last_k.eq(K <= R),
                        st_nleft.eq(st_nleft - C),
                        st_last_n.eq(st_nleft <= 2 * C),
                        st_left.eq(_sat(f["left_base"], self.aw)),
                        st_acc.eq(_sadd(st_acc, M, self.acw)),
                    ]
                with m.Else():
                    m.d.sync += st_more.eq(0)
                    m.next = "TAIL"
            with m.Else():
                m.d.sync += st_m.eq(st_m + 1)
