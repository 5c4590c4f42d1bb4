"""cocotb bench for the row engines (softmax, GELU, LayerNorm) on their generated Verilog.

The case file named by ``NL_CASE`` (JSON, written by tests/test_nonlinear_verilator.py) lists host
window writes, instructions (with the command stream's random gaps), the expected result words,
error codes and cycle counts. Everything expected comes from the golden models and the engines'
cycle models; the bench only drives ports and compares.

:func:`verify` (the three engines' ``EngineSpec.verify`` entry) builds such a case for any
softmax, GELU or LayerNorm config: seeded random rows plus the format's edges, a row length that is
not a multiple of the lanes, two instructions back to back with random gaps and one that runs past
the input memory, and runs this bench on the engine's generated Verilog.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path

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


# --------------------------------------------------------------------------------------------
# The engines' verify bench (runs in the host process, not in the simulator)
# --------------------------------------------------------------------------------------------


def _region_words(eng, name, x):
    from gatesmith.host.nonlinear import pack_rows

    w = {r.name: r for r in eng.windows()}[name]
    words = pack_rows(x, lanes=eng.lanes, width=w.width // eng.lanes, stride=w.stride)
    return [w.offset, words.tolist()]


def _shape(cfg, want_rows):
    """(rows, n): n not a multiple of the lanes where possible, every row in the memory."""
    n = min(9 * cfg.lanes + 1, cfg.max_len)
    while n > 1 and cfg.depth // -(-n // cfg.lanes) < 3:
        n = max(1, n // 2)
    return max(1, min(want_rows, cfg.depth // -(-n // cfg.lanes))), n


def _edges(x, fmt, g, *, masked=True):
    """Overwrite the first rows of ``x`` with the format's edge cases (as many as there are)."""
    import torch

    rows, n = x.shape
    edges = [
        torch.randint(fmt.min, fmt.max + 1, (n,), generator=g),  # the full range
        torch.full((n,), 9),  # all equal
        torch.where(torch.arange(n) == n // 3, fmt.max, fmt.min + 1),  # one-hot at the extremes
        torch.where(torch.arange(n) % 2 == 0, fmt.min, fmt.max),  # alternating extremes
    ]
    if masked:
        edges.append(torch.full((n,), fmt.min))  # fully masked (softmax) / the minimum
    for i, e in enumerate(edges[:rows]):
        x[i] = e
    return x


def _softmax_case(cfg, g, rows, n):
    import torch

    from gatesmith.generators.softmax.engine import SoftmaxEngine
    from gatesmith.generators.softmax.model import softmax_model

    eng = SoftmaxEngine(cfg)
    fmt = cfg.in_fmt
    x = _edges(torch.randint(fmt.min // 4, fmt.max // 4 + 1, (rows, n), generator=g), fmt, g)
    y = softmax_model(x, cfg)
    masked = (x == fmt.min).all(dim=1)

    def cycles(lo, hi):
        return eng.cycles(n, hi - lo, masked_rows=int(masked[lo:hi].sum()))

    return eng, [_region_words(eng, "in", x)], [_region_words(eng, "out", y)], cycles


def _gelu_case(cfg, g, rows, n):
    import torch

    from gatesmith.generators.gelu.engine import GeluEngine
    from gatesmith.generators.gelu.model import gelu_model

    eng = GeluEngine(cfg)
    fmt = cfg.in_fmt
    x = torch.randint(fmt.min, fmt.max + 1, (rows, n), generator=g)
    step = -(-(fmt.max - fmt.min + 1) // x.numel())  # every value when they fit, else evenly
    sweep = torch.arange(fmt.min, fmt.max + 1, step)
    x.view(-1)[: len(sweep)] = sweep[torch.randperm(len(sweep), generator=g)]
    x[-1] = torch.tensor([fmt.min, fmt.max, 0, -1])[torch.arange(n) % 4]
    y = gelu_model(x, cfg)
    return eng, [_region_words(eng, "in", x)], [_region_words(eng, "out", y)], \
        lambda lo, hi: eng.cycles(n, hi - lo)


def _layernorm_case(cfg, g, rows, n):
    import torch

    from gatesmith.generators.layernorm.engine import LayerNormEngine
    from gatesmith.generators.layernorm.model import layernorm_model

    eng = LayerNormEngine(cfg)
    fmt = cfg.in_fmt
    x = torch.randint(fmt.min // 16, fmt.max // 16 + 1, (rows, n), generator=g)
    x = _edges(x, fmt, g, masked=False)
    if rows > 4:
        x[4] = torch.randint(-2, 3, (n,), generator=g)  # tiny variance
    gam = torch.randint(-(2**14), 2**14, (1, n), generator=g)
    bet = torch.randint(-(2**13), 2**13, (1, n), generator=g)
    y = layernorm_model(x, gam[0], bet[0], cfg)
    writes = [_region_words(eng, "in", x), _region_words(eng, "gamma", gam),
              _region_words(eng, "beta", bet)]  # fmt: skip
    return eng, writes, [_region_words(eng, "out", y)], \
        lambda lo, hi: eng.cycles(x[lo:hi].tolist())


_CASES = {"softmax": _softmax_case, "gelu": _gelu_case, "layernorm": _layernorm_case}


def verify(cfg, ecfg, *, seed: int = 1, count: int = 8, cocotb: bool = True, progress=None):
    """``EngineSpec.verify`` of the softmax, GELU and LayerNorm engines: rows (check, case, ok,
    note). Runs this bench on the engine's own generated Verilog (one Verilator build per engine
    config, cached); ``count`` sets the number of random rows."""
    from gatesmith.generators.engine import ErrorCode
    from gatesmith.generators.registry import engine_spec
    from gatesmith.hdl.nonlinear_common import pack_row_instr
    from gatesmith.sim.cocotb_runner import run_cocotb, verilog_of

    if not cocotb:
        return []
    import torch

    kind = type(ecfg).kind
    g = torch.Generator().manual_seed(seed)
    rows, n = _shape(ecfg, max(count, 6))
    eng, writes, expect, cycles = _CASES[kind](ecfg, g, rows, n)
    op = next(iter(engine_spec(kind).opcodes.values()))
    wpr = -(-n // ecfg.lanes)
    split = max(1, rows // 2)
    instrs = [pack_row_instr(op, src=0, dst=0, length=n, rows=split)]
    want = [cycles(0, split)]
    if rows > split:
        instrs.append(pack_row_instr(op, src=split * wpr, dst=split * wpr, length=n,
                                     rows=rows - split))  # fmt: skip
        want.append(cycles(split, rows))
    # runs past the end of the input memory: rejected, nothing written
    instrs.append(pack_row_instr(op, src=ecfg.depth - wpr, dst=0, length=n, rows=2))
    want.append(None)
    errors = [0] * (len(instrs) - 1) + [int(ErrorCode.OUT_OF_RANGE)]
    case = dict(seed=seed, cmd_gap=3, writes=writes, instrs=instrs, expect=expect, errors=errors,
                cycles=want, max_cycles=2_000_000, bad_addr=(1 << 22) - 1)
    name = type(eng).__name__.lower()
    say = progress or (lambda msg: None)
    say(f"{kind}: bench_nonlinear_rows on Verilator (the first build takes a minute)")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"gatesmith-verify-{kind}-") as tmp:
        path = Path(tmp) / "case.json"
        path.write_text(json.dumps(case))
        run_cocotb(verilog_of(eng, name=name), toplevel=name,
                   test_module="gatesmith.tests.bench_nonlinear_rows",
                   env={"NL_CASE": str(path)}, seed=seed)  # fmt: skip
    return [(f"cocotb bench_nonlinear_rows ({kind})",
             f"{rows} rows of {n}, {len(instrs)} instructions", True,
             f"== model, cycles == cycle model; {time.monotonic() - t0:.1f} s")]  # fmt: skip
