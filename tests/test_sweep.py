"""``gatesmith sweep``: a real sweep on the local pool and on a real local Ray head (127.0.0.1),
the stage cache and --resume, failing trials as rows, and every bad-input message."""

from __future__ import annotations

import json
import os
import shutil
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from gatesmith.cli import main
from gatesmith.errors import ConfigError
from gatesmith.flows.sweep import load_sweep, make_trials, run_sweep
from gatesmith.generators.systolic import model
from gatesmith.generators.systolic.config import SystolicConfig

GEMMS = [[8, 16, 8], [5, 12, 3]]  # one instruction each on these arrays: checkable by hand
SMALL = {
    "name": "small",
    "base": {"name": "sw", "engines": {"systolic": {"rows": 2, "cols": 2, "dtype": "int8"}}},
    "axes": {"engines.systolic.cols": [1, 2]},
    "stages": ["generate", "cycles"],
    "workload": {"gemms": GEMMS},
}


def write(tmp: Path, data: dict, name: str = "sweep.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def comparable(res: dict) -> list[dict]:
    """Trial records without wall times (the only field that differs between identical runs)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in res["trials"]]


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep_pool")
    path = write(tmp, SMALL)
    return path, tmp / "out", run_sweep(path, tmp / "out", jobs=2)


def _planned(m, k, n, df, cfg):
    from gatesmith.host.systolic import plan_dma

    hm, hn = (n, m) if df == "is" else (m, n)
    p, _ = plan_dma(hm, k, hn, df, cfg)
    return sum(model.cycles(*((nt, kc, mt) if df == "is" else (mt, kc, nt)), df, cfg)
               for mt, kc, nt in p.gemms(hm, k, hn, cfg.cols))  # fmt: skip


def test_pool_sweep_generates_and_counts_cycles(pool_run):
    _, out, res = pool_run
    trials = res["trials"]
    assert [t["status"] for t in trials] == ["ok", "ok"], [t["error"] for t in trials]
    assert [t["point"] for t in trials] == [{"engines.systolic.cols": 1},
                                            {"engines.systolic.cols": 2}]  # fmt: skip
    for t in trials:
        fields = t["config"]["engines"]["systolic"]
        cfg = SystolicConfig(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in fields.items()})  # fmt: skip
        assert cfg.cols == t["point"]["engines.systolic.cols"]
        # a GEMM's cycles are the model's summed over the instructions of the driver's plan
        # (plan_dma), in the best built dataflow; utilisation is ideal / cycles
        want = sum(min(_planned(m, k, n, df, cfg) for df in cfg.dataflows) for m, k, n in GEMMS)
        ideal = sum(m * k * n / (cfg.rows * cfg.cols) for m, k, n in GEMMS)
        assert t["metrics"]["cycles"] == want
        assert t["metrics"]["utilisation"] == round(ideal / want, 6)
        assert t["metrics"]["time_s"] == want / 50e6
        assert t["metrics"]["lint_warnings"] == 0
        rtl = out / "trials" / t["id"] / "rtl"
        manifest = json.loads((rtl / "manifest.json").read_text())
        assert manifest["content_hash"][:16] == t["metrics"]["content_hash"]
        assert (rtl / "sw.v").stat().st_size == t["metrics"]["verilog_bytes"]
        assert t["stages"] == {"generate": {"status": "ok", "cached": False},
                               "cycles": {"status": "ok", "cached": False}}  # fmt: skip
    assert trials[0]["metrics"]["content_hash"] != trials[1]["metrics"]["content_hash"]
    # the front: smaller Verilog and fewer cycles cannot both hold, so both are on it
    assert res["pareto"]["front"] == [t["id"] for t in trials if t["pareto"]]
    assert set(res["pareto"]["front"]) == {t["id"] for t in trials}
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["trials"] == trials
    assert len((out / "trials.jsonl").read_text().splitlines()) == 2
    md = (out / "results.md").read_text()
    assert all(t["id"] in md for t in trials)
    assert (out / "pareto.svg").read_text().lstrip().startswith("<?xml")
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(monkeypatch):
    """A real Ray head on 127.0.0.1, started with `ray start --head --block` and stopped by
    signalling that process (it takes its raylet, GCS and workers down with it)."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind to loopback
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the head's default token authentication
    # its token: a fresh one for this head and its driver (a new machine has no ~/.ray token)
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must fit AF_UNIX limits
    ray_bin = Path(sys.executable).parent / "ray"
    cmd = [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
           "--disable-usage-stats", f"--temp-dir={tmp}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the Ray head did not start (exit {proc.poll()}): {' '.join(cmd)}")
            time.sleep(0.2)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def test_ray_sweep_equals_the_pool(pool_run, ray_head, tmp_path):
    path, _, pool = pool_run
    res = run_sweep(path, tmp_path / "out", ray=ray_head)
    assert res["sweep"]["executor"] == f"Ray {ray_head}"
    assert comparable(res) == comparable(pool)
    assert res["pareto"] == pool["pareto"]


def test_cache_and_resume(pool_run, tmp_path):
    path, out, pool = pool_run
    work = tmp_path / "out"
    shutil.copytree(out, work)
    # the same sweep again: every stage comes from the cache, nothing runs
    again = run_sweep(path, work)
    assert comparable(again) == [
        dict(r, stages={s: dict(v, cached=True) for s, v in r["stages"].items()})
        for r in comparable(pool)
    ]
    # --resume without a cache: the journal's records are kept as they were
    shutil.rmtree(work / "cache")
    resumed = run_sweep(path, work, resume=True)
    assert [r["seconds"] for r in resumed["trials"]] == [r["seconds"] for r in again["trials"]]
    assert not (work / "cache").exists()
    # a cycles-only sweep with one more axis value runs only the new trial's stage
    data = dict(SMALL, stages=["cycles"], axes={"engines.systolic.cols": [1, 2]})
    cyc = tmp_path / "cyc"
    first = run_sweep(write(tmp_path, data, "c1.yaml"), cyc)
    data["axes"] = {"engines.systolic.cols": [1, 2, 3]}
    more = run_sweep(write(tmp_path, data, "c2.yaml"), cyc)
    assert [r["stages"]["cycles"]["cached"] for r in more["trials"]] == [True, True, False]
    assert comparable(more)[:2] == [
        dict(r, stages={"cycles": {"status": "ok", "cached": True}}) for r in comparable(first)
    ]


def test_failing_trial_is_a_row(tmp_path):
    data = {
        "base": {"engines": {"pim": {}}},
        "axes": {"engines.pim.rows_per_bank": [16, 32]},
        "stages": ["cycles"],
        "workload": {"gemms": [{"name": "proj", "m": 2, "k": 256, "n": 128}]},
    }
    res = run_sweep(write(tmp_path, data), tmp_path / "out")
    bad, good = res["trials"]
    assert bad["status"] == "failed"
    assert bad["error"] == {
        "stage": "cycles",
        "type": "UsageError",
        "message": "no engine can run GEMM proj: pim: w needs 32 rows per bank but only 16 of 16 "
        "are free",
    }
    assert good["status"] == "ok" and good["metrics"]["cycles"] > 0
    assert res["pareto"]["front"] == []  # one objective (cycles) only: no front to draw


def test_invalid_combination_is_a_row(tmp_path):
    data = dict(SMALL, axes={"engines.systolic.dtype": ["int8", "int16"],
                             "engines.systolic.acc_width": [16, 32]})  # fmt: skip
    trials = make_trials(load_sweep(write(tmp_path, data)))
    errs = {(t["point"]["engines.systolic.dtype"], t["point"]["engines.systolic.acc_width"]):
            t.get("error") for t in trials}  # fmt: skip
    assert errs == {
        ("int8", 16): None,
        ("int8", 32): None,
        ("int16", 16): "engines.systolic.acc_width must be an integer in 32..64, not 16",
        ("int16", 32): None,
    }


def test_random_zipped_and_engine_axes(tmp_path):
    grid = {"engines.systolic.rows": [1, 2, 4, 8], "engines.systolic.cols": [1, 2, 4, 8]}
    data = dict(SMALL, mode="random", samples=5, seed=3, axes=grid)
    picks = [t["point"] for t in make_trials(load_sweep(write(tmp_path, data)))]
    assert len(picks) == 5 and len({json.dumps(p) for p in picks}) == 5  # no repeats
    assert picks == [t["point"] for t in make_trials(load_sweep(write(tmp_path, data)))]
    every = [{"engines.systolic.rows": r, "engines.systolic.cols": c}
             for r in grid["engines.systolic.rows"] for c in grid["engines.systolic.cols"]]
    assert all(p in every for p in picks)
    other = dict(data, seed=4)
    assert picks != [t["point"] for t in make_trials(load_sweep(write(tmp_path, other)))]
    big = dict(data, samples=100)  # more samples than points: the whole grid, once each
    assert [t["point"] for t in make_trials(load_sweep(write(tmp_path, big)))] == every

    zipped = dict(SMALL, axes={"engines.systolic.rows, engines.systolic.cols": [[2, 2], [4, 8]],
                               "engines.pim": [None, {"banks": 2}]})  # fmt: skip
    trials = make_trials(load_sweep(write(tmp_path, zipped)))
    engs = [t["config"]["engines"] for t in trials]
    shapes = [(e["systolic"]["rows"], e["systolic"]["cols"], e.get("pim", {}).get("banks"))
              for e in engs]  # fmt: skip
    assert shapes == [(2, 2, None), (2, 2, 2), (4, 8, None), (4, 8, 2)]
    assert len({t["id"] for t in trials}) == 4


@pytest.mark.parametrize(
    "change, message",
    [
        ({"axes": {"engines.systolic.rowz": [2]}},
         "axis 'engines.systolic.rowz': engines.systolic has no field 'rowz'; valid fields are "
         "acc_depth, acc_width, accumulation, cols, dataflows, dtype, rows, spad_depth"),
        ({"axes": {"engines.systolic.rows": [2, 100]}},
         "axis 'engines.systolic.rows': value 100 is invalid: engines.systolic.rows must be an "
         "integer in 1..64, not 100"),
        ({"axes": {"engines.systolic.rows": []}}, "axis 'engines.systolic.rows' has no values"),
        ({"axes": {"engines.systolic.rows": [2, 2]}},
         "axis 'engines.systolic.rows' lists the value 2 twice"),
        ({"axes": {"engines.pim.banks": [2]}},
         "axis 'engines.pim.banks': the base config has no pim engine (it has systolic); add it "
         "to the base"),
        ({"axes": {"clock": [1]}},
         "axis 'clock': the config has no field 'clock'; valid fields are baud, clock_hz, "
         "copy_unit, link_max_words, link_timeout_cycles, mem_bytes, mem_cycles_per_beat, mem_data_width, "
         "mem_latency, mem_max_burst, name, perf_counters, perf_width, queue_depth, watchdog_cycles "
         "and engines.KIND.FIELD"),
        ({"stages": ["generate", "synth"]},
         "stages: 'synth' is not a stage; stages are generate, verify, build, cycles"),
        ({"objectives": ["lut:min", "cycles:min"]},
         "objectives[0]: metric 'lut' is not produced by the stages generate, cycles; they give "
         "clock_mhz, content_hash, cycles, cycles_bitserial, cycles_pim, cycles_systolic, "
         "ideal_cycles, lint_warnings, time_s, utilisation, verilog_bytes"),
        ({"workload": {"gemms": [[8, 0, 8]]}},
         "workload.gemms[0].k must be an integer >= 1, not 0"),
        ({"mode": "random"}, "mode random needs samples, an integer >= 1, not None"),
        ({"colour": 1},
         "sweep file has no key 'colour'; valid keys are axes, base, build, generate, mode, name, "
         "objectives, resources, samples, seed, stages, verify, workload"),
    ],
)  # fmt: skip
def test_bad_sweep_files(tmp_path, change, message):
    with pytest.raises(ConfigError) as e:
        make_trials(load_sweep(write(tmp_path, {**SMALL, **change})))
    assert str(e.value) == message


def test_unreachable_ray_address_fails_fast(tmp_path):
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        run_sweep(write(tmp_path, SMALL), tmp_path / "out", ray=f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 15
    assert str(e.value) == (f"--ray 127.0.0.1:{port}: the Ray head is unreachable "
                            "(Connection refused, checked for 5 s)")  # fmt: skip
    assert not (tmp_path / "out").exists()  # refused before OUT was touched


def test_out_holding_another_sweep(pool_run, tmp_path):
    path, out, _ = pool_run
    other = dict(SMALL, workload={"gemms": [[4, 4, 4]]})
    with pytest.raises(ConfigError) as e:
        run_sweep(write(tmp_path, other, "b.yaml"), out)
    assert str(e.value) == (f"{out} holds a different sweep ('small' from {str(path)!r}): its "
                            "options differ; choose another -o directory")  # fmt: skip


def test_cli_exit_codes(pool_run, tmp_path, capsys):
    bad = write(tmp_path, {**SMALL, "axes": {"engines.systolic.rows": []}})
    assert main(["sweep", str(bad), "-o", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip().endswith(
        "error: axis 'engines.systolic.rows' has no values")
    path, out, pool = pool_run
    shutil.copytree(out, tmp_path / "again")  # served from the cache: no worker starts
    assert main(["sweep", str(path), "-o", str(tmp_path / "again"), "-j", "2"]) == 0
    res = json.loads((tmp_path / "again" / "results.json").read_text())
    assert [r["metrics"] for r in res["trials"]] == [r["metrics"] for r in pool["trials"]]


@pytest.mark.slow
def test_bitstream_sweep(tmp_path):
    """Four configurations through generate, an ECP5 (ULX3S) bitstream build and the cycle model."""
    data = {
        "name": "ecp5",
        "base": {"name": "sw", "clock_hz": 25_000_000,
                 "engines": {"systolic": {"rows": 2, "cols": 1, "acc_width": 24,
                                          "dataflows": ["os"], "spad_depth": 64,
                                          "acc_depth": 64}}},
        "axes": {"engines.systolic.cols": [1, 2], "engines.systolic.dtype": ["int4", "int8"]},
        "stages": ["generate", "build", "cycles"],
        "build": {"board": "ulx3s", "timeout_s": 1800},
        "workload": {"gemms": GEMMS},
    }  # fmt: skip
    res = run_sweep(write(tmp_path, data), tmp_path / "out", jobs=2)
    assert [t["status"] for t in res["trials"]] == ["ok"] * 4, [t["error"] for t in res["trials"]]
    for t in res["trials"]:
        m = t["metrics"]
        assert m["lut"] > 0 and m["fmax_mhz"] > 0
        assert m["clock_mhz"] == m["fmax_mhz"]
        assert m["time_s"] == m["cycles"] / (m["fmax_mhz"] * 1e6)
        report = json.loads((tmp_path / "out" / "trials" / t["id"] / "build" / "report.json")
                            .read_text())  # fmt: skip
        assert report["fmax_mhz"] == m["fmax_mhz"]
        assert (tmp_path / "out" / "trials" / t["id"] / "build" / "sw.bit").exists()
    lut = {(t["point"]["engines.systolic.cols"], t["point"]["engines.systolic.dtype"]):
           t["metrics"]["lut"] for t in res["trials"]}  # fmt: skip
    for dtype in ("int4", "int8"):
        assert lut[(1, dtype)] < lut[(2, dtype)]  # twice the PEs cost more LUTs
    assert res["pareto"]["objectives"] == [["lut", "min"], ["cycles", "min"], ["fmax_mhz", "max"]]
    assert res["pareto"]["front"]
    assert (tmp_path / "out" / "pareto.svg").exists()
