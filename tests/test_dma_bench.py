"""The DMA cocotb bench (tests/bench_dma.py): the accelerator's AXI4 manager against
cocotbext-axi's AxiRam under random backpressure, under Verilator (one cached build)."""

import xml.etree.ElementTree as ET

from gatesmith.config import AccelConfig
from gatesmith.generators.accel.top import Accelerator
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.sim.cocotb_runner import run_cocotb, verilog_of

# Tiny on purpose: cocotb forces --public-flat-rw, which makes big designs slow to build and run.
CFG = AccelConfig(
    name="dma_bench",
    engines=(SystolicConfig(rows=2, cols=2, dtype="int8", dataflows=("os",), spad_depth=64,
                            acc_depth=64),),  # fmt: skip
    queue_depth=4,
    mem_bytes=65536,
    mem_max_burst=8,
    watchdog_cycles=256,
)

CASES = [
    "program_with_backpressure",  # token program == numpy model; the burst monitor's rules
    "register_queue_equals_program",  # the same instructions one at a time == the program
    "dma_errors",  # MEM_RANGE (entry, address, no bus traffic) and the other DMA checks
    "deadlock_watchdog",  # a token nobody pushes ends in DEADLOCK; clearing recovers
    "handshake_stability",  # AR/AW VALID and payload hold until READY while requesters compete
]


def test_dma_bench(tmp_path):
    """All cases in one simulator process (one start-up); a failure names its cases."""
    try:
        run_cocotb(
            verilog_of(Accelerator(CFG), name="accel"),
            toplevel="accel",
            test_module="gatesmith.tests.bench_dma",
            testcase=CASES,
            env={"GATESMITH_CFG": CFG.to_json(), "GATESMITH_SEED": "11"},
            results_dir=tmp_path,
        )
    except AssertionError as e:
        failed = []
        results = tmp_path / "results.xml"
        if results.exists():
            for case in ET.parse(results).iter("testcase"):
                for f in list(case.iter("failure")) + list(case.iter("error")):
                    failed.append(f"{case.get('name')}: {f.get('message', '')[:2000]}")
        raise AssertionError("\n".join(failed + [str(e)])) from None

