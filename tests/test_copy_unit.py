"""The on-chip COPY unit (generators/accel/copy.py) in the Amaranth simulator, against its model.

Two window memories answer the unit's ports as the accelerator's window stage does: random
refusals of the grant (the other requesters of a shared window port), a granted access reaching
its window the next cycle (``err`` then), read data the cycle after that; every copy's destination must
equal ``reference`` word for word, including the words it must not touch.
"""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from gatesmith.generators.accel.copy import CopyUnit, fmt_range, reference, walk_words
from gatesmith.generators.accel.isa import WIDTH_CODES, Op
from gatesmith.host.cyclemodel import _Copy

WORDS = 256


def _case(rng: random.Random):
    sw, dw = rng.choice((8, 16, 32)), rng.choice((8, 16, 32))
    rows, length = rng.randint(1, 4), rng.randint(1, 12)
    sides = []
    for width in (sw, dw):
        seg = rng.randint(1, length)
        epw = 32 // width
        seg_words = -(-seg // epw)
        n_segs = -(-length // seg)
        seg_stride = seg_words + rng.randint(0, 2)
        row_stride = n_segs * seg_stride + rng.randint(0, 3)
        sides.append(dict(width=width, signed=rng.random() < 0.5, addr=rng.randint(0, 20),
                          row_stride=row_stride, seg=seg, seg_stride=seg_stride))  # fmt: skip
    src, dst = sides
    if rng.random() < 0.3:
        src.update(mult=1, shift=0)
    else:
        src.update(mult=rng.randint(0, 65535), shift=rng.randint(0, 40))
    src.update(causal=rng.random() < 0.4, diag=rng.randint(0, 3))
    dst.update(rows=rows, len=length)
    return src, dst


def _run(src, dst, src_win, dst_win, *, same: bool, seed: int, p_grant: float = 0.7):
    dut = CopyUnit()
    rng = random.Random(seed)
    mems = [src_win, src_win if same else dst_win]
    result = {}

    async def bench(ctx):
        s = {"causal": 0, "diag": 0, **src}
        d = {k: v for k, v in dst.items()}
        s["width"], d["width"] = WIDTH_CODES[src["width"]], WIDTH_CODES[dst["width"]]
        ctx.set(dut.src_ins, {"opcode": Op.COPY_SRC, "engine": 0, **s})
        ctx.set(dut.dst_ins, {"opcode": Op.COPY, "engine": 0 if same else 1, **d})
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        landing = []  # the accesses granted last cycle: they reach the windows now
        reading = None  # the read that landed last cycle: its data is on r_data now
        trace = result["trace"] = []  # per cycle: (r_en, w_en, read granted, write granted)
        for cycle in range(20000):
            ctx.set(dut.rd.r_data, 0 if reading is None else int(mems[0][reading]))
            reading = None
            errs = {"r": False, "w": False}
            for kind, addr, data in landing:
                if addr >= WORDS:
                    errs[kind] = True
                elif kind == "w":
                    mems[1][addr] = data
                else:
                    reading = addr
            ctx.set(dut.rd.err, errs["r"])
            ctx.set(dut.wr.err, errs["w"])
            ren, raddr = ctx.get(dut.rd.r_en), ctx.get(dut.rd.addr)
            wen, waddr, wdata = ctx.get(dut.wr.w_en), ctx.get(dut.wr.addr), ctx.get(dut.wr.w_data)
            g_r = ren and rng.random() < p_grant
            g_w = wen and rng.random() < p_grant
            if same and g_r and g_w:
                g_r = rng.random() < 0.5
                g_w = not g_r
            ctx.set(dut.rd.grant, g_r)
            ctx.set(dut.wr.grant, g_w)
            landing = [("r", raddr, 0)] * g_r + [("w", waddr, wdata)] * g_w
            done = ctx.get(dut.done)
            trace.append((bool(ren), bool(wen), bool(g_r), bool(g_w)))
            await ctx.tick()
            if done:
                result["err"] = ctx.get(dut.err)
                result["err_addr"] = ctx.get(dut.err_addr)
                result["cycles"] = cycle
                return
        raise AssertionError("the copy did not finish")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return result


@pytest.mark.parametrize("seed", range(12))
def test_copy_matches_reference(seed):
    rng = random.Random(seed)
    src, dst = _case(rng)
    nrng = np.random.default_rng(seed)
    src_win = nrng.integers(0, 2**32, WORDS, dtype=np.uint64).astype(np.uint32)
    dst_win = nrng.integers(0, 2**32, WORDS, dtype=np.uint64).astype(np.uint32)
    want = dst_win.copy()
    reference(src_win, want, src, dst)
    res = _run(src, dst, src_win, dst_win, same=False, seed=seed)
    assert not res["err"]
    np.testing.assert_array_equal(dst_win, want)


def _side_words(side, dst):
    keys = ("addr", "row_stride", "seg", "seg_stride", "width")
    return [n for _, n in walk_words(**{k: side[k] for k in keys}, rows=dst["rows"],
                                     length=dst["len"])]  # fmt: skip


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("p_grant", [0.3, 0.7])
def test_cycle_model_follows_refusals(seed, p_grant):
    """host.cyclemodel's ``_Copy``, given the grants the unit got, asks for the same reads and
    writes every cycle and finishes in the same cycle (the write buffer full and draining
    included: at p_grant 0.3 most words wait)."""
    rng = random.Random(100 + seed)
    src, dst = _case(rng)
    nrng = np.random.default_rng(seed)
    src_win = nrng.integers(0, 2**32, WORDS, dtype=np.uint64).astype(np.uint32)
    dst_win = np.zeros(WORDS, dtype=np.uint32)
    res = _run(src, dst, src_win, dst_win, same=False, seed=seed, p_grant=p_grant)
    model = _Copy()
    model.start((0, _side_words(src, dst), 1, _side_words(dst, dst)), -1)
    for t, (ren, wen, g_r, g_w) in enumerate(res["trace"]):
        if model.done():
            break
        assert (model.rd_req(t), model.pending > 0) == (ren, wen), f"cycle {t}"
        model.step(t, g_r, g_w)
    assert model.done() and t == res["cycles"]


def test_copy_within_one_window():
    """Source and destination on the same engine's port (one access per cycle between them)."""
    src = dict(width=32, signed=True, addr=0, row_stride=8, seg=4, seg_stride=4, mult=3, shift=1)
    dst = dict(width=8, signed=True, addr=128, row_stride=2, seg=8, seg_stride=2, rows=3, len=8)
    win = np.random.default_rng(1).integers(-300, 300, WORDS).astype(np.int64).astype(np.uint32)
    want = win.copy()
    reference(win.copy(), want, src, dst)
    assert not _run(src, dst, win, win, same=True, seed=3)["err"]
    np.testing.assert_array_equal(win, want)


def test_saturation_edges():
    """int32 extremes requantised into int8/uint8: saturate, never wrap."""
    vals = [-(2**31), 2**31 - 1, -129, -128, 127, 128, 255, 256, 0, -1, 1, 2**20]
    src_win = np.zeros(WORDS, dtype=np.uint32)
    src_win[: len(vals)] = np.array(vals, dtype=np.int64).astype(np.uint32)
    for signed in (True, False):
        src = dict(width=32, signed=True, addr=0, row_stride=len(vals), seg=len(vals),
                   seg_stride=len(vals), mult=1, shift=0)  # fmt: skip
        dst = dict(width=8, signed=signed, addr=0, row_stride=3, seg=len(vals), seg_stride=3,
                   rows=1, len=len(vals))  # fmt: skip
        dst_win = np.zeros(WORDS, dtype=np.uint32)
        assert not _run(src, dst, src_win, dst_win, same=False, seed=0, p_grant=1.0)["err"]
        got = [(int(dst_win[i // 4]) >> (8 * (i % 4))) & 0xFF for i in range(len(vals))]
        lo, hi = fmt_range(8, signed)
        want = [min(hi, max(lo, v)) & 0xFF for v in vals]
        assert got == want


def test_refused_word_reports_error():
    src = dict(width=32, signed=True, addr=WORDS - 2, row_stride=4, seg=4, seg_stride=4, mult=1,
               shift=0)  # fmt: skip
    dst = dict(width=32, signed=True, addr=0, row_stride=4, seg=4, seg_stride=4, rows=1, len=4)
    src_win = np.arange(WORDS, dtype=np.uint32)
    dst_win = np.zeros(WORDS, dtype=np.uint32)
    res = _run(src, dst, src_win, dst_win, same=False, seed=0)
    assert res["err"] and res["err_addr"] == WORDS


def test_refused_write_reports_its_address():
    src = dict(width=32, signed=True, addr=0, row_stride=4, seg=4, seg_stride=4, mult=1, shift=0)
    dst = dict(width=32, signed=True, addr=WORDS - 3, row_stride=4, seg=4, seg_stride=4, rows=1,
               len=4)  # fmt: skip
    src_win = np.arange(WORDS, dtype=np.uint32)
    dst_win = np.zeros(WORDS, dtype=np.uint32)
    res = _run(src, dst, src_win, dst_win, same=False, seed=0)
    assert res["err"] and res["err_addr"] == WORDS
    assert list(dst_win[WORDS - 3:]) == [0, 1, 2]


def test_throughput_one_element_per_cycle():
    """acc (int32) -> int8 rows with every grant given: about one element per cycle (plus the
    fill: the read and the window stage, the FIFO, the unpacker, the 4 requantiser stages, the
    packer, the write and its landing)."""
    n = 64
    src = dict(width=32, signed=True, addr=0, row_stride=n, seg=8, seg_stride=8, mult=1, shift=0)
    dst = dict(width=8, signed=True, addr=128, row_stride=n // 4, seg=n, seg_stride=n // 4,
               rows=2, len=n)  # fmt: skip
    win_s = np.zeros(WORDS, dtype=np.uint32)
    win_d = np.zeros(WORDS, dtype=np.uint32)
    res = _run(src, dst, win_s, win_d, same=False, seed=0, p_grant=1.0)
    assert res["cycles"] <= 2 * n + 12


def test_walk_words_counts():
    ws = walk_words(addr=0, row_stride=10, seg=5, seg_stride=3, rows=2, length=12, width=8)
    # per row: segments of 5, 5, 2 elements -> words (4+1), (4+1), (2)
    assert [n for _, n in ws] == [4, 1, 4, 1, 2] * 2
    assert [a for a, _ in ws][:5] == [0, 1, 3, 4, 6]
