"""The host end of the host link: frames out, answers in, and recovery from every link fault.

A :class:`Link` owns a :class:`~gatesmith.host.transport.Transport`, the sequence numbers, the
response parser, retries, timeouts and statistics; :class:`~gatesmith.host.device.Device` sends
all its register and memory traffic through :meth:`Link.transact`.

Contract:

* **Every call either returns the device's exact answers or raises** :class:`DeviceError`; after
  a fault (a lost, corrupted, duplicated or inserted byte, a timeout, an interrupted call) the
  link drains and resynchronises, so the next call works.
* **Idempotent frames** (reads, window and register writes, pings) are pipelined, up to
  ``IN_FLIGHT`` at a time. After a fault the link resynchronises and re-sends, in order, every
  frame from the first one whose answer it has not checked (go-back-N: the device ends in the
  state in-order execution gives), at most ``retries`` times per frame.
* **Frames that must run exactly once** (writes to the instruction queue, ``NON_IDEMPOTENT``) go
  out alone with the ``ONCE`` flag. If the answer is lost, the link re-sends the same frame with
  the same sequence number: the device (``hdl/hostlink.py``) answers a frame it already executed
  from its record (``REPLAYED``) without executing it again. The host never guesses: if no
  answer comes within the retries, the call raises saying the outcome is unknown.
* **Timeouts** scale with the bytes in flight and the transport's rate: ``latency + bytes /
  rate`` seconds (``Transport.rate`` in bytes/s, ``Transport.latency`` in s), doubled on every
  retry and never above ``timeout``.
* **Device resets** are detected: the link opens a session with a ONCE PING, after which every
  answer carries the SESSION flag until the device is reset; after each resynchronisation the
  identity (MAGIC, VERSION, CONFIG_HASH) is read again. Either change raises
  :class:`DeviceResetError`, on that call and every later one (the device's memories and queue
  are gone: open it again).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..errors import DeviceError, DeviceResetError, UsageError
from ..generators.accel.regs import REG
from .protocol import STATUS_TEXT, Cmd, Response, ResponseParser, Status, encode_request
from .transport import Transport

__all__ = ["Link", "NON_IDEMPOTENT", "IN_FLIGHT", "check_span", "words_u32", "reg_offset"]

IN_FLIGHT = 8  # idempotent request frames sent before waiting for their answers
# registers whose writes must run exactly once: the instruction queue, and CTRL (it starts a
# program and clears errors: a duplicate could start a finished program again)
NON_IDEMPOTENT = frozenset({REG["QUEUE"], REG["CTRL"]})
_IDENTITY = (REG["MAGIC"], 3)  # MAGIC, VERSION, CONFIG_HASH
_RSP_BYTES = 7  # an answer without payload
_REQ_BYTES = 10  # a request without payload


class _Fault(Exception):
    """A link fault (lost/corrupted/unexpected bytes, timeout): resynchronise and retry."""


@dataclass
class _Frame:
    cmd: int
    addr: int
    count: int
    payload: bytes
    once: bool
    seq: int = -1
    data: bytes = b""

    @property
    def words_back(self) -> int:
        return self.count if self.cmd == Cmd.READ else 0

    @property
    def what(self) -> str:
        name = {Cmd.PING: "PING", Cmd.WRITE: "WRITE", Cmd.READ: "READ",
                Cmd.WRITE_FIXED: "WRITE_FIXED"}.get(self.cmd, f"cmd {self.cmd:#x}")  # fmt: skip
        return f"{name} of {self.count} words at {self.addr:#x}"


class Link:
    """Host-link frames over ``transport``, with recovery (see the module docstring).

    ``retries``: re-sends allowed per frame after a fault. ``timeout``: the most seconds to wait
    for one answer, whatever the transfer size. ``max_words`` is read from the device by
    :meth:`open`.
    """

    def __init__(self, transport: Transport, *, timeout: float = 60.0, retries: int = 3,
                 max_words: int = 16):  # fmt: skip
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise UsageError(f"retries must be an integer >= 0, not {retries!r}")
        if not timeout > 0:
            raise UsageError(f"timeout must be > 0 seconds, not {timeout!r}")
        self.transport = transport
        self.timeout = float(timeout)
        self.retries = retries
        self.rate = float(getattr(transport, "rate", 50_000.0))  # bytes/s
        self.latency = float(getattr(transport, "latency", 0.5))  # s
        self.max_words = max_words
        self.stats = {"bytes_sent": 0, "bytes_received": 0, "frames": 0, "faults": 0,
                      "retries": 0, "resyncs": 0, "replayed": 0}  # fmt: skip
        self._parser = ResponseParser(max_words)
        self._ready: deque[Response | str] = deque()  # parsed, not yet consumed
        self._seq = 0
        self._once_avoid: set[int] = set()  # sequence numbers the device's ONCE record may hold
        self._session = False
        self._identity: tuple[int, ...] | None = None
        self._dirty: str | None = None  # why the next call must resynchronise first
        self._quiesce = False  # an abandoned call may have left instructions running
        self._reset: str | None = None  # sticky: the device was reset

    # ---- session --------------------------------------------------------------------------------
    def open(self) -> None:
        """Resynchronise, open a session (a ONCE PING) and record the device's identity."""
        self._resync("opening the link")
        mw = self._run([_Frame(Cmd.READ, REG["LINK_MAX_WORDS"], 1, b"", False)])[0]
        n = int.from_bytes(mw.payload, "little")
        if n in (16, 32, 64, 128, 256, 512, 1024):
            self.max_words = self._parser.max_words = n
        self._run([_Frame(Cmd.PING, 0, 0, b"", True)])
        self._session = True
        self._identity = self._read_identity()

    def transact(self, requests: list[tuple[int, int, int, bytes]]) -> list[Response]:
        """Send (cmd, addr, count, payload) frames; return their answers, every one checked."""
        if self._reset:
            raise DeviceResetError(self._reset)
        frames = [self._frame(*r) for r in requests]
        try:
            if self._dirty:
                self._resync(self._dirty)
            if self._quiesce:
                self._wait_idle()
            return self._run(frames)
        except KeyboardInterrupt:
            self._dirty = "an interrupted call"
            self._quiesce = True
            raise
        except DeviceError as e:
            if not isinstance(e, DeviceResetError):
                self._dirty = self._dirty or "an earlier error"
            raise

    def _frame(self, cmd: int, addr: int, count: int, payload: bytes) -> _Frame:
        once = cmd in (Cmd.WRITE, Cmd.WRITE_FIXED) and any(
            addr <= r < addr + (4 if cmd == Cmd.WRITE_FIXED else 4 * count) for r in NON_IDEMPOTENT
        )
        return _Frame(cmd, addr, count, payload, once)

    # ---- frames ---------------------------------------------------------------------------------
    def _run(self, frames: list[_Frame]) -> list[Response]:
        out: list[Response] = []
        i = 0
        while i < len(frames):
            if frames[i].once:
                out.append(self._run_once(frames[i]))
                i += 1
                continue
            j = i
            while j < len(frames) and not frames[j].once:
                j += 1
            out += self._run_group(frames[i:j])
            i = j
        return out

    def _run_group(self, frames: list[_Frame]) -> list[Response]:
        """Idempotent frames, pipelined; go-back-N from the first unchecked one after a fault."""
        out: list[Response] = []
        tries = 0  # faults since the last answer was checked
        while len(out) < len(frames):
            start = len(out)
            try:
                self._pipeline(frames, out, tries)
            except _Fault as fault:
                self.stats["faults"] += 1
                tries = 1 if len(out) > start else tries + 1
                if tries > self.retries:
                    self._dirty = "a failed call"
                    raise DeviceError(
                        f"host link: {fault} ({frames[len(out)].what}; gave up after "
                        f"{self.retries} retries)"
                    ) from None
                self.stats["retries"] += 1
                self._resync(str(fault))
        return out

    def _pipeline(self, frames: list[_Frame], out: list[Response], attempt: int) -> None:
        pending: deque[_Frame] = deque()
        nxt = len(out)
        while len(out) < len(frames):
            while nxt < len(frames) and len(pending) < IN_FLIGHT:
                f = frames[nxt]
                f.seq = self._next_seq()
                f.data = encode_request(f.seq, f.cmd, f.addr, f.count, f.payload)
                self._send(f.data)
                pending.append(f)
                nxt += 1
            f = pending[0]
            r = self._answer(f, pending, attempt)
            self._check(f, r)
            pending.popleft()
            out.append(r)

    def _run_once(self, f: _Frame) -> Response:
        """A frame that must execute exactly once: alone, re-sent with the same seq if need be."""
        f.seq = self._next_seq(once=True)
        f.data = encode_request(f.seq, f.cmd | Cmd.ONCE, f.addr, f.count, f.payload)
        self._once_avoid.add(f.seq)  # from now on the device's record may hold it
        last = "no answer"
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retries"] += 1
                self._resync(last)
            self._send(f.data)
            try:
                r = self._answer(f, deque([f]), attempt)
            except _Fault as fault:
                self.stats["faults"] += 1
                last = str(fault)
                continue
            if r.status == Status.CRC_ERROR:  # the request arrived damaged: it did not run
                self.stats["faults"] += 1
                last = f"the device saw a CRC error in frame {f.seq}"
                continue
            self._once_avoid = {f.seq}  # now known: the record holds this frame
            if r.replayed:
                self.stats["replayed"] += 1
            self._check(f, r)
            return r
        self._dirty = "a failed call"
        self._quiesce = True
        raise DeviceError(
            f"host link: {last}; the outcome of the instruction-queue write ({f.what}, frame "
            f"{f.seq}) is unknown after {self.retries} retries: the device did not answer"
        )

    def _check(self, f: _Frame, r: Response) -> None:
        """A well-formed answer to ``f``: raise on a device error, _Fault on a link one."""
        if self._session and not r.session:
            self._device_was_reset("its answers lost the session flag")
        if r.status == Status.CRC_ERROR:
            raise _Fault(f"the device saw a CRC error in frame {f.seq}")
        if r.status != Status.OK:
            text = STATUS_TEXT.get(r.status, f"status {r.status}")
            raise DeviceError(f"host link: {text} (frame {f.seq}: {f.what})")
        if r.count != f.count and f.cmd != Cmd.PING:
            raise _Fault(f"answer {f.seq} has count {r.count}, not {f.count}")

    def _answer(self, f: _Frame, pending: deque[_Frame], attempt: int) -> Response:
        """The next answer, which must be ``f``'s; raises _Fault on anything else or a timeout."""
        reads = {p.seq: p.words_back for p in pending}
        in_flight = sum(len(p.data) + _RSP_BYTES + 4 * p.words_back for p in pending)
        wait = self._wait_for(in_flight, attempt)
        deadline = time.monotonic() + wait
        while True:
            if not self._ready:
                self._ready.extend(self._parser.feed(self._recv(deadline), reads))
            if self._ready:
                r = self._ready.popleft()
                if isinstance(r, str):
                    raise _Fault(r)
                if r.seq != f.seq:
                    raise _Fault(f"expected answer {f.seq}, got {r.seq}")
                return r
            if time.monotonic() >= deadline:
                raise _Fault(f"no answer within {wait:.2f} s (frame {f.seq})")

    def _wait_for(self, nbytes: int, retry: int) -> float:
        """Seconds to wait for an answer with ``nbytes`` on the wire: scaled, doubled per retry."""
        base = self.latency + nbytes / self.rate
        return min(self.timeout, base * 2 ** min(retry, 8))

    # ---- recovery -------------------------------------------------------------------------------
    def _resync(self, why: str) -> None:
        """Flush a partial frame in the device, drain every stale answer, check with a PING (and
        the identity, once a session is open)."""
        self.stats["resyncs"] += 1
        # zeros never contain a start byte: they complete a partial request (its CRC fails) and
        # are ignored between frames
        flush = b"\0" * (4 * self.max_words + _REQ_BYTES)
        for attempt in range(self.retries + 1):
            self._parser.reset()
            self._ready.clear()
            ping, ident = self._next_seq(), self._next_seq()
            data = flush + encode_request(ping, Cmd.PING, 0, 0)
            if self._identity is not None:
                data += encode_request(ident, Cmd.READ, _IDENTITY[0], _IDENTITY[1])
            self._send(data)
            deadline = time.monotonic() + self._wait_for(len(data) + 64, attempt)
            reads = {ping: 0, ident: _IDENTITY[1]}
            if self._await(ping, reads, deadline) is None:
                continue
            if self._identity is not None:
                r = self._await(ident, reads, deadline)
                if r is None:
                    continue
                if _words(r) != self._identity:
                    self._device_was_reset(
                        f"its identity changed from {_hex(self._identity)} to {_hex(_words(r))}"
                    )
            self._dirty = None
            return
        self._dirty = f"the link was lost after {why}"
        raise DeviceError(
            f"host link: the device does not answer (after {why}; {self.retries + 1} "
            "attempts to resynchronise)"
        )

    def _await(self, seq: int, reads: dict[int, int], deadline: float) -> Response | None:
        """Skip stale bytes and answers until the good answer ``seq``; None at the deadline."""
        while True:
            if not self._ready:
                self._ready.extend(self._parser.feed(self._recv(deadline), reads))
            while self._ready:
                r = self._ready.popleft()
                if isinstance(r, Response) and r.seq == seq and r.status == Status.OK:
                    if self._session and not r.session:
                        self._device_was_reset("its answers lost the session flag")
                    if len(r.payload) == 4 * reads[seq]:
                        return r
            if time.monotonic() >= deadline:
                return None

    def _read_identity(self) -> tuple[int, ...]:
        return _words(self._run([_Frame(Cmd.READ, _IDENTITY[0], _IDENTITY[1], b"", False)])[0])

    def _wait_idle(self) -> None:
        """After an abandoned call: let instructions it left in the queue finish."""
        deadline = time.monotonic() + self.timeout
        while True:
            r = self._run([_Frame(Cmd.READ, REG["STATUS"], 1, b"", False)])[0]
            if int.from_bytes(r.payload, "little") & 1:
                self._quiesce = False
                return
            if time.monotonic() > deadline:
                raise DeviceError(
                    f"the accelerator is still busy {self.timeout:.0f} s after an abandoned call"
                )
            time.sleep(0.001)

    def _device_was_reset(self, how: str) -> None:
        self._reset = (
            f"the device was reset ({how}): its memories and instruction queue are lost; "
            "open it again"
        )
        raise DeviceResetError(self._reset)

    # ---- bytes ----------------------------------------------------------------------------------
    def _next_seq(self, *, once: bool = False) -> int:
        while True:
            seq = self._seq
            self._seq = (self._seq + 1) & 0xFF
            if not once or seq not in self._once_avoid:
                return seq

    def _send(self, data: bytes) -> None:
        self.transport.send(data)
        self.stats["bytes_sent"] += len(data)
        self.stats["frames"] += 1

    def _recv(self, deadline: float) -> bytes:
        left = max(0.0, deadline - time.monotonic())
        data = self.transport.recv(min(left, 0.25))
        self.stats["bytes_received"] += len(data)
        return data


def _words(r: Response) -> tuple[int, ...]:
    return tuple(int(x) for x in np.frombuffer(r.payload, dtype="<u4"))


def _hex(words: tuple[int, ...]) -> str:
    return "/".join(f"{w:#010x}" for w in words)


# ---- argument checks for the Device primitives ---------------------------------------------------
def check_span(addr, n_words, *, what: str = "address") -> None:
    """Raise UsageError unless ``addr`` .. ``addr + 4 * n_words`` is a 32-bit byte range."""
    for name, v in ((what, addr), ("the word count", n_words)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise UsageError(f"{name} must be an integer, not {type(v).__name__}")
    if n_words < 0:
        raise UsageError(f"the word count must be >= 0, not {n_words}")
    if not 0 <= addr <= 0xFFFF_FFFF or addr + 4 * max(n_words - 1, 0) > 0xFFFF_FFFF:
        raise UsageError(
            f"{what} {addr:#x} with {n_words} words is outside the 32-bit address space"
        )


def words_u32(words) -> np.ndarray:
    """``words`` as a flat uint32 array; raises UsageError for non-integers or values outside
    0..2**32-1 (nothing is truncated or wrapped)."""
    a = np.asarray(words)
    if a.dtype.kind == "O":  # Python ints too large for int64, or mixed objects
        vals = list(a.reshape(-1))
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise UsageError(f"words must be integers, not {type(v).__name__}")
        if vals:
            _check_range(min(vals), max(vals))
        return np.array(vals, dtype=np.uint32)
    if a.dtype.kind not in "iu":
        raise UsageError(f"words must be integers, not {a.dtype}")
    a = a.reshape(-1)
    if a.size:
        _check_range(int(a.min()), int(a.max()))
    return np.ascontiguousarray(a.astype(np.uint32))


def _check_range(lo: int, hi: int) -> None:
    if lo < 0 or hi > 0xFFFF_FFFF:
        raise UsageError(f"words must be in 0..2**32-1, not {lo if lo < 0 else hi}")


def reg_offset(name: str) -> int:
    """The byte offset of register ``name``; raises UsageError naming the valid ones."""
    try:
        return REG[name]
    except (KeyError, TypeError):
        raise UsageError(
            f"no register named {name!r}; the registers are {', '.join(REG)}"
        ) from None

