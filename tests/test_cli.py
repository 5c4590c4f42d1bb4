"""The CLI as a new user runs it: exit codes, outputs, and every error message in full."""

import json

import pytest
import yaml

from gatesmith.cli import main

from .conftest import SIM_SMALL


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_flags_writes_verilog_and_manifest(capsys, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "generate", "systolic", "--rows", "2", "--cols", "3",
                            "--dtype", "int8", "-o", str(out))  # fmt: skip
    assert code == 0, err
    assert "lint clean" in err
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["engines"]["systolic"]["cols"] == 3
    assert {r["name"] for r in man["registers"]} >= {"MAGIC", "STATUS", "QUEUE", "PERF_BUSY_LO"}
    ports = {p["name"] for p in man["tops"]["gatesmith"]["ports"]}
    assert {"clk", "rst", "axi__awaddr", "axi__rdata"} <= ports
    assert man["engines"][0]["kind"] == "systolic"
    assert [w["name"] for w in man["engines"][0]["windows"]] == ["left", "top", "acc"]
    assert "module gatesmith(" in (out / "gatesmith.v").read_text()
    # deterministic: a second run leaves the files untouched
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, _, _ = run(capsys, "generate", "systolic", "--rows", "2", "--cols", "3", "-o", str(out),
                     "--no-lint")  # fmt: skip
    assert code == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


def test_generate_from_yaml(capsys, tmp_path):
    cfg = tmp_path / "accel.yaml"
    cfg.write_text("name: tiny\nengines:\n  systolic: {rows: 2, cols: 2, dataflows: [os]}\n")
    code, _, err = run(capsys, "generate", "--config", str(cfg), "-o", str(tmp_path / "o"),
                       "--no-lint")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "o" / "tiny.v").exists() and (tmp_path / "o" / "tiny_link.v").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["generate", "systolic", "--rows", "65", "-o", "x"],
         "error: engines.systolic.rows must be an integer in 1..64, not 65"),
        (["generate", "systolic", "--dataflows", "os,zz", "-o", "x"],
         "error: engines.systolic.dataflows must be a non-empty subset of os, ws, is, not 'zz'"),
        (["generate", "tpu", "-o", "x"], "error: engine must be one of"),
        (["generate", "systolic", "--set", "rows", "-o", "x"],
         "error: --set takes FIELD=VALUE, not 'rows'"),
        (["build", "--board", "foo", "-o", "x"],
         "error: board must be one of icebreaker, ulx3s, not 'foo'"),
        (["run", "--m", "0"], "error: --m must be at least 1, not 0"),
        (["generate", "--config", "/nonexistent.yaml", "-o", "x"],
         "error: config file '/nonexistent.yaml' does not exist"),
    ],
)  # fmt: skip
def test_errors_exit_1_with_a_message(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith(message), err


def test_bad_flag_values_and_config_files_exit_1(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "systolic", "--rows", "abc", "-o", "x")
    assert code == 1  # not 2, which means a build error
    assert err.strip().splitlines()[-1] == (
        "gatesmith generate: error: argument --rows: invalid int value: 'abc'"
    )
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    code, _, err = run(capsys, "generate", "--config", str(latin), "-o", "x")
    assert code == 1
    assert err.strip() == f"error: config file '{latin}' is not UTF-8 text (byte 0xe9 at offset 9)"
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    code, _, err = run(capsys, "generate", "--config", str(empty), "-o", "x")
    assert code == 1
    assert err.strip() == (
        f"error: config file '{empty}' is empty; write {{}} in it for the default design"
    )
    assert run(capsys, "--help")[0] == 0


def test_run_on_the_simulated_board(capsys, tmp_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump(SIM_SMALL.to_dict()))
    code, _, err = run(capsys, "run", "--config", str(cfg), "--m", "7", "--k", "9", "--n", "5")
    assert code == 0, err
    assert "yes" in err  # result == a.long() @ b.long()


def test_verify_without_cocotb(capsys, tmp_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump(SIM_SMALL.to_dict()))
    code, _, err = run(capsys, "verify", "--config", str(cfg), "--count", "1", "--no-cocotb")
    assert code == 0, err
    assert "0 failed" in err
