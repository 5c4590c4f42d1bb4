"""PIM engine RTL (Amaranth simulator) == golden model bit for bit, and == cycle model exactly.

Small configs, seeded random shapes and timings; memories are loaded through the host window bus
(the real path), instructions go through the ``cmd`` stream, results come back over the bus.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from gatesmith.generators.engine import ErrorCode
from gatesmith.generators.pim import PimConfig
from gatesmith.generators.pim.cycles import schedule
from gatesmith.generators.pim.engine import PimEngine
from gatesmith.generators.pim.isa import GemvInstr
from gatesmith.generators.pim.model import PimState, gemv, pack_operands, unpack_results

SMALL = dict(banks=2, lanes=4, row_size=16, rows_per_bank=16, vector_depth=64, result_depth=8)


class SimBus:
    """Drives a PimEngine's host window and cmd stream inside an Amaranth async testbench."""

    def __init__(self, ctx, dut):
        self.ctx, self.dut = ctx, dut

    async def write(self, offset, words):
        ctx, h = self.ctx, self.dut.host
        errs = []
        for i, w in enumerate(np.asarray(words, dtype=np.uint32).tolist()):
            ctx.set(h.addr, offset + i)
            ctx.set(h.w_data, int(w))
            ctx.set(h.w_en, 1)
            errs.append(ctx.get(h.err))
            await ctx.tick()
        ctx.set(h.w_en, 0)
        return errs

    async def read(self, offset, n):
        ctx, h = self.ctx, self.dut.host
        out = []
        for i in range(n):
            ctx.set(h.addr, offset + i)
            ctx.set(h.r_en, 1)
            assert not ctx.get(h.err), f"read error at window word {offset + i}"
            await ctx.tick()
            ctx.set(h.r_en, 0)
            out.append(ctx.get(h.r_data))
        return np.array(out, dtype=np.uint32)

    async def execute(self, words, *, max_cycles=200_000):
        """Issue one instruction; returns (cycles to done, error, act cycles, col cycles)."""
        ctx, dut = self.ctx, self.dut
        value = sum(int(w) << (32 * i) for i, w in enumerate(words))
        ctx.set(dut.cmd.payload, value)
        ctx.set(dut.cmd.valid, 1)
        while not ctx.get(dut.cmd.ready):
            await ctx.tick()
        acts, cols = [], []
        await ctx.tick()  # accepted at cycle 0
        ctx.set(dut.cmd.valid, 0)
        for c in range(1, max_cycles):
            if ctx.get(dut.trace_act):
                acts.append(c)
            if ctx.get(dut.trace_col):
                cols.append(c)
            if ctx.get(dut.done):
                err = ctx.get(dut.error)
                await ctx.tick()
                return c, ErrorCode(err), acts, cols
            await ctx.tick()
        raise AssertionError("engine never signalled done")


def run_sim(cfg, body):
    """Simulate a PimEngine for ``cfg``; ``body(bus)`` is an async function using SimBus."""
    dut = PimEngine(cfg)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    result = {}

    async def tb(ctx):
        result["value"] = await body(SimBus(ctx, dut))

    sim.add_testbench(tb)
    sim.run()
    return result["value"]


async def load_state(bus, cfg, state: PimState):
    """Write a PimState's weights, vector and xoff through the host window."""
    win = cfg.windows()
    await bus.write(win["weights"].offset, pack_operands(state.weights.flatten(), cfg))
    await bus.write(win["vector"].offset, pack_operands(state.vector, cfg))
    await bus.write(win["xoff"].offset, np.array(state.xoff, dtype=np.uint32))


async def read_results(bus, cfg):
    win = cfg.windows()["results"]
    words = await bus.read(win.offset, win.depth * win.stride)
    return unpack_results(words, cfg.acc_width).reshape(cfg.banks, cfg.result_depth)


def random_state(cfg, rng: torch.Generator, extremes: bool = False) -> PimState:
    st = PimState(cfg)
    lo, hi = cfg.fmt.min, cfg.fmt.max
    if extremes:
        st.weights = torch.full_like(st.weights, lo)
        st.vector = torch.full_like(st.vector, lo)
    else:
        st.weights = torch.randint(lo, hi + 1, st.weights.shape, generator=rng)
        st.vector = torch.randint(lo, hi + 1, st.vector.shape, generator=rng)
    return st


def random_instr(cfg, r: random.Random, xoff) -> GemvInstr:
    col_mode = r.random() < 0.3
    room = cfg.vector_segments - (max(xoff) if col_mode else 0)
    segs = r.randint(1, min(3, room))
    rounds = r.randint(1, min(cfg.result_depth, cfg.rows_per_bank // segs))
    return GemvInstr(
        rounds=rounds,
        segments=segs,
        cols_last=r.randint(1, cfg.cols_per_row),
        w_row=r.randint(0, cfg.rows_per_bank - rounds * segs),
        x_seg=r.randint(0, room - segs),
        y_base=r.randint(0, cfg.result_depth - rounds),
        col_mode=col_mode,
    )


def random_config(r: random.Random) -> PimConfig:
    burst = r.choice([1, 2])
    return PimConfig(
        banks=r.choice([1, 2, 3]),
        lanes=r.choice([2, 4, 8]),
        row_size=16 if burst == 1 else 32,
        rows_per_bank=16,
        dtype=r.choice(["int8", "int4"]),
        acc_width=r.choice([16, 32, 40]),
        t_rcd=r.randint(1, 6),
        t_rp=r.randint(1, 6),
        t_ccd=burst + r.randint(0, 2),
        burst=burst,
        dual_row_buffer=r.random() < 0.5,
        vector_depth=128,
        result_depth=8,
    )


def _check_case(cfg, st, instrs):
    """Run ``instrs`` on the RTL; compare results, errors, cycles and command traces."""
    model = PimState(cfg)
    model.weights, model.vector, model.xoff = st.weights, st.vector, st.xoff

    async def body(bus):
        await load_state(bus, cfg, st)
        runs = [await bus.execute(i.words()) for i in instrs]
        return runs, await read_results(bus, cfg)

    runs, got = run_sim(cfg, body)
    for instr, (cycles, err, acts, cols) in zip(instrs, runs, strict=True):
        sch = schedule(cfg, instr, st.xoff)
        assert err == gemv(model, instr), f"{cfg} {instr}"
        assert (cycles, acts, cols) == (sch.done, sch.acts, sch.cols), f"{cfg} {instr}"
    assert torch.equal(got, model.results), f"{cfg} {instrs}"


@pytest.mark.parametrize("seed", range(12))
def test_random_configs_bit_exact_and_cycle_exact(seed):
    print(f"seed={seed}")
    r = random.Random(seed)
    cfg = random_config(r)
    rng = torch.Generator().manual_seed(seed)
    st = random_state(cfg, rng)
    st.xoff = [r.randint(0, cfg.vector_segments - 1) for _ in range(cfg.banks)]
    instrs = [random_instr(cfg, r, st.xoff) for _ in range(3)]
    _check_case(cfg, st, instrs)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
@pytest.mark.parametrize("dual", [False, True])
def test_format_extremes(dtype, dual):
    """All operands at the format's minimum: largest products; a 16-bit accumulator wraps."""
    cfg = PimConfig(**SMALL, dtype=dtype, acc_width=16, dual_row_buffer=dual)
    st = random_state(cfg, torch.Generator().manual_seed(1), extremes=True)
    st.vector[: cfg.row_size] = cfg.fmt.max  # one segment of max x min products
    instrs = [
        GemvInstr(rounds=4, segments=4, cols_last=cfg.cols_per_row),
        GemvInstr(rounds=2, segments=1, cols_last=1, w_row=3, y_base=5),
    ]
    _check_case(cfg, st, instrs)


def test_errors_retire_at_cycle_2_and_leave_results():
    cfg = PimConfig(**SMALL)
    st = random_state(cfg, torch.Generator().manual_seed(2))
    st.xoff = [0, 3]
    instrs = [
        GemvInstr(rounds=0, segments=1, cols_last=1),
        GemvInstr(rounds=1, segments=1, cols_last=cfg.cols_per_row + 1),
        GemvInstr(rounds=9, segments=1, cols_last=1),  # past result_depth
        GemvInstr(rounds=4, segments=4, cols_last=1, w_row=1),  # past rows_per_bank
        GemvInstr(rounds=1, segments=2, cols_last=1, col_mode=True),  # xoff 3 + 2 > 4 segments
        GemvInstr(rounds=1, segments=2, cols_last=1, x_seg=2),
    ]
    _check_case(cfg, st, instrs)


def test_bad_opcode():
    cfg = PimConfig(**SMALL)

    async def body(bus):
        return await bus.execute([0x41, 0, 0, 0])

    cycles, err, acts, cols = run_sim(cfg, body)
    # accept 0, field checks 1, product copied 2, row range 3, done 4 (cycles.py)
    assert (cycles, err, acts, cols) == (4, ErrorCode.BAD_OPCODE, [], [])


def test_host_window_errors():
    """Reads of write-only regions, writes of read-only ones and holes raise ``err``."""
    cfg = PimConfig(**{**SMALL, "banks": 3})
    win = cfg.windows()

    async def body(bus):
        ctx, h = bus.ctx, bus.dut.host
        out = {}
        for name, addr, rd in [
            ("weights_read", win["weights"].offset, True),
            ("vector_read", win["vector"].offset, True),
            ("results_write", win["results"].offset, False),
            ("weights_bank3", win["weights"].offset + 3 * 64, False),
            ("xoff_bank3", win["xoff"].offset + 3, False),
            ("weights_ok", win["weights"].offset, False),
            ("results_ok", win["results"].offset, True),
        ]:
            ctx.set(h.addr, addr)
            ctx.set(h.r_en if rd else h.w_en, 1)
            out[name] = ctx.get(h.err)
            ctx.set(h.r_en if rd else h.w_en, 0)
        return out

    out = run_sim(cfg, body)
    assert out == {
        "weights_read": 1,
        "vector_read": 1,
        "results_write": 1,
        "weights_bank3": 1,
        "xoff_bank3": 1,
        "weights_ok": 0,
        "results_ok": 0,
    }


@pytest.mark.parametrize("dual", [False, True])
def test_weight_writes_while_busy(dual):
    """Only a second row buffer lets the host write weights while a GEMV runs."""
    cfg = PimConfig(**SMALL, dual_row_buffer=dual)
    win = cfg.windows()

    async def body(bus):
        ctx, dut = bus.ctx, bus.dut
        ctx.set(dut.cmd.payload, sum(w << 32 * i for i, w in enumerate(
            GemvInstr(rounds=2, segments=2, cols_last=1).words())))  # fmt: skip
        ctx.set(dut.cmd.valid, 1)
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        await ctx.tick()
        errs = await bus.write(win["weights"].offset + 100, [0x1234])
        return errs[0], ctx.get(dut.busy)

    err, busy = run_sim(cfg, body)
    assert busy == 1
    assert err == (0 if dual else 1)


def test_xoff_readback():
    cfg = PimConfig(**SMALL)
    win = cfg.windows()

    async def body(bus):
        await bus.write(win["xoff"].offset, [3, 1])
        return await bus.read(win["xoff"].offset, 2)

    assert run_sim(cfg, body).tolist() == [3, 1]


def test_perf_counters_count_every_mac():
    cfg = PimConfig(**SMALL, t_ccd=2, burst=1)
    instr = GemvInstr(rounds=3, segments=2, cols_last=2)

    async def body(bus):
        ctx, dut = bus.ctx, bus.dut
        ctx.set(dut.cmd.payload, sum(w << 32 * i for i, w in enumerate(instr.words())))
        ctx.set(dut.cmd.valid, 1)
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        macs = stalls = busy = 0
        while not ctx.get(dut.done):
            macs += ctx.get(dut.perf_macs)
            stalls += ctx.get(dut.perf_stall)
            busy += ctx.get(dut.busy)
            await ctx.tick()
        return macs, stalls, busy

    macs, stalls, busy = run_sim(cfg, body)
    sch = schedule(cfg, instr)
    assert macs == sch.beats * cfg.banks * cfg.lanes
    assert busy == sch.done - 1
    assert stalls == busy - sch.beats
