"""Board registry: the boards gatesmith builds bitstreams for, with their parts' capacities.

Each :class:`Board` wraps an amaranth-boards platform class and states what the build flow needs:
the FPGA family (which yosys ``synth_*`` and which nextpnr), the part, the oscillator the design
runs from (the UART divisor is derived from it), and the part's capacity in LUT4s, flip-flops, DSP
blocks and block RAMs (the fit check refuses designs before place-and-route).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

__all__ = ["Board", "BOARDS", "board_names", "get_board"]


@dataclass(frozen=True)
class Board:
    """One supported board.

    * ``clock``/``clock_hz``: the platform's default clock resource and its real frequency; the
      design runs from it directly (no PLL), so ``clock_hz`` sets the UART divisor.
    * ``capacity``: the part's ``lut``, ``ff``, ``dsp``, ``bram`` counts (LUT4 / flip-flops /
      MULT18X18D or SB_MAC16 / DP16KD or SB_RAM40_4K).
    * ``lut_name``/``dsp_name``/``bram_name``: what the part's units are called, for messages (an
      iCE40 logic cell holds a LUT4 and a flip-flop; its ``lut`` capacity counts cells).
    * ``bram_bytes``: data bytes one block RAM holds 32 bits wide (DP16KD 512x32, SB_RAM40_4K
      two of 256x16 per 32-bit word: 512 bytes each), for the device-memory fit check.
    """

    name: str
    description: str
    family: str  # "ecp5" or "ice40"
    device: str
    platform_module: str
    platform_class: str
    clock: str
    clock_hz: int
    capacity: dict = field(default_factory=dict)
    lut_name: str = "LUT4s"
    dsp_name: str = "DSP"
    bram_name: str = "BRAM"
    bram_bytes: int = 2048

    @property
    def platform_cls(self) -> type:
        import importlib

        return getattr(importlib.import_module(self.platform_module), self.platform_class)

    def platform(self, *, target_hz: float | None = None):
        """An instance of the amaranth-boards platform; its clock constraint set to ``target_hz``.

        The constraint is what place-and-route times against (it defaults to the board's
        oscillator). The design still runs from the oscillator on the board, and the platform's
        ``default_clk_frequency`` (used for power-on-reset timing) stays the real one.
        """
        base = self.platform_cls
        if target_hz is None:
            return base()
        target = float(target_hz)

        class TimedPlatform(base):
            def iter_port_clock_constraints(self):
                for port, _frequency in super().iter_port_clock_constraints():
                    yield port, target

        TimedPlatform.__name__ = TimedPlatform.__qualname__ = base.__name__
        return TimedPlatform()


BOARDS: dict[str, Board] = {
    "ulx3s": Board(
        name="ulx3s",
        description="Radiona ULX3S with a Lattice ECP5 LFE5U-85F (caBGA381, speed 6)",
        family="ecp5",
        device="LFE5U-85F",
        platform_module="amaranth_boards.ulx3s",
        platform_class="ULX3S_85F_Platform",
        clock="clk25",
        clock_hz=25_000_000,
        capacity={"lut": 83640, "ff": 83640, "dsp": 156, "bram": 208},
        dsp_name="MULT18X18D",
        bram_name="DP16KD",
    ),
    "icebreaker": Board(
        name="icebreaker",
        description="1BitSquared iCEBreaker with a Lattice iCE40UP5K (SG48)",
        family="ice40",
        device="iCE40UP5K",
        platform_module="amaranth_boards.icebreaker",
        platform_class="ICEBreakerPlatform",
        clock="clk12",
        clock_hz=12_000_000,
        capacity={"lut": 5280, "ff": 5280, "dsp": 8, "bram": 30},
        lut_name="logic cells (LUT4 + FF)",
        dsp_name="SB_MAC16",
        bram_name="SB_RAM40_4K",
        bram_bytes=512,
    ),
}


def board_names() -> list[str]:
    """The names ``--board`` accepts, sorted."""
    return sorted(BOARDS)


def get_board(name) -> Board:
    """The :class:`Board` called ``name``; ConfigError naming the valid boards otherwise."""
    if isinstance(name, Board):
        return name
    if not isinstance(name, str) or name not in BOARDS:
        raise ConfigError(f"board must be one of {', '.join(board_names())}, not {name!r}")
    return BOARDS[name]
