"""Drive the systolic engine in the Amaranth simulator: load operands, run GEMMs, read results.

Shared by the engine's unit tests (small configs: the Amaranth simulator runs ~10 k cycles/s).
"""

from __future__ import annotations

import numpy as np
import torch
from amaranth.sim import Simulator

from gatesmith.generators.engine import pack_instr
from gatesmith.generators.systolic.engine import DATAFLOW_CODES, GEMM_FIELDS, SystolicEngine
from gatesmith.generators.systolic.layout import (
    os_operands,
    pack_words,
    unpack_acc,
    ws_operands,
)


def gemm_instr(df, m, k, n, *, acc=0, left=0, top=0, accumulate=False):
    f = GEMM_FIELDS
    return pack_instr(
        0x10,
        [
            (f["dataflow"][0], 2, DATAFLOW_CODES[df]),
            (f["accumulate"][0], 1, int(accumulate)),
            (f["m"][0], 16, m),
            (f["n"][0], 16, n),
            (f["k"][0], 16, k),
            (f["acc_base"][0], 16, acc),
            (f["left_base"][0], 16, left),
            (f["top_base"][0], 16, top),
        ],
    )


def run_gemms(cfg, jobs, *, stall_cmd=0):
    """``jobs``: list of (dataflow, a, b). Returns [(result, cycles, error)] per job."""
    dut = SystolicEngine(cfg)
    lay = dut.layout
    out = []

    async def write_words(ctx, offset, words):
        for i, w in enumerate(words):
            ctx.set(dut.host.addr, offset + i)
            ctx.set(dut.host.w_data, int(w))
            ctx.set(dut.host.w_en, 1)
            await ctx.tick()
        ctx.set(dut.host.w_en, 0)

    async def read_words(ctx, offset, n):
        vals = []
        for i in range(n):
            ctx.set(dut.host.addr, offset + i)
            ctx.set(dut.host.r_en, 1)
            await ctx.tick()
            ctx.set(dut.host.r_en, 0)
            vals.append(ctx.get(dut.host.r_data))
        return np.array(vals, dtype=np.uint32)

    async def tb(ctx):
        for job in jobs:
            df, a, b = job[:3]
            bases = job[3] if len(job) > 3 else {}
            m, k = a.shape
            n = b.shape[1]
            if df == "os":
                left, top = os_operands(a, b, cfg)
                hm, hn = m, n
            elif df == "ws":
                left, top = ws_operands(a, b, cfg)
                hm, hn = m, n
            else:
                left, top = ws_operands(b.t(), a.t(), cfg)
                hm, hn = n, m
            lw, tw = lay["left"], lay["top"]
            await write_words(
                ctx, lw.offset, pack_words(left, cfg.fmt.width, lw.width // 32, lw.stride)
            )
            await write_words(
                ctx, tw.offset, pack_words(top, cfg.fmt.width, tw.width // 32, tw.stride)
            )
            words = gemm_instr(df, hm, k, hn, **bases)
            for _ in range(stall_cmd):
                await ctx.tick()
            ctx.set(dut.cmd.payload, sum(w << (32 * i) for i, w in enumerate(words)))
            ctx.set(dut.cmd.valid, 1)
            await ctx.tick().until(dut.cmd.ready)
            ctx.set(dut.cmd.valid, 0)
            cyc, err = 1, 0
            while True:
                if ctx.get(dut.done):
                    err = ctx.get(dut.error)
                    break
                await ctx.tick()
                cyc += 1
            await ctx.tick()
            aw = lay["acc"]
            rows = -(-hn // cfg.cols) * hm
            words_ = await read_words(ctx, aw.offset, rows * aw.stride)
            res = unpack_acc(words_, hm, hn, cfg, aw.stride)
            if df == "is":
                res = res.t()
            out.append((res, cyc, err))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return out


def rand_operands(cfg, m, k, n, seed):
    g = torch.Generator().manual_seed(seed)
    fmt = cfg.fmt
    a = torch.randint(fmt.min, fmt.max + 1, (m, k), generator=g)
    b = torch.randint(fmt.min, fmt.max + 1, (k, n), generator=g)
    return a, b
