"""cocotb bench for benchmarks/pim_gemv.py: cycle counts of GEMV instruction streams.

``PIM_PERF`` (JSON) holds ``xoff`` and ``streams`` (lists of instructions, each 4 words); the
bench runs each stream back to back, measures every instruction's cycles from acceptance to its
``done`` pulse (the engine's cycle count does not depend on the data, so the memories are left as
reset) and writes ``{"cycles": [[...], ...]}`` to ``PIM_PERF_OUT``.
"""

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge
from cocotb.utils import get_sim_time

PERIOD_NS = 10


@cocotb.test()
async def gemv_stream_cycles(dut):
    spec = json.loads(open(os.environ["PIM_PERF"]).read())
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns", impl="gpi").start())
    dut.rst.value = 1
    dut.cmd__valid.value = 0
    dut.host__w_en.value = 0
    dut.host__r_en.value = 0
    await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    win = spec["xoff_offset"]
    for i, v in enumerate(spec["xoff"]):
        dut.host__addr.value = win + i
        dut.host__w_data.value = v
        dut.host__w_en.value = 1
        await FallingEdge(dut.clk)
    dut.host__w_en.value = 0
    out = []
    for stream in spec["streams"]:
        cyc = []
        for words in stream:
            await FallingEdge(dut.clk)
            assert int(dut.cmd__ready.value) == 1
            dut.cmd__payload.value = sum(w << (32 * j) for j, w in enumerate(words))
            dut.cmd__valid.value = 1
            t0 = get_sim_time("ns") - PERIOD_NS // 2  # rising edge that starts cycle 0
            await FallingEdge(dut.clk)
            dut.cmd__valid.value = 0
            if int(dut.done.value):
                t1 = get_sim_time("ns") - PERIOD_NS // 2
            else:
                await RisingEdge(dut.done)
                t1 = get_sim_time("ns")
            cyc.append(round((t1 - t0) / PERIOD_NS))
            assert int(dut.error.value) == 0, f"engine error {int(dut.error.value)}"
        out.append(cyc)
    with open(os.environ["PIM_PERF_OUT"], "w") as f:
        json.dump({"cycles": out}, f)
