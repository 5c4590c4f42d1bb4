"""A seeded fault-injecting transport: a proxy around a real transport (the simulated board's
socket) that corrupts, drops, duplicates, inserts or delays bytes in both directions.

Used by tests/test_link_faults.py and benchmarks/link_faults.py.
"""

from __future__ import annotations

import random
import time

from gatesmith.host.transport import Transport

KINDS = ("corrupt", "drop", "duplicate", "insert", "delay")


class FaultyTransport(Transport):
    """``inner`` with faults of ``kind`` at ``rate`` per byte (``fault_rate``), in
    ``directions`` ("tx": host to device, "rx": device to host). ``enabled`` switches the
    faults; ``injected`` counts them. A delay holds the byte stream for a random time up to ``max_delay`` seconds."""

    def __init__(self, inner: Transport, *, kind: str, rate: float, seed: int,
                 directions=("tx", "rx"), max_delay: float = 0.3):  # fmt: skip
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        self.inner, self.kind, self.fault_rate = inner, kind, rate
        self.rng = random.Random(seed)
        self.directions = set(directions)
        self.max_delay = max_delay
        self.enabled = False
        self.injected = 0
        self.rate, self.latency = inner.rate, inner.latency  # the link sizes its timeouts by these
        self._held = bytearray()  # device-to-host bytes delayed until _release
        self._release = 0.0

    def _mangle(self, data: bytes, direction: str) -> tuple[bytes, float]:
        """(bytes after the faults, seconds to delay them)."""
        if not self.enabled or direction not in self.directions:
            return data, 0.0
        out = bytearray()
        delay = 0.0
        for b in data:
            if self.rng.random() >= self.fault_rate:
                out.append(b)
                continue
            self.injected += 1
            if self.kind == "corrupt":
                out.append(b ^ self.rng.randrange(1, 256))
            elif self.kind == "duplicate":
                out += bytes((b, b))
            elif self.kind == "insert":
                out += bytes((b, self.rng.randrange(256)))
            elif self.kind == "delay":
                delay += self.rng.uniform(0, self.max_delay)
                out.append(b)
            # drop: nothing
        return bytes(out), delay

    def send(self, data: bytes) -> None:
        data, delay = self._mangle(data, "tx")
        if delay:
            time.sleep(delay)
        if data:
            self.inner.send(data)

    def recv(self, timeout: float) -> bytes:
        now = time.monotonic()
        if self._held and now < self._release:
            time.sleep(min(timeout, self._release - now))
            if time.monotonic() < self._release:
                return b""
        if self._held:
            out = bytes(self._held)
            self._held.clear()
            return out
        data, delay = self._mangle(self.inner.recv(timeout), "rx")
        if delay:
            self._held += data
            self._release = time.monotonic() + delay
            return b""
        return data

    def close(self) -> None:
        self.inner.close()
