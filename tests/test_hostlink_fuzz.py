"""Hypothesis-driven fuzzing of the host-link bridge through cocotb (tests/bench_hostlink.py's
``fuzz_frames``): hypothesis draws the traffic (intact and corrupted SCRATCH writes and reads,
truncated frames, junk), one cocotb run plays it all on the generated LinkTop under Verilator.

Checked after every case: a bad frame changed nothing (SCRATCH equals the model of the intact
writes), the link recovers, and intact requests get well-formed answers.
"""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatesmith.config import AccelConfig
from gatesmith.generators.accel.top import LinkTop
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.sim.cocotb_runner import run_cocotb, verilog_of

CFG = AccelConfig(
    engines=(SystolicConfig(rows=2, cols=2, spad_depth=64, acc_depth=64),),
    link_max_words=16,
    link_timeout_cycles=256,
)

_value = st.integers(0, 2**32 - 1)
_case = st.one_of(
    st.fixed_dictionaries({"kind": st.sampled_from(["write", "read"]), "value": _value}),
    st.fixed_dictionaries({"kind": st.sampled_from(["write", "read"]), "value": _value,
                           "flip": st.tuples(st.integers(0, 31), st.integers(0, 7))}),  # fmt: skip
    st.fixed_dictionaries({"kind": st.just("write"), "value": _value,
                           "cut": st.integers(1, 20)}),  # fmt: skip
    st.fixed_dictionaries({"kind": st.just("junk"),
                           "bytes": st.lists(st.integers(0, 255), min_size=1, max_size=24)}),  # fmt: skip
)


def _draw(n_runs: int, per_run: int) -> list:
    out = []

    @settings(max_examples=n_runs, derandomize=True, database=None, deadline=None)
    @given(st.lists(_case, min_size=per_run, max_size=per_run))
    def collect(cases):
        out.extend(cases)

    collect()
    return out


@pytest.mark.parametrize("n_runs, per_run", [pytest.param(6, 10, id="default"),
                                             pytest.param(60, 20, id="slow",
                                                          marks=pytest.mark.slow)])  # fmt: skip
def test_bridge_fuzz(tmp_path, n_runs, per_run):
    cases = _draw(n_runs, per_run)
    assert any("flip" in c for c in cases) and any(c["kind"] == "junk" for c in cases)
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(cases))
    print(f"{len(cases)} cases drawn by hypothesis")
    run_cocotb(verilog_of(LinkTop(CFG), name="link"), toplevel="link",
               test_module="gatesmith.tests.bench_hostlink", testcase="fuzz_frames",
               env={"GATESMITH_CFG": CFG.to_json(), "GATESMITH_SEED": "3",
                    "GATESMITH_FUZZ": str(path)})  # fmt: skip
