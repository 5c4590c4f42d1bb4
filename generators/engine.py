"""The engine contract: what every engine of an accelerator provides.

An engine is a ``wiring.Component`` driven by a frozen Config dataclass. The accelerator top
(``generators/accel``) places each engine behind the controller and the AXI4-Lite bus:

* ``cmd``   (In, stream of 128-bit instructions): the controller hands the engine each
  instruction whose opcode the engine owns (``ENGINE.opcodes``). Word 0 bits [7:0] hold the opcode;
  the rest of the 4 x 32-bit words are the engine's own fields (see ``Instr``). The engine raises
  ``cmd.ready`` when it can take the next one.
* ``busy``  (Out 1): high while an accepted instruction is in progress.
* ``done``  (Out 1): a one-cycle pulse when an instruction retires (also when it was rejected).
* ``error`` (Out 8): non-zero for one cycle (with ``done``) when an instruction is rejected; the
  code is latched by the controller into the ERROR register (codes in ``ErrorCode``).
* ``host``  (In MemBusSignature): the engine's host window (its scratchpad memories), reached from
  AXI at ``ENGINE_WINDOW_BASE + index * ENGINE_WINDOW_SIZE``. The engine describes the window's
  regions with ``windows()`` so the manifest and the host driver know the layout.
* ``perf_macs`` (Out 16): operations (MACs, or elements for nonlinear engines) done this cycle.
* ``perf_stall`` (Out 1): busy but not computing this cycle (waiting on a fill/drain/preload).

Engines own their memories; nothing else writes them except the host through the window.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from amaranth.hdl import unsigned
from amaranth.lib import stream
from amaranth.lib.wiring import In, Out

from ..hdl.bus import MemBusSignature

__all__ = [
    "INSTR_WORDS",
    "INSTR_BITS",
    "ENGINE_WINDOW_BASE",
    "ENGINE_WINDOW_SIZE",
    "ENGINE_WINDOW_ADDR_WIDTH",
    "ErrorCode",
    "Window",
    "engine_ports",
    "check_int",
    "check_pow2",
    "pack_instr",
    "unpack_instr",
]

INSTR_WORDS = 4
INSTR_BITS = 32 * INSTR_WORDS
ENGINE_WINDOW_BASE = 0x0100_0000  # byte address of engine 0's window
ENGINE_WINDOW_SIZE = 0x0100_0000  # 16 MiB of byte addresses per engine
ENGINE_WINDOW_ADDR_WIDTH = 22  # word address bits inside one window


class ErrorCode(enum.IntEnum):
    """Codes latched in the ERROR register (first error wins until cleared)."""

    NONE = 0x00
    BAD_OPCODE = 0x01  # no engine owns the opcode
    QUEUE_OVERFLOW = 0x02  # an instruction word was written while the queue was full
    DEADLOCK = 0x03  # the watchdog: a program waited for a token that can never arrive
    MEM_RANGE = 0x04  # a DMA copy would run past the end of device memory
    MEM_ALIGN = 0x05  # a DMA device-memory address is not 4-byte aligned
    BUS_ERROR = 0x06  # device memory answered a DMA burst with SLVERR/DECERR
    WINDOW_RANGE = 0x07  # a DMA copy touched a window word the engine does not have (or a read-only one)
    BAD_DATAFLOW = 0x10  # the dataflow field names one the engine was not generated with
    BAD_SHAPE = 0x11  # a dimension is zero or larger than the engine supports
    OUT_OF_RANGE = 0x12  # operands or results would run past the end of a memory
    BAD_FIELD = 0x13  # another instruction field has a value the engine cannot run


@dataclass(frozen=True)
class Window:
    """One region of an engine's host window.

    ``offset`` is a word (32-bit) offset inside the window; entry ``i`` occupies
    ``stride`` words from ``offset + i * stride``; ``width`` is the entry's width in bits (entries
    wider than 32 bits are split little-endian over consecutive words).
    """

    name: str
    offset: int
    depth: int
    width: int
    stride: int
    access: str  # "rw", "r", "w"
    doc: str = ""
    # elements: ``width // elem_width`` per entry, packed from bit 0 (0: the entry is one value),
    # two's complement when ``signed``; what an on-chip COPY walks (generators/accel/copy.py)
    elem_width: int = 0
    signed: bool = True

    def as_dict(self) -> dict:
        return {
            "elem_width": self.elem_width or self.width,
            "signed": self.signed,
            "name": self.name,
            "offset": self.offset,
            "depth": self.depth,
            "width": self.width,
            "stride": self.stride,
            "access": self.access,
            "doc": self.doc,
        }


def check_int(name: str, value, lo: int, hi: int) -> None:
    """Config validation shared by the engines: ``name must be an integer in lo..hi, not v``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {value}")


def check_pow2(name: str, value, lo: int, hi: int) -> None:
    check_int(name, value, lo, hi)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two in {lo}..{hi}, not {value}")


def engine_ports(*, host_addr_width: int = ENGINE_WINDOW_ADDR_WIDTH) -> dict:
    """The members every engine's signature starts with (see the module docstring)."""
    return {
        "cmd": In(stream.Signature(unsigned(INSTR_BITS))),
        "busy": Out(1),
        "done": Out(1),
        "error": Out(8),
        "host": In(MemBusSignature(addr_width=host_addr_width)),
        "perf_macs": Out(16),
        "perf_stall": Out(1),
    }


def pack_instr(opcode: int, fields: list[tuple[int, int, int]]) -> list[int]:
    """Build the 4 instruction words from ``(bit_offset, width, value)`` fields.

    ``bit_offset`` counts from bit 0 of word 0 across the 128-bit instruction; bits [7:0] are the
    opcode. Values must fit their width (checked).
    """
    value = opcode & 0xFF
    for offset, width, v in fields:
        if not 0 <= v < (1 << width):
            raise ValueError(f"instruction field at bit {offset} ({width} bits) cannot hold {v}")
        value |= v << offset
    return [(value >> (32 * i)) & 0xFFFF_FFFF for i in range(INSTR_WORDS)]


def unpack_instr(words: list[int], fields: dict[str, tuple[int, int]]) -> dict[str, int]:
    value = sum(w << (32 * i) for i, w in enumerate(words))
    out = {"opcode": value & 0xFF}
    for name, (offset, width) in fields.items():
        out[name] = (value >> offset) & ((1 << width) - 1)
    return out
