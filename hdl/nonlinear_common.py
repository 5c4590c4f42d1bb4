"""Shared parts of the streaming nonlinear engines (softmax, GELU, LayerNorm).

Python side: config checks and the instruction layout every nonlinear engine uses. Hardware side
(further down): the row sequencer with its memories and host window, a sequential divider, and
small pipeline helpers.

Instruction (128 bits, see ``generators/engine.py``)::

    [7:0]    opcode
    [31:8]   src   vector-word address of row 0 in the input memory
    [55:32]  dst   vector-word address of row 0 in the output memory
    [76:64]  len   elements per row, 1..max_len
    [95:80]  rows  rows, 1..65535; row r is at src + r * ceil(len / lanes)

A vector word holds ``lanes`` elements, element ``j`` of a row in word ``j // lanes``, lane
``j % lanes``; lanes past the row's end are ignored on input and written as 0 on output.
"""

from __future__ import annotations

__all__ = [
    "check_int",
    "check_common",
    "INSTR_FIELDS",
    "pack_row_instr",
    "words_per_row",
]

INSTR_FIELDS = {"src": (8, 24), "dst": (32, 24), "len": (64, 13), "rows": (80, 16)}


def check_int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {value}")


def check_pow2(name, value, lo, hi):
    check_int(name, value, lo, hi)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two in {lo}..{hi}, not {value}")


def check_common(cfg):
    """Checks of the fields every nonlinear engine config has."""
    from .formats import parse_int_format

    fmt = parse_int_format(cfg.in_dtype, field="in_dtype", allowed=("int8", "int16"))
    check_int("in_frac", cfg.in_frac, 0, fmt.width - 1)
    check_int("lanes", cfg.lanes, 1, 16)
    check_pow2("depth", cfg.depth, 16, 65536)
    check_int("max_len", cfg.max_len, 1, 4096)


def words_per_row(length: int, lanes: int) -> int:
    return -(-length // lanes)


def pack_row_instr(opcode: int, *, src: int, dst: int, length: int, rows: int) -> list[int]:
    """The 4 instruction words of a nonlinear row instruction (fields must fit their widths)."""
    value = opcode & 0xFF
    for name, v in (("src", src), ("dst", dst), ("len", length), ("rows", rows)):
        off, width = INSTR_FIELDS[name]
        if not 0 <= v < (1 << width):
            raise ValueError(f"{name} must fit in {width} bits, not {v}")
        value |= v << off
    return [(value >> (32 * i)) & 0xFFFF_FFFF for i in range(4)]
