"""PLLs for the board tops: the divider search of ecppll/icepll, and the clock domain they drive.

A board runs the design from a PLL so the bitstream can run at the frequency it closes at rather
than at the oscillator's. :func:`pll_params` picks the dividers for a requested frequency and
:class:`PLLDomain` instantiates the part's PLL primitive and gives the clock and reset::

    p = pll_params("ecp5", 25e6, 133e6)          # -> PLLParams(fout_hz=132.14e6, ...), never above
    m.submodules.pll = pll = PLLDomain(p, pin)   # pin: the oscillator's port (dir="-")
    m.domains.sync = cd = ClockDomain("sync")
    m.d.comb += [cd.clk.eq(pll.clk), cd.rst.eq(pll.rst)]

**Dividers.** The search is the one the Trellis and IceStorm tools do (``yowasp-ecppll``,
``yowasp-icepll``; ``tests/test_pll.py`` checks the two agree), with one change: the output
never exceeds the request. A build asks for the frequency timing closed at, so rounding up
would run the design faster than it was shown to work.

* ECP5 ``EHXPLLL`` (feedback from CLKOP): ``fout = fin / CLKI_DIV * CLKFB_DIV``, with the phase
  detector at ``fin / CLKI_DIV`` in 3.125-400 MHz, the VCO at ``fout * CLKOP_DIV`` in 400-800 MHz,
  the output in 10-400 MHz; among equal outputs the VCO nearest 600 MHz wins.
* iCE40 ``SB_PLL40_PAD`` (SIMPLE feedback): ``fout = fin / (DIVR + 1) * (DIVF + 1) / 2**DIVQ``,
  the phase detector in 10-133 MHz, the VCO (before the ``2**DIVQ`` divider) in 533-1066 MHz, the
  output in 16-275 MHz. FILTER_RANGE follows the phase-detector frequency as icepll sets it.

**Reset.** The design is held in reset until the PLL reports lock (through a two-flop
synchroniser) and then for :data:`POR_SECONDS` more: iCE40 block RAMs read zero for about 3 us
after configuration (the same delay Amaranth's iCE40 platform inserts, with its 5x margin).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import ClockDomain, Const, Elaboratable, Instance, Module, Signal
from amaranth.lib.cdc import FFSynchronizer

from ..errors import ConfigError

__all__ = ["PLLParams", "PLLDomain", "pll_params", "POR_SECONDS", "LIMITS"]

POR_SECONDS = 15e-6

# family -> (input, phase detector, VCO, output) ranges in MHz, as ecppll/icepll check them
LIMITS = {
    "ecp5": {"in": (8.0, 400.0), "pfd": (3.125, 400.0), "vco": (400.0, 800.0),
             "out": (10.0, 400.0)},
    "ice40": {"in": (10.0, 133.0), "pfd": (10.0, 133.0), "vco": (533.0, 1066.0),
              "out": (16.0, 275.0)},
}  # fmt: skip


@dataclass(frozen=True)
class PLLParams:
    """The dividers of one PLL and the frequencies they give (``fout_hz`` is what runs)."""

    family: str
    fin_hz: float
    fout_hz: float
    fvco_hz: float
    dividers: dict  # ECP5: CLKI_DIV, CLKFB_DIV, CLKOP_DIV; iCE40: DIVR, DIVF, DIVQ, FILTER_RANGE

    @property
    def fout_mhz(self) -> float:
        return self.fout_hz / 1e6


def _ecp5(fin: float, want: float):
    lim = LIMITS["ecp5"]
    best, best_key = None, None  # (fout, fvco, dividers); key: (fout, -|fvco - 600|)
    for clki in range(1, 129):
        fpfd = fin / clki
        if not lim["pfd"][0] <= fpfd <= lim["pfd"][1]:
            continue
        for fb in range(1, 81):
            fout = fpfd * fb
            if fout > want + 1e-9 or not lim["out"][0] <= fout <= lim["out"][1]:
                continue
            for op in range(1, 129):
                fvco = fout * op
                if not lim["vco"][0] <= fvco <= lim["vco"][1]:
                    continue
                key = (fout, -abs(fvco - 600.0))
                if best_key is None or key > best_key:
                    best_key = key
                    best = (fout, fvco, {"CLKI_DIV": clki, "CLKFB_DIV": fb, "CLKOP_DIV": op})
    return best


def _ice40_filter(fpfd: float) -> int:
    for rng, top in enumerate((17, 26, 44, 66, 101), start=1):
        if fpfd < top:
            return rng
    return 6


def _ice40(fin: float, want: float):
    lim = LIMITS["ice40"]
    best = None
    for divr in range(16):
        fpfd = fin / (divr + 1)
        if not lim["pfd"][0] <= fpfd <= lim["pfd"][1]:
            continue
        for divf in range(128):
            fvco = fpfd * (divf + 1)
            if not lim["vco"][0] <= fvco <= lim["vco"][1]:
                continue
            for divq in range(1, 7):
                fout = fvco / 2**divq
                if fout > want + 1e-9 or not lim["out"][0] <= fout <= lim["out"][1]:
                    continue
                if best is None or fout > best[0]:  # icepll keeps the first of equal outputs
                    divs = {"DIVR": divr, "DIVF": divf, "DIVQ": divq,
                            "FILTER_RANGE": _ice40_filter(fpfd)}  # fmt: skip
                    best = (fout, fvco, divs)
    return best


def pll_params(family: str, fin_hz: float, fout_hz: float) -> PLLParams:
    """The PLL setting of ``family`` nearest ``fout_hz`` from ``fin_hz`` without exceeding it.

    ConfigError when the family has no PLL model here, the input is outside the PLL's range, or
    no setting reaches the output range at or below ``fout_hz``.
    """
    if family not in LIMITS:
        raise ConfigError(f"no PLL model for the {family!r} family (known: {', '.join(LIMITS)})")
    lim = LIMITS[family]
    fin, want = fin_hz / 1e6, fout_hz / 1e6
    if not lim["in"][0] <= fin <= lim["in"][1]:
        raise ConfigError(
            f"{family} PLL input must be {lim['in'][0]:g}-{lim['in'][1]:g} MHz, not {fin:g} MHz"
        )
    found = (_ecp5 if family == "ecp5" else _ice40)(fin, want)
    if found is None:
        raise ConfigError(
            f"no {family} PLL setting gives {want:g} MHz or less from {fin:g} MHz: the output "
            f"range is {lim['out'][0]:g}-{lim['out'][1]:g} MHz"
        )
    fout, fvco, divs = found
    return PLLParams(family, float(fin_hz), fout * 1e6, fvco * 1e6, divs)


class PLLDomain(Elaboratable):
    """The PLL primitive for ``params`` fed by the oscillator ``pin``: a clock and its reset.

    The parent drives its ``sync`` domain from ``clk`` and ``rst``.
    ``pin`` is the clock resource requested with ``dir="-"``. ECP5: an input buffer feeds
    ``EHXPLLL``. iCE40: the pad feeds ``SB_PLL40_PAD`` directly (the pad then has no other use).
    ``locked`` is the PLL's lock output, synchronised to the new clock.
    """

    def __init__(self, params: PLLParams, pin):
        self.params, self.pin = params, pin
        self.locked = Signal()
        self.clk = Signal()
        self.rst = Signal(init=1)

    def elaborate(self, platform):
        from amaranth.lib import io

        m = Module()
        p, lock = self.params, Signal()
        d = p.dividers
        if p.family == "ecp5":
            m.submodules.clk_buf = buf = io.Buffer("i", self.pin)
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{p.fin_hz / 1e6:g}",
                a_FREQUENCY_PIN_CLKOP=f"{p.fout_hz / 1e6:.6g}",
                a_ICP_CURRENT="12",
                a_LPF_RESISTOR="8",
                a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED",
                p_INTFB_WAKE="DISABLED",
                p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED",
                p_OUTDIVIDER_MUXA="DIVA",
                p_OUTDIVIDER_MUXB="DIVB",
                p_OUTDIVIDER_MUXC="DIVC",
                p_OUTDIVIDER_MUXD="DIVD",
                p_CLKI_DIV=d["CLKI_DIV"],
                p_CLKOP_ENABLE="ENABLED",
                p_CLKOP_DIV=d["CLKOP_DIV"],
                p_CLKOP_CPHASE=d["CLKOP_DIV"] // 2,  # CLKOP 180 degrees shifted, as ecppll does
                p_CLKOP_FPHASE=0,
                p_FEEDBK_PATH="CLKOP",
                p_CLKFB_DIV=d["CLKFB_DIV"],
                i_RST=Const(0),
                i_STDBY=Const(0),
                i_CLKI=buf.i,
                o_CLKOP=self.clk,
                i_CLKFB=self.clk,
                i_PHASESEL0=Const(0),
                i_PHASESEL1=Const(0),
                i_PHASEDIR=Const(1),
                i_PHASESTEP=Const(1),
                i_PHASELOADREG=Const(1),
                i_PLLWAKESYNC=Const(0),
                i_ENCLKOP=Const(0),
                o_LOCK=lock,
            )
        elif p.family == "ice40":
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE",
                p_DIVR=Const(d["DIVR"], 4),
                p_DIVF=Const(d["DIVF"], 7),
                p_DIVQ=Const(d["DIVQ"], 3),
                p_FILTER_RANGE=Const(d["FILTER_RANGE"], 3),
                i_PACKAGEPIN=self.pin.io,
                i_RESETB=Const(1),
                i_BYPASS=Const(0),
                o_PLLOUTGLOBAL=self.clk,
                o_LOCK=lock,
            )
        else:  # pll_params refuses other families
            raise ConfigError(f"no PLL primitive for the {p.family!r} family")

        # rst: until lock, then POR_SECONDS more (counted on the new clock)
        m.domains.por = cd_por = ClockDomain("por", reset_less=True)
        m.d.comb += cd_por.clk.eq(self.clk)
        m.submodules.lock_sync = FFSynchronizer(lock, self.locked, o_domain="por")
        delay = max(1, int(POR_SECONDS * p.fout_hz))
        timer = Signal(range(delay + 1))
        with m.If(~self.locked):
            m.d.por += timer.eq(0)
        with m.Elif(timer != delay):
            m.d.por += timer.eq(timer + 1)
        m.d.comb += self.rst.eq(timer != delay)
        # no clock constraint here: nextpnr derives the output's from the dividers and the
        # oscillator pin's constraint ("Derived frequency constraint", checked in tests)
        return m
