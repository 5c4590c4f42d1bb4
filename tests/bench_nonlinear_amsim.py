"""Amaranth-simulator driver for the row engines (host window writes, instructions, reads)."""

from __future__ import annotations

import random

import numpy as np
from amaranth.sim import Simulator

from gatesmith.host.nonlinear import pack_rows, unpack_rows


class EngineSim:
    """Drives one engine through its ports the way the accelerator top does."""

    def __init__(self, engine):
        self.engine = engine
        self.layout = {w.name: w for w in engine.windows()}

    def region_words(self, name, x, word_offset=0):
        w = self.layout[name]
        width = w.width // self.engine.lanes
        words = pack_rows(x, lanes=self.engine.lanes, width=width, stride=w.stride)
        return w.offset + word_offset * w.stride, words

    def run(self, writes, instrs, reads, *, cmd_gap=0, seed=1, max_cycles=200000):
        """``writes``: [(region, rows, word_offset)], ``instrs``: [4 words], ``reads``:
        [(region, word_offset, n_rows, n)]. Returns (outputs, per-instruction (done_cycle, err),
        total cycles)."""
        dut = self.engine
        rng = random.Random(seed)
        results = {"out": [], "done": [], "cycles": 0}

        async def bench(ctx):
            for region, rows, off in writes:
                base, words = self.region_words(region, rows, off)
                for i, wv in enumerate(words.tolist()):
                    ctx.set(dut.host.addr, base + i)
                    ctx.set(dut.host.w_data, wv)
                    ctx.set(dut.host.w_en, 1)
                    await ctx.tick()
                ctx.set(dut.host.w_en, 0)
            cycle = 0
            pending = list(instrs)
            done = []
            while pending or len(done) < len(instrs):
                if pending:
                    gap = rng.randint(0, cmd_gap) if cmd_gap else 0
                    if gap:
                        ctx.set(dut.cmd.valid, 0)
                    else:
                        word = sum(v << (32 * i) for i, v in enumerate(pending[0]))
                        ctx.set(dut.cmd.payload, word)
                        ctx.set(dut.cmd.valid, 1)
                took = pending and ctx.get(dut.cmd.valid) and ctx.get(dut.cmd.ready)
                if ctx.get(dut.done):
                    done.append((cycle, ctx.get(dut.error)))
                await ctx.tick()
                cycle += 1
                if took:
                    pending.pop(0)
                    ctx.set(dut.cmd.valid, 0)
                assert cycle < max_cycles, "engine did not finish"
            results["done"] = done
            results["cycles"] = cycle
            for region, off, nrows, n in reads:
                w = self.layout[region]
                width = w.width // dut.lanes
                nwords = nrows * -(-n // dut.lanes) * w.stride
                base = w.offset + off * w.stride
                got = []
                for i in range(nwords):
                    ctx.set(dut.host.addr, base + i)
                    ctx.set(dut.host.r_en, 1)
                    await ctx.tick()
                    ctx.set(dut.host.r_en, 0)
                    got.append(ctx.get(dut.host.r_data))
                signed = region != "out" or self.out_signed
                arr = unpack_rows(
                    np.array(got, dtype=np.uint32), rows=nrows, n=n, lanes=dut.lanes,
                    width=width, stride=w.stride, signed=signed,
                )
                results["out"].append(arr)

        sim = Simulator(dut)
        sim.add_clock(1e-6)
        sim.add_testbench(bench)
        sim.run()
        return results

    out_signed = True
