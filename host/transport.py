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
    """A byte pipe to a device."""

    @abstractmethod
    def send(self, data: bytes) -> None: ...

    @abstractmethod
    def recv(self, timeout: float) -> bytes:
        """Bytes available within ``timeout`` seconds (``b""`` if none arrived)."""

    @abstractmethod
    def close(self) -> None: ...


class SocketTransport(Transport):
    def __init__(self, sock: socket.socket, *, alive=None):
        self.sock = sock
        self._alive = alive or (lambda: True)

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise DeviceError(f"the simulated board closed the link: {e}") from None

    def recv(self, timeout: float) -> bytes:
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            if not self._alive():
                raise DeviceError("the simulated board exited")
            return b""
        data = self.sock.recv(1 << 20)
        if not data:
            raise DeviceError("the simulated board closed the link")
        return data

    def close(self) -> None:
        self.sock.close()


class SerialTransport(Transport):
    """A board's UART through pyserial (8N1)."""

    def __init__(self, port: str, baud: int):
        try:
            import serial
        except ImportError:  # pragma: no cover - pyserial is a dependency
            raise UsageError("the serial transport needs pyserial (pip install pyserial)") from None
        try:
            self.port = serial.Serial(port, baudrate=baud, timeout=0)
        except (serial.SerialException, ValueError) as e:
            raise UsageError(f"port {port!r} could not be opened: {e}") from None

    def send(self, data: bytes) -> None:
        self.port.write(data)
        self.port.flush()

    def recv(self, timeout: float) -> bytes:
        self.port.timeout = timeout
        first = self.port.read(1)
        if not first:
            return b""
        return first + self.port.read(self.port.in_waiting)

    def close(self) -> None:
        self.port.close()
