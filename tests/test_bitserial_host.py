"""Bit-serial host driver: integer matmul at every precision and quantised linear, exact.

Three devices serve the driver: ``ModelDevice`` (the engine's memories and instructions run by
the golden model's ``execute``), ``RtlDevice`` (the engine's RTL in the Amaranth simulator) and
the simulated board (``gatesmith.host.open("sim")``: the whole accelerator under Verilator).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from gatesmith.config import AccelConfig
from gatesmith.errors import DeviceError, UsageError
from gatesmith.generators.bitserial import model as M
from gatesmith.generators.bitserial.config import BitserialConfig
from gatesmith.generators.bitserial.engine import BitserialEngine, window_layout
from gatesmith.generators.engine import ENGINE_WINDOW_BASE, ErrorCode
from gatesmith.host import bitserial as B

SEED = 99
CFG = BitserialConfig(lanes=4, pes=2, group_size=8, w_depth=32, a_depth=32, g_depth=16,
                      r_depth=16)


class _WindowDevice:
    def __init__(self, cfg):
        self.cfg = cfg
        self.config = AccelConfig(engines=(cfg,))
        self.win = {w.name: w for w in window_layout(cfg)}
        self.instructions = 0

    def window_base(self, kind):
        return ENGINE_WINDOW_BASE + self.config.engine_index(kind) * 0x0100_0000


class ModelDevice(_WindowDevice):
    """The engine's memories and instructions, run by the golden model."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.mem = {w.name: np.zeros((w.depth, w.stride), np.uint32) for w in self.win.values()}
        self.error = ErrorCode.NONE

    def _locate(self, off):
        for w in self.win.values():
            if w.offset <= off < w.offset + w.depth * w.stride:
                return w, (off - w.offset) // w.stride, (off - w.offset) % w.stride
        raise AssertionError(f"word {off:#x} is outside every region")

    def write(self, addr, words):
        off = (addr - self.window_base("bitserial")) // 4
        for i, v in enumerate(np.asarray(words, dtype=np.uint32)):
            w, e, s = self._locate(off + i)
            assert "w" in w.access
            self.mem[w.name][e, s] = v

    def read(self, addr, n):
        off = (addr - self.window_base("bitserial")) // 4
        out = []
        for i in range(n):
            w, e, s = self._locate(off + i)
            out.append(self.mem[w.name][e, s])
        return np.array(out, dtype=np.uint32)

    def execute(self, instrs):
        for words in instrs:
            self.instructions += 1
            mm = self.mem
            err = M.execute(self.cfg, M.Instr.from_words(words), mm["weights"], mm["acts"],
                            mm["groups"], mm["results"])
            self.error = self.error or err

    def wait(self):
        if self.error:
            e, self.error = self.error, ErrorCode.NONE
            raise DeviceError(f"the accelerator reported {e.name}")


class RtlDevice(_WindowDevice):
    """The engine's RTL in the Amaranth simulator, stepped on demand by the host calls."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.dut = BitserialEngine(cfg)
        self.sim = Simulator(self.dut)
        self.sim.add_clock(1e-6)
        self.ops, self.errors = [], []
        self.sim.add_testbench(self._serve, background=True)

    async def _serve(self, ctx):
        dut = self.dut
        while True:
            if not self.ops:
                await ctx.tick()
                continue
            op = self.ops[0]
            if op["kind"] == "write":
                for i, w in enumerate(op["words"]):
                    ctx.set(dut.host.addr, op["off"] + i)
                    ctx.set(dut.host.w_data, int(w))
                    ctx.set(dut.host.w_en, 1)
                    assert not ctx.get(dut.host.err)
                    await ctx.tick()
                ctx.set(dut.host.w_en, 0)
            elif op["kind"] == "read":
                out = []
                for i in range(op["n"]):
                    ctx.set(dut.host.addr, op["off"] + i)
                    ctx.set(dut.host.r_en, 1)
                    await ctx.tick()
                    ctx.set(dut.host.r_en, 0)
                    out.append(ctx.get(dut.host.r_data))
                op["result"] = np.array(out, dtype=np.uint32)
            else:
                ctx.set(dut.cmd.payload, sum(int(w) << 32 * i for i, w in enumerate(op["words"])))
                ctx.set(dut.cmd.valid, 1)
                await ctx.tick()
                ctx.set(dut.cmd.valid, 0)
                while not ctx.get(dut.done):
                    await ctx.tick()
                self.errors.append(ErrorCode(ctx.get(dut.error)))
                await ctx.tick()
            op["done"] = True
            self.ops.pop(0)

    def _do(self, op):
        op["done"] = False
        self.ops.append(op)
        while not op["done"]:
            self.sim.advance()
        return op.get("result")

    def write(self, addr, words):
        self._do({"kind": "write", "off": (addr - self.window_base("bitserial")) // 4,
                  "words": np.asarray(words)})

    def read(self, addr, n):
        return self._do({"kind": "read", "off": (addr - self.window_base("bitserial")) // 4,
                         "n": n})

    def execute(self, instrs):
        for words in instrs:
            self.instructions += 1
            self._do({"kind": "instr", "words": words})

    def wait(self):
        bad = [e for e in self.errors if e]
        self.errors = []
        if bad:
            raise DeviceError(f"the accelerator reported {bad[0].name}")


def _ints(g, shape, bits, enc):
    if enc == "bipolar":
        return 2 * torch.randint(0, 1 << bits, shape, generator=g) - ((1 << bits) - 1)
    return torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), shape, generator=g)


@pytest.mark.parametrize("w_bits", range(1, 9))
@pytest.mark.parametrize("enc", ["twos", "bipolar"])
def test_matmul_every_precision_model_device(w_bits, enc):
    g = torch.Generator().manual_seed(SEED + w_bits)
    dev = ModelDevice(CFG)
    # big enough to split K (32 words x 4 lanes), N and M over several instructions
    a = _ints(g, (40, 150), 8, "twos")
    w = _ints(g, (150, 7), w_bits, enc)
    got = B.matmul(dev, a, w, w_bits=w_bits, w_encoding=enc)
    assert got.dtype == torch.int32
    torch.testing.assert_close(got, (a.long() @ w.long()).to(torch.int32), rtol=0, atol=0)
    assert dev.instructions > 3


@pytest.mark.parametrize("w_bits,enc,a_bits,a_enc", [(1, "bipolar", 8, "twos"),
                                                     (3, "twos", 4, "bipolar"),
                                                     (8, "twos", 8, "twos")])
def test_matmul_rtl_device(w_bits, enc, a_bits, a_enc):
    g = torch.Generator().manual_seed(SEED + 10 * w_bits)
    dev = RtlDevice(CFG)
    a = _ints(g, (3, 21), a_bits, a_enc)
    w = _ints(g, (21, 5), w_bits, enc)
    got = B.matmul(dev, a, w, w_bits=w_bits, a_bits=a_bits, w_encoding=enc, a_encoding=a_enc)
    torch.testing.assert_close(got, (a.long() @ w.long()).to(torch.int32), rtol=0, atol=0)


@pytest.mark.parametrize("bits,types", [(4, "bitmod"), (3, "bitmod"), (4, "int")])
@pytest.mark.parametrize("device", ["model", "rtl"])
def test_linear_quantised(bits, types, device):
    g = torch.Generator().manual_seed(SEED + bits)
    dev = ModelDevice(CFG) if device == "model" else RtlDevice(CFG)
    n, k, m = 5, 29 if device == "rtl" else 200, 3
    w = torch.randn(n, k, generator=g)
    w[0, 3] = 6.0  # an outlier
    x = torch.randn(m, k, generator=g)
    qw = B.quantize(dev, w, bits=bits, types=types)
    y = B.linear(dev, x, qw)
    from gatesmith.host.quant import quantize_activations

    xq, sx = quantize_activations(x, 8)
    ref = (xq.double() * sx[:, None]) @ qw.dequantize().T
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-5)
    # and against the float reference: within the quantisation error actually made
    bound = (x.double().abs() @ (qw.dequantize() - w.double()).abs().T
             + (x.double() - xq.double() * sx[:, None]).abs() @ qw.dequantize().abs().T)
    assert bool(((y.double() - x.double() @ w.double().T).abs() <= bound + 1e-4).all())


def test_usage_errors():
    dev = ModelDevice(CFG)
    a = torch.ones(2, 3, dtype=torch.int64)
    w = torch.ones(3, 2, dtype=torch.int64)
    cases = [
        (lambda: B.matmul(dev, a, w, w_bits=9),
         "w_bits must be an integer in 1..8 on this engine, not 9"),
        (lambda: B.matmul(dev, a, w, w_bits=4, a_encoding="ones"),
         "a_encoding must be 'twos' or 'bipolar', not 'ones'"),
        (lambda: B.matmul(dev, a, w.T, w_bits=4),
         "a and w do not chain: a is 2x3, w is 2x3 (a's columns must equal w's rows)"),
        (lambda: B.matmul(dev, a, w * 8, w_bits=4),
         "matmul: 6 of 6 values of w lie outside the 4-bit twos range -8..7, the farthest 8; "
         "pass range='saturate' to clamp them"),
        (lambda: B.matmul(dev, a, w * 2, w_bits=4, w_encoding="bipolar"),
         "w must hold odd integers for the bipolar encoding"),
        (lambda: B.matmul(dev, a.float(), w, w_bits=4), "a must be an integer tensor, not "
         "torch.float32"),
        (lambda: B.linear(dev, a.float(), w), "qw must be a QuantizedWeight (from quantize), "
         "not Tensor"),
    ]
    for call, msg in cases:
        with pytest.raises(UsageError) as e:
            call()
        assert str(e.value) == msg
    other = ModelDevice(BitserialConfig(lanes=4, pes=2, group_size=16, encodings=("twos",)))
    qw = B.quantize(dev, torch.randn(2, 3))
    with pytest.raises(UsageError) as e:
        B.linear(other, torch.randn(2, 3), qw)
    assert str(e.value) == ("qw was quantised with group_size 8, but this engine's group_size "
                            "is 16")
    for bad in (float("inf"), float("nan")):
        x = torch.ones(2, 3)
        x[1, 2] = bad
        with pytest.raises(UsageError) as e:
            B.linear(dev, x, qw)
        assert str(e.value) == "x must be finite (no inf or NaN): its rows are scaled by their absmax"
    with pytest.raises(UsageError) as e:
        B.matmul(other, a, w, w_bits=4, w_encoding="bipolar")
    assert str(e.value) == "w_encoding 'bipolar' is not built into this engine (built: twos)"


@pytest.mark.slow
def test_sim_board_matmul_and_linear():
    """The whole accelerator (AXI top, controller, host link) under Verilator."""
    import gatesmith.host

    cfg = AccelConfig(engines=(CFG,))
    g = torch.Generator().manual_seed(SEED)
    with gatesmith.host.open("sim", config=cfg) as dev:
        for w_bits in (1, 4, 8):
            a = _ints(g, (9, 45), 8, "twos")
            w = _ints(g, (45, 6), w_bits, "twos")
            got = B.matmul(dev, a, w, w_bits=w_bits)
            torch.testing.assert_close(got, (a.long() @ w.long()).to(torch.int32), rtol=0, atol=0)
        w = torch.randn(6, 45, generator=g)
        x = torch.randn(4, 45, generator=g)
        qw = B.quantize(dev, w, bits=4)
        from gatesmith.host.quant import quantize_activations

        xq, sx = quantize_activations(x, 8)
        ref = (xq.double() * sx[:, None]) @ qw.dequantize().T
        torch.testing.assert_close(B.linear(dev, x, qw).double(), ref, rtol=1e-6, atol=1e-5)
