"""Host API on the simulated board: GEMMs over the host-link protocol, bit-exact vs torch."""

import numpy as np
import pytest
import torch

from gatesmith.errors import DeviceError, UsageError
from gatesmith.generators.accel.regs import REG
from gatesmith.generators.systolic import model
from gatesmith.host.systolic import plan_dma

SEED = 20261122


def _rand(fmt, shape, g):
    return torch.randint(fmt.min, fmt.max + 1, shape, generator=g)


@pytest.mark.parametrize("df", ["os", "ws", "is"])
def test_random_shapes_bit_exact(dev_small, df):
    scfg = dev_small.config.engine("systolic")
    g = torch.Generator().manual_seed(SEED + len(df))
    print(f"seed {SEED + len(df)}")
    for _ in range(6):
        m, k, n = (int(torch.randint(1, 20, (1,), generator=g)) for _ in range(3))
        a = _rand(scfg.fmt, (m, k), g).to(torch.int8)
        b = _rand(scfg.fmt, (k, n), g).to(torch.int8)
        c = dev_small.matmul(a, b, dataflow=df)
        assert c.dtype == torch.int32
        assert torch.equal(c.long(), model.gemm(a, b, scfg)), (m, k, n)
        assert torch.equal(model.gemm(a, b, scfg), a.long() @ b.long())


@pytest.mark.parametrize("df", ["os", "ws", "is"])
def test_larger_than_scratchpad_is_tiled(dev_small, df):
    # spad_depth 64 and acc_depth 32: this needs many tiles and K chunks
    g = torch.Generator().manual_seed(SEED)
    a = _rand(dev_small.config.engine("systolic").fmt, (37, 150), g).to(torch.int8)
    b = _rand(dev_small.config.engine("systolic").fmt, (150, 23), g).to(torch.int8)
    assert torch.equal(dev_small.matmul(a, b, dataflow=df).long(), a.long() @ b.long())


def test_extremes_and_back_to_back(dev_4x4):
    scfg = dev_4x4.config.engine("systolic")
    for lo_a, lo_b in ((-128, -128), (-128, 127), (127, 127)):
        a = torch.full((9, 70), lo_a, dtype=torch.int8)
        b = torch.full((70, 6), lo_b, dtype=torch.int8)
        for df in scfg.dataflows:
            assert torch.equal(dev_4x4.matmul(a, b, dataflow=df).long(), a.long() @ b.long())


def test_perf_counters_and_cycle_model(dev_4x4):
    scfg = dev_4x4.config.engine("systolic")
    g = torch.Generator().manual_seed(3)
    a = _rand(scfg.fmt, (8, 40), g).to(torch.int8)
    b = _rand(scfg.fmt, (40, 12), g).to(torch.int8)
    for df in scfg.dataflows:
        dev_4x4.reset_perf()
        dev_4x4.matmul(a, b, dataflow=df)
        p = dev_4x4.perf()
        # busy cycles == the cycle model summed over the program's GEMM instructions, exactly
        hm, hk, hn = (12, 40, 8) if df == "is" else (8, 40, 12)
        plan, _ = plan_dma(hm, hk, hn, df, scfg, dev_4x4.config)
        want = sum(model.cycles(mt, kc, nt, "ws" if df == "is" else df, scfg)
                   for mt, kc, nt in plan.gemms(hm, hk, hn, scfg.cols))  # fmt: skip
        assert p["busy"] == want, df
        assert p["macs"] >= 8 * 40 * 12
        assert p["cycles"] > p["busy"]


def test_link_window_roundtrip(dev_small):
    base = dev_small.window_base("systolic")
    words = np.arange(1, 61, dtype=np.uint32) * 0x01010101
    dev_small.write(base, words)  # left memory: 1 word per entry (3 x int8 in 32 bits)
    assert np.array_equal(dev_small.read(base, 60), words)
    dev_small.write_reg("SCRATCH", 0xCAFEF00D)
    assert dev_small.read_reg("SCRATCH") == 0xCAFEF00D


def test_bad_addresses_raise(dev_small):
    with pytest.raises(DeviceError, match="DECERR"):
        dev_small.read(0x00F0_0000, 1)
    with pytest.raises(DeviceError, match="SLVERR"):
        dev_small.write(REG["MAGIC"], [0])
    assert dev_small.read_reg("MAGIC") == 0x544D5347  # the link still works


def test_bad_opcode_raises_and_clears(dev_small):
    dev_small.execute([[0x7F, 0, 0, 0]])
    with pytest.raises(DeviceError, match=r"BAD_OPCODE \(0x01\) from the controller"):
        dev_small.wait()
    dev_small.wait()  # cleared


def test_host_errors_name_the_argument(dev_small):
    a = torch.zeros((2, 3), dtype=torch.int8)
    with pytest.raises(UsageError) as e:
        dev_small.matmul(a.float(), a.t())
    assert str(e.value) == (
        "a must be an integer tensor (torch.int8 for this int8 engine), not torch.float32"
    )
    with pytest.raises(UsageError) as e:
        dev_small.matmul(a, a)
    assert str(e.value) == (
        "a and b do not chain: a is 2x3, b is 2x3 (a's columns must equal b's rows)"
    )
    with pytest.raises(UsageError) as e:
        dev_small.matmul(a, a.t(), dataflow="xs")
    assert str(e.value) == "dataflow must be one of os, ws, is, not 'xs'"
    with pytest.raises(UsageError) as e:
        dev_small.matmul(torch.full((2, 2), 300), torch.zeros((2, 2), dtype=torch.int64))
    assert str(e.value) == (
        "matmul: 4 of 4 values of a lie outside the int8 range -128..127, the farthest 300; "
        "pass range='saturate' to clamp them"
    )
    with pytest.raises(UsageError) as e:
        dev_small.matmul(torch.zeros(3, dtype=torch.int8), a)
    assert str(e.value) == "a must be 2-D (rows x columns), not 1-D (3,)"
    with pytest.raises(UsageError) as e:
        dev_small.matmul([[1]], a)
    assert str(e.value) == "a must be a torch tensor or a device buffer, not list"
    empty = dev_small.matmul(torch.zeros((0, 3), dtype=torch.int8), a.t())
    assert empty.shape == (0, 2)


def test_long_k_overflows_the_accumulator_like_the_model(dev_small):
    # every product 16384, K = 140000: the true sum 2.29e9 passes int32; the hardware (and the
    # model) wrap modulo 2**32; the host splits K into chunks that accumulate on the device
    scfg = dev_small.config.engine("systolic")
    k = 140_000
    a = torch.full((1, k), -128, dtype=torch.int8)
    b = torch.full((k, 2), -128, dtype=torch.int8)
    b[:, 1] = 127
    c = dev_small.matmul(a, b)
    gold = model.gemm(a, b, scfg)
    assert torch.equal(c.long(), gold)
    assert not torch.equal(gold, a.long() @ b.long())  # it did wrap
    assert int(c[0, 0]) == ((k * 16384 + 2**31) % 2**32) - 2**31
