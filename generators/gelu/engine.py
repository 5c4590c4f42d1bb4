"""The GELU engine: ``lanes`` elementwise GELU pipelines over rows of an input memory.

Error bounds (max abs error against ``F.gelu(approximate="none")`` in float64, exhaustive over the
input format, output not saturated; ``tests/test_nonlinear_models.py`` holds them):

==============  ==============  ======  =========
input           output          rom     shiftgelu
==============  ==============  ======  =========
int8  (f=4)     int16 (f=12)    1.3e-4  4.5e-2
int8  (f=5)     int8  (f=4)     3.2e-2  6.5e-2
int16 (f=12)    int16 (f=12)    2.5e-4  3.0e-2
int16 (f=11)    int16 (f=11)    3.5e-4  3.0e-2
==============  ==============  ======  =========

(``rom`` sits at the output format's own rounding floor plus ~1e-4 of interpolation error.)

Timing: one vector word (``lanes`` elements) per cycle; a row of ``n`` elements takes
``ceil(n / lanes) + latency + 3`` cycles, ``latency`` 11 for ``rom`` and 29 for ``shiftgelu``
(the read data register, then the lane pipeline, one carry chain or multiply per stage;
shiftgelu's divider has a register after every quotient bit), plus 6 cycles of instruction
checks per instruction (``cycles()``, held by a test against the RTL).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Mux, Signal, signed, unsigned

from ...hdl.nonlinear_common import (
    CHECK_CYCLES,
    Region,
    RowEngine,
    delay,
    mul_latency,
    mul_pipe,
    restoring_div,
    rom,
)
from ..dsp import multiply
from ..engine import Window, engine_ports
from .config import GeluConfig
from .model import E_BITS, ROM_ENTRIES, ROM_FRAC, ROM_STEP_BITS, SHIFT_N, SIG_BITS, rom_table

__all__ = ["GeluEngine"]


def _reg(m, value, shape, name):
    r = Signal(shape, name=name)
    m.d.sync += r.eq(value)
    return r


def _rshift_round(v, s: int):
    return (v + (1 << (s - 1))) >> s if s > 0 else v << (-s)


def _sat(v, fmt):
    return Mux(v > fmt.max, fmt.max, Mux(v < fmt.min, fmt.min, v))


class GeluEngine(RowEngine):
    """GELU over rows: instruction ``gelu`` (0x21) with src, dst, len, rows (see
    ``hdl/nonlinear_common.py``). Regions: ``in`` (rw, ``in_dtype`` elements), ``out`` (r)."""

    kind = "gelu"

    def __init__(self, config: GeluConfig):
        if not isinstance(config, GeluConfig):
            raise TypeError(f"config must be a GeluConfig, not {config!r}")
        self.config = cfg = config
        regions = [
            Region("in", cfg.in_fmt.width, cfg.lanes, cfg.depth, "in", "rw", "input rows"),
            Region("out", cfg.out_fmt.width, cfg.lanes, cfg.depth, "out", "r", "GELU(x) rows"),
        ]
        super().__init__(engine_ports(), lanes=cfg.lanes, max_len=cfg.max_len, regions=regions,
                         multiply=multiply)

    @property
    def latency(self) -> int:
        """Cycles from a vector word leaving the input memory to its result (the row reader's
        register on the read data, then the lane pipeline)."""
        return 1 + self._lane_latency

    @property
    def _lane_latency(self) -> int:
        if self.config.method == "rom":  # 8 stages and the interpolation's multiply
            u_bits = max(self.config.in_frac - ROM_STEP_BITS, 1)
            return 8 + mul_latency(signed(ROM_FRAC + 1), unsigned(u_bits))
        return 13 + self._div_latency

    _div_latency = 15  # restoring_div of 16 quotient bits, a register after every bit

    def cycles(self, length: int, rows: int) -> int:
        """Cycles from the instruction's acceptance to its ``done`` pulse (the cycle model)."""
        return CHECK_CYCLES + rows * (-(-length // self.config.lanes) + self.latency + 3)

    def windows(self) -> list[Window]:
        return [
            Window(r.name, off, r.depth, r.bits, r.stride, r.access, r.doc, r.width, r.signed)
            for r, off in self.region_layout()
        ]

    def elaborate_row(self, m, ctx):
        cfg = self.config
        m.d.comb += ctx.read_start.eq(ctx.start)
        outs = []
        for lane, x in enumerate(ctx.rd_data):
            fn = self._lane_rom if cfg.method == "rom" else self._lane_shift
            y, lat = fn(m, x, f"l{lane}")
            outs.append(y)
        assert lat == self._lane_latency, (lat, self._lane_latency)
        valid = delay(m, ctx.rd_valid, lat, "v")
        last = delay(m, ctx.rd_last, lat, "last")
        lanes = delay(m, ctx.rd_lanes, lat, "lanes")
        widx = delay(m, ctx.rd_idx, lat, "widx")
        m.d.comb += [ctx.wr_en.eq(valid), ctx.wr_idx.eq(widx)]
        for i, y in enumerate(outs):
            m.d.comb += ctx.wr_data[i].eq(Mux(lanes[i], y, 0))
        done = _reg(m, valid & last, 1, "row_done_q")
        m.d.comb += ctx.row_done.eq(done)

    def _lane_rom(self, m, x, p):
        cfg = self.config
        f, of, w = cfg.in_frac, cfg.out_frac, cfg.in_fmt.width
        table = rom_table()
        # stage 1: |x|, ReLU(x), table index and interpolation fraction
        t = Mux(x < 0, -x, x)[:w]
        relu = _reg(m, Mux(x < 0, 0, x), unsigned(w), f"{p}_relu")
        if f >= ROM_STEP_BITS:
            sh = f - ROM_STEP_BITS
            kk = t >> sh
            u = _reg(m, t[:sh] if sh else Const(0, 1), unsigned(max(sh, 1)), f"{p}_u")
        else:
            sh = 0
            kk = t << (ROM_STEP_BITS - f)
            u = _reg(m, 0, 1, f"{p}_u")
        k = _reg(m, Mux(kk > ROM_ENTRIES, ROM_ENTRIES, kk), range(ROM_ENTRIES + 1), f"{p}_k")
        # stage 2: the two table entries (a block RAM), and a register on its read data
        a = _reg(m, _reg(m, rom(table, k), unsigned(ROM_FRAC), f"{p}_a0"), ROM_FRAC, f"{p}_a")
        b = _reg(m, _reg(m, rom(table, k + 1), unsigned(ROM_FRAC), f"{p}_b0"), ROM_FRAC, f"{p}_b")
        u2 = delay(m, u, 2, f"{p}_u2")
        relu2 = delay(m, relu, 2, f"{p}_relu2")
        # then linear interpolation (difference, product, sum: one operation each, so a
        # block-RAM read, a multiplier and an adder are never in series)
        diff = _reg(m, b.as_signed() - a.as_signed(), signed(ROM_FRAC + 1), f"{p}_diff")
        a3, u3 = _reg(m, a, len(a), f"{p}_a3"), _reg(m, u2, len(u2), f"{p}_u3")
        prod, plat = mul_pipe(m, diff, u3, f"{p}_prod")  # one multiplier per partial product
        a4 = delay(m, a3, plat, f"{p}_a4")
        interp = a4 + _rshift_round(prod, sh) if sh else a4
        delta = _reg(m, interp, signed(ROM_FRAC + 2), f"{p}_delta")
        relu3 = delay(m, relu2, 2 + plat, f"{p}_relu3")
        # last stages: ReLU(x) - delta (1), rounded to the output format (2), saturated (3)
        yv = _reg(m, (relu3 << (ROM_FRAC - f)).as_signed() - delta, signed(ROM_FRAC + w + 3),
                  f"{p}_yv")
        yr = _reg(m, _rshift_round(yv, ROM_FRAC - of), signed(ROM_FRAC + w + 4 - (ROM_FRAC - of)),
                  f"{p}_yr")
        y = _reg(m, _sat(yr, cfg.out_fmt), cfg.out_fmt.shape, f"{p}_y")
        return y, 8 + plat

    def _lane_shift(self, m, x, p):
        cfg = self.config
        f, of, n = cfg.in_frac, cfg.out_frac, SHIFT_N
        w = cfg.in_fmt.width
        sw = w + 2
        # one carry chain (two at most) per stage
        # stages 1-2: s = 1.703125 x by shift-adds
        s01 = _reg(m, x + (x >> 1), signed(sw), f"{p}_s01")
        s34 = _reg(m, (x >> 3) + (x >> 4), signed(sw), f"{p}_s34")
        s6 = _reg(m, x >> 6, signed(sw), f"{p}_s6")
        s = _reg(m, s01 + s34 + s6, signed(sw), f"{p}_s")
        # stage 3: a = -|s|
        s_pos = _reg(m, s >= 0, 1, f"{p}_spos")
        a = _reg(m, Mux(s < 0, s, -s), signed(sw), f"{p}_a")
        # stages 4-6: I-ViT shift exp: x log2 e ~ a + a/2 - a/16, clamped to -n; q and r
        xl = _reg(m, a + (a >> 1) - (a >> 4), signed(sw + 1), f"{p}_xl")
        lim = n * (1 << f)
        negxl = _reg(m, Mux(xl < -lim, lim, -xl), range(lim + 1), f"{p}_negxl")
        q = _reg(m, negxl >> f, range(n + 1), f"{p}_q")
        r = _reg(m, -(negxl[:f] if f else Const(0, 1)).as_unsigned(), signed(f + 2), f"{p}_r")
        # stages 7-9: e = ((r + 2**(f+1)) << (n - q)) >> 1, rescaled to 1.0 == 2**24, and the
        # divisor e + 2**24 (its constant added before the rounding shift, where it is exact)
        mant = _reg(m, (r + (2 << f)).as_unsigned()[: f + 2], unsigned(f + 2), f"{p}_mant")
        sh = _reg(m, (n - q).as_unsigned()[:5], unsigned(5), f"{p}_sh")
        raw = _reg(m, (mant << sh) >> 1, unsigned(f + 2 + 31), f"{p}_raw")
        es = f + n - E_BITS
        e = _reg(m, _rshift_round(raw, es), unsigned(E_BITS + 1), f"{p}_e")
        one = Const(1 << E_BITS, E_BITS + 2)
        den_v = _rshift_round(raw + (one << es), es) if es > 0 else _rshift_round(raw, es) + one
        den = _reg(m, den_v, unsigned(E_BITS + 2), f"{p}_den")
        pre = 9
        # then sig_neg = floor(e * 2**16 / (e + 2**24)), a restoring division with a register
        # after every quotient bit, and its result registered
        num = Cat(Const(0, SIG_BITS), e)
        sig_neg, dl = restoring_div(m, num, den, SIG_BITS, stage_bits=1, name=f"{p}_div")
        sig_q = _reg(m, sig_neg, unsigned(SIG_BITS), f"{p}_sq")
        sp = delay(m, s_pos, pre - 3 + dl + 1, f"{p}_sp")
        sig = _reg(m, Mux(sp, (1 << SIG_BITS) - sig_q, sig_q), unsigned(SIG_BITS + 1), f"{p}_sig")
        xd = delay(m, x, pre + dl + 2, f"{p}_xd")
        # last stages: x * sigmoid (registered), then rounded and saturated
        prod = _reg(m, xd * sig, signed(w + SIG_BITS + 2), f"{p}_xs")
        yq = _sat(_rshift_round(prod, f + SIG_BITS - of), cfg.out_fmt)
        y = _reg(m, yq, cfg.out_fmt.shape, f"{p}_y")
        return y, pre + dl + 4
