"""Transports carry host-link bytes to a device: a socket (the simulated board) or a serial port.

The protocol (host/protocol.py) is the same on both; the Device does not know which it talks to.
"""

from __future__ import annotations

import select
import socket
from abc import ABC, abstractmethod

from ..errors import DeviceError, UsageError

__all__ = ["Transport", "SocketTransport", "SerialTransport"]


class Transport(ABC):
    """A byte pipe to a device.

    ``rate`` (bytes/s, the slower direction) and ``latency`` (s, a round trip plus the device's
    turn-around) size the link's timeouts: an answer is awaited ``latency + bytes / rate``
    seconds (host/link.py). Failures of the pipe raise :class:`DeviceError`.
    """

    rate: float = 50_000.0
    latency: float = 0.5

    @abstractmethod
    def send(self, data: bytes) -> None: ...

    @abstractmethod
    def recv(self, timeout: float) -> bytes:
        """Bytes available within ``timeout`` seconds (``b""`` if none arrived)."""

    @abstractmethod
    def close(self) -> None: ...


class SocketTransport(Transport):
    """A stream socket to the simulated board.

    The board's bridge takes one byte per simulated cycle and a few cycles per bus word; the
    default ``rate`` assumes a slow simulation (large designs run ~0.1 M cycles/s on one core).
    """

    def __init__(self, sock: socket.socket, *, alive=None, rate: float = 50_000.0,
                 latency: float = 0.5):  # fmt: skip
        self.sock = sock
        self._alive = alive or (lambda: True)
        self.rate, self.latency = rate, latency

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise DeviceError(f"the simulated board closed the link ({_why(e)})") from None

    def recv(self, timeout: float) -> bytes:
        try:
            r, _, _ = select.select([self.sock], [], [], timeout)
            if not r:
                if not self._alive():
                    raise DeviceError("the simulated board exited")
                return b""
            data = self.sock.recv(1 << 20)
        except (OSError, ValueError) as e:  # ValueError: the socket was closed under us
            raise DeviceError(f"the link to the simulated board failed ({_why(e)})") from None
        if not data:
            raise DeviceError("the simulated board closed the link")
        return data

    def close(self) -> None:
        self.sock.close()


class SerialTransport(Transport):
    """A board's UART through pyserial (8N1: 10 bit times per byte).

    ``rate`` is ``baud / 10`` bytes/s; ``latency`` covers a USB-UART's buffering (up to 16 ms
    each way) and the device's turn-around.
    """

    def __init__(self, port: str, baud: int, *, latency: float = 0.1):
        try:
            import serial
        except ImportError:  # pragma: no cover - pyserial is a dependency
            raise UsageError("the serial transport needs pyserial (pip install pyserial)") from None
        try:
            self.port = serial.Serial(port, baudrate=baud, timeout=0)
        except (serial.SerialException, ValueError) as e:
            raise UsageError(f"port {port!r} could not be opened: {e}") from None
        self.name = port
        self.rate, self.latency = baud / 10, latency

    def send(self, data: bytes) -> None:
        try:
            self.port.write(data)
            self.port.flush()
        except (OSError, ValueError) as e:  # SerialException is an OSError
            raise DeviceError(f"serial port {self.name!r} failed ({_why(e)})") from None

    def recv(self, timeout: float) -> bytes:
        try:
            self.port.timeout = timeout
            first = self.port.read(1)
            if not first:
                return b""
            return first + self.port.read(self.port.in_waiting)
        except (OSError, ValueError) as e:
            raise DeviceError(f"serial port {self.name!r} failed ({_why(e)})") from None

    def close(self) -> None:
        self.port.close()


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
