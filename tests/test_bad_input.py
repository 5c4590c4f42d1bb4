"""Bad input the host once let through (issue "Reliability", "Bad input that is not caught").

Here: empty tensors in the nonlinear calls (torch's answer: an empty result of the same shape).
The other items of that list have
their messages asserted where their code is tested: ``dev.write`` of values outside
0..2**32-1 or of floats, addresses at or above 2**32, ``read`` with a negative count and
``read_reg`` of an unknown name in ``tests/test_link_faults.py``
(``test_primitive_arguments_are_checked``); a non-UTF-8 or empty YAML file and ``--rows abc``
(exit code 1) in ``tests/test_cli.py`` (``test_bad_flag_values_and_config_files_exit_1``);
out-of-range floats in ``tests/test_range_policy.py``; non-finite activations of the bit-serial
``linear`` in ``tests/test_bitserial_host.py``.
"""

import pytest
import torch
import torch.nn.functional as F

import gatesmith.host
from gatesmith.errors import UsageError

from .test_chain import CFG


@pytest.fixture(scope="module")
def dev():
    with gatesmith.host.open("sim", config=CFG) as d:
        yield d


@pytest.mark.parametrize("shape", [(3, 0), (0, 5), (2, 0, 4)])
def test_empty_tensors_give_empty_results(dev, shape):
    x = torch.zeros(shape)
    assert dev.softmax(x).shape == torch.softmax(x, -1).shape == shape
    assert dev.softmax(x, dim=0).shape == shape
    assert dev.gelu(x).shape == shape
    n = shape[-1]
    assert dev.layer_norm(x, n).shape == F.layer_norm(x, (n,)).shape == shape
    from gatesmith.host.nonlinear import layer_norm_int, softmax_int

    xi = torch.zeros(shape, dtype=torch.int64)
    assert softmax_int(dev, xi).shape == shape
    g = torch.zeros(n, dtype=torch.int64)
    assert layer_norm_int(dev, xi, g, g).shape == shape


def test_empty_rows_cannot_stay_on_the_device(dev):
    with pytest.raises(UsageError) as e:
        dev.softmax(torch.zeros(2, 0, dtype=torch.int64), out="device")
    assert str(e.value) == "rows must have 1..64 elements for this softmax engine, not 0"
    with pytest.raises(UsageError) as e:
        dev.gelu(torch.zeros(0, 4, dtype=torch.int64), out="device")
    assert str(e.value) == "no rows to keep on the device"
    with pytest.raises(UsageError) as e:
        dev.softmax(torch.zeros(3, 0), dim=2)
    assert str(e.value) == "dim must be in -2..1 for a 2-d x, not 2"

