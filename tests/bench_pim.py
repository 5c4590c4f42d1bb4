"""cocotb bench for tests/test_pim_verilator.py: the PIM engine's generated Verilog.

The case file (``PIM_CASE``, JSON, built by the pytest side from the golden and cycle models)
lists window writes, instructions, and for each instruction the expected error code, cycle count
and the cycles of every activate and column command; then the expected result words. Inputs are
driven and outputs sampled at the falling clock edge, so each sample is one clock cycle.
"""

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge


async def _reset(dut):
    dut.rst.value = 1
    for _ in range(2):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    dut.cmd__valid.value = 0
    dut.host__w_en.value = 0
    dut.host__r_en.value = 0
    await FallingEdge(dut.clk)


@cocotb.test()
async def gemv_matches_models(dut):
    case = json.loads(open(os.environ["PIM_CASE"]).read())
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns", impl="gpi").start())
    await _reset(dut)
    for addr, word in case["writes"]:
        dut.host__addr.value = addr
        dut.host__w_data.value = word
        dut.host__w_en.value = 1
        await FallingEdge(dut.clk)
        assert int(dut.host__err.value) == 0, f"write error at {addr}"
    dut.host__w_en.value = 0
    for i, ins in enumerate(case["instrs"]):
        assert int(dut.cmd__ready.value) == 1
        dut.cmd__payload.value = sum(w << (32 * j) for j, w in enumerate(ins["words"]))
        dut.cmd__valid.value = 1
        await FallingEdge(dut.clk)  # accepted at the rising edge before: cycle 0
        dut.cmd__valid.value = 0
        acts, cols, c = [], [], 1
        while True:
            if int(dut.trace_act.value):
                acts.append(c)
            if int(dut.trace_col.value):
                cols.append(c)
            if int(dut.done.value):
                break
            await FallingEdge(dut.clk)
            c += 1
            assert c < 1_000_000, "no done"
        got = dict(error=int(dut.error.value), cycles=c, acts=acts, cols=cols)
        want = {k: ins[k] for k in got}
        assert got == want, f"instruction {i}: {got} != {want}"
        await FallingEdge(dut.clk)
    got = []
    for addr in case["reads"]:
        dut.host__addr.value = addr
        dut.host__r_en.value = 1
        await FallingEdge(dut.clk)
        dut.host__r_en.value = 0
        got.append(int(dut.host__r_data.value))
    assert got == case["expect"], "results differ from the golden model"
