"""The accelerator's register map, described once.

This description builds the AXI4-Lite register decode in ``top.py``, the host driver's register
map (``gatesmith.host``) and the ``registers`` section of ``manifest.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Reg", "REGISTERS", "REG", "MAGIC", "VERSION", "CONFIG_ROM_BASE", "CONFIG_ROM_BYTES"]

MAGIC = 0x544D5347  # "GSMT" little-endian
VERSION = 0x0001_0000  # major.minor of the register map / protocol
CONFIG_ROM_BASE = 0x0400  # the accelerator's config as JSON bytes, 4 per word, little-endian
CONFIG_ROM_BYTES = 0x0C00


@dataclass(frozen=True)
class Reg:
    name: str
    offset: int
    access: str  # "r", "rw", "w"
    doc: str

    def as_dict(self) -> dict:
        return {"name": self.name, "offset": self.offset, "access": self.access, "doc": self.doc}


REGISTERS = (
    # identity / capability block
    Reg("MAGIC", 0x0000, "r", "0x544D5347 ('GSMT')"),
    Reg("VERSION", 0x0004, "r", "register map version, major << 16 | minor"),
    Reg("CONFIG_HASH", 0x0008, "r", "first 32 bits of the config's sha256 (big-endian)"),
    Reg("CONFIG_LEN", 0x000C, "r", "bytes of config JSON in the ROM at 0x400"),
    Reg("N_ENGINES", 0x0010, "r", "number of engines (windows at 0x0100_0000 * (i + 1))"),
    Reg("QUEUE_DEPTH", 0x0014, "r", "instruction queue entries"),
    Reg("LINK_MAX_WORDS", 0x0018, "r", "largest host-link payload in words"),
    # control / status
    Reg("CTRL", 0x1000, "w", "bit 0: clear ERROR; bit 1: clear performance counters"),
    Reg(
        "STATUS",
        0x1004,
        "r",
        "bit 0 idle (queue empty, no engine busy); bit 1 error; "
        "[15:8] queued instructions; [23:16] free queue entries",
    ),
    Reg("ERROR", 0x1008, "r", "first error since cleared: [7:0] code, [15:8] engine (0xFF: ctrl)"),
    Reg("RETIRED", 0x100C, "r", "instructions retired (wraps)"),
    Reg("SCRATCH", 0x1010, "rw", "free register for link tests"),
    # performance counters (64-bit; reading _LO latches _HI)
    Reg("PERF_BUSY_LO", 0x1100, "r", "cycles with an engine busy"),
    Reg("PERF_BUSY_HI", 0x1104, "r", ""),
    Reg("PERF_MACS_LO", 0x1108, "r", "operations issued (MACs; elements for nonlinear engines)"),
    Reg("PERF_MACS_HI", 0x110C, "r", ""),
    Reg("PERF_ACTIVE_LO", 0x1110, "r", "cycles in which an engine issued operations"),
    Reg("PERF_ACTIVE_HI", 0x1114, "r", ""),
    Reg("PERF_STALL_LO", 0x1118, "r", "cycles an engine was busy but issued nothing"),
    Reg("PERF_STALL_HI", 0x111C, "r", ""),
    Reg("PERF_CYCLES_LO", 0x1120, "r", "cycles since reset or counter clear"),
    Reg("PERF_CYCLES_HI", 0x1124, "r", ""),
    # instruction queue
    Reg("QUEUE", 0x1200, "w", "instruction words; every 4th write enqueues one instruction"),
)
REG = {r.name: r.offset for r in REGISTERS}
PERF_COUNTERS = ("BUSY", "MACS", "ACTIVE", "STALL", "CYCLES")
