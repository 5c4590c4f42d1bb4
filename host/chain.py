"""On-chip chaining from the host: describe where a tensor sits in an engine's window, then COPY.

A :class:`Walk` is one side of a COPY (``generators/accel/copy.py``): how rows of elements lie
in one engine's window. The helpers build the walks of the layouts the engines use:

* :func:`acc_tile`: a systolic accumulator tile, row ``m`` of an ``mt`` x ``nt`` result (OS/WS:
  ``C[m, :]``; IS holds the transpose);
* :func:`spad_rows`: rows of a systolic operand in the WS/IS panel layouts (``left`` WS: row
  ``m`` of ``A``; ``top``: row ``k`` of ``B``), so a chained result becomes the next GEMM's
  operand without leaving the chip;
* :func:`rows`: rows of a nonlinear engine's ``in``/``out`` memory (vector words of ``lanes``).

    prog.copy(acc_tile(dev, base=0, mt=16, nt=16),
              rows(dev, "softmax", "in", base=0, n=16), rows=16, length=16, scale=2**-6)

Every COPY is range-checked here against the windows it touches (the engines refuse a word
outside their memories on the device as well: WINDOW_RANGE).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..errors import UsageError
from ..generators.engine import Window

__all__ = ["Walk", "acc_tile", "spad_rows", "rows", "windows", "engine_model", "requant_params"]


@dataclass(frozen=True)
class Walk:
    """One side of a COPY: row ``r`` at ``addr + r * row_stride`` (window words); a row in
    segments of ``seg`` elements ``seg_stride`` words apart; ``width``-bit elements packed
    ``32 // width`` per word. ``window`` is the region it must stay in."""

    engine: str
    window: Window
    addr: int
    row_stride: int
    seg: int
    seg_stride: int
    width: int
    signed: bool

    def last_word(self, rows: int, length: int) -> int:
        """The highest window word the walk touches for ``rows`` x ``length`` elements."""
        epw = 32 // self.width
        n_segs = -(-length // self.seg)
        last_seg = length - (n_segs - 1) * self.seg
        span = (n_segs - 1) * self.seg_stride + -(-last_seg // epw) - 1
        if n_segs > 1:  # a full segment may reach further than the last, shorter one
            span = max(span, (n_segs - 2) * self.seg_stride + -(-self.seg // epw) - 1)
        return self.addr + (rows - 1) * self.row_stride + span


@lru_cache(maxsize=64)
def engine_model(kind: str, cfg):
    """The engine Component of ``cfg``, built (once per config) for what it describes (its
    windows, its cycle model) and never elaborated."""
    from ..generators.registry import engine_spec

    eng = engine_spec(kind).build(cfg)
    eng._MustUse__silence = True
    return eng


@lru_cache(maxsize=64)
def _windows(kind: str, cfg) -> dict:
    return {w.name: w for w in engine_model(kind, cfg).windows()}


def windows(dev, kind: str) -> dict[str, Window]:
    """The window regions of ``dev``'s engine of ``kind`` (name -> Window)."""
    cfg = dev.config.engine(kind)
    if cfg is None:
        have = ", ".join(type(e).kind for e in dev.config.engines)
        raise UsageError(f"this accelerator has no {kind} engine (it has: {have})")
    return _windows(kind, cfg)


def _elem(win: Window) -> int:
    w = win.elem_width or win.width
    if w not in (8, 16, 32):
        raise UsageError(
            f"window {win.name!r} holds {w}-bit elements; COPY moves 8-, 16- or 32-bit ones"
        )
    return w


def acc_tile(dev, *, base: int, mt: int, nt: int) -> Walk:
    """Rows of the systolic accumulator tile at accumulator row ``base`` (``mt`` rows of ``nt``
    results, as a GEMM with ``acc_base=base`` leaves them)."""
    cfg = dev.config.engine("systolic")
    win = windows(dev, "systolic")["acc"]
    if cfg.acc_width > 32:
        raise UsageError(f"COPY reads 32-bit accumulators; this engine's are {cfg.acc_width} bits")
    if -(-nt // cfg.cols) * mt + base > win.depth:
        raise UsageError(f"an {mt}x{nt} tile at accumulator row {base} runs past the "
                         f"accumulator's {win.depth} rows")  # fmt: skip
    return Walk("systolic", win, win.offset + base * win.stride, win.stride, cfg.cols,
                mt * win.stride, 32, True)  # fmt: skip


def spad_rows(dev, which: str, *, base: int, entries: int) -> Walk:
    """Rows of a systolic scratchpad panel from entry ``base``.

    ``which="left"``: the WS left operand of a GEMM with ``M = entries`` rows (row ``m`` of
    ``A``, segments of ``rows`` elements ``entries`` entries apart); ``which="top"``: the top
    operand with ``K = entries`` (row ``k`` of ``B``, segments of ``cols``)."""
    cfg = dev.config.engine("systolic")
    if which not in ("left", "top"):
        raise UsageError(f"which must be 'left' or 'top', not {which!r}")
    win = windows(dev, "systolic")[which]
    seg = cfg.rows if which == "left" else cfg.cols
    return Walk("systolic", win, win.offset + base * win.stride, win.stride, seg,
                entries * win.stride, _elem(win), win.signed)  # fmt: skip


def rows(dev, kind: str, region: str, *, base: int, n: int) -> Walk:
    """Rows of ``n`` elements in a nonlinear engine's memory ``region`` from vector word
    ``base`` (the engine's row ``r`` is at ``base + r * ceil(n / lanes)``)."""
    wins = windows(dev, kind)
    if region not in wins:
        raise UsageError(f"the {kind} engine has no region {region!r} (it has {', '.join(wins)})")
    win = wins[region]
    w = _elem(win)
    lanes = win.width // w
    wpr = -(-n // lanes)
    return Walk(kind, win, win.offset + base * win.stride, wpr * win.stride, lanes, win.stride,
                w, win.signed)  # fmt: skip


def requant_params(scale: float) -> tuple[int, int]:
    """(mult, shift) of the COPY's dyadic requantisation closest to ``scale``."""
    from ..hdl.requant import dyadic

    return dyadic(scale, mult_width=16)
