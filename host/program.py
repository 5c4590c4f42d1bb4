"""Instruction programs: build on the host, run from device memory.

    prog = dev.program()
    prog.load("systolic", win_addr=0, buf=a_buf, rows=4, row_words=64, mem_stride=128,
              deps=Deps(push_next=True))
    prog.instr(gemm_words, deps=Deps(pop_prev=True, push_next=True))
    prog.store("systolic", win_addr=..., buf=c_buf, ..., deps=Deps(pop_prev=True))
    run = prog.launch()          # one register write starts it; returns at once
    run.wait()                   # raises DeviceError naming the entry, the address and the error

Every LOAD/STORE is checked against the buffer it names before launch: a copy that would leave
its buffer is refused here, with the entry and the address. The device checks device memory
bounds itself (MEM_RANGE) and the watchdog turns a dependency that can never be met into a
DEADLOCK error instead of a hang. Buffers a running program uses cannot be freed or written.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import DeviceError, UsageError
from ..generators.accel.isa import (
    ENTRY_WORDS,
    QUEUE_OF,
    WIDTH_CODES,
    CopyDst,
    CopySrc,
    Deps,
    DmaInstr,
    Op,
    Queue,
)
from ..hdl.fields import pack_struct

__all__ = ["Program", "Run", "Deps"]


class Program:
    """A sequence of entries (token header + instruction) for one device."""

    def __init__(self, dev):
        self.dev = dev
        self.entries: list[tuple[Deps, list[int], str]] = []
        self.buffers: set = set()
        self.temporaries: list = []  # buffers freed when the program has finished
        self.code_addr = 0  # device address of its last launch (0 before one)

    def __len__(self) -> int:
        return len(self.entries)

    def _add(self, words: list[int], deps: Deps | None, what: str) -> int:
        deps = deps or Deps()
        if len(words) != 4:
            raise UsageError(f"{what}: an instruction is 4 words, not {len(words)}")
        for w in words:
            if not isinstance(w, (int, np.integer)) or not 0 <= int(w) <= 0xFFFF_FFFF:
                raise UsageError(f"{what}: instruction words must be 32-bit unsigned, not {w!r}")
        try:
            deps.check(QUEUE_OF(int(words[0]) & 0xFF), f"entry {len(self.entries)} ({what})")
        except ValueError as e:
            raise UsageError(str(e)) from None
        self.entries.append((deps, [int(w) for w in words], what))
        return len(self.entries) - 1

    def instr(self, words, deps: Deps | None = None, what: str = "instruction") -> int:
        """An engine instruction (4 words) on the compute queue; returns its entry index."""
        return self._add(list(words), deps, what)

    def nop(self, deps: Deps | None = None) -> int:
        return self._add([Op.NOP, 0, 0, 0], deps, "NOP")

    def sync(self, deps: Deps | None = None) -> int:
        return self._add([Op.SYNC, 0, 0, 0], deps, "SYNC")

    def _dma(self, op: Op, engine, win_addr, buf, offset, rows, row_words, mem_stride,
             win_stride, deps, check) -> int:  # fmt: skip
        what = f"{op.name} {engine}"
        idx = self.dev._engine_index(engine) if isinstance(engine, str) else int(engine)
        win_stride = row_words if win_stride is None else win_stride
        mem_stride = row_words if mem_stride is None else mem_stride
        if buf is not None:
            buf._check(op.name.lower())
            addr = buf.addr + offset
            span = ((rows - 1) * mem_stride + row_words) * 4 if rows and row_words else 0
            if check and (offset < 0 or offset + span > buf.nbytes):
                raise UsageError(
                    f"entry {len(self.entries)} ({what}): device bytes {addr:#x}..{addr + span:#x} "
                    f"leave {buf!r} ({buf.nbytes} bytes at {buf.addr:#x})"
                )
            self.buffers.add(buf)
        else:
            addr = offset  # a raw device address (tests of the device's own checks)
        try:
            words = pack_struct(DmaInstr, opcode=op, engine=idx, rows=rows, row_words=row_words,
                           mem_stride=mem_stride, win_stride=win_stride, win_addr=win_addr,
                           mem_addr=addr)  # fmt: skip
        except ValueError as e:
            raise UsageError(f"entry {len(self.entries)} ({what}): {e}") from None
        return self._add(words, deps, f"{what} {rows}x{row_words} words, device {addr:#x}, "
                                       f"window word {win_addr:#x}")  # fmt: skip

    def load(self, engine, *, win_addr: int, buf=None, offset: int = 0, rows: int = 1,
             row_words: int, mem_stride: int | None = None, win_stride: int | None = None,
             deps: Deps | None = None, check: bool = True) -> int:  # fmt: skip
        """Copy ``rows`` x ``row_words`` words from ``buf`` (at byte ``offset``, rows
        ``mem_stride`` words apart) into ``engine``'s window from word ``win_addr``."""
        return self._dma(Op.LOAD, engine, win_addr, buf, offset, rows, row_words, mem_stride,
                         win_stride, deps, check)  # fmt: skip

    def store(self, engine, *, win_addr: int, buf=None, offset: int = 0, rows: int = 1,
              row_words: int, mem_stride: int | None = None, win_stride: int | None = None,
              deps: Deps | None = None, check: bool = True) -> int:  # fmt: skip
        """Copy from ``engine``'s window into ``buf`` (the reverse of :meth:`load`)."""
        return self._dma(Op.STORE, engine, win_addr, buf, offset, rows, row_words, mem_stride,
                         win_stride, deps, check)  # fmt: skip

    def copy(self, src, dst, *, rows: int, length: int, mult: int = 1, shift: int = 0,
             scale: float | None = None, causal: bool = False, diag: int = 0,
             deps: Deps | None = None) -> int:  # fmt: skip
        """On-chip COPY of ``rows`` x ``length`` elements from walk ``src`` to walk ``dst``
        (``gatesmith.host.chain``), each ``y = sat(round(x * mult / 2**shift))`` in the
        destination's format (``scale=s`` picks the dyadic ``mult, shift`` closest to ``s``);
        ``causal``: element ``e`` of row ``r`` past ``r + diag`` becomes the destination's
        minimum (a causal mask into the softmax engine).

        Two compute-queue entries (COPY_SRC, COPY): ``deps``' pops go on the first, its pushes on
        the second. Returns the index of the second."""
        from .chain import requant_params

        what = f"COPY {src.engine}.{src.window.name} -> {dst.engine}.{dst.window.name}"
        at = f"entry {len(self.entries)} ({what})"
        if not self.dev.config.copy_unit:
            raise UsageError(f"{at}: this accelerator was built without the on-chip COPY unit "
                             "(copy_unit: false); move the data through device memory "
                             "(store, then load)")  # fmt: skip
        if scale is not None:
            try:
                mult, shift = requant_params(scale)
            except ValueError as e:
                raise UsageError(f"{at}: {e}") from None
        for name, v in (("rows", rows), ("length", length)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"{at}: {name} must be a positive integer, not {v!r}")
        for side, w, access in (("source", src, "r"), ("destination", dst, "w")):
            if access not in w.window.access:
                raise UsageError(f"{at}: the {side} region {w.window.name!r} is not "
                                 f"{'readable' if access == 'r' else 'writable'}")  # fmt: skip
            lo = w.window.offset
            hi = lo + w.window.depth * w.window.stride
            last = w.last_word(rows, length)
            if w.addr < lo or last >= hi:
                raise UsageError(
                    f"{at}: the {side} walk touches window words {w.addr:#x}..{last:#x}, outside "
                    f"{w.engine}'s {w.window.name!r} ({lo:#x}..{hi - 1:#x})"
                )
        common = lambda w: dict(engine=self.dev._engine_index(w.engine),  # noqa: E731
                                width=WIDTH_CODES[w.width], signed=w.signed, addr=w.addr,
                                row_stride=w.row_stride, seg=w.seg, seg_stride=w.seg_stride)  # fmt: skip
        try:
            s_words = pack_struct(CopySrc, opcode=Op.COPY_SRC, mult=mult, shift=shift,
                                  causal=causal, diag=diag, **common(src))  # fmt: skip
            d_words = pack_struct(CopyDst, opcode=Op.COPY, rows=rows, len=length, **common(dst))
        except ValueError as e:
            raise UsageError(f"{at}: {e}") from None
        deps = deps or Deps()
        self._add(s_words, Deps(pop_prev=deps.pop_prev, pop_next=deps.pop_next), f"{what} (source)")
        return self._add(d_words, Deps(push_prev=deps.push_prev, push_next=deps.push_next),
                         f"{what} {rows}x{length}, mult {mult} >> {shift}")  # fmt: skip

    def words(self) -> np.ndarray:
        out = np.zeros((len(self.entries), ENTRY_WORDS), dtype=np.uint32)
        for i, (deps, words, _) in enumerate(self.entries):
            out[i, 0] = deps.word()
            out[i, 1:] = words
        return out.reshape(-1)

    def queues(self) -> dict[str, int]:
        counts = {q.name.lower(): 0 for q in Queue}
        for _, words, _ in self.entries:
            counts[QUEUE_OF(words[0] & 0xFF).name.lower()] += 1
        return counts

    def predict(self) -> int | None:
        """Predicted PERF_PROGRAM cycles (:func:`gatesmith.host.timing.predict_program`)."""
        from .timing import predict_program

        return predict_program(self)

    def launch(self) -> Run:
        """Write the program to device memory and start it; returns at once."""
        return self.dev.launch(self)

    def run(self, timeout: float | None = None) -> Run:
        r = self.launch()
        r.wait(timeout)
        return r


class Run:
    """A launched program: :meth:`wait` until it finishes (or raise its error)."""

    def __init__(self, dev, prog: Program, code_buf):
        self.dev, self.program, self._code = dev, prog, code_buf
        self.done = False
        self.wall_s: float | None = None
        self._t0 = time.monotonic()

    def poll(self) -> bool:
        """True when the program has finished (raises DeviceError if it stopped on an error)."""
        if self.done:
            return True
        st = self.dev.status()
        if st["running"]:
            return False
        self._finish()
        if st["error"]:
            self.dev._raise_program_error(self.program)
        return True

    def wait(self, timeout: float | None = None) -> None:
        """Poll until the program has finished. The device's ``while_waiting`` callable (if
        set: ``host.overlap`` sets it to run a host stage of another request) is called
        before each poll, so host work runs while the program does; it returns True when it
        did some work (then no sleep before the next poll)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0
        while True:
            hook = getattr(self.dev, "while_waiting", None)
            worked = hook is not None and hook()
            if self.poll():
                return
            if deadline is not None and time.monotonic() > deadline:
                raise DeviceError(f"the program did not finish within {timeout} s")
            if not worked:
                time.sleep(delay)
                delay = min(0.005, delay + 0.0002)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.wall_s = time.monotonic() - self._t0
        for b in self.program.buffers:
            b._users -= 1
        self._code._users -= 1
        self._code.free()
        self.dev._runs.discard(self)
        for b in self.program.temporaries:
            if not b.freed and not b.busy:
                b.free()
