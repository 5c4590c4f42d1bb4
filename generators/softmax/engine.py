"""The softmax engine: ``lanes`` exp pipelines with per-lane running statistics.

Method ``online`` (two passes over the row): pass 1 streams the row once; each lane keeps two
running states (even / odd vector words: each is updated every other cycle, so the rescaling
multiply has a pipeline stage of its own), a running max ``m`` and a running sum ``l`` rescaled
on every new maximum; the ``2 L`` states are combined (``2 L`` cycles through lane 0's exp
pipeline), ``R = floor(2**46 / l)`` by a sequential radix-4 divider
(17 cycles; radix 2 with ``divider_bits=1``: 32), and pass 2 writes
``round(exp(x - M) * R / 2**31)``.

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

Timing (``cycles()``, held by a test): ``online`` row = ``2 ceil(n / L) + 2 L + 69 +
2 ceil(log2(2 L))`` cycles; ``shiftmax`` row = ``3 ceil(n / L) + 62 + 2 ceil(log2(2 L)) +
ceil(log2 L)``, the divider's 17 cycles included (radix 2: 15 more; the comparator tree over
the 2 L running maxima takes two cycles a level, the adder tree one); plus 5 cycles of
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
        super().__init__(engine_ports(), lanes=cfg.lanes, max_len=cfg.max_len, regions=regions)

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
        if self.config.method == "online":  # + the comparator tree over the 2 L states
            per_row = 2 * w + 2 * L + fixed + 8 * x + 2 * (2 * L - 1).bit_length()
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
        # each lane keeps two running states, for its even and its odd vector words, so a state
        # is updated every other cycle: its max a cycle after its compare (both methods), the
        # online sum's rescaling multiply in a stage of its own
        S = SETS

        mode = Signal(2)  # 0: running max (+ online sums), 1: sums (shiftmax), 2: output
        M = Signal(signed(W))
        any_valid = Signal()
        recip = Signal(R_WIDTH)
        m_s = [[Signal(signed(W), name=f"m{i}_{k}") for k in range(S)] for i in range(L)]
        has = [[Signal(name=f"has{i}_{k}") for k in range(S)] for i in range(L)]
        lsum = [[Signal(L_WIDTH, name=f"l{i}_{k}") for k in range(S)] for i in range(L)]
        states = [(has[i][k], m_s[i][k], lsum[i][k]) for k in range(S) for i in range(L)]
        l_tot = Signal(L_WIDTH)
        feeding = Signal()
        feed_i = Signal(range(len(states) + 1))
        reset_stats = Signal()
        par = delay(m, ctx.rd_idx[0], 1, "par") if S == 2 else Const(0, 1)

        outs = []
        for i, x0 in enumerate(ctx.rd_data):
            # d in three stages: the element's valid bit, the compare (and the running max),
            # the differences
            x = _reg(m, x0, signed(W), f"x0_{i}")
            v = _reg(m, ctx.rd_lanes[i] & (x0 != fmt.min), 1, f"v{i}")
            m_cur = Array(m_s[i])[par]
            has_cur = Array(has[i])[par]
            # a state's max starts at the format's minimum, below every valid element, so a new
            # maximum is one compare, registered (nm1); the state takes x a cycle later, before
            # its next compare (the other state's word comes in between)
            new_max = v & Array(greater(x, mk) for mk in m_s[i])[par]  # each state's, then one
            x1 = _reg(m, x, signed(W), f"x1_{i}")
            m1 = _reg(m, m_cur, signed(W), f"m1_{i}")
            nm1 = _reg(m, new_max, 1, f"nm1_{i}")
            h1 = _reg(m, has_cur, 1, f"h1_{i}")
            take = _reg(m, new_max & (mode == 0), 1, f"tk{i}")
            par1 = _reg(m, par, 1, f"par1_{i}")
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
            if i == 0:  # lane 0's exp pipeline also combines the states (online)
                msel = _reg(m, Array(mm for _, mm, _ in states)[feed_i], signed(W), "msel")
                msel = delay(m, msel, D_LAT - 2, "msel_d")
                d0 = Mux(delay(m, feeding, D_LAT - 1, "feeding1"), M - msel, d0)
            d = _reg(m, d0, unsigned(W), f"d{i}")
            flags = delay(m, Cat(v, new_max, v & ~has_cur, par), D_LAT - 1, f"fl{i}")
            e = exp_fn(m, d, f, f"x{i}", plat)
            fd = delay(m, flags, exp_lat, f"fd{i}")
            fv, fset = fd[0], fd[3]
            if online:
                # stage A: the rescaling product (two multiplies for each state, straight from
                # its register, one register: a loop of two cycles) and the plain sum; stage B:
                # each state's new value round(l e / 2**16) + E_ONE from its own products (no
                # multiplexer before the adder), the rounding bit in the high product's zeros
                l_cur = Array(lsum[i])[fset]
                pas = [_mul2(m, plat, e, lsum[i][k], f"pa{i}_{k}", 1) for k in range(S)]
                sum_a = _reg(m, l_cur + e, unsigned(L_WIDTH), f"sa{i}")
                fl_a = _reg(m, fd, 4, f"fa{i}")
                for k, (pa_lo, pa_hi) in enumerate(pas):
                    scaled = (pa_lo + (E_ONE << 16) + Cat(Const(1 << 15, LO), pa_hi)) >> 16
                    upd = Mux(fl_a[2], E_ONE, Mux(fl_a[1], scaled, sum_a))
                    with m.If(fl_a[0] & (mode == 0) & (fl_a[3] == k)):
                        m.d.sync += lsum[i][k].eq(upd)
            with m.If(fv & (mode == 1)):
                m.d.sync += lsum[i][0].eq(lsum[i][0] + e)
            # output pass: e R as two multiplies (1), their sum, rounded (2), saturated (3)
            op_lo, op_hi = _mul2(m, plat, e, recip, f"op{i}")
            prod = _reg(m, op_lo + (1 << (OUT_SHIFT - 1)) + (op_hi << LO),
                        unsigned(18 + R_WIDTH), f"op{i}")
            o = prod >> OUT_SHIFT
            pv = delay(m, fv, 1 + MUL_LAT, f"opv{i}")
            outs.append(_reg(m, Mux(pv, Mux(o > 0xFFFF, 0xFFFF, o), 0), 16, f"out{i}"))
            if i == 0:
                e0 = e

        # state combine (online): l_tot += round(l_j * exp(M - m_j)), j from the feed: l_j picked
        # (aligned with its exp), two multiplies, their sum, the accumulation
        fi = delay(m, feed_i, D_LAT - 1 + exp_lat, "fi")
        fval = delay(m, feeding, D_LAT - 1 + exp_lat, "fval")
        lsel = _reg(m, Array(l for _, _, l in states)[fi], L_WIDTH, "lsel")
        hsel = _reg(m, fval & Array(h for h, _, _ in states)[fi], 1, "hsel")
        c_lo, c_hi = _mul2(m, plat, e0, lsel, "cp")
        cprod = _reg(m, c_lo + (1 << 15) + (c_hi << LO), unsigned(L_WIDTH + 17), "cprod")
        cval = delay(m, hsel, 1 + MUL_LAT, "cval")
        with m.If(cval):
            m.d.sync += l_tot.eq(l_tot + (cprod >> 16))
        feed_last = delay(m, feeding & (feed_i == len(states) - 1),
                          1 + MUL_LAT + D_LAT + exp_lat, "flast")

        # tails of the passes
        out_lat = D_LAT + exp_lat + 2 + MUL_LAT  # d, the exp, the output's stages
        tail_stats = delay(m, ctx.rd_last, D_LAT + exp_lat + (2 if online else 0), "tail_s")
        tail_out = delay(m, ctx.rd_last, out_lat, "tail_o")
        wr_v = delay(m, ctx.rd_valid, out_lat, "wr_v")
        wr_idx = delay(m, ctx.rd_idx, out_lat, "wr_idx")
        m.d.comb += [ctx.wr_en.eq(wr_v & (mode == 2)), ctx.wr_idx.eq(wr_idx)]
        for i, o in enumerate(outs):
            m.d.comb += ctx.wr_data[i].eq(o)

        div = SeqDivider(dividend_width=DIV_SHIFT + 1, divisor_width=L_WIDTH,
                         digit_bits=cfg.divider_bits)
        m.submodules.div = div
        m.d.comb += [
            div.dividend.eq(1 << DIV_SHIFT),
            div.divisor.eq(l_tot),
            div.qbits.eq(SeqDivider.whole(R_WIDTH, cfg.divider_bits)),
        ]
        # a state that saw no valid element holds the format's minimum, below every valid one
        anyv, mx, max_lat = max_tree(m, [(h, mm) for h, mm, _ in states], "smax",
                                     invalid_lowest=True)
        tot, sum_lat = sum_tree(m, [lsum[i][0] for i in range(L)], L_WIDTH, "ssum")
        wait = Signal(range(max(max_lat, sum_lat) + 2))

        with m.FSM(name="softmax"):
            with m.State("IDLE"):
                with m.If(ctx.start):
                    m.d.comb += [reset_stats.eq(1), ctx.read_start.eq(1)]
                    m.d.sync += [mode.eq(0), l_tot.eq(0)]
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
                        m.d.sync += [feeding.eq(1), feed_i.eq(0)]
                        m.next = "FEED"
                    else:
                        m.d.sync += mode.eq(1)
                        m.next = "SUM_START"
            if online:
                with m.State("FEED"):
                    m.d.sync += feed_i.eq(feed_i + 1)
                    with m.If(feed_i == len(states) - 1):
                        m.d.sync += feeding.eq(0)
                        m.next = "FEED_WAIT"
                with m.State("FEED_WAIT"):
                    with m.If(feed_last):
                        m.next = "DIV"
            else:
                with m.State("SUM_START"):
                    m.d.comb += ctx.read_start.eq(1)
                    m.next = "PASS_SUM"
                with m.State("PASS_SUM"):
                    m.d.sync += wait.eq(0)
                    with m.If(tail_stats):
                        m.next = "SUM"
                with m.State("SUM"):  # the adder tree settles
                    m.d.sync += wait.eq(wait + 1)
                    with m.If(wait == sum_lat):
                        m.d.sync += l_tot.eq(tot)
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
