"""Shared fixtures: simulated boards are built once per config and shared by the tests."""

import os

import pytest

from gatesmith.config import AccelConfig
from gatesmith.generators.systolic.config import SystolicConfig

# Small configs keep the default tier fast; the Verilator builds are cached by content hash.
SIM_SMALL = AccelConfig(
    name="small",
    engines=(SystolicConfig(rows=3, cols=2, spad_depth=64, acc_depth=32),),
    link_max_words=64,
)
SIM_4X4 = AccelConfig(
    name="four",
    engines=(SystolicConfig(rows=4, cols=4, spad_depth=256, acc_depth=256,
                            accumulation="carry_save"),),  # fmt: skip
)


@pytest.fixture(scope="session")
def dev_small():
    import gatesmith.host

    with gatesmith.host.open("sim", config=SIM_SMALL) as dev:
        yield dev


@pytest.fixture(scope="session")
def dev_4x4():
    import gatesmith.host

    with gatesmith.host.open("sim", config=SIM_4X4) as dev:
        yield dev


def pytest_report_header(config):
    return f"gatesmith cache: {os.environ.get('GATESMITH_CACHE', '~/.cache/gatesmith')}"
