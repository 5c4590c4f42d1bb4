"""Contract v2 on the simulated board: device memory, the DMA, programs with tokens, errors."""

import numpy as np
import pytest
import torch

import gatesmith.host
from gatesmith.errors import DeviceError, UsageError
from gatesmith.generators.accel.isa import Deps, Op
from gatesmith.generators.systolic import model
from gatesmith.generators.systolic.engine import window_layout
from gatesmith.host.systolic import Packed, gemm_program, plan_dma, upload

from .conftest import SIM_4X4

SEED = 20261201


def _win(dev):
    return window_layout(dev.config.engine("systolic"))


def test_buffers_roundtrip_and_views(dev_4x4):
    g = torch.Generator().manual_seed(SEED)
    x = torch.randint(-(2**31), 2**31 - 1, (37, 5), dtype=torch.int32, generator=g)
    with dev_4x4.alloc((37, 5), torch.int32, label="x") as buf:
        buf.write(x)
        assert torch.equal(buf.read(), x)
        v = buf.view()  # zero copy: the board's own pages
        v[0, 0] = 12345
        assert int(buf.read()[0, 0]) == 12345
        with pytest.raises(UsageError, match=r"write needs a torch.int32 tensor of shape \(37, 5\)"):
            buf.write(x.float())
    assert buf.freed
    with pytest.raises(UsageError, match="it was freed"):
        buf.read()


def test_dma_strided_load_store(dev_4x4):
    """LOAD rows with a device stride into the left window, STORE them back with another."""
    lay = _win(dev_4x4)
    g = np.random.default_rng(SEED)
    src_words = g.integers(0, 2**32, size=6 * 80, dtype=np.uint64).astype(np.uint32)
    with dev_4x4.alloc((6 * 80,), torch.int32) as src, dev_4x4.alloc((5 * 64,), torch.int32) as dst:
        src.write_raw(src_words)
        dst.write_raw(np.zeros(5 * 64, dtype=np.uint32))
        p = dev_4x4.program()
        # 5 rows of 33 words, 80 words apart in device memory, 40 apart in the window
        p.load("systolic", win_addr=lay["left"].offset + 3, buf=src, offset=4 * 7, rows=5,
               row_words=33, mem_stride=80, win_stride=40, deps=Deps(push_next=True))  # fmt: skip
        p.nop(deps=Deps(pop_prev=True, push_next=True))
        p.store("systolic", win_addr=lay["left"].offset + 3, buf=dst, rows=5, row_words=33,
                mem_stride=64, win_stride=40, deps=Deps(pop_prev=True))  # fmt: skip
        p.run(timeout=60)
        got = dst.read_raw().view("<u4").reshape(5, 64)
    for r in range(5):
        assert np.array_equal(got[r, :33], src_words[7 + 80 * r : 7 + 80 * r + 33]), r
        assert not got[r, 33:].any()


@pytest.mark.parametrize("df", ["os", "ws", "is"])
def test_program_equals_one_instruction_at_a_time(dev_4x4, df):
    scfg = dev_4x4.config.engine("systolic")
    g = torch.Generator().manual_seed(SEED + len(df))
    a = torch.randint(-128, 128, (21, 70), dtype=torch.int8, generator=g)
    b = torch.randint(-128, 128, (70, 13), dtype=torch.int8, generator=g)
    la, lb = upload(dev_4x4, a, "a", df), upload(dev_4x4, b, "b", df)
    left, top = (lb, la) if df == "is" else (la, lb)
    hm, hk, hn = left.layout.rows, left.layout.cols, top.layout.cols
    # small tiles: many chunks, both scratchpad halves and both accumulator halves in use
    plan, _ = plan_dma(hm, hk, hn, df, scfg, dev_4x4.config)
    from gatesmith.host.systolic import Plan

    plan = Plan(mt=min(plan.mt, 8), nt=min(plan.nt, 8), kc=min(plan.kc, 16))
    outs = []
    for mode in ("program", "single"):
        res = dev_4x4.alloc((-(-hn // scfg.cols) * hm * _win(dev_4x4)["acc"].stride,), torch.int32)
        res.layout = Packed(role="result", dataflow=df, rows=hm, cols=hn, transposed=df == "is")
        prog = gemm_program(dev_4x4, left, top, res, plan, "ws" if df == "is" else df, scfg)
        assert prog.queues()["load"] > 4 and prog.queues()["store"] > 1
        if mode == "program":
            prog.run(timeout=120)
        else:
            for _, words, _ in prog.entries:  # the register queue ignores tokens: one by one
                dev_4x4.execute([words])
                dev_4x4.wait(timeout=60)
        outs.append(res.read())
        res.free()
    la.free()
    lb.free()
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0].long(), model.gemm(a, b, scfg))


def test_resident_weights_and_device_results(dev_4x4):
    g = torch.Generator().manual_seed(SEED)
    w = torch.randint(-128, 128, (50, 20), dtype=torch.int8, generator=g)
    wb = dev_4x4.upload(w, "b", dataflow="ws")
    before = dev_4x4.memory.allocations()
    for _ in range(2):
        x = torch.randint(-128, 128, (9, 50), dtype=torch.int8, generator=g)
        assert torch.equal(dev_4x4.matmul(x, wb, dataflow="ws").long(), x.long() @ w.long())
    assert dev_4x4.memory.allocations() == before  # temporaries freed, the weight kept
    x = torch.randint(-128, 128, (9, 50), dtype=torch.int8, generator=g)
    out = dev_4x4.matmul(x, wb, dataflow="ws", out="device")
    assert torch.equal(out.read().long(), x.long() @ w.long())
    out.free()
    with pytest.raises(UsageError, match="packed for ws"):
        dev_4x4.matmul(x, wb, dataflow="os")
    wb.free()


def test_serial_path_to_device_memory(dev_small):
    """Buffers through the host link's window onto device memory (what "serial" uses)."""
    g = torch.Generator().manual_seed(SEED)
    a = torch.randint(-128, 128, (7, 11), dtype=torch.int8, generator=g)
    b = torch.randint(-128, 128, (11, 5), dtype=torch.int8, generator=g)
    dev_small.shared_memory = False
    try:
        with dev_small.alloc((3, 3), torch.int16) as buf:
            t = torch.arange(9, dtype=torch.int16).reshape(3, 3) - 4
            buf.write(t)
            assert torch.equal(buf.read(), t)
            assert np.array_equal(np.asarray(dev_small._board.memory[buf.addr : buf.addr + 18]),
                                  t.numpy().view(np.uint8).reshape(-1))  # fmt: skip
        assert torch.equal(dev_small.matmul(a, b).long(), a.long() @ b.long())
    finally:
        dev_small.shared_memory = True


def test_dma_errors_name_entry_and_address(dev_4x4):
    lay = _win(dev_4x4)
    mem = dev_4x4.read_reg("MEM_BYTES")
    p = dev_4x4.program()
    p.nop()
    p.load("systolic", win_addr=0, offset=mem - 16, rows=1, row_words=8, check=False)
    with pytest.raises(DeviceError, match=rf"MEM_RANGE \(0x04\) from the load DMA at program entry 1 "
                       rf"\(LOAD systolic 1x8 words, device {mem - 16:#x}.*address {mem - 16:#x}"):  # fmt: skip
        p.run(timeout=30)
    p = dev_4x4.program()
    p.store("systolic", win_addr=0, offset=0x102, rows=1, row_words=1, check=False)
    with pytest.raises(DeviceError, match=r"MEM_ALIGN \(0x05\) from the store DMA at program entry 0"):
        p.run(timeout=30)
    with dev_4x4.alloc((16,), torch.int32) as buf:
        p = dev_4x4.program()  # the accumulator window is read-only
        p.load("systolic", win_addr=lay["acc"].offset, buf=buf, rows=1, row_words=4)
        with pytest.raises(DeviceError, match=r"WINDOW_RANGE \(0x07\) from the load DMA at program "
                           rf"entry 0 .*address {lay['acc'].offset:#x}"):  # fmt: skip
            p.run(timeout=30)
        with pytest.raises(UsageError, match=r"entry 0 \(LOAD systolic\): device bytes .* leave"):
            dev_4x4.program().load("systolic", win_addr=0, buf=buf, rows=2, row_words=9)
    # a token that never comes: the watchdog, not a hang
    p = dev_4x4.program()
    p.nop(deps=Deps(pop_prev=True))
    with pytest.raises(DeviceError, match=r"DEADLOCK \(0x03\) from the controller at program entry 0"):
        p.run(timeout=30)
    # and the device works afterwards
    a = torch.ones((4, 4), dtype=torch.int8)
    assert torch.equal(dev_4x4.matmul(a, a).long(), a.long() @ a.long())


def test_busy_buffers_are_refused(dev_4x4):
    lay = _win(dev_4x4)
    with dev_4x4.alloc((256,), torch.int32) as buf:
        p = dev_4x4.program()
        for _ in range(200):
            p.load("systolic", win_addr=lay["left"].offset, buf=buf, rows=1, row_words=256)
        run = p.launch()
        with pytest.raises(UsageError, match="a running program uses it"):
            buf.free()
        with pytest.raises(UsageError, match="a running program uses it"):
            buf.write(torch.zeros(256, dtype=torch.int32))
        second = dev_4x4.program()
        second.nop()
        r2 = second.launch()  # waits for the running program first
        assert run.done
        r2.wait(timeout=60)
        buf.write(torch.zeros(256, dtype=torch.int32))  # fine once it finished


def test_out_of_memory_lists_allocations(dev_small):
    cap = dev_small.read_reg("MEM_BYTES")
    with dev_small.alloc((1000,), torch.int8, label="weights"):
        with pytest.raises(DeviceError, match=r"device memory is full: .* allocated: weights 1024 B"):
            dev_small.alloc((cap,), torch.int8)


def test_no_burst_crosses_4k():
    """Rows that start just before a 4 KiB boundary: the DMA must split every burst there (the
    harness answers a crossing burst with SLVERR and counts it)."""
    with gatesmith.host.open("sim", config=SIM_4X4) as dev:
        lay = _win(dev)
        with dev.alloc((3000,), torch.int32) as src, dev.alloc((3000,), torch.int32) as dst:
            src.write_raw(np.arange(3000, dtype=np.uint32))
            dst.write_raw(np.zeros(3000, dtype=np.uint32))
            s_off = (src.addr // 4096 + 1) * 4096 - 40 - src.addr
            d_off = (dst.addr // 4096 + 1) * 4096 - 8 - dst.addr
            p = dev.program()
            p.load("systolic", win_addr=lay["left"].offset, buf=src, offset=s_off, rows=2,
                   row_words=120, mem_stride=1024, deps=Deps(push_next=True))  # fmt: skip
            p.nop(deps=Deps(pop_prev=True, push_next=True))
            p.store("systolic", win_addr=lay["left"].offset, buf=dst, offset=d_off, rows=2,
                    row_words=120, mem_stride=1024, deps=Deps(pop_prev=True))  # fmt: skip
            p.run(timeout=60)
            got = dst.read_raw().view("<u4")
        board = dev._board
    for r in range(2):
        s0, d0 = s_off // 4 + 1024 * r, d_off // 4 + 1024 * r
        assert np.array_equal(got[d0 : d0 + 120], np.arange(s0, s0 + 120, dtype=np.uint32))
    assert board.mem_4k_violations == 0
