"""Offloaded decode attention (``offload_attention=True``): the KV-cache decoder's decode-step
attention, ``softmax(q K^T / sqrt(D) + mask) V`` over the cache, runs as one on-chip program per
layer (``host.attention.attention_int`` with one query row, the prefix mask as the COPY's causal
mask) while the rest stays where the placement puts it. The program equals its golden model for
every position; the split equals the golden composition bit for bit on the simulated board
(the systolic + softmax + PIM config of test_pim_route.py).
"""

from __future__ import annotations

import gatesmith
import gatesmith.host
import pytest
import torch
from gatesmith.errors import UsageError
from gatesmith.host.attention import attention_int, attention_int_golden
from gatesmith.host.compiler.decode_attention import fuse_decode_attention
from gatesmith.host.compiler.graph import capture
from gatesmith.host.compiler.report import place

from gatesmith.cli import main

from .test_pim_route import CFG, EXAMPLES, SLOW_HOST, _example


def _compile(dec, device="golden", placement="host", offload=True):
    return gatesmith.compile(dec.model(), dec.example_inputs(), device=device, config=CFG,
                             host="cpu", placement=placement, calibration=dec.calibration(),
                             host_roofline=SLOW_HOST, offload_attention=offload)  # fmt: skip


@pytest.fixture(scope="module")
def offloaded():
    dec = _example("gpt_decoder")
    return dec, _compile(dec)


def test_the_option_moves_each_decode_attention_and_only_it_with_its_reason(offloaded):
    dec, g = offloaded
    on = sorted(g.accel_ops())
    assert on == ["matmul", "matmul_1", "matmul_2", "matmul_3", "softmax", "softmax_1"]
    assert len(g.parts) == 2  # one program per layer
    for name in on:
        assert g.decisions[name].reason.startswith(
            "decode attention offloaded (option): one on-chip program for 2 heads over 16 keys, ")
    assert g.decisions["add_3"].device == "fused"
    assert g.decisions["add_3"].reason == "the additive mask, as the COPY's causal mask"
    assert "| matmul_1 | matmul | accel | systolic |" in g.report()
    ir = capture(dec.model(), dec.example_inputs())
    placed = place(ir, CFG)
    assert fuse_decode_attention(ir, placed, CFG).keys() == {"matmul_1", "matmul_3"}
    assert place(ir, CFG)["add_3"][0] == "host"  # without the option, the mask add stays
    prompt = dec.prompts(1, seed=21)[0]
    with torch.no_grad():
        ref = dec.generate(dec.model(), prompt, 4)
    out = dec.generate(g, prompt, 4)
    assert sum(a == b for a, b in zip(out[4:], ref[4:])) >= 2, (out, ref)


def test_a_mask_that_is_not_a_prefix_is_refused(offloaded):
    dec, g = offloaded
    ids, pos, mask, k, v = dec.example_inputs()
    holes = mask.clone()
    holes[0, :3] = torch.tensor([0.0, -1e9, 0.0])
    with pytest.raises(UsageError) as e:
        g(ids, pos, holes, k, v)
    assert str(e.value) == ("offloaded decode attention: the visible keys must be a prefix "
                            "0..t, the same for every head")  # fmt: skip
    bias = mask.clone()
    bias[0, 0] = -3.0
    with pytest.raises(UsageError) as e:
        g(ids, pos, bias, k, v)
    assert str(e.value) == ("offloaded decode attention: the additive mask must hold 0 "
                            "(visible) or <= -10000 (masked) only")  # fmt: skip


def test_cli_run_with_offloaded_attention(capsys):
    code = main(["run", str(EXAMPLES / "gpt_decoder.py"), "--config",
                 str(EXAMPLES / "pim_split.yaml"), "--device", "golden", "--placement", "host",
                 "--host", "cpu", "--offload-attention"])  # fmt: skip
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "| matmul_1 | matmul | accel | systolic |" in cap.out
    assert "decode attention offloaded (option)" in cap.out
    assert "6 ops on the accelerator in 2 partitions" in cap.out


def test_decode_attention_on_the_board_equals_golden_program_and_split():
    dec = _example("gpt_decoder")
    gen = torch.Generator().manual_seed(17)
    sm = CFG.engine("softmax")
    H, K, D = 2, 16, 16
    with gatesmith.host.open("sim", config=CFG) as dev:
        for t in (0, 5, 15):
            qq = torch.randint(-127, 128, (H, 1, D), generator=gen, dtype=torch.int8)
            kq = torch.randint(-127, 128, (H, K, D), generator=gen, dtype=torch.int8)
            vq = torch.randint(-127, 128, (H, K, D), generator=gen, dtype=torch.int8)
            mult, shift = [301, 517], [16, 17]
            got = attention_int(dev, qq, kq, vq, mult, shift, causal=True, diag=t)
            want = attention_int_golden(qq, kq, vq, mult, shift, sm, causal=True, diag=t)
            assert torch.equal(got, want), t
        g = _compile(dec, device=dev, placement="accelerator")
        assert {g.decisions[n].engine for n in ("matmul", "softmax", "matmul_1")} == {
            "systolic", "softmax"}
        for r in dec.requests()[2:4]:
            y = g(*r)
            assert all(torch.equal(a, b) for a, b in zip(y, g(*r, backend="golden"), strict=True))
        table = g.report()
        g.close()
    row = next(line for line in table.splitlines() if line.startswith("| matmul_1 "))
    assert "(board)" in row and "decode attention offloaded" in row
