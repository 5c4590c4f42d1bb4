"""PLLs in the board tops (boards/pll.py) and the build flow's clock modes (flows/bitstream.py).

Two references for the divider search: the Trellis and IceStorm calculators themselves
(``yowasp-ecppll``, ``yowasp-icepll``), and nextpnr, which derives the PLL output's frequency
from the dividers in the netlist. Real builds: a UART echo on the iCEBreaker (seconds); the
ULX3S build is in the slow tier.
"""

import json
import re
import subprocess

import pytest

from gatesmith.boards import get_board
from gatesmith.boards.pll import LIMITS, pll_params
from gatesmith.config import AccelConfig
from gatesmith.errors import ConfigError
from gatesmith.flows.bitstream import build_bitstream, find_tool

from .test_boards import EchoLink


def _tool(name):
    return find_tool("ecppack" if name == "ecppll" else "icepack").replace(
        "ecppack" if name == "ecppll" else "icepack", name
    )


def _ecppll(fin, fout):
    out = subprocess.run([_tool("ecppll"), "-i", f"{fin:g}", "-o", f"{fout:g}"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    got = dict(re.findall(r"(Refclk divisor|Feedback divisor|clkout0 divisor|clkout0 frequency)"
                          r": ([\d.]+)", out))  # fmt: skip
    divs = {"CLKI_DIV": int(got["Refclk divisor"]), "CLKFB_DIV": int(got["Feedback divisor"]),
            "CLKOP_DIV": int(got["clkout0 divisor"])}  # fmt: skip
    return divs, float(got["clkout0 frequency"])


def _icepll(fin, fout):
    out = subprocess.run([_tool("icepll"), "-i", f"{fin:g}", "-o", f"{fout:g}"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    divs = {k: int(v) for k, v in re.findall(r"^(DIVR|DIVF|DIVQ|FILTER_RANGE): +(\d+)", out, re.M)}
    return divs, float(re.search(r"([\d.]+) MHz \(achieved\)", out).group(1))


def _check_limits(p):
    lim, d = LIMITS[p.family], p.dividers
    if p.family == "ecp5":
        pfd = p.fin_hz / 1e6 / d["CLKI_DIV"]
        assert p.fout_hz == pytest.approx(p.fin_hz / d["CLKI_DIV"] * d["CLKFB_DIV"])
        assert p.fvco_hz == pytest.approx(p.fout_hz * d["CLKOP_DIV"])
    else:
        pfd = p.fin_hz / 1e6 / (d["DIVR"] + 1)
        assert p.fvco_hz == pytest.approx(pfd * 1e6 * (d["DIVF"] + 1))
        assert p.fout_hz == pytest.approx(p.fvco_hz / 2 ** d["DIVQ"])
    for key, f in (("pfd", pfd), ("vco", p.fvco_hz / 1e6), ("out", p.fout_mhz)):
        assert lim[key][0] <= f <= lim[key][1], key


# reachable exactly (the tools and we must pick the same dividers) and not (we round down)
ECP5_EXACT = [50, 75, 87.5, 100, 120, 150, 200]
ECP5_INEXACT = [66, 133, 141]
ICE40_EXACT = [24, 30, 36, 48, 33]
ICE40_INEXACT = [25, 50.3]


def test_divider_search_matches_the_vendor_calculators():
    for f in ECP5_EXACT:
        p = pll_params("ecp5", 25e6, f * 1e6)
        divs, fout = _ecppll(25, f)
        assert (p.dividers, p.fout_mhz) == (divs, pytest.approx(fout)), f
        _check_limits(p)
    for f in ICE40_EXACT:
        p = pll_params("ice40", 12e6, f * 1e6)
        divs, fout = _icepll(12, f)
        assert (p.dividers, p.fout_mhz) == (divs, pytest.approx(fout)), f
        _check_limits(p)
    # unreachable requests: never above, and at least as close as the tools' choice when that
    # is below the request (they pick the nearest, which may be above)
    for family, fin, freqs, tool in (("ecp5", 25, ECP5_INEXACT, _ecppll),
                                     ("ice40", 12, ICE40_INEXACT, _icepll)):  # fmt: skip
        for f in freqs:
            p = pll_params(family, fin * 1e6, f * 1e6)
            _, theirs = tool(fin, f)
            assert p.fout_mhz < f
            if theirs <= f:
                assert p.fout_mhz >= theirs - 1e-3
            _check_limits(p)


def test_every_request_rounds_down_within_limits():
    for family, fin in (("ecp5", 25e6), ("ice40", 12e6)):
        lo, hi = LIMITS[family]["out"]
        prev = 0.0
        for mhz in range(int(lo) + 1, int(hi), 7):
            p = pll_params(family, fin, mhz * 1e6)
            assert p.fout_mhz <= mhz + 1e-9
            assert p.fout_mhz >= prev - 1e-9  # monotone in the request
            prev = p.fout_mhz
            _check_limits(p)


def test_pll_errors():
    with pytest.raises(ConfigError, match="no ice40 PLL setting gives 12 MHz or less"):
        pll_params("ice40", 12e6, 12e6)  # the iCE40 PLL's output starts at 16 MHz
    with pytest.raises(ConfigError, match="ecp5 PLL input must be 8-400 MHz, not 1 MHz"):
        pll_params("ecp5", 1e6, 50e6)
    with pytest.raises(ConfigError, match="no PLL model for the 'gowin' family"):
        pll_params("gowin", 27e6, 50e6)
    with pytest.raises(ConfigError, match="clock must be one of board, pll, closure"):
        build_bitstream(AccelConfig(), "icebreaker", "unused", clock="fast")
    with pytest.raises(ConfigError, match="margin must be a fraction"):
        build_bitstream(AccelConfig(), "icebreaker", "unused", margin=0.7)


def _derived_mhz(out_dir):
    log = (out_dir / "build" / "top.tim").read_text()
    return [float(x) for x in re.findall(r"Derived frequency constraint of ([\d.]+) MHz", log)]


def test_icebreaker_pll_build(tmp_path):
    """A PLL build: nextpnr derives the clock the dividers give; the ROM's config records it."""
    cfg = AccelConfig(name="echo", baud=115_200)
    rep = build_bitstream(cfg, "icebreaker", tmp_path, freq_mhz=25, clock="pll", link=EchoLink)
    p = pll_params("ice40", 12e6, 25e6)
    assert rep.clock_source == "pll" and rep.run_mhz == pytest.approx(p.fout_mhz) == 24.75
    assert rep.pll == {"fvco_mhz": pytest.approx(p.fvco_hz / 1e6), **p.dividers}
    assert _derived_mhz(tmp_path) == [pytest.approx(24.75, abs=0.051)]  # printed to 0.1 MHz
    assert rep.target_mhz == pytest.approx(24.75) and rep.timing_met
    assert rep.config["clock_hz"] == 24_750_000  # what the identity ROM and the host see
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["run_mhz"] == rep.run_mhz and saved["clock_source"] == "pll"
    assert "Runs at 24.750 MHz from a PLL" in (tmp_path / "report.md").read_text()
    # the oscillator mode has no PLL cell
    osc = tmp_path / "osc"
    rep = build_bitstream(cfg, "icebreaker", osc, freq_mhz=25, clock="board", link=EchoLink)
    assert rep.clock_source == "oscillator" and rep.run_mhz == 12 and rep.pll is None
    assert _derived_mhz(osc) == []
    assert re.search(r"ICESTORM_PLL: +0/ +1", (osc / "build" / "top.tim").read_text())
    assert re.search(r"ICESTORM_PLL: +1/ +1", (tmp_path / "build" / "top.tim").read_text())


def test_closure_rebuilds_below_the_reached_fmax(tmp_path):
    """Asked for more than the design reaches, closure rebuilds at (1 - margin) of its Fmax."""
    cfg = AccelConfig(name="echo", baud=115_200)
    events = []
    rep = build_bitstream(cfg, "icebreaker", tmp_path, freq_mhz=250, link=EchoLink,
                          margin=0.1, progress=events.append)  # fmt: skip
    first, *rest = rep.passes
    assert first["pll_mhz"] <= 250 and first["fmax_mhz"] < first["pll_mhz"]
    assert rest, "a missed target must be rebuilt"
    for prev, cur in zip(rep.passes, rest):
        assert cur["requested_mhz"] == pytest.approx(prev["fmax_mhz"] * 0.9, abs=1e-3)
        assert cur["pll_mhz"] <= cur["requested_mhz"] + 1e-9
    assert rep.run_mhz == pytest.approx(rep.passes[-1]["pll_mhz"], abs=1e-3)
    assert rep.timing_met or len(rep.passes) == 3
    assert any(n.startswith("build 1 reached") for n in rep.notes)
    assert any("build 2: PLL at" in e.message for e in events if e.status == "info")


@pytest.mark.slow
def test_ulx3s_pll_build(tmp_path):
    cfg = AccelConfig(name="echo")
    rep = build_bitstream(cfg, "ulx3s", tmp_path, freq_mhz=133, clock="pll", link=EchoLink)
    p = pll_params("ecp5", 25e6, 133e6)
    assert rep.run_mhz == pytest.approx(p.fout_mhz)
    assert rep.pll["CLKOP_DIV"] == p.dividers["CLKOP_DIV"]
    assert _derived_mhz(tmp_path) == [pytest.approx(p.fout_mhz, abs=0.06)]  # ps, 0.1 MHz
    assert rep.timing_met
    assert get_board("ulx3s").clock_hz == 25_000_000
