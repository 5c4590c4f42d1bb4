"""The iCEBreaker's accelerator (``examples/icebreaker.yaml``) on the simulated board.

Its control plane is the narrow one: 4 KiB of device memory (12-bit DMA addresses, 10-bit
strides in the load/store queues, a clamped range check), no COPY unit, and only the
PERF_CYCLES / PERF_PROGRAM counters (``perf_counters: minimal``). GEMMs stay bit-exact, the
timing model still predicts PERF_PROGRAM, and bad addresses raise the same errors with the full
32-bit ERROR_ADDR.
"""

from pathlib import Path

import pytest
import torch

import gatesmith.host
from gatesmith.config import load_config
from gatesmith.errors import DeviceError
from gatesmith.generators.systolic.engine import window_layout

CFG = load_config(Path(__file__).resolve().parents[1] / "examples" / "icebreaker.yaml")
SEED = 20261202


@pytest.fixture(scope="module")
def dev():
    with gatesmith.host.open("sim", config=CFG) as d:
        yield d


def test_the_example_is_the_narrow_config():
    assert CFG.mem_bytes == 4096 and CFG.perf_counters == "minimal" and not CFG.copy_unit


def test_gemms_are_exact_and_predicted(dev):
    g = torch.Generator().manual_seed(SEED)
    for m, k, n in ((2, 2, 2), (5, 9, 3), (8, 16, 8)):
        a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
        b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
        dev.reset_perf()
        assert torch.equal(dev.matmul(a, b).long(), a.long() @ b.long())
        perf = dev.perf()
        meas, pred = perf["program"], dev.last_program.predict()
        assert meas > 0 and pred == meas, (pred, meas)  # the cycle-level program model
        assert perf["cycles"] >= meas
        # the counters the config leaves out read 0
        for name in ("busy", "macs", "active", "stall", "load", "store", "dma", "copy"):
            assert perf[name] == 0, name
        assert perf["engine_busy"] == [0]


def test_bad_addresses_report_the_full_address(dev):
    left = window_layout(CFG.engine("systolic"))["left"].offset
    mem = dev.read_reg("MEM_BYTES")
    for addr in (mem, 0x8000_0000, 0xFFFF_FFF0):
        p = dev.program()
        p.load("systolic", win_addr=left, offset=addr, rows=1, row_words=1, check=False)
        with pytest.raises(DeviceError, match=rf"MEM_RANGE \(0x04\) from the load DMA at program "
                           rf"entry 0 .*address {addr:#x}"):  # fmt: skip
            p.run(timeout=30)
    # rows x stride past the end while each factor alone fits the 10-bit fields
    p = dev.program()
    p.store("systolic", win_addr=left, offset=0, rows=mem // 4 + 1, row_words=1, mem_stride=1,
            check=False)  # fmt: skip
    with pytest.raises(DeviceError, match=r"MEM_RANGE \(0x04\) from the store DMA at program "
                       r"entry 0"):  # fmt: skip
        p.run(timeout=30)
    p = dev.program()
    p.load("systolic", win_addr=left, offset=0, rows=2, row_words=1, mem_stride=mem // 4,
           check=False)  # fmt: skip
    with pytest.raises(DeviceError, match=r"MEM_RANGE \(0x04\) from the load DMA"):
        p.run(timeout=30)
    p = dev.program()
    p.store("systolic", win_addr=left, offset=6, rows=1, row_words=1, check=False)
    with pytest.raises(DeviceError, match=r"MEM_ALIGN \(0x05\) from the store DMA"):
        p.run(timeout=30)


def test_one_row_ignores_its_stride(dev):
    """A single-row copy with a stride wider than the queue keeps: legal, and it moves the row."""
    left = window_layout(CFG.engine("systolic"))["left"].offset
    with dev.alloc((4,), torch.int32) as src, dev.alloc((4,), torch.int32) as dst:
        x = torch.tensor([1, -2, 3, -4], dtype=torch.int32)
        src.write(x)
        p = dev.program()
        p.load("systolic", win_addr=left, buf=src, rows=1, row_words=4, mem_stride=2**18 - 1)
        p.run(timeout=30)
        p = dev.program()  # (a second program: the store must see the load's words)
        p.store("systolic", win_addr=left, buf=dst, rows=1, row_words=4, mem_stride=2**18 - 1)
        p.run(timeout=30)
        assert torch.equal(dst.read(), x)
