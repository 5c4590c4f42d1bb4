"""Bit-serial engine golden model and BitMoD quantiser: exact against torch int64 / float64."""

import itertools

import pytest
import torch

from gatesmith.errors import UsageError
from gatesmith.generators.bitserial import model as M
from gatesmith.generators.bitserial.config import BitserialConfig
from gatesmith.generators.engine import ErrorCode
from gatesmith.host import quant as Q

SEED = 1234


def _gen(seed):
    g = torch.Generator().manual_seed(seed)
    print(f"seed {seed}")
    return g


def _rand_codes(g, shape, bits):
    return torch.randint(0, 1 << bits, shape, generator=g)


def _reference(av, wv, group_size):
    """Per-group partial sums straight from torch int64 matmul (no bit-planes)."""
    k = av.shape[1]
    return torch.stack(
        [av[:, s : s + group_size] @ wv[:, s : s + group_size].T for s in range(0, k, group_size)],
        -1,
    )


@pytest.mark.parametrize("w_enc,a_enc", [("twos", "twos"), ("bipolar", "bipolar"),
                                         ("twos", "bipolar"), ("bipolar", "twos")])
@pytest.mark.parametrize("w_bits", range(1, 9))
def test_int_partial_sums_exact(w_bits, w_enc, a_enc):
    cfg = BitserialConfig(lanes=4, pes=2, group_size=8)
    g = _gen(SEED + w_bits)
    for a_bits in (1, 3, 8):
        m, n, k = 3, 5, 21  # K not a multiple of group size or lanes
        a = _rand_codes(g, (m, k), a_bits)
        w = _rand_codes(g, (n, k), w_bits)
        # the edges of the format: all-min and all-max codes in some rows
        w[0] = 0
        w[1] = (1 << w_bits) - 1
        a[0] = 1 << (a_bits - 1)
        ins = M.Instr(m=m, n=n, k=k, w_bits=w_bits, a_bits=a_bits, w_enc=w_enc, a_enc=a_enc)
        r, ps, err = M.matmul(cfg, ins, a, w)
        assert err == ErrorCode.NONE
        av, wv = M.decode_int(a, a_bits, a_enc), M.decode_int(w, w_bits, w_enc)
        torch.testing.assert_close(ps, _reference(av, wv, 8), rtol=0, atol=0)
        torch.testing.assert_close(r, av @ wv.T, rtol=0, atol=0)


@pytest.mark.parametrize("dt", [0, *M.DATATYPES])
def test_bitmod_datatype_alone_exact(dt):
    w_bits = 4 if dt == 0 or M.DATATYPES[dt][1] == 4 else 3
    cfg = BitserialConfig(lanes=4, pes=2, group_size=4)
    g = _gen(SEED + 100 + dt)
    m, n, k = 2, 3, 10
    a = _rand_codes(g, (m, k), 8)
    w = _rand_codes(g, (n, k), w_bits)
    w[0, :] = 1 << (w_bits - 1)  # the negative-zero code: the extra value
    dts = torch.full((n, 3), dt)
    sc = torch.randint(0, 1 << 16, (n, 3), generator=g)
    ins = M.Instr(m=m, n=n, k=k, w_bits=w_bits, a_bits=8, mixed=True, scaled=True)
    r, ps, err = M.matmul(cfg, ins, a, w, dts, sc)
    assert err == ErrorCode.NONE
    grid = M.datatype_grid(dt, w_bits)
    if dt:
        assert grid[1 << (w_bits - 1)] == M.DATATYPES[dt][3]
    wv, av = grid[w], M.decode_int(a, 8, "twos")
    ref = _reference(av, wv, 4)
    torch.testing.assert_close(ps, ref, rtol=0, atol=0)
    torch.testing.assert_close(r, (ref * sc[None]).sum(-1), rtol=0, atol=0)


def test_bitmod_mixed_across_groups_exact():
    cfg = BitserialConfig(lanes=2, pes=4, group_size=4)
    g = _gen(SEED + 200)
    for w_bits, ids in ((3, [0, 1, 2, 3, 4]), (4, [0, 1, 2, 3, 4, 5, 6, 7, 8])):
        m, n, k = 4, 6, 4 * 7 + 3
        a = _rand_codes(g, (m, k), 6)
        w = _rand_codes(g, (n, k), w_bits)
        dts = torch.tensor(ids)[torch.randint(0, len(ids), (n, 8), generator=g)]
        ins = M.Instr(m=m, n=n, k=k, w_bits=w_bits, a_bits=6, a_enc="bipolar", mixed=True)
        r, ps, err = M.matmul(cfg, ins, a, w, dts)
        assert err == ErrorCode.NONE
        gid = torch.arange(k) // 4
        grids = [M.datatype_grid(int(dts[i, gid[j]]), w_bits) for i in range(n) for j in range(k)]
        wv = torch.stack([gr[c & (len(gr) - 1)] for gr, c in zip(grids, w.flatten())]).view(n, k)
        av = M.decode_int(a, 6, "bipolar")
        torch.testing.assert_close(ps, _reference(av, wv, 4), rtol=0, atol=0)
        torch.testing.assert_close(r, av @ wv.T, rtol=0, atol=0)


def test_invalid_datatype_is_rejected():
    cfg = BitserialConfig(lanes=2, pes=2, group_size=2)
    a, w = torch.ones(1, 4, dtype=torch.int64), torch.ones(2, 4, dtype=torch.int64)
    ins = M.Instr(m=1, n=2, k=4, w_bits=3, mixed=True)
    assert M.matmul(cfg, ins, a, w, torch.tensor([[5, 0], [0, 0]]))[2] == ErrorCode.BAD_FIELD
    assert M.matmul(cfg, ins, a, w, torch.tensor([[9, 0], [0, 0]]))[2] == ErrorCode.BAD_FIELD
    assert M.check(cfg, ins.replace(w_bits=5)) == ErrorCode.BAD_FIELD
    assert M.check(cfg, ins.replace(k=0)) == ErrorCode.BAD_SHAPE
    assert M.check(cfg, ins.replace(w_bits=9)) == ErrorCode.BAD_FIELD
    assert M.check(cfg, ins.replace(r_base=256)) == ErrorCode.OUT_OF_RANGE


def test_accumulator_wraps():
    cfg = BitserialConfig(lanes=2, pes=2, group_size=2, acc_width=32)
    a = torch.full((1, 4), 127)
    w = torch.full((2, 4), 127)
    sc = torch.full((2, 2), 65535)
    ins = M.Instr(m=1, n=2, k=4, scaled=True)
    r, ps, _ = M.matmul(cfg, ins, a, w, None, sc)
    exact = 4 * 127 * 127 * 65535
    assert int(r[0, 0]) == (exact + 2**31) % 2**32 - 2**31


@pytest.mark.parametrize("bits", range(1, 9))
def test_bipolar_round_trip(bits):
    x = torch.arange(-(1 << (bits - 1)), 1 << (bits - 1))
    codes = Q.int_to_bipolar(x, bits)
    assert int(codes.min()) == 0 and int(codes.max()) == (1 << bits) - 1  # no wasted code
    torch.testing.assert_close(M.decode_int(codes, bits, "bipolar"), 2 * x + 1, rtol=0, atol=0)
    torch.testing.assert_close(Q.bipolar_to_int(codes, bits), x, rtol=0, atol=0)
    v = M.decode_int(torch.arange(1 << bits), bits, "bipolar")
    planes = ((torch.arange(1 << bits)[:, None] >> torch.arange(bits)) & 1) * 2 - 1
    torch.testing.assert_close(v, (planes * (1 << torch.arange(bits))).sum(-1), rtol=0, atol=0)
    torch.testing.assert_close(Q.encode_int(v, bits, "bipolar"), torch.arange(1 << bits),
                               rtol=0, atol=0)


def test_encode_errors():
    with pytest.raises(UsageError) as e:
        Q.encode_int(torch.tensor([2, 3]), 2, "bipolar", name="w")
    assert str(e.value) == "w must hold odd integers for the bipolar encoding"
    with pytest.raises(UsageError) as e:
        Q.encode_int(torch.tensor([-5, 3]), 3, "twos", name="w")
    assert str(e.value) == "w must hold 3-bit twos integers in -4..3, not values in -5..3"
    with pytest.raises(UsageError) as e:
        Q.encode_int(torch.tensor([1.0]), 3, "twos", name="a")
    assert str(e.value) == "a must be an integer tensor, not torch.float32"
    with pytest.raises(UsageError) as e:
        Q.encode_int(torch.tensor([1]), 9, "twos")
    assert str(e.value) == "bits must be an integer in 1..8, not 9"


@pytest.mark.parametrize("bits,types", [(4, "bitmod"), (3, "bitmod"), (4, "int"), (2, "int")])
def test_quantised_matmul_matches_float64(bits, types):
    """The engine's integer result, scaled on the host, equals float64 x @ W_deq.T."""
    cfg = BitserialConfig(lanes=4, pes=4, group_size=8)
    g = _gen(SEED + 300 + bits)
    n, k, m = 6, 27, 3
    w = torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g)
    qw = Q.quantize_weights(w, bits=bits, group_size=8, types=types)
    x_int = torch.randint(-128, 128, (m, k), generator=g)
    ins = M.Instr(m=m, n=n, k=k, w_bits=bits, a_bits=8, mixed=qw.mixed, scaled=True)
    r, _, err = M.matmul(cfg, ins, x_int & 255, qw.codes, qw.dtypes, qw.scale_q)
    assert err == ErrorCode.NONE
    y = r.double() * torch.pow(2.0, qw.row_exp.double())[None]
    ref = x_int.double() @ qw.dequantize().T
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-9)
    # and the quantiser's own error stays bounded: weights within half a grid step of a value
    err_max = (qw.dequantize() - w.double()).abs().max()
    assert err_max <= w.abs().max() / 2 ** (bits - 1)


def test_bitmod_beats_plain_int():
    g = _gen(SEED + 400)
    w = torch.randn(64, 512, generator=g)
    for bits in (3, 4):
        e_mix = ((Q.quantize_weights(w, bits=bits).dequantize() - w.double()) ** 2).mean()
        e_int = ((Q.quantize_weights(w, bits=bits, types="int").dequantize()
                  - w.double()) ** 2).mean()
        print(bits, float(e_mix), float(e_int))
        assert e_mix < 0.9 * e_int


def test_quantiser_uses_every_family():
    g = _gen(SEED + 500)
    w = torch.cat([torch.randn(32, 256, generator=g),
                   torch.distributions.StudentT(3).sample((32, 256))])
    q = Q.quantize_weights(w, bits=4)
    used = set(q.dtypes.unique().tolist())
    assert used & {5, 6} and used & {7, 8}, used


def test_images_round_trip():
    cfg = BitserialConfig(lanes=4, pes=2, group_size=4, w_max_bits=5, a_max_bits=3)
    g = _gen(SEED + 600)
    w = _rand_codes(g, (5, 13), 5)
    a = _rand_codes(g, (3, 13), 3)
    wi, ai = M.weight_image(cfg, w), M.act_image(cfg, a)
    assert wi.shape == (3 * 4, cfg.stride_of(40)) and ai.shape == (3 * 4, 1)
    for n, kk in itertools.product(range(5), range(13)):
        t, p, c, lane = n // 2, n % 2, kk // 4, kk % 4
        word = int(sum(int(x) << (32 * i) for i, x in enumerate(wi[t * 4 + c])))
        assert (word >> ((p * 4 + lane) * 5)) & 31 == int(w[n, kk])
