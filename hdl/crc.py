"""CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor).

The same function serves the host (Python ints) and the hardware (Amaranth values), so the
framing of the host link is defined once. Check value: crc16(b"123456789") == 0x29B1.
"""

from amaranth import Cat, Value

__all__ = ["CRC_INIT", "crc16", "crc16_update"]

CRC_INIT = 0xFFFF
_POLY = 0x1021


def _symbolic_update():
    """Each next-CRC bit as the set of input bits it XORs (crc bits 0..15, byte bits 16..23)."""
    crc = [{i} for i in range(16)]
    for b in range(8):
        crc[8 + b] = crc[8 + b] ^ {16 + b}
    for _ in range(8):
        top = crc[15]
        shifted = [set()] + crc[:15]
        crc = [shifted[i] ^ top if (_POLY >> i) & 1 else shifted[i] for i in range(16)]
    return [sorted(bits) for bits in crc]


_TERMS = _symbolic_update()


def crc16_update(crc, byte):
    """One byte into the CRC; works on ints and on Amaranth values.

    In hardware each output bit is the XOR of a fixed set of input bits (the CRC is linear), so
    the expression stays small however it is used.
    """
    if isinstance(crc, Value) or isinstance(byte, Value):
        bits = Cat(Value.cast(crc)[:16], Value.cast(byte)[:8])
        out = []
        for terms in _TERMS:
            v = bits[terms[0]]
            for t in terms[1:]:
                v = v ^ bits[t]
            out.append(v)
        return Cat(*out)
    crc ^= byte << 8
    for _ in range(8):
        crc = ((crc << 1) ^ _POLY) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _slow(b):
    crc = b << 8
    for _ in range(8):
        crc = ((crc << 1) ^ _POLY) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


_TABLE = [_slow(b) for b in range(256)]


def crc16(data: bytes, crc: int = CRC_INIT) -> int:
    """CRC of ``data`` (table-driven; equal to folding :func:`crc16_update`)."""
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ b) & 0xFF]
    return crc
