"""The three accelerator variants of one compiled schedule give the same outputs, on the board.

``specialise`` (host/compiler/specialise.py) cuts an accelerator down to a schedule and emits
two baselines: pure dataflow (every on-chip connection) and pure sequential (no COPY: every op
its own program through device memory, attention chains op by op). Each variant compiles the
model again for its own config; the outputs must equal the original schedule's bit for bit,
in the golden model and on the simulated board, for a BERT-style encoder and a GPT-style
(causal) decoder block. The compile modes give the same outputs too (``mode="sequential"``
runs the attention chains op by op on the accelerator that could run them on chip).
"""

import gatesmith.host
import pytest
import torch
from gatesmith.host.compiler import DeviceBackend, compile
from gatesmith.host.compiler.fuse import attention_ops
from gatesmith.host.compiler.golden import GoldenBackend
from gatesmith.host.compiler.specialise import VARIANTS, specialise

from gatesmith.host.attention import attention_int_golden

from .test_compiler import CALIB, CFG, HELD_OUT, SEQ, Decoder, Encoder, _model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def compiled():
    out = {}
    for name, cls in (("encoder", Encoder), ("decoder", Decoder)):
        base = compile(_model(cls), CALIB[0], CFG, calibration=CALIB)
        out[name] = {"base": base}
        for v in VARIANTS:
            # named as CFG: where a variant's hardware equals CFG's it shares CFG's build
            cfg, _ = specialise(base, variant=v, name=f"{CFG.name}_seq" if v == "sequential"
                                else CFG.name)  # fmt: skip
            out[name][v] = compile(_model(cls), CALIB[0], cfg, calibration=CALIB)
        out[name]["mode_seq"] = compile(_model(cls), CALIB[0], CFG, calibration=CALIB,
                                        mode="sequential")  # fmt: skip
    return out


def test_where_the_chains_run(compiled):
    for name, cs in compiled.items():
        on = {v: {r for e, r in c.placement.values() if e == "attention"} for v, c in cs.items()}
        assert any(r.startswith("fused attention:") for r in on["schedule"]), name
        assert any(r.startswith("fused attention:") for r in on["dataflow"]), name
        seq = [r for r in on["sequential"] if not r.startswith("in the attention chain")]
        assert seq and all(r.startswith("attention chain, op by op (fused attention needs the "
                                        "on-chip COPY unit") for r in seq), seq  # fmt: skip
        mode_seq = [r for r in on["mode_seq"] if not r.startswith("in the attention chain")]
        assert mode_seq and all("(the sequential mode)" in r for r in mode_seq), mode_seq
        assert not cs["sequential"].config.copy_unit and cs["dataflow"].config.copy_unit
        assert cs["schedule"].config == CFG == cs["dataflow"].config  # nothing unused to drop
        md = cs["mode_seq"].report.to_markdown()
        assert "| attention | dataflow |" not in md and "| attention | sequential |" in md
        assert "| attention | dataflow |" in cs["schedule"].report.to_markdown()


def test_golden_outputs_identical(compiled):
    for name, cs in compiled.items():
        ref = cs["base"].run(HELD_OUT)
        for v, c in cs.items():
            assert torch.equal(c.run(HELD_OUT), ref), (name, v)
        want = _model(Encoder if name == "encoder" else Decoder)(*HELD_OUT)
        cos = torch.nn.functional.cosine_similarity(ref.flatten(), want.flatten(), dim=0)
        assert cos >= 0.99, (name, float(cos))


def test_attention_ops_equal_the_fused_model():
    """Op by op through the golden backend == the fused chain's bit-exact model, with the
    edges: saturating scores (a large mult), a causal mask with an offset diagonal, and an
    all-extreme head."""
    g = torch.Generator().manual_seed(5)
    be = GoldenBackend(CFG)
    sm = CFG.engine("softmax")
    H, S, D = 3, SEQ, 16
    q = torch.randint(-128, 128, (H, S, D), generator=g, dtype=torch.int8)
    k = torch.randint(-128, 128, (H, S, D), generator=g, dtype=torch.int8)
    v = torch.randint(-128, 128, (H, S, D), generator=g, dtype=torch.int8)
    q[0], k[0] = -128, 127  # every score the most negative one: saturates at the format's min
    for mult, shift, causal, diag in ((1 << 14, 20, False, 0), (1 << 30, 12, False, 0),
                                      (12345, 18, True, 0), (999, 15, True, 2)):  # fmt: skip
        calls: list = []
        got = attention_ops(be, q, k, v, mult, shift, causal=causal, diag=diag, calls=calls)
        want = attention_int_golden(q, k, v, mult, shift, sm, causal=causal, diag=diag)
        assert torch.equal(got, want), (mult, shift, causal, diag)
        assert [c[1] for c in calls] == ["systolic"] * H + ["softmax"] + ["systolic"] * H


def test_variants_identical_on_the_board(compiled):
    """Each variant's accelerator runs its compile of both blocks: the outputs equal the
    schedule's golden outputs bit for bit (the schedule and dataflow variants of these blocks
    have CFG's hardware and share its build; the sequential one has no COPY unit)."""
    for name, cs in compiled.items():
        for v in VARIANTS:
            with gatesmith.host.open("sim", config=cs[v].config) as dev:
                be = DeviceBackend(dev)
                y = cs[v].run(HELD_OUT, be)
                be.close()
            assert torch.equal(y, cs["base"].run(HELD_OUT)), (name, v)
            chain = [r for r in cs[v].report.rows if r["engine"] == "attention" and r["measured"]]
            assert chain and all(r["measured"]["words"] == r["words"] for r in chain), chain
