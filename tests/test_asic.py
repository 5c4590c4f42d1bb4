"""ASIC view (flows/asic.py): real Yosys generic synthesis (yowasp), no PDK, no mocks.

The default tier synthesises tiny systolic engines on their own (seconds each once the yowasp
WebAssembly is compiled) and checks the LibreLane export and the error paths. Whole
accelerators are in the slow tier: ``pytest -m slow tests/test_asic.py``.
"""

import contextlib
import io
import json
import re

import pytest

from gatesmith.cli import main
from gatesmith.config import AccelConfig
from gatesmith.errors import ConfigError, ToolMissingError
from gatesmith.flows.asic import (
    FLOP_CELLS,
    AsicUnit,
    NAND2_EQ,
    SRAM_UM2_PER_BIT,
    UM2_PER_NAND2,
    asic_view,
    openlane_export,
)


def systolic_cfg(rows, cols, *, name=None, depth=32, **top):
    engine = dict(rows=rows, cols=cols, dtype="int8", dataflows=["os"], acc_width=24,
                  spad_depth=depth, acc_depth=depth)  # fmt: skip
    return AccelConfig.from_dict(
        {"name": name or f"s{rows}x{cols}", "engines": {"systolic": engine}, **top}
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The systolic engine alone, memories as macros: 1x1 through the CLI, 2x2 through the API.

    Returns ``{"cli": (exit code, stdout, stderr, out dir), 1: AsicUnit, 2: AsicReport}``.
    """
    out = tmp_path_factory.mktemp("asic")
    path = out / "s1.yaml"
    path.write_text(json.dumps(systolic_cfg(1, 1).to_dict()))  # JSON is YAML
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["asic", str(path), "-o", str(out / "s1"), "--engine", "systolic"])
    one = None
    if rc == 0:
        (entry,) = json.loads((out / "s1" / "asic.json").read_text())["units"]
        one = AsicUnit.from_dict(entry)
    two = asic_view(systolic_cfg(2, 2), out / "s2", engine="systolic")
    two.out_dir = out / "s2"  # for test_report_files
    return {"cli": (rc, stdout.getvalue(), stderr.getvalue(), out / "s1"), 1: one, 2: two}


def check_unit(unit):
    """The figures of one unit agree with each other and with the stated tables."""
    total = sum(unit.cells.values())
    assert total > 0 and unit.ff > 0 and unit.gates > 0
    assert unit.gates + unit.ff == total
    assert unit.ff == sum(unit.cells.get(t, 0) for t in FLOP_CELLS)
    assert unit.unknown_cells == {}, "every cell abc -g cmos emits has an area"
    assert unit.nand2_eq == pytest.approx(sum(NAND2_EQ[t] * n for t, n in unit.cells.items()))
    assert unit.logic_um2 == pytest.approx(unit.nand2_eq * UM2_PER_NAND2)
    assert unit.memory_bits == sum(m["width"] * m["depth"] for m in unit.memories)
    assert unit.sram_um2 == pytest.approx(unit.memory_bits * SRAM_UM2_PER_BIT)
    # CMOS gates have 2..12 transistors each and a flip-flop 16+
    assert 2 * unit.gates + 16 * unit.ff <= unit.transistors <= 12 * unit.gates + 32 * unit.ff


def test_cli_prints_the_table_and_writes_the_report(small):
    rc, stdout, stderr, out = small["cli"]
    assert rc == 0, stderr
    assert stdout.splitlines() == [f"{out}/asic.md", f"{out}/asic.json"]
    assert "gatesmith asic: s1x1" in stderr and "NAND2" in stderr  # the table and assumptions
    assert f"{sum(small[1].cells.values()):,}" in stderr


def test_engine_counts_are_consistent(small):
    for unit, design in ((small[1], "s1x1"), (small[2].units[0], "s2x2")):
        assert unit.name == "systolic" and unit.top == f"{design}_systolic"
        check_unit(unit)
        assert unit.memories, "the operand and accumulator memories (32 words) are macros"
        assert all(m["depth"] >= 32 and m["wr_ports"] for m in unit.memories)


def test_a_bigger_array_has_more_of_everything(small):
    one, two = small[1], small[2].units[0]
    assert sum(two.cells.values()) > sum(one.cells.values())
    assert two.ff > one.ff
    assert two.nand2_eq > one.nand2_eq
    assert two.memory_bits > one.memory_bits  # wider operand and accumulator rows


def test_report_files(small):
    rep = small[2]
    unit = rep.units[0]
    d = json.loads((rep.out_dir / "asic.json").read_text())
    assert d == json.loads(json.dumps(rep.to_dict()))
    assert d["units"][0]["ff"] == unit.ff and d["units"][0]["cells"] == unit.cells
    assert set(d["assumptions"]) >= {"nand2_eq", "um2_per_nand2", "memories", "sram_um2_per_bit"}
    md = (rep.out_dir / "asic.md").read_text()
    assert rep.to_markdown() in md
    assert (rep.out_dir / "build" / "systolic" / "synth.log").is_file()
    assert f"| systolic | {sum(unit.cells.values()):,} | {unit.ff:,} |" in md
    assert "sky130_fd_sc_hd__nand2_1" in md


# A tiny hand-written Liberty file (no PDK): each cell's area is what the test checks against.
TINY_AREAS = {"INVX1": 2.0, "NAND2X1": 3.0, "NOR2X1": 3.0, "DFFX1": 16.0}
TINY_LIB = """library(tiny) {
  delay_model : table_lookup;
  cell(INVX1) { area : 2.0; pin(A) { direction : input; }
    pin(Y) { direction : output; function : "!A"; } }
  cell(NAND2X1) { area : 3.0; pin(A) { direction : input; } pin(B) { direction : input; }
    pin(Y) { direction : output; function : "!(A&B)"; } }
  cell(NOR2X1) { area : 3.0; pin(A) { direction : input; } pin(B) { direction : input; }
    pin(Y) { direction : output; function : "!(A|B)"; } }
  cell(DFFX1) { area : 16.0; ff(IQ, IQN) { clocked_on : "CLK"; next_state : "D"; }
    pin(CLK) { direction : input; clock : true; } pin(D) { direction : input; }
    pin(Q) { direction : output; function : "IQ"; } }
}
"""


def test_liberty_mapping_takes_the_files_areas(small, tmp_path):
    lib = tmp_path / "tiny.lib"
    lib.write_text(TINY_LIB)
    rep = asic_view(systolic_cfg(1, 1), tmp_path / "out", engine="systolic", liberty=lib)
    (unit,) = rep.units
    assert unit.library == "tiny.lib" and rep.library == "tiny.lib"
    assert set(unit.cells) <= set(TINY_AREAS) and unit.cells.get("NAND2X1", 0) > 0
    assert unit.logic_um2 == pytest.approx(sum(TINY_AREAS[t] * n for t, n in unit.cells.items()))
    assert unit.nand2_eq is None and unit.transistors is None
    generic = small[1]  # the same design through Yosys's own gates
    assert unit.ff == generic.ff == unit.cells["DFFX1"]
    assert unit.memories == generic.memories
    assert "liberty" in rep.assumptions and "nand2_eq" not in rep.assumptions
    assert "| systolic |" in rep.to_markdown() and "mapped to tiny.lib" in rep.to_markdown()


def test_missing_liberty(tmp_path):
    with pytest.raises(ConfigError) as e:
        asic_view(systolic_cfg(1, 1), tmp_path, liberty=tmp_path / "none.lib")
    assert str(e.value) == f"liberty file {str(tmp_path / 'none.lib')!r} does not exist"


def test_openlane_export(tmp_path):
    cfg = systolic_cfg(1, 1, name="ol1", clock_hz=40_000_000)
    out = openlane_export(cfg, tmp_path / "ol")
    config = json.loads((out / "config.json").read_text())
    assert config["DESIGN_NAME"] == "ol1"
    assert config["CLOCK_PORT"] == "clk"
    assert config["CLOCK_PERIOD"] == pytest.approx(25.0)
    assert 0 < config["FP_CORE_UTIL"] < config["PL_TARGET_DENSITY_PCT"] <= 100
    assert config["VERILOG_FILES"]
    for ref in config["VERILOG_FILES"]:
        assert ref.startswith("dir::")
        verilog = (out / ref.removeprefix("dir::")).read_text()
        assert re.search(rf"^module {config['DESIGN_NAME']}\(", verilog, re.M)
        assert re.search(r"^\s*input clk;", verilog, re.M)
    readme = (out / "README.md").read_text()
    assert "librelane" in readme and "Memories" in readme and "25.0 ns" in readme


def test_unknown_engine(tmp_path):
    with pytest.raises(ConfigError) as e:
        asic_view(systolic_cfg(1, 1), tmp_path, engine="gelu")
    assert str(e.value) == "engine must be one of the config's engines (systolic), not 'gelu'"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"memories": "sram"}, "memories must be one of macro, flops, not 'sram'"),
        ({"macro_min_words": 0}, "macro_min_words must be an integer in 1..2**20, not 0"),
    ],
)
def test_bad_options(tmp_path, kwargs, message):
    with pytest.raises(ConfigError) as e:
        asic_view(systolic_cfg(1, 1), tmp_path, engine="systolic", **kwargs)
    assert str(e.value) == message


def test_openlane_bad_top(tmp_path):
    with pytest.raises(ConfigError) as e:
        openlane_export(systolic_cfg(1, 1), tmp_path, top="wishbone")
    assert str(e.value) == "top must be axi or link, not 'wishbone'"


def test_missing_yosys(tmp_path, monkeypatch):
    monkeypatch.setenv("YOSYS", str(tmp_path / "no-yosys"))
    with pytest.raises(ToolMissingError) as e:
        asic_view(systolic_cfg(1, 1), tmp_path)
    path = str(tmp_path / "no-yosys")
    assert str(e.value) == f"YOSYS is set to {path!r}, which is not an executable"


def test_cli_errors(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "missing.yaml"
    assert main(["asic", str(missing), "-o", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err == f"error: config file {str(missing)!r} does not exist\n"
    path = tmp_path / "c.yaml"
    path.write_text("engines: {systolic: {rows: 1, cols: 1}}\n")
    assert main(["asic", str(path), "-o", str(tmp_path / "o"), "--engine", "pim"]) == 1
    assert capsys.readouterr().err == (
        "error: engine must be one of the config's engines (systolic), not 'pim'\n"
    )
    monkeypatch.setenv("YOSYS", str(tmp_path / "no-yosys"))
    assert main(["asic", str(path), "-o", str(tmp_path / "o")]) == 3
    assert "which is not an executable" in capsys.readouterr().err


@pytest.mark.slow
def test_whole_accelerator_and_export(tmp_path):
    """The whole 2x2 accelerator: more than its engine, the same macros, a LibreLane export."""
    rep = asic_view(systolic_cfg(2, 2, name="w2"), tmp_path, openlane=True)
    engine, whole = rep.unit("systolic"), rep.unit("accelerator")
    for unit in (engine, whole):
        check_unit(unit)
    assert whole.top == "w2"
    assert sum(whole.cells.values()) > sum(engine.cells.values())
    assert whole.ff > engine.ff and whole.nand2_eq > engine.nand2_eq
    assert whole.memory_bits == engine.memory_bits  # the controller's memories are small
    assert {m["name"] for m in whole.memories} == {
        f"engine0_systolic.{m['name']}" for m in engine.memories
    }
    config = json.loads((tmp_path / rep.openlane_dir / "config.json").read_text())
    assert config["DESIGN_NAME"] == "w2"
    readme = (tmp_path / rep.openlane_dir / "README.md").read_text()
    assert f"{whole.ff:,} flip-flops" in readme


@pytest.mark.slow
def test_openlane_export_of_the_link_top(tmp_path):
    out = openlane_export(systolic_cfg(1, 1, name="ol2"), tmp_path, top="link")
    config = json.loads((out / "config.json").read_text())
    assert config["DESIGN_NAME"] == "ol2_link"
    verilog = (out / config["VERILOG_FILES"][0].removeprefix("dir::")).read_text()
    assert re.search(r"^module ol2_link\(", verilog, re.M)


@pytest.mark.slow
def test_4x4_has_more_cells_than_2x2(tmp_path):
    two, four = (
        asic_view(systolic_cfg(n, n), tmp_path / f"s{n}", engine="systolic").units[0]
        for n in (2, 4)
    )
    check_unit(four)
    assert sum(four.cells.values()) > 2 * sum(two.cells.values())
    assert four.ff > two.ff and four.nand2_eq > 2 * two.nand2_eq


@pytest.mark.slow
def test_cli_flops_mode_maps_every_memory_to_flip_flops(small, tmp_path, capsys):
    cfg_macro = small[1]
    path = tmp_path / "s1.yaml"
    path.write_text(json.dumps(systolic_cfg(1, 1).to_dict()))  # JSON is YAML
    out = tmp_path / "out"
    rc = main(["asic", str(path), "-o", str(out), "--engine", "systolic", "--memories", "flops"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"{out}/asic.json" in captured.out
    assert "systolic" in captured.err and "NAND2" in captured.err  # the table and assumptions
    data = json.loads((out / "asic.json").read_text())
    assert data["memory_mode"] == "flops"
    (unit,) = data["units"]
    assert unit["memories"] == [] and unit["memory_bits"] == 0
    # every stored bit is now a flip-flop, beside the engine's own registers
    assert unit["ff"] >= cfg_macro.ff + cfg_macro.memory_bits
    assert unit["nand2_eq"] > cfg_macro.nand2_eq
