"""The bit-serial tensor engine: ``pes`` output channels x ``lanes``-wide dot products, weights
consumed ``bits_per_cycle`` magnitude bit-planes per cycle, precision chosen per instruction.

One MATMUL (``model.Instr``) computes ``R[m, n] = sum_g S[n, g] * sum_{k in g} Wv[n, k] Av[m, k]``
exactly as :mod:`.model` states. Loop order: tiles of ``pes`` weight rows, then rows of A, then
chunks of ``lanes`` along K. One *pass* (one chunk of one row against one tile) takes
``ceil(planes / bits_per_cycle)`` cycles; passes run back to back.

Pipeline (one pass enters per pass time; every stage keeps up with one-cycle passes):

0. sequencer: counters, memory addresses; reads the weight, activation and group words on the
   pass's first cycle (memories hold their read data until the next read); the read data is
   registered before any logic (block-RAM clock-to-out is most of a cycle). The instruction's
   range products take two cycles in DSP blocks, its code masks are registered in CHECK.
1. decode: codes -> sign and magnitude per weight (INT two's complement / bipolar-INT, or the
   group's BitMoD FP3/FP4 grid; FP4's 16 becomes 8 against a doubled activation, so 4-bit BitMoD
   walks 4 planes), activations -> integers (masked past K); registered.
2. planes: per PE, per cycle, ``sum_b sum_l bit_(j*bpc+b)(|w_l|) * (+/-a_l) << b`` (an AND-mux
   and an adder tree, no multiplier; negative terms as inverted activations plus a count of
   them), in three registered levels (sums of 4 terms with their +1s, sums of 4 of those, then
   theirs); 2b shifts the plane sum by ``j*bpc`` into the group's exact partial sum.
3. dequantisation: the group's partial sum times its 16-bit scale, split in two 18x18 DSP
   multiplies per PE (input and output registers), their sum registered (3 cycles).
4. accumulate: adds the groups of a result (``acc_width`` bits, wrapping) and writes the tile's
   ``pes`` results into the result memory.

Latency: ``model.cycles`` (accept -> ``done``), held equal to the RTL by the tests.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value
from amaranth.hdl import signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory

from ...hdl.arith import adder_tree
from ..dsp import multiply
from ..engine import ErrorCode, Window, engine_ports
from .config import SCALE_BITS, BitserialConfig
from .model import DATATYPES, FIELDS, OVERHEAD, REJECT_CYCLES, cycles, psum_width

__all__ = ["BitserialEngine"]


def _log2(n: int) -> int:
    return n.bit_length() - 1


_TREE_CUT = 4  # adder-tree terms summed before the pipeline register
_LO = 17  # group-sum bits of the low dequantisation multiply (unsigned, one 18x18 block)
DEQUANT_LATENCY = 3  # group sum -> dequantised product (two multiplier registers, the sum)


def _regions(cfg: BitserialConfig):
    """(name, depth, width, access, doc) of the host window's regions, in address order."""
    return [
        ("weights", cfg.w_depth, cfg.w_word_bits, "w",
         "weight codes: entry t*ceil(K/lanes)+c, slot p*lanes+l of w_max_bits bits"),
        ("acts", cfg.a_depth, cfg.a_word_bits, "w",
         "activation codes: entry m*ceil(K/lanes)+c, slot l of a_max_bits bits"),
        ("groups", cfg.g_depth, cfg.g_word_bits, "w",
         "per PE: scale (bits 15:0) | datatype id << 16; entry t*ceil(K/group_size)+g"),
        ("results", cfg.r_depth, cfg.r_word_bits, "r",
         "per PE: 64-bit result (acc_width bits, sign-extended); entry t*M+m"),
    ]


def window_layout(cfg: BitserialConfig) -> list[Window]:
    out, offset = [], 0
    for name, depth, width, access, doc in _regions(cfg):
        stride = cfg.stride_of(width)
        span = depth * stride
        offset = -(-offset // span) * span
        out.append(Window(name, offset, depth, width, stride, access, doc))
        offset += span
    return out


class BitserialEngine(wiring.Component):
    """Bit-serial MATMUL engine for :class:`BitserialConfig` ``cfg`` (see the module docstring)."""

    kind = "bitserial"

    def __init__(self, cfg: BitserialConfig):
        if not isinstance(cfg, BitserialConfig):
            raise TypeError(f"cfg must be a BitserialConfig, not {type(cfg).__name__}")
        self.cfg = cfg
        super().__init__(engine_ports())

    def windows(self) -> list[Window]:
        return window_layout(self.cfg)

    # Timing contract (the benches and the host rely on it; see model.cycles)
    overhead_cycles = OVERHEAD  # fixed cycles per instruction beyond the passes
    reject_cycles = REJECT_CYCLES  # accept -> done of a rejected instruction

    def cycles(self, ins) -> int:
        """Cycles from accepting ``ins`` (a model.Instr) to its ``done`` pulse."""
        return cycles(self.cfg, ins)

    # ------------------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        mems = {}
        for win in self.windows():
            mem = Memory(shape=unsigned(win.stride * 32), depth=win.depth, init=[])
            m.submodules[f"mem_{win.name}"] = mem
            mems[win.name] = (win, mem)
        self._host_bus(m, mems)

        ins = {name: Signal(width, name=f"i_{name}") for name, (_, width) in FIELDS.items()}
        self._retire, self._dt_err = Signal(), Signal()
        seq = self._sequencer(m, platform, ins, mems)
        dec = self._decode(m, ins, seq, mems)
        grp = self._planes(m, dec)
        self._dequant(m, platform, ins, grp, mems)
        return m

    # ------------------------------------------------------------------------------------------
    def _host_bus(self, m, mems):
        """Host writes to weights/acts/groups (32-bit granular), reads of results."""
        bus = self.host
        hit_w, hit_r = Signal(), Signal()
        for name, (win, mem) in mems.items():
            sb, span_b = _log2(win.stride), _log2(win.depth * win.stride)
            hit = bus.addr[span_b:] == (win.offset >> span_b)
            index, sub = bus.addr[sb:span_b], bus.addr[:sb]
            if "w" in win.access:
                wp = mem.write_port(granularity=32)
                m.d.comb += [
                    wp.addr.eq(index),
                    wp.data.eq(Cat(*[bus.w_data] * win.stride)),
                    wp.en.eq(Mux(bus.w_en & hit, Const(1, win.stride) << sub, 0)),
                ]
                with m.If(hit):
                    m.d.comb += hit_w.eq(1)
            if "r" in win.access:
                rp = mem.read_port()
                sub_q = Signal(max(sb, 1))
                m.d.comb += [rp.addr.eq(index), rp.en.eq(bus.r_en & hit)]
                m.d.sync += sub_q.eq(sub)
                m.d.comb += bus.r_data.eq(rp.data.word_select(sub_q, 32) if sb else rp.data[:32])
                with m.If(hit):
                    m.d.comb += hit_r.eq(1)
        m.d.comb += bus.err.eq((bus.r_en & ~hit_r) | (bus.w_en & ~hit_w))

    # ------------------------------------------------------------------------------------------
    def _sequencer(self, m, platform, ins, mems):
        """Accept, check, then walk tiles x rows x chunks x plane-cycles (stage 0)."""
        cfg = self.cfg
        cmd = self.cmd
        lg_l, lg_p, lg_g, lg_b = (_log2(cfg.lanes), _log2(cfg.pes), _log2(cfg.group_size),
                                  _log2(cfg.bits_per_cycle))
        w_bits = ins["w_bits_m1"] + 1
        planes = Signal(4)
        steps = Signal(4)  # cycles per pass
        nt, kc, ng = Signal(15), Signal(17), Signal(17)
        ends = {k: Signal(34, name=f"end_{k}") for k in ("w", "a", "g", "r")}
        err = Signal(8)
        m.d.comb += planes.eq(w_bits)
        # per instruction, registered in CHECK (the decode and the counters read no arithmetic
        # on the instruction's fields): the code masks, their sign bits (one-hot), 2^a_bits
        wmax, amax = cfg.w_max_bits, cfg.a_max_bits
        masks = {"w_low": Signal(wmax), "w_sbit": Signal(wmax), "a_low": Signal(amax),
                 "a_sbit": Signal(amax), "a_top": Signal(amax + 1)}  # fmt: skip
        a_bits = ins["a_bits_m1"] + 1

        # bad fields and shapes need no arithmetic; ranges are checked one cycle later
        enc_ok = Const(1)
        for key in ("w_enc", "a_enc"):
            ok = Const(0)
            for i, e in enumerate(("twos", "bipolar")):
                if e in cfg.encodings:
                    ok = ok | (ins[key] == i)
            enc_ok = enc_ok & ok
        bad_field = ((w_bits > cfg.w_max_bits) | (ins["a_bits_m1"] + 1 > cfg.a_max_bits)
                     | ~enc_ok)
        if cfg.bitmod:
            bad_field = bad_field | (ins["mixed"] & ~((w_bits == 3) | (w_bits == 4)))
        else:
            bad_field = bad_field | ins["mixed"]
        bad_shape = (ins["m"] == 0) | (ins["n"] == 0) | (ins["k"] == 0)
        uses_g = ins["mixed"] | ins["scaled"]
        out_of_range = ((ends["w"] > cfg.w_depth) | (ends["a"] > cfg.a_depth)
                        | (uses_g & (ends["g"] > cfg.g_depth)) | (ends["r"] > cfg.r_depth))

        # counters of stage 0
        t, mi, c, j = Signal(14), Signal(14), Signal(16), Signal(4)
        w_row, a_row, g_row, r_addr = Signal(32), Signal(32), Signal(32), Signal(32)
        krem, nrem = Signal(17), Signal(15)
        running = Signal()
        reject, code = Signal(), Signal(8)  # START's verdict, registered in VERDICT
        # the counters' last values, registered in RANGE (each test is one compare)
        steps_m1, kc_m1, m_m1, nt_m1 = Signal(4), Signal(17), Signal(14), Signal(15)
        last_j = j == steps_m1
        last_c = c == kc_m1
        last_m = mi == m_m1
        last_t = t == nt_m1
        cg_mask = cfg.chunks_per_group - 1
        s0 = {
            "valid": running,
            "first_j": j == 0,
            "last_j": last_j,
            "shift": (j << lg_b)[:4],
            "first_g": (c & cg_mask) == 0 if cg_mask else Const(1),
            "last_g": ((c & cg_mask) == cg_mask) | last_c if cg_mask else Const(1),
            "last_row": last_c,
            "last_all": last_c & last_m & last_t,
            "r_addr": r_addr,
            "lanes_valid": Mux(krem < cfg.lanes, krem, cfg.lanes)[: lg_l + 1],
            "pes_valid": Mux(nrem < cfg.pes, nrem, cfg.pes)[: lg_p + 1],
        }
        reads = {
            "weights": w_row + c,
            "acts": a_row + c,
            "groups": g_row + (c >> (lg_g - lg_l)),
        }
        ports = {}
        for name, addr in reads.items():
            win, mem = mems[name]
            rp = mem.read_port()
            m.d.comb += [rp.addr.eq(addr), rp.en.eq(running & (j == 0))]
            # the block RAM's output (5.8 ns clock-to-out) is registered before any logic
            q = Signal(len(rp.data), name=f"rd_{name}")
            m.d.sync += q.eq(rp.data)
            ports[name] = q

        # the range products, in DSP blocks with their input and output registers
        prods = {
            "w": multiply(m, platform, nt, kc, latency=2, name="mul_w"),
            "a": multiply(m, platform, ins["m"], kc, latency=2, name="mul_a"),
            "g": multiply(m, platform, nt, ng, latency=2, name="mul_g"),
            "r": multiply(m, platform, nt, ins["m"], latency=2, name="mul_r"),
        }

        m.d.sync += self.done.eq(0), self.error.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += cmd.ready.eq(1)
                with m.If(cmd.valid):
                    for name, (off, width) in FIELDS.items():
                        m.d.sync += ins[name].eq(cmd.payload[off : off + width])
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [
                    steps.eq((planes + cfg.bits_per_cycle - 1) >> lg_b),
                    masks["w_low"].eq((Const(1, wmax + 1) << w_bits) - 1),
                    masks["w_sbit"].eq(Const(1, wmax) << ins["w_bits_m1"]),
                    masks["a_low"].eq((Const(1, amax + 1) << a_bits) - 1),
                    masks["a_sbit"].eq(Const(1, amax) << ins["a_bits_m1"]),
                    masks["a_top"].eq(Const(1, amax + 1) << a_bits),
                ]
                m.d.sync += [
                    nt.eq((ins["n"] + cfg.pes - 1) >> lg_p),
                    kc.eq((ins["k"] + cfg.lanes - 1) >> lg_l),
                    ng.eq((ins["k"] + cfg.group_size - 1) >> lg_g),
                    err.eq(Mux(bad_shape, ErrorCode.BAD_SHAPE,
                               Mux(bad_field, ErrorCode.BAD_FIELD, 0))),
                ]
                m.next = "MUL0"
            with m.State("MUL0"):  # the multipliers' input registers take nt, kc, ng, m
                m.d.comb += self.busy.eq(1)
                m.next = "MUL1"
            with m.State("MUL1"):  # their output registers take the products
                m.d.comb += self.busy.eq(1)
                m.next = "RANGE"
            with m.State("RANGE"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [ends[k].eq(ins[f"{k}_base"] + prods[k]) for k in ends]
                m.d.sync += [steps_m1.eq(steps - 1), kc_m1.eq(kc - 1), m_m1.eq(ins["m"] - 1),
                             nt_m1.eq(nt - 1)]  # fmt: skip
                m.next = "VERDICT"
            with m.State("VERDICT"):  # the range compares (34 bits) and the error registered
                m.d.comb += self.busy.eq(1)
                m.d.sync += [reject.eq((err != 0) | out_of_range),
                             code.eq(Mux(err != 0, err, ErrorCode.OUT_OF_RANGE))]  # fmt: skip
                m.next = "START"
            with m.State("START"):  # one flip-flop decides; the counters are already loaded
                m.d.comb += self.busy.eq(1)
                with m.If(reject):
                    m.d.sync += [self.done.eq(1), self.error.eq(code)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += running.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                with m.If(self._retire):
                    m.d.sync += self.done.eq(1)
                    m.d.sync += self.error.eq(Mux(self._dt_err, ErrorCode.BAD_FIELD, 0))
                    m.next = "IDLE"

        # outside a run the counters hold the instruction's first values (its fields are set
        # when it is accepted, cycles before START), so no state decides their loads
        with m.If(~running):
            m.d.sync += [
                t.eq(0), mi.eq(0), c.eq(0), j.eq(0),
                w_row.eq(ins["w_base"]), a_row.eq(ins["a_base"]),
                g_row.eq(ins["g_base"]), r_addr.eq(ins["r_base"]),
                krem.eq(ins["k"]), nrem.eq(ins["n"]),
            ]
        with m.Else():
            m.d.sync += j.eq(j + 1)
            with m.If(last_j):
                m.d.sync += [j.eq(0), c.eq(c + 1), krem.eq(krem - cfg.lanes)]
                with m.If(last_c):
                    m.d.sync += [c.eq(0), krem.eq(ins["k"]), mi.eq(mi + 1), a_row.eq(a_row + kc),
                                 r_addr.eq(r_addr + 1)]
                    with m.If(last_m):
                        m.d.sync += [mi.eq(0), a_row.eq(ins["a_base"]), t.eq(t + 1),
                                     w_row.eq(w_row + kc), g_row.eq(g_row + ng),
                                     nrem.eq(nrem - cfg.pes)]
                        with m.If(last_t):
                            m.d.sync += running.eq(0)
        return {"s0": s0, "ports": ports, "masks": masks}

    # ------------------------------------------------------------------------------------------
    def _decode(self, m, ins, seq, mems):
        """Stage 1: codes -> sign/magnitude weights, integer activations, scales (registered),
        in two steps: 1a (INT sign/magnitude, integer activations, the groups' datatype
        fields, registered every cycle), 1b (BitMoD selection, lane mask, loaded on the pass's
        first cycle)."""
        cfg = self.cfg
        s0 = seq["s0"]
        # s0r: read data out of the memories; s0a: read data registered; s1: step 1a registered
        s0r, s0a, s1 = ({k: Signal(Value.cast(v).shape(), name=f"{n}_{k}") for k, v in s0.items()}
                        for n in ("s0r", "s0a", "s1"))  # fmt: skip
        for k, v in s0.items():
            m.d.sync += [s0r[k].eq(v), s0a[k].eq(s0r[k]), s1[k].eq(s0a[k])]
        load = s1["valid"] & s1["first_j"]
        wd, ad, gd = (seq["ports"][n] for n in ("weights", "acts", "groups"))
        a_w = cfg.a_max_bits + 1

        def reg(value, name):
            q = Signal(Value.cast(value).shape(), name=name)
            m.d.sync += q.eq(value)
            return q

        act = []
        for lane in range(cfg.lanes):
            code = ad[lane * cfg.a_max_bits : (lane + 1) * cfg.a_max_bits]
            v = Signal(signed(a_w), name=f"a_{lane}")
            dec = reg(_decode_int(code, seq["masks"], ins["a_enc"])[:a_w].as_signed(),
                      f"a1_{lane}")  # fmt: skip
            m.d.comb += v.eq(Mux(lane < s1["lanes_valid"], dec, 0))
            act.append(v)

        planes_w = cfg.max_planes
        act_q = [Signal(signed(a_w), name=f"act_{lane}") for lane in range(cfg.lanes)]
        with m.If(load):
            m.d.sync += [q.eq(a) for q, a in zip(act_q, act)]
        wneg = [[Signal(name=f"wneg_{p}_{lane}") for lane in range(cfg.lanes)]
                for p in range(cfg.pes)]
        wdbl = [[Signal(name=f"wdbl_{p}_{lane}") for lane in range(cfg.lanes)]
                for p in range(cfg.pes)]
        mag = [[Signal(planes_w, name=f"mag_{p}_{lane}") for lane in range(cfg.lanes)]
               for p in range(cfg.pes)]
        scale = [Signal(SCALE_BITS + 1, name=f"scale_{p}") for p in range(cfg.pes)]
        # per instruction: the code's low-bits mask and its sign bit (one-hot)
        wmax = cfg.w_max_bits
        low, sbit = seq["masks"]["w_low"], seq["masks"]["w_sbit"]
        dt_bad = []
        for p in range(cfg.pes):
            slot = gd[p * 32 : (p + 1) * 32]
            dt = slot[16:20]
            fp = None
            if cfg.bitmod:
                fp = _bitmod_pe(m, p, dt, low, ins["mixed"])
                fp = {k: reg(v, f"{k}1_{p}") for k, v in fp.items()}
            for lane in range(cfg.lanes):
                i = p * cfg.lanes + lane
                tag = f"{p}_{lane}"
                code = wd[i * wmax : (i + 1) * wmax]
                neg, mg, dbl = _int_sign_mag(m, tag, code, low, sbit, ins["w_enc"])
                neg, mg = reg(neg, f"neg1_{tag}"), reg(mg, f"mag1_{tag}")
                if fp is not None:
                    code = reg(code[:4], f"code1_{tag}")
                    neg, mg, dbl = _bitmod_sign_mag(m, tag, code, fp, neg, mg, dbl)
                with m.If(load):
                    m.d.sync += [mag[p][lane].eq(mg), wneg[p][lane].eq(neg),
                                 wdbl[p][lane].eq(dbl)]
            sc = reg(slot[:SCALE_BITS], f"scale1_{p}")
            with m.If(load):
                m.d.sync += scale[p].eq(Mux(ins["scaled"], sc, 1))
            if fp is not None:
                dt_bad.append(ins["mixed"] & fp["bad"] & (p < s1["pes_valid"]))
        if dt_bad:
            with m.If(load & Cat(*dt_bad).any()):
                m.d.sync += self._dt_err.eq(1)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += self._dt_err.eq(0)
        macs = Signal(16)
        with m.If(load):
            m.d.sync += macs.eq(s1["lanes_valid"] * s1["pes_valid"])
        return {"s1": s1, "act": act_q, "neg": wneg, "dbl": wdbl, "mag": mag, "scale": scale,
                "macs": macs}

    # ------------------------------------------------------------------------------------------
    def _planes(self, m, dec):
        """Stage 2: bit-plane sums (registered); stage 2b: shift them into each PE's exact group
        partial sum. A negative weight's term is the inverted activation, with the +1 of each
        such term added once as a count (no negator per weight)."""
        cfg = self.cfg
        bpc = cfg.bits_per_cycle
        s2 = {k: Signal(v.shape(), name=f"s2_{k}") for k, v in dec["s1"].items()}
        for k, v in dec["s1"].items():
            m.d.sync += s2[k].eq(v)
        s2a = {k: Signal(v.shape(), name=f"s2a_{k}") for k, v in s2.items()}
        s2m = {k: Signal(v.shape(), name=f"s2m_{k}") for k, v in s2.items()}
        s2b = {k: Signal(v.shape(), name=f"s2b_{k}") for k, v in s2.items()}
        for k, v in s2.items():
            m.d.sync += [s2a[k].eq(v), s2m[k].eq(s2a[k]), s2b[k].eq(s2m[k])]
        pw = psum_width(cfg)
        a_w = cfg.a_max_bits + 1
        out_valid = Signal()
        gsum = [Signal(signed(pw), name=f"gsum_{p}") for p in range(cfg.pes)]
        gscale = [Signal(SCALE_BITS + 1, name=f"gscale_{p}") for p in range(cfg.pes)]
        scale_b = [Signal(SCALE_BITS + 1, name=f"scale_b_{p}") for p in range(cfg.pes)]
        scale_c = [Signal(SCALE_BITS + 1, name=f"scale_c_{p}") for p in range(cfg.pes)]
        scale_d = [Signal(SCALE_BITS + 1, name=f"scale_d_{p}") for p in range(cfg.pes)]
        flags = {k: Signal(s2[k].shape(), name=f"s3_{k}")
                 for k in ("last_row", "last_all", "r_addr")}
        computing = s2["valid"]
        s1_load = dec["s1"]["valid"] & dec["s1"]["first_j"]
        group_end = s2b["valid"] & s2b["last_j"] & s2b["last_g"]
        for p in range(cfg.pes):
            terms, ones = [], []
            for lane in range(cfg.lanes):
                mag, neg, dbl = dec["mag"][p][lane], dec["neg"][p][lane], dec["dbl"][p][lane]
                a = dec["act"][lane]
                a2 = Signal(signed(a_w + 1), name=f"a2_{p}_{lane}")
                m.d.comb += a2.eq(Mux(dbl, a << 1, a) ^ Mux(neg, -1, 0))
                for b in range(bpc):
                    terms.append(Mux(mag[b], a2 << b if b else a2, 0))
                    ones.append((mag[b] & neg) << b if b else (mag[b] & neg))
            psw = cfg.a_max_bits + 3 + bpc + _log2(cfg.lanes)
            plane_sum = Signal(signed(psw), name=f"plane_{p}")
            # three pipelined levels: sums of _TREE_CUT terms and their negative terms' +1s,
            # sums of _TREE_CUT of those, then theirs (every configuration has the three, so
            # the latency is one constant)
            parts = []
            for i in range(0, len(terms), _TREE_CUT):
                part = Signal(signed(psw), name=f"part_{p}_{i // _TREE_CUT}")
                cut = slice(i, i + _TREE_CUT)
                m.d.sync += part.eq(adder_tree([*terms[cut], adder_tree(ones[cut])]))
                parts.append(part)
            mids = []
            for i in range(0, len(parts), _TREE_CUT):
                mid = Signal(signed(psw), name=f"mid_{p}_{i // _TREE_CUT}")
                m.d.sync += mid.eq(adder_tree(parts[i : i + _TREE_CUT]))
                mids.append(mid)
            m.d.sync += plane_sum.eq(adder_tree(mids))
            psum = Signal(signed(pw), name=f"psum_{p}")
            nxt = Signal(signed(pw), name=f"psum_next_{p}")
            first = s2b["first_j"] & s2b["first_g"]
            m.d.comb += nxt.eq(Mux(first, 0, psum) + (plane_sum << s2b["shift"]))
            with m.If(s2b["valid"]):
                m.d.sync += psum.eq(nxt)
            # the shift register walks the magnitude planes bpc at a time
            with m.If(computing & ~s1_load):
                for lane in range(cfg.lanes):
                    m.d.sync += dec["mag"][p][lane].eq(dec["mag"][p][lane] >> bpc)
            with m.If(computing):
                m.d.sync += scale_b[p].eq(dec["scale"][p])
            m.d.sync += [scale_c[p].eq(scale_b[p]), scale_d[p].eq(scale_c[p])]
            with m.If(group_end):
                m.d.sync += [gsum[p].eq(nxt), gscale[p].eq(scale_d[p])]
        m.d.sync += out_valid.eq(group_end)
        with m.If(group_end):
            m.d.sync += [flags[k].eq(s2b[k]) for k in flags]
        m.d.comb += [
            self.perf_macs.eq(Mux(computing & s2["last_j"], dec["macs"], 0)),
            self.perf_stall.eq(self.busy & ~computing),
        ]
        return {"valid": out_valid, "gsum": gsum, "gscale": gscale, **flags}

    # ------------------------------------------------------------------------------------------
    def _dequant(self, m, platform, ins, grp, mems):
        """Stages 3-4: group sum x scale, accumulate the groups of a result, write the tile.

        The scale is unsigned (16 bits, or 1), so the product is split at bit ``_LO`` of the
        group sum into two 18x18 multiplies (DSP input and output registers, 2 cycles), summed
        in a third registered cycle."""
        cfg = self.cfg
        pw = psum_width(cfg)
        prod = [Signal(signed(pw + SCALE_BITS + 1), name=f"prod_{p}") for p in range(cfg.pes)]
        v4 = Signal()
        f4 = {k: Signal(grp[k].shape(), name=f"s4_{k}") for k in ("last_row", "last_all", "r_addr")}
        v, f = grp["valid"], {k: grp[k] for k in f4}
        for i in range(DEQUANT_LATENCY - 1):  # the flags follow the products
            vq = Signal(name=f"dq_valid_{i}")
            fq = {k: Signal(f[k].shape(), name=f"dq_{k}_{i}") for k in f}
            m.d.sync += [vq.eq(v), *[fq[k].eq(f[k]) for k in f]]
            v, f = vq, fq
        m.d.sync += v4.eq(v)
        m.d.sync += [f4[k].eq(f[k]) for k in f4]
        for p in range(cfg.pes):
            gs, sc = grp["gsum"][p], grp["gscale"][p][:SCALE_BITS]
            if pw > _LO + 1:
                lo = multiply(m, platform, gs[:_LO], sc, latency=2, name=f"dq_lo_{p}")
                hi = multiply(m, platform, gs[_LO:].as_signed(), sc, latency=2,
                              name=f"dq_hi_{p}")  # fmt: skip
                m.d.sync += prod[p].eq(lo + (hi << _LO))
            else:
                pr = multiply(m, platform, gs, sc, latency=2, name=f"dq_{p}")
                m.d.sync += prod[p].eq(pr)
        win, mem = mems["results"]
        wp = mem.write_port()
        acc = [Signal(signed(cfg.acc_width), name=f"acc_{p}") for p in range(cfg.pes)]
        res = []
        for p in range(cfg.pes):
            total = Signal(signed(cfg.acc_width), name=f"total_{p}")
            r64 = Signal(signed(64), name=f"res_{p}")  # sign-extended into the 64-bit slot
            m.d.comb += [total.eq(acc[p] + prod[p]), r64.eq(total)]
            with m.If(v4):
                m.d.sync += acc[p].eq(Mux(f4["last_row"], 0, total))
            res.append(r64)
        m.d.comb += [
            wp.addr.eq(f4["r_addr"]),
            wp.data.eq(Cat(*res)),
            wp.en.eq(v4 & f4["last_row"]),
        ]
        m.d.comb += self._retire.eq(v4 & f4["last_row"] & f4["last_all"])


def _decode_int(code, masks, enc):
    """The low ``a_bits`` bits of ``code`` (``masks``: the instruction's registered a_low,
    a_sbit, a_top = 2^a_bits) as a two's complement (enc=0) or bipolar (enc=1) integer."""
    u = code & masks["a_low"]
    twos = u - Mux((u & masks["a_sbit"]).any(), masks["a_top"], 0)
    bip = (u << 1) - masks["a_low"]
    return Mux(enc, bip, twos)


def _int_sign_mag(m, tag, code, low, sbit, enc):
    """An INT code (low bits ``low``, sign bit ``sbit``) -> (negative, magnitude, doubled=0).

    Two's complement: |v| = -u mod 2^b when the sign bit is set. Bipolar-INT (v = 2u - (2^b-1)):
    |v| = ~(2u) & low when u < 2^(b-1), else (2u & low) | 1; both bitwise, no adder.
    """
    u = Signal(len(code), name=f"u_{tag}")
    m.d.comb += u.eq(code & low)
    top = (u & sbit).any()
    twos = Mux(top, (-u)[: len(code)] & low, u)
    u2 = (u << 1)[: len(code)]
    bip = Mux(top, (u2 & low) | 1, ~u2 & low)
    neg = Signal(name=f"neg_{tag}")
    mag = Signal(len(code), name=f"imag_{tag}")
    m.d.comb += [neg.eq(Mux(enc, ~top, top)), mag.eq(Mux(enc, bip, twos))]
    return neg, mag, Const(0)


def _bitmod_pe(m, p, dt, w_low, mixed):
    """Per-PE decode of the group's datatype id: FP family, its extra value, validity
    (``w_low``: the instruction's weight-code mask, bit i set when w_bits > i)."""
    fam4, xneg, xmag, xdbl, bad = (Signal(name=f"{n}_{p}") for n in
                                   ("fam4", "xneg", "xmag", "xdbl", "dtbad"))
    xmag = Signal(4, name=f"xmag_{p}")
    is_fp = Signal(name=f"isfp_{p}")
    m.d.comb += bad.eq(1)
    with m.Switch(dt):
        with m.Case(0):
            m.d.comb += bad.eq(0)
        for ident, (_, bits, _, extra) in DATATYPES.items():
            with m.Case(ident):
                half = abs(extra) >= 16  # 16 is walked as 8 x doubled activation
                m.d.comb += [fam4.eq(bits == 4), xneg.eq(extra < 0),
                             xmag.eq(abs(extra) >> half), xdbl.eq(half),
                             bad.eq(~w_low[bits - 1])]  # fmt: skip
    m.d.comb += is_fp.eq(mixed & (dt != 0))
    return {"fam4": fam4, "xneg": xneg, "xmag": xmag, "xdbl": xdbl, "bad": bad, "is_fp": is_fp}


def _bitmod_sign_mag(m, tag, code, fp, ineg, imag, idbl):
    """Sign/magnitude of a BitMoD FP3/FP4 code (the caller's INT result when the id is 0)."""
    fp3 = {i: v for i, v in enumerate(DATATYPES[1][2])}
    fp4 = {i: v for i, v in enumerate(DATATYPES[5][2])}
    m3, m4 = Signal(4, name=f"fp3_{tag}"), Signal(4, name=f"fp4_{tag}")
    with m.Switch(code[:2]):
        for i, v in fp3.items():
            with m.Case(i):
                m.d.comb += m3.eq(v)
    with m.Switch(code[:3]):
        for i, v in fp4.items():
            with m.Case(i):
                m.d.comb += m4.eq(v)
    neg = Mux(fp["fam4"], code[3], code[2])
    nz = Mux(fp["fam4"], code[:4] == 8, code[:3] == 4)  # negative zero: the extra value
    fneg = Mux(nz, fp["xneg"], neg)
    fmag = Mux(fp["bad"], 0, Mux(nz, fp["xmag"], Mux(fp["fam4"], m4, m3)))
    fdbl = nz & fp["xdbl"]
    sel = fp["is_fp"]
    neg_o, mag_o, dbl_o = Signal(name=f"sneg_{tag}"), Signal(len(imag), name=f"smag_{tag}"), \
        Signal(name=f"sdbl_{tag}")
    m.d.comb += [neg_o.eq(Mux(sel, fneg, ineg)), mag_o.eq(Mux(sel, fmag, imag)),
                 dbl_o.eq(sel & fdbl & ~fp["bad"])]
    return neg_o, mag_o, dbl_o
