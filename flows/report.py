"""Utilisation and timing reports of a bitstream build.

Two sources, both machine-readable:

* Yosys ``stat -json`` after synthesis (``top.stat.json``): cell counts per primitive, turned into
  an *estimate* of LUT/FF/DSP/BRAM use with :func:`estimate_from_yosys`. The fit check runs on it
  before place-and-route.
* nextpnr ``--report`` (``top.report.json``): the packed design's use of each BEL type and the
  achieved Fmax per clock, read with :func:`parse_nextpnr_report`. These are the reported figures.

:class:`BuildReport` holds the result of one build and writes ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "ResourceUse",
    "BuildReport",
    "RESOURCES",
    "estimate_from_yosys",
    "parse_nextpnr_report",
    "critical_path",
    "explain_nextpnr_failure",
]

# The four figures every report has, in order: our name -> label.
RESOURCES = {"lut": "LUT4", "ff": "FF", "dsp": "DSP", "bram": "BRAM"}

# nextpnr BEL type of each figure, per family. iCE40 logic cells hold a LUT4 and a FF each and
# nextpnr counts cells, not flip-flops: FF use on iCE40 comes from the synthesis counts.
_NEXTPNR_BELS = {
    "ecp5": {"lut": "TRELLIS_COMB", "ff": "TRELLIS_FF", "dsp": "MULT18X18D", "bram": "DP16KD"},
    "ice40": {"lut": "ICESTORM_LC", "dsp": "ICESTORM_DSP", "bram": "ICESTORM_RAM"},
}


@dataclass(frozen=True)
class ResourceUse:
    """``used`` of ``available`` units of one resource; ``primitive`` names the unit."""

    used: int
    available: int
    primitive: str = ""

    @property
    def fraction(self) -> float:
        return self.used / self.available if self.available else 0.0

    def as_dict(self) -> dict:
        return {
            "used": self.used,
            "available": self.available,
            "primitive": self.primitive,
            "percent": round(100 * self.fraction, 2),
        }


def _cells_by_type(stat: dict) -> dict[str, int]:
    design = stat.get("design", stat)
    cells = design.get("num_cells_by_type")
    if cells is None:  # older Yosys: per module only
        cells = {}
        for mod in stat.get("modules", {}).values():
            for k, v in mod.get("num_cells_by_type", {}).items():
                cells[k] = cells.get(k, 0) + v
    return {k: int(v) for k, v in cells.items() if not k.startswith("$scopeinfo")}


def estimate_from_yosys(stat: dict | str | Path, family: str) -> dict[str, int]:
    """LUT/FF/DSP/BRAM use estimated from Yosys ``stat -json`` of the synthesised design.

    ECP5: a CCU2C carry cell fills two LUT4 positions and a 16x4 distributed RAM
    (TRELLIS_DPR16X4) takes a slice pair; nextpnr's packed TRELLIS_COMB count is usually
    within ~15% above this (it adds feed-through LUTs). iCE40: nextpnr packs a LUT4, a FF and a
    carry into each logic cell, so the LC count lies between max(luts, ffs) and luts + ffs +
    carries; ``lut`` is an estimate of it (see the comment below).
    The result also carries ``cells`` (total primitive count).
    """
    if not isinstance(stat, dict):
        stat = json.loads(Path(stat).read_text())
    cells = _cells_by_type(stat)

    def count(*names, prefix=None):
        n = sum(cells.get(k, 0) for k in names)
        if prefix:
            n += sum(v for k, v in cells.items() if k.startswith(prefix))
        return n

    if family == "ecp5":
        est = {
            "lut": count("LUT4") + 2 * count("CCU2C") + 4 * count("TRELLIS_DPR16X4"),
            "ff": count("TRELLIS_FF"),
            "dsp": count("MULT18X18D"),
            "bram": count("DP16KD"),
        }
    elif family == "ice40":
        luts, ffs, carries = count("SB_LUT4"), count(prefix="SB_DFF"), count("SB_CARRY")
        est = {
            # logic cells: max + min/2 + carries/2 matched nextpnr within 5% on a 170-cell and a
            # 5,700-cell design (half the flip-flops and carries find no LUT to share a cell with)
            "lut": max(luts, ffs) + (min(luts, ffs) + carries + 1) // 2,
            "ff": ffs,
            "dsp": count("SB_MAC16"),
            "bram": count("SB_RAM40_4K"),
        }
    else:
        raise ValueError(f"family must be ecp5 or ice40, not {family!r}")
    est["cells"] = sum(cells.values())
    return est


def parse_nextpnr_report(path: str | Path, family: str) -> tuple[dict[str, ResourceUse], dict]:
    """(utilisation, fmax) from a nextpnr ``--report`` JSON file.

    utilisation maps ``lut``/``dsp``/``bram`` (and ``ff`` on ECP5) to :class:`ResourceUse`;
    fmax maps each clock net to ``{"achieved": MHz, "constraint": MHz}``.
    """
    data = json.loads(Path(path).read_text())
    util = data.get("utilization", {})
    out = {}
    for ours, bel in _NEXTPNR_BELS[family].items():
        if bel in util:
            out[ours] = ResourceUse(int(util[bel]["used"]), int(util[bel]["available"]), bel)
    fmax = {
        clk: {"achieved": float(v["achieved"]), "constraint": float(v["constraint"])}
        for clk, v in data.get("fmax", {}).items()
    }
    return out, fmax


def critical_path(path: str | Path) -> dict | None:
    """The slowest register-to-register path of a nextpnr ``--report``: its first and last cell,
    total, logic and routing delay in ns; None when the report has no such path."""
    data = json.loads(Path(path).read_text())
    best = None
    for cp in data.get("critical_paths", []):
        if not (cp.get("from", "").startswith("pos") and cp.get("to", "").startswith("pos")):
            continue
        steps = cp.get("path", [])
        if not steps:
            continue
        total = sum(step["delay"] for step in steps)
        if best is None or total > best["delay_ns"]:
            routing = sum(step["delay"] for step in steps if step["type"] == "routing")
            best = {
                "from": steps[0]["from"]["cell"],
                "to": steps[-1]["to"]["cell"],
                "delay_ns": round(total, 2),
                "logic_ns": round(total - routing, 2),
                "routing_ns": round(routing, 2),
            }
    return best


_UTIL_LINE = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", re.MULTILINE)
_NEXTPNR_FAILURES = [
    (
        re.compile(r"no BELs remaining to implement cell type '(\w+)'"),
        "the design needs more {0} cells than the part has",
    ),
    (
        re.compile(r"Failed to expand region .* of (\d+) (\w+)s"),
        "the placer could not fit {0} {1} cells into the part",
    ),
    (re.compile(r"Unable to find legal placement for cell"), "the placer found no legal placement"),
    (re.compile(r"(Failed to route|Routing design failed|route failed)"), "routing failed"),
]


def explain_nextpnr_failure(log: str) -> str | None:
    """A one-line reason for a nextpnr failure log, or None when the log shows no known cause.

    A part too small for the design shows in nextpnr's utilisation table (printed after packing,
    before placement fails): each over-full BEL type is named with its need and the part's count.
    """
    over = [
        f"{used} {bel} cells but the part has {avail}"
        for bel, used, avail in ((b, int(u), int(a)) for b, u, a in _UTIL_LINE.findall(log))
        if used > avail
    ]
    if over:
        return "the design needs " + " and ".join(over)
    lines = log.splitlines()
    for line in [ln for ln in lines if "ERROR" in ln] + lines:
        for pattern, text in _NEXTPNR_FAILURES:
            match = pattern.search(line)
            if match:
                return text.format(*match.groups())
    return None


@dataclass
class BuildReport:
    """What one bitstream build produced and measured.

    ``utilisation``: nextpnr's packed counts (``lut``, ``ff``, ``dsp``, ``bram``) as
    :class:`ResourceUse`; ``estimate``: the post-synthesis counts the fit check used.
    ``fmax_mhz``: the slowest achieved clock (nextpnr, post-route); ``target_mhz``: the clock
    timed against (with a PLL, the PLL's frequency); ``board_clock_mhz``: the board's oscillator;
    ``clock_source``: ``oscillator`` or ``pll``; ``run_mhz``: the clock the bitstream runs at
    (the config's ``clock_hz`` in the identity ROM); ``pll``: its dividers and VCO frequency;
    ``passes``: with ``clock="closure"``, each build (requested, PLL and reached MHz, seconds).
    ``stage_seconds``: wall time of each stage; ``critical_path``: see :func:`critical_path`.
    """

    board: str
    device: str
    family: str
    design: str
    config_hash: str
    target_mhz: float
    board_clock_mhz: float
    fmax_mhz: float | None = None
    clocks: dict = field(default_factory=dict)
    utilisation: dict = field(default_factory=dict)
    estimate: dict = field(default_factory=dict)
    stage_seconds: dict = field(default_factory=dict)
    critical_path: dict | None = None
    bitstream: str = ""
    tools: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    clock_source: str = "oscillator"
    run_mhz: float | None = None
    pll: dict | None = None
    passes: list = field(default_factory=list)

    @property
    def timing_met(self) -> bool:
        return self.fmax_mhz is not None and self.fmax_mhz >= self.target_mhz

    @property
    def board_clock_met(self) -> bool:
        return self.fmax_mhz is not None and self.fmax_mhz >= self.board_clock_mhz

    @property
    def total_seconds(self) -> float:
        return round(sum(self.stage_seconds.values()), 2)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["utilisation"] = {k: v.as_dict() for k, v in self.utilisation.items()}
        d["timing_met"] = self.timing_met
        d["board_clock_met"] = self.board_clock_met
        d["total_seconds"] = self.total_seconds
        return d

    def _clock_lines(self) -> list:
        if self.clock_source != "pll":
            return [f"- Runs from the {self.board_clock_mhz:g} MHz oscillator (no PLL)."]
        divs = ", ".join(f"{k} {v}" for k, v in (self.pll or {}).items())
        lines = [f"- Runs at {self.run_mhz:.3f} MHz from a PLL ({divs})."]
        if len(self.passes) > 1:
            lines.append(
                "- Builds: "
                + "; ".join(
                    f"{i}: PLL {p['pll_mhz']:g} MHz, reached {p['fmax_mhz']} MHz, "
                    f"{p['seconds']:.0f} s"
                    for i, p in enumerate(self.passes, 1)
                )
                + "."
            )
        return lines

    def to_markdown(self) -> str:
        fmax = "n/a" if self.fmax_mhz is None else f"{self.fmax_mhz:.1f} MHz"
        met = "met" if self.timing_met else "NOT met"
        lines = [
            f"# Bitstream build: {self.design} on {self.board} ({self.device})",
            "",
            f"- Fmax {fmax} against a {self.target_mhz:g} MHz target: {met}; the board clock is "
            f"{self.board_clock_mhz:g} MHz ({'met' if self.board_clock_met else 'NOT met'}).",
            *self._clock_lines(),
            f"- Bitstream: `{self.bitstream}`; config hash `{self.config_hash[:16]}`.",
            f"- Build time {self.total_seconds:.1f} s: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in self.stage_seconds.items())
            + ".",
            "",
            "| resource | primitive | used | available | use | post-synthesis estimate |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for key, label in RESOURCES.items():
            u = self.utilisation.get(key)
            est = self.estimate.get(key, "")
            if u is None:
                lines.append(f"| {label} | | | | | {est} |")
            else:
                lines.append(
                    f"| {label} | {u.primitive} | {u.used} | {u.available} | "
                    f"{100 * u.fraction:.1f}% | {est} |"
                )
        if self.clocks:
            lines += ["", "| clock | achieved MHz | constraint MHz |", "| --- | ---: | ---: |"]
            for clk, v in self.clocks.items():
                lines.append(f"| `{clk}` | {v['achieved']:.2f} | {v['constraint']:g} |")
        if self.critical_path:
            cp = self.critical_path
            lines += [
                "",
                f"Critical path: `{cp['from']}` -> `{cp['to']}`, {cp['delay_ns']:.2f} ns "
                f"({cp['logic_ns']:.2f} ns logic, {cp['routing_ns']:.2f} ns routing).",
            ]
        if self.notes:
            lines += ["", "Notes:", ""] + [f"- {n}" for n in self.notes]
        if self.tools:
            lines += ["", "Tools: " + "; ".join(f"{k}: {v}" for k, v in self.tools.items())]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``report.json`` and ``report.md`` into ``out_dir``; returns their paths."""
        out = Path(out_dir)
        js, md = out / "report.json", out / "report.md"
        js.write_text(json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n")
        md.write_text(self.to_markdown())
        return js, md
