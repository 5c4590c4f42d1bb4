"""Link recovery on the simulated board through a fault-injecting proxy (tests/faults.py).

Every faulted call either returns the exact result (a.long() @ b.long(), computed on the host)
or raises DeviceError; none returns a wrong result; the next clean call after a fault succeeds.
Also: exactly-once instruction writes under faults, device resets, a killed or stopped board,
Ctrl-C in the middle of a call, and the argument checks of the Device primitives.
"""

import os
import signal
import time

import numpy as np
import pytest
import torch

from gatesmith.errors import DeviceError, DeviceResetError, UsageError
from gatesmith.generators.accel.regs import REG
from gatesmith.host.device import Device
from gatesmith.host.transport import SocketTransport
from gatesmith.sim.board import SimBoard

from .conftest import SIM_SMALL
from .faults import KINDS, FaultyTransport

SEED = 20261205
# per-byte fault rates: about one fault per matmul (a 9x20 @ 20x5 GEMM moves ~3 KB each way)
RATES = {"corrupt": 1e-3, "drop": 1e-3, "duplicate": 1e-3, "insert": 1e-3, "delay": 1e-3}
CALLS = 10


@pytest.fixture(scope="module")
def board():
    b = SimBoard(SIM_SMALL)
    yield b
    b.close()


def _device(board, **faults):
    inner = SocketTransport(board.sock, alive=board.alive, latency=0.1)
    t = FaultyTransport(inner, **faults)
    return Device(t, SIM_SMALL, retries=3), t


def _operands(g, m=9, k=20, n=5):
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    return a, b


@pytest.mark.parametrize("kind", KINDS)
def test_faults_give_exact_results_or_device_errors(board, kind):
    dev, t = _device(board, kind=kind, rate=RATES[kind], seed=SEED + KINDS.index(kind))
    g = torch.Generator().manual_seed(SEED)
    print(f"seed {SEED}, kind {kind}, rate {RATES[kind]}")
    ok = raised = 0
    for _ in range(CALLS):
        a, b = _operands(g)
        t.enabled = True
        try:
            c = dev.matmul(a, b)
        except DeviceError as e:
            raised += 1
            print("raised:", e)
        else:
            assert torch.equal(c.long(), a.long() @ b.long()), "a wrong result"
            ok += 1
        t.enabled = False
        a, b = _operands(g, 4, 6, 3)  # the next clean call works
        assert torch.equal(dev.matmul(a, b).long(), a.long() @ b.long())
    print(f"ok {ok}, raised {raised}, injected {t.injected}, stats {dev.stats}")
    # the faults happened and were seen (a delay is a fault only when it outlasts a timeout: with
    # operands in device memory a matmul's link traffic is small and may absorb every delay)
    assert t.injected > 0 and (kind == "delay" or dev.stats["faults"] > 0)
    assert ok >= CALLS // 2  # recovery retried most of them to success
    dev.transport.close = lambda: None  # the board is shared by the module
    dev.close()


def test_queue_writes_run_exactly_once_under_faults(board):
    # NOP instructions retire one each: RETIRED counts how often the queue write really ran
    dev, t = _device(board, kind="corrupt", rate=3e-3, seed=SEED)
    before = dev.retired()
    sent = 0
    for i in range(40):
        t.enabled = True
        try:
            dev.execute([[0, 0, 0, 0]] * (1 + i % 3))
            sent += 1 + i % 3
        except DeviceError as e:
            assert "unknown" in str(e) or "resynchronise" in str(e), e
            pytest.fail(f"the link gave up at a 3e-3 fault rate: {e}")
        finally:
            t.enabled = False
    dev.wait()
    assert dev.retired() - before == sent
    assert dev.stats["replayed"] > 0  # some answers were lost and the device replayed them
    print(dev.stats)
    dev.transport.close = lambda: None
    dev.close()


def test_reset_is_detected(board):
    dev, _ = _device(board, kind="drop", rate=0.0, seed=0)
    dev.write_reg("SCRATCH", 7)
    board.reset()
    time.sleep(0.05)
    with pytest.raises(DeviceResetError) as e:
        dev.read_reg("SCRATCH")
    msg = (
        "the device was reset (its answers lost the session flag): its memories and instruction "
        "queue are lost; open it again"
    )
    assert str(e.value) == msg
    with pytest.raises(DeviceResetError) as e:  # and stays so: its state is gone
        dev.ping()
    assert str(e.value) == msg
    # a fresh Device on the same board works
    dev2, _ = _device(board, kind="drop", rate=0.0, seed=0)
    assert dev2.read_reg("SCRATCH") == 0
    for d in (dev, dev2):
        d.transport.close = lambda: None
        d.close()


def test_stopped_board_raises_within_bound_then_recovers(board):
    dev, _ = _device(board, kind="drop", rate=0.0, seed=0)
    dev._link.retries = 1
    os.kill(board.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match=r"^host link: the device does not answer"):
            dev.read(REG["SCRATCH"], 1)
        assert time.monotonic() - t0 < 5.0
    finally:
        os.kill(board.proc.pid, signal.SIGCONT)
    dev.write_reg("SCRATCH", 0x1234)
    assert dev.read_reg("SCRATCH") == 0x1234
    dev.transport.close = lambda: None
    dev.close()


def test_ctrl_c_leaves_the_device_usable(board):
    dev, _ = _device(board, kind="drop", rate=0.0, seed=0)
    g = torch.Generator().manual_seed(SEED)
    interrupted = 0

    def boom(*_):
        raise KeyboardInterrupt

    # the interrupts land at fractions of one call's time on this machine (a fixed delay
    # misses every call on a fast machine)
    a, b = _operands(g, 30, 60, 8)
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        dev.matmul(a, b)
        times.append(time.monotonic() - t0)
    call = sorted(times)[1]
    old = signal.signal(signal.SIGALRM, boom)
    try:
        for i in range(12):
            a, b = _operands(g, 30, 60, 8)
            signal.setitimer(signal.ITIMER_REAL, max(1e-4, call * (0.05 + 0.07 * i)))
            try:
                c = dev.matmul(a, b)
                signal.setitimer(signal.ITIMER_REAL, 0)
                assert torch.equal(c.long(), a.long() @ b.long())
            except KeyboardInterrupt:
                interrupted += 1
            a, b = _operands(g, 7, 9, 4)
            assert torch.equal(dev.matmul(a, b).long(), a.long() @ b.long())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert interrupted >= 6
    dev.transport.close = lambda: None
    dev.close()


def test_killed_board_is_a_device_error():
    b = SimBoard(SIM_SMALL)
    dev = Device(SocketTransport(b.sock, alive=b.alive, latency=0.1), SIM_SMALL, board=b)
    b.proc.kill()
    b.proc.wait()
    with pytest.raises(DeviceError) as e:
        dev.read_reg("SCRATCH")
    assert str(e.value) in (
        "the simulated board exited",
        "the simulated board closed the link",
        "the simulated board closed the link (BrokenPipeError: [Errno 32] Broken pipe)",
        "the link to the simulated board failed (ConnectionResetError: [Errno 104] Connection "
        "reset by peer)",
    )
    dev.close()


def test_primitive_arguments_are_checked(dev_small):
    with pytest.raises(UsageError) as e:
        dev_small.write(REG["SCRATCH"], [2**32])
    assert str(e.value) == "words must be in 0..2**32-1, not 4294967296"
    with pytest.raises(UsageError) as e:
        dev_small.write(REG["SCRATCH"], [-1])
    assert str(e.value) == "words must be in 0..2**32-1, not -1"
    with pytest.raises(UsageError) as e:
        dev_small.write(REG["SCRATCH"], np.array([-3], dtype=np.int64))
    assert str(e.value) == "words must be in 0..2**32-1, not -3"
    with pytest.raises(UsageError) as e:
        dev_small.write(REG["SCRATCH"], [2**70])
    assert str(e.value) == f"words must be in 0..2**32-1, not {2**70}"
    with pytest.raises(UsageError) as e:
        dev_small.write(REG["SCRATCH"], [1.5])
    assert str(e.value) == "words must be integers, not float64"
    with pytest.raises(UsageError) as e:
        dev_small.write(REG["SCRATCH"], [2**70, 1.0])
    assert str(e.value) == "words must be integers, not float"
    with pytest.raises(UsageError) as e:
        dev_small.write(2**32, [1])
    assert str(e.value) == "address 0x100000000 with 1 words is outside the 32-bit address space"
    with pytest.raises(UsageError) as e:
        dev_small.read(0xFFFF_FFFC, 2)
    assert str(e.value) == "address 0xfffffffc with 2 words is outside the 32-bit address space"
    with pytest.raises(UsageError) as e:
        dev_small.read(-4, 1)
    assert str(e.value) == "address -0x4 with 1 words is outside the 32-bit address space"
    with pytest.raises(UsageError) as e:
        dev_small.read(0, -5)
    assert str(e.value) == "the word count must be >= 0, not -5"
    with pytest.raises(UsageError) as e:
        dev_small.read(0, 1.0)
    assert str(e.value) == "the word count must be an integer, not float"
    with pytest.raises(UsageError) as e:
        dev_small.read_reg("NOPE")
    assert str(e.value) == "no register named 'NOPE'; the registers are " + ", ".join(REG)
    with pytest.raises(UsageError) as e:
        dev_small.write_reg("NOPE", 1)
    assert str(e.value).startswith("no register named 'NOPE'; the registers are MAGIC, VERSION")
    dev_small.write(REG["SCRATCH"], [0xFFFF_FFFF])
    assert dev_small.read_reg("SCRATCH") == 0xFFFF_FFFF


def test_parser_does_not_trust_a_corrupted_count():
    from gatesmith.hdl.crc import crc16
    from gatesmith.host.protocol import Response, ResponseParser

    def answer(seq, words, status=0):
        body = bytes([seq]) + len(words).to_bytes(2, "little")
        body += b"".join(w.to_bytes(4, "little") for w in words) + bytes([status])
        return b"\x5a" + body + crc16(body).to_bytes(2, "little")

    bad = bytearray(answer(7, [1, 2]))
    bad[3] = 0x40  # count 2 -> 16386 words: the old parser waited for 64 KB
    good = answer(8, [3])
    got = ResponseParser(64).feed(bytes(bad) + good, {7: 2, 8: 1})
    assert got[0] == "response 7 failed its CRC check"
    assert got[-1] == Response(8, 1, (3).to_bytes(4, "little"), 0, 0)
    # with only the set of read seqs, the count is bounded by the device's maximum
    got = ResponseParser(64).feed(bytes(bad) + good, {7, 8})
    assert got[0] == "response 7 claims 16386 words, above the device's maximum of 64"
    assert got[-1] == Response(8, 1, (3).to_bytes(4, "little"), 0, 0)
    # an error answer to a read carries no payload
    got = ResponseParser(64).feed(answer(9, [], status=1) + good, {9: 4, 8: 1})
    assert got == [Response(9, 0, b"", 1, 0), Response(8, 1, (3).to_bytes(4, "little"), 0, 0)]


def test_serial_transport_recovers_from_faults():
    import pty
    import threading
    import tty

    from gatesmith.host.transport import SerialTransport

    from .test_serial_transport import _relay

    b = SimBoard(SIM_SMALL)
    master_fd, slave_fd = pty.openpty()
    tty.setraw(slave_fd)
    stop = threading.Event()
    th = threading.Thread(target=_relay, args=(master_fd, b.sock, stop), daemon=True)
    th.start()
    try:
        inner = SerialTransport(os.ttyname(slave_fd), 1_000_000)
        t = FaultyTransport(inner, kind="corrupt", rate=1e-3, seed=SEED)
        dev = Device(t, SIM_SMALL)
        g = torch.Generator().manual_seed(SEED)
        t.enabled = True
        for _ in range(4):
            a, b_ = _operands(g)
            try:
                c = dev.matmul(a, b_)
            except DeviceError:
                continue
            assert torch.equal(c.long(), a.long() @ b_.long())
        t.enabled = False
        a, b_ = _operands(g)
        assert torch.equal(dev.matmul(a, b_).long(), a.long() @ b_.long())
        assert t.injected > 0 and dev.stats["faults"] > 0
        dev.transport.close()
    finally:
        stop.set()
        th.join(timeout=5)
        os.close(slave_fd)
        os.close(master_fd)
        b.close()
