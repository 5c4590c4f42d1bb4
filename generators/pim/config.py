"""Configuration of the PIM GEMV engine (PIM-GPT / AiM style banks with MAC lanes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...hdl.formats import IntFormat, parse_int_format
from ..engine import check_int as _check_int, check_pow2 as _check_pow2

__all__ = ["PimConfig", "PIM_DTYPES"]

PIM_DTYPES = ("int8", "int4")


@dataclass(frozen=True)
class PimConfig:
    """``banks`` weight banks, each with ``lanes`` MAC lanes beside a DRAM-like row buffer.

    * ``row_size``: operands in one row of a bank's weight array (one activation opens a row).
      A column command (MAC burst) reads ``burst`` words of ``lanes`` operands, so
      ``row_size`` must be a multiple of ``lanes * burst``.
    * ``rows_per_bank``: rows in each bank's weight array.
    * ``dtype``: operand format of weights and the input vector (int8 or int4).
    * ``acc_width``: accumulator bits; results wrap modulo 2**acc_width (two's complement).
    * ``t_rcd``: cycles from activate to the first column command on that row.
    * ``t_rp``: cycles from precharge to the next activate of the same row buffer.
    * ``t_ccd``: cycles between column commands (>= ``burst``: the MAC lanes are busy for one
      burst per column command).
    * ``burst``: words (beats of ``lanes`` operands) one column command moves.
    * ``dual_row_buffer``: a second row buffer per bank (NeuPIMs): the next row is activated
      while MACs run on the open one, and the host may write weights while a GEMV runs.
    * ``vector_depth``: operands of the input vector buffer (copied beside every bank).
    * ``result_depth``: partial-result slots per bank.
    """

    kind: ClassVar[str] = "pim"

    banks: int = 4
    lanes: int = 8
    row_size: int = 256
    rows_per_bank: int = 64
    dtype: str = "int8"
    acc_width: int = 32
    t_rcd: int = 4
    t_rp: int = 4
    t_ccd: int = 2
    burst: int = 2
    dual_row_buffer: bool = False
    vector_depth: int = 1024
    result_depth: int = 64

    def __post_init__(self):
        _check_int("banks", self.banks, 1, 64)
        _check_pow2("lanes", self.lanes, 1, 64)
        _check_pow2("burst", self.burst, 1, 16)
        _check_pow2("row_size", self.row_size, 1, 4096)
        if self.row_size % (self.lanes * self.burst):
            raise ValueError(
                f"row_size must be a multiple of lanes * burst ({self.lanes * self.burst}), "
                f"not {self.row_size}"
            )
        _check_pow2("rows_per_bank", self.rows_per_bank, 2, 65536)
        fmt = parse_int_format(self.dtype, field="dtype", allowed=PIM_DTYPES)
        _check_int("acc_width", self.acc_width, 2 * fmt.width, 64)
        _check_int("t_rcd", self.t_rcd, 1, 64)
        _check_int("t_rp", self.t_rp, 1, 64)
        _check_int("t_ccd", self.t_ccd, 1, 16)
        if self.t_ccd < self.burst:
            raise ValueError(f"t_ccd must be >= burst ({self.burst}), not {self.t_ccd}")
        if not isinstance(self.dual_row_buffer, bool):
            raise TypeError(f"dual_row_buffer must be a bool, not {self.dual_row_buffer!r}")
        _check_pow2("vector_depth", self.vector_depth, 1, 65536)
        if self.vector_depth < self.row_size:
            raise ValueError(
                f"vector_depth must be >= row_size ({self.row_size}), not {self.vector_depth}"
            )
        _check_pow2("result_depth", self.result_depth, 1, 65536)
        self.windows()  # the memories must fit the engine's host window

    # -- derived quantities shared by the RTL, the models and the host ---------------------------

    @property
    def fmt(self) -> IntFormat:
        return parse_int_format(self.dtype, allowed=PIM_DTYPES)

    @property
    def acc_fmt(self) -> IntFormat:
        return IntFormat(self.acc_width, signed=True)

    @property
    def word_bits(self) -> int:
        """Bits of one weight/vector word (``lanes`` operands, lane 0 in the low bits)."""
        return self.lanes * self.fmt.width

    @property
    def words_per_row(self) -> int:
        return self.row_size // self.lanes

    @property
    def cols_per_row(self) -> int:
        """Column commands (MAC bursts) that cover one row."""
        return self.row_size // (self.lanes * self.burst)

    @property
    def vector_segments(self) -> int:
        """Row-sized segments the vector buffer holds."""
        return self.vector_depth // self.row_size

    @property
    def row_buffers(self) -> int:
        return 2 if self.dual_row_buffer else 1

    @property
    def macs_per_cycle(self) -> int:
        return self.banks * self.lanes

    def windows(self) -> dict:
        """The host window's regions (see :func:`gatesmith.generators.pim.isa.window_layout`)."""
        from .isa import window_layout

        return window_layout(self)
