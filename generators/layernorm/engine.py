"""The LayerNorm engine: three passes over each row and a shared sequential divider.

Pass 1 sums the row (per lane, then across lanes); the divider gives the rounded mean; pass 2
sums the squared deviations; the divider gives the variance, the Newton iteration (I-ViT) the
integer standard deviation, and ``R = floor(2**(K + a) / std)``; pass 3 writes
``sat(round(round(y * R / 2**(K - 16)) * gamma / 2**(16 + gamma_frac - out_frac)) + beta)``.
Every step is :func:`gatesmith.generators.layernorm.model.layernorm_model`'s, bit for bit.

Error bound (max abs error against ``F.layer_norm`` in float64, output int16 with out_frac 11,
|gamma| <= 2, rows with a standard deviation of >= 4 input LSBs, output not saturated; int8 f=4,
int16 f=8 and f=12, rows of 2..768; ``tests/test_nonlinear_models.py`` holds it): 1.5e-3 (the
output's own rounding is 2.4e-4; the mean's ``2**-mean_frac`` LSB resolution is the rest).

Timing (``cycles()``, held by a test): ``3 * (ceil(n / L) + 2)`` cycles of passes, plus the
divisions (``c(q)`` = ``SeqDivider.cycles``: ``ceil(q / 2) + 1`` for a ``q``-bit quotient in
radix 4, ``q + 1`` with ``divider_bits=1``) with
their set-up states: ``c(W + G) + 2`` (mean), ``c(2 (W + G) + 1) + 1`` (variance),
``c(hb + 1) + 3`` per Newton step (``hb = ceil(bitlen(v) / 2)``; the division, then a cycle
for the registered verdict; from the table guess of ``model.root_guess``, 2 cycles, 3-5 steps
where the power of two ``2**hb`` took 4-7) and ``c(K + a + 1) + 3`` (reciprocal), plus a
constant.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Mux, Signal, signed, unsigned

from ...hdl.nonlinear_common import (
    CHECK_CYCLES,
    Region,
    RowEngine,
    SeqDivider,
    delay,
    mul_latency,
    mul_pipe,
    rom,
    sum_tree,
)
from ..dsp import multiply
from ..engine import Window, engine_ports
from .config import LayerNormConfig
from .model import (
    GUESS_BITS,
    GUESS_FRAC,
    ROOT_TABLE,
    Z_FRAC,
    eps_int,
    isqrt_newton,
    k_shift,
    var_scale,
)

__all__ = ["LayerNormEngine"]

MUL_LAT = 2  # registers of every partial product (in its MULT18X18D on ECP5: generators/dsp.py)
FSM_SPLIT = 4  # the control steps that take a cycle of their own (|sum|, the scaling, the root)
GUESS_CYCLES = 2  # the root's table guess: v's top bits (a shift), then the entry (a shift)


def _reg(m, value, shape, name):
    r = Signal(shape, name=name)
    m.d.sync += r.eq(value)
    return r


def _rsr(v, s: int):
    return (v + (1 << (s - 1))) >> s if s > 0 else v << (-s)


def _bitlen(v):
    """Bit length of an unsigned value (0 for 0), as a log-depth tree of halves."""
    n = len(v)
    if n == 1:
        return v[0]
    half = 1 << ((n - 1).bit_length() - 1)  # the largest power of two below n
    hi, lo = v[half:], v[:half]
    return Mux(hi.any(), _bitlen(hi) + half, _bitlen(lo))


class LayerNormEngine(RowEngine):
    """LayerNorm over rows: instruction ``layernorm`` (0x22) with src, dst, len, rows (see
    ``hdl/nonlinear_common.py``). Regions: ``in`` (rw), ``out`` (r), ``gamma`` and ``beta`` (rw,
    int16, indexed by column like one row)."""

    kind = "layernorm"

    def __init__(self, config: LayerNormConfig):
        if not isinstance(config, LayerNormConfig):
            raise TypeError(f"config must be a LayerNormConfig, not {config!r}")
        self.config = cfg = config
        L = cfg.lanes
        pd = 1 << max(0, (cfg.param_depth - 1).bit_length())
        regions = [
            Region("in", cfg.in_fmt.width, L, cfg.depth, "in", "rw", "input rows"),
            Region("out", cfg.out_fmt.width, L, cfg.depth, "out", "r", "normalised rows"),
            Region("gamma", 16, L, pd, "param", "rw", f"gamma, 2**-{cfg.gamma_frac} units"),
            Region("beta", 16, L, pd, "param", "rw", f"beta, 2**-{cfg.out_frac} units"),
        ]
        super().__init__(engine_ports(), lanes=L, max_len=cfg.max_len, regions=regions,
                         multiply=multiply)

    def windows(self) -> list[Window]:
        return [
            Window(r.name, off, r.depth, r.bits, r.stride, r.access, r.doc, r.width, r.signed)
            for r, off in self.region_layout()
        ]

    def _widths(self):
        cfg = self.config
        W, G, K = cfg.in_fmt.width, cfg.mean_frac, k_shift(cfg)
        yw, rw = W + G + 2, K + 1
        zw = yw + rw + 1 - (K - Z_FRAC) + 1
        return yw, rw, zw

    @property
    def sq_latency(self) -> int:
        """Pass 2: y (1), y * y (the multiplier pipeline), masked (1)."""
        yw = self._widths()[0]
        return 2 + mul_latency(signed(yw), signed(yw), MUL_LAT)

    @property
    def out_latency(self) -> int:
        """Pass 3, vector word to result: y (1), y * R (a multiplier pipeline), z (1), z * gamma
        (a multiplier pipeline), rounded (1), + beta (1), saturated (1)."""
        yw, rw, zw = self._widths()
        yr = mul_latency(signed(yw), unsigned(rw), MUL_LAT)
        return 5 + yr + mul_latency(signed(zw), signed(16), MUL_LAT)

    def cycles(self, x_rows) -> int:
        """Cycles from acceptance to ``done`` for integer rows ``x_rows`` (the cycle model)."""
        cfg = self.config
        W, G = cfg.in_fmt.width, cfg.mean_frac
        total = CHECK_CYCLES

        def dc(q):
            return SeqDivider.cycles(q, cfg.divider_bits)

        for row in x_rows:
            row = [int(v) for v in row]
            n = len(row)
            w = -(-n // cfg.lanes)
            s = sum(row)
            mag = ((abs(s) << (G + 1)) + n) // (2 * n)
            mean = -mag if s < 0 else mag
            var = max(sum(((v << G) - mean) ** 2 for v in row) // n + eps_int(cfg), 1)
            a = var_scale(var)
            vs = var << (2 * a)
            hb = (vs.bit_length() + 1) // 2
            steps = isqrt_newton(vs)[1]
            tree = 2 * (cfg.lanes - 1).bit_length()  # the two adder trees
            total += 3 * (w + 2) + 3 + self.sq_latency + self.out_latency + 3 + tree  # passes
            total += FSM_SPLIT + GUESS_CYCLES
            # each division SeqDivider.cycles(qbits), with its set-up and verdict states
            total += (dc(W + G) + 2) + (dc(2 * (W + G) + 1) + 1) + steps * (dc(hb + 1) + 3)
            total += dc(k_shift(cfg) + a + 1) + 3
        return total

    def elaborate_row(self, m, ctx):
        cfg = self.config
        L, fmt = cfg.lanes, cfg.in_fmt
        W, G, K = fmt.width, cfg.mean_frac, k_shift(cfg)
        yw, rw, zw = self._widths()
        vw = 2 * (W + G) + 14
        dsp = dict(multiply=lambda m, a, b, **kw: multiply(m, ctx.platform, a, b, **kw),
                   stages=MUL_LAT)
        nw = max(vw, K + 20) + 1

        mode = Signal(2)
        clear = Signal()
        mean = Signal(signed(yw))
        recip = Signal(rw)
        ssum = [Signal(signed(W + 13), name=f"s{i}") for i in range(L)]
        vsum = [Signal(vw, name=f"v{i}") for i in range(L)]
        # copies of R near each lane's multipliers (R fans out to every lane's partial products):
        # a chain, so that no two copies have the same input and synthesis keeps them all. R is
        # set when pass 3 starts; the copy c cycles down the chain holds it c cycles later, and
        # the first y of the pass meets R 3 cycles after it is set (the reader's 2, y's 1).
        recips = [recip]
        for c in range(1, 4):
            recips.append(_reg(m, recips[-1], rw, f"recip_c{c}"))
        outs = []
        for i, x in enumerate(ctx.rd_data):
            v = ctx.rd_lanes[i]
            xv = _reg(m, Mux(v, x, 0), signed(W), f"x{i}")
            vv = _reg(m, v, 1, f"vv{i}")
            y = _reg(m, (ctx.rd_data[i] << G) - mean, signed(yw), f"y{i}")
            # pass 2's own y (0 on lanes past the row's end, so not merged with y): the two
            # products' multipliers do not share one register
            ysq = _reg(m, Mux(v, (ctx.rd_data[i] << G) - mean, 0), signed(yw), f"ysq{i}")
            yy, yy_lat = mul_pipe(m, ysq, ysq, f"yy{i}", **dsp)
            sq = _reg(m, Mux(delay(m, vv, yy_lat, f"vq{i}"), yy, 0), unsigned(2 * yw), f"sq{i}")
            with m.If(clear):
                m.d.sync += [ssum[i].eq(0), vsum[i].eq(0)]
            with m.Elif(mode == 0):
                m.d.sync += ssum[i].eq(ssum[i] + xv)
            with m.Elif(mode == 1):
                m.d.sync += vsum[i].eq(vsum[i] + sq)
            # output pass, one multiply or one carry chain per stage (see out_latency): y,
            # y * R, z = round(y R / 2**(K-16)), z * gamma, rounded, + beta, saturated
            zp, zp_lat = mul_pipe(m, y, recips[(i + 1) % len(recips)], f"yr{i}", **dsp)
            z = _reg(m, _rsr(zp, K - Z_FRAC), signed(zw), f"z{i}")
            gam = delay(m, ctx.params["gamma"][i], 2 + zp_lat, f"g{i}")
            zg, zg_lat = mul_pipe(m, z, gam, f"zg{i}", **dsp)
            gs = Z_FRAC + cfg.gamma_frac - cfg.out_frac
            o1 = _reg(m, _rsr(zg, gs), signed(zw + 18 - gs), f"o1{i}")
            bet = delay(m, ctx.params["beta"][i], 3 + zp_lat + zg_lat, f"b{i}")
            o = _reg(m, o1 + bet, signed(len(o1) + 1), f"o2{i}")
            of = cfg.out_fmt
            outs.append(_reg(m, Mux(o > of.max, of.max, Mux(o < of.min, of.min, o)), of.shape,
                             f"o{i}"))
            assert 5 + zp_lat + zg_lat == self.out_latency
            assert 2 + yy_lat == self.sq_latency

        out_lat = self.out_latency
        wr_v = delay(m, ctx.rd_valid, out_lat, "wr_v")
        m.d.comb += [ctx.wr_en.eq(wr_v & (mode == 2)),
                     ctx.wr_idx.eq(delay(m, ctx.rd_idx, out_lat, "wi"))]  # fmt: skip
        lanes_d = delay(m, ctx.rd_lanes, out_lat, "wl")
        for i, o in enumerate(outs):
            m.d.comb += ctx.wr_data[i].eq(Mux(lanes_d[i], o, 0))
        tail1 = delay(m, ctx.rd_last, 1, "t1")
        tail2 = delay(m, ctx.rd_last, self.sq_latency, "t2")
        tail4 = delay(m, ctx.rd_last, out_lat, "t4")
        s_tree, s_lat = sum_tree(m, ssum, W + 17, "stree")
        v_tree, v_lat = sum_tree(m, vsum, vw + 4, "vtree")
        wait = Signal(range(max(s_lat, v_lat) + 2))

        kw = max(W + G + 3, 20)  # the root of a variance scaled to >= 2**32
        bits = cfg.divider_bits
        div = SeqDivider(dividend_width=nw, divisor_width=kw, digit_bits=bits)
        m.submodules.div = div
        num = Signal(nw)
        den = Signal(len(div.divisor))
        qb = Signal(range(nw + 1))
        m.d.comb += [div.dividend.eq(num), div.divisor.eq(den), div.qbits.eq(qb)]
        s_tot = Signal(signed(W + 17))
        s_mag = Signal(W + 17)
        v_tot = Signal(vw + 4)
        var = Signal(vw + 4)
        a = Signal(range(18))
        vs = Signal(vw + 4 + 34)
        k = Signal(kw)
        hb = Signal(range(64))
        g_sh = Signal(range(len(vs) + 1))  # the guess: v's top bits start here (even)
        g_top = Signal(GUESS_BITS)
        g_ksh = Signal(range(len(vs)))
        n = ctx.length
        vlen = Signal(range(len(var) + 1))
        vslen = Signal(range(len(vs) + 1))
        m.d.comb += [vlen.eq(_bitlen(var)), vslen.eq(_bitlen(vs))]
        vlen_q, vslen_q = Signal.like(vlen), Signal.like(vslen)
        eps = eps_int(cfg)

        def divide(name, on_done):
            with m.State(name):
                m.d.comb += div.start.eq(1)
                m.next = name + "_WAIT"
            with m.State(name + "_WAIT"):
                with m.If(div.done):
                    on_done()

        with m.FSM(name="layernorm"):
            with m.State("IDLE"):
                with m.If(ctx.start):
                    m.d.comb += [clear.eq(1), ctx.read_start.eq(1)]
                    m.d.sync += mode.eq(0)
                    m.next = "PASS1"
            with m.State("PASS1"):
                m.d.sync += wait.eq(0)
                with m.If(tail1):
                    m.d.sync += mode.eq(3)
                    m.next = "SUM1"
            with m.State("SUM1"):  # the adder tree settles
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == s_lat):
                    m.d.sync += s_tot.eq(s_tree)
                    m.next = "MEAN_ABS"
            with m.State("MEAN_ABS"):  # |sum| a cycle before its use (FSM_SPLIT)
                m.d.sync += s_mag.eq(Mux(s_tot < 0, -s_tot, s_tot).as_unsigned())
                m.next = "MEAN_SET"
            with m.State("MEAN_SET"):
                m.d.sync += [num.eq((s_mag << (G + 1)) + n), den.eq(n << 1),
                             qb.eq(SeqDivider.whole(W + G, bits))]
                m.next = "MEAN"

            def mean_done():
                q = div.quotient[: W + G + 1]
                m.d.sync += [mean.eq(Mux(s_tot < 0, -q, q)), mode.eq(1)]
                m.d.comb += ctx.read_start.eq(1)
                m.next = "PASS2"

            divide("MEAN", mean_done)
            with m.State("PASS2"):
                m.d.sync += wait.eq(0)
                with m.If(tail2):
                    m.d.sync += mode.eq(3)
                    m.next = "SUM2"
            with m.State("SUM2"):
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == v_lat):
                    m.d.sync += v_tot.eq(v_tree)
                    m.next = "VAR_SET"
            with m.State("VAR_SET"):
                m.d.sync += [num.eq(v_tot), den.eq(n),
                             qb.eq(SeqDivider.whole(2 * (W + G) + 1, bits))]
                m.next = "VAR"

            def var_done():
                vq = div.quotient + eps
                m.d.sync += var.eq(Mux(vq == 0, 1, vq))
                m.next = "SCALE"

            divide("VAR", var_done)
            # the scaling and the root's first guess, one step per cycle (with MEAN_ABS, the
            # FSM_SPLIT cycles): bit length, shift, scaled variance, its bit length, guess
            with m.State("SCALE"):
                m.d.sync += vlen_q.eq(vlen)
                m.next = "SCALE1"
            with m.State("SCALE1"):
                m.d.sync += a.eq(Mux(vlen_q < 34, (34 - vlen_q).as_unsigned()[:6] >> 1, 0))
                m.next = "SCALE2"
            with m.State("SCALE2"):
                m.d.sync += vs.eq(var << (a << 1))
                m.next = "ROOT"
            with m.State("ROOT"):
                m.d.sync += vslen_q.eq(vslen)
                m.next = "ROOT0"
            with m.State("ROOT0"):
                h = (vslen_q + 1) >> 1
                # vs has >= 33 bits (the variance's scaling), so the guess is always the table's
                m.d.sync += [hb.eq(h), g_sh.eq(Cat(Const(0, 1), (vslen_q - (GUESS_BITS - 1))[1:]))]
                with m.If(vs == 0):
                    m.d.sync += k.eq(1)
                    m.next = "RECIP_SET"
                with m.Else():
                    m.next = "GUESS"
            with m.State("GUESS"):  # the root's first guess (model.root_guess), GUESS_CYCLES
                m.d.sync += [g_top.eq((vs >> g_sh)[:GUESS_BITS]),
                             g_ksh.eq((g_sh >> 1) - GUESS_FRAC)]  # fmt: skip
                m.next = "GUESS1"
            with m.State("GUESS1"):
                m.d.sync += k.eq(rom(ROOT_TABLE, g_top) << g_ksh)
                m.next = "NEWTON_SET"
            with m.State("NEWTON_SET"):
                m.d.sync += [num.eq(vs), den.eq(k), qb.eq(SeqDivider.whole(hb + 1, bits))]
                m.next = "NEWTON"

            # the Newton step's verdict (k1 >= k is quotient >= k, without the add in series),
            # registered every cycle: the quotient is held after done, k during the division, so
            # the cycle after done (NEWTON_STEP) has it for the quotient of this step
            stop = Signal()
            m.d.sync += stop.eq(div.quotient >= k)

            def newton_done():
                m.next = "NEWTON_STEP"

            divide("NEWTON", newton_done)
            with m.State("NEWTON_STEP"):
                with m.If(stop):
                    m.next = "RECIP_SET"
                with m.Else():
                    m.d.sync += k.eq((k + div.quotient) >> 1)
                    m.next = "NEWTON_SET"
            with m.State("RECIP_SET"):
                m.d.sync += [
                    num.eq(Const(1, nw) << (a + K)),
                    den.eq(Mux(k == 0, 1, k)),
                    qb.eq(SeqDivider.whole(K + a + 1, bits)),
                ]
                m.next = "RECIP"

            def recip_done():
                m.d.sync += [recip.eq(div.quotient), mode.eq(2)]
                m.d.comb += ctx.read_start.eq(1)
                m.next = "PASS3"

            divide("RECIP", recip_done)
            with m.State("PASS3"):
                with m.If(tail4):
                    m.d.comb += ctx.row_done.eq(1)
                    m.d.sync += mode.eq(3)
                    m.next = "IDLE"
