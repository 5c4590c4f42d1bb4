"""The schedule compiler's front end: capture, quantisation, the golden executor, placement,
the artefact and the CLI; and one run on the simulated board equal to the golden run bit for bit.

Models are seeded BERT-style (post-LN) encoder and GPT-style (pre-LN, causal mask) decoder
blocks: hidden 32, 2 heads, FFN 64, sequence 8. Accuracy is stated against the float model on a
held-out input (cosine of the block output >= 0.99; measured ~0.9999).
"""

from __future__ import annotations

import math
import textwrap

import gatesmith.host
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from gatesmith.generators.gelu.config import GeluConfig
from gatesmith.generators.layernorm.config import LayerNormConfig
from gatesmith.generators.softmax.config import SoftmaxConfig
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.hdl.formats import IntFormat
from gatesmith.hdl.requant import dyadic, requant
from gatesmith.host.compiler import Compiled, DeviceBackend, GoldenBackend, capture, compile
from gatesmith.host.compiler.quant import QT, dyadic_t, requant_t, to_int
from hypothesis import given, settings
from hypothesis import strategies as st

from gatesmith.cli import main
from gatesmith.config import AccelConfig
from gatesmith.errors import CompileError, UsageError

SEED = 20261202
CFG = AccelConfig(name="chain", engines=(
    GeluConfig(lanes=4, depth=64, max_len=64),
    LayerNormConfig(lanes=4, depth=64, max_len=64),
    SoftmaxConfig(lanes=4, depth=64, max_len=64),
    SystolicConfig(rows=4, cols=4, spad_depth=128, acc_depth=64,
                   dataflows=("os", "ws"))))  # fmt: skip
H, HEADS, FFN, SEQ = 32, 2, 64, 8


class Attention(nn.Module):
    def __init__(self, causal: bool):
        super().__init__()
        self.causal = causal
        self.q, self.k, self.v, self.o = (nn.Linear(H, H) for _ in range(4))
        if causal:
            self.register_buffer("mask", torch.tril(torch.ones(16, 16)).view(1, 1, 16, 16))

    def forward(self, x):
        b, s, h = x.shape
        d = h // HEADS
        q, k, v = (f(x).view(b, s, HEADS, d).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = (q @ k.transpose(-2, -1)) / math.sqrt(d)
        if self.causal:
            a = a.masked_fill(self.mask[:, :, :s, :s] == 0, float("-inf"))
        y = a.softmax(-1) @ v
        return self.o(y.transpose(1, 2).contiguous().view(b, s, h))


class Encoder(nn.Module):
    """BERT-style: post-LN, erf GELU."""

    def __init__(self):
        super().__init__()
        self.attn, self.ln1 = Attention(False), nn.LayerNorm(H)
        self.f1, self.f2, self.ln2 = nn.Linear(H, FFN), nn.Linear(FFN, H), nn.LayerNorm(H)

    def forward(self, x):
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.f2(F.gelu(self.f1(x))))


class Decoder(nn.Module):
    """GPT-style: pre-LN, causal mask, tanh GELU."""

    def __init__(self):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(H), Attention(True)
        self.ln2, self.f1, self.f2 = nn.LayerNorm(H), nn.Linear(H, FFN), nn.Linear(FFN, H)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.f2(F.gelu(self.f1(self.ln2(x)), approximate="tanh"))


class WithCumsum(Encoder):
    def forward(self, x):
        return torch.cumsum(super().forward(x), dim=1) / SEQ


def _model(cls):
    torch.manual_seed(SEED)
    return cls().eval()


def _inputs(n, seed=SEED):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, SEQ, H, generator=g),) for _ in range(n)]


def _cos(a, b):
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


CALIB = _inputs(8)
HELD_OUT = _inputs(1, seed=SEED + 1)[0]


@pytest.fixture(scope="module")
def encoder():
    m = _model(Encoder)
    return m, compile(m, CALIB[0], CFG, calibration=CALIB)


# ---- accuracy of the golden run -----------------------------------------------------------------


def test_encoder_golden_matches_float(encoder):
    m, c = encoder
    with torch.no_grad():
        ref = m(*HELD_OUT)
    assert torch.allclose(c.run_float(HELD_OUT), ref, atol=1e-5)  # the capture is exact
    y = c.run(HELD_OUT)
    cos = _cos(y, ref)
    print(f"seed {SEED}: encoder cosine {cos:.6f}, max abs error {(y - ref).abs().max():.4f}")
    assert cos >= 0.99
    engines = {r["op"]: r["engine"] for r in c.report.rows}
    kinds = {r["op"]: r["kind"] for r in c.report.rows}
    on = lambda e: sorted(kinds[o] for o, v in engines.items() if v == e)  # noqa: E731
    assert on("systolic") == ["linear"] * 6  # the attention matmuls are fused (below)
    assert on("attention") == ["matmul", "matmul", "scale", "softmax"] and on("gelu") == ["gelu"]
    assert on("layernorm") == ["layer_norm"] * 2 and on("host") == ["add", "add"]


def test_decoder_causal_mask_golden_matches_float():
    m = _model(Decoder)
    c = compile(m, CALIB[0], CFG, calibration=CALIB)
    masks = [o for o in c.graph.ops if o.kind == "mask"]
    assert len(masks) == 1 and masks[0].attrs["fill"] == float("-inf")
    assert torch.equal(c.graph.consts[masks[0].attrs["mask"]][0, 0],
                       torch.ones(SEQ, SEQ).triu(1).bool())  # fmt: skip
    gelu = next(r for r in c.report.rows if r["kind"] == "gelu")
    assert (gelu["engine"], gelu["reason"]) == (
        "gelu", "tanh GELU computed as erf GELU (they differ by <= 4.7e-4)")
    with torch.no_grad():
        ref = m(*HELD_OUT)
    y = c.run(HELD_OUT)
    cos = _cos(y, ref)
    print(f"seed {SEED}: decoder cosine {cos:.6f}, max abs error {(y - ref).abs().max():.4f}")
    assert cos >= 0.99


def test_per_tensor_granularity():
    m = _model(Encoder)
    c = compile(m, CALIB[0], CFG, calibration=CALIB, granularity="tensor")
    assert all(v["a_scale"].dim() == 0 for v in c.consts.values() if "a_scale" in v)
    with torch.no_grad():
        assert _cos(c.run(HELD_OUT), m(*HELD_OUT)) >= 0.99


def test_unsupported_op_goes_to_host_and_stays_right():
    m = _model(WithCumsum)
    c = compile(m, CALIB[0], CFG, calibration=CALIB)
    row = next(r for r in c.report.rows if r["kind"] == "host")
    assert (row["op"], row["engine"], row["reason"]) == (
        "cumsum", "host", "aten.cumsum.default has no engine")
    with torch.no_grad():
        assert _cos(c.run(HELD_OUT), m(*HELD_OUT)) >= 0.99


@pytest.mark.parametrize("cfg, op, reason", [
    (AccelConfig(name="nogelu", engines=CFG.engines[1:]), "gelu",
     "the accelerator has no gelu engine (it has: layernorm, softmax, systolic)"),
    (AccelConfig(name="shortln", engines=(LayerNormConfig(max_len=16), *CFG.engines[2:])),
     "layer_norm", "rows of 32 exceed the layernorm engine's max_len of 16"),
    (AccelConfig(name="epsln", engines=(LayerNormConfig(eps=1e-3), *CFG.engines[2:])),
     "layer_norm", "eps 1e-05 differs from the engine's 0.001"),
    (AccelConfig(name="shortsm", engines=(SoftmaxConfig(max_len=4), CFG.engines[3])),
     "softmax", "rows of 8 exceed the softmax engine's max_len of 4"),
    (AccelConfig(name="u8", engines=(SystolicConfig(rows=2, cols=2, dtype="uint8"),)),
     "linear", "the systolic engine's uint8 operands cannot hold int8"),
])  # fmt: skip
def test_op_the_config_cannot_take_goes_to_host(cfg, op, reason):
    m = _model(Encoder)
    c = compile(m, CALIB[0], cfg, calibration=CALIB[:2])
    row = next(r for r in c.report.rows if r["op"] == op)
    assert (row["engine"], row["reason"]) == ("host", reason)
    with torch.no_grad():
        assert _cos(c.run(HELD_OUT), m(*HELD_OUT)) >= 0.99


def test_capture_maps_the_aten_ops():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(H, 16))
            self.register_buffer("neg", torch.zeros(SEQ, SEQ).masked_fill(
                torch.ones(SEQ, SEQ).triu(1).bool(), -1e9))  # fmt: skip

        def forward(self, x):
            a, b = (x @ self.w).split(8, dim=-1)  # a constant weight: linear
            s = torch.mm(a[0], b[0].t()) * 0.5 + self.neg  # activations: matmul; additive mask
            s = torch.where(torch.ones(SEQ, SEQ).tril().bool(), s, float("-inf"))
            return torch.cumsum(s.softmax(-1), 0)

    torch.manual_seed(SEED)
    m = M().eval()
    g = capture(m, HELD_OUT)
    kinds = [o.kind for o in g.ops]
    assert kinds.count("linear") == 1 and kinds.count("matmul") == 1
    assert kinds.count("mask") == 2 and kinds.count("scale") == 1
    assert [o.attrs["index"] for o in g.ops if "index" in o.attrs] == [0, 1]
    lin = next(o for o in g.ops if o.kind == "linear")
    assert torch.equal(g.consts[lin.attrs["weight"]], m.w.detach().t())
    assert [o.kind for o in g.ops if o.reason] == ["host"]
    c = compile(m, HELD_OUT, CFG)
    with torch.no_grad():
        ref = m(*HELD_OUT)
        assert torch.allclose(c.run_float(HELD_OUT), ref, atol=1e-5)
        assert _cos(c.run(HELD_OUT), ref) >= 0.99


def test_capture_addmm_bmm_dropout_and_layer_norm_off_the_last_dim():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.b = nn.Parameter(torch.randn(H, H)), nn.Parameter(torch.randn(H))
            self.ln = nn.LayerNorm((SEQ, H))

        def forward(self, x):
            y = torch.addmm(self.b, x[0], self.w)[None]  # bias + x @ w: linear, bias kept
            y = F.dropout(torch.bmm(y, y.transpose(1, 2)), 0.1, training=False) @ y
            return self.ln(y)

    torch.manual_seed(SEED)
    m = M().eval()
    g = capture(m, HELD_OUT)
    lin = next(o for o in g.ops if o.kind == "linear")
    assert torch.equal(g.consts[lin.attrs["weight"]], m.w.detach().t())
    assert torch.equal(g.consts[lin.attrs["bias"]], m.b.detach())
    assert [o.kind for o in g.ops].count("matmul") == 2
    assert [(o.kind, o.reason) for o in g.ops if o.reason] == [
        ("host", "layer_norm over [8, 32], not the last dim only")]
    c = compile(m, HELD_OUT, CFG)
    with torch.no_grad():
        ref = m(*HELD_OUT)
        assert torch.allclose(c.run_float(HELD_OUT), ref, atol=1e-4)
        assert _cos(c.run(HELD_OUT), ref) >= 0.99


# ---- quantisation properties --------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(-30, 10), st.sampled_from(["int8", "int16"]))
def test_quantisation_properties(seed, log2_ratio, fmt_name):
    g = torch.Generator().manual_seed(seed)
    fmt = IntFormat(int(fmt_name[3:]))
    q = torch.randint(-(2**31), 2**31, (4, 6), generator=g, dtype=torch.int64)
    ratio = 2.0**log2_ratio * (1 + torch.rand(4, 6, generator=g, dtype=torch.float64))
    # element-wise dyadic / requant are the hardware's scalar ones, element by element
    mult, shift = dyadic_t(ratio)
    got = requant_t(q, mult, shift, fmt)
    for i in range(4):
        for j in range(6):
            m, s = dyadic(float(ratio[i, j]))
            assert (int(mult[i, j]), int(shift[i, j])) == (m, s)
            assert int(got[i, j]) == int(requant(q[i, j], m, s, fmt))
    # to_int of a QT: within half an LSB plus the multiplier's 2**-15 relative error, saturated
    s_in = torch.rand(4, 6, generator=g, dtype=torch.float64) + 0.5
    out = to_int(QT(q, s_in), s_in / ratio, fmt)
    exact = q.double() * ratio
    bound = 0.5 + exact.abs() * 2.0**-15 + 1e-9
    ok = ((out - exact.clamp(fmt.min, fmt.max)).abs() <= bound) | (exact.abs() > fmt.max)
    assert bool(ok.all())
    assert bool(((out == fmt.max) | (out == fmt.min) | (exact.abs() <= fmt.max + 1)).all())
    # floats: round to nearest within range; -inf is the masked minimum for softmax inputs
    x = torch.randn(4, 6, generator=g, dtype=torch.float64) * 2.0 ** (log2_ratio / 4)
    x[0, 0] = float("-inf")
    sc = float(x[1:].abs().max()) / fmt.max
    xq = to_int(x, sc, fmt, masked_min=True)
    assert int(xq[0, 0]) == fmt.min and int(xq[1:].min()) >= fmt.min + 1
    assert bool(((xq[1:].double() * sc - x[1:]).abs() <= sc / 2 + 1e-12).all())


# ---- errors, in full ----------------------------------------------------------------------------


class _Raises(nn.Module):
    def forward(self, x):
        raise ValueError("no way")


@pytest.mark.parametrize("model, inputs, msg", [
    (Encoder(), (), "example_inputs must be a non-empty tuple of tensors, not an empty tuple"),
    (Encoder(), torch.zeros(1, SEQ, H),
     "example_inputs must be a non-empty tuple of tensors, not a tensor of shape (1, 8, 32)"),
    (Encoder(), (torch.zeros(1, SEQ, H),) * 2,
     "example_inputs has 2 tensors but the model's forward takes (x)"),
    (Encoder(), (3,), "example_inputs[0] must be a torch tensor, not int"),
    (_Raises(), (torch.zeros(2),),
     "the model does not trace with torch.export: ValueError: no way"),
    (lambda x: x, (torch.zeros(2),), "model must be a torch.nn.Module, not function"),
])  # fmt: skip
def test_bad_model_or_example_inputs(model, inputs, msg):
    with pytest.raises(CompileError) as e:
        compile(model, inputs, CFG)
    assert str(e.value) == msg


def test_a_model_that_does_not_trace_names_the_exception():
    with pytest.raises(CompileError) as e:
        compile(Encoder(), (torch.zeros(1, SEQ, 16),), CFG)
    assert str(e.value).startswith("the model does not trace with torch.export: RuntimeError: ")


@pytest.mark.parametrize("calib, granularity, msg", [
    ([], "row", ("the calibration set is empty: give at least one sample (a tuple of tensors "
                 "shaped like the example inputs)")),
    ([CALIB[0], (torch.zeros(1, 9, H),)], "row",
     ("calibration[1][0] has shape (1, 9, 32); the model was compiled for (1, 8, 32) "
      "(shapes are static)")),
    ([CALIB[0] * 2], "row", "calibration[0] has 2 tensors; the model was compiled for 1"),
    ([[1]], "row", "calibration[0][0] must be a torch tensor, not int"),
    (CALIB[:1], "channel", "granularity must be 'row' or 'tensor', not 'channel'"),
])  # fmt: skip
def test_bad_calibration(calib, granularity, msg):
    with pytest.raises(UsageError) as e:
        compile(Encoder().eval(), CALIB[0], CFG, calibration=calib, granularity=granularity)
    assert str(e.value) == msg


def test_bad_run_inputs_backend_and_artefact(encoder, tmp_path):
    _, c = encoder
    cases = [
        (lambda: c.run((torch.zeros(2, SEQ, H),)),
         ("inputs[0] has shape (2, 8, 32); the model was compiled for (1, 8, 32) "
          "(shapes are static)")),
        (lambda: c.run("x"), "inputs must be a tuple of tensors, not str"),
        (lambda: c.run(HELD_OUT, GoldenBackend(AccelConfig(name="other", engines=CFG.engines))),
         "the backend's accelerator (other) is not the one this model was compiled for (chain)"),
        (lambda: Compiled.load(tmp_path / "none.pt"),
         f"compiled model file {str(tmp_path / 'none.pt')!r} does not exist"),
    ]  # fmt: skip
    torch.save({"format": "other"}, tmp_path / "other.pt")
    cases.append((lambda: Compiled.load(tmp_path / "other.pt"),
                  (f"{str(tmp_path / 'other.pt')!r} is not a compiled gatesmith model "
                   "(gatesmith.compiled/1)")))  # fmt: skip
    for fn, msg in cases:
        with pytest.raises(UsageError) as e:
            fn()
        assert str(e.value) == msg


# ---- artefact, report, CLI ----------------------------------------------------------------


def test_save_load_round_trip(encoder, tmp_path):
    _, c = encoder
    c.save(tmp_path / "c.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # plain data only, no pickled code
    assert raw["format"] == "gatesmith.compiled/1"
    c2 = Compiled.load(tmp_path / "c.pt")
    assert torch.equal(c2.run(HELD_OUT), c.run(HELD_OUT))
    assert c2.report.to_dict() == c.report.to_dict()
    assert c2.config == CFG


def test_report_is_a_table_with_predicted_cycles(encoder):
    _, c = encoder
    text = str(c.report)
    assert text.splitlines()[0].startswith(
        "| op | kind | engine | mode | dataflow | tiles | in shapes | out shape | MACs"
    )
    lin = next(r for r in c.report.rows if r["op"] == "linear")
    assert lin["macs"] == SEQ * H * H and lin["predicted"] > SEQ * H * H / 16
    inside = {r["op"] for r in c.report.rows if r["reason"].startswith("fused into")}
    assert all(r["predicted"] for r in c.report.rows
               if r["engine"] not in ("host", "fused") and r["op"] not in inside)  # fmt: skip
    summary = "25 ops (attention 4, fused 10, gelu 1, host 2, layernorm 2, systolic 6); 69,632 MACs"
    assert summary in text


def test_cli_compile(tmp_path, capsys):
    (tmp_path / "m.py").write_text(textwrap.dedent(f"""
        import torch
        from gatesmith.tests.test_compiler import Encoder, _model
        def model():
            return _model(Encoder)
        def example_inputs():
            return (torch.randn(1, {SEQ}, {H}, generator=torch.Generator().manual_seed(1)),)
    """))  # fmt: skip
    (tmp_path / "accel.yaml").write_text("name: small\nengines:\n  systolic: {rows: 2, cols: 2}\n")
    out = tmp_path / "out"
    code = main(["compile", str(tmp_path / "m.py"), "--config", str(tmp_path / "accel.yaml"),
                 "-o", str(out)])  # fmt: skip
    stdout, err = capsys.readouterr()
    assert code == 0, err
    stages = [ln.split(":")[1].strip() for ln in err.splitlines() if ln.startswith("compile:")]
    assert [s.split()[0] for s in stages] == ["load", "capture", "place", "calibrate",
                                              "quantise", "schedule", "allocate", "allocate",
                                              "predict", "wrote"]  # fmt: skip
    assert "allocate: none (no candidate tensors)" in err  # no nonlinear engine: nothing to keep
    assert "the accelerator has no softmax engine (it has: systolic)" in stdout
    assert (out / "report.md").read_text().startswith("# m.py on small\n\n| op |")
    x = (torch.randn(1, SEQ, H, generator=torch.Generator().manual_seed(1)),)
    with torch.no_grad():
        assert _cos(Compiled.load(out / "compiled.pt").run(x), _model(Encoder)(*x)) >= 0.99
    (tmp_path / "bad.py").write_text("def model():\n    return None\n")
    code = main(["compile", str(tmp_path / "bad.py"), "--config", str(tmp_path / "accel.yaml"),
                 "-o", str(out)])  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 1
    assert err.splitlines()[-1] == (
        f"error: model file {str(tmp_path / 'bad.py')!r} must define a function example_inputs()")


# ---- the simulated board ------------------------------------------------------------------------


def test_device_run_equals_golden_bit_for_bit(encoder):
    """The encoder block on the simulated board (the chain config, cached by test_chain.py):
    DeviceBackend == GoldenBackend exactly, weights uploaded once, and every engine op's
    measured busy cycles equal to the cycle models' prediction."""
    _, c = encoder
    golden = c.run(HELD_OUT)
    with gatesmith.host.open("sim", config=CFG) as dev:
        be = DeviceBackend(dev)
        dev.reset_perf()
        y = c.run(HELD_OUT, be)
        perf = dev.perf()
        bufs = dict(be._weights)
        y2 = c.run(HELD_OUT, be)
        assert {k: id(v) for k, v in be._weights.items()} == {k: id(v) for k, v in bufs.items()}
        be.close()
    assert torch.equal(y, golden) and torch.equal(y2, golden)
    assert len(bufs) == 6  # one resident buffer per linear
    # the scratchpad allocation (the ILP) kept the LayerNorm -> FFN and GELU -> FFN operands on
    # chip; the board's PERF_LOAD + PERF_STORE count exactly the ILP's objective
    a = c.report.allocation
    assert a["method"] == "ilp" and a["status"] == "optimal"
    assert a["resident"] == ["gelu", "layer_norm"]
    assert perf["load"] + perf["store"] == a["objective"] < a["base"]
    for r in c.report.rows:
        if r["engine"] in ("systolic", "softmax", "gelu", "layernorm"):
            assert r["measured"]["busy"] == r["predicted"], r
            assert r["measured"]["program"] >= r["measured"]["busy"], r
        if r["engine"] in ("systolic", "softmax", "gelu", "layernorm"):
            # device-memory traffic: the counted words equal the schedule's traffic model
            assert r["measured"]["words"] == r["words"], r
        if r["engine"] == "systolic":
            assert r["schedule"]["dataflow"] in CFG.engine("systolic").dataflows
        if r["engine"] in ("systolic", "softmax", "gelu", "layernorm") and r["program"]:
            # the program model, run before the board on the plan's program: its PERF_PROGRAM
            # (exact but for where the allocator puts the buffers: 4 KiB burst splits)
            assert abs(r["program"] - r["measured"]["program"]) <= 0.03 * r["program"], r
        if r["measured"] and r["measured"]["program"] and r["engine"] != "layernorm":
            # and after the run, on the programs that ran: the board's count
            assert r["measured"]["model"] == r["measured"]["program"], r
    t = c.report.totals()
    # the block, but for LayerNorm from device buffers (its cycles depend on their data)
    assert t["model"] == t["modelled_program"] > 0
    assert t["unmodelled"] == ["layer_norm", "layer_norm_1"]
    ln = sum(r["measured"]["program"] for r in c.report.rows if r["engine"] == "layernorm")
    assert t["modelled_program"] + ln == t["program"]
    line = f"the timing model of the programs that ran: {t['model']:,} cycles"
    assert line in c.report.to_markdown()


def test_attention_fused_on_chip(encoder):
    """The encoder's matmul -> scale -> softmax -> matmul runs as one on-chip chain: the same
    result as the golden model, and device memory moves only Q, K, V in and the context out
    (the compulsory traffic, the FlashAttention bound's floor for a score tile held on chip)."""
    _, c = encoder
    fused = [n for n, (e, _) in c.placement.items() if e == "attention"]
    assert [c.graph.op(n).kind for n in fused] == ["matmul", "scale", "softmax", "matmul"]
    golden = c.run(HELD_OUT)
    with gatesmith.host.open("sim", config=CFG) as dev:
        be = DeviceBackend(dev)
        y = c.run(HELD_OUT, be)
        be.close()
    assert torch.equal(y, golden)
    seq = compile(_model(Encoder), CALIB[0], CFG, calibration=CALIB, mode="sequential")
    assert seq.placement[fused[-1]][1].startswith("attention chain, op by op (the sequential mode)")
    assert torch.equal(seq.run(HELD_OUT), golden)  # the same quantisation, run op by op
    row = next(r for r in c.report.rows if r["op"] == fused[-1])
    assert row["measured"]["words"] == row["words"]
    heads, s, d = 2, SEQ, H // 2
    assert row["words"] == heads * (3 * s * d // 4 + s * d)  # int8 Q, K, V + int32 context


def test_causal_attention_fused_on_chip():
    """The decoder's causal mask is fused too: the COPY into the softmax engine writes the
    masked scores as the format's minimum. Device == golden; cosine against float."""
    m = _model(Decoder)
    c = compile(m, CALIB[0], CFG, calibration=CALIB)
    fused = [n for n, (e, _) in c.placement.items() if e == "attention"]
    assert [c.graph.op(n).kind for n in fused] == ["matmul", "scale", "mask", "softmax", "matmul"]
    golden = c.run(HELD_OUT)
    assert _cos(golden, m(*HELD_OUT)) >= 0.99
    with gatesmith.host.open("sim", config=CFG) as dev:
        be = DeviceBackend(dev)
        dev.reset_perf()
        y = c.run(HELD_OUT, be)
        perf = dev.perf()
        be.close()
    assert torch.equal(y, golden)
    # both LayerNorm outputs (one read by Q, K and V) and the GELU output stay in the scratchpad
    a = c.report.allocation
    assert a["method"] == "ilp" and a["resident"] == ["gelu", "layer_norm", "layer_norm_1"]
    assert perf["load"] + perf["store"] == a["objective"] == c.report.words()["measured"]
