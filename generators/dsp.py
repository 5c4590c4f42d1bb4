"""Multipliers that keep their pipeline registers in the FPGA's DSP blocks.

yosys's ``synth_ecp5`` maps a multiplication onto a MULT18X18D used combinationally: registers
written around it stay in the fabric, so a register -> multiplier -> register path pays the
routing into and out of the DSP on top of its 3.9 ns (8.8-10.4 ns measured, about 110 MHz at
speed 6). With the block's own input and output registers the same 18x18 product closes near
190 MHz (../TOOLCHAIN.md's hand-instantiated 4x4 array).

So the engines multiply through :func:`multiply`: the product of two signals ``latency`` cycles
later. Elaborated for an ECP5 platform (``platform.family == "ecp5"``; a board platform, or
:class:`Target` for an out-of-context build) with operands that fit one 18x18 block, it
instantiates MULT18X18D with its registers: REG_OUTPUT for latency 1, REG_INPUTA/B as well for
latency 2, REG_PIPELINE as well for latency 3. Everywhere else (simulation, the ASIC flow,
iCE40, whose yosys pass already packs registers into SB_MAC16) it is the same registers around
``*``. Both forms have the same latency, the same clock enable and the same synchronous reset to
zero, so an engine's cycle model holds for either.

The MULT18X18D form cannot be simulated here: yosys ships the primitive as a black box only. Its
port wiring and parameters are checked in tests/test_dsp.py; the behavioural form, with the
same registers, is what every simulation runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import ClockSignal, Const, Instance, Module, ResetSignal, Signal, Value
from amaranth.hdl import signed, unsigned

__all__ = ["Target", "multiply", "dsp_family", "fits_mult18"]

_WIDTH = 18


@dataclass(frozen=True)
class Target:
    """The device family an out-of-context build is for (what a board platform would say)."""

    family: str


def dsp_family(platform) -> str | None:
    """The FPGA family whose DSP blocks ``platform`` asks for, or None (simulation, ASIC, no
    platform, or a platform whose ``use_dsp_blocks`` is False: the bitstream flow sets that when
    it maps the multipliers to LUTs)."""
    if not getattr(platform, "use_dsp_blocks", True):
        return None
    family = getattr(platform, "family", None)
    return family if isinstance(family, str) else None


def fits_mult18(a: Value, b: Value) -> bool:
    """Whether ``a * b`` fits one MULT18X18D (18x18 signed, or 18x18 both unsigned)."""
    sa, sb = a.shape().signed, b.shape().signed
    wa, wb = len(a), len(b)
    if not sa and not sb:
        return wa <= _WIDTH and wb <= _WIDTH
    # mixed signedness: the unsigned operand is zero-extended into an 18-bit signed input
    return wa + (not sa) <= _WIDTH and wb + (not sb) <= _WIDTH


def _reg(m: Module, value, en, name: str) -> Signal:
    r = Signal(value.shape(), name=name)
    if en is None:
        m.d.sync += r.eq(value)
    else:
        with m.If(en):
            m.d.sync += r.eq(value)
    return r


def multiply(m: Module, platform, a: Value, b: Value, *, latency: int = 2, en=None,
             name: str = "mul") -> Signal:  # fmt: skip
    """``a * b``, registered ``latency`` (1-3) times; on ECP5 in a MULT18X18D's registers.

    ``en`` (optional) is the clock enable of every stage. The result is ``len(a) + len(b)`` bits,
    signed when either operand is.
    """
    if latency not in (1, 2, 3):
        raise ValueError(f"multiply latency must be 1, 2 or 3, not {latency}")
    a, b = Value.cast(a), Value.cast(b)
    sa, sb = a.shape().signed, b.shape().signed
    out_shape = (signed if sa or sb else unsigned)(len(a) + len(b))
    out = Signal(out_shape, name=f"{name}_p")
    if dsp_family(platform) == "ecp5" and fits_mult18(a, b):
        _mult18x18d(m, a, b, out, latency, en, name)
        return out
    x, y = a, b
    if latency >= 2:
        x, y = _reg(m, a, en, f"{name}_a"), _reg(m, b, en, f"{name}_b")
    prod = Signal(out_shape, name=f"{name}_prod")
    m.d.comb += prod.eq(x * y)
    if latency == 3:
        prod = _reg(m, prod, en, f"{name}_pipe")
    m.d.comb += out.eq(_reg(m, prod, en, f"{name}_out"))
    return out


def _mult18x18d(m: Module, a: Value, b: Value, out: Signal, latency: int, en, name: str):
    signed_mode = a.shape().signed or b.shape().signed
    a18 = Signal(signed(_WIDTH) if signed_mode else unsigned(_WIDTH), name=f"{name}_a18")
    b18 = Signal(signed(_WIDTH) if signed_mode else unsigned(_WIDTH), name=f"{name}_b18")
    p36 = Signal(2 * _WIDTH, name=f"{name}_p36")
    m.d.comb += [a18.eq(a), b18.eq(b), out.eq(p36[: len(out)])]
    clk = lambda on: "CLK0" if on else "NONE"  # noqa: E731
    params = {
        "p_REG_INPUTA_CLK": clk(latency >= 2),
        "p_REG_INPUTB_CLK": clk(latency >= 2),
        "p_REG_INPUTC_CLK": "NONE",
        "p_REG_PIPELINE_CLK": clk(latency >= 3),
        "p_REG_OUTPUT_CLK": clk(True),
        **{f"p_REG_{r}_{k}": v for r in ("INPUTA", "INPUTB", "INPUTC", "PIPELINE", "OUTPUT")
           for k, v in (("CE", "CE0"), ("RST", "RST0"))},  # fmt: skip
        "p_CLK0_DIV": "ENABLED",
        "p_GSR": "DISABLED",
        "p_RESETMODE": "SYNC",
        "p_SOURCEB_MODE": "B_SHIFT",
        "p_MULT_BYPASS": "DISABLED",
        "p_CAS_MATCH_REG": "FALSE",
        "p_HIGHSPEED_CLK": "NONE",
    }
    one, zero = Const(1, 1), Const(0, 1)
    ports = {
        **{f"i_A{k}": a18[k] for k in range(_WIDTH)},
        **{f"i_B{k}": b18[k] for k in range(_WIDTH)},
        **{f"i_C{k}": zero for k in range(_WIDTH)},
        "i_SIGNEDA": Const(int(signed_mode), 1),
        "i_SIGNEDB": Const(int(signed_mode), 1),
        "i_SOURCEA": zero,
        "i_SOURCEB": zero,
        "i_CLK0": ClockSignal("sync"),
        "i_CE0": one if en is None else en,
        "i_RST0": ResetSignal("sync"),
        **{f"o_P{k}": p36[k] for k in range(2 * _WIDTH)},
    }
    m.submodules[name] = Instance("MULT18X18D", **params, **ports)
