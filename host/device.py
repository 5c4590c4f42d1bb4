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
from ..generators.accel.regs import (
    CONFIG_ROM_BASE,
    CTRL_BITS,
    MAGIC,
    MEM_WINDOW_BASE,
    PERF_COUNTERS,
    REG,
    STATUS_BITS,
    fields,
)
from ..generators.accel.controller import PC_NONE, SRC_COPY, SRC_CTRL, SRC_LOAD, SRC_STORE
from ..generators.accel.isa import ENTRY_WORDS
from .link import Link, check_span, reg_offset, words_u32
from .memory import Allocator, Buffer, element_bytes
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
        self.shared_memory = True  # use the simulated board's shared pages when there are some
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
        self.memory = Allocator(self.read_reg("MEM_BYTES"))
        self._runs: set = set()
        self.last_program = None
        self.program_trace = None  # a list: every launched program is appended (op reports)

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
        f = fields(STATUS_BITS, self.read_reg("STATUS"))
        for flag in ("idle", "error", "running", "program_done"):
            f[flag] = bool(f[flag])
        return f

    # ---- device memory ----------------------------------------------------------------------------
    def alloc(self, shape, dtype, *, label: str = "") -> Buffer:
        """A buffer of ``shape`` x ``dtype`` in device memory (free it, or use ``with``)."""
        import torch

        if isinstance(shape, int):
            shape = (shape,)
        shape = tuple(shape)
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
            raise UsageError(f"shape must be non-negative integers, not {shape}")
        if not isinstance(dtype, torch.dtype):
            raise UsageError(f"dtype must be a torch dtype, not {dtype!r}")
        n = element_bytes(dtype)
        for d in shape:
            n *= d
        addr = self.memory.alloc(max(n, 4), label)
        return Buffer(self, addr, shape, dtype, n, label)

    def _shared_memory(self):
        return getattr(self._board, "memory", None) if self._board is not None else None

    def _mem_write(self, addr: int, raw: np.ndarray) -> None:
        mem = self._shared_memory() if self.shared_memory else None
        if mem is not None:
            mem[addr : addr + raw.size] = raw
            return
        pad = (-raw.size) % 4
        if pad:
            raw = np.concatenate([raw, np.zeros(pad, dtype=np.uint8)])
        self.write(MEM_WINDOW_BASE + addr, raw.view("<u4"))

    def _mem_read(self, addr: int, nbytes: int) -> np.ndarray:
        mem = self._shared_memory() if self.shared_memory else None
        if mem is not None:
            return np.asarray(mem[addr : addr + nbytes])
        words = self.read(MEM_WINDOW_BASE + addr, -(-nbytes // 4))
        return words.astype("<u4").view(np.uint8)[:nbytes]

    # ---- programs -----------------------------------------------------------------------------------
    def program(self):
        """A new, empty :class:`~gatesmith.host.program.Program` for this device."""
        from .program import Program

        return Program(self)

    def launch(self, prog):
        """Write ``prog`` to device memory and start it (see host/program.py)."""
        from .program import Run

        for stale in list(self._runs):
            # a program whose wait was interrupted (Ctrl-C): let it finish; its result was
            # abandoned, so an error it ended with is cleared rather than raised here
            try:
                stale.wait()
            except DeviceError:
                pass
        if len(prog) > 0xFFFF:
            raise UsageError(f"a program holds at most 65535 entries, not {len(prog)}: split it")
        st = self.status()
        if st["error"]:
            self._check_error()
        if not st["idle"]:
            self.wait()
        import torch

        code = self.alloc(len(prog) * ENTRY_WORDS * 4 or 4, torch.uint32, label="program")
        code.write_raw(prog.words())
        for b in prog.buffers:
            b._check("use")
            b._users += 1
        code._users += 1
        self.write_reg("PROG_ADDR", code.addr)
        prog.code_addr = code.addr  # where it was fetched from (the timing model uses it)
        self.write_reg("PROG_COUNT", len(prog))
        self.write_reg("CTRL", 1 << CTRL_BITS["start_program"][0])
        run = Run(self, prog, code)
        self._runs.add(run)
        self.last_program = prog  # what the last call ran (``.predict()``: its timing model)
        if self.program_trace is not None:
            self.program_trace.append(prog)
        return run

    def _raise_program_error(self, prog) -> None:
        e = self.read_reg("ERROR")
        addr = self.read_reg("ERROR_ADDR")
        pc = self.read_reg("ERROR_PC") & 0xFFFF
        self.write_reg("CTRL", 1 << CTRL_BITS["clear_error"][0])
        entry = ""
        if pc != PC_NONE and pc < len(prog.entries):
            entry = f" at program entry {pc} ({prog.entries[pc][2]})"
        raise DeviceError(f"{self._error_text(e)}{entry}; address {addr:#x}")

    def _error_text(self, e: int) -> str:
        """'the accelerator reported NAME (0xCC) from SOURCE' for an ERROR register value."""
        code, src = e & 0xFF, (e >> 8) & 0xFF
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = f"code {code:#x}"
        return f"the accelerator reported {name} ({code:#04x}) from {self._source_name(src)}"

    def _source_name(self, src: int) -> str:
        return {SRC_CTRL: "the controller", SRC_STORE: "the store DMA",
                SRC_LOAD: "the load DMA", SRC_COPY: "the on-chip COPY"}.get(src) or self._engine_name(src)  # fmt: skip

    def _engine_index(self, kind: str) -> int:
        try:
            return self.config.engine_index(kind)
        except ConfigError as e:
            raise UsageError(str(e)) from None

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
            self.write_reg("CTRL", 1 << CTRL_BITS["clear_error"][0])
            raise DeviceError(self._error_text(e))

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

    def perf(self) -> dict[str, int]:
        """Performance counters (cycles busy, operations, active, stall, total cycles, DMA and
        COPY words, ...), and ``engine_busy``: each engine's busy cycles, in engine order."""
        out = {}

        def read64(name):
            lo = self.read_reg(f"PERF_{name}_LO")
            return self.read_reg(f"PERF_{name}_HI") << 32 | lo

        for name in PERF_COUNTERS:
            out[name.lower()] = read64(name)
        out["engine_busy"] = [read64(f"E{i}_BUSY") for i in range(len(self.config.engines))]
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
        out = kwargs.pop("out", "host")
        policy = kwargs.pop("range", "error")
        if w_bits is not None or kwargs:
            extra = sorted(kwargs) + (["w_bits"] if w_bits is not None else [])
            raise UsageError(f"the systolic engine takes no {', '.join(extra)} argument")
        from .systolic import matmul

        return matmul(self, a, b, dataflow=dataflow, out=out, range=policy)

    def upload(self, t, role: str = "b", *, dataflow: str | None = None, range: str = "error"):
        """Pack a systolic operand (``role`` "a" or "b" of ``a @ b``) into device memory once;
        pass the returned buffer to :meth:`matmul` as often as you like (it stays resident).
        ``range``: "error" or "saturate" for values outside the engine's format."""
        from .systolic import _systolic_config, default_dataflow, upload

        if role not in ("a", "b"):
            raise UsageError(f"role must be 'a' or 'b', not {role!r}")
        df = dataflow or default_dataflow(_systolic_config(self))
        return upload(self, t, role, df, range=range)

    # Device buffers hold the engines' integers: a buffer argument, or out="device", runs the
    # integer form of the op (host/nonlinear.py's *_int) and may return a device buffer of rows.
    # ``range`` ("error" or "saturate"): what happens to a value outside the engine's input
    # format, see host/ranges.py; the default raises.
    def softmax(self, x, dim: int = -1, *, out: str = "host", range: str = "error", **kwargs):
        """Softmax on the softmax engine (float in, float out; a device buffer or
        ``out="device"``: integers, see :func:`gatesmith.host.nonlinear.softmax_int`)."""
        from . import nonlinear as NL

        if _on_device(x, out):
            return NL.softmax_int(self, x, dim, out=out, range=range)
        return NL.softmax(self, x, dim=dim, range=range, **kwargs)

    def gelu(self, x, *, out: str = "host", range: str = "error"):
        """GELU on the GELU engine (float in, float out; a device buffer or ``out="device"``:
        integers, see :func:`gatesmith.host.nonlinear.gelu_int`)."""
        from . import nonlinear as NL

        if _on_device(x, out):
            return NL.gelu_int(self, x, out=out, range=range)
        return NL.gelu(self, x, range=range)

    def layer_norm(self, x, normalized_shape, weight=None, bias=None, *, out: str = "host",
                   range: str = "error", **kwargs):  # fmt: skip
        """LayerNorm on the LayerNorm engine (float in, float out; a device buffer or
        ``out="device"``: integers with int16 ``weight``/``bias``, see
        :func:`gatesmith.host.nonlinear.layer_norm_int`)."""
        from . import nonlinear as NL

        if _on_device(x, out):
            return NL.layer_norm_int(self, x, weight, bias, out=out, range=range)
        return NL.layer_norm(self, x, normalized_shape, weight, bias, range=range, **kwargs)

    def load_weights(self, w, **kwargs):
        """Place an integer weight matrix in the PIM banks once; returns a handle for gemv."""
        from .pim import load_weights

        return load_weights(self, w, **kwargs)

    def gemv(self, x, w, *, range: str = "error"):
        """``w @ x`` on the PIM banks, ``w`` a handle from load_weights or a matrix."""
        from .pim import gemv

        return gemv(self, x, w, range=range)

def _on_device(x, out: str) -> bool:
    """True when an op takes the device-buffer (integer) form: a buffer in, or one wanted out."""
    if out not in ("host", "device"):
        raise UsageError(f"out must be 'host' or 'device', not {out!r}")
    return isinstance(x, Buffer) or out == "device"


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
