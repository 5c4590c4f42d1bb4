"""Softmax engine RTL (Amaranth simulator) == golden model, bit for bit, and its cycle model."""

from __future__ import annotations

import pytest
import torch

from gatesmith.generators.softmax.config import SoftmaxConfig
from gatesmith.generators.softmax.engine import SoftmaxEngine
from gatesmith.generators.softmax.model import softmax_model
from gatesmith.hdl.nonlinear_common import pack_row_instr
from gatesmith.tests.bench_nonlinear_amsim import EngineSim

OP = 0x20


def edge_rows(fmt, n, gen):
    """Rows exercising every special case at row length ``n`` (n >= 3)."""
    lo, hi = fmt.min, fmt.max
    rnd = torch.randint(lo + 1, hi + 1, (n,), generator=gen)
    masked = rnd.clone()
    masked[::3] = lo
    rows = [
        rnd,  # random over the whole format (large-magnitude logits)
        torch.full((n,), 5),  # all equal
        torch.where(torch.arange(n) == n // 2, hi, lo + 1),  # one-hot, extremes
        masked,  # masked entries
        torch.full((n,), lo),  # fully masked
        torch.arange(n) * (hi // n),  # ascending: a new maximum every element
        torch.randint(-40, 40, (n,), generator=gen),  # ordinary logits
    ]
    return torch.stack(rows)


def run(cfg, x, instrs, cmd_gap=0):
    sim = EngineSim(SoftmaxEngine(cfg))
    sim.out_signed = False
    rows, n = x.shape
    return sim.run([("in", x, 0)], instrs, [("out", 0, rows, n)], cmd_gap=cmd_gap)


@pytest.mark.parametrize("method", ["online", "shiftmax"])
@pytest.mark.parametrize(
    "dtype,f,lanes,n",
    # the last: 24 vector words, six for each of a lane's four running states (online)
    [("int8", 4, 3, 11), ("int16", 8, 4, 16), ("int16", 11, 1, 6), ("int16", 8, 3, 70)],
)
def test_softmax_rtl_matches_model(method, dtype, f, lanes, n):
    cfg = SoftmaxConfig(method=method, in_dtype=dtype, in_frac=f, lanes=lanes, depth=256)
    x = edge_rows(cfg.in_fmt, n, torch.Generator().manual_seed(11))
    wpr = -(-n // lanes)
    rows = x.shape[0]
    # back to back: the first 3 rows, then the rest, with random gaps on the command stream
    instrs = [
        pack_row_instr(OP, src=0, dst=0, length=n, rows=3),
        pack_row_instr(OP, src=3 * wpr, dst=3 * wpr, length=n, rows=rows - 3),
    ]
    res = run(cfg, x, instrs, cmd_gap=4)
    assert [e for _, e in res["done"]] == [0, 0]
    got = torch.from_numpy(res["out"][0])
    expected = softmax_model(x, cfg)
    assert torch.equal(got, expected), (got != expected).nonzero()[:5]
    assert (got[4] == 0).all()  # fully masked row


@pytest.mark.parametrize("method,bits", [("online", 2), ("shiftmax", 2), ("online", 1)])
def test_softmax_rtl_length_one_and_cycles(method, bits):
    """Results and the cycle model, with the radix-4 divider and the radix-2 one."""
    cfg = SoftmaxConfig(method=method, in_dtype="int8", in_frac=4, lanes=4, depth=64,
                        divider_bits=bits)  # fmt: skip
    eng = SoftmaxEngine(cfg)
    x = torch.tensor([[7], [-128], [127]])
    sim = EngineSim(eng)
    sim.out_signed = False
    res = sim.run([("in", x, 0)], [pack_row_instr(OP, src=0, dst=0, length=1, rows=3)],
                  [("out", 0, 3, 1)])
    assert res["out"][0].tolist() == [[1 << 15], [0], [1 << 15]]
    assert res["done"][0][0] == eng.cycles(1, 3, masked_rows=1)
    y = torch.randint(-100, 100, (2, 37), generator=torch.Generator().manual_seed(2))
    res = sim.run([("in", y, 0)], [pack_row_instr(OP, src=0, dst=0, length=37, rows=2)],
                  [("out", 0, 2, 37)])  # fmt: skip
    assert res["done"][0][0] == eng.cycles(37, 2)
    assert torch.equal(torch.from_numpy(res["out"][0]), softmax_model(y, cfg))


def test_softmax_rtl_rejects_and_continues():
    cfg = SoftmaxConfig(lanes=2, depth=16, max_len=32)
    x = torch.tensor([[1, 2, 3]])
    instrs = [
        pack_row_instr(OP, src=0, dst=0, length=33, rows=1),
        pack_row_instr(OP, src=0, dst=15, length=3, rows=1),
        pack_row_instr(OP, src=0, dst=0, length=3, rows=1),
    ]
    res = run(cfg, x, instrs)
    assert [e for _, e in res["done"]] == [0x11, 0x12, 0]
    assert torch.equal(torch.from_numpy(res["out"][0]), softmax_model(x, cfg))


def test_softmax_config_errors():
    with pytest.raises(ValueError, match=r"^lanes must be an integer in 1..16, not 17$"):
        SoftmaxConfig(lanes=17)
    with pytest.raises(ValueError, match=r"^method must be online or shiftmax, not 'exp'$"):
        SoftmaxConfig(method="exp")
    with pytest.raises(ValueError, match=r"^max_len must be an integer in 1..4096, not 5000$"):
        SoftmaxConfig(max_len=5000)
    with pytest.raises(TypeError, match=r"^in_frac must be an integer, not 1.5$"):
        SoftmaxConfig(in_frac=1.5)
