"""Host side of the host-link protocol (framing, CRC); the RTL side is hdl/hostlink.py."""

from __future__ import annotations

import struct
from collections.abc import Container, Mapping
from dataclasses import dataclass

from ..hdl.crc import crc16
from ..hdl.hostlink import SOF_REQ, SOF_RSP, Cmd, Flag, Status

__all__ = ["Cmd", "Status", "Flag", "encode_request", "ResponseParser", "Response", "STATUS_TEXT"]

STATUS_TEXT = {
    Status.OK: "ok",
    Status.CRC_ERROR: "the device saw a CRC error in the request",
    Status.BAD_CMD: "the device does not know the command",
    Status.BAD_LENGTH: "the request's word count is zero or above the device's maximum",
    Status.SLVERR: "the accelerator answered SLVERR (a read-only or out-of-range location)",
    Status.DECERR: "the accelerator answered DECERR (no register or window at that address)",
}
_RSP_OVERHEAD = 7  # SOF, seq, count[2], status, crc[2]


def encode_request(seq: int, cmd: int, addr: int, count: int, payload: bytes = b"") -> bytes:
    body = struct.pack("<BBIH", seq & 0xFF, cmd, addr & 0xFFFF_FFFF, count) + payload
    return bytes([SOF_REQ]) + body + struct.pack("<H", crc16(body))


@dataclass
class Response:
    seq: int
    count: int
    payload: bytes
    status: int  # the status code (Status.*), without the flags
    flags: int = 0  # Flag.SESSION | Flag.REPLAYED bits of the status byte

    @property
    def replayed(self) -> bool:
        """The device had executed this ONCE frame before: this is its recorded answer."""
        return bool(self.flags & Flag.REPLAYED)

    @property
    def session(self) -> bool:
        """The device has executed a ONCE frame since its last reset."""
        return bool(self.flags & Flag.SESSION)


class ResponseParser:
    """Incremental parser: feed bytes, get complete responses (CRC checked).

    ``feed(data, reads)``: ``reads`` says which sequence numbers are reads, whose answers carry a
    payload. A mapping ``{seq: words}`` gives the words each read asked for: the payload length
    is then taken from the request, never from the (not yet checked) count field, so a corrupted
    count cannot make the parser wait for bytes that never come. With a plain set of sequence
    numbers the count field is used, bounded by ``max_words`` (the device's LINK_MAX_WORDS).
    After a bad frame the parser drops the start byte only and hunts for the next one.
    """

    def __init__(self, max_words: int | None = None):
        self.buf = bytearray()
        self.max_words = max_words

    def reset(self) -> None:
        """Forget buffered bytes (after the link was drained)."""
        self.buf.clear()

    def feed(self, data: bytes, read_seqs: Container[int]) -> list[Response | str]:
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
            if isinstance(read_seqs, Mapping):
                words = read_seqs.get(seq, 0)
            else:
                words = count if seq in read_seqs else 0
                if self.max_words is not None and words > self.max_words:
                    del self.buf[:1]
                    out.append(
                        f"response {seq} claims {count} words, above the device's maximum "
                        f"of {self.max_words}"
                    )
                    continue
            # an error answer to a read (count 0) carries no payload
            lengths = (0, words) if words and count == 0 else (words,)
            if len(self.buf) < _RSP_OVERHEAD + 4 * lengths[0]:
                break
            rsp = None
            for n in lengths:
                if len(self.buf) < _RSP_OVERHEAD + 4 * n:
                    break
                rsp = _decode(bytes(self.buf[: _RSP_OVERHEAD + 4 * n]), n)
                if rsp is not None:
                    break
            if rsp is None:
                if len(self.buf) < _RSP_OVERHEAD + 4 * lengths[-1]:
                    break  # the longer candidate may still arrive
                del self.buf[:1]
                out.append(f"response {seq} failed its CRC check")
                continue
            del self.buf[: _RSP_OVERHEAD + len(rsp.payload)]
            out.append(rsp)
        return out


def _decode(frame: bytes, words: int) -> Response | None:
    """A response frame with ``words`` payload words, or None if its CRC is bad."""
    body, crc = frame[1:-2], int.from_bytes(frame[-2:], "little")
    if crc16(body) != crc:
        return None
    sbyte = frame[4 + 4 * words]
    return Response(frame[1], int.from_bytes(frame[2:4], "little"), frame[4 : 4 + 4 * words],
                    sbyte & Flag.CODE_MASK, sbyte & ~Flag.CODE_MASK & 0xFF)  # fmt: skip
