"""The serial transport speaks the same protocol: pyserial on a pseudo-terminal whose other end is
relayed to the simulated board's socket (what a USB-UART does for a real board)."""

import os
import pty
import select
import threading
import tty

import pytest
import torch

from gatesmith.errors import UsageError
from gatesmith.host.device import Device, open
from gatesmith.host.transport import SerialTransport
from gatesmith.sim.board import SimBoard

from .conftest import SIM_SMALL


def _relay(master_fd, sock, stop):
    while not stop.is_set():
        r, _, _ = select.select([master_fd, sock], [], [], 0.05)
        if master_fd in r:
            data = os.read(master_fd, 65536)
            if data:
                sock.sendall(data)
        if sock in r:
            data = sock.recv(65536)
            if not data:
                return
            os.write(master_fd, data)


def test_serial_transport_over_a_pty():
    board = SimBoard(SIM_SMALL)
    master_fd, slave_fd = pty.openpty()
    tty.setraw(slave_fd)
    stop = threading.Event()
    t = threading.Thread(target=_relay, args=(master_fd, board.sock, stop), daemon=True)
    t.start()
    try:
        dev = Device(SerialTransport(os.ttyname(slave_fd), 1_000_000), None, timeout=20)
        assert dev.config.to_json() == SIM_SMALL.to_json()  # discovered from the identity ROM
        a = torch.randint(-128, 128, (7, 11), dtype=torch.int8)
        b = torch.randint(-128, 128, (11, 5), dtype=torch.int8)
        assert torch.equal(dev.matmul(a, b).long(), a.long() @ b.long())
        dev.transport.close()
    finally:
        stop.set()
        t.join(timeout=5)
        os.close(slave_fd)
        os.close(master_fd)
        board.close()


def test_open_errors():
    with pytest.raises(UsageError) as e:
        open("serial")
    assert str(e.value) == "port is required for the serial transport (e.g. port='/dev/ttyUSB0')"
    with pytest.raises(UsageError) as e:
        open("usb")
    assert str(e.value) == "kind must be one of sim, serial, not 'usb'"
    with pytest.raises(UsageError, match=r"port '/nonexistent/tty' could not be opened"):
        open("serial", port="/nonexistent/tty")
