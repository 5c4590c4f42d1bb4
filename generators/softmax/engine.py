"""The softmax engine: ``lanes`` exp pipelines with per-lane running statistics.

Method ``online`` (two passes over the row): pass 1 streams the row once; each lane keeps four
running states (vector words by index modulo 4: each is updated every fourth cycle at most, so
the rescaling multiply keeps both its registers and the update a stage of its own), a running
max ``m`` and a running sum ``l`` rescaled on every new maximum; the ``4 L`` states are combined
by the lanes side by side (each rescales its four sums to the row's max through its own exp
pipeline and rescaling multiply, four cycles, then an adder tree over the lanes),
``R = floor(2**46 / l)`` by a sequential radix-4 divider (17 cycles; radix 2 with
``divider_bits=1``: 32), and pass 2 writes ``round(exp(x - M) * R / 2**31)``.

Method ``shiftmax`` (I-ViT, three passes): a max pass, a shift-exp sum pass, the divider, and the
output pass. No multiplier in the exp (shifts and adds only).

Error bounds (max abs error of a probability against ``torch.softmax`` in float64, rows up to
1000 long, normal / wide-range / ascending logits at int8 f=4, int16 f=8 and f=11;
``tests/test_nonlinear_models.py`` holds them):

* ``online``: 2.5e-4 (measured <= 1.6e-4).
* ``shiftmax``: 4e-2 (measured <= 2.7e-2; the exp's log2(e) ~ 1.4375 shift-add and the n = 15
  clamp dominate).
* Row sums, both methods: ``|sum - 1| <= 1e-3 + n * 2**-16`` (each output rounds to 2**-15).

Masked entries (the input format's minimum) give 0; a fully masked row gives all zeros.
Output: uint16, 1.0 == 2**15.

Timing (``cycles()``, held by a test): ``online`` row = ``2 ceil(n / L) + 63 + ceil(log2 L) +
2 ceil(log2(4 L))`` cycles; ``shiftmax`` row = ``3 ceil(n / L) + 62 + 2 ceil(log2(2 L)) +
ceil(log2 L)``, the divider's 17 cycles included (radix 2: 15 more; the comparator tree over
the running maxima takes two cycles a level, the adder tree one); plus 6 cycles of
instruction checks per instruction. Each pass streams one vector word per cycle.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Mux, Signal, signed, unsigned

from ...hdl.nonlinear_common import (
    CHECK_CYCLES,
    Region,
    RowEngine,
    SeqDivider,
    delay,
    greater,
    max_tree,
    rom,
    sum_tree,
)
from ..dsp import multiply
from ..engine import Window, engine_ports
from .config import SoftmaxConfig
from .model import DIV_SHIFT, E_ONE, LOG2E_Q20, OUT_SHIFT, SETS, T_FRAC, TAB_HI, TAB_LO

__all__ = ["SoftmaxEngine"]

D_LAT = 3  # vector word -> the exp's input d
L_WIDTH = 30  # running sums: <= 4096 * 2**16
R_WIDTH = DIV_SHIFT - 16 + 1
FIXED_CYCLES = 44  # a row's pipeline fills and state steps, the divider's cycles apart
LO = 17  # a wide product is two multiplies: by the low LO bits and by the rest
# the registers of a multiply (in its MULT18X18D on ECP5: generators/dsp.py); the online sum's
# rescaling multiply, in a loop of two cycles, has one
MUL_LAT = 2
EXP_LAT = {"online": 5 + 2 * MUL_LAT, "shiftmax": 7}  # the exp's two multiplies, or none


def _reg(m, value, shape, name):
    r = Signal(shape, name=name)
    m.d.sync += r.eq(value)
    return r


def _rsr(v, s: int):
    """Round-half-up right shift by a constant (left shift when negative)."""
    return (v + (1 << (s - 1))) >> s if s > 0 else v << (-s)


def _mul2(m, plat, a, b, p: str, lat: int = MUL_LAT):
    """``a * b`` (unsigned, ``b`` wider than a multiplier) as two registered partial products,
    ``a * b[:LO]`` and ``a * b[LO:]`` (one MULT18X18D each on ECP5, ``plat`` the platform); the
    caller adds them (``lo + (hi << LO)``) a stage later."""
    lo = multiply(m, plat, a, b[:LO], latency=lat, name=f"{p}_lo")
    hi = multiply(m, plat, a, b[LO:], latency=lat, name=f"{p}_hi")
    return lo, hi


def exp_online_rtl(m, d, f: int, p: str, plat=None):
    """``exp_online`` of generators/softmax/model.py; ``d`` unsigned; latency
    ``EXP_LAT["online"]`` (each multiply ``MUL_LAT`` cycles; 1 below).

    One multiply or one carry chain per stage: d log2(e) as two products (1) and their sum (2),
    t rounded (3), q and the two table entries (4), their product and the half of the final
    shift (5), rounded with that half (6), shifted by q (7)."""
    c = Const(LOG2E_Q20, LOG2E_Q20.bit_length())
    ep_lo, ep_hi = _mul2(m, plat, d, c, f"{p}_ep")
    prod = _reg(m, ep_lo + (ep_hi << LO), unsigned(len(d) + 21), f"{p}_prod")
    t = _reg(m, _rsr(prod, 20 + f - T_FRAC), unsigned(len(d) + 21), f"{p}_t")
    q_raw = t >> T_FRAC
    q = _reg(m, Mux(q_raw > 31, 31, q_raw), range(32), f"{p}_q")
    r = t[:T_FRAC]
    th = _reg(m, rom(TAB_HI, r[6:]), unsigned(17), f"{p}_th")
    tl = _reg(m, rom(TAB_LO, r[:6]), unsigned(17), f"{p}_tl")
    pp = multiply(m, plat, th, tl, latency=MUL_LAT, name=f"{p}_pp")
    qd = delay(m, q, MUL_LAT - 1, f"{p}_qd")
    q2 = _reg(m, qd, range(32), f"{p}_q2")
    half = _reg(m, (Const(1, 33) << qd) >> 1, unsigned(32), f"{p}_half")
    # round(pp / 2**16) + (2**q >> 1) in one add: the half's bit sits above the rounding bit
    fh = _reg(m, (pp + Cat(Const(1 << 15, 16), half)) >> 16, unsigned(34), f"{p}_fh")
    q3 = _reg(m, q2, range(32), f"{p}_q3")
    return _reg(m, fh >> q3, unsigned(17), f"{p}_e")


def exp_shift_rtl(m, d, f: int, p: str, plat=None, n: int = 15):
    """``exp_shift(-d)`` of generators/softmax/model.py; ``d`` unsigned; latency
    ``EXP_LAT["shiftmax"]``.

    One carry chain per stage: -d (1), x log2(e) (2), clamped and negated (3), q and r (4), the
    mantissa and the shift (5), shifted (6), rounded (7)."""
    a = _reg(m, -d, signed(len(d) + 1), f"{p}_a")
    xl = _reg(m, a + (a >> 1) - (a >> 4), signed(len(d) + 2), f"{p}_xl")
    lim = n * (1 << f)
    negxl = _reg(m, Mux(xl < -lim, lim, -xl), range(lim + 1), f"{p}_nx")
    q = _reg(m, negxl >> f, range(n + 1), f"{p}_q")
    r = _reg(m, -(negxl[:f] if f else Const(0, 1)).as_unsigned(), signed(f + 2), f"{p}_r")
    mant = _reg(m, (r + (2 << f)).as_unsigned()[: f + 2], unsigned(f + 2), f"{p}_mant")
    sh = _reg(m, (n - q).as_unsigned()[:4], unsigned(4), f"{p}_sh")
    raw = _reg(m, (mant << sh) >> 1, unsigned(f + 2 + 15), f"{p}_raw")
    return _reg(m, _rsr(raw, f + n - 16), unsigned(17), f"{p}_e")


class SoftmaxEngine(RowEngine):
    """Softmax over rows: instruction ``softmax`` (0x20) with src, dst, len, rows (see
    ``hdl/nonlinear_common.py``). Regions: ``in`` (rw, ``in_dtype``), ``out`` (r, uint16)."""

    kind = "softmax"

    def __init__(self, config: SoftmaxConfig):
        if not isinstance(config, SoftmaxConfig):
            raise TypeError(f"config must be a SoftmaxConfig, not {config!r}")
        self.config = cfg = config
        regions = [
            Region("in", cfg.in_fmt.width, cfg.lanes, cfg.depth, "in", "rw", "logit rows"),
            Region("out", 16, cfg.lanes, cfg.depth, "out", "r", "probabilities, 1.0 = 2**15",
                   signed=False),
        ]
        super().__init__(engine_ports(), lanes=cfg.lanes, max_len=cfg.max_len, regions=regions,
                         multiply=multiply)

    def windows(self) -> list[Window]:
        return [
            Window(r.name, off, r.depth, r.bits, r.stride, r.access, r.doc, r.width, r.signed)
            for r, off in self.region_layout()
        ]

    def cycles(self, length: int, rows: int, masked_rows: int = 0) -> int:
        """Cycles from the instruction's acceptance to its ``done`` pulse (the cycle model).

        A fully masked row skips the divider (17 - 1 cycles fewer; radix 2: 32 - 1)."""
        w, L = -(-length // self.config.lanes), self.config.lanes
        x = MUL_LAT - 1  # the multiplies' registers past one: three passes' exp, e R, the combine
        bits = self.config.divider_bits
        div = SeqDivider.cycles(SeqDivider.whole(R_WIDTH, bits), bits)
        fixed = FIXED_CYCLES + div
        if self.config.method == "online":
            # + the comparator tree over the S L states, the combine (S cycles, then the adder
            # tree over the L lanes' sums); pass 1's tail is 10 cycles shorter than shiftmax's
            per_row = (2 * w + SETS + (L - 1).bit_length() + fixed - 10 + 8 * x
                       + 2 * (SETS * L - 1).bit_length())  # fmt: skip
        else:  # + the comparator tree over the 2 L states, the adder tree over the L lanes
            per_row = 3 * w + fixed + x + 2 * (2 * L - 1).bit_length() + (L - 1).bit_length()
        return CHECK_CYCLES + rows * per_row - masked_rows * (div - 1)

    def elaborate_row(self, m, ctx):
        cfg = self.config
        L, f, fmt = cfg.lanes, cfg.in_frac, cfg.in_fmt
        plat = ctx.platform
        exp_lat = EXP_LAT[cfg.method]
        online = cfg.method == "online"
        exp_fn = exp_online_rtl if online else exp_shift_rtl
        W = fmt.width
        # each lane keeps running states for its vector words by index modulo S, so a state is
        # updated every S-th cycle at most: its max a cycle after its compare (both methods); the
        # online sum's rescaling (S = SETS = 4) in a loop of four registers, its multiply's two
        # among them; shiftmax keeps S = 2 (max only)
        S = SETS if online else 2

        mode = Signal(2)  # 0: running max (+ online sums), 1: sums (shiftmax), 2: output
        M = Signal(signed(W))
        any_valid = Signal()
        recip = Signal(R_WIDTH)
        m_s = [[Signal(signed(W), name=f"m{i}_{k}") for k in range(S)] for i in range(L)]
        has = [[Signal(name=f"has{i}_{k}") for k in range(S)] for i in range(L)]
        lsum = [[Signal(L_WIDTH, name=f"l{i}_{k}") for k in range(S)] for i in range(L)]
        states = [(has[i][k], m_s[i][k], lsum[i][k]) for k in range(S) for i in range(L)]
        feeding = Signal()
        feed_k = Signal(range(S))  # the combine: every lane rescales its state feed_k to M
        reset_stats = Signal()
        par = delay(m, ctx.rd_idx[: (S - 1).bit_length()], 1, "par")
        acc = [Signal(L_WIDTH, name=f"acc{i}") for i in range(L)]  # each lane's combined sum

        outs = []
        for i, x0 in enumerate(ctx.rd_data):
            # d in three stages: the element's valid bit, the compare (and the running max),
            # the differences
            x = _reg(m, x0, signed(W), f"x0_{i}")
            v = _reg(m, ctx.rd_lanes[i] & (x0 != fmt.min), 1, f"v{i}")
            # a state's max starts at the format's minimum, below every valid element, so a new
            # maximum is one compare, registered (nm1); the state takes x a cycle later, before
            # its next compare (the other states' words come in between)
            if S >= 4:  # the state's last update is in a cycle before x: picked then, registered
                sel = ctx.rd_idx[: (S - 1).bit_length()]
                m_cur = _reg(m, Array(m_s[i])[sel], signed(W), f"mc{i}")
                has_cur = _reg(m, Array(has[i])[sel], 1, f"hc{i}")
                new_max = v & greater(x, m_cur)
            else:  # each state's compare, then one picked
                m_cur = Array(m_s[i])[par]
                has_cur = Array(has[i])[par]
                new_max = v & Array(greater(x, mk) for mk in m_s[i])[par]
            x1 = _reg(m, x, signed(W), f"x1_{i}")
            m1 = _reg(m, m_cur, signed(W), f"m1_{i}")
            nm1 = _reg(m, new_max, 1, f"nm1_{i}")
            h1 = _reg(m, has_cur, 1, f"h1_{i}")
            take = _reg(m, new_max & (mode == 0), 1, f"tk{i}")
            par1 = _reg(m, par, len(par), f"par1_{i}")
            d0 = Mux(mode == 0, Mux(nm1, x1 - m1, m1 - x1), M - x1)
            d0 = Mux((mode == 0) & ~h1, 0, d0)
            for k in range(S):
                with m.If(reset_stats):
                    m.d.sync += [has[i][k].eq(0), lsum[i][k].eq(0), m_s[i][k].eq(fmt.min)]
                with m.Else():
                    with m.If((mode == 0) & v & (par == k)):
                        m.d.sync += has[i][k].eq(1)
                    with m.If(take & (par1 == k)):
                        m.d.sync += m_s[i][k].eq(x1)
            if online:  # the combine: each lane's exp pipeline takes M - (its state's max)
                msel = _reg(m, Array(m_s[i])[feed_k], signed(W), f"msel{i}")
                msel = delay(m, msel, D_LAT - 2, f"msel_d{i}")
                d0 = Mux(delay(m, feeding, D_LAT - 1, f"feeding{i}"), M - msel, d0)
            d = _reg(m, d0, unsigned(W), f"d{i}")
            flags = delay(m, Cat(v, new_max, v & ~has_cur, par), D_LAT - 1, f"fl{i}")
            e = exp_fn(m, d, f, f"x{i}", plat)
            fd0 = delay(m, flags, exp_lat - 1, f"fd{i}")  # a cycle before the exp's result
            fd = _reg(m, fd0, len(fd0), f"fd{i}")
            fv = fd[0]
            if online:
                # the combine's flags, aligned with its exp: feeding, the state has a sum, which
                feed = Cat(feeding, feeding & Array(has[i])[feed_k], feed_k)
                ff0 = delay(m, feed, D_LAT + exp_lat - 1, f"ff{i}")
                ff = _reg(m, ff0, len(ff0), f"ff{i}")
                # which state, picked a cycle early (a register, no multiplexer in series)
                fset = _reg(m, Mux(ff0[0], ff0[2:], fd0[3:]), 2, f"fset{i}")
                # A0: the state's sum (picked) and e into the multiplies' input registers (and
                # into registers for the plain sum); A1: the two products, l + e; B: round(l e /
                # 2**16) + E_ONE (the rounding bit in the high product's zeros); C: the state's
                # new value. The state is next read four cycles later (S = 4), the cycle after C.
                l_cur = Signal(L_WIDTH, name=f"lc{i}")
                m.d.comb += l_cur.eq(Array(lsum[i])[fset])
                pa_lo, pa_hi = _mul2(m, plat, e, l_cur, f"pa{i}")
                lc1 = _reg(m, l_cur, L_WIDTH, f"lc1_{i}")
                e1 = _reg(m, e, len(e), f"e1_{i}")
                sum_a = delay(m, _reg(m, lc1 + e1, unsigned(L_WIDTH), f"sa{i}"), 1, f"sb{i}")
                scaled = _reg(m, (pa_lo + (E_ONE << 16) + Cat(Const(1 << 15, LO), pa_hi)) >> 16,
                              unsigned(L_WIDTH + 1), f"sc{i}")  # fmt: skip
                fl_c = delay(m, Cat(fd, ff), 1 + MUL_LAT, f"fc{i}")
                upd = Mux(fl_c[2], E_ONE, Mux(fl_c[1], scaled, sum_a))
                for k in range(S):
                    with m.If(fl_c[0] & (mode == 0) & (fl_c[3:5] == k)):
                        m.d.sync += lsum[i][k].eq(upd)
                # the combine: acc += round(l e / 2**16) for each state that saw an element
                with m.If(reset_stats):
                    m.d.sync += acc[i].eq(0)
                with m.Elif(fl_c[6]):
                    m.d.sync += acc[i].eq(acc[i] + scaled - E_ONE)
            with m.If(fv & (mode == 1)):
                m.d.sync += lsum[i][0].eq(lsum[i][0] + e)
            # output pass: e R as two multiplies (1), their sum, rounded (2), saturated (3)
            op_lo, op_hi = _mul2(m, plat, e, recip, f"op{i}")
            prod = _reg(m, op_lo + (1 << (OUT_SHIFT - 1)) + (op_hi << LO),
                        unsigned(18 + R_WIDTH), f"op{i}")
            o = prod >> OUT_SHIFT
            pv = delay(m, fv, 1 + MUL_LAT, f"opv{i}")
            outs.append(_reg(m, Mux(pv, Mux(o > 0xFFFF, 0xFFFF, o), 0), 16, f"out{i}"))

        # the combine's last term is in its lane's acc at the end of this cycle (online)
        feed_last = delay(m, feeding & (feed_k == S - 1), D_LAT + exp_lat + 1 + MUL_LAT, "flast")

        # tails of the passes: online pass 1's states (the running maxima, the flags) are final
        # three cycles after its last word (its sums later, but before the combine reads them)
        out_lat = D_LAT + exp_lat + 2 + MUL_LAT  # d, the exp, the output's stages
        tail_stats = delay(m, ctx.rd_last, 3 if online else D_LAT + exp_lat, "tail_s")
        tail_out = delay(m, ctx.rd_last, out_lat, "tail_o")
        wr_v = delay(m, ctx.rd_valid, out_lat, "wr_v")
        wr_idx = delay(m, ctx.rd_idx, out_lat, "wr_idx")
        m.d.comb += [ctx.wr_en.eq(wr_v & (mode == 2)), ctx.wr_idx.eq(wr_idx)]
        for i, o in enumerate(outs):
            m.d.comb += ctx.wr_data[i].eq(o)

        tot, sum_lat = sum_tree(m, acc if online else [lsum[i][0] for i in range(L)], L_WIDTH,
                                "ssum")
        div = SeqDivider(dividend_width=DIV_SHIFT + 1, divisor_width=L_WIDTH,
                         digit_bits=cfg.divider_bits)
        m.submodules.div = div
        m.d.comb += [
            div.dividend.eq(1 << DIV_SHIFT),
            div.divisor.eq(tot),  # the adder tree's sum, settled when the division starts
            div.qbits.eq(SeqDivider.whole(R_WIDTH, cfg.divider_bits)),
        ]
        # a state that saw no valid element holds the format's minimum, below every valid one
        anyv, mx, max_lat = max_tree(m, [(h, mm) for h, mm, _ in states], "smax",
                                     invalid_lowest=True)
        wait = Signal(range(max(max_lat, sum_lat) + 2))

        with m.FSM(name="softmax"):
            with m.State("IDLE"):
                with m.If(ctx.start):
                    m.d.comb += [reset_stats.eq(1), ctx.read_start.eq(1)]
                    m.d.sync += mode.eq(0)
                    m.next = "PASS1"
            with m.State("PASS1"):
                m.d.sync += wait.eq(0)
                with m.If(tail_stats):
                    m.next = "MAX"
            with m.State("MAX"):  # the comparator tree settles
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == max_lat):
                    m.d.sync += [M.eq(mx), any_valid.eq(anyv)]
                    if online:
                        m.d.sync += [feeding.eq(1), feed_k.eq(0)]
                        m.next = "FEED"
                    else:
                        m.d.sync += mode.eq(1)
                        m.next = "SUM_START"
            if online:
                with m.State("FEED"):
                    m.d.sync += feed_k.eq(feed_k + 1)
                    with m.If(feed_k == S - 1):
                        m.d.sync += feeding.eq(0)
                        m.next = "FEED_WAIT"
                with m.State("FEED_WAIT"):
                    m.d.sync += wait.eq(0)
                    with m.If(feed_last):
                        m.next = "SUM"
            else:
                with m.State("SUM_START"):
                    m.d.comb += ctx.read_start.eq(1)
                    m.next = "PASS_SUM"
                with m.State("PASS_SUM"):
                    m.d.sync += wait.eq(0)
                    with m.If(tail_stats):
                        m.next = "SUM"
            with m.State("SUM"):  # the adder tree settles (over the lanes' sums)
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == sum_lat):
                    m.next = "DIV"
            with m.State("DIV"):
                m.d.comb += div.start.eq(any_valid)
                m.next = "DIV_WAIT"
            with m.State("DIV_WAIT"):
                with m.If(div.done | ~any_valid):
                    m.d.sync += [recip.eq(Mux(any_valid, div.quotient, 0)), mode.eq(2)]
                    m.d.comb += ctx.read_start.eq(1)
                    m.next = "PASS_OUT"
            with m.State("PASS_OUT"):
                with m.If(tail_out):
                    m.d.comb += ctx.row_done.eq(1)
                    m.next = "IDLE"
