"""Configuration of the bit-serial tensor engine (run-time precision, BitMoD datatypes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar
from ..engine import check_int as _check_int, check_pow2 as _check_pow2

__all__ = ["BitserialConfig", "ENCODINGS", "SCALE_BITS"]

ENCODINGS = ("twos", "bipolar")
SCALE_BITS = 16  # unsigned integer group scale (the host keeps a power-of-two exponent per row)


def _ceil_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class BitserialConfig:
    """A bit-serial weight x bit-parallel activation engine: ``pes`` output channels at once,
    each a ``lanes``-wide dot product, weights consumed ``bits_per_cycle`` bit-planes per cycle.

    * ``lanes``: K elements per pass (one weight code and one activation per lane and PE).
    * ``pes``: output channels (weight rows) computed in parallel.
    * ``w_max_bits`` / ``a_max_bits``: the widest weight code / activation the memories hold
      (each code slot is that wide; the instruction picks 1..max at run time).
    * ``bits_per_cycle``: weight magnitude planes summed per cycle (1, 2 or 4); a pass over
      ``P`` planes takes ``ceil(P / bits_per_cycle)`` cycles.
    * ``encodings``: the integer encodings built in (``twos``, ``bipolar``); the instruction picks
      one for weights and one for activations.
    * ``bitmod``: build the FP3/FP4 BitMoD grid decoders (per-group datatype ids).
    * ``group_size``: K elements sharing one datatype id and scale (a multiple of ``lanes``).
    * ``acc_width``: bits of the dequantised accumulator (wraps, two's complement).
    * ``*_depth``: words of the weight, activation, group-metadata and result memories.
    """

    kind: ClassVar[str] = "bitserial"

    lanes: int = 16
    pes: int = 8
    w_max_bits: int = 8
    a_max_bits: int = 8
    bits_per_cycle: int = 2
    encodings: tuple[str, ...] = ENCODINGS
    bitmod: bool = True
    group_size: int = 128
    acc_width: int = 48
    w_depth: int = 1024
    a_depth: int = 1024
    g_depth: int = 256
    r_depth: int = 256

    def __post_init__(self):
        _check_pow2("lanes", self.lanes, 1, 64)
        _check_pow2("pes", self.pes, 1, 64)
        _check_int("w_max_bits", self.w_max_bits, 1, 8)
        _check_int("a_max_bits", self.a_max_bits, 1, 8)
        if self.bits_per_cycle not in (1, 2, 4):
            raise ValueError(f"bits_per_cycle must be 1, 2 or 4, not {self.bits_per_cycle!r}")
        if isinstance(self.encodings, str) or not self.encodings:
            raise ValueError(
                f"encodings must be a non-empty subset of twos, bipolar, not {self.encodings!r}"
            )
        for e in self.encodings:
            if e not in ENCODINGS:
                raise ValueError(
                    f"encodings must be a non-empty subset of twos, bipolar, not {e!r}"
                )
        if len(set(self.encodings)) != len(self.encodings):
            raise ValueError(f"encodings must not repeat an entry, not {list(self.encodings)}")
        if not isinstance(self.bitmod, bool):
            raise TypeError(f"bitmod must be a bool, not {self.bitmod!r}")
        if self.bitmod and self.w_max_bits < 4:
            raise ValueError(f"bitmod needs w_max_bits >= 4, not {self.w_max_bits}")
        _check_pow2("group_size", self.group_size, 1, 4096)
        if self.group_size < self.lanes:
            raise ValueError(
                f"group_size must be a multiple of lanes ({self.lanes}), not {self.group_size}"
            )
        _check_int("acc_width", self.acc_width, 32, 64)
        for name in ("w_depth", "a_depth", "g_depth", "r_depth"):
            _check_pow2(name, getattr(self, name), 16, 65536)

    # Derived geometry, shared by the engine, the golden model and the host packer.
    @property
    def max_planes(self) -> int:
        """Magnitude planes of the widest weight (BitMoD's FP4 +/-16 is walked as 8 times a
        doubled activation, so it fits 4 planes)."""
        return self.w_max_bits

    @property
    def w_word_bits(self) -> int:
        return self.pes * self.lanes * self.w_max_bits

    @property
    def a_word_bits(self) -> int:
        return self.lanes * self.a_max_bits

    @property
    def g_word_bits(self) -> int:
        return self.pes * 32

    @property
    def r_word_bits(self) -> int:
        return self.pes * 64

    @staticmethod
    def stride_of(bits: int) -> int:
        """32-bit words per memory entry in the host window (a power of two)."""
        return _ceil_pow2((bits + 31) // 32)

    @property
    def chunks_per_group(self) -> int:
        return self.group_size // self.lanes
