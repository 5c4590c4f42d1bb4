"""The range policy (``host/ranges.py``) on the simulated "chain" board: every input format of
every host call either refuses an out-of-range value (``range="error"``, the default) with a
message naming it, or clamps it and says so (``range="saturate"``: a SaturationWarning with the
count). Saturated results are checked bit for bit against the golden models of the clamped
inputs; in-range inputs raise nothing and warn nothing.
"""

import warnings

import pytest
import torch

from gatesmith.errors import UsageError
from gatesmith.generators.gelu.model import gelu_model
from gatesmith.generators.layernorm.model import layernorm_model
from gatesmith.generators.softmax.model import softmax_model
from gatesmith.host.ranges import SaturationWarning

from .test_chain import dev  # noqa: F401 - the chain board fixture

INF = float("inf")


def _saturated(call):
    """(result, the one SaturationWarning) of ``call()``."""
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        out = call()
    sat = [w.message for w in got if isinstance(w.message, SaturationWarning)]
    assert len(sat) == 1 and len(got) == 1, [str(w.message) for w in got]
    return out, sat[0]


def _refused(call) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning on the way
        with pytest.raises(UsageError) as e:
            call()
    return str(e.value)


def test_gelu_out_of_range_and_infinities(dev):
    ge = dev.config.engine("gelu")  # int16 with 12 fraction bits: -8..7.999755859375
    x = torch.tensor([100.0, 1.0, -INF, INF, -3.0])
    assert _refused(lambda: dev.gelu(x)) == (
        "gelu: 3 of 5 values of x lie outside the input range -8..7.999755859375 (int16 with 12 "
        "fraction bits), the farthest -inf; pass range='saturate' to clamp them"
    )
    assert _refused(lambda: dev.gelu(torch.tensor([100.0, 1.0]))).startswith(
        "gelu: 1 of 2 values of x lie outside the input range -8..7.999755859375 (int16 with 12 "
        "fraction bits), the farthest 100;"
    )
    y, w = _saturated(lambda: dev.gelu(x, range="saturate"))
    assert (w.op, w.name, w.count, w.total) == ("gelu", "x", 3, 5)
    assert str(w) == (
        "gelu: 3 of 5 values of x saturated to the input range -8..7.999755859375 (int16 with 12 "
        "fraction bits), the farthest -inf"
    )
    q = torch.tensor([32767, 4096, -32768, 32767, -12288])
    assert torch.equal((y.double() * 2**ge.out_frac).round().long(), gelu_model(q, ge))
    assert y[0] == y[3] and y[0] > 7.99  # GELU(+inf) saturates to GELU(max), reported
    # in range: no warning under either policy, and the same result
    inside = torch.linspace(-7.9, 7.9, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(dev.gelu(inside), dev.gelu(inside, range="saturate"))


def test_gelu_int_and_device_buffers(dev):
    ge = dev.config.engine("gelu")
    x = torch.tensor([[40000, -40000, 5, 0]])
    assert _refused(lambda: dev.gelu(x, out="device")) == (
        "gelu: 2 of 4 values of x lie outside the int16 range -32768..32767, the farthest 40000; "
        "pass range='saturate' to clamp them"
    )
    buf, w = _saturated(lambda: dev.gelu(x, out="device", range="saturate"))
    with buf:
        got = buf.layout.unpack_from(buf)
    assert w.count == 2 and torch.equal(got, gelu_model(torch.tensor([[32767, -32768, 5, 0]]), ge))


def test_softmax_masks_minus_inf_and_polices_the_rest(dev):
    sm = dev.config.engine("softmax")  # int16, 8 fraction bits; -32768 marks a masked entry
    x = torch.tensor([[200.0, 150.0, 0.0, -INF]])
    assert _refused(lambda: dev.softmax(x)) == (
        "softmax: 2 of 4 values of x lie outside the input range -127.99609375..127.99609375 "
        "(int16 with 8 fraction bits), the farthest 200; pass range='saturate' to clamp them"
    )
    p, w = _saturated(lambda: dev.softmax(x, range="saturate"))
    assert w.count == 2
    q = torch.tensor([[32767, 32767, 0, -32768]])
    assert torch.equal((p.double() * 2**15).round().long(), softmax_model(q, sm))
    assert p[0, 3] == 0 and p[0, 0] == p[0, 1]  # what the saturation did, now visible
    # -inf alone is a masked entry (torch: probability 0), under either policy, with no warning
    masked = torch.tensor([[1.0, -INF, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = torch.softmax(masked.double(), -1)
        assert (dev.softmax(masked).double() - ref).abs().max() < 2e-3
    # +inf: torch gives NaN; here it raises, or saturates with a report
    assert "the farthest inf;" in _refused(lambda: dev.softmax(torch.tensor([INF, 1.0])))
    p, w = _saturated(lambda: dev.softmax(torch.tensor([INF, 1.0]), range="saturate"))
    assert w.count == 1 and p[0] > 0.99


def test_softmax_int_saturates_below_the_mask_code(dev):
    sm = dev.config.engine("softmax")
    x = torch.tensor([[-40000, 0, -32768]])  # -32768 is masked; -40000 is a very small logit
    assert _refused(lambda: dev.softmax(x, out="host")).startswith(
        "x must be a floating-point torch tensor"
    )
    from gatesmith.host.nonlinear import softmax_int

    assert _refused(lambda: softmax_int(dev, x)).startswith(
        "softmax: 1 of 3 values of x lie outside the int16 range -32768..32767, the farthest "
        "-40000;"
    )
    got, w = _saturated(lambda: softmax_int(dev, x, range="saturate"))
    assert w.count == 1
    assert torch.equal(got, softmax_model(torch.tensor([[-32767, 0, -32768]]), sm))


def test_layer_norm_input_weight_and_bias(dev):
    ln = dev.config.engine("layernorm")  # x: int16, 8 fraction bits; weight 12, bias 11
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 16, generator=g, dtype=torch.float64) * 4
    x[1, 2] = 500.0
    assert _refused(lambda: dev.layer_norm(x, 16)) == (
        "layer_norm: 1 of 48 values of x lie outside the input range -128..127.99609375 (int16 "
        "with 8 fraction bits), the farthest 500; pass range='saturate' to clamp them"
    )
    bias = torch.full((16,), 0.5, dtype=torch.float64)
    bias[0] = -20.0
    assert _refused(lambda: dev.layer_norm(x.clamp(-100, 100), 16, None, bias)) == (
        "layer_norm: 1 of 16 values of bias lie outside the input range -16..15.99951171875 "
        "(int16 with 11 fraction bits), the farthest -20; pass range='saturate' to clamp them"
    )
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        y = dev.layer_norm(x, 16, None, bias, range="saturate")
    assert sorted((w.message.name, w.message.count) for w in got) == [("bias", 1), ("x", 1)]
    xq = (x * 256).round().clamp(-32768, 32767).long()
    gq = torch.full((16,), 4096)
    bq = (bias * 2048).round().clamp(-32768, 32767).long()
    want = layernorm_model(xq, gq, bq, ln)
    assert torch.equal((y * 2**ln.out_frac).round().long(), want)


def test_matmul_and_upload_operands(dev):
    g = torch.Generator().manual_seed(11)
    a = torch.randint(-300, 300, (5, 7), generator=g, dtype=torch.int16)
    b = torch.randint(-128, 128, (7, 6), generator=g, dtype=torch.int16)
    n_out = int(((a < -128) | (a > 127)).sum())
    assert n_out > 0
    msg = _refused(lambda: dev.matmul(a, b))
    assert msg.startswith(f"matmul: {n_out} of 35 values of a lie outside the int8 range "
                          "-128..127, the farthest ")  # fmt: skip
    assert msg.endswith("; pass range='saturate' to clamp them")
    c, w = _saturated(lambda: dev.matmul(a, b, range="saturate"))
    assert (w.op, w.name, w.count) == ("matmul", "a", n_out)
    assert torch.equal(c.long(), a.long().clamp(-128, 127) @ b.long())
    # a weight uploaded once with saturation stays clamped; refused by default
    big = b * 3
    assert _refused(lambda: dev.upload(big, "b")).startswith("upload: ")
    wbuf, w = _saturated(lambda: dev.upload(big, "b", range="saturate"))
    with wbuf:
        assert w.op == "upload" and w.name == "b"
        got = dev.matmul(a.clamp(-128, 127), wbuf, dataflow="os")
        assert torch.equal(got.long(), a.long().clamp(-128, 127) @ big.long().clamp(-128, 127))


def test_policy_is_checked(dev):
    x = torch.zeros(4)
    for call in (
        lambda: dev.gelu(x, range="clip"),
        lambda: dev.softmax(x, range="clip"),
        lambda: dev.layer_norm(x, 4, range="clip"),
        lambda: dev.matmul(torch.zeros(2, 2, dtype=torch.int8), torch.zeros(2, 2,
                           dtype=torch.int8), range="clip"),  # fmt: skip
        lambda: dev.upload(torch.zeros(2, 2, dtype=torch.int8), range=None),
    ):
        assert _refused(call) in (
            "range must be 'error' or 'saturate', not 'clip'",
            "range must be 'error' or 'saturate', not None",
        )
