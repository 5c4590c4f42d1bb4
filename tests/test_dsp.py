"""generators/dsp.py: the registered multiplier, behavioural and as an ECP5 MULT18X18D.

The behavioural form runs in the Amaranth simulator against ``a * b`` delayed by the latency
(seeded random operands, the extremes, a clock enable, a reset). The MULT18X18D form cannot be
simulated (yosys ships it as a black box), so it is checked where it can be: yosys's synth_ecp5
keeps exactly the instance, with its registers switched on, and adds no fabric flip-flops for the
product.
"""

import json
import random
import subprocess

import pytest
from amaranth import ClockDomain, Elaboratable, Module, Signal
from amaranth.back import rtlil
from amaranth.hdl import signed, unsigned
from amaranth.sim import Simulator

from gatesmith.flows.bitstream import find_tool
from gatesmith.generators.dsp import Target, fits_mult18, multiply

SEED = 20261202


class _Mul(Elaboratable):
    def __init__(self, sa, sb, latency, with_en=False):
        self.a, self.b = Signal(sa), Signal(sb)
        self.en = Signal(init=1) if with_en else None
        self.latency = latency
        self.p = Signal((signed if sa.signed or sb.signed else unsigned)(sa.width + sb.width))

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.p.eq(multiply(m, platform, self.a, self.b, latency=self.latency,
                                       en=self.en))  # fmt: skip
        return m


def _values(shape, rng, n):
    lo = -(1 << (shape.width - 1)) if shape.signed else 0
    hi = (1 << (shape.width - 1)) - 1 if shape.signed else (1 << shape.width) - 1
    return [lo, hi, 0, lo, hi] + [rng.randint(lo, hi) for _ in range(n)]


@pytest.mark.parametrize("latency", [1, 2, 3])
@pytest.mark.parametrize(
    "sa,sb", [(signed(8), signed(8)), (unsigned(8), signed(8)), (unsigned(18), unsigned(18)),
              (signed(18), signed(18)), (signed(25), signed(9))],  # fmt: skip
)
def test_behavioural_latency_and_values(sa, sb, latency):
    rng = random.Random(SEED + latency + sa.width)
    dut = _Mul(sa, sb, latency, with_en=True)
    fragment = dut.elaborate(None)
    av, bv = _values(sa, rng, 60), _values(sb, rng, 60)
    bv = (bv * 2)[: len(av)]
    enables = [1] * 10 + [rng.randint(0, 1) for _ in range(len(av) - 10)]
    sim = Simulator(fragment)
    sim.add_clock(1e-6)
    seen = []

    async def bench(ctx):
        # the expected output: a register chain of `latency` stages, all enabled by `en`
        stages = [0] * latency
        for a, b, en in zip(av, bv, enables):
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            ctx.set(dut.en, en)
            await ctx.tick()
            if en:  # every stage moves on together
                if latency == 1:
                    stages = [a * b]
                else:
                    # inputs registered first, then the product (and the pipeline register)
                    stages = [a * b] + stages[:-1]
            seen.append((ctx.get(dut.p), stages[-1]))

    sim.add_testbench(bench)
    sim.run()
    assert seen and all(got == want for got, want in seen), seen[:8]


def test_reset_clears_every_stage():
    dut = _Mul(signed(8), signed(8), 3)
    top = Module()
    top.domains.sync = cd = ClockDomain("sync")
    top.submodules.dut = dut
    sim = Simulator(top)
    sim.add_clock(1e-6)
    out = []

    async def bench(ctx):
        ctx.set(dut.a, -128)
        ctx.set(dut.b, -128)
        await ctx.tick().repeat(4)
        out.append(ctx.get(dut.p))
        ctx.set(dut.a, 0)
        ctx.set(dut.b, 0)
        ctx.set(cd.rst, 1)
        await ctx.tick()
        ctx.set(cd.rst, 0)
        out.append(ctx.get(dut.p))

    sim.add_testbench(bench)
    sim.run()
    assert out == [16384, 0]


def test_fits_mult18():
    assert fits_mult18(Signal(signed(18)), Signal(signed(18)))
    assert fits_mult18(Signal(unsigned(18)), Signal(unsigned(18)))
    assert fits_mult18(Signal(unsigned(17)), Signal(signed(18)))
    assert not fits_mult18(Signal(unsigned(18)), Signal(signed(8)))
    assert not fits_mult18(Signal(signed(19)), Signal(signed(8)))


def test_latency_is_checked():
    with pytest.raises(ValueError, match="latency must be 1, 2 or 3, not 4"):
        multiply(Module(), None, Signal(8), Signal(8), latency=4)


@pytest.mark.parametrize("latency", [1, 2, 3])
def test_ecp5_keeps_the_registers_in_the_dsp(tmp_path, latency):
    dut = _Mul(signed(8), unsigned(8), latency)
    text = rtlil.convert(dut, name="top", platform=Target("ecp5"),
                         ports=[dut.a, dut.b, dut.p])  # fmt: skip
    (tmp_path / "top.il").write_text(text)
    script = "read_rtlil top.il; synth_ecp5 -top top -json top.json"
    r = subprocess.run([find_tool("yosys"), "-q", "-p", script], cwd=tmp_path,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    cells = json.loads((tmp_path / "top.json").read_text())["modules"]["top"]["cells"]
    kinds = [c["type"] for c in cells.values()]
    assert kinds.count("MULT18X18D") == 1
    assert "TRELLIS_FF" not in kinds  # no product or operand register left in the fabric
    dsp = next(c for c in cells.values() if c["type"] == "MULT18X18D")
    params = {k: v for k, v in dsp["parameters"].items() if k.startswith("REG_")}

    def clk(name):
        return params[f"REG_{name}_CLK"].strip()

    assert clk("OUTPUT") == "CLK0"
    assert clk("INPUTA") == clk("INPUTB") == ("CLK0" if latency >= 2 else "NONE")
    assert clk("PIPELINE") == ("CLK0" if latency == 3 else "NONE")
    # mixed signedness: both inputs in signed mode, the unsigned one zero-extended
    conns = dsp["connections"]
    assert conns["SIGNEDA"] == ["1"] and conns["SIGNEDB"] == ["1"]


def test_ecp5_without_dsp_blocks_is_behavioural():
    class NoDsp:
        family = "ecp5"
        use_dsp_blocks = False

    dut = _Mul(signed(8), signed(8), 2)
    text = rtlil.convert(dut, name="top", platform=NoDsp(), ports=[dut.a, dut.b, dut.p])
    assert "MULT18X18D" not in text
    dut = _Mul(signed(8), signed(8), 2)
    text = rtlil.convert(dut, name="top", platform=Target("ecp5"), ports=[dut.a, dut.b, dut.p])
    assert "MULT18X18D" in text
    # too wide for one block: behavioural, yosys splits it
    dut = _Mul(signed(20), signed(8), 2)
    text = rtlil.convert(dut, name="top", platform=Target("ecp5"), ports=[dut.a, dut.b, dut.p])
    assert "MULT18X18D" not in text
