"""PIM host side: the mapper places every weight once, keeps banks busy, and GEMV is exact.

Two devices serve the host driver here: ``ModelDevice`` executes the engine's window and
instructions with the golden model (fast, for property tests of the mapper and driver), and
``RtlDevice`` runs the engine's RTL in the Amaranth simulator (the hardware itself).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from gatesmith.config import AccelConfig
from gatesmith.errors import DeviceError, UsageError
from gatesmith.generators.engine import ENGINE_WINDOW_BASE, ENGINE_WINDOW_SIZE, ErrorCode
from gatesmith.generators.pim import PimConfig
from gatesmith.generators.pim.cycles import FIRST_ACT, PIPE
from gatesmith.generators.pim.engine import PimEngine
from gatesmith.generators.pim.isa import GemvInstr
from gatesmith.generators.pim.model import PimState, gemv, reference_gemv, unpack_results
from gatesmith.host import pim

CFG = PimConfig(banks=3, lanes=4, row_size=16, rows_per_bank=64, vector_depth=128,
                result_depth=8, t_rcd=3, t_rp=2, t_ccd=1, burst=1)  # fmt: skip


def _unpack_words(words, cfg):
    """Window words -> operands (the inverse of model.pack_operands)."""
    w = cfg.fmt.width
    per = cfg.lanes if cfg.word_bits <= 32 else 32 // w
    words = np.asarray(words, dtype=np.int64)
    vals = (words[:, None] >> (np.arange(per) * w)) & ((1 << w) - 1)
    return torch.from_numpy(np.where(vals >= 1 << (w - 1), vals - (1 << w), vals).reshape(-1))


class _WindowDevice:
    def __init__(self, cfg: PimConfig):
        self.config = AccelConfig(engines=(cfg,))
        self.cfg = cfg

    def window_base(self, kind):
        return ENGINE_WINDOW_BASE + self.config.engine_index(kind) * ENGINE_WINDOW_SIZE


class ModelDevice(_WindowDevice):
    """The engine as its golden model behind the window protocol."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.state = PimState(cfg)
        self.errors = []

    def write(self, addr, words):
        cfg, off = self.cfg, (addr - self.window_base("pim")) // 4
        win = cfg.windows()
        if off >= win["xoff"].offset and off < win["xoff"].offset + cfg.banks:
            for i, v in enumerate(words):
                self.state.xoff[off - win["xoff"].offset + i] = int(v)
            return
        for name, flat in (("weights", self.state.weights.view(-1)), ("vector", self.state.vector)):
            w = win[name]
            if w.offset <= off < w.offset + w.depth * w.stride:
                ops = _unpack_words(words, cfg)
                start = (off - w.offset) * (cfg.lanes // w.stride)
                flat[start : start + ops.numel()] = ops
                return
        raise AssertionError(f"write to unmapped window word {off}")

    def read(self, addr, n):
        cfg, off = self.cfg, (addr - self.window_base("pim")) // 4
        w = cfg.windows()["results"]
        vals = self.state.results.reshape(-1).numpy()
        stride = w.stride
        words = np.zeros(len(vals) * stride, dtype=np.uint64)
        for i in range(stride):
            words[i::stride] = (vals.view(np.uint64) >> np.uint64(32 * i)) & np.uint64(0xFFFFFFFF)
        start = off - w.offset
        return words[start : start + n].astype(np.uint32)

    def execute(self, instrs):
        for words in instrs:
            self.errors.append(gemv(self.state, GemvInstr.from_words(words)))

    def wait(self):
        bad = [e for e in self.errors if e != ErrorCode.NONE]
        self.errors = []
        if bad:
            raise DeviceError(f"engine error {bad[0].name}")


class RtlDevice(_WindowDevice):
    """The engine's RTL in the Amaranth simulator, stepped on demand by the host calls."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.dut = PimEngine(cfg)
        self.sim = Simulator(self.dut)
        self.sim.add_clock(1e-6)
        self.ops = []
        self.sim.add_testbench(self._serve, background=True)
        self.cycles = []

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
                c = 1
                while not ctx.get(dut.done):
                    await ctx.tick()
                    c += 1
                op["result"] = (ErrorCode(ctx.get(dut.error)), c)
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
        self._do({"kind": "write", "off": (addr - self.window_base("pim")) // 4, "words": words})

    def read(self, addr, n):
        return self._do({"kind": "read", "off": (addr - self.window_base("pim")) // 4, "n": n})

    def execute(self, instrs):
        for words in instrs:
            err, cycles = self._do({"kind": "cmd", "words": words})
            self.cycles.append(cycles)
            if err != ErrorCode.NONE:
                raise DeviceError(f"engine error {err.name}")

    def wait(self):
        pass


# -- mapper ---------------------------------------------------------------------------------------

shapes = st.tuples(st.integers(1, 40), st.integers(1, 128))


@settings(max_examples=150, deadline=None)
@given(shape=shapes, strategy=st.sampled_from(pim.STRATEGIES), banks=st.integers(1, 5))
def test_every_weight_placed_exactly_once(shape, strategy, banks):
    cfg = PimConfig(banks=banks, lanes=4, row_size=16, rows_per_bank=1024, vector_depth=128)
    n, k = shape
    plan = pim.plan_gemv(cfg, n, k, strategy=strategy)
    count = np.zeros((n, k), dtype=np.int64)
    slots = set()
    for bank, row, out, k0, length in pim.placements(cfg, plan):
        assert 0 <= bank < banks and 0 <= row < plan.rows and 1 <= length <= cfg.row_size
        assert (bank, row) not in slots  # no two pieces share a row
        slots.add((bank, row))
        count[out, k0 : k0 + length] += 1
    assert (count == 1).all()


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), dtype=st.sampled_from(["int8", "int4"]))
def test_model_device_gemv_exact(shape, seed, dtype):
    cfg = PimConfig(banks=3, lanes=4, row_size=16, rows_per_bank=1024, vector_depth=128,
                    result_depth=4, dtype=dtype)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    lo, hi = cfg.fmt.min, cfg.fmt.max + 1
    w = torch.randint(lo, hi, shape, generator=g, dtype=torch.int8)
    x = torch.randint(lo, hi, (shape[1],), generator=g, dtype=torch.int8)
    dev = ModelDevice(cfg)
    for strategy in pim.STRATEGIES:
        h = pim.load_weights(dev, w, strategy=strategy)
        y = pim.gemv(dev, x, h)
        assert y.dtype == torch.int32
        assert torch.equal(y.long(), reference_gemv(w, x, 32)), strategy


def test_auto_keeps_banks_busy():
    """Remainder outputs are column-split over all banks instead of leaving banks idle."""
    cfg = PimConfig(banks=4, lanes=8, row_size=64, rows_per_bank=1024, vector_depth=1024)
    for n, k in [(5, 1024), (1, 1000), (9, 700), (4, 1024), (13, 333)]:
        auto = pim.plan_gemv(cfg, n, k)
        row = pim.plan_gemv(cfg, n, k, strategy="row")
        assert auto.cycles <= row.cycles
        if n % cfg.banks and -(-k // cfg.row_size) >= cfg.banks:
            # within 5% of the row plan's work spread evenly over every bank, plus each extra
            # instruction's fixed start and drain
            fixed = FIRST_ACT + PIPE
            ideal = fixed + (row.cycles - fixed) * (n / cfg.banks) / -(-n // cfg.banks)
            assert auto.cycles <= 1.05 * ideal + (len(auto.passes) - 1) * fixed, (n, k, auto, row)
    one = pim.plan_gemv(cfg, 1, 1024)
    assert one.passes[0].parts == 4  # a single output uses every bank


def test_resident_weights_and_one_off():
    cfg = CFG
    dev = ModelDevice(cfg)
    g = torch.Generator().manual_seed(7)
    w1 = torch.randint(-128, 128, (7, 40), generator=g)
    w2 = torch.randint(-128, 128, (2, 16), generator=g)
    h1 = pim.load_weights(dev, w1)
    h2 = pim.load_weights(dev, w2)
    for _ in range(3):
        x1 = torch.randint(-128, 128, (40,), generator=g)
        x2 = torch.randint(-128, 128, (16,), generator=g)
        assert torch.equal(pim.gemv(dev, x1, h1).long(), reference_gemv(w1, x1))
        assert torch.equal(pim.gemv(dev, x2, h2).long(), reference_gemv(w2, x2))
    w3 = torch.randint(-128, 128, (4, 33), generator=g)
    x3 = torch.randint(-128, 128, (33,), generator=g)
    rows_before = pim._dev_state(dev).next_row
    assert torch.equal(pim.gemv(dev, x3, w3).long(), reference_gemv(w3, x3))
    assert pim._dev_state(dev).next_row == rows_before  # the one-off is not kept
    assert torch.equal(pim.gemv(dev, x1, h1).long(), reference_gemv(w1, x1))


def test_usage_errors():
    dev = ModelDevice(CFG)
    good = torch.zeros(2, 8, dtype=torch.int8)
    cases = [
        (lambda: pim.load_weights(dev, good.float()),
         "w must be an integer tensor (int8 values), not torch.float32"),
        (lambda: pim.load_weights(dev, torch.zeros(8, dtype=torch.int8)),
         "w must have 2 dimension(s), not shape (8,)"),
        (lambda: pim.load_weights(dev, torch.full((2, 2), 200)),
         "load_weights: 4 of 4 values of w lie outside the int8 range -128..127, the farthest "
         "200; pass range='saturate' to clamp them"),
        (lambda: pim.load_weights(dev, torch.zeros(2, 129, dtype=torch.int8)),
         "weights have 129 columns but the engine's vector buffer holds 128"),
        (lambda: pim.load_weights(dev, good, strategy="diag"),
         "strategy must be one of auto, row, col, not 'diag'"),
        (lambda: pim.load_weights(dev, torch.zeros(200, 128, dtype=torch.int8)),
         "w needs 536 rows per bank but only 64 of 64 are free"),
        (lambda: pim.gemv(dev, torch.zeros(9, dtype=torch.int8), pim.load_weights(dev, good)),
         "x must have 8 elements to match w (2, 8), not 9"),
        (lambda: pim.gemv(dev, torch.zeros(8), good),
         "x must be an integer tensor (int8 values), not torch.float32"),
        (lambda: pim.gemv(dev, torch.zeros(8, dtype=torch.int8), [[1]]),
         "w must be a WeightHandle or an integer tensor, not list"),
    ]  # fmt: skip
    for call, msg in cases:
        with pytest.raises(UsageError) as e:
            call()
        assert str(e.value) == msg


# -- on the RTL -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,k,dual,seed",
    [(7, 40, False, 0), (2, 64, True, 1), (3, 17, False, 2), (1, 48, True, 3)],
)
def test_rtl_device_gemv_exact_and_cycles_predicted(n, k, dual, seed):
    cfg = PimConfig(banks=3, lanes=4, row_size=16, rows_per_bank=64, vector_depth=64,
                    result_depth=8, t_rcd=3, t_rp=2, t_ccd=1, burst=1, dual_row_buffer=dual)  # fmt: skip
    print(f"seed={seed}")
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    w[0, 0] = -128
    dev = RtlDevice(cfg)
    h = pim.load_weights(dev, w)
    for _ in range(2):
        x = torch.randint(-128, 128, (k,), generator=g, dtype=torch.int8)
        x[0] = -128
        y = pim.gemv(dev, x, h)
        assert torch.equal(y.long(), reference_gemv(w, x)), (y, reference_gemv(w, x))
    assert sum(dev.cycles) == 2 * h.plan.cycles


def test_rtl_device_reports_engine_errors():
    dev = RtlDevice(CFG)
    with pytest.raises(DeviceError, match="OUT_OF_RANGE"):
        dev.execute([GemvInstr(rounds=9, segments=1, cols_last=1).words()])
    res = CFG.windows()["results"]
    assert unpack_results(dev.read(dev.window_base("pim") + 4 * res.offset, 2), 32).tolist() == [0, 0]


# -- on the simulated board (the whole accelerator under Verilator) --------------------------------


@pytest.mark.slow
def test_sim_board_resident_gemv():
    """AXI top, controller, queue and host link in front of the PIM engine, beside a systolic one."""
    import gatesmith.host
    from gatesmith.generators.systolic.config import SystolicConfig

    pcfg = PimConfig(banks=3, lanes=4, row_size=32, rows_per_bank=64, vector_depth=128,
                     result_depth=8, t_rcd=3, t_rp=2, t_ccd=2, burst=2)  # fmt: skip
    cfg = AccelConfig(name="pimsys", engines=(SystolicConfig(rows=2, cols=2, spad_depth=64,
                      acc_depth=32), pcfg), link_max_words=64)  # fmt: skip
    g = torch.Generator().manual_seed(21)
    with gatesmith.host.open("sim", config=cfg) as dev:
        w = torch.randint(-128, 128, (10, 70), generator=g, dtype=torch.int8)
        w[0] = -128
        h = pim.load_weights(dev, w)
        before = dev.perf()["macs"]
        for _ in range(3):
            x = torch.randint(-128, 128, (70,), generator=g, dtype=torch.int8)
            x[:5] = -128
            assert torch.equal(pim.gemv(dev, x, h).long(), reference_gemv(w, x))
        cols = sum(  # every MAC the engine did is counted by the accelerator
            ins.rounds * (pcfg.cols_per_row * (ins.segments - 1) + ins.cols_last)
            for ps in h.plan.passes for _, ins in ps.instrs(pcfg.result_depth))  # fmt: skip
        assert dev.perf()["macs"] - before == 3 * cols * pcfg.burst * pcfg.macs_per_cycle
        w2 = torch.randint(-8, 8, (3, 5), generator=g)
        x2 = torch.randint(-8, 8, (5,), generator=g)
        assert torch.equal(pim.gemv(dev, x2, w2).long(), reference_gemv(w2, x2))
