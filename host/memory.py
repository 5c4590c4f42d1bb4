"""Device memory from the host: an allocator per Device and the buffers it hands out.

    buf = dev.alloc((256, 256), torch.int8)      # a Buffer in device memory
    buf.write(t); t2 = buf.read(); buf.free()     # or: with dev.alloc(...) as buf: ...
    v = buf.view()                                # "sim": a zero-copy torch view of the pages

On the simulated board device memory is shared with the harness (a file in /dev/shm mapped by
both processes), so ``write``/``read`` are one memcpy and ``view`` is the memory itself, like
PYNQ's ``allocate``. Over "serial" the same buffers are reached through the host link's window
onto device memory (``MEM_WINDOW_BASE``): slow, but the same results.

A buffer that a running program uses can be neither freed nor written; running out of memory
raises :class:`~gatesmith.errors.DeviceError` listing what is allocated.
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from ..errors import DeviceError, UsageError

__all__ = ["Allocator", "Buffer", "ALIGN"]

ALIGN = 64  # bytes; every buffer starts on a 64-byte boundary (bursts stay whole words)

_NP = {
    torch.int8: np.int8,
    torch.uint8: np.uint8,
    torch.int16: np.int16,
    torch.int32: np.int32,
    torch.int64: np.int64,
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.uint32: np.uint32,
}


class Allocator:
    """First-fit allocator over ``[0, capacity)`` with coalescing frees (no module state)."""

    def __init__(self, capacity: int, *, align: int = ALIGN):
        if capacity <= 0 or align <= 0 or align & (align - 1):
            raise ValueError("capacity must be positive and align a power of two")
        self.capacity, self.align = capacity, align
        self._free: list[tuple[int, int]] = [(0, capacity)]
        self._used: dict[int, tuple[int, str]] = {}  # addr -> (size, label)

    def alloc(self, nbytes: int, label: str = "") -> int:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise UsageError(f"an allocation must be a positive number of bytes, not {nbytes!r}")
        size = -(-nbytes // self.align) * self.align
        for i, (addr, span) in enumerate(self._free):
            if span >= size:
                if span == size:
                    del self._free[i]
                else:
                    self._free[i] = (addr + size, span - size)
                self._used[addr] = (size, label)
                return addr
        raise DeviceError(
            f"device memory is full: {nbytes} bytes requested, {self.free_bytes()} free in "
            f"{len(self._free)} pieces (largest {self.largest_free()}); allocated: "
            + self.describe()
        )

    def free(self, addr: int) -> None:
        if addr not in self._used:
            raise UsageError(f"device address {addr:#x} is not an allocated buffer")
        size, _ = self._used.pop(addr)
        i = bisect.bisect(self._free, (addr, 0))
        self._free.insert(i, (addr, size))
        # coalesce with the neighbours
        if i + 1 < len(self._free) and addr + size == self._free[i + 1][0]:
            self._free[i] = (addr, size + self._free[i + 1][1])
            del self._free[i + 1]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == addr:
            a0, s0 = self._free[i - 1]
            self._free[i - 1] = (a0, s0 + self._free[i][1])
            del self._free[i]

    def free_bytes(self) -> int:
        return sum(s for _, s in self._free)

    def largest_free(self) -> int:
        return max((s for _, s in self._free), default=0)

    def allocations(self) -> list[tuple[int, int, str]]:
        return sorted((a, s, lbl) for a, (s, lbl) in self._used.items())

    def describe(self) -> str:
        items = self.allocations()
        if not items:
            return "nothing"
        return ", ".join(f"{lbl or 'buffer'} {s} B at {a:#x}" for a, s, lbl in items)


class Buffer:
    """A tensor-shaped region of device memory (see the module docstring)."""

    def __init__(self, dev, addr: int, shape: tuple, dtype: torch.dtype, nbytes: int, label: str):
        self.dev, self.addr, self.shape, self.dtype = dev, addr, tuple(shape), dtype
        self.nbytes, self.label = nbytes, label
        self.layout: object = None  # set by engine drivers that keep an operand packed
        self._freed = False
        self._users = 0  # running programs that use this buffer

    def __repr__(self):
        state = "freed" if self._freed else f"at {self.addr:#x}"
        return f"Buffer({self.label or 'buffer'}, {self.shape}, {self.dtype}, {state})"

    def __enter__(self) -> Buffer:
        return self

    def __exit__(self, *exc) -> None:
        if not self._freed:
            self.free()

    # ---- state -------------------------------------------------------------------------------
    @property
    def freed(self) -> bool:
        return self._freed

    @property
    def busy(self) -> bool:
        return self._users > 0

    def _check(self, what: str) -> None:
        if self._freed:
            raise UsageError(f"cannot {what} {self!r}: it was freed")

    def _check_idle(self, what: str) -> None:
        self._check(what)
        if self._users:
            raise UsageError(
                f"cannot {what} {self!r}: a running program uses it (wait for the program first)"
            )

    def free(self) -> None:
        self._check_idle("free")
        self.dev.memory.free(self.addr)
        self._freed = True

    # ---- data --------------------------------------------------------------------------------
    def write(self, t) -> None:
        """Copy a tensor (or numpy array) of this buffer's shape and dtype into device memory."""
        self._check_idle("write")
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(t)
        if not isinstance(t, torch.Tensor):
            raise UsageError(f"write takes a torch tensor, not {type(t).__name__}")
        if tuple(t.shape) != self.shape or t.dtype != self.dtype:
            raise UsageError(
                f"write needs a {self.dtype} tensor of shape {self.shape}, "
                f"not {t.dtype} {tuple(t.shape)}"
            )
        raw = t.detach().cpu().contiguous().numpy().view(np.uint8).reshape(-1)
        self.dev._mem_write(self.addr, raw)

    def write_raw(self, data: np.ndarray, offset: int = 0) -> None:
        """Copy raw bytes (or 32-bit words) at ``offset`` bytes into the buffer."""
        self._check_idle("write")
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        if offset < 0 or offset + raw.size > self.nbytes:
            raise UsageError(f"{raw.size} bytes at offset {offset} do not fit {self!r}")
        self.dev._mem_write(self.addr + offset, raw)

    def read(self) -> torch.Tensor:
        """A copy of the buffer's contents as a torch tensor."""
        self._check("read")
        if hasattr(self.layout, "unpack_from"):
            return self.layout.unpack_from(self)  # an engine's packed result: the logical tensor
        raw = self.dev._mem_read(self.addr, self.nbytes)
        return torch.from_numpy(raw.view(_NP[self.dtype]).reshape(self.shape).copy())

    def read_raw(self, nbytes: int | None = None, offset: int = 0) -> np.ndarray:
        self._check("read")
        n = self.nbytes - offset if nbytes is None else nbytes
        return self.dev._mem_read(self.addr + offset, n).copy()

    def view(self) -> torch.Tensor:
        """A zero-copy torch view of the buffer (the simulated board's shared memory only)."""
        self._check("view")
        mem = self.dev._shared_memory()
        if mem is None:
            raise UsageError("view() needs shared device memory (the 'sim' transport)")
        arr = mem[self.addr : self.addr + self.nbytes].view(_NP[self.dtype]).reshape(self.shape)
        return torch.from_numpy(np.asarray(arr))


def element_bytes(dtype: torch.dtype) -> int:
    if dtype not in _NP:
        raise UsageError(
            f"dtype must be one of {', '.join(str(d) for d in _NP)}, not {dtype}"
        )
    return np.dtype(_NP[dtype]).itemsize
