"""Configuration of the systolic tensor engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...hdl.formats import IntFormat, parse_int_format
from ..engine import check_int as _check_int, check_pow2 as _check_pow2

__all__ = ["SystolicConfig", "DATAFLOWS", "ACCUMULATIONS"]

DATAFLOWS = ("os", "ws", "is")
ACCUMULATIONS = ("cpa", "carry_save")


@dataclass(frozen=True)
class SystolicConfig:
    """A rows x cols systolic array with its scratchpad and accumulator memories.

    * ``dtype``: operand format of both A and B: int4, int8, int16 or uint4/uint8/uint16.
    * ``acc_width``: accumulator bits; sums wrap modulo 2**acc_width (two's complement), exactly
      as :func:`gatesmith.generators.systolic.model.gemm` does.
    * ``dataflows``: the dataflows built in, any non-empty subset of os, ws, is. The instruction
      picks one of them at run time. ``ws`` and ``is`` share the weight-stationary datapath
      (``is`` keeps A stationary by swapping the operands' roles), ``os`` adds the output-stationary
      accumulators and drain chain.
    * ``accumulation``: ``cpa`` adds with a carry-propagate adder every cycle; ``carry_save`` keeps
      sums as sum+carry vectors in the array and adds them once at the array's edge (HPCA 2025).
    * ``spad_depth``: words in each operand memory (a word is rows or cols operands).
    * ``acc_depth``: rows of the accumulator memory (a row is cols accumulators).
    """

    kind: ClassVar[str] = "systolic"

    rows: int = 8
    cols: int = 8
    dtype: str = "int8"
    acc_width: int = 32
    dataflows: tuple[str, ...] = DATAFLOWS
    accumulation: str = "cpa"
    spad_depth: int = 1024
    acc_depth: int = 1024

    def __post_init__(self):
        _check_int("rows", self.rows, 1, 64)
        _check_int("cols", self.cols, 1, 64)
        fmt = parse_int_format(self.dtype, field="dtype")
        if isinstance(self.dataflows, str):
            raise TypeError(f"dataflows must be a list of os, ws, is, not {self.dataflows!r}")
        if not self.dataflows:
            raise ValueError("dataflows must be a non-empty subset of os, ws, is, not []")
        for d in self.dataflows:
            if d not in DATAFLOWS:
                raise ValueError(f"dataflows must be a non-empty subset of os, ws, is, not {d!r}")
        if len(set(self.dataflows)) != len(self.dataflows):
            raise ValueError(f"dataflows must not repeat an entry, not {list(self.dataflows)}")
        _check_int("acc_width", self.acc_width, 2 * fmt.width, 64)
        if self.accumulation not in ACCUMULATIONS:
            raise ValueError(f"accumulation must be cpa or carry_save, not {self.accumulation!r}")
        _check_pow2("spad_depth", self.spad_depth, 16, 65536)
        _check_pow2("acc_depth", self.acc_depth, 16, 65536)

    @property
    def fmt(self) -> IntFormat:
        return parse_int_format(self.dtype)

    @property
    def acc_fmt(self) -> IntFormat:
        return IntFormat(self.acc_width, signed=True)

    @property
    def has_os(self) -> bool:
        return "os" in self.dataflows

    @property
    def has_ws_path(self) -> bool:
        return "ws" in self.dataflows or "is" in self.dataflows
