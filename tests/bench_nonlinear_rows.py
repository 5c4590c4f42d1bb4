"""cocotb bench for the row engines (softmax, GELU, LayerNorm) on their generated Verilog.

The case file named by ``NL_CASE`` (JSON, written by tests/test_nonlinear_verilator.py) lists host
window writes, instructions (with the command stream's random gaps), the expected result words,
error codes and cycle counts. Everything expected comes from the golden models and the engines'
cycle models; the bench only drives ports and compares.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge


async def _write(dut, base, words):
    for i, w in enumerate(words):
        dut.host__addr.value = base + i
        dut.host__w_data.value = w
        dut.host__w_en.value = 1
        await RisingEdge(dut.clk)
    dut.host__w_en.value = 0


async def _read(dut, base, n):
    out = []
    for i in range(n):
        dut.host__addr.value = base + i
        dut.host__r_en.value = 1
        await RisingEdge(dut.clk)
        await ReadOnly()
        out.append(int(dut.host__r_data.value))
        await RisingEdge(dut.clk)
        dut.host__r_en.value = 0
    return out


@cocotb.test()
async def rows(dut):
    case = json.loads(open(os.environ["NL_CASE"]).read())
    rng = random.Random(case["seed"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.cmd__valid.value = 0
    dut.host__w_en.value = 0
    dut.host__r_en.value = 0
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    for base, words in case["writes"]:
        await _write(dut, base, words)
    pending = [sum(w << (32 * i) for i, w in enumerate(ins)) for ins in case["instrs"]]
    accepted, done = [], []
    cycle = 0
    n = len(pending)
    while len(done) < n:
        gap = pending and case["cmd_gap"] and rng.randint(0, case["cmd_gap"])
        if pending and not gap:
            dut.cmd__payload.value = pending[0]
            dut.cmd__valid.value = 1
        else:
            dut.cmd__valid.value = 0
        await ReadOnly()
        took = pending and not gap and int(dut.cmd__ready.value)
        if int(dut.done.value):
            done.append((cycle, int(dut.error.value)))
        await RisingEdge(dut.clk)
        cycle += 1
        if took:
            accepted.append(cycle - 1)
            pending.pop(0)
        assert cycle < case["max_cycles"], f"no done after {cycle} cycles"
    dut.cmd__valid.value = 0
    errors = [e for _, e in done]
    assert errors == case["errors"], errors
    took_cycles = [d - a for (d, _), a in zip(done, accepted, strict=True)]
    for got, want in zip(took_cycles, case["cycles"], strict=True):
        assert want is None or got == want, (took_cycles, case["cycles"])
    for base, words in case["expect"]:
        got = await _read(dut, base, len(words))
        bad = [i for i, (g, w) in enumerate(zip(got, words, strict=True)) if g != w]
        assert not bad, f"{len(bad)} words differ from the model, first at {base + bad[0]}: " \
            f"got {got[bad[0]]:#x}, want {words[bad[0]]:#x}"
    # the window rejects an address outside every region
    dut.host__addr.value = case["bad_addr"]
    dut.host__r_en.value = 1
    await ReadOnly()
    assert int(dut.host__err.value) == 1
    await RisingEdge(dut.clk)
    dut.host__r_en.value = 0
