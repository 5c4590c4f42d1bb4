"""An accelerator built without the on-chip COPY unit (``copy_unit: false``) on the simulated board.

Without COPY the engines still run and exchange data through device memory; COPY instructions
are refused by the controller (BAD_OPCODE), the host refuses to build them with the reason, and
fused attention reports why it cannot run (the compiler then runs attention op by op).
"""

import dataclasses

import pytest
import torch

import gatesmith.host
from gatesmith.config import AccelConfig
from gatesmith.errors import ConfigError, DeviceError, UsageError
from gatesmith.generators.accel.isa import Op
from gatesmith.generators.softmax.config import SoftmaxConfig
from gatesmith.generators.softmax.model import softmax_model
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.host.attention import fits
from gatesmith.host.chain import acc_tile, rows
from gatesmith.host.nonlinear import softmax_int
from gatesmith.host.program import Program

CFG = AccelConfig(
    name="nocopy",
    copy_unit=False,
    engines=(
        SoftmaxConfig(lanes=4, depth=64, max_len=64),
        SystolicConfig(rows=2, cols=2, spad_depth=128, acc_depth=64, dataflows=("os", "ws")),
    ),
)


@pytest.fixture(scope="module")
def dev():
    with gatesmith.host.open("sim", config=CFG) as d:
        yield d


def test_engines_run(dev):
    assert dev.config.copy_unit is False  # from the device's identity ROM
    g = torch.Generator().manual_seed(7)
    a = torch.randint(-128, 128, (12, 20), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (20, 6), generator=g, dtype=torch.int8)
    for df in ("os", "ws"):
        assert torch.equal(dev.matmul(a, b, dataflow=df), a.long() @ b.long())
    # a GEMM's result, requantised on the host, through the softmax engine
    x = (dev.matmul(a, b) >> 8).clamp(-128, 127)
    got = softmax_int(dev, x)
    assert torch.equal(got, softmax_model(x, dev.config.engine("softmax")))
    assert dev.perf()["copy"] == 0


def test_copy_is_refused_by_host_and_device(dev):
    prog = Program(dev)
    with pytest.raises(UsageError, match=r"built without the on-chip COPY unit \(copy_unit: fa"):
        prog.copy(acc_tile(dev, base=0, mt=2, nt=2), rows(dev, "softmax", "in", base=0, n=2),
                  rows=2, length=2)  # fmt: skip
    assert len(prog) == 0  # nothing was added
    for op in (Op.COPY_SRC, Op.COPY):
        dev.execute([[int(op), 0, 0, 0]])
        with pytest.raises(DeviceError, match=r"BAD_OPCODE \(0x01\) from the controller"):
            dev.wait()
    a = torch.ones((4, 4), dtype=torch.int8)
    assert torch.equal(dev.matmul(a, a), a.long() @ a.long())  # cleared, still works


def test_fused_attention_names_the_missing_unit():
    assert fits(CFG, 8, 4) == "fused attention needs the on-chip COPY unit; this accelerator has none"
    assert fits(dataclasses.replace(CFG, copy_unit=True), 8, 4) == ""


def test_copy_unit_must_be_a_bool():
    with pytest.raises(ConfigError, match="copy_unit must be true or false, not 'no'"):
        AccelConfig(copy_unit="no")
    with pytest.raises(ConfigError, match="copy_unit must be true or false"):
        AccelConfig.from_dict({"copy_unit": 0, "engines": {"systolic": {}}})
