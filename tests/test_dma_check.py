"""The controller's LOAD/STORE check and queue entry (``controller._DmaEntry``) against the rule.

The check runs as an instruction enters its queue, with both factors of the range check's product
clamped at device memory's word count; its outcome must be the full-width rule's for every
instruction, and an entry must give back the fields the DMA channel needs (and, with an error,
the full ERROR_ADDR).
"""

import random

import pytest
from amaranth import Module, Signal
from amaranth.sim import Simulator

from gatesmith.generators.accel.controller import _DMA_ERRORS, _DmaEntry
from gatesmith.generators.accel.isa import DmaInstr, Op
from gatesmith.generators.engine import ErrorCode
from gatesmith.hdl.fields import pack_struct


def rule(d, mem_bytes, n_engines):
    """The check as the ISA states it (``isa.py``), with the exact product."""
    if d["rows"] == 0 or d["row_words"] == 0:
        return ErrorCode.BAD_SHAPE
    if d["mem_addr"] % 4:
        return ErrorCode.MEM_ALIGN
    if d["mem_addr"] + ((d["rows"] - 1) * d["mem_stride"] + d["row_words"]) * 4 > mem_bytes:
        return ErrorCode.MEM_RANGE
    if d["engine"] >= n_engines:
        return ErrorCode.BAD_FIELD
    return ErrorCode.NONE


def _cases(rng, mem_bytes, n):
    words = mem_bytes // 4
    edge = {
        "rows": [0, 1, 2, 3, words - 1, words, words + 1, 65535],
        "row_words": [0, 1, 2, words // 2, words - 1, words, 4095],
        "mem_stride": [0, 1, 2, words // 3, words - 1, words, words + 1, 2**18 - 1],
        "mem_addr": [0, 2, 4, mem_bytes - 8, mem_bytes - 4, mem_bytes, mem_bytes + 4,
                     2**31, 2**32 - 4, 2**32 - 1],  # fmt: skip
        "engine": [0, n - 1, n, 15],
    }
    width = {"rows": 16, "row_words": 12, "mem_stride": 18, "mem_addr": 32, "engine": 4}
    # at the clamp: one factor at or around the word count, the other small, the copy just
    # reaching or just passing the end
    for big in (words - 2, words - 1, words, words + 1, 2 * words):
        for small in (0, 1, 2):
            for addr in (0, 4, mem_bytes - 4):
                for rows, stride in ((big + 1, small), (small + 1, big)):
                    if rows < 2**16 and stride < 2**18:
                        yield dict(rows=rows, row_words=1, mem_stride=stride, mem_addr=addr,
                                   engine=0, win_stride=0, win_addr=0)  # fmt: skip
    for i in range(1500):
        d = {}
        for name, values in edge.items():
            r = rng.random()
            if r < 0.5:
                v = rng.choice(values)
            elif r < 0.8:  # small: the legal region
                v = rng.randint(0, min(2 ** width[name] - 1, 2 * words))
            else:
                v = rng.randint(0, 2 ** width[name] - 1)
            d[name] = min(max(v, 0), 2 ** width[name] - 1)
        if i % 3 == 0:  # a legal copy: fit it inside memory
            d["mem_addr"] &= ~3
            d["rows"], d["row_words"] = max(1, d["rows"] % 8), max(1, d["row_words"] % 64)
            d["mem_stride"] %= 128
            span = ((d["rows"] - 1) * d["mem_stride"] + d["row_words"]) * 4
            d["mem_addr"] %= max(4, mem_bytes - span)
            d["mem_addr"] &= ~3
        d["win_stride"], d["win_addr"] = rng.randint(0, 2**16 - 1), rng.randint(0, 2**22 - 1)
        yield d


@pytest.mark.parametrize("mem_bytes", [4096, 64 << 10, 32 << 20, 1 << 31])
def test_check_and_entry_match_the_rule(mem_bytes):
    n = 2
    de = _DmaEntry(mem_bytes, n)
    m = Module()
    ins = Signal(128)
    code = de.check(m, ins, de.product(m, ins))
    entry = Signal(de.width)
    pop, push, pc = Signal(), Signal(), Signal(16)
    m.d.comb += entry.eq(de.pack(ins, code, pop, push, pc))
    f = de.fields(entry)
    outs = {k: Signal(len(v), name=f"f_{k}") for k, v in f.items()}
    m.d.comb += [outs[k].eq(v) for k, v in f.items()]
    cases = list(_cases(random.Random(mem_bytes), mem_bytes, n))
    seen = set()

    async def bench(ctx):
        for i, d in enumerate(cases):
            words = pack_struct(DmaInstr, opcode=Op.LOAD, **d)
            ctx.set(ins, sum(w << (32 * j) for j, w in enumerate(words)))
            ctx.set(pop, i & 1)
            ctx.set(push, (i >> 1) & 1)
            ctx.set(pc, i)
            want = rule(d, mem_bytes, n)
            seen.add(want)
            got = {k: ctx.get(s) for k, s in outs.items()}
            assert got["code"] == want, (d, got["code"], want)
            assert (got["pop"], got["push"], got["pc"]) == (i & 1, (i >> 1) & 1, i)
            if want == ErrorCode.NONE:
                for name in ("engine", "rows", "row_words", "win_stride", "win_addr", "mem_addr"):
                    assert got[name] == d[name], (name, d)
                if d["rows"] > 1:  # with one row the stride is never used
                    assert got["mem_stride"] == d["mem_stride"], d
            else:
                assert got["err_addr"] == d["mem_addr"], d

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {ErrorCode.NONE, *_DMA_ERRORS}  # every outcome was exercised


def test_entry_widths_follow_device_memory():
    """On a 4 KiB device memory the entry is narrow: 12-bit addresses, 10-bit strides."""
    de = _DmaEntry(4096, 1)
    widths = dict(de.layout)
    assert widths["mem_addr"] == 12 and widths["mem_stride"] == 10 and widths["engine"] == 1
    full = _DmaEntry(1 << 31, 1)
    assert dict(full.layout)["mem_addr"] == 31 and dict(full.layout)["mem_stride"] == 18
