"""cocotb bench for tests/test_cocotb_runner.py: a registered adder, checked with random values."""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge


@cocotb.test()
async def adder_sums(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    rng = random.Random(7)
    await RisingEdge(dut.clk)
    for _ in range(50):
        a, b = rng.randrange(256), rng.randrange(256)
        dut.a.value = a
        dut.b.value = b
        await ClockCycles(dut.clk, 2)
        assert int(dut.s.value) == a + b, (a, b, int(dut.s.value))
