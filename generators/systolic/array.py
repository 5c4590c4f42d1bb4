"""The rows x cols processing-element grid with output- and weight-stationary datapaths.

Timing contract (what the engine's feeder relies on), counted from the cycle a value is presented
on ``a_data``/``b_data``; every edge input is registered once (``L = 1``) before the skew:

* Left inputs: row ``i`` of ``a_data`` (and the flags) is delayed by ``L + i`` cycles inside the
  array (the skew), then moves right one PE per cycle. PE ``(i, j)`` sees beat ``t`` at cycle
  ``t + L + i + j``.
* Top inputs: column ``j`` of ``b_data`` and ``b_shift`` are delayed by ``L + j`` cycles. In OS
  mode b moves down one PE per cycle (PE ``(i, j)`` sees beat ``t`` at ``t + L + i + j``). In WS mode ``b``
  is the preload chain: when column ``j``'s (skewed) ``b_shift`` is high, every row of that
  column shifts down by one; after ``rows`` shifts, row ``i`` holds the word shifted in
  ``rows - 1 - i`` shifts before the last.
* Each PE registers its operands and then its product (two stages), then accumulates.
* OS: ``a_first`` restarts the PE's accumulator with the beat's product; ``a_drain`` (with
  ``a_first``) first copies the finished sum into the drain chain, which shifts up one row per
  cycle. Row ``d``'s result leaves the top of column ``j`` at cycle ``t0 + j + 2d + OS_LAT`` where
  ``t0`` is the beat that carried the drain flag; so one fold's results need ``2 rows - 1`` beats
  before the next drain (the feeder pads short folds).
* WS: ``a_first`` makes the PE take the preloaded weight (so the preload chain may be refilled
  once the last row of a column has swapped). Partial sums flow down; the result for beat ``t``
  leaves the bottom of column ``j`` at ``t + j + rows - 1 + WS_LAT``.
* ``accumulation="carry_save"``: accumulators and partial sums are sum + carry vectors
  (3:2 compressors in every PE); one carry-propagate adder per column at the array's edge.

Accumulators are ``acc_width`` bits and wrap (two's complement).
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.hdl import signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..dsp import multiply
from .config import SystolicConfig

__all__ = ["SystolicArray", "OS_LAT", "WS_LAT"]

OS_LAT = 5  # edge input register + two product stages + accumulator + edge adder register
WS_LAT = 5  # edge input register + two product stages + partial sum register + edge adder


def _csa(s, c, p, width):
    """3:2 compressor on ``width``-bit vectors: returns (sum, carry) with s+c+p == sum+carry."""
    s2 = (s ^ c ^ p)[:width]
    c2 = Cat(0, ((s & c) | (s & p) | (c & p))[: width - 1])
    return s2, c2


class SystolicArray(wiring.Component):
    """PE grid for :class:`SystolicConfig` ``cfg`` (see the module docstring for timing)."""

    def __init__(self, cfg: SystolicConfig):
        self.cfg = cfg
        fmt, acc = cfg.fmt.shape, unsigned(cfg.acc_width)
        super().__init__(
            {
                "mode_os": In(1),
                "a_data": In(data.ArrayLayout(fmt, cfg.rows)),
                "a_valid": In(1),
                "a_first": In(1),
                "a_drain": In(1),
                "b_data": In(data.ArrayLayout(fmt, cfg.cols)),
                "b_shift": In(1),
                "top_data": Out(data.ArrayLayout(acc, cfg.cols)),
                "top_valid": Out(cfg.cols),
                "bot_data": Out(data.ArrayLayout(acc, cfg.cols)),
                "bot_valid": Out(cfg.cols),
            }
        )

    @staticmethod
    def _delay(m, sig, n, name):
        """``sig`` delayed by ``n`` cycles through a register chain."""
        for k in range(n):
            r = Signal.like(sig, name=f"{name}_d{k}")
            m.d.sync += r.eq(sig)
            sig = r
        return sig

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        R, C, A = cfg.rows, cfg.cols, cfg.acc_width
        fmt = cfg.fmt.shape
        cs = cfg.accumulation == "carry_save"
        has_os, has_ws = cfg.has_os, cfg.has_ws_path

        # Skewed edge inputs.
        a_in = [[None] * C for _ in range(R)]  # value arriving at PE (i, j) from the left
        f_in = [[None] * C for _ in range(R)]  # flags (valid, first, drain) with it
        flags = Cat(self.a_valid, self.a_first, self.a_drain)
        for i in range(R):
            # one more register than the skew needs: the edge inputs come straight from block
            # RAM outputs, and this keeps the RAM's clock-to-out out of the multiplier's path
            a_in[i][0] = self._delay(m, self.a_data[i], i + 1, f"askew{i}")
            f_in[i][0] = self._delay(m, flags, i + 1, f"fskew{i}")
        b_top = [self._delay(m, self.b_data[j], j + 1, f"bskew{j}") for j in range(C)]
        sh = [self._delay(m, self.b_shift, j + 1, f"shskew{j}") for j in range(C)]

        b_in = [[None] * C for _ in range(R)]  # OS: b arriving from above; WS: preload chain
        for j in range(C):
            b_in[0][j] = b_top[j]

        drain_in = {}  # (i, j) -> (sum, carry, valid) arriving from below
        psum_in = {}  # (i, j) -> (sum, carry) arriving from above
        drain_regs = {}
        psum_regs = {}
        last_flags = [None] * C

        for i in range(R):
            for j in range(C):
                n = f"pe{i}_{j}"
                a_r = Signal(fmt, name=f"{n}_a")
                f_r = Signal(3, name=f"{n}_f")
                b_r = Signal(fmt, name=f"{n}_b")
                m.d.sync += [a_r.eq(a_in[i][j]), f_r.eq(f_in[i][j])]
                if j + 1 < C:
                    a_in[i][j + 1], f_in[i][j + 1] = a_r, f_r
                if i + 1 < R:
                    b_in[i + 1][j] = b_r
                first = f_in[i][j][1]
                # b register: moves every cycle in OS mode, on the column's shift in WS mode.
                if has_os and has_ws:
                    with m.If(self.mode_os | sh[j]):
                        m.d.sync += b_r.eq(b_in[i][j])
                elif has_os:
                    m.d.sync += b_r.eq(b_in[i][j])
                else:
                    with m.If(sh[j]):
                        m.d.sync += b_r.eq(b_in[i][j])
                # Operand selection: OS multiplies by b from above, WS by the stationary weight.
                if has_ws:
                    w_r = Signal(fmt, name=f"{n}_w")
                    w_eff = Mux(first, b_r, w_r)
                    with m.If(first):
                        m.d.sync += w_r.eq(b_r)
                    if has_os:
                        operand = Mux(self.mode_os, b_in[i][j], w_eff)
                    else:
                        operand = w_eff
                else:
                    operand = b_in[i][j]
                # the operands enter the multiplier's input registers, the product its output
                # register (on ECP5 both inside the MULT18X18D: generators/dsp.py)
                p_r = multiply(m, platform, a_in[i][j], operand, latency=2, name=f"{n}_mul")
                pf_r = self._delay(m, f_in[i][j], 2, f"{n}_pf")  # flags aligned with the product
                p = Signal(A, name=f"{n}_pext")
                m.d.comb += p.eq(p_r.as_signed() if cfg.fmt.signed else p_r)
                if i == R - 1:
                    last_flags[j] = pf_r

                if has_os:
                    acc_s = Signal(A, name=f"{n}_acc")
                    acc_c = Signal(A, name=f"{n}_accc") if cs else None
                    capture = pf_r[1] & pf_r[2]
                    if cs:
                        s2, c2 = _csa(acc_s, acc_c, p, A)
                        with m.If(pf_r[1]):
                            m.d.sync += [acc_s.eq(p), acc_c.eq(0)]
                        with m.Else():
                            m.d.sync += [acc_s.eq(s2), acc_c.eq(c2)]
                    else:
                        with m.If(pf_r[1]):
                            m.d.sync += acc_s.eq(p)
                        with m.Else():
                            m.d.sync += acc_s.eq(acc_s + p)
                    d_s = Signal(A, name=f"{n}_ds")
                    d_c = Signal(A, name=f"{n}_dc") if cs else None
                    d_v = Signal(name=f"{n}_dv")
                    drain_regs[i, j] = (d_s, d_c, d_v, capture, acc_s, acc_c)

                if has_ws:
                    # Partial sums flow down; rows above were built first.
                    ps_s = Signal(A, name=f"{n}_ps")
                    ps_c = Signal(A, name=f"{n}_pc") if cs else None
                    up_s, up_c = psum_regs[i - 1, j] if i else (Signal(A), Signal(A))
                    if cs:
                        s2, c2 = _csa(up_s, up_c, p, A)
                        m.d.sync += [ps_s.eq(s2), ps_c.eq(c2)]
                    else:
                        m.d.sync += ps_s.eq((up_s + p)[:A])
                    psum_regs[i, j] = (ps_s, ps_c)

        # OS drain chains: shift up; a capture loads the PE's finished sum.
        if has_os:
            for j in range(C):
                for i in range(R):
                    d_s, d_c, d_v, capture, acc_s, acc_c = drain_regs[i, j]
                    if i + 1 < R:
                        below_s, below_c, below_v = drain_regs[i + 1, j][:3]
                    else:
                        below_s, below_c, below_v = 0, 0, 0
                    with m.If(capture):
                        m.d.sync += [d_s.eq(acc_s), d_v.eq(1)]
                        if cs:
                            m.d.sync += d_c.eq(acc_c)
                    with m.Else():
                        m.d.sync += [d_s.eq(below_s), d_v.eq(below_v)]
                        if cs:
                            m.d.sync += d_c.eq(below_c)
                top_s, top_c, top_v = drain_regs[0, j][:3]
                total = (top_s + top_c)[:A] if cs else top_s
                m.d.sync += [self.top_data[j].eq(total), self.top_valid[j].eq(top_v)]

        # WS results leave the bottom; valid follows the last row's flags.
        if has_ws:
            for j in range(C):
                bot_s, bot_c = psum_regs[R - 1, j]
                total = (bot_s + bot_c)[:A] if cs else bot_s
                v1 = Signal(name=f"botv{j}")
                m.d.sync += [
                    v1.eq(last_flags[j][0]),
                    self.bot_data[j].eq(total),
                    self.bot_valid[j].eq(v1),
                ]
        return m

