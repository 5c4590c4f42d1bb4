"""GELU engine RTL (Amaranth simulator) == golden model, bit for bit."""

from __future__ import annotations

import pytest
import torch

from gatesmith.generators.gelu.config import GeluConfig
from gatesmith.generators.gelu.engine import GeluEngine
from gatesmith.generators.gelu.model import gelu_model
from gatesmith.hdl.nonlinear_common import pack_row_instr
from gatesmith.tests.bench_nonlinear_amsim import EngineSim

OP = 0x21


@pytest.mark.parametrize(
    "method,idt,f,odt,of,lanes",
    [
        ("rom", "int8", 4, "int16", 12, 3),
        ("rom", "int8", 6, "int8", 4, 1),
        ("rom", "int16", 12, "int16", 12, 4),
        ("shiftgelu", "int8", 4, "int16", 12, 3),
        ("shiftgelu", "int16", 11, "int8", 3, 2),
    ],
)
def test_gelu_rtl_matches_model(method, idt, f, odt, of, lanes):
    cfg = GeluConfig(
        method=method, in_dtype=idt, in_frac=f, out_dtype=odt, out_frac=of, lanes=lanes, depth=512
    )
    fmt = cfg.in_fmt
    if fmt.width == 8:
        x = torch.arange(fmt.min, fmt.max + 1)  # every input value
    else:  # the extremes, around zero, and a seeded sample of the rest
        gen = torch.Generator().manual_seed(7)
        x = torch.cat(
            [
                torch.tensor([fmt.min, fmt.min + 1, fmt.max - 1, fmt.max]),
                torch.arange(-70, 70),
                torch.randint(fmt.min, fmt.max + 1, (112,), generator=gen),
            ]
        )
    n = 43  # not a multiple of the lane counts
    rows = -(-x.numel() // n)
    x = torch.cat([x, torch.zeros(rows * n - x.numel(), dtype=torch.int64)]).view(rows, n)
    wpr = -(-n // lanes)
    sim = EngineSim(GeluEngine(cfg))
    # two instructions back to back, the second on rows 1.., written after row 0's results
    instrs = [
        pack_row_instr(OP, src=0, dst=0, length=n, rows=1),
        pack_row_instr(OP, src=wpr, dst=wpr, length=n, rows=rows - 1),
    ]
    res = sim.run([("in", x, 0)], instrs, [("out", 0, rows, n)], cmd_gap=3)
    assert [e for _, e in res["done"]] == [0, 0]
    expected = gelu_model(x, cfg)
    got = torch.from_numpy(res["out"][0])
    assert torch.equal(got, expected), (got != expected).nonzero()[:5]


def test_gelu_rtl_throughput_and_latency():
    cfg = GeluConfig(method="rom", in_dtype="int8", in_frac=4, lanes=4, depth=256)
    eng = GeluEngine(cfg)
    sim = EngineSim(eng)
    x = torch.randint(-128, 128, (4, 200), generator=torch.Generator().manual_seed(3))
    res = sim.run([("in", x, 0)], [pack_row_instr(OP, src=0, dst=0, length=200, rows=4)], [])
    assert res["done"][0][0] == eng.cycles(200, 4)
    res = sim.run([("in", x, 0)], [pack_row_instr(OP, src=0, dst=0, length=7, rows=3)], [])
    assert res["done"][0][0] == eng.cycles(7, 3)


@pytest.mark.parametrize(
    "fields,code",
    [
        ({"src": 0, "dst": 0, "length": 0, "rows": 1}, 0x11),
        ({"src": 0, "dst": 0, "length": 65, "rows": 1}, 0x11),  # max_len 64
        ({"src": 0, "dst": 0, "length": 4, "rows": 0}, 0x11),
        ({"src": 15, "dst": 0, "length": 5, "rows": 1}, 0x12),  # 2 words from 15 > depth 16
        ({"src": 0, "dst": 10, "length": 8, "rows": 4}, 0x12),
    ],
)
def test_gelu_rtl_rejects(fields, code):
    cfg = GeluConfig(lanes=4, depth=16, max_len=64)
    sim = EngineSim(GeluEngine(cfg))
    res = sim.run([], [pack_row_instr(OP, **fields), pack_row_instr(OP, src=0, dst=0, length=4,
                                                                   rows=1)], [])
    assert [e for _, e in res["done"]] == [code, 0]


def test_gelu_config_errors():
    with pytest.raises(ValueError, match=r"^lanes must be an integer in 1..16, not 17$"):
        GeluConfig(lanes=17)
    with pytest.raises(ValueError, match=r"^method must be rom or shiftgelu, not 'poly'$"):
        GeluConfig(method="poly")
    with pytest.raises(ValueError, match=r"^in_frac must be an integer in 0..7, not 8$"):
        GeluConfig(in_dtype="int8", in_frac=8)
    with pytest.raises(ValueError, match=r"^in_dtype must be one of int8, int16, not 'int4'$"):
        GeluConfig(in_dtype="int4")
    with pytest.raises(ValueError, match=r"^depth must be a power of two in 16..65536, not 100$"):
        GeluConfig(depth=100)
    with pytest.raises(TypeError, match=r"^config must be a GeluConfig, not 3$"):
        GeluEngine(3)
