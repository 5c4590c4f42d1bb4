"""GEMV work on the PIM banks through the compiler: ``M = 1`` linears (the KV-cache decoder's
every GEMM, its classifier head) are routed to the PIM engine when its modelled program beats
the systolic engine's; the golden model of the route is the PIM engine's own
(``generators/pim/model.py`` through the mapper's plan), and the simulated board (systolic +
softmax + PIM, built once for this file and test_attention_offload.py) equals it bit for bit.
"""

from __future__ import annotations

import pathlib

import gatesmith
import gatesmith.host
import pytest
import torch
from gatesmith.config import AccelConfig, load_config
from gatesmith.generators.pim.config import PimConfig
from gatesmith.generators.pim.model import reference_gemv
from gatesmith.host.compiler.graph import capture
from gatesmith.host.compiler.pim import gemv_golden, gemv_program_cycles, route_gemv
from gatesmith.host.compiler.report import place, predict
from gatesmith.host.pim import _dev_state as pim_state

from .test_torch_backend import SLOW_HOST, _example

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
CFG = load_config(str(EXAMPLES / "pim_split.yaml"))  # systolic 4x4, softmax, PIM 4 x 4 lanes
PIM = CFG.engine("pim")


def _compile(dec, device="golden", config=CFG, placement="accelerator"):
    return gatesmith.compile(dec.model(), dec.example_inputs(), device=device, config=config,
                             host="cpu", placement=placement, calibration=dec.calibration(),
                             host_roofline=SLOW_HOST)  # fmt: skip


@pytest.mark.parametrize("n,k", [(64, 32), (32, 64), (5, 17), (1, 64), (33, 40), (7, 64)])
def test_pim_golden_gemv_is_the_wrapped_integer_product(n, k):
    g = torch.Generator().manual_seed(n * 100 + k)
    w = torch.randint(-128, 128, (n, k), generator=g)
    x = torch.randint(-128, 128, (k,), generator=g)
    assert torch.equal(gemv_golden(PIM, w, x), reference_gemv(w, x, PIM.acc_width))


def test_decoder_gemvs_go_where_the_cycle_models_say_with_the_reason():
    dec = _example("gpt_decoder")
    g = _compile(dec)
    lin = {k: d for k, d in g.decisions.items() if d.kind == "linear"}
    assert len(lin) == 1 + 2 * 6 + 1  # position, 6 per block, the head
    on_pim = 0
    for name, d in lin.items():
        op = g.ir.op(name)
        k, n = g.ir.op(op.inputs[0]).shape[-1], op.shape[-1]
        p = gemv_program_cycles(CFG, n, k)["program"]
        s = predict("systolic", [(1, k, n)], CFG)["program"]
        assert d.device == "accel" and d.engine == ("pim" if p < s else "systolic"), name
        if d.engine == "pim":
            on_pim += 1
            assert d.reason.endswith(f"; GEMV (M = 1) on the PIM banks: {p:,} cycles vs systolic "
                                     f"{s:,} (modelled programs; weights resident)")  # fmt: skip
            assert d.reason.startswith("accelerator-only placement (pim ")
        else:
            assert d.reason.endswith(f"; GEMV (M = 1): systolic {s:,} cycles <= PIM {p:,} "
                                     "(modelled programs)")  # fmt: skip
    assert on_pim >= 12  # every 32- and 64-wide projection, the FFN and the head
    assert "| linear_13 | linear | accel | pim |" in g.report()
    x = dec.requests()[3]  # a decode step against the float model
    with torch.no_grad():
        want = dec.model()(*x)[0]
    cos = torch.nn.functional.cosine_similarity(g(*x)[0].flatten(), want.flatten(), dim=0)
    assert cos > 0.99, cos


def test_gemms_with_rows_stay_on_the_systolic_engine_and_unfit_pim_configs_say_why():
    enc = _example("encoder_block")
    g = gatesmith.compile(enc.model(), enc.example_inputs(), device="golden", config=CFG,
                          host="cpu", placement="accelerator", host_roofline=SLOW_HOST)  # fmt: skip
    assert {d.engine for d in g.decisions.values() if d.kind == "linear"} == {"systolic"}
    dec = _example("gpt_decoder")
    ir = capture(dec.model(), dec.example_inputs())
    int4 = AccelConfig(name="pim_int4", engines=(*CFG.engines[:2], PimConfig(
        banks=4, lanes=8, row_size=32, rows_per_bank=256, vector_depth=64, dtype="int4")))
    placed = place(ir, int4)
    why = route_gemv(ir, placed, int4)
    assert placed["linear_13"] == ("systolic", why["linear_13"])
    assert why["linear_13"] == ("GEMV stays off the PIM banks: the PIM engine's int4 operands "
                                "cannot hold int8")  # fmt: skip
    small = AccelConfig(name="pim_small", engines=(*CFG.engines[:2], PimConfig(
        banks=4, lanes=4, row_size=32, rows_per_bank=16, vector_depth=64)))
    placed = place(ir, small)
    why = route_gemv(ir, placed, small)
    engines = [placed[n][0] for n in why]
    assert "pim" in engines and "systolic" in engines  # the banks fill up, the rest stays
    full = [n for n, r in why.items() if "cannot hold the weights" in r]
    assert full and all(placed[n][0] == "systolic" for n in full)


def test_pim_without_a_systolic_engine_takes_the_gemvs():
    dec = _example("gpt_decoder")
    cfg = AccelConfig(name="pim_softmax", engines=(CFG.engines[0], PIM))
    g = _compile(dec, config=cfg)
    lin = [d for d in g.decisions.values() if d.kind == "linear"]
    assert all(d.engine == "pim" and "(no systolic engine)" in d.reason for d in lin)
    x = dec.requests()[3]
    with torch.no_grad():
        want = dec.model()(*x)[0]
    cos = torch.nn.functional.cosine_similarity(g(*x)[0].flatten(), want.flatten(), dim=0)
    assert cos > 0.99, cos


def test_decode_steps_on_the_board_equal_the_golden_model_bit_for_bit():
    dec = _example("gpt_decoder")
    reqs = dec.requests()[:2]
    with gatesmith.host.open("sim", config=CFG) as dev:
        g = _compile(dec, device=dev)
        for r in reqs:
            y = g(*r)
            assert all(torch.equal(a, b) for a, b in zip(y, g(*r, backend="golden"), strict=True))
        g(*reqs[0])
        table = g.report()
        assert pim_state(dev).next_row > 0
        g.close()
        assert pim_state(dev).next_row == 0  # the banks' rows are given back
    assert "| linear_13 | linear | accel | pim |" in table
    row = next(line for line in table.splitlines() if line.startswith("| linear_13 "))
    assert "(board)" in row
