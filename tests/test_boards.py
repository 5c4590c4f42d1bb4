"""Board registry and board top: registry facts against amaranth-boards, the UART in front of a
link top, end to end in the Amaranth simulator (serial bytes in -> link -> serial bytes out).

``EchoLink`` is a stand-in with LinkTop's signature for tests only: it echoes each byte it gets.
"""

import pytest
from amaranth.hdl import Module
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from gatesmith.boards import BOARDS, BoardTop, board_names, get_board
from gatesmith.config import AccelConfig
from gatesmith.errors import ConfigError

from .test_uart import LineDecoder, LineDriver, frame_bits, random_bytes, run


class EchoLink(wiring.Component):
    """A link top that sends back every byte it receives (through a 16-byte FIFO)."""

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))
    idle: Out(1)

    def __init__(self, cfg=None):
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.q = q = fifo.SyncFIFOBuffered(width=8, depth=16)
        m.d.comb += [
            q.w_data.eq(self.rx.payload),
            q.w_en.eq(self.rx.valid),
            self.rx.ready.eq(q.w_rdy),
            self.tx.payload.eq(q.r_data),
            self.tx.valid.eq(q.r_rdy),
            q.r_en.eq(self.tx.ready),
            self.idle.eq(q.level == 0),
        ]
        return m


def test_registry_matches_amaranth_boards():
    assert board_names() == ["icebreaker", "ulx3s"]
    assert set(BOARDS) == set(board_names())
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    assert BOARDS["ulx3s"].platform_cls is ULX3S_85F_Platform
    assert BOARDS["icebreaker"].platform_cls is ICEBreakerPlatform
    for board in BOARDS.values():
        platform = board.platform()
        assert platform.device == board.device
        assert platform.default_clk == board.clock
        assert platform.default_clk_frequency == board.clock_hz
        assert platform.family.lower() == board.family


def test_unknown_board_message():
    with pytest.raises(ConfigError) as e:
        get_board("foo")
    assert str(e.value) == "board must be one of icebreaker, ulx3s, not 'foo'"
    with pytest.raises(ConfigError) as e:
        get_board(None)
    assert str(e.value) == "board must be one of icebreaker, ulx3s, not None"


@pytest.mark.parametrize(
    "name,constraint,pins",
    [
        ("ulx3s", 'FREQUENCY PORT "clk25_0__io" 100000000.0 HZ;', ('SITE "M1"', 'SITE "L4"')),
        ("icebreaker", "set_frequency clk12_0__io 100.0", ("uart_0__rx__io 6", "uart_0__tx__io 9")),
    ],
)
def test_board_top_constraints(name, constraint, pins):
    board = get_board(name)
    platform = board.platform(target_hz=100e6)
    assert platform.default_clk_frequency == board.clock_hz  # the board still runs at its clock
    top = BoardTop(AccelConfig(), board, link=EchoLink)
    plan = platform.prepare(top, name="top")
    constraints = plan.files["top.lpf" if board.family == "ecp5" else "top.pcf"]
    assert constraint in constraints
    for pin in pins:
        assert pin in constraints


@pytest.mark.parametrize("name,baud", [("ulx3s", 3_125_000), ("icebreaker", 3_000_000)])
def test_board_top_echoes_serial_bytes(name, baud):
    """Serial frames at the board's divisor in, the echo link's frames out, bit-exact."""
    board = get_board(name)
    top = BoardTop(AccelConfig(baud=baud), board, link=EchoLink)
    divisor = top.uart.divisor
    assert divisor == round(board.clock_hz / baud)
    data = random_bytes(12, seed=len(name))
    m = Module()
    m.submodules.top = top
    levels = [b for byte in data for b in frame_bits(byte)]
    decoder = LineDecoder(top.uart.pins.tx, divisor, len(data))
    run(m, LineDriver(top.uart.pins.rx, levels, divisor), decoder)
    assert decoder.errors == []
    assert decoder.got == data


def test_board_top_errors():
    with pytest.raises(ConfigError) as e:
        BoardTop(AccelConfig(baud=1_300_000), "icebreaker", link=EchoLink)
    assert str(e.value) == (
        "baud does not suit board icebreaker: baud 1300000 cannot be made from a 12000000 Hz "
        "clock within 2% (divisor 9 gives 1333333, 2.6% off)"
    )

    class Wrong(wiring.Component):
        rx: In(stream.Signature(16))
        tx: Out(stream.Signature(8))
        idle: Out(1)

        def __init__(self, cfg):
            super().__init__()

        def elaborate(self, platform):
            return Module()

    with pytest.raises(TypeError, match=r"^link top must have the signature "):
        BoardTop(AccelConfig(), "ulx3s", link=Wrong)


def test_board_top_uses_the_accelerator_link_top():
    from gatesmith.boards.top import MemLinkTop
    from gatesmith.generators.accel.top import LinkTop
    from gatesmith.generators.systolic.config import SystolicConfig

    cfg = AccelConfig(engines=(SystolicConfig(rows=2, cols=2, spad_depth=16, acc_depth=16),),
                      mem_bytes=4096)  # fmt: skip
    top = BoardTop(cfg, "ulx3s")
    assert isinstance(top.link, MemLinkTop) and isinstance(top.link.link, LinkTop)
    assert top.link.ram.size == 4096  # device memory in block RAM
    assert top.uart.divisor == 25  # 25 MHz oscillator, 1 Mbaud
