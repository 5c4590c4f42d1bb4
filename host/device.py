"""The host API: a Device speaks the host-link protocol over a Transport.

    import gatesmith.host
    with gatesmith.host.open("sim", config="accel.yaml") as dev:
        c = dev.matmul(a, b)                  # torch int tensors -> torch int32

``open("sim", config=...)`` builds (or reuses) the Verilator model of the accelerator and talks
to it over a socket; ``open("serial", port="/dev/ttyUSB0")`` talks to a board over its UART with
the same protocol and discovers the configuration from the device's identity block.

Primitive operations (what engine drivers build on): :meth:`Device.write`, :meth:`Device.read`
(bulk 32-bit words at a byte address), :meth:`Device.execute` (queue instructions),
:meth:`Device.wait` (until idle; raises :class:`DeviceError` on an accelerator error),
:meth:`Device.window_base` and :meth:`Device.perf`. The API raises on a timeout or a bad frame;
it never returns made-up data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import numpy as np

from ..config import AccelConfig, load_config
from ..errors import ConfigError, DeviceError, UsageError
from ..generators.engine import ENGINE_WINDOW_BASE, ENGINE_WINDOW_SIZE, INSTR_WORDS, ErrorCode
from ..generators.accel.regs import CONFIG_ROM_BASE, MAGIC, PERF_COUNTERS, REG
from .link import Link, check_span, reg_offset, words_u32
from .protocol import Cmd, Response
from .transport import SerialTransport, SocketTransport, Transport

__all__ = ["Device", "open", "TRANSPORTS"]

TRANSPORTS = ("sim", "serial")


class Device:
    """An accelerator behind a transport. Use :func:`open` to make one."""

    def __init__(self, transport: Transport, config: AccelConfig | None = None, *,
                 timeout: float = 60.0, max_words: int | None = None, board=None,
                 retries: int = 3):  # fmt: skip
        self.transport = transport
        self.timeout = timeout
        self._board = board
        self._closed = False
        # the link (host/link.py): sequence numbers, parser, retries, timeouts (scaled to the
        # transfer, ``timeout`` at most), recovery, reset detection and the stats
        self._link = Link(transport, timeout=timeout, retries=retries, max_words=max_words or 16)
        self._link.open()
        self._max_words = self._link.max_words
        self.stats = self._link.stats
        magic = self.read_reg("MAGIC")
        if magic != MAGIC:
            raise DeviceError(f"no gatesmith accelerator answered (magic {magic:#010x})")
        self._max_words = self.read_reg("LINK_MAX_WORDS")
        found = self._read_config()
        if config is not None and config.to_json() != found.to_json():
            raise ConfigError(
                "the device was generated from another configuration than the one given "
                f"(device: {found.to_json()}, given: {config.to_json()})"
            )
        self.config = found

    # ---- session ----------------------------------------------------------------------------
    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.transport.close()
        if self._board is not None:
            self._board.close()

    @property
    def sim_cycles(self) -> int | None:
        """Cycles the simulated board ran (known after close)."""
        return getattr(self._board, "cycles", None)

    # ---- link ---------------------------------------------------------------------------------
    def _transact(self, requests: list[tuple[int, int, int, bytes]]) -> list[Response]:
        """Send (cmd, addr, count, payload) frames and return their checked answers (Link)."""
        if self._closed:
            raise DeviceError("the device is closed")
        return self._link.transact(requests)

    def write(self, addr: int, words, *, fixed: bool = False) -> None:
        """Write 32-bit ``words`` from byte address ``addr`` (all to ``addr`` if ``fixed``)."""
        w = words_u32(words)
        check_span(addr, 1 if fixed else len(w))
        reqs = []
        mw = self._max_words
        for i in range(0, len(w), mw):
            chunk = w[i : i + mw]
            a = addr if fixed else addr + 4 * i
            reqs.append((Cmd.WRITE_FIXED if fixed else Cmd.WRITE, a, len(chunk),
                         chunk.astype("<u4").tobytes()))  # fmt: skip
        self._transact(reqs)

    def read(self, addr: int, n_words: int) -> np.ndarray:
        """Read ``n_words`` 32-bit words from byte address ``addr``."""
        check_span(addr, n_words)
        mw = self._max_words
        reqs = [(Cmd.READ, addr + 4 * i, min(mw, n_words - i), b"") for i in range(0, n_words, mw)]
        rsp = self._transact(reqs)
        data = b"".join(r.payload for r in rsp)
        return np.frombuffer(data, dtype="<u4").astype(np.uint32)

    def read_reg(self, name: str) -> int:
        return int(self.read(reg_offset(name), 1)[0])

    def write_reg(self, name: str, value: int) -> None:
        self.write(reg_offset(name), [value])

    def ping(self) -> None:
        self._transact([(Cmd.PING, 0, 0, b"")])

    def _read_config(self) -> AccelConfig:
        n = self.read_reg("CONFIG_LEN")
        raw = self.read(CONFIG_ROM_BASE, (n + 3) // 4).astype("<u4").tobytes()[:n]
        try:
            return AccelConfig.from_dict(json.loads(raw.decode()))
        except (ValueError, ConfigError) as e:
            raise DeviceError(f"the device's identity ROM holds a config this host cannot read: {e}") from None

    # ---- accelerator ----------------------------------------------------------------------------
    def window_base(self, kind: str) -> int:
        """Byte address of the host window of the engine of ``kind``."""
        try:
            idx = self.config.engine_index(kind)
        except ConfigError as e:
            raise UsageError(str(e)) from None
        return ENGINE_WINDOW_BASE + idx * ENGINE_WINDOW_SIZE

    def status(self) -> dict:
        s = self.read_reg("STATUS")
        return {"idle": bool(s & 1), "error": bool(s & 2), "queued": (s >> 8) & 0xFF,
                "free": (s >> 16) & 0xFF}  # fmt: skip

    def retired(self) -> int:
        return self.read_reg("RETIRED")

    def execute(self, instrs: Iterable[list[int]]) -> int:
        """Queue instructions (each 4 words); waits for free queue entries. Returns the count."""
        instrs = [list(i) for i in instrs]
        for ins in instrs:
            if len(ins) != INSTR_WORDS:
                raise UsageError(f"an instruction is {INSTR_WORDS} words, not {len(ins)}")
        i = 0
        while i < len(instrs):
            free = self.status()["free"]
            if free == 0:
                self._check_error()
                time.sleep(0.0005)
                continue
            batch = instrs[i : i + free]
            self.write(REG["QUEUE"], [w for ins in batch for w in ins], fixed=True)
            i += len(batch)
        return len(instrs)

    def _check_error(self) -> None:
        e = self.read_reg("ERROR")
        if e & 0xFF:
            self.write_reg("CTRL", 1)
            code, src = e & 0xFF, (e >> 8) & 0xFF
            try:
                name = ErrorCode(code).name
            except ValueError:
                name = f"code {code:#x}"
            where = "the controller" if src == 0xFF else self._engine_name(src)
            raise DeviceError(f"the accelerator reported {name} ({code:#04x}) from {where}")

    def _engine_name(self, idx: int) -> str:
        if idx < len(self.config.engines):
            return f"engine {idx} ({type(self.config.engines[idx]).kind})"
        return f"engine {idx}"

    def wait(self, timeout: float | None = None) -> None:
        """Block until the accelerator is idle; raise DeviceError if it reported an error."""
        deadline = time.monotonic() + (timeout if timeout is not None else 3600.0)
        delay = 0.0
        while True:
            st = self.status()
            if st["error"]:
                self._check_error()
            if st["idle"]:
                return
            if time.monotonic() > deadline:
                raise DeviceError(f"the accelerator did not finish within {timeout} s")
            time.sleep(delay)
            delay = min(0.01, delay + 0.0005)

    def wait_retired(self, target: int, timeout: float | None = None) -> None:
        """Block until RETIRED has reached ``target`` (mod 2**32)."""
        deadline = time.monotonic() + (timeout if timeout is not None else 3600.0)
        delay = 0.0
        while True:
            if ((self.retired() - target) & 0xFFFF_FFFF) < 0x8000_0000:
                self._check_error()
                return
            if self.status()["error"]:
                self._check_error()
            if time.monotonic() > deadline:
                raise DeviceError(f"the accelerator did not finish within {timeout} s")
            time.sleep(delay)
            delay = min(0.01, delay + 0.0005)

    def perf(self) -> dict[str, int]:
        """Performance counters (cycles busy, operations, active, stall, total cycles)."""
        out = {}
        for name in PERF_COUNTERS:
            lo = self.read_reg(f"PERF_{name}_LO")
            hi = self.read_reg(f"PERF_{name}_HI")
            out[name.lower()] = hi << 32 | lo
        return out

    def reset_perf(self) -> None:
        self.write_reg("CTRL", 2)

    # ---- engines --------------------------------------------------------------------------------
    def matmul(self, a, b, *, dataflow: str | None = None, engine: str | None = None,
               w_bits: int | None = None, **kwargs):  # fmt: skip
        """``a @ b`` with integer tensors, on the systolic engine (default) or the bit-serial one.

        * systolic: see :func:`gatesmith.host.systolic.matmul` (``dataflow=`` os/ws/is).
        * bit-serial (``w_bits=B`` or ``engine="bitserial"``): ``b`` holds B-bit weights, see
          :func:`gatesmith.host.bitserial.matmul`.
        """
        kinds = [type(e).kind for e in self.config.engines]
        if engine is None:
            engine = "bitserial" if w_bits is not None and "bitserial" in kinds else "systolic"
        if engine not in ("systolic", "bitserial"):
            raise UsageError(f"engine must be systolic or bitserial for matmul, not {engine!r}")
        if engine not in kinds:
            raise UsageError(
                f"this accelerator has no {engine} engine (it has: {', '.join(kinds)})"
            )
        if engine == "bitserial":
            from .bitserial import matmul

            if dataflow is not None:
                raise UsageError("dataflow applies to the systolic engine, not bitserial")
            return matmul(self, a, b, w_bits=8 if w_bits is None else w_bits, **kwargs)
        if w_bits is not None or kwargs:
            extra = sorted(kwargs) + (["w_bits"] if w_bits is not None else [])
            raise UsageError(f"the systolic engine takes no {', '.join(extra)} argument")
        from .systolic import matmul

        return matmul(self, a, b, dataflow=dataflow)

    def softmax(self, x, dim: int = -1, **kwargs):
        """Softmax on the softmax engine (float in, float out); see host/nonlinear.py."""
        from .nonlinear import softmax

        return softmax(self, x, dim=dim, **kwargs)

    def gelu(self, x, **kwargs):
        """GELU on the GELU engine (float in, float out); see host/nonlinear.py."""
        from .nonlinear import gelu

        return gelu(self, x, **kwargs)

    def layer_norm(self, x, normalized_shape, weight=None, bias=None, **kwargs):
        """LayerNorm on the LayerNorm engine (float in, float out); see host/nonlinear.py."""
        from .nonlinear import layer_norm

        return layer_norm(self, x, normalized_shape, weight, bias, **kwargs)

    def load_weights(self, w, **kwargs):
        """Place an integer weight matrix in the PIM banks once; returns a handle for gemv."""
        from .pim import load_weights

        return load_weights(self, w, **kwargs)

    def gemv(self, x, w):
        """``w @ x`` on the PIM banks, ``w`` a handle from load_weights or a matrix."""
        from .pim import gemv

        return gemv(self, x, w)

def open(kind: str = "sim", *, config=None, port: str | None = None, baud: int | None = None,
         timeout: float = 60.0, progress=None) -> Device:  # fmt: skip
    """Open a device: ``"sim"`` (the Verilator-simulated board) or ``"serial"`` (a real board)."""
    if kind == "sim":
        from ..sim.board import SimBoard

        cfg = load_config(config)
        board = SimBoard(cfg, progress=progress)
        try:
            return Device(SocketTransport(board.sock, alive=board.alive), cfg, timeout=timeout,
                          board=board)  # fmt: skip
        except BaseException:
            board.close()
            raise
    if kind == "serial":
        if not port:
            raise UsageError("port is required for the serial transport (e.g. port='/dev/ttyUSB0')")
        cfg = load_config(config) if config is not None else None
        t = SerialTransport(port, baud or (cfg.baud if cfg else 1_000_000))
        try:
            return Device(t, cfg, timeout=timeout)
        except BaseException:
            t.close()
            raise
    raise UsageError(f"kind must be one of {', '.join(TRANSPORTS)}, not {kind!r}")
