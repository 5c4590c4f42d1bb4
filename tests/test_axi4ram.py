"""The block-RAM device memory of the board builds (``hdl/axi4.py`` ``AXI4RAM``), simulated.

Seeded random write and read bursts (lengths 1..32, byte strobes, addresses wrapping at the
top) with random WVALID gaps and RREADY backpressure, checked word for word against a Python
model of the memory, with RLAST on each burst's last beat and one outstanding burst per
channel as the docstring says.
"""

from __future__ import annotations

import random

from amaranth.sim import Simulator

from gatesmith.hdl.axi4 import AXI4RAM

SEED = 20261204
SIZE = 1024  # bytes: 256 words


def _run(seed: int, bursts: int = 60) -> list:
    rng = random.Random(seed)
    dut = AXI4RAM(SIZE)
    bus = dut.bus
    model = [0] * (SIZE // 4)
    log: list = []

    async def bench(ctx):
        for _ in range(bursts):
            beats = rng.randint(1, 32)
            word = rng.randrange(SIZE // 4)
            if rng.random() < 0.5:
                data = [rng.getrandbits(32) for _ in range(beats)]
                strb = [rng.choice((0xF, 0xF, 0x3, 0xC, 0x1, 0x0)) for _ in range(beats)]
                ctx.set(bus.awaddr, 4 * word)
                ctx.set(bus.awlen, beats - 1)
                ctx.set(bus.awvalid, 1)
                await ctx.tick().until(bus.awready)
                ctx.set(bus.awvalid, 0)
                for i, (d, s) in enumerate(zip(data, strb)):
                    while rng.random() < 0.3:
                        await ctx.tick()
                    ctx.set(bus.wdata, d)
                    ctx.set(bus.wstrb, s)
                    ctx.set(bus.wlast, i + 1 == beats)
                    ctx.set(bus.wvalid, 1)
                    await ctx.tick().until(bus.wready)
                    ctx.set(bus.wvalid, 0)
                    a = (word + i) % len(model)
                    mask = sum(0xFF << (8 * b) for b in range(4) if s >> b & 1)
                    model[a] = (model[a] & ~mask) | (d & mask)
                ctx.set(bus.bready, 1)
                await ctx.tick().until(bus.bvalid)
                ctx.set(bus.bready, 0)
            else:
                ctx.set(bus.araddr, 4 * word)
                ctx.set(bus.arlen, beats - 1)
                ctx.set(bus.arvalid, 1)
                await ctx.tick().until(bus.arready)
                ctx.set(bus.arvalid, 0)
                got = []
                while len(got) < beats:
                    ready = rng.random() < 0.7
                    ctx.set(bus.rready, ready)
                    if ready and ctx.get(bus.rvalid):  # the beat moves at this edge
                        got.append((ctx.get(bus.rdata), ctx.get(bus.rlast)))
                    await ctx.tick()
                ctx.set(bus.rready, 0)
                assert not ctx.get(bus.rvalid), "a beat beyond the burst"
                want = [(model[(word + i) % len(model)], i + 1 == beats) for i in range(beats)]
                log.append((word, beats, got, want))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return log


def test_bursts_read_back_what_was_written():
    log = []
    for seed in range(SEED, SEED + 4):
        log += _run(seed)
    assert len(log) > 50
    for word, beats, got, want in log:
        assert got == want, (word, beats)
    assert any(w + b > SIZE // 4 for w, b, _, _ in log), "no burst wrapped at the top"


def test_one_beat_a_cycle_after_three_cycles():
    """With RREADY high a burst's first beat is there 3 cycles after its AR, then one a cycle."""
    dut = AXI4RAM(SIZE)
    bus = dut.bus
    seen = []

    async def bench(ctx):
        ctx.set(bus.araddr, 4 * 250)  # wraps after 6 words
        ctx.set(bus.arlen, 31)
        ctx.set(bus.arvalid, 1)
        ctx.set(bus.rready, 1)
        await ctx.tick().until(bus.arready)
        ctx.set(bus.arvalid, 0)
        for cycle in range(1, 40):
            if ctx.get(bus.rvalid):
                seen.append((cycle, ctx.get(bus.rlast)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert [c for c, _ in seen] == list(range(3, 35))
    assert [last for _, last in seen] == [False] * 31 + [True]
