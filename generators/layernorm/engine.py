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

Timing (``cycles()``, held by a test): ``3 * ceil(n / L)`` cycles of passes, plus the divisions:
``W + G + 2`` (mean), ``2 (W + G) + 2`` (variance), ``hb + 3`` per Newton step (``hb =
ceil(bitlen(v) / 2)``, at most 7 steps) and ``K + a + 3`` (reciprocal), plus a constant.
"""

from __future__ import annotations

from amaranth.hdl import Const, Mux, Signal, signed, unsigned

from ...hdl.nonlinear_common import Region, RowEngine, SeqDivider, delay
from ..engine import Window, engine_ports
from .config import LayerNormConfig
from .model import Z_FRAC, eps_int, isqrt_newton, k_shift, var_scale

__all__ = ["LayerNormEngine"]


def _reg(m, value, shape, name):
    r = Signal(shape, name=name)
    m.d.sync += r.eq(value)
    return r


def _rsr(v, s: int):
    return (v + (1 << (s - 1))) >> s if s > 0 else v << (-s)


def _bitlen(m, v, name):
    """Combinational bit length of an unsigned value (0 for 0)."""
    out = Signal(range(len(v) + 1), name=name)
    for i in range(len(v)):  # the last assignment wins: the highest set bit
        with m.If(v[i]):
            m.d.comb += out.eq(i + 1)
    return out


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
        super().__init__(engine_ports(), lanes=L, max_len=cfg.max_len, regions=regions)

    def windows(self) -> list[Window]:
        return [
            Window(r.name, off, r.depth, r.bits, r.stride, r.access, r.doc)
            for r, off in self.region_layout()
        ]

    def cycles(self, x_rows) -> int:
        """Cycles from acceptance to ``done`` for integer rows ``x_rows`` (the cycle model)."""
        from .model import row_stats  # noqa: F401 (same arithmetic as the hardware)

        cfg = self.config
        W, G = cfg.in_fmt.width, cfg.mean_frac
        total = 3
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
            total += 3 * (w + 1) + 3 + 2 + 4 + 3  # passes and their tails
            total += (W + G + 3) + (2 * (W + G) + 3) + steps * (hb + 4) + (k_shift(cfg) + a + 5)
        return total

    def elaborate_row(self, m, ctx):
        cfg = self.config
        L, fmt = cfg.lanes, cfg.in_fmt
        W, G, K = fmt.width, cfg.mean_frac, k_shift(cfg)
        yw = W + G + 2
        vw = 2 * (W + G) + 14
        rw = K + 1
        nw = max(vw, K + 20) + 1

        mode = Signal(2)
        clear = Signal()
        mean = Signal(signed(yw))
        recip = Signal(rw)
        ssum = [Signal(signed(W + 13), name=f"s{i}") for i in range(L)]
        vsum = [Signal(vw, name=f"v{i}") for i in range(L)]
        outs = []
        for i, x in enumerate(ctx.rd_data):
            v = ctx.rd_lanes[i]
            xv = _reg(m, Mux(v, x, 0), signed(W), f"x{i}")
            vv = _reg(m, v, 1, f"vv{i}")
            y = _reg(m, (ctx.rd_data[i] << G) - mean, signed(yw), f"y{i}")
            sq = _reg(m, Mux(vv, y * y, 0), unsigned(2 * yw), f"sq{i}")
            with m.If(clear):
                m.d.sync += [ssum[i].eq(0), vsum[i].eq(0)]
            with m.Elif(mode == 0):
                m.d.sync += ssum[i].eq(ssum[i] + xv)
            with m.Elif(mode == 1):
                m.d.sync += vsum[i].eq(vsum[i] + sq)
            # output pass: y (stage 1) -> y * R (2) -> z * gamma (3) -> + beta, saturate (4)
            gam = _reg(m, ctx.params["gamma"][i], signed(16), f"g{i}")
            bet = _reg(m, ctx.params["beta"][i], signed(16), f"b{i}")
            zp = _reg(m, y * recip, signed(yw + rw + 1), f"zp{i}")
            z = _rsr(zp, K - Z_FRAC)
            g2 = _reg(m, gam, signed(16), f"g2{i}")
            zg = _reg(m, z * g2, signed(len(zp) + 16), f"zg{i}")
            b3 = delay(m, bet, 2, f"b3{i}")
            o = _rsr(zg, Z_FRAC + cfg.gamma_frac - cfg.out_frac) + b3
            of = cfg.out_fmt
            outs.append(_reg(m, Mux(o > of.max, of.max, Mux(o < of.min, of.min, o)), of.shape,
                             f"o{i}"))

        wr_v = delay(m, ctx.rd_valid, 4, "wr_v")
        m.d.comb += [ctx.wr_en.eq(wr_v & (mode == 2)), ctx.wr_idx.eq(delay(m, ctx.rd_idx, 4, "wi"))]
        lanes_d = delay(m, ctx.rd_lanes, 4, "wl")
        for i, o in enumerate(outs):
            m.d.comb += ctx.wr_data[i].eq(Mux(lanes_d[i], o, 0))
        tail1 = delay(m, ctx.rd_last, 1, "t1")
        tail2 = delay(m, ctx.rd_last, 2, "t2")
        tail4 = delay(m, ctx.rd_last, 4, "t4")

        kw = max(W + G + 3, 20)  # the root of a variance scaled to >= 2**32
        div = SeqDivider(dividend_width=nw, divisor_width=kw)
        m.submodules.div = div
        num = Signal(nw)
        den = Signal(len(div.divisor))
        qb = Signal(range(nw + 1))
        m.d.comb += [div.dividend.eq(num), div.divisor.eq(den), div.qbits.eq(qb)]
        s_tot = Signal(signed(W + 17))
        v_tot = Signal(vw + 4)
        var = Signal(vw + 4)
        a = Signal(range(18))
        vs = Signal(vw + 4 + 34)
        k = Signal(kw)
        hb = Signal(range(64))
        n = ctx.length
        vlen = _bitlen(m, var, "var_len")
        vslen = _bitlen(m, vs, "vs_len")
        eps = eps_int(cfg)

        def divide(name, nxt_setup, on_done):
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
                with m.If(tail1):
                    m.d.sync += mode.eq(3)
                    m.next = "SUM1"
            with m.State("SUM1"):
                m.d.sync += s_tot.eq(sum(ssum))
                m.next = "MEAN_SET"
            with m.State("MEAN_SET"):
                mag = Mux(s_tot < 0, -s_tot, s_tot).as_unsigned()
                m.d.sync += [num.eq((mag << (G + 1)) + n), den.eq(n << 1), qb.eq(W + G)]
                m.next = "MEAN"

            def mean_done():
                q = div.quotient[: W + G + 1]
                m.d.sync += [mean.eq(Mux(s_tot < 0, -q, q)), mode.eq(1)]
                m.d.comb += ctx.read_start.eq(1)
                m.next = "PASS2"

            divide("MEAN", None, mean_done)
            with m.State("PASS2"):
                with m.If(tail2):
                    m.d.sync += mode.eq(3)
                    m.next = "SUM2"
            with m.State("SUM2"):
                m.d.sync += v_tot.eq(sum(vsum))
                m.next = "VAR_SET"
            with m.State("VAR_SET"):
                m.d.sync += [num.eq(v_tot), den.eq(n), qb.eq(2 * (W + G) + 1)]
                m.next = "VAR"

            def var_done():
                vq = div.quotient + eps
                m.d.sync += var.eq(Mux(vq == 0, 1, vq))
                m.next = "SCALE"

            divide("VAR", None, var_done)
            with m.State("SCALE"):
                sh = Mux(vlen < 34, (34 - vlen).as_unsigned()[:6] >> 1, 0)
                m.d.sync += [a.eq(sh), vs.eq(var << (sh << 1))]
                m.next = "ROOT0"
            with m.State("ROOT0"):
                h = (vslen + 1) >> 1
                m.d.sync += [hb.eq(h), k.eq(1 << h)]
                with m.If(vs == 0):
                    m.d.sync += k.eq(1)
                    m.next = "RECIP_SET"
                with m.Else():
                    m.next = "NEWTON_SET"
            with m.State("NEWTON_SET"):
                m.d.sync += [num.eq(vs), den.eq(k), qb.eq(hb + 1)]
                m.next = "NEWTON"

            def newton_done():
                k1 = (k + div.quotient) >> 1
                with m.If(k1 >= k):
                    m.next = "RECIP_SET"
                with m.Else():
                    m.d.sync += k.eq(k1)
                    m.next = "NEWTON_SET"

            divide("NEWTON", None, newton_done)
            with m.State("RECIP_SET"):
                m.d.sync += [
                    num.eq(Const(1, nw) << (a + K)),
                    den.eq(Mux(k == 0, 1, k)),
                    qb.eq(K + a + 1),
                ]
                m.next = "RECIP"

            def recip_done():
                m.d.sync += [recip.eq(div.quotient), mode.eq(2)]
                m.d.comb += ctx.read_start.eq(1)
                m.next = "PASS3"

            divide("RECIP", None, recip_done)
            with m.State("PASS3"):
                with m.If(tail4):
                    m.d.comb += ctx.row_done.eq(1)
                    m.d.sync += mode.eq(3)
                    m.next = "IDLE"
