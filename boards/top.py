"""Board top: the UART PHY on the board's serial pins, in front of the accelerator's link top.

::

    uart.rx pin -> UART PHY .rx (bytes) -> link.rx     link.tx -> UART PHY .tx -> uart.tx pin
                                           link.idle -> LED 0 (lit while the link is busy)

The link top is any ``wiring.Component`` with the signature of
``gatesmith.generators.accel.top.LinkTop``: ``rx: In(stream.Signature(8))``,
``tx: Out(stream.Signature(8))``, ``idle: Out(1)`` (bytes of the host-link protocol). By default
the board top builds ``LinkTop(cfg)``. The UART divisor comes from the design's clock and
``cfg.baud``.

**Clock.** Without ``pll_hz`` the design runs from the board's oscillator (``board.clock_hz``).
With ``pll_hz`` a PLL (``boards/pll.py``: ``EHXPLLL`` on ECP5, ``SB_PLL40_PAD`` on iCE40) makes
the clock from the oscillator, at ``pll_hz`` or the nearest setting below it
(``BoardTop.clock_hz`` says which), and holds the design in reset until it locks.
"""

from __future__ import annotations

from collections.abc import Callable

from amaranth.hdl import ClockDomain, Elaboratable, Module
from amaranth.lib import io, stream, wiring
from amaranth.lib.wiring import In, Out

from ..errors import ConfigError
from ..hdl.uart import UART
from .registry import Board, get_board

__all__ = ["BoardTop", "LINK_SIGNATURE", "MemLinkTop", "default_link"]

LINK_SIGNATURE = wiring.Signature(
    {"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8)), "idle": Out(1)}
)


class MemLinkTop(wiring.Component):
    """The accelerator's LinkTop with its device memory in block RAM (``cfg.mem_bytes`` bytes).

    Until the boards have an SDRAM controller, device memory is on-chip: give a board config a
    ``mem_bytes`` that fits its block RAM (``examples/ulx3s.yaml``: 64 KiB, 32 of the ECP5-85F's
    208 EBRs; ``examples/icebreaker.yaml``: 4 KiB, 8 of the UP5K's 30).
    """

    def __init__(self, cfg):
        from ..generators.accel.top import LinkTop
        from ..hdl.axi4 import AXI4RAM

        self.link = LinkTop(cfg)
        self.ram = AXI4RAM(cfg.mem_bytes)
        super().__init__(LINK_SIGNATURE)

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = self.link
        m.submodules.ram = ram = self.ram
        wiring.connect(m, link.mem, ram.bus)
        wiring.connect(m, wiring.flipped(self.rx), link.rx)
        wiring.connect(m, link.tx, wiring.flipped(self.tx))
        m.d.comb += self.idle.eq(link.idle)
        return m


def default_link(cfg):
    """The accelerator's link top for ``cfg`` with block-RAM device memory (:class:`MemLinkTop`)."""
    return MemLinkTop(cfg)


class BoardTop(Elaboratable):
    """The top-level design of a board build (see module docstring).

    ``link`` makes the link top: a callable ``cfg -> Component`` (default :func:`default_link`).
    ``pll_hz``: run from a PLL at this frequency or the nearest setting below (module docstring).
    Raises ConfigError when ``cfg.baud`` cannot be made from the clock, or no PLL setting fits.
    """

    def __init__(
        self, cfg, board: Board | str, *, link: Callable | None = None, pll_hz: float | None = None
    ):
        from .pll import pll_params

        self.cfg = cfg
        self.board = get_board(board)
        self.pll = None
        if pll_hz is not None:
            self.pll = pll_params(self.board.family, self.board.clock_hz, pll_hz)
        self.clock_hz = self.board.clock_hz if self.pll is None else self.pll.fout_hz
        try:
            self.uart = UART(clock_hz=int(self.clock_hz), baud=cfg.baud)
        except ValueError as e:
            raise ConfigError(f"baud does not suit board {self.board.name}: {e}") from None
        self.link = (link or default_link)(cfg)
        members = getattr(getattr(self.link, "signature", None), "members", None)
        if members != LINK_SIGNATURE.members:
            raise TypeError(
                f"link top must have the signature {LINK_SIGNATURE.members!r}, not {members!r}"
            )

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart = uart = self.uart
        m.submodules.link = link = self.link
        wiring.connect(m, uart_rx=uart.rx, link_rx=link.rx)
        wiring.connect(m, link_tx=link.tx, uart_tx=uart.tx)
        if platform is not None and self.pll is not None:
            from .pll import PLLDomain

            pin = platform.request(self.board.clock, 0, dir="-")
            m.submodules.pll = pll = PLLDomain(self.pll, pin)
            m.domains.sync = cd_sync = ClockDomain("sync")
            m.d.comb += [cd_sync.clk.eq(pll.clk), cd_sync.rst.eq(pll.rst)]
        if platform is not None:
            pins = platform.request("uart", 0, dir="-")
            m.submodules.rx_buffer = rx_buffer = io.Buffer("i", pins.rx)
            m.submodules.tx_buffer = tx_buffer = io.Buffer("o", pins.tx)
            m.d.comb += [uart.pins.rx.eq(rx_buffer.i), tx_buffer.o.eq(uart.pins.tx)]
            led = platform.request("led", 0, dir="-")
            m.submodules.led_buffer = led_buffer = io.Buffer("o", led)
            m.d.comb += led_buffer.o.eq(~link.idle)
        return m
