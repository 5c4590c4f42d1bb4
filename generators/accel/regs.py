"""The accelerator's register map, described once.

This description builds the AXI4-Lite register decode in ``top.py``, the host driver's register
map (``gatesmith.host``) and the ``registers`` section of ``manifest.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Reg",
    "REGISTERS",
    "REG",
    "MAGIC",
    "VERSION",
    "CONFIG_ROM_BASE",
    "CONFIG_ROM_BYTES",
    "MEM_WINDOW_BASE",
    "CTRL_BITS",
    "STATUS_BITS",
]

MAGIC = 0x544D5347  # "GSMT" little-endian
VERSION = 0x0002_0000  # major.minor of the register map / protocol
CONFIG_ROM_BASE = 0x0400  # the accelerator's config as JSON bytes, 4 per word, little-endian
CONFIG_ROM_BYTES = 0x0C00
MEM_WINDOW_BASE = 0x8000_0000  # device memory byte ``a`` is at AXI4-Lite address 0x8000_0000 + a

# Bit fields of CTRL and STATUS: name -> (lsb, width). The RTL packs and the host unpacks with these.
CTRL_BITS = {"clear_error": (0, 1), "clear_perf": (1, 1), "start_program": (2, 1)}
STATUS_BITS = {
    "idle": (0, 1),
    "error": (1, 1),
    "running": (2, 1),
    "program_done": (3, 1),
    "queued": (8, 8),
    "free": (16, 8),
    "pending": (24, 8),
}


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
    Reg("MEM_BYTES", 0x001C, "r", "device memory capacity in bytes (at MEM_WINDOW_BASE)"),
    Reg("MEM_MAX_BURST", 0x0020, "r", "longest AXI4 burst the DMA issues, in beats"),
    # control / status
    Reg(
        "CTRL",
        0x1000,
        "w",
        "bit 0: clear ERROR (and the token counters); bit 1: clear performance counters; "
        "bit 2: start the program at PROG_ADDR",
    ),
    Reg(
        "STATUS",
        0x1004,
        "r",
        "bit 0 idle (nothing queued, fetched or running); bit 1 error; bit 2 program running; "
        "bit 3 program done; [15:8] register-queue entries; [23:16] free register-queue entries; "
        "[31:24] entries in the load/compute/store queues",
    ),
    Reg(
        "ERROR",
        0x1008,
        "r",
        "first error since cleared: [7:0] code, [15:8] source (engine index; 0xFC on-chip COPY, 0xFD load DMA, "
        "0xFE store DMA, 0xFF controller)",
    ),
    Reg("RETIRED", 0x100C, "r", "instructions retired (wraps)"),
    Reg("SCRATCH", 0x1010, "rw", "free register for link tests"),
    Reg("ERROR_ADDR", 0x1014, "r", "address the first error names (device memory byte or window word)"),
    Reg("ERROR_PC", 0x1018, "r", "program entry of the first error (0xFFFF: a register-queue instruction)"),
    Reg("PROG_ADDR", 0x1020, "rw", "byte address of the program in device memory"),
    Reg("PROG_COUNT", 0x1024, "rw", "entries in the program (5 words each)"),
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
    Reg("PERF_LOAD_LO", 0x1128, "r", "words the load DMA moved into engine windows"),
    Reg("PERF_LOAD_HI", 0x112C, "r", ""),
    Reg("PERF_STORE_LO", 0x1130, "r", "words the store DMA moved out of engine windows"),
    Reg("PERF_STORE_HI", 0x1134, "r", ""),
    Reg("PERF_DMA_LO", 0x1138, "r", "cycles with a DMA channel busy"),
    Reg("PERF_DMA_HI", 0x113C, "r", ""),
    Reg("PERF_PROGRAM_LO", 0x1140, "r", "cycles with a program running (from its start to its end)"),
    Reg("PERF_PROGRAM_HI", 0x1144, "r", ""),
    Reg("PERF_COPY_LO", 0x1148, "r", "words the on-chip COPY wrote into engine windows"),
    Reg("PERF_COPY_HI", 0x114C, "r", ""),
    # busy cycles of engine i (engines 0..MAX_ENGINES-1; an absent engine's counter reads 0)
    *(
        Reg(f"PERF_E{i}_BUSY_{half}", 0x1180 + 8 * i + 4 * (half == "HI"), "r",
            f"cycles engine {i} was busy" if half == "LO" else "")
        for i in range(8)
        for half in ("LO", "HI")
    ),
    # instruction queue
    Reg("QUEUE", 0x1200, "w", "instruction words; every 4th write enqueues one instruction"),
)
REG = {r.name: r.offset for r in REGISTERS}
PERF_COUNTERS = (
    "BUSY", "MACS", "ACTIVE", "STALL", "CYCLES", "LOAD", "STORE", "DMA", "PROGRAM", "COPY",
)  # fmt: skip
# What ``perf_counters: minimal`` keeps (the others read 0): the clock and the program time.
MINIMAL_PERF_COUNTERS = ("CYCLES", "PROGRAM")
MAX_ENGINES = 8  # engines with a busy counter (PERF_E<i>_BUSY)


def fields(bits: dict, value: int) -> dict:
    """Unpack a register value with one of the bit-field tables above."""
    return {name: (value >> lsb) & ((1 << w) - 1) for name, (lsb, w) in bits.items()}
