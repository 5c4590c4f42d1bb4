"""Boards: the registry of supported boards and the board top (UART PHY + accelerator link)."""

from .registry import BOARDS, Board, board_names, get_board

__all__ = ["BOARDS", "Board", "board_names", "get_board", "BoardTop"]


def __getattr__(name):
    # BoardTop imports Amaranth and the UART PHY; the CLI only needs the names.
    if name == "BoardTop":
        from .top import BoardTop

        return BoardTop
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
