"""``hdl.nonlinear_common.SeqDivider`` in Amaranth's simulator, radix 2 and radix 4: the quotient
against Python's floor division and the cycles from ``start`` to ``done`` against
``SeqDivider.cycles``, on seeded random operands that meet the precondition
(``dividend >> qbits < divisor``) and on its edges."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from gatesmith.hdl.nonlinear_common import SeqDivider

NW, DW = 47, 30  # the softmax engine's reciprocal: 2**46 / a 30-bit sum


def _cases(bits: int) -> list[tuple[int, int, int]]:
    rnd = random.Random(7 + bits)
    top = NW - NW % bits  # qbits in whole digits, at most the dividend's width
    out = []
    for _ in range(150):
        q = rnd.randrange(0, top // bits + 1) * bits
        den = rnd.randrange(1, 1 << DW)
        hi = min((den << q) - 1, (1 << NW) - 1)
        out.append((rnd.randrange(0, hi + 1) if rnd.random() < 0.8 else hi, den, q))
    out += [
        (0, 1, bits),  # zero dividend
        (1, 1, bits),  # divisor one
        ((1 << DW) - 2, (1 << DW) - 1, bits),  # quotient zero, the largest remainder
        ((1 << NW) - 1, (1 << DW) - 1, top),  # the widest operands
        (1 << 46, 1, top),  # the softmax's dividend over the smallest sum
        (1 << 46, 3, top),
    ]
    return [(n, d, q) for n, d, q in out if n >> q < d and n < 1 << NW]


@pytest.mark.parametrize("bits", [1, 2])
def test_seq_divider_quotient_and_cycles(bits):
    dut = SeqDivider(dividend_width=NW, divisor_width=DW, digit_bits=bits)
    cases = _cases(bits)
    seen = []

    async def bench(ctx):
        for num, den, q in cases:
            ctx.set(dut.dividend, num)
            ctx.set(dut.divisor, den)
            ctx.set(dut.qbits, q)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            n = 1
            while not ctx.get(dut.done):
                await ctx.tick()
                n += 1
            seen.append((num, den, q, ctx.get(dut.quotient), n))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(seen) == len(cases) > 150
    for num, den, q, got, n in seen:
        assert got == num // den, (num, den, q, got)
        assert n == SeqDivider.cycles(q, bits), (q, n)
    if bits == 2:  # radix 4: half the cycles of radix 2, plus one
        assert SeqDivider.cycles(32, 2) == 17 and SeqDivider.cycles(32, 1) == 33


def test_seq_divider_rejects_other_radixes():
    with pytest.raises(ValueError, match="digit_bits must be 1 or 2"):
        SeqDivider(dividend_width=8, divisor_width=4, digit_bits=3)
