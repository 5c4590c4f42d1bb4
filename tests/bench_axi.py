"""cocotb bench: the AXI4-Lite checks that hold for every accelerator, whatever its engines.

Driven by cocotbext-axi's AxiLiteMaster, each test with and without pauses on every AXI channel
(backpressure). The config comes in ``GATESMITH_CFG`` (JSON). Checked here: the identity block and
the config ROM, the control/status registers and the performance counters, the instruction queue
(NOP and SYNC retire, an opcode no engine owns is an error that CTRL clears), and the error
responses to read-only, write-only and unmapped addresses. Each engine's own bench is found
through its registry entry (``EngineSpec.verify``); ``gatesmith verify`` runs both.

The helpers here (``setup``, ``rd``, ``wr_words``, ``push``, ``wait_idle``) are shared with the
engines' AXI benches (``bench_axi_systolic``).
"""

import functools
import itertools
import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles
from cocotbext.axi import AxiLiteBus, AxiLiteMaster, AxiResp

from gatesmith.config import AccelConfig
from gatesmith.generators.accel.regs import CONFIG_ROM_BASE, MAGIC, REG, VERSION
from gatesmith.generators.accel.top import config_rom_words
from gatesmith.generators.engine import ENGINE_WINDOW_BASE, ErrorCode

PAUSE = [0, 1, 1, 0, 0, 0, 1]  # cycled on every channel when a test runs with backpressure


@functools.cache
def config() -> AccelConfig:
    """The accelerator under test (read when a test runs, so the module imports anywhere)."""
    return AccelConfig.from_dict(json.loads(os.environ["GATESMITH_CFG"]))


def seed() -> int:
    return int(os.environ.get("GATESMITH_SEED", "1"))


async def setup(dut, pause=False):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    master = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "axi_"), dut.clk, dut.rst)
    if pause:
        for ch in (master.write_if.aw_channel, master.write_if.w_channel,
                   master.write_if.b_channel, master.read_if.ar_channel,
                   master.read_if.r_channel):  # fmt: skip
            ch.set_pause_generator(itertools.cycle(PAUSE))
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    return master


async def rd(master, addr):
    r = await master.read(addr, 4)
    assert r.resp == AxiResp.OKAY, f"read {addr:#x}: {r.resp}"
    return int.from_bytes(r.data, "little")


async def rd64(master, name):
    lo = await rd(master, REG[f"PERF_{name}_LO"])  # reading _LO latches _HI
    return lo | await rd(master, REG[f"PERF_{name}_HI"]) << 32


async def wr_words(master, addr, words):
    data = np.asarray(words, dtype="<u4").tobytes()
    r = await master.write(addr, data)
    assert r.resp == AxiResp.OKAY, f"write {addr:#x}: {r.resp}"


async def push(master, instr):
    for w in instr:
        await master.write_dword(REG["QUEUE"], w)


async def wait_idle(dut, master, limit=200_000):
    for _ in range(limit // 20):
        st = await rd(master, REG["STATUS"])
        if st & 1:
            return st
        await ClockCycles(dut.clk, 20)
    raise AssertionError("accelerator never became idle")


@cocotb.test
@cocotb.parametrize(pause=[False, True])
async def identity_block(dut, pause):
    cfg = config()
    master = await setup(dut, pause)
    assert await rd(master, REG["MAGIC"]) == MAGIC
    assert await rd(master, REG["VERSION"]) == VERSION
    words, length, digest = config_rom_words(cfg)
    assert await rd(master, REG["CONFIG_LEN"]) == length
    assert await rd(master, REG["CONFIG_HASH"]) == digest
    assert await rd(master, REG["N_ENGINES"]) == len(cfg.engines)
    assert await rd(master, REG["QUEUE_DEPTH"]) == cfg.queue_depth
    assert await rd(master, REG["LINK_MAX_WORDS"]) == cfg.link_max_words
    r = await master.read(CONFIG_ROM_BASE, 4 * len(words))
    assert r.resp == AxiResp.OKAY
    assert json.loads(r.data[:length].decode()) == json.loads(cfg.to_json())


@cocotb.test
@cocotb.parametrize(pause=[False, True])
async def registers(dut, pause):
    cfg = config()
    master = await setup(dut, pause)
    for value in (0xDEADBEEF, 0, 0xFFFF_FFFF, 0x1234_5678):
        await master.write_dword(REG["SCRATCH"], value)
        assert await rd(master, REG["SCRATCH"]) == value
    st = await rd(master, REG["STATUS"])
    assert st & 0xFF == 1, f"STATUS {st:#x}: not idle or in error after reset"
    assert (st >> 8) & 0xFF == 0, f"STATUS {st:#x}: instructions queued after reset"
    assert await rd(master, REG["ERROR"]) == 0
    assert await rd(master, REG["RETIRED"]) == 0
    # the cycle counter runs, nothing else counts while idle; CTRL bit 1 clears them
    c0 = await rd64(master, "CYCLES")
    await ClockCycles(dut.clk, 50)
    c1 = await rd64(master, "CYCLES")
    assert c1 >= c0 + 50, (c0, c1)
    for name in ("BUSY", "MACS", "ACTIVE", "STALL"):
        assert await rd64(master, name) == 0, name
    await master.write_dword(REG["CTRL"], 2)
    assert await rd64(master, "CYCLES") < c1
    # read-only, write-only and unmapped locations answer with errors, never silently
    assert (await master.write(REG["MAGIC"], b"\0\0\0\0")).resp == AxiResp.SLVERR
    assert (await master.read(REG["QUEUE"], 4)).resp == AxiResp.SLVERR
    assert (await master.read(0x00F0_0000, 4)).resp == AxiResp.DECERR
    bad_engine = ENGINE_WINDOW_BASE + len(cfg.engines) * 0x0100_0000
    assert (await master.read(bad_engine, 4)).resp == AxiResp.DECERR
    assert await rd(master, REG["MAGIC"]) == MAGIC


@cocotb.test
async def status_free_entries(dut):
    """STATUS [15:8] queued and [23:16] free queue entries, as REGISTERS describes them."""
    cfg = config()
    master = await setup(dut)
    st = await rd(master, REG["STATUS"])
    assert (st >> 16) & 0xFF == cfg.queue_depth, f"STATUS {st:#x}: free entries after reset"


@cocotb.test
@cocotb.parametrize(pause=[False, True])
async def queue_and_errors(dut, pause):
    master = await setup(dut, pause)
    # NOP and SYNC queued back to back; both retire
    await push(master, [0x00, 0, 0, 0])
    await push(master, [0x01, 0, 0, 0])
    await wait_idle(dut, master)
    assert await rd(master, REG["RETIRED"]) == 2
    assert await rd(master, REG["ERROR"]) == 0
    # an opcode no engine owns
    await push(master, [0x7F, 0, 0, 0])
    st = await wait_idle(dut, master)
    assert st & 2, f"STATUS {st:#x}: no error bit"
    assert await rd(master, REG["ERROR"]) == (0xFF << 8) | ErrorCode.BAD_OPCODE
    await master.write_dword(REG["CTRL"], 1)
    assert await rd(master, REG["ERROR"]) == 0
    assert not (await rd(master, REG["STATUS"])) & 2
