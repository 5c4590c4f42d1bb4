"""UART PHY: 8N1 serial line <-> streams of bytes.

One start bit (low), 8 data bits LSB first, one stop bit (high), line idle high. The bit time is
``divisor = round(clock_hz / baud)`` clock cycles, fixed at elaboration.

* :class:`UARTTx` takes bytes on ``data`` (``In(stream.Signature(8))``) and drives ``tx``. It
  accepts a byte when idle (``data.ready`` is high only then) and sends it back to back with the
  next one: throughput one byte per ``10 * divisor`` cycles.
* :class:`UARTRx` samples ``rx`` (through a 2-flop synchroniser) and produces bytes on ``data``
  (``Out(stream.Signature(8))``). A start bit is confirmed at mid-bit (glitches shorter than half a
  bit are ignored); each bit is sampled once at its middle, so the receiver tolerates a baud
  mismatch of about +-4% over a frame. A byte whose stop bit is low is dropped and ``frame_error``
  pulses for one cycle; the receiver then waits for the line to return high (a break) before
  looking for the next start bit. A line cannot be stalled: a received byte waits on ``data``
  (payload stable) until taken; if the next byte completes first, the new byte is dropped and
  ``overrun`` pulses (the stream holds one byte: a consumer must take each byte within one frame).
* :class:`UART` is both, with the pins as one ``pins`` member (``UARTPinsSignature``) so a board
  top connects it to the platform's uart resource in two assignments.

Latency: a byte appears on ``UARTRx.data`` about ``9.5 * divisor + 3`` cycles after its start
bit's falling edge at the pin.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["uart_divisor", "UARTPinsSignature", "UARTTx", "UARTRx", "UART"]

MAX_BAUD_ERROR = 0.02  # a divisor this far off the requested baud is refused (8N1 tolerates ~4%)


def uart_divisor(*, clock_hz: int, baud: int) -> int:
    """Clock cycles per bit for ``baud`` at ``clock_hz``; refuses rates the clock cannot make.

    Raises ValueError when the divisor would be below 4 or the achieved rate would be more than 2%
    away from ``baud``.
    """
    for name, value in (("clock_hz", clock_hz), ("baud", baud)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer, not {value!r}")
        if value <= 0:
            raise ValueError(f"{name} must be a positive integer, not {value}")
    divisor = round(clock_hz / baud)
    if divisor < 4:
        raise ValueError(
            f"baud must be at most clock_hz/4 = {clock_hz // 4}, not {baud} (clock {clock_hz} Hz)"
        )
    error = abs(clock_hz / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ValueError(
            f"baud {baud} cannot be made from a {clock_hz} Hz clock within 2% "
            f"(divisor {divisor} gives {clock_hz / divisor:.0f}, {100 * error:.1f}% off)"
        )
    return divisor


def _check_divisor(divisor):
    if isinstance(divisor, bool) or not isinstance(divisor, int):
        raise TypeError(f"divisor must be an integer, not {divisor!r}")
    if divisor < 4:
        raise ValueError(f"divisor must be an integer >= 4, not {divisor}")


class UARTPinsSignature(wiring.Signature):
    """The two line pins, from the PHY's side: ``rx`` in (idle high), ``tx`` out (idle high)."""

    def __init__(self):
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})


class UARTTx(wiring.Component):
    """8N1 transmitter; ``divisor`` clock cycles per bit (see module docstring)."""

    data: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, *, divisor: int):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__()

    @property
    def cycles_per_byte(self) -> int:
        return 10 * self.divisor  # back to back; one more cycle after an idle line

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        shreg = Signal(10, init=0x3FF)  # stop, data[7:0], start; shifted out LSB first
        bits_left = Signal(range(11))

        # Take the next byte in the last cycle of a stop bit, so back-to-back bytes take
        # exactly 10 bit times each.
        free = (bits_left == 0) | ((bits_left == 1) & (timer == 0))
        m.d.comb += [self.tx.eq(shreg[0]), self.data.ready.eq(free)]
        with m.If(free & self.data.valid):
            m.d.sync += [
                shreg.eq(self.data.payload << 1 | 1 << 9),
                bits_left.eq(10),
                timer.eq(self.divisor - 1),
            ]
        with m.Elif(bits_left != 0):
            with m.If(timer == 0):
                m.d.sync += [
                    shreg.eq(shreg >> 1 | 1 << 9),
                    bits_left.eq(bits_left - 1),
                    timer.eq(self.divisor - 1),
                ]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m


class UARTRx(wiring.Component):
    """8N1 receiver; ``divisor`` clock cycles per bit (see module docstring)."""

    rx: In(1, init=1)
    data: Out(stream.Signature(8))
    frame_error: Out(1)
    overrun: Out(1)

    def __init__(self, *, divisor: int):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, line, init=1)

        timer = Signal(range(self.divisor))
        shreg = Signal(8)
        bit = Signal(range(9))

        with m.If(self.data.ready):
            m.d.sync += self.data.valid.eq(0)
        m.d.sync += [self.frame_error.eq(0), self.overrun.eq(0)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):  # shorter than half a bit: a glitch, not a start bit
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [shreg.eq(line << 7 | shreg >> 1), timer.eq(self.divisor - 1)]
                    m.d.sync += bit.eq(bit + 1)
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    with m.If(self.data.valid & ~self.data.ready):
                        m.d.sync += self.overrun.eq(1)  # keep the untaken byte, drop this one
                    with m.Else():
                        m.d.sync += [self.data.payload.eq(shreg), self.data.valid.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += self.frame_error.eq(1)
                    m.next = "BREAK"
            with m.State("BREAK"):  # wait for the line to go idle after a framing error
                with m.If(line):
                    m.next = "IDLE"
        return m


class UART(wiring.Component):
    """8N1 UART PHY: ``rx`` bytes received from ``pins.rx``; ``tx`` bytes sent on ``pins.tx``.

    Built from ``clock_hz`` and ``baud`` (see :func:`uart_divisor` for the rates it refuses).
    ``frame_error`` and ``overrun`` are the receiver's one-cycle error pulses.
    """

    rx: Out(stream.Signature(8))
    tx: In(stream.Signature(8))
    pins: Out(UARTPinsSignature())
    frame_error: Out(1)
    overrun: Out(1)

    def __init__(self, *, clock_hz: int, baud: int):
        self.divisor = uart_divisor(clock_hz=clock_hz, baud=baud)
        self.clock_hz = clock_hz
        self.baud = baud
        super().__init__()

    @property
    def actual_baud(self) -> float:
        return self.clock_hz / self.divisor

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx = tx = UARTTx(divisor=self.divisor)
        m.submodules.rx = rx = UARTRx(divisor=self.divisor)
        wiring.connect(m, tx=wiring.flipped(self.tx), tx_phy=tx.data)
        wiring.connect(m, rx_phy=rx.data, rx=wiring.flipped(self.rx))
        m.d.comb += [
            rx.rx.eq(self.pins.rx),
            self.pins.tx.eq(tx.tx),
            self.frame_error.eq(rx.frame_error),
            self.overrun.eq(rx.overrun),
        ]
        return m
