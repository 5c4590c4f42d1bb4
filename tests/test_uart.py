"""UART PHY (hdl/uart.py) in the Amaranth simulator: waveforms, framing, backpressure, loopback.

The line is driven and decoded here by the test's own bit-level models (a sender that places each
bit edge at ``round(i * period)`` cycles, so fractional periods model a baud mismatch, and a decoder
that checks every cycle of every bit of the transmitter's output).
"""

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from gatesmith.hdl.uart import UART, UARTRx, UARTTx, uart_divisor

SEED = 1234


def frame_bits(byte, stop=1):
    """Line levels of one 8N1 frame: start, data LSB first, stop."""
    return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]


def run(dut, *benches, limit_cycles=200_000):
    """Simulate ``dut`` with the critical testbenches ``benches`` (each async fn(ctx))."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for bench in benches:
        sim.add_testbench(getattr(bench, "bench", bench))
    # A hung bench must fail, not hang the test run: each clock cycle is at most a few steps.
    steps = 0
    while sim.advance():
        steps += 1
        if steps > 4 * limit_cycles:
            raise AssertionError(f"simulation still running after {limit_cycles} cycles")
    return sim


class LineDriver:
    """Drives a pin with one level per bit, ``period`` cycles each (``period`` may be fractional)."""

    def __init__(self, pin, levels, period, *, lead_cycles=5):
        self.pin, self.levels, self.period, self.lead = pin, levels, period, lead_cycles
        self.done = False

    async def bench(self, ctx):
        ctx.set(self.pin, 1)
        await ctx.tick().repeat(self.lead)
        now = 0
        for i, level in enumerate(self.levels):
            ctx.set(self.pin, level)
            end = round((i + 1) * self.period)
            await ctx.tick().repeat(end - now)
            now = end
        ctx.set(self.pin, 1)
        await ctx.tick().repeat(round(2 * self.period))
        self.done = True


class StreamSink:
    """Takes ``count`` payloads from a stream, ready with probability ``p_ready`` each cycle."""

    def __init__(self, port, count, *, p_ready=1.0, seed=SEED, pulses=()):
        self.port, self.count, self.p_ready = port, count, p_ready
        self.rng = random.Random(seed)
        self.got = []
        self.pulses = {name: 0 for name, _ in pulses}
        self._pulse_sigs = list(pulses)

    async def bench(self, ctx):
        while len(self.got) < self.count:
            ready = self.rng.random() < self.p_ready
            ctx.set(self.port.ready, ready)
            sigs = [self.port.valid, self.port.payload] + [s for _, s in self._pulse_sigs]
            _, _, valid, payload, *flags = await ctx.tick().sample(*sigs)
            for (name, _), flag in zip(self._pulse_sigs, flags, strict=True):
                self.pulses[name] += flag
            if valid and ready:
                self.got.append(payload)


class StreamSource:
    """Offers ``data`` on a stream; with ``p_valid`` < 1, valid drops between bytes at random."""

    def __init__(self, port, data, *, p_valid=1.0, seed=SEED):
        self.port, self.data, self.p_valid = port, list(data), p_valid
        self.rng = random.Random(seed + 1)
        self.accept_cycles = []

    async def bench(self, ctx):
        cycle = 0
        for byte in self.data:
            while self.rng.random() >= self.p_valid:
                ctx.set(self.port.valid, 0)
                await ctx.tick()
                cycle += 1
            ctx.set(self.port.valid, 1)
            ctx.set(self.port.payload, byte)
            while True:
                _, _, ready = await ctx.tick().sample(self.port.ready)
                cycle += 1
                if ready:
                    self.accept_cycles.append(cycle)
                    break
        ctx.set(self.port.valid, 0)


def random_bytes(n, seed=SEED):
    rng = random.Random(seed)
    return [0x00, 0xFF, 0x55, 0xAA, 0x80, 0x01] + [rng.randrange(256) for _ in range(n - 6)]


def test_divisor_and_messages():
    assert uart_divisor(clock_hz=25_000_000, baud=1_000_000) == 25
    assert uart_divisor(clock_hz=12_000_000, baud=115_200) == 104
    with pytest.raises(ValueError) as e:
        uart_divisor(clock_hz=12_000_000, baud=4_000_000)
    assert str(e.value) == (
        "baud must be at most clock_hz/4 = 3000000, not 4000000 (clock 12000000 Hz)"
    )
    with pytest.raises(ValueError) as e:
        uart_divisor(clock_hz=12_000_000, baud=1_300_000)
    assert str(e.value) == (
        "baud 1300000 cannot be made from a 12000000 Hz clock within 2% "
        "(divisor 9 gives 1333333, 2.6% off)"
    )
    with pytest.raises(TypeError, match=r"^baud must be an integer, not 9600\.0$"):
        uart_divisor(clock_hz=12_000_000, baud=9600.0)
    with pytest.raises(ValueError, match=r"^divisor must be an integer >= 4, not 3$"):
        UARTTx(divisor=3)
    assert UART(clock_hz=25_000_000, baud=1_000_000).divisor == 25


@pytest.mark.parametrize("divisor", [7, 8, 25])
@pytest.mark.parametrize("p_ready", [1.0, 0.3], ids=["ready", "backpressure"])
def test_rx_byte_stream(divisor, p_ready):
    data = random_bytes(24, seed=SEED + divisor)
    dut = UARTRx(divisor=divisor)
    levels = [b for byte in data for b in frame_bits(byte)]
    sink = StreamSink(
        dut.data,
        len(data),
        p_ready=p_ready,
        pulses=[("frame_error", dut.frame_error), ("overrun", dut.overrun)],
    )
    run(dut, LineDriver(dut.rx, levels, divisor), sink)
    assert sink.got == data
    assert sink.pulses == {"frame_error": 0, "overrun": 0}


@pytest.mark.parametrize("mismatch", [-0.03, 0.03])
def test_rx_tolerates_baud_mismatch(mismatch):
    divisor = 16
    data = random_bytes(16, seed=SEED + 7)
    dut = UARTRx(divisor=divisor)
    levels = [b for byte in data for b in frame_bits(byte)]
    sink = StreamSink(dut.data, len(data))
    run(dut, LineDriver(dut.rx, levels, divisor * (1 + mismatch)), sink)
    assert sink.got == data


def test_rx_framing_errors_glitch_and_break():
    divisor = 8
    # good, bad stop bit, a glitch of 3 cycles (< half a bit), good, a break of 20 bits, good
    levels = frame_bits(0x3C) + frame_bits(0x99, stop=0) + [1] * 2
    levels += frame_bits(0xA5)
    levels += [0] * 20 + [1] * 2 + frame_bits(0x5A)
    dut = UARTRx(divisor=divisor)
    sink = StreamSink(
        dut.data, 3, pulses=[("frame_error", dut.frame_error), ("overrun", dut.overrun)]
    )
    driver = LineDriver(dut.rx, levels, divisor)

    async def glitch_then_drive(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(10)
        ctx.set(dut.rx, 0)
        await ctx.tick().repeat(3)
        await driver.bench(ctx)

    run(dut, glitch_then_drive, sink)
    assert sink.got == [0x3C, 0xA5, 0x5A]
    assert sink.pulses == {"frame_error": 2, "overrun": 0}


def test_rx_overrun_keeps_first_byte():
    divisor = 8
    data = [0x11, 0x22, 0x33]
    dut = UARTRx(divisor=divisor)
    levels = [b for byte in data for b in frame_bits(byte)]
    driver = LineDriver(dut.rx, levels, divisor)
    overruns = []

    async def slow_sink(ctx):
        ctx.set(dut.data.ready, 0)
        count = 0
        while not driver.done:
            _, _, ovr = await ctx.tick().sample(dut.overrun)
            count += ovr
        overruns.append(count)
        ctx.set(dut.data.ready, 1)
        _, _, valid, payload = await ctx.tick().sample(dut.data.valid, dut.data.payload)
        overruns.append((valid, payload))
        _, _, valid = await ctx.tick().sample(dut.data.valid)
        overruns.append(valid)

    run(dut, driver, slow_sink)
    assert overruns == [2, (1, 0x11), 0]


class LineDecoder:
    """Reference 8N1 decoder of a tx pin that checks the level over every cycle of every bit."""

    def __init__(self, pin, divisor, count):
        self.pin, self.divisor, self.count = pin, divisor, count
        self.got, self.start_cycles, self.errors = [], [], []

    async def bench(self, ctx):
        cycle = 0
        while len(self.got) < self.count:
            _, _, level = await ctx.tick().sample(self.pin)
            cycle += 1
            if level:
                continue
            start = cycle
            bits = [0]
            for _ in range(self.divisor - 1):  # rest of the start bit
                _, _, level = await ctx.tick().sample(self.pin)
                bits.append(level)
            window = []
            for _ in range(9 * self.divisor):
                _, _, level = await ctx.tick().sample(self.pin)
                window.append(level)
            cycle += 10 * self.divisor - 1
            if any(bits):
                self.errors.append(f"start bit not low for a whole bit at cycle {start}")
            levels = [window[i * self.divisor : (i + 1) * self.divisor] for i in range(9)]
            for i, chunk in enumerate(levels):
                if len(set(chunk)) != 1:
                    self.errors.append(f"bit {i} changes inside its bit time at cycle {start}")
            if levels[8][0] != 1:
                self.errors.append(f"stop bit low at cycle {start}")
            self.got.append(sum(levels[i][0] << i for i in range(8)))
            self.start_cycles.append(start)


@pytest.mark.parametrize("divisor", [4, 9])
@pytest.mark.parametrize("p_valid", [1.0, 0.02], ids=["back_to_back", "gaps"])
def test_tx_waveform(divisor, p_valid):
    data = random_bytes(20, seed=SEED + divisor)
    dut = UARTTx(divisor=divisor)
    source = StreamSource(dut.data, data, p_valid=p_valid)
    decoder = LineDecoder(dut.tx, divisor, len(data))
    run(dut, source, decoder)
    assert decoder.errors == []
    assert decoder.got == data
    if p_valid == 1.0:  # back to back: exactly one frame time per byte
        gaps = {b - a for a, b in zip(decoder.start_cycles, decoder.start_cycles[1:])}
        assert gaps == {dut.cycles_per_byte}


def loopback(**kwargs):
    """A UART whose tx pin is wired to its own rx pin."""
    m = Module()
    m.submodules.uart = uart = UART(**kwargs)
    m.d.comb += uart.pins.rx.eq(uart.pins.tx)
    return m, uart


@pytest.mark.parametrize("p_valid,p_ready", [(1.0, 1.0), (0.05, 0.2)], ids=["full", "throttled"])
def test_uart_loopback(p_valid, p_ready):
    data = random_bytes(40, seed=SEED + 3)
    top, uart = loopback(clock_hz=10_000_000, baud=1_000_000)
    source = StreamSource(uart.tx, data, p_valid=p_valid)
    sink = StreamSink(
        uart.rx,
        len(data),
        p_ready=p_ready,
        pulses=[("frame_error", uart.frame_error), ("overrun", uart.overrun)],
    )
    run(top, source, sink)
    assert sink.got == data
    assert sink.pulses == {"frame_error": 0, "overrun": 0}
