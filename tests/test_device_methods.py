"""Device methods route to every engine of one accelerator (systolic + GELU + PIM on one
simulated board), and refuse engines the accelerator does not have."""

import pytest
import torch
import torch.nn.functional as F

import gatesmith.host
from gatesmith.config import AccelConfig
from gatesmith.errors import UsageError
from gatesmith.generators.gelu.config import GeluConfig
from gatesmith.generators.pim.config import PimConfig
from gatesmith.generators.systolic.config import SystolicConfig

CFG = AccelConfig(
    name="mixed",
    engines=(
        SystolicConfig(rows=2, cols=2, spad_depth=64, acc_depth=32, dataflows=("os",)),
        GeluConfig(lanes=2, depth=64, max_len=64),
        PimConfig(banks=2, lanes=4, row_size=16, rows_per_bank=64, vector_depth=128),
    ),
)


@pytest.fixture(scope="module")
def dev():
    with gatesmith.host.open("sim", config=CFG) as d:
        yield d


def test_each_engine_through_its_device_method(dev):
    g = torch.Generator().manual_seed(4)
    a = torch.randint(-128, 128, (5, 9), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (9, 3), generator=g, dtype=torch.int8)
    assert torch.equal(dev.matmul(a, b).long(), a.long() @ b.long())
    x = torch.linspace(-4, 4, 40)
    assert (dev.gelu(x) - F.gelu(x.double()).float()).abs().max() < 0.02
    w = torch.randint(-128, 128, (6, 20), generator=g, dtype=torch.int8)
    v = torch.randint(-128, 128, (20,), generator=g, dtype=torch.int8)
    h = dev.load_weights(w)
    assert torch.equal(dev.gemv(v, h).long(), w.long() @ v.long())
    assert torch.equal(dev.matmul(a, b).long(), a.long() @ b.long())  # engines coexist


def test_missing_engines_are_refused(dev):
    a = torch.zeros((2, 2), dtype=torch.int8)
    with pytest.raises(UsageError) as e:
        dev.matmul(a, a, w_bits=4, engine="bitserial")
    assert str(e.value) == "this accelerator has no bitserial engine (it has: systolic, gelu, pim)"
    with pytest.raises(UsageError) as e:
        dev.matmul(a, a, dataflow="ws")
    assert str(e.value) == "dataflow 'ws' is not built into this accelerator (built: os)"
    with pytest.raises(UsageError, match="no softmax engine"):
        dev.softmax(torch.zeros(4))
