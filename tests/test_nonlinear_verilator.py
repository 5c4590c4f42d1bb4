"""The nonlinear engines' generated Verilog under Verilator (cocotb) == golden models.

Each case packs model inputs into the engine's host window, runs instructions back to back with
random gaps on the command stream, and compares every result word and every cycle count with the
golden model and the engine's cycle model.
"""

from __future__ import annotations

import json

import pytest
import torch

from gatesmith.generators.gelu.config import GeluConfig
from gatesmith.generators.gelu.engine import GeluEngine
from gatesmith.generators.gelu.model import gelu_model
from gatesmith.generators.layernorm.config import LayerNormConfig
from gatesmith.generators.layernorm.engine import LayerNormEngine
from gatesmith.generators.layernorm.model import layernorm_model
from gatesmith.generators.softmax.config import SoftmaxConfig
from gatesmith.generators.softmax.engine import SoftmaxEngine
from gatesmith.generators.softmax.model import softmax_model
from gatesmith.hdl.nonlinear_common import pack_row_instr
from gatesmith.host.nonlinear import pack_rows
from gatesmith.sim.cocotb_runner import run_cocotb, verilog_of


def _region(eng, name):
    return {w.name: w for w in eng.windows()}[name]


def _words(eng, name, x):
    w = _region(eng, name)
    return pack_rows(x, lanes=eng.lanes, width=w.width // eng.lanes, stride=w.stride).tolist()


def _edge_logits(fmt, rows, n, gen):
    x = torch.randint(-60, 60, (rows, n), generator=gen)
    x[0] = torch.randint(fmt.min + 1, fmt.max + 1, (n,), generator=gen)  # wide
    x[1] = 9  # all equal
    x[2] = fmt.min + 1
    x[2, n // 3] = fmt.max  # one-hot at the extremes
    x[3, ::2] = fmt.min  # masked entries
    x[4] = fmt.min  # fully masked
    x[5] = torch.arange(n) * (fmt.max // n)  # ascending
    return x


def _case(tmp_path, eng, writes, instrs, expect, errors, cycles, seed=3, gap=3):
    case = {
        "seed": seed,
        "cmd_gap": gap,
        "writes": writes,
        "instrs": instrs,
        "expect": expect,
        "errors": errors,
        "cycles": cycles,
        "max_cycles": 200000,
        "bad_addr": (1 << 22) - 1,
    }
    path = tmp_path / "case.json"
    path.write_text(json.dumps(case))
    name = type(eng).__name__.lower()
    run_cocotb(
        verilog_of(eng, name=name),
        toplevel=name,
        test_module="gatesmith.tests.bench_nonlinear_rows",
        env={"NL_CASE": str(path)},
    )


def _two_instrs(op, n, lanes, rows, split):
    wpr = -(-n // lanes)
    return [
        pack_row_instr(op, src=0, dst=0, length=n, rows=split),
        pack_row_instr(op, src=split * wpr, dst=split * wpr, length=n, rows=rows - split),
    ]


def _out_base(eng):
    return _region(eng, "out").offset


@pytest.mark.parametrize("method", ["online", pytest.param("shiftmax", marks=pytest.mark.slow)])
def test_softmax_verilator(tmp_path, method):
    cfg = SoftmaxConfig(method=method, in_dtype="int16", in_frac=8, lanes=4, depth=256)
    eng = SoftmaxEngine(cfg)
    gen = torch.Generator().manual_seed(21)
    rows, n = 10, 37
    x = _edge_logits(cfg.in_fmt, rows, n, gen)
    expect = softmax_model(x, cfg)
    instrs = _two_instrs(0x20, n, cfg.lanes, rows, 4) + [
        pack_row_instr(0x20, src=250, dst=0, length=n, rows=1)  # runs past the memory
    ]
    _case(
        tmp_path, eng,
        writes=[(_region(eng, "in").offset, _words(eng, "in", x))],
        instrs=instrs,
        expect=[(_out_base(eng), _words(eng, "out", expect))],
        errors=[0, 0, 0x12],
        cycles=[eng.cycles(n, 4), eng.cycles(n, rows - 4, masked_rows=1), None],
    )


@pytest.mark.parametrize("method", ["rom", pytest.param("shiftgelu", marks=pytest.mark.slow)])
def test_gelu_verilator(tmp_path, method):
    cfg = GeluConfig(method=method, in_dtype="int8", in_frac=4, lanes=4, depth=128)
    eng = GeluEngine(cfg)
    x = torch.arange(-128, 128).view(4, 64)[:, :61]  # every value but 12, rows of 61
    x = torch.cat([x, torch.tensor([[-128, 127, 0, -1] * 15 + [7]])])
    rows, n = x.shape
    expect = gelu_model(x, cfg)
    _case(
        tmp_path, eng,
        writes=[(_region(eng, "in").offset, _words(eng, "in", x))],
        instrs=_two_instrs(0x21, n, cfg.lanes, rows, 2),
        expect=[(_out_base(eng), _words(eng, "out", expect))],
        errors=[0, 0],
        cycles=[eng.cycles(n, 2), eng.cycles(n, rows - 2)],
    )


def test_layernorm_verilator(tmp_path):
    cfg = LayerNormConfig(in_dtype="int16", in_frac=8, lanes=3, depth=128, max_len=128)
    eng = LayerNormEngine(cfg)
    gen = torch.Generator().manual_seed(8)
    rows, n = 6, 50
    x = torch.randint(-2000, 2000, (rows, n), generator=gen)
    x[0] = torch.randint(-32768, 32768, (n,), generator=gen)
    x[1] = -7  # all equal
    x[2] = -32768
    x[2, 5] = 32767  # one-hot at the extremes
    x[3] = torch.randint(-2, 3, (n,), generator=gen)  # tiny variance
    gam = torch.randint(-(2**14), 2**14, (1, n), generator=gen)
    bet = torch.randint(-(2**13), 2**13, (1, n), generator=gen)
    expect = layernorm_model(x, gam[0], bet[0], cfg)
    _case(
        tmp_path, eng,
        writes=[
            (_region(eng, "in").offset, _words(eng, "in", x)),
            (_region(eng, "gamma").offset, _words(eng, "gamma", gam)),
            (_region(eng, "beta").offset, _words(eng, "beta", bet)),
        ],
        instrs=_two_instrs(0x22, n, cfg.lanes, rows, 3),
        expect=[(_out_base(eng), _words(eng, "out", expect))],
        errors=[0, 0],
        cycles=[eng.cycles(x[:3].tolist()), eng.cycles(x[3:].tolist())],
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", ["online", "shiftmax"])
def test_softmax_verilator_longest_rows(tmp_path, method):
    """Rows of 4096 (the longest) with 16 lanes: the running sums at their largest."""
    cfg = SoftmaxConfig(method=method, in_dtype="int16", in_frac=8, lanes=16, depth=1024)
    eng = SoftmaxEngine(cfg)
    gen = torch.Generator().manual_seed(31)
    n = 4096
    x = torch.stack(
        [
            torch.full((n,), 32767),  # all equal at the maximum: l = 4096 * 2**16
            torch.randint(-32767, 32768, (n,), generator=gen),
            torch.arange(n) * 8 - 16384,  # ascending: 4096 rescalings
            torch.where(torch.arange(n) % 7 == 0, -32768, 100),  # masked entries
        ]
    )
    expect = softmax_model(x, cfg)
    assert (expect[0] == 8).all()  # 2**15 / 4096
    _case(
        tmp_path, eng,
        writes=[(_region(eng, "in").offset, _words(eng, "in", x))],
        instrs=[pack_row_instr(0x20, src=0, dst=0, length=n, rows=4)],
        expect=[(_out_base(eng), _words(eng, "out", expect))],
        errors=[0],
        cycles=[eng.cycles(n, 4)],
        gap=0,
    )


@pytest.mark.slow
def test_layernorm_verilator_longest_rows(tmp_path):
    """Rows of 4096 at the input extremes: the sum and the sum of squares at their largest."""
    cfg = LayerNormConfig(in_dtype="int16", in_frac=8, lanes=16, depth=1024, max_len=4096)
    eng = LayerNormEngine(cfg)
    n = 4096
    alt = torch.where(torch.arange(n) % 2 == 0, 32767, -32768)
    x = torch.stack([alt, torch.full((n,), -32768), torch.where(torch.arange(n) < 4095, 32767,
                                                                -32768)])  # fmt: skip
    gam = torch.full((1, n), 2**15 - 1)
    bet = torch.full((1, n), -(2**15))
    expect = layernorm_model(x, gam[0], bet[0], cfg)
    _case(
        tmp_path, eng,
        writes=[
            (_region(eng, "in").offset, _words(eng, "in", x)),
            (_region(eng, "gamma").offset, _words(eng, "gamma", gam)),
            (_region(eng, "beta").offset, _words(eng, "beta", bet)),
        ],
        instrs=[pack_row_instr(0x22, src=0, dst=0, length=n, rows=3)],
        expect=[(_out_base(eng), _words(eng, "out", expect))],
        errors=[0],
        cycles=[eng.cycles(x.tolist())],
        gap=0,
    )
