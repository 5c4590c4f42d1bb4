"""The AXI4-Lite cocotb bench (tests/bench_axi.py) on the generated accelerator, under Verilator."""

import pytest

from gatesmith.config import AccelConfig
from gatesmith.generators.accel.top import Accelerator
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.sim.cocotb_runner import run_cocotb, verilog_of

CONFIGS = {
    "2x2-all": SystolicConfig(rows=2, cols=2, spad_depth=64, acc_depth=64),
    "3x2-os-cs": SystolicConfig(rows=3, cols=2, dataflows=("os",), accumulation="carry_save",
                                spad_depth=64, acc_depth=64),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_axi_bench(name):
    cfg = AccelConfig(engines=(CONFIGS[name],))
    run_cocotb(
        verilog_of(Accelerator(cfg), name="accel"),
        toplevel="accel",
        test_module="gatesmith.tests.bench_axi",
        env={"GATESMITH_CFG": cfg.to_json(), "GATESMITH_SEED": "7"},
    )
