"""cocotb bench for the bit-serial engine's generated Verilog (driven by test_bitserial_verilator).

The case file (``BITSERIAL_CASE``, JSON) holds host-bus writes, instructions, the idle gaps the
producer leaves after each accepted instruction, the result addresses to read, and what the
golden model says they hold, with each instruction's error code and cycle count.
"""

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge


async def _reset(dut):
    dut.rst.value = 1
    dut.cmd__valid.value = 0
    dut.host__w_en.value = 0
    dut.host__r_en.value = 0
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


@cocotb.test()
async def bitserial_case(dut):
    case = json.loads(open(os.environ["BITSERIAL_CASE"]).read())
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    await _reset(dut)

    for addr, value in case["writes"]:
        dut.host__addr.value = addr
        dut.host__w_data.value = value
        dut.host__w_en.value = 1
        await RisingEdge(dut.clk)
    dut.host__w_en.value = 0

    pending = [sum(w << (32 * i) for i, w in enumerate(ws)) for ws in case["instrs"]]
    gaps = list(case["gaps"])
    log, accepted, cyc, gap, macs = [], [], 0, 0, 0
    while len(log) < len(case["instrs"]):
        if pending and gap == 0:
            dut.cmd__payload.value = pending[0]
            dut.cmd__valid.value = 1
        else:
            dut.cmd__valid.value = 0
        await ReadOnly()
        took = int(dut.cmd__valid.value) and int(dut.cmd__ready.value)
        if int(dut.done.value):
            log.append([accepted[len(log)], cyc, int(dut.error.value)])
        macs += int(dut.perf_macs.value)
        await RisingEdge(dut.clk)
        if took:
            accepted.append(cyc)
            pending.pop(0)
            gap = gaps.pop(0) if gaps else 0
        elif gap:
            gap -= 1
        cyc += 1
        assert cyc < 2_000_000, "engine did not finish"
    dut.cmd__valid.value = 0

    got = []
    for addr in case["reads"]:
        dut.host__addr.value = addr
        dut.host__r_en.value = 1
        await RisingEdge(dut.clk)
        dut.host__r_en.value = 0
        await ReadOnly()
        got.append(int(dut.host__r_data.value))
        await RisingEdge(dut.clk)

    if os.environ.get("BITSERIAL_LOG"):
        with open(os.environ["BITSERIAL_LOG"], "w") as f:
            json.dump({"log": log, "macs": macs}, f)
    errors = [e for _, _, e in log]
    cycles = [d - a for a, d, _ in log]
    assert errors == case["errors"], (errors, case["errors"])
    assert cycles == case["cycles"], (cycles, case["cycles"])
    assert macs == case["macs"], (macs, case["macs"])
    bad = [i for i, (g, e) in enumerate(zip(got, case["expect"])) if g != e]
    assert not bad, f"{len(bad)} result words differ, first at read {bad[0]}: " \
        f"{got[bad[0]]:#x} != {case['expect'][bad[0]]:#x}"
    for (_, d0, _), (a1, _, _) in zip(log, log[1:]):
        assert a1 >= d0, "accepted an instruction while busy"
