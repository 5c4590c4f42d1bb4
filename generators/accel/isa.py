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
