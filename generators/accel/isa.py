"""The controller's instructions and the program entry format (contract v2), described once.

The layouts are ``amaranth.lib.data`` Structs: the RTL decodes with them (``DmaInstr(value)``)
and the host encodes with ``hdl.fields.pack_struct``, which range-checks every field.

A *program* in device memory is a sequence of entries of :data:`ENTRY_WORDS` 32-bit words: one
:class:`EntryHeader` word (dependency tokens) followed by the 4 words of a 128-bit instruction.
Each instruction goes to one of three queues by its opcode: LOAD to the load queue, STORE to the
store queue, everything else (engine instructions, NOP, SYNC) to the compute queue. The queues
run concurrently and in order; the tokens (VTA's push/pop bits) say what may overlap:

=========  ========================================  ========================================
queue      pop (wait for and take a token)           push (give a token when it retires)
=========  ========================================  ========================================
load       ``pop_next``: compute -> load             ``push_next``: load -> compute
compute    ``pop_prev``: load -> compute,            ``push_prev``: compute -> load,
           ``pop_next``: store -> compute            ``push_next``: compute -> store
store      ``pop_prev``: compute -> store            ``push_prev``: store -> compute
=========  ========================================  ========================================

LOAD copies ``rows`` rows of ``row_words`` 32-bit words from device memory (byte address
``mem_addr``, rows ``mem_stride`` words apart) into engine ``engine``'s window (word address
``win_addr``, rows ``win_stride`` words apart); STORE copies the other way.
"""

import enum

from amaranth.lib import data

__all__ = [
    "Op",
    "DmaInstr",
    "CopySrc",
    "CopyDst",
    "WIDTH_CODES",
    "EntryHeader",
    "ENTRY_WORDS",
    "Deps",
    "QUEUE_OF",
    "Queue",
]

ENTRY_WORDS = 5


class Op(enum.IntEnum):
    """Opcodes the controller owns (engines own theirs, see each engine's package)."""

    NOP = 0x00
    SYNC = 0x01  # waits until the load and store queues are empty and the DMA is idle
    LOAD = 0x02  # device memory -> engine window
    STORE = 0x03  # engine window -> device memory
    COPY_SRC = 0x04  # the source walk and requantisation of the next COPY (latched, retires at once)
    COPY = 0x05  # window -> window on chip, through the requantiser (see ``copy.py``)


class Queue(enum.IntEnum):
    LOAD = 0
    COMPUTE = 1
    STORE = 2


def QUEUE_OF(opcode: int) -> "Queue":  # noqa: N802 - reads as a table
    return {Op.LOAD: Queue.LOAD, Op.STORE: Queue.STORE}.get(opcode, Queue.COMPUTE)


class DmaInstr(data.Struct):
    opcode: 8
    engine: 4  # engine index (window order)
    rows: 16
    row_words: 12
    mem_stride: 18  # words between row starts in device memory
    win_stride: 16  # words between row starts in the window
    win_addr: 22  # word address in the engine's window
    mem_addr: 32  # byte address in device memory, 4-byte aligned


# COPY is two compute-queue entries: COPY_SRC latches the source walk and the requantisation,
# COPY gives the destination walk and the shape and starts it (see ``copy.py``). Widths are
# codes: 0 = 8 bits, 1 = 16, 2 = 32 (elements packed little-endian, 32 / width per word).
class CopySrc(data.Struct):
    opcode: 8
    engine: 4
    width: 2
    signed: 1
    reserved: 1
    addr: 22  # window word of row 0, segment 0
    row_stride: 22  # words between rows' first segments
    seg: 13  # elements per segment (a segment starts on a word; its words are consecutive)
    seg_stride: 22  # words between a row's segments
    mult: 16  # y = sat(round_half_up(x * mult / 2**shift)) in the destination format
    shift: 6
    causal: 1  # element e of row r becomes the destination minimum when e > r + diag
    diag: 10  # (a causal attention mask: the softmax engine reads that minimum as masked)


class CopyDst(data.Struct):
    opcode: 8
    engine: 4
    width: 2
    signed: 1
    reserved: 1
    addr: 22
    row_stride: 22
    seg: 13
    seg_stride: 22
    rows: 16
    len: 13  # elements per row
    reserved2: 4


WIDTH_CODES = {8: 0, 16: 1, 32: 2}


class EntryHeader(data.Struct):
    pop_prev: 1
    pop_next: 1
    push_prev: 1
    push_next: 1
    reserved: 28


class Deps:
    """Token bits of one program entry, named as in the table of the module docstring."""

    __slots__ = ("pop_prev", "pop_next", "push_prev", "push_next")

    def __init__(self, *, pop_prev=False, pop_next=False, push_prev=False, push_next=False):
        self.pop_prev, self.pop_next = bool(pop_prev), bool(pop_next)
        self.push_prev, self.push_next = bool(push_prev), bool(push_next)

    def word(self) -> int:
        return self.pop_prev | self.pop_next << 1 | self.push_prev << 2 | self.push_next << 3

    def check(self, queue: Queue, what: str) -> None:
        bad = []
        if queue == Queue.LOAD and (self.pop_prev or self.push_prev):
            bad.append("a load has no previous queue (use pop_next / push_next)")
        if queue == Queue.STORE and (self.pop_next or self.push_next):
            bad.append("a store has no next queue (use pop_prev / push_prev)")
        if bad:
            raise ValueError(f"{what}: {'; '.join(bad)}")
