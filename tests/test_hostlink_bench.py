"""The host-link cocotb bench (tests/bench_hostlink.py) on the generated LinkTop, under Verilator."""

from gatesmith.config import AccelConfig
from gatesmith.generators.accel.top import LinkTop
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.sim.cocotb_runner import run_cocotb, verilog_of


def test_hostlink_bench():
    cfg = AccelConfig(
        engines=(SystolicConfig(rows=2, cols=2, spad_depth=64, acc_depth=64),),
        link_max_words=16,
        link_timeout_cycles=256,
    )
    run_cocotb(
        verilog_of(LinkTop(cfg), name="link"),
        toplevel="link",
        test_module="gatesmith.tests.bench_hostlink",
        env={"GATESMITH_CFG": cfg.to_json(), "GATESMITH_SEED": "11"},
    )
