"""LayerNorm engine RTL (Amaranth simulator) == golden model, bit for bit, and its cycle model."""

from __future__ import annotations

import pytest
import torch

from gatesmith.generators.layernorm.config import LayerNormConfig
from gatesmith.generators.layernorm.engine import LayerNormEngine
from gatesmith.generators.layernorm.model import layernorm_model
from gatesmith.hdl.nonlinear_common import pack_row_instr
from gatesmith.tests.bench_nonlinear_amsim import EngineSim

OP = 0x22


def edge_rows(fmt, n, gen):
    lo, hi = fmt.min, fmt.max
    return torch.stack(
        [
            torch.randint(lo, hi + 1, (n,), generator=gen),  # the whole format
            torch.full((n,), -3),  # all equal: output is beta
            torch.where(torch.arange(n) == 1, hi, lo),  # one-hot at the extremes: saturation
            torch.randint(-3, 4, (n,), generator=gen),  # tiny variance
            torch.arange(n) - n // 2,
        ]
    )


@pytest.mark.parametrize(
    "dtype,f,G,lanes,n,odt,of,bits",
    [
        ("int8", 4, 8, 3, 11, "int16", 11, 2),
        ("int8", 4, 0, 1, 5, "int8", 5, 2),
        ("int16", 8, 8, 4, 16, "int16", 11, 2),
        ("int16", 12, 4, 2, 9, "int16", 12, 2),
        ("int16", 8, 8, 4, 16, "int16", 11, 1),  # the radix-2 divider
    ],
)
def test_layernorm_rtl_matches_model(dtype, f, G, lanes, n, odt, of, bits):
    cfg = LayerNormConfig(
        in_dtype=dtype, in_frac=f, mean_frac=G, lanes=lanes, depth=64, max_len=64,
        out_dtype=odt, out_frac=of, divider_bits=bits,
    )
    gen = torch.Generator().manual_seed(5)
    x = edge_rows(cfg.in_fmt, n, gen)
    gam = torch.randint(-(2**13), 2**13, (n,), generator=gen)
    gam[0] = 2**15 - 1  # extremes of gamma and beta
    bet = torch.randint(-(2**12), 2**12, (n,), generator=gen)
    bet[-1] = -(2**15)
    eng = LayerNormEngine(cfg)
    sim = EngineSim(eng)
    wpr = -(-n // lanes)
    instrs = [
        pack_row_instr(OP, src=0, dst=0, length=n, rows=2),
        pack_row_instr(OP, src=2 * wpr, dst=2 * wpr, length=n, rows=3),
    ]
    res = sim.run(
        [("in", x, 0), ("gamma", gam[None], 0), ("beta", bet[None], 0)],
        instrs,
        [("out", 0, 5, n)],
        cmd_gap=5,
    )
    assert [e for _, e in res["done"]] == [0, 0]
    got = torch.from_numpy(res["out"][0])
    expected = layernorm_model(x, gam, bet, cfg)
    assert torch.equal(got, expected), (got != expected).nonzero()[:5]
    assert got[1].tolist() == cfg.out_fmt.saturate(bet).tolist()


@pytest.mark.parametrize("bits", [2, 1])
def test_layernorm_rtl_cycles_and_rejects(bits):
    """The cycle model with the radix-4 divider and the radix-2 one, and the rejects."""
    cfg = LayerNormConfig(in_dtype="int8", in_frac=4, lanes=4, depth=32, max_len=16,
                          divider_bits=bits)  # fmt: skip
    eng = LayerNormEngine(cfg)
    sim = EngineSim(eng)
    x = torch.randint(-128, 128, (3, 13), generator=torch.Generator().manual_seed(9))
    res = sim.run([("in", x, 0)], [pack_row_instr(OP, src=0, dst=0, length=13, rows=3)], [])
    assert res["done"][0][0] == eng.cycles(x.tolist())
    res = sim.run([], [pack_row_instr(OP, src=0, dst=0, length=17, rows=1),
                       pack_row_instr(OP, src=30, dst=0, length=16, rows=1)], [])
    assert [e for _, e in res["done"]] == [0x11, 0x12]


def test_layernorm_config_errors():
    with pytest.raises(ValueError, match=r"^lanes must be an integer in 1..16, not 0$"):
        LayerNormConfig(lanes=0)
    with pytest.raises(ValueError, match=r"^mean_frac must be an integer in 0..8, not 9$"):
        LayerNormConfig(in_dtype="int16", mean_frac=9)
    with pytest.raises(ValueError, match=r"^eps must be a number in 0..1, not -1.0$"):
        LayerNormConfig(eps=-1.0)
    with pytest.raises(ValueError, match=r"^out_dtype must be one of int8, int16, not 'int32'$"):
        LayerNormConfig(out_dtype="int32")
