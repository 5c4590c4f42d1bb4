"""How full an iCE40 build of a config is, per block, without place-and-route.

For a design that does not fit (the bitstream flow stops at its fit check), this gives the
figures place-and-route would start from: yosys ``synth_ice40 -dsp`` of the board top as the
bitstream flow elaborates it (its script writes ``top.json``), then ``nextpnr-ice40
--pack-only`` for the logic-cell count, and the flip-flops and LUT4s of the flattened netlist
attributed to the design's blocks by the name of the net each cell drives (a heuristic: a LUT
feeding another block's register counts there).

    python benchmarks/ice40_fill.py                                  # examples/icebreaker.yaml
    python benchmarks/ice40_fill.py --config my.yaml --out benchmarks/results/my_fill

Results: ``<out>.md`` and ``<out>.json``; the build files under ``--work-dir``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from gatesmith.boards import get_board
from gatesmith.config import load_config
from gatesmith.flows.bitstream import _elaborate, _tool_cmd

# (block, net-name prefixes) in match order; the first match wins
BLOCKS = (
    ("controller (queues, fetcher, units)", ("link.link.accel.ctrl", "link.link.accel.cmd__")),
    ("DMA channels", ("link.link.accel.load", "link.link.accel.store")),
    ("register queue", ("link.link.accel.regq", "link.link.accel.assembling")),
    ("AXI4 interconnect", ("link.link.accel.interconnect",)),
    ("engines", ("link.link.accel.engine",)),
    ("AXI4-Lite top (counters, ROM, arbitration)", ("link.link.accel",)),
    ("host-link bridge", ("link.link.bridge",)),
    ("device memory", ("link.ram",)),
    ("board (UART, reset)", ("",)),
)


def attribute(netlist: dict) -> dict:
    """block -> {"ff": n, "lut": n} from a yosys JSON netlist of the flattened top."""
    mod = netlist["modules"]["top"]
    names = {}
    for name, info in mod["netnames"].items():
        if info.get("hide_name"):
            continue
        for bit in info["bits"]:
            if isinstance(bit, int) and (bit not in names or len(name) < len(names[bit])):
                names[bit] = name
    out = {b: {"ff": 0, "lut": 0} for b, _ in BLOCKS}
    for cell in mod["cells"].values():
        kind = cell["type"]
        if kind.startswith("SB_DFF"):
            key, bit = "ff", cell["connections"]["Q"][0]
        elif kind == "SB_LUT4":
            key, bit = "lut", cell["connections"]["O"][0]
        else:
            continue
        net = names.get(bit, "")
        block = next(b for b, prefixes in BLOCKS if any(net.startswith(p) for p in prefixes))
        out[block][key] += 1
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="examples/icebreaker.yaml")
    p.add_argument("--board", default="icebreaker")
    p.add_argument("--freq-mhz", type=float, default=24.0)
    p.add_argument("--work-dir", default="out/ice40_fill")
    p.add_argument("--out", default="benchmarks/results/icebreaker_fill")
    args = p.parse_args(argv)
    cfg, board = load_config(args.config), get_board(args.board)
    if board.family != "ice40":
        p.error(f"{board.name} is not an iCE40 board")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    yosys, nextpnr, _ = _elaborate(cfg, board, work, args.freq_mhz * 1e6, None, True)
    subprocess.run(_tool_cmd(yosys), cwd=work, check=True, capture_output=True)
    t1 = time.monotonic()
    cmd = [a for a in _tool_cmd(nextpnr) if a != "--asc" and a != "top.asc"] + ["--pack-only"]
    subprocess.run(cmd, cwd=work, check=True, capture_output=True)
    t2 = time.monotonic()
    used = {}
    for line in (work / "top.tim").read_text().splitlines():
        m = re.search(r"(ICESTORM_(?:LC|RAM|DSP|SPRAM)):\s+(\d+)/\s*(\d+)", line)
        if m:
            used[m.group(1)] = [int(m.group(2)), int(m.group(3))]
    stat = json.loads((work / "top.stat.json").read_text())["design"]["num_cells_by_type"]
    cells = {k: stat.get(k, 0) for k in ("SB_LUT4", "SB_CARRY", "SB_RAM40_4K", "SB_MAC16")}
    cells["FF"] = sum(v for k, v in stat.items() if k.startswith("SB_DFF"))
    blocks = attribute(json.loads((work / "top.json").read_text()))
    result = {"config": args.config, "board": board.name, "device": board.device,
              "packed": used, "cells": cells, "blocks": blocks,
              "seconds": {"synthesis": round(t1 - t0, 1), "pack": round(t2 - t1, 1)}}  # fmt: skip
    lc, lc_cap = used["ICESTORM_LC"]
    lines = [
        f"# {args.config} on {board.name} ({board.device}): fill before place-and-route",
        "",
        (
            f"Logic cells after packing: {lc} of {lc_cap} ({100 * lc / lc_cap:.0f}%); "
            f"{cells['SB_LUT4']} SB_LUT4, {cells['FF']} FF, {cells['SB_CARRY']} SB_CARRY, "
            f"{cells['SB_MAC16']} SB_MAC16, {cells['SB_RAM40_4K']} SB_RAM40_4K "
            f"(of {used['ICESTORM_RAM'][1]}). Synthesis {t1 - t0:.0f} s, packing {t2 - t1:.0f} s."
        ),
        "",
        "| block | LUT4 | FF |",
        "|---|---|---|",
        *(f"| {b} | {v['lut']} | {v['ff']} |" for b, v in blocks.items()),
        "",
        "Blocks by the name of the net each cell drives (`benchmarks/ice40_fill.py`).",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
