"""Host API of the nonlinear engines (``gatesmith.host.nonlinear``), on the engines' RTL.

``RtlDevice`` serves the Device primitives (write/read/execute/wait/window_base) with one engine's
RTL in the Amaranth simulator: each ``wait()`` replays the host's writes into the window, runs the
queued instructions and reads the output region back. The whole accelerator under Verilator
(``gatesmith.host.open("sim")``) is the slow test at the end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from amaranth.sim import Simulator

from gatesmith.config import AccelConfig
from gatesmith.errors import DeviceError, UsageError
from gatesmith.generators.engine import ENGINE_WINDOW_BASE, ENGINE_WINDOW_SIZE
from gatesmith.generators.gelu.config import GeluConfig
from gatesmith.generators.gelu.model import gelu_model
from gatesmith.generators.layernorm.config import LayerNormConfig
from gatesmith.generators.layernorm.model import layernorm_model
from gatesmith.generators.registry import engine_spec
from gatesmith.generators.softmax.config import SoftmaxConfig
from gatesmith.generators.softmax.model import softmax_model
from gatesmith.host import nonlinear as NL

SEED = 4242


class RtlDevice:
    def __init__(self, cfg):
        self.config = AccelConfig(engines=(cfg,))
        self.kind = type(cfg).kind
        self.cfg = cfg
        self.shadow: dict[int, int] = {}
        self.queue: list[list[int]] = []
        layout = engine_spec(self.kind).build(cfg)
        layout._MustUse__silence = True  # built for its window layout only
        self.wins = {w.name: w for w in layout.windows()}

    def window_base(self, kind):
        return ENGINE_WINDOW_BASE + self.config.engine_index(kind) * ENGINE_WINDOW_SIZE

    def write(self, addr, words):
        off = (addr - self.window_base(self.kind)) // 4
        for i, w in enumerate(np.asarray(words, dtype=np.uint32).tolist()):
            self.shadow[off + i] = w

    def read(self, addr, n):
        off = (addr - self.window_base(self.kind)) // 4
        return np.array([self.shadow.get(off + i, 0) for i in range(n)], dtype=np.uint32)

    def execute(self, instrs):
        self.queue += [list(i) for i in instrs]

    def wait(self):
        dut = engine_spec(self.kind).build(self.cfg)
        out = self.wins["out"]
        errors = []

        async def bench(ctx):
            for a, w in sorted(self.shadow.items()):
                if not out.offset <= a < out.offset + out.depth * out.stride:
                    ctx.set(dut.host.addr, a)
                    ctx.set(dut.host.w_data, w)
                    ctx.set(dut.host.w_en, 1)
                    await ctx.tick()
            ctx.set(dut.host.w_en, 0)
            for ins in self.queue:
                ctx.set(dut.cmd.payload, sum(v << (32 * i) for i, v in enumerate(ins)))
                ctx.set(dut.cmd.valid, 1)
                await ctx.tick().until(dut.cmd.ready)
                ctx.set(dut.cmd.valid, 0)
                await ctx.tick().until(dut.done)
                errors.append(ctx.get(dut.error))
            for a in range(out.offset, out.offset + out.depth * out.stride):
                ctx.set(dut.host.addr, a)
                ctx.set(dut.host.r_en, 1)
                await ctx.tick()
                ctx.set(dut.host.r_en, 0)
                self.shadow[a] = ctx.get(dut.host.r_data)

        sim = Simulator(dut)
        sim.add_clock(1e-6)
        sim.add_testbench(bench)
        sim.run()
        self.queue = []
        if any(errors):
            raise DeviceError(f"engine error {errors}")


SM = SoftmaxConfig(method="online", in_dtype="int16", in_frac=8, lanes=4, depth=64, max_len=64)
GE = GeluConfig(method="rom", in_dtype="int16", in_frac=11, out_frac=11, lanes=4, depth=64)
LN = LayerNormConfig(in_dtype="int16", in_frac=8, lanes=3, depth=64, max_len=64)


def test_host_softmax_float_and_int():
    dev = RtlDevice(SM)
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(2, 40, 5, generator=g) * 3  # softmax over dim 1, 10 rows (two chunks)
    x[0, 3, 1] = float("-inf")
    x[1, :, 4] = float("-inf")  # a fully masked row
    got = NL.softmax(dev, x, dim=1)
    q = (x.double() * 256).round().clamp(-32767, 32767).long()
    q[torch.isneginf(x)] = -32768
    exact = softmax_model(q.movedim(1, -1).reshape(-1, 40), SM).reshape(2, 5, 40).movedim(-1, 1)
    assert torch.equal((got.double() * 2**15).round().long(), exact)
    ref = torch.softmax(x.double(), dim=1).nan_to_num(0.0)
    # the model's bound plus the input's quantisation (2**-9 per logit moves p by <= 2**-10)
    assert (got.double() - ref).abs().max() <= 2.5e-4 + 2**-10
    assert (got[1, :, 4] == 0).all() and got.dtype == torch.float32
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[0, 0, 0] = True
    assert NL.softmax(dev, x, dim=1, mask=mask)[0, 0, 0] == 0


def test_host_gelu_float_and_int():
    dev = RtlDevice(GE)
    x = torch.linspace(-9, 9, 301, dtype=torch.float64).view(7, 43)
    got = NL.gelu(dev, x)
    q = (x * 2**11).round().clamp(-32768, 32767).long()
    assert torch.equal((got * 2**11).round().long(), gelu_model(q, GE))
    inside = x.abs() < 15.9
    assert ((got - F.gelu(x)).abs()[inside]).max() <= 3.5e-4 + 2**-12


def test_host_layer_norm():
    dev = RtlDevice(LN)
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(4, 3, 20, generator=g, dtype=torch.float64) * 2 + 1
    w = torch.rand(20, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(20, generator=g, dtype=torch.float64) * 0.5
    got = NL.layer_norm(dev, x, 20, w, b)
    q = (x * 256).round().long()
    gi, bi = (w * 4096).round().long(), (b * 2048).round().long()
    ref = F.layer_norm(q / 256.0, (20,), gi / 4096.0, bi / 2048.0, eps=LN.eps)
    assert (got - ref).abs().max() <= 1.5e-3  # the engine's bound, on the quantised operands
    exact = layernorm_model(q.view(-1, 20), gi, bi, LN).view(4, 3, 20)
    assert torch.equal(NL.layer_norm_int(dev, q, gi, bi), exact)


@pytest.mark.parametrize(
    "call,msg",
    [
        (lambda d: NL.softmax(d, torch.zeros(3, 65)),
         "rows must have 1..64 elements for this softmax engine, not 65"),
        (lambda d: NL.softmax(d, torch.zeros(3, 4, dtype=torch.int32)),
         "x must be a floating-point torch tensor, not a tensor of torch.int32"),
        (lambda d: NL.softmax(d, torch.zeros(3, 4), dim=2),
         "dim must be in -2..1 for a 2-d x, not 2"),
        (lambda d: NL.softmax_int(d, torch.full((2,), 40000)),
         "softmax: 2 of 2 values of x lie outside the int16 range -32768..32767, the farthest "
         "40000; pass range='saturate' to clamp them"),
        (lambda d: NL.softmax(d, torch.tensor([1.0, float("nan")])), "x must not contain NaN"),
        (lambda d: NL.gelu(d, torch.zeros(3)),
         "this accelerator has no gelu engine (it has: softmax)"),
    ],
)
def test_host_usage_errors(call, msg):
    with pytest.raises(UsageError) as e:
        call(RtlDevice(SM))
    assert str(e.value) == msg


def test_host_layer_norm_usage_errors():
    dev = RtlDevice(LN)
    x = torch.zeros(2, 8)
    with pytest.raises(UsageError) as e:
        NL.layer_norm(dev, x, (2, 8))
    assert str(e.value) == "normalized_shape must be the size of x's last dimension (8), not (2, 8)"
    with pytest.raises(UsageError) as e:
        NL.layer_norm(dev, x, 8, torch.full((8,), 9.0))
    assert str(e.value) == (
        "layer_norm: 8 of 8 values of weight lie outside the input range -8..7.999755859375 "
        "(int16 with 12 fraction bits), the farthest 9; pass range='saturate' to clamp them"
    )
    with pytest.raises(UsageError) as e:
        NL.layer_norm(dev, x, 8, eps=1e-6)
    assert str(e.value) == "eps must be the engine's 1e-05 (a generation parameter), not 1e-06"


def test_pack_rows_round_trip():
    g = torch.Generator().manual_seed(SEED)
    for lanes in (1, 2, 3, 5, 16):
        for width in (8, 16):
            x = torch.randint(-(2 ** (width - 1)), 2 ** (width - 1), (3, 11), generator=g).numpy()
            stride = 1 << max(0, (-(-lanes * width // 32) - 1).bit_length())
            words = NL.pack_rows(x, lanes=lanes, width=width, stride=stride)
            back = NL.unpack_rows(words, rows=3, n=11, lanes=lanes, width=width, stride=stride,
                                  signed=True)  # fmt: skip
            assert (back == x).all()


@pytest.mark.slow
def test_host_nonlinear_on_sim_board():
    """The whole accelerator (AXI top, controller, host link) under Verilator, three engines."""
    import gatesmith.host

    # Engines in alphabetical order: the identity ROM's JSON (sort_keys) lists engines by kind,
    # so a Device sees that order whatever the top was built with (gatesmith/config.py).
    cfg = AccelConfig(
        name="nl",
        engines=(
            GeluConfig(lanes=2, depth=64, max_len=64),
            LayerNormConfig(lanes=2, depth=64, max_len=64),
            SoftmaxConfig(lanes=2, depth=64, max_len=64),
        ),
    )
    g = torch.Generator().manual_seed(SEED)
    with gatesmith.host.open("sim", config=cfg) as dev:
        ge, ln, sm = cfg.engines
        x = torch.randn(5, 33, generator=g, dtype=torch.float64) * 2
        x[2, :] = float("-inf")
        p = NL.softmax(dev, x)
        q = (x * 2**sm.in_frac).round().clamp(-32767, 32767).nan_to_num(-32768).long()
        q[torch.isneginf(x)] = -32768
        assert torch.equal((p * 2**15).round().long(), softmax_model(q, sm))
        y = NL.gelu(dev, x[:2])
        assert torch.equal((y * 2**ge.out_frac).round().long(),
                           gelu_model((x[:2] * 2**ge.in_frac).round().long(), ge))  # fmt: skip
        w = torch.rand(33, generator=g, dtype=torch.float64) + 0.5
        b = torch.randn(33, generator=g, dtype=torch.float64)
        z = NL.layer_norm(dev, x[:2], 33, w, b)
        ref = layernorm_model((x[:2] * 2**ln.in_frac).round().long(), (w * 4096).round().long(),
                              (b * 2048).round().long(), ln)  # fmt: skip
        assert torch.equal((z * 2**ln.out_frac).round().long(), ref)
        with pytest.raises(UsageError):
            NL.softmax(dev, torch.zeros(2, 65, dtype=torch.float64))
