"""Host side of the host-link protocol (framing, CRC); the RTL side is hdl/hostlink.py."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..hdl.crc import crc16
from ..hdl.hostlink import SOF_REQ, SOF_RSP, Cmd, Status

__all__ = ["Cmd", "Status", "encode_request", "ResponseParser", "Response", "STATUS_TEXT"]

STATUS_TEXT = {
    Status.OK: "ok",
    Status.CRC_ERROR: "the device saw a CRC error in the request",
    Status.BAD_CMD: "the device does not know the command",
    Status.BAD_LENGTH: "the request's word count is zero or above the device's maximum",
    Status.SLVERR: "the accelerator answered SLVERR (a read-only or out-of-range location)",
    Status.DECERR: "the accelerator answered DECERR (no register or window at that address)",
}


def encode_request(seq: int, cmd: int, addr: int, count: int, payload: bytes = b"") -> bytes:
    body = struct.pack("<BBIH", seq & 0xFF, cmd, addr & 0xFFFF_FFFF, count) + payload
    return bytes([SOF_REQ]) + body + struct.pack("<H", crc16(body))


@dataclass
class Response:
    seq: int
    count: int
    payload: bytes
    status: int


class ResponseParser:
    """Incremental parser: feed bytes, get complete responses (CRC checked).

    ``expect_payload(seq)`` says how many payload words a response with that sequence number
    carries (reads carry ``count`` words, the others none).
    """

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes, read_seqs: set[int]) -> list[Response | str]:
        """Returns responses, or strings describing framing errors (bad CRC, junk)."""
        self.buf += data
        out: list[Response | str] = []
        while self.buf:
            if self.buf[0] != SOF_RSP:
                junk = self.buf.find(bytes([SOF_RSP]))
                n = len(self.buf) if junk < 0 else junk
                del self.buf[:n]
                out.append(f"{n} unexpected bytes from the device")
                continue
            if len(self.buf) < 4:
                break
            seq, count = self.buf[1], int.from_bytes(self.buf[2:4], "little")
            plen = 4 * count if seq in read_seqs else 0
            total = 1 + 3 + plen + 1 + 2
            if len(self.buf) < total:
                break
            frame = bytes(self.buf[:total])
            del self.buf[:total]
            body, crc = frame[1:-2], int.from_bytes(frame[-2:], "little")
            if crc16(body) != crc:
                out.append(f"response {seq} failed its CRC check")
                continue
            out.append(Response(seq, count, frame[4 : 4 + plen], frame[4 + plen]))
        return out
