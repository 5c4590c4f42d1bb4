"""Golden models of the nonlinear engines against torch float64, and their edge cases.

Each bound asserted here is the one stated in the engine's docstring (``ERROR_BOUNDS``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gatesmith.generators.gelu.config import GeluConfig
from gatesmith.generators.gelu.model import gelu_model
from gatesmith.generators.layernorm.config import LayerNormConfig
from gatesmith.generators.layernorm.model import isqrt_newton, layernorm_model, root_guess
from gatesmith.generators.softmax.config import SoftmaxConfig
from gatesmith.generators.softmax.model import exp_online, softmax_model
from gatesmith.hdl.formats import IntFormat
from gatesmith.hdl.requant import dyadic, requant

SEED = 20250301

# method -> max abs error of a probability. Row sums: |sum - 1| <= 1e-3 + n * 2**-16 (half an
# output LSB per element: many tiny probabilities all round the same way).
SOFTMAX_BOUNDS = {"online": 2.5e-4, "shiftmax": 4e-2}


def _logits(gen, rows, n, dist, fmt, f):
    if dist == "normal1":
        v = torch.randn(rows, n, generator=gen, dtype=torch.float64)
    elif dist == "normal4":
        v = 4 * torch.randn(rows, n, generator=gen, dtype=torch.float64)
    elif dist == "wide":  # large-magnitude logits, up to the format's range
        v = torch.rand(rows, n, generator=gen, dtype=torch.float64) * 2 - 1
        v = v * (fmt.max / 2**f)
    elif dist == "ascending":  # worst case for the online rescaling
        v = torch.linspace(-6, 6, n, dtype=torch.float64).expand(rows, n).clone()
        v += 0.1 * torch.randn(rows, n, generator=gen, dtype=torch.float64)
    else:
        raise AssertionError(dist)
    return (v * 2**f).round().clamp(fmt.min + 1, fmt.max).long()


@pytest.mark.parametrize("method", ["online", "shiftmax"])
@pytest.mark.parametrize("dtype,f", [("int8", 4), ("int16", 8), ("int16", 11)])
@pytest.mark.parametrize("dist", ["normal1", "normal4", "wide", "ascending"])
def test_softmax_model_vs_torch(method, dtype, f, dist):
    gen = torch.Generator().manual_seed(SEED)
    cfg = SoftmaxConfig(method=method, in_dtype=dtype, in_frac=f, lanes=3)
    for n in (1, 7, 128, 1000):
        x = _logits(gen, 200 if n < 1000 else 40, n, dist, cfg.in_fmt, f)
        p = softmax_model(x, cfg).double() / 2**15
        ref = torch.softmax(x.double() / 2**f, dim=-1)
        err = (p - ref).abs().max().item()
        dsum = (p.sum(-1) - 1).abs().max().item()
        bound, sum_bound = SOFTMAX_BOUNDS[method], 1e-3 + n * 2**-16
        assert err <= bound, f"n={n}: max abs error {err:.3e} > {bound}"
        assert dsum <= sum_bound, f"n={n}: row sum off by {dsum:.3e} > {sum_bound}"


@pytest.mark.parametrize("method", ["online", "shiftmax"])
@pytest.mark.parametrize("lanes", [1, 4, 16])
def test_softmax_model_edges(method, lanes):
    cfg = SoftmaxConfig(method=method, in_dtype="int8", in_frac=4, lanes=lanes)
    lo = cfg.in_fmt.min
    # row of length 1, all-equal, one-hot, extremes
    assert softmax_model(torch.tensor([[5]]), cfg).tolist() == [[1 << 15]]
    eq = softmax_model(torch.full((1, 10), 17), cfg)
    assert (eq == round(2**15 / 10)).all(), eq
    oh = softmax_model(torch.tensor([[lo + 1] * 5 + [127] + [lo + 1] * 3]), cfg)
    if method == "online":
        assert oh[0, 5] == 1 << 15 and (oh[0, torch.arange(9) != 5] == 0).all(), oh
    else:  # I-ViT's clamp (n = 15) floors exp at 2**-15 of the maximum
        assert oh[0, 5] == (1 << 15) - 8 and (oh[0, torch.arange(9) != 5] == 1).all(), oh
    # masked entries are excluded; a fully masked row gives zeros
    x = torch.tensor([[3, lo, 5, lo, 1], [lo] * 5])
    out = softmax_model(x, cfg)
    ref = softmax_model(torch.tensor([[3, 5, 1]]), cfg)
    assert out[0, 1] == 0 and out[0, 3] == 0
    assert out[1].tolist() == [0] * 5
    # the unmasked entries match the row without the masked ones (exactly for Shiftmax; the
    # online states depend on positions, so within an output LSB)
    diff = (out[0, [0, 2, 4]] - ref[0]).abs().max().item()
    assert diff == 0 if method == "shiftmax" else diff <= 1


def test_softmax_model_online_exp_table():
    d = torch.arange(0, 1 << 15)
    for f in (0, 4, 8, 12):
        got = exp_online(d, f).double() / 2**16
        ref = torch.exp(-d.double() / 2**f)
        # T has 12 fraction bits: 2**-13 * ln 2 relative, plus the tables' 2**-16
        assert (got - ref).abs().max().item() <= 1e-4


# (method, in_dtype, in_frac, out_dtype, out_frac) -> max abs error
GELU_CASES = {
    ("rom", "int8", 4, "int16", 12): 1.3e-4,
    ("rom", "int8", 5, "int8", 4): 3.2e-2,
    ("rom", "int16", 12, "int16", 12): 2.5e-4,
    ("rom", "int16", 11, "int16", 11): 3.5e-4,
    ("shiftgelu", "int8", 4, "int16", 12): 4.5e-2,
    ("shiftgelu", "int8", 5, "int8", 4): 6.5e-2,
    ("shiftgelu", "int16", 12, "int16", 12): 3.0e-2,
    ("shiftgelu", "int16", 11, "int16", 11): 3.0e-2,
}


@pytest.mark.parametrize("case", sorted(GELU_CASES))
def test_gelu_model_exhaustive(case):
    method, idt, f, odt, of = case
    cfg = GeluConfig(method=method, in_dtype=idt, in_frac=f, out_dtype=odt, out_frac=of)
    x = torch.arange(cfg.in_fmt.min, cfg.in_fmt.max + 1)
    y = gelu_model(x, cfg)
    assert y.min() >= cfg.out_fmt.min and y.max() <= cfg.out_fmt.max
    ref = F.gelu(x.double() / 2**f, approximate="none")
    err = (y.double() / 2**of - ref).abs().max().item()
    assert err <= GELU_CASES[case], f"max abs error {err:.3e} > {GELU_CASES[case]}"


@pytest.mark.parametrize("method", ["rom", "shiftgelu"])
def test_gelu_model_saturates(method):
    cfg = GeluConfig(method=method, in_dtype="int16", in_frac=8, out_dtype="int8", out_frac=4)
    y = gelu_model(torch.tensor([32767, -32768, 0]), cfg)
    assert y.tolist() == [127, 0, 0]


# max abs error with out int16, out_frac 11 (LSB 4.9e-4), |gamma| <= 2, rows whose standard
# deviation is >= 4 input LSBs (the mean's 2**-mean_frac resolution over a smaller deviation
# costs more; see the LayerNorm engine docstring)
LAYERNORM_BOUND = 1.5e-3


@pytest.mark.parametrize("dtype,f", [("int8", 4), ("int16", 8), ("int16", 12)])
@pytest.mark.parametrize("dist", ["normal", "small", "offset", "wide"])
def test_layernorm_model_vs_torch(dtype, f, dist):
    gen = torch.Generator().manual_seed(SEED)
    cfg = LayerNormConfig(in_dtype=dtype, in_frac=f)
    fmt = cfg.in_fmt
    for n in (2, 33, 768):
        v = torch.randn(30, n, generator=gen, dtype=torch.float64)
        v = {"normal": v, "small": v * 4 / 2**f, "offset": v + 3,
             "wide": v * fmt.max / 2**f / 4}[dist]  # fmt: skip
        x = (v * 2**f).round().clamp(fmt.min, fmt.max).long()
        g = (torch.rand(n, generator=gen, dtype=torch.float64) * 3 - 1) * 2**12
        b = torch.randn(n, generator=gen, dtype=torch.float64) * 2**11
        g, b = g.round().long(), b.round().long()
        out = layernorm_model(x, g, b, cfg).double() / 2**11
        ref = F.layer_norm(x.double() / 2**f, (n,), g.double() / 2**12, b.double() / 2**11, 1e-5)
        inside = ref.abs() < 15.9  # away from the output format's saturation
        err = (out - ref)[inside].abs().max().item()
        assert err <= LAYERNORM_BOUND, f"n={n}: max abs error {err:.3e}"


def test_layernorm_model_edges():
    cfg = LayerNormConfig(in_dtype="int8", in_frac=4)
    g = torch.full((5,), 1 << 12)
    b = torch.arange(5) * 100
    # all-equal row and length 1: y = 0, so the output is beta
    assert layernorm_model(torch.full((5,), -7), g, b, cfg).tolist() == b.tolist()
    assert layernorm_model(torch.tensor([99]), g[:1], b[:1], cfg).tolist() == [0]
    # extremes saturate the output instead of wrapping
    cfg8 = LayerNormConfig(in_dtype="int8", in_frac=4, out_dtype="int8", out_frac=6)
    g16 = torch.full((16,), 1 << 12)
    out = layernorm_model(torch.tensor([127] + [-128] * 15), g16, 0 * g16, cfg8)
    assert out[0] == 127 and (out[1:] < 0).all()


def test_isqrt_newton_exact():
    gen = torch.Generator().manual_seed(SEED)
    vals = list(range(0, 5000)) + torch.randint(0, 2**62, (2000,), generator=gen).tolist()
    for v in vals:
        assert isqrt_newton(v)[0] == math.isqrt(v), v
    assert max(isqrt_newton(v)[1] for v in vals) <= 7
    # the engine's values (>= 2**32, the variance's scaling): the table guess is above the root
    # and leaves at most 5 steps
    big = [v for v in vals if v >= 2**32] + [2**32, 2**62 - 1, (2**31 + 1) ** 2, 2**33 - 1]
    assert all(root_guess(v) > math.isqrt(v) for v in big)
    assert max(isqrt_newton(v)[1] for v in big) <= 5


def test_requant_model():
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randint(-(2**31), 2**31, (10000,), generator=gen)
    for scale in (1.0, 2**-12, 0.0123, 3.7e-6):
        mult, shift = dyadic(scale)
        assert abs(mult / 2**shift - scale) <= scale * 2**-15
        y = requant(x, mult, shift, IntFormat(8))
        ref = (x.double() * mult / 2**shift + 0.5).floor().clamp(-128, 127)
        assert torch.equal(y.double(), ref)


@pytest.mark.parametrize(
    "scale,msg",
    [(0.0, "scale must be a finite number > 0, not 0.0"), (float("nan"), "scale must be a finite")],
)
def test_dyadic_errors(scale, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
        dyadic(scale)
