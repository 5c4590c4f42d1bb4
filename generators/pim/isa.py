"""The PIM engine's instruction: one GEMV pass over resident weights.

A GEMV instruction runs every bank in lockstep (AiM's all-bank mode). Each bank computes
``rounds`` dot products; dot product ``p`` covers ``segments`` consecutive rows of the bank's
weight array starting at ``w_row + p * segments`` and the vector segments ``x_seg + s`` (plus the
bank's offset ``xoff[b]`` when ``col_mode`` is set, so banks can work on different parts of one
long dot product: the column partition). The last segment of each dot product is cut to
``cols_last`` column commands (the rest of that row is not read). The result of dot product ``p``
is written to the bank's result slot ``y_base + p``.

Bit layout (offsets across the 128-bit instruction, word 0 bit 0 first)::

    [7:0]     opcode 0x40
    [8]       col_mode
    [31:16]   rounds      (>= 1)
    [47:32]   segments    (>= 1)
    [63:48]   cols_last   (1..cols_per_row)
    [79:64]   w_row
    [95:80]   x_seg
    [111:96]  y_base
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.lib import data

from ...hdl.fields import struct_fields
from ..engine import ErrorCode, pack_instr, unpack_instr

__all__ = ["OPCODE_GEMV", "FIELDS", "GemvInstr", "check_instr", "window_layout", "region_size"]

OPCODE_GEMV = 0x40

# The GEMV instruction (128 bits, bit 0 first): one description for the RTL decoder and the host.
GemvLayout = data.StructLayout(
    {
        "opcode": 8,
        "col_mode": 1,
        "reserved0": 7,
        "rounds": 16,
        "segments": 16,
        "cols_last": 16,
        "w_row": 16,
        "x_seg": 16,
        "y_base": 16,
        "reserved1": 16,
    }
)

FIELDS = struct_fields(GemvLayout)


@dataclass(frozen=True)
class GemvInstr:
    rounds: int
    segments: int
    cols_last: int
    w_row: int = 0
    x_seg: int = 0
    y_base: int = 0
    col_mode: bool = False

    @property
    def jobs(self) -> int:
        """Row activations per bank."""
        return self.rounds * self.segments

    def words(self) -> list[int]:
        vals = {k: int(getattr(self, k)) for k in FIELDS}
        return pack_instr(OPCODE_GEMV, [(FIELDS[k][0], FIELDS[k][1], v) for k, v in vals.items()])

    @classmethod
    def from_words(cls, words) -> GemvInstr:
        f = unpack_instr(list(words), FIELDS)
        f.pop("opcode")
        f["col_mode"] = bool(f["col_mode"])
        return cls(**f)


def check_instr(cfg, instr: GemvInstr, xoff=None) -> ErrorCode:
    """The error code the engine answers ``instr`` with (``ErrorCode.NONE`` if it runs).

    ``xoff`` is the per-bank vector offset table (segments), used in ``col_mode``.
    """
    if (
        instr.rounds == 0
        or instr.segments == 0
        or instr.cols_last == 0
        or instr.cols_last > cfg.cols_per_row
    ):
        return ErrorCode.BAD_SHAPE
    if instr.w_row + instr.jobs > cfg.rows_per_bank:
        return ErrorCode.OUT_OF_RANGE
    if instr.y_base + instr.rounds > cfg.result_depth:
        return ErrorCode.OUT_OF_RANGE
    offs = list(xoff) if instr.col_mode else [0]
    if instr.x_seg + instr.segments + max(offs) > cfg.vector_segments:
        return ErrorCode.OUT_OF_RANGE
    return ErrorCode.NONE


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def window_layout(cfg) -> dict:
    """The host window's regions (``name -> Window``), word offsets aligned to their size.

    * ``weights`` (write-only): bank ``b``'s array is entries ``b * rows_per_bank * wpr ..``;
      entry ``row * wpr + i`` holds operands ``i * lanes ..`` of that row (``wpr`` =
      ``row_size / lanes`` words per row), lane 0 in the low bits.
    * ``vector`` (write-only): the input vector, ``lanes`` operands per entry; a write lands in
      every bank's copy.
    * ``results`` (read-only): bank ``b``'s slot ``s`` is entry ``b * result_depth + s``.
    * ``xoff`` (read/write): per-bank vector segment offset used by ``col_mode`` instructions.
    """
    from ..engine import ENGINE_WINDOW_ADDR_WIDTH, Window

    sw = max(1, -(-cfg.word_bits // 32))
    sr = max(1, -(-cfg.acc_width // 32))
    bp2 = _pow2_ceil(cfg.banks)
    wpr = cfg.words_per_row
    regions = [
        ("weights", cfg.banks * cfg.rows_per_bank * wpr, cfg.word_bits, sw, "w",
         bp2 * cfg.rows_per_bank * wpr * sw, "bank weight arrays"),
        ("vector", cfg.vector_depth // cfg.lanes, cfg.word_bits, sw, "w",
         cfg.vector_depth // cfg.lanes * sw, "input vector (broadcast to every bank)"),
        ("results", cfg.banks * cfg.result_depth, cfg.acc_width, sr, "r",
         bp2 * cfg.result_depth * sr, "per-bank partial results"),
        ("xoff", cfg.banks, 16, 1, "rw", bp2, "per-bank vector segment offsets (col_mode)"),
    ]  # fmt: skip
    regions.sort(key=lambda r: -r[5])
    out, offset = {}, 0
    for name, depth, width, stride, access, size, doc in regions:
        out[name] = Window(name, offset, depth, width, stride, access, doc)
        offset += size
    if offset > 1 << ENGINE_WINDOW_ADDR_WIDTH:
        raise ValueError(
            f"the memories need {offset} window words, more than the {1 << ENGINE_WINDOW_ADDR_WIDTH}"
            " an engine window holds; use fewer banks, rows or vector/result depth"
        )
    return out


def region_size(cfg, name: str) -> int:
    """Window words reserved for region ``name`` (a power of two, its alignment)."""
    sw = max(1, -(-cfg.word_bits // 32))
    sr = max(1, -(-cfg.acc_width // 32))
    bp2 = _pow2_ceil(cfg.banks)
    return {
        "weights": bp2 * cfg.rows_per_bank * cfg.words_per_row * sw,
        "vector": cfg.vector_depth // cfg.lanes * sw,
        "results": bp2 * cfg.result_depth * sr,
        "xoff": bp2,
    }[name]
