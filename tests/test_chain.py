"""On-chip chaining on the simulated board: GEMM -> requantise -> softmax / GELU / LayerNorm ->
the next GEMM's scratchpad, in one program, never through device memory or the host.

Each chain is checked bit for bit against the composition of the engines' golden models with
the COPY's requantisation (``hdl.requant.requant``), and the intermediate never appears in
device memory: only the inputs and the final result are ever stored there.
"""

import numpy as np
import pytest
import torch

import gatesmith.host
from gatesmith.config import AccelConfig
from gatesmith.errors import DeviceError, UsageError
from gatesmith.generators.gelu.config import GeluConfig
from gatesmith.generators.gelu.model import gelu_model
from gatesmith.generators.layernorm.config import LayerNormConfig
from gatesmith.generators.layernorm.model import layernorm_model
from gatesmith.generators.softmax.config import SoftmaxConfig
from gatesmith.generators.softmax.model import softmax_model
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.hdl.formats import IntFormat
from gatesmith.hdl.nonlinear_common import pack_row_instr
from gatesmith.hdl.requant import requant
from gatesmith.host.chain import acc_tile, requant_params, rows, spad_rows, windows
from gatesmith.host.nonlinear import _write_region
from gatesmith.host.program import Deps
from gatesmith.host.systolic import Packed, Plan, gemm_instr, gemm_program, upload

SEED = 20261202
CFG = AccelConfig(
    name="chain",
    engines=(
        GeluConfig(lanes=4, depth=64, max_len=64),
        LayerNormConfig(lanes=4, depth=64, max_len=64),
        SoftmaxConfig(lanes=4, depth=64, max_len=64),
        SystolicConfig(rows=4, cols=4, spad_depth=128, acc_depth=64, dataflows=("os", "ws")),
    ),
)
I8, I16 = IntFormat(8), IntFormat(16)


@pytest.fixture(scope="module")
def dev():
    with gatesmith.host.open("sim", config=CFG) as d:
        yield d


def _ints(g, shape, lo=-128, hi=128):
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int64).to(torch.int8)


def _gemm1(dev, prog, x, w):
    """x @ w (OS) into accumulator rows 0.. (kept on chip); returns the buffers to free."""
    cfg = dev.config.engine("systolic")
    a, b = upload(dev, x, "a", "os"), upload(dev, w, "b", "os")
    m, k = x.shape
    n = w.shape[1]
    gemm_program(dev, a, b, None, Plan(mt=m, nt=n, kc=k), "os", cfg, prog)
    return [a, b]


def _gemm2(dev, prog, m, k, w2, bufs):
    """(left rows 0.. of the WS scratchpad, m x k) @ w2, result stored to a device buffer."""
    cfg = dev.config.engine("systolic")
    wins = windows(dev, "systolic")
    top_base = cfg.spad_depth // 2  # the other half: GEMM 1's operands may still be in use
    vb = upload(dev, w2, "b", "ws")
    bufs.append(vb)
    n = w2.shape[1]
    prog.load("systolic", win_addr=wins["top"].offset + top_base * wins["top"].stride, buf=vb,
              rows=1, row_words=vb.nbytes // 4, deps=Deps(push_next=True))  # fmt: skip
    acc_base = cfg.acc_depth // 2
    prog.instr(gemm_instr("ws", m, k, n, acc=acc_base, left=0, top=top_base),
               deps=Deps(pop_prev=True, push_next=True), what="GEMM 2")  # fmt: skip
    acc = wins["acc"]
    entries = -(-n // cfg.cols) * m
    res = dev.alloc((entries * acc.stride,), torch.int32, label="result")
    bufs.append(res)
    res.layout = Packed(role="result", dataflow="ws", rows=m, cols=n)
    prog.store("systolic", win_addr=acc.offset + acc_base * acc.stride, buf=res, rows=1,
               row_words=entries * acc.stride, deps=Deps(pop_prev=True))  # fmt: skip
    return res


def test_attention_chain_softmax(dev):
    """P = softmax(requant(X @ W)); P @ V with P handed to the WS scratchpad on chip."""
    g = torch.Generator().manual_seed(SEED)
    sm = dev.config.engine("softmax")
    m, k, n, j = 6, 12, 10, 7
    x, w, v = _ints(g, (m, k)), _ints(g, (k, n)), _ints(g, (n, j))
    mult1, shift1 = requant_params(1 / 64)
    prog = dev.program()
    bufs = _gemm1(dev, prog, x, w)
    prog.copy(acc_tile(dev, base=0, mt=m, nt=n), rows(dev, "softmax", "in", base=0, n=n),
              rows=m, length=n, mult=mult1, shift=shift1)  # fmt: skip
    prog.instr(pack_row_instr(0x20, src=0, dst=0, length=n, rows=m), what="softmax")
    prog.copy(rows(dev, "softmax", "out", base=0, n=n), spad_rows(dev, "left", base=0, entries=m),
              rows=m, length=n, shift=8)  # fmt: skip
    res = _gemm2(dev, prog, m, n, v, bufs)
    dev.reset_perf()
    prog.run(timeout=120)
    perf = dev.perf()
    got = res.layout.unpack_from(res).long()
    q1 = requant(x.long() @ w.long(), mult1, shift1, I16)
    p = softmax_model(q1, sm)
    q2 = requant(p, 1, 8, I8)
    assert torch.equal(got, q2 @ v.long())
    assert (p.sum(dim=1) - 2**15).abs().max() < 2**15 * 0.02  # the chain carried real rows
    # device memory saw only X, W, V in and the result out: nothing of P went through it
    assert perf["store"] == res.nbytes // 4
    # softmax in: segments of 4 int16 (2 words) + 2 (1 word) per row; left: 3 entries per row
    assert perf["copy"] == m * 5 + m * 3
    busy = dict(zip((type(e).kind for e in dev.config.engines), perf["engine_busy"]))
    assert busy["softmax"] > 0 and busy["systolic"] > 0 and busy["gelu"] == 0
    for b in bufs:
        b.free()


def test_ffn_chain_gelu_layernorm(dev):
    """LayerNorm(GELU(requant(X @ W1))) -> WS left -> @ W2, one program."""
    g = torch.Generator().manual_seed(SEED + 1)
    ge, ln = dev.config.engine("gelu"), dev.config.engine("layernorm")
    m, k, n, j = 5, 9, 13, 6
    x, w1, w2 = _ints(g, (m, k)), _ints(g, (k, n)), _ints(g, (n, j))
    gamma = torch.randint(2**11, 2**13, (n,), generator=g)
    beta = torch.randint(-(2**10), 2**10, (n,), generator=g)
    wins = windows(dev, "layernorm")
    _write_region(dev, "layernorm", wins["gamma"], gamma[None].numpy(), ln.lanes)
    _write_region(dev, "layernorm", wins["beta"], beta[None].numpy(), ln.lanes)
    s1 = 2.0**ge.in_frac / 8000
    mult1, shift1 = requant_params(s1)
    prog = dev.program()
    bufs = _gemm1(dev, prog, x, w1)
    prog.copy(acc_tile(dev, base=0, mt=m, nt=n), rows(dev, "gelu", "in", base=0, n=n),
              rows=m, length=n, mult=mult1, shift=shift1)  # fmt: skip
    prog.instr(pack_row_instr(0x21, src=0, dst=0, length=n, rows=m), what="gelu")
    prog.copy(rows(dev, "gelu", "out", base=0, n=n), rows(dev, "layernorm", "in", base=0, n=n),
              rows=m, length=n)  # fmt: skip
    prog.instr(pack_row_instr(0x22, src=0, dst=0, length=n, rows=m), what="layernorm")
    prog.copy(rows(dev, "layernorm", "out", base=0, n=n), spad_rows(dev, "left", base=0, entries=m),
              rows=m, length=n, scale=127 / 2**ln.out_frac / 4)  # fmt: skip
    res = _gemm2(dev, prog, m, n, w2, bufs)
    prog.run(timeout=120)
    got = res.layout.unpack_from(res).long()
    q1 = requant(x.long() @ w1.long(), mult1, shift1, ge.in_fmt)
    y = gelu_model(q1, ge)
    y2 = requant(y, 1, 0, ln.in_fmt)
    z = layernorm_model(y2, gamma, beta, ln)
    m3, s3 = requant_params(127 / 2**ln.out_frac / 4)
    q3 = requant(z, m3, s3, I8)
    assert torch.equal(got, q3 @ w2.long())
    assert q3.abs().max() > 20  # real values, not a chain of zeros
    for b in bufs:
        b.free()


def test_copy_bad_input(dev):
    prog = dev.program()
    with pytest.raises(UsageError, match=r"destination region 'acc' is not writable"):
        prog.copy(rows(dev, "gelu", "out", base=0, n=8), acc_tile(dev, base=0, mt=2, nt=8),
                  rows=2, length=8)  # fmt: skip
    with pytest.raises(UsageError, match=r"source walk touches window words .* outside gelu's 'out'"):
        prog.copy(rows(dev, "gelu", "out", base=60, n=32), rows(dev, "gelu", "in", base=0, n=32),
                  rows=3, length=32)  # fmt: skip
    with pytest.raises(UsageError, match="the softmax engine has no region 'gamma'"):
        rows(dev, "softmax", "gamma", base=0, n=4)
    with pytest.raises(UsageError, match="scale must be a finite number > 0"):
        prog.copy(rows(dev, "gelu", "out", base=0, n=8), rows(dev, "gelu", "in", base=0, n=8),
                  rows=1, length=8, scale=-1.0)  # fmt: skip


def test_copy_refused_on_device_names_entry(dev):
    """A COPY the host did not check (a walk built by hand) is refused by the engine:
    WINDOW_RANGE from the COPY unit, naming the program entry and the window word."""
    from dataclasses import replace

    good = rows(dev, "gelu", "in", base=0, n=8)
    win = good.window
    bad = replace(good, window=replace(win, depth=1 << 16), addr=win.offset + win.depth * 4)
    prog = dev.program()
    prog.nop()
    prog.copy(bad, good, rows=1, length=8)
    with pytest.raises(DeviceError, match=r"WINDOW_RANGE \(0x07\) from the on-chip COPY at "
                       r"program entry 2 .*; address 0x"):  # fmt: skip
        prog.run(timeout=60)
    # the device still works after the error
    y = dev.gelu(torch.linspace(-2, 2, 8))
    assert y.shape == (8,)


def test_reference_model_matches_numpy_words(dev):
    """The host's walk arithmetic matches the RTL model's word list (last word bounds)."""
    from gatesmith.generators.accel.copy import walk_words

    for walk, r, n in ((acc_tile(dev, base=3, mt=5, nt=10), 5, 10),
                       (spad_rows(dev, "left", base=2, entries=7), 7, 9),
                       (rows(dev, "gelu", "in", base=1, n=11), 4, 11)):  # fmt: skip
        ws = walk_words(addr=walk.addr, row_stride=walk.row_stride, seg=walk.seg,
                        seg_stride=walk.seg_stride, rows=r, length=n, width=walk.width)  # fmt: skip
        assert max(a for a, _ in ws) == walk.last_word(r, n)
        assert np.all(np.diff(sorted(a for a, _ in ws)) > 0)  # no word written twice


def test_nonlinear_ops_on_device_buffers(dev):
    """dev.gelu / layer_norm / softmax take and return device buffers of rows: GELU's output
    buffer goes straight into LayerNorm (no host round trip), and a plain int buffer works."""
    from gatesmith.host.nonlinear import Rows

    g = torch.Generator().manual_seed(SEED + 2)
    ge, ln, sm = (dev.config.engine(k) for k in ("gelu", "layernorm", "softmax"))
    x = torch.randint(-(2**14), 2**14, (7, 19), generator=g)
    gamma = torch.randint(2**10, 2**12, (19,), generator=g)
    beta = torch.randint(-500, 500, (19,), generator=g)
    y = dev.gelu(x, out="device")
    assert isinstance(y.layout, Rows) and (y.layout.rows, y.layout.n) == (7, 19)
    assert torch.equal(y.layout.unpack_from(y), gelu_model(x, ge))
    dev.reset_perf()
    z = dev.layer_norm(y, 19, gamma, beta, out="device")
    loads = dev.perf()["load"]
    assert loads == y.layout.rows * y.layout.row_words  # the GELU rows, loaded as they are
    want = layernorm_model(gelu_model(x, ge), gamma, beta, ln)
    assert torch.equal(z.layout.unpack_from(z), want)
    assert torch.equal(dev.layer_norm(y, 19, gamma, beta), want)  # host result from a buffer
    # a plain integer buffer (no layout): read, checked and packed by the host
    with dev.alloc((7, 19), torch.int32) as plain:
        q = torch.randint(-2000, 2000, (7, 19), generator=g, dtype=torch.int32)
        plain.write(q)
        assert torch.equal(dev.softmax(plain), softmax_model(q.long(), sm))
        plain.write(torch.full((7, 19), 2**20, dtype=torch.int32))
        with pytest.raises(UsageError, match=r"of x \(read from its device buffer\) lie outside"):
            dev.softmax(plain)
    with pytest.raises(UsageError, match="out must be 'host' or 'device'"):
        dev.gelu(x, out="gpu")
    y.free()
    z.free()


def test_fused_attention_many_heads_one_program(dev):
    """softmax(Q K^T / sqrt(d)) V for 5 heads in one program: bit-exact against the integer
    model, close to float attention, and the scores never stored to device memory."""
    from gatesmith.host.attention import attention, attention_golden, quantise_heads

    g = torch.Generator().manual_seed(SEED + 3)
    H, S, D = 5, 8, 8
    q, k, v = (torch.randn(H, S, D, generator=g) for _ in range(3))
    dev.reset_perf()
    ctx, ints = attention(dev, q, k, v)
    perf = dev.perf()
    sm = dev.config.engine("softmax")
    aq = quantise_heads(q.double(), k.double(), v.double(), D**-0.5, sm.in_frac)
    assert torch.equal(ints, attention_golden(aq, sm))
    ref = torch.softmax(q @ k.transpose(1, 2) / D**0.5, dim=-1) @ v
    cos = torch.nn.functional.cosine_similarity(ctx.reshape(H, -1), ref.reshape(H, -1), dim=1)
    assert cos.min() > 0.98, cos
    acc_stride = windows(dev, "systolic")["acc"].stride
    assert perf["store"] == H * (D // 4) * S * acc_stride  # only the context left the chip
    with pytest.raises(UsageError, match="q, k, v must have one shape"):
        attention(dev, q, k[:, :4], v)
    with pytest.raises(UsageError, match=r"seq 64 x head_dim 8: Q \(left\) needs 128 scratchpad"):
        attention(dev, *(torch.randn(1, 64, 8) for _ in range(3)))
