"""The dyadic requantiser (hdl/requant.py) in the Amaranth simulator == its Python twin."""

from __future__ import annotations

import random

import pytest
import torch
from amaranth.sim import Simulator

from gatesmith.hdl.formats import IntFormat
from gatesmith.hdl.requant import Requant, dyadic, requant


@pytest.mark.parametrize("in_w,out_fmt", [(32, IntFormat(8)), (20, IntFormat(16)),
                                          (16, IntFormat(8, signed=False))])  # fmt: skip
def test_requant_rtl_matches_model(in_w, out_fmt):
    dut = Requant(in_fmt=IntFormat(in_w), out_fmt=out_fmt, mult_width=16)
    rng = random.Random(17)
    lo, hi = -(1 << (in_w - 1)), (1 << (in_w - 1)) - 1
    cases = [(lo, 65535, 0), (hi, 65535, 0), (0, 1, 63), (-1, 1, 1), (1, 1, 1)]
    for scale in (1.0, 2**-8, 0.0123, 3.7e-6, 0.5):
        mult, shift = dyadic(scale)
        cases += [(rng.randint(lo, hi), mult, shift) for _ in range(40)]
    got = []

    async def bench(ctx):
        pending = []
        for x, mult, shift in cases + [(0, 0, 0)] * Requant.latency:
            ctx.set(dut.i, x)
            ctx.set(dut.mult, mult)
            ctx.set(dut.shift, shift)
            ctx.set(dut.valid_i, 1)
            await ctx.tick()
            pending.append((ctx.get(dut.valid_o), ctx.get(dut.o)))
        got.extend(o for v, o in pending[Requant.latency - 1 : Requant.latency - 1 + len(cases)])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    expected = [int(requant(torch.tensor(x), m, s, out_fmt)) for x, m, s in cases]
    assert got == expected


def test_requant_errors():
    with pytest.raises(TypeError, match=r"^in_fmt must be an IntFormat, not 'int8'$"):
        Requant(in_fmt="int8", out_fmt=IntFormat(8))
    with pytest.raises(ValueError, match=r"^mult_width must be an integer in 1..32, not 40$"):
        Requant(in_fmt=IntFormat(8), out_fmt=IntFormat(8), mult_width=40)
