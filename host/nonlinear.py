"""Host API of the nonlinear engines: softmax, GELU and LayerNorm on an accelerator.

Float functions quantise to the engine's input format, run the engine and return float tensors:

* :func:`softmax` ``(dev, x, dim=-1)``: ``x`` is quantised to ``round(x * 2**in_frac)`` and
  saturated to the input format's range excluding its minimum, which marks a masked entry
  (``-inf`` in ``x``, or ``mask=True``). Result: probabilities, multiples of 2**-15.
* :func:`gelu` ``(dev, x)``: ``round(x * 2**in_frac)``, saturated; result multiples of
  ``2**-out_frac``, saturated to the output format.
* :func:`layer_norm` ``(dev, x, normalized_shape, weight, bias)``: over the last dimension;
  ``weight`` to int16 with ``gamma_frac`` fraction bits, ``bias`` to int16 with ``out_frac``; the
  engine's ``eps`` is the config's.

The ``*_int`` variants take and return the engines' integers for callers that manage scales. Rows
longer than the engine's ``max_len`` raise :class:`UsageError`. Every call takes ``range=``
(``"error"``, the default, or ``"saturate"``): what to do with a value outside the engine's input
format (``host/ranges.py``: raise, or clamp with a :class:`SaturationWarning`; softmax's ``-inf``
is a masked entry, other infinities are out of range). An empty tensor gives an empty result, as
in torch.

Layout in an engine's window (``generators/<engine>/engine.py``'s ``windows()``): rows are packed
into vector words of ``lanes`` elements (element ``j`` of a row in word ``j // lanes``, lane
``j % lanes``; the row's last word padded), each vector word little-endian over ``stride`` 32-bit
host words. Row ``r`` of an instruction starts at word ``src + r * ceil(n / lanes)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError
from ..hdl.formats import IntFormat
from ..hdl.nonlinear_common import pack_row_instr
from .ranges import check_policy, fit_float, fit_int

__all__ = [
    "pack_rows",
    "unpack_rows",
    "softmax",
    "softmax_int",
    "gelu",
    "gelu_int",
    "layer_norm",
    "layer_norm_int",
    "Rows",
]

_OPCODES = {"softmax": 0x20, "gelu": 0x21, "layernorm": 0x22}


def pack_rows(x, *, lanes: int, width: int, stride: int) -> np.ndarray:
    """Integer rows ``[rows, n]`` -> the uint32 host words of their vector words."""
    x = np.asarray(x, dtype=np.int64)
    rows, n = x.shape
    wpr = -(-n // lanes)
    padded = np.zeros((rows, wpr * lanes), dtype=np.uint64)
    padded[:, :n] = x.astype(np.uint64) & np.uint64((1 << width) - 1)
    elems = padded.reshape(rows * wpr, lanes)
    per_word = 32 // width
    if lanes * width <= 32:
        shifts = (np.arange(lanes, dtype=np.uint64) * np.uint64(width))[None]
        return (elems << shifts).sum(axis=1).astype(np.uint32)
    # lanes * width > 32: each 32-bit word holds per_word elements
    out = np.zeros((rows * wpr, stride), dtype=np.uint64)
    for lane in range(lanes):
        w, k = divmod(lane, per_word)
        out[:, w] |= elems[:, lane] << np.uint64(k * width)
    return out.astype(np.uint32).reshape(-1)


def unpack_rows(words, *, rows: int, n: int, lanes: int, width: int, stride: int, signed: bool):
    """Inverse of :func:`pack_rows`: host words -> int64 rows ``[rows, n]``."""
    words = np.asarray(words, dtype=np.uint64)
    wpr = -(-n // lanes)
    mask = np.uint64((1 << width) - 1)
    if lanes * width <= 32:
        vec = words.reshape(rows * wpr, 1)
        elems = np.stack(
            [(vec[:, 0] >> np.uint64(i * width)) & mask for i in range(lanes)], axis=1
        )
    else:
        vec = words.reshape(rows * wpr, stride)
        per_word = 32 // width
        elems = np.stack(
            [
                (vec[:, lane // per_word] >> np.uint64((lane % per_word) * width)) & mask
                for lane in range(lanes)
            ],
            axis=1,
        )
    out = elems.astype(np.int64).reshape(rows, wpr * lanes)[:, :n]
    if signed:
        out = np.where(out >= 1 << (width - 1), out - (1 << width), out)
    return out


# ---- device plumbing -----------------------------------------------------------------------


def _engine(dev, kind: str):
    from .chain import windows

    wins = windows(dev, kind)  # (raises when the accelerator has no such engine)
    return dev.config.engine(kind), wins


def _write_region(dev, kind, win, rows, lanes):
    width = win.width // lanes
    words = pack_rows(rows, lanes=lanes, width=width, stride=win.stride)
    dev.write(dev.window_base(kind) + 4 * win.offset, words)


@dataclass(frozen=True)
class Rows:
    """How a device buffer holds rows for a nonlinear engine (``Buffer.layout``): ``rows`` x
    ``n`` integers packed as that engine's ``region`` memory packs them (:func:`pack_rows`), so a
    program LOADs them as they are. ``dev.softmax(..., out="device")`` and friends return these;
    pass one back to the same kind of region without a trip through the host."""

    kind: str
    region: str
    rows: int
    n: int
    lanes: int
    width: int
    stride: int
    signed: bool

    def unpack_from(self, buf) -> torch.Tensor:
        words = buf.read_raw().view("<u4")[: self.rows * self.row_words]
        return torch.from_numpy(unpack_rows(words, rows=self.rows, n=self.n, lanes=self.lanes,
                                            width=self.width, stride=self.stride,
                                            signed=self.signed))  # fmt: skip

    @property
    def row_words(self) -> int:
        return -(-self.n // self.lanes) * self.stride

    def fits(self, win, lanes: int) -> bool:
        """True when the words can be LOADed into ``win`` as they are."""
        return (self.lanes, self.width, self.stride) == (lanes, win.width // lanes, win.stride)


def _rows_layout(kind, region, win, lanes, rows, n, signed) -> Rows:
    return Rows(kind, region, rows, n, lanes, win.width // lanes, win.stride, signed)


def _input_rows(dev, kind, x, policy="error"):
    """``x`` as (tensor or None, packed input buffer or None, rows, n): a buffer already in the
    engine's input layout is used as it is; a plain integer buffer is read (a host round trip)."""
    from .memory import Buffer

    if not isinstance(x, Buffer):
        return x, None, x.shape[0], x.shape[1]
    lay = x.layout
    cfg, wins = _engine(dev, kind)
    if isinstance(lay, Rows) and lay.fits(wins["in"], cfg.lanes):
        return None, x, lay.rows, lay.n
    t = lay.unpack_from(x) if lay is not None else x.read()
    if t.dim() != 2:
        raise UsageError(f"a device buffer of rows must be 2-D, not {tuple(t.shape)}")
    floor = cfg.in_fmt.min + 1 if kind == "softmax" else None  # softmax's minimum: masked
    t = _as_int(t, cfg.in_fmt, "x (read from its device buffer)", policy, kind, floor)
    return t, None, t.shape[0], t.shape[1]


def _run_rows(dev, kind, x2d, *, signed_out: bool, out: str = "host", policy: str = "error"):
    """Run ``[rows, n]`` integer rows (a tensor or a device buffer of rows) through engine
    ``kind``, in chunks that fit its memories; returns int64 rows, or with ``out="device"`` a
    device buffer (layout :class:`Rows`) of the engine's output."""
    if out not in ("host", "device"):
        raise UsageError(f"out must be 'host' or 'device', not {out!r}")
    cfg, wins = _engine(dev, kind)
    x2d, packed, rows, n = _input_rows(dev, kind, x2d, policy)
    if not 1 <= n <= cfg.max_len:
        raise UsageError(
            f"rows must have 1..{cfg.max_len} elements for this {kind} engine, not {n}"
        )
    wpr = -(-n // cfg.lanes)
    per_chunk = min(cfg.depth // wpr, 65535)
    if per_chunk == 0:
        raise UsageError(
            f"rows of {n} elements need {wpr} vector words, more than this {kind} engine's "
            f"depth of {cfg.depth}"
        )
    if rows == 0:
        if out == "device":
            raise UsageError("no rows to keep on the device")
        return torch.zeros(0, n, dtype=torch.int64)
    if hasattr(dev, "program"):  # contract v2: device memory, DMA, one program
        return _run_program(dev, kind, cfg, wins, x2d, packed, rows, n, wpr, per_chunk,
                            signed_out, out)  # fmt: skip
    if out == "device" or packed is not None:
        raise UsageError("this device has no device memory (contract v1): rows stay on the host")
    return _run_windows(dev, kind, cfg, wins, x2d, n, per_chunk, signed_out)


def _run_windows(dev, kind, cfg, wins, x2d, n, per_chunk, signed_out):
    """Bring-up path for a device with only the window primitives (write/read/execute/wait)."""
    out = []
    for start in range(0, x2d.shape[0], per_chunk):
        chunk = x2d[start : start + per_chunk].numpy()
        _write_region(dev, kind, wins["in"], chunk, cfg.lanes)
        dev.execute([pack_row_instr(_OPCODES[kind], src=0, dst=0, length=n, rows=len(chunk))])
        dev.wait()
        win = wins["out"]
        words = dev.read(dev.window_base(kind) + 4 * win.offset,
                         len(chunk) * -(-n // cfg.lanes) * win.stride)  # fmt: skip
        out.append(unpack_rows(words, rows=len(chunk), n=n, lanes=cfg.lanes,
                               width=win.width // cfg.lanes, stride=win.stride,
                               signed=signed_out))  # fmt: skip
    return torch.from_numpy(np.concatenate(out, axis=0))


def _run_program(dev, kind, cfg, wins, x2d, packed, rows, n, wpr, per_chunk, signed_out, out):
    """All rows in device memory, one program (:func:`rows_program`)."""
    win_out = wins["out"]
    row_out = wpr * win_out.stride
    temps = []
    if packed is None:
        win_in = wins["in"]
        in_words = pack_rows(x2d.numpy(), lanes=cfg.lanes, width=win_in.width // cfg.lanes,
                             stride=win_in.stride)  # fmt: skip
        packed = dev.alloc((in_words.size,), torch.int32, label=f"{kind} in")
        temps.append(packed)
        packed.write_raw(in_words)
    bout = dev.alloc((rows * row_out,), torch.int32, label=f"{kind} out")
    bout.layout = _rows_layout(kind, "out", win_out, cfg.lanes, rows, n, signed_out)
    try:
        prog = rows_program(dev.program(), kind, wins, packed, bout, rows, n, wpr, per_chunk)
        prog.temporaries += temps
        try:
            prog.run()
        except BaseException:
            if bout.busy:  # interrupted: freed when the program has finished
                prog.temporaries.append(bout)
            else:
                bout.free()
            raise
    finally:
        for t in temps:
            if not t.freed and not t.busy:
                t.free()
    if out == "device":
        return bout
    with bout:
        return bout.layout.unpack_from(bout)


def rows_program(prog, kind, wins, packed, bout, rows, n, wpr, per_chunk):
    """Append to ``prog`` the program of ``rows`` rows of ``n`` elements from buffer ``packed``
    through engine ``kind`` into ``bout``: per chunk of ``per_chunk`` rows, LOAD, run, STORE.

    Tokens let chunk ``i + 1``'s load overlap chunk ``i``'s store (the engine's in and out
    regions are each used by one chunk at a time). The timing model builds the same program
    with no board (``host.timing.rows_program_cycles``)."""
    from .program import Deps

    win_in, win_out = wins["in"], wins["out"]
    row_in, row_out = wpr * win_in.stride, wpr * win_out.stride
    chunks = list(range(0, rows, per_chunk))
    for i, start in enumerate(chunks):
        cnt = min(per_chunk, rows - start)
        last = i + 1 == len(chunks)
        for part, (off, r0) in enumerate(_row_blocks(cnt)):
            prog.load(kind, win_addr=win_in.offset + r0 * row_in, buf=packed,
                      offset=4 * (start + r0) * row_in, rows=off, row_words=row_in,
                      deps=Deps(pop_next=i > 0 and part == 0,
                                push_next=r0 + off == cnt))  # fmt: skip
        prog.instr(pack_row_instr(_OPCODES[kind], src=0, dst=0, length=n, rows=cnt),
                   deps=Deps(pop_prev=True, pop_next=i > 0, push_prev=not last,
                             push_next=True),  # fmt: skip
                   what=f"{kind} rows {start}..{start + cnt}")
        for part, (off, r0) in enumerate(_row_blocks(cnt)):
            prog.store(kind, win_addr=win_out.offset + r0 * row_out, buf=bout,
                       offset=4 * (start + r0) * row_out, rows=off, row_words=row_out,
                       deps=Deps(pop_prev=part == 0,
                                 push_prev=not last and r0 + off == cnt))  # fmt: skip
    return prog


def _row_blocks(count: int):
    """(rows, first row) pieces of at most 65535 rows (a DMA instruction's ``rows`` field)."""
    for r0 in range(0, count, 65535):
        yield min(65535, count - r0), r0


def _as_int(x, fmt, name, policy, op, floor=None):
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex():
        raise UsageError(f"{name} must be an integer torch tensor, not {_describe(x)}")
    return fit_int(x, fmt, policy, op=op, name=name, floor=floor)


def _as_float(x, name):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise UsageError(f"{name} must be a floating-point torch tensor, not {_describe(x)}")
    if torch.isnan(x).any():
        raise UsageError(f"{name} must not contain NaN")
    return x


def _describe(x):
    return f"a tensor of {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__


def _rows_last(x, dim):
    if x.dim() == 0:
        raise UsageError("x must have at least one dimension")
    if not -x.dim() <= dim < x.dim():
        raise UsageError(f"dim must be in {-x.dim()}..{x.dim() - 1} for a {x.dim()}-d x, not {dim}")
    xt = x.movedim(dim, -1)
    return xt, xt.reshape(-1 if xt.numel() else 0, xt.shape[-1])


def _is_buffer(x) -> bool:
    from .memory import Buffer

    return isinstance(x, Buffer)


def _rows_op(dev, kind, x, dim, cfg, *, signed_out, out, policy, floor=None):
    """The device-buffer form of an op: rows in (a buffer, or a tensor as rows of ``dim``)."""
    if not _is_buffer(x):
        x = _as_int(x, cfg.in_fmt, "x", policy, kind, floor)
        if x.dim() != 2 or dim not in (-1, 1):
            raise UsageError(
                f"with out='device' x must be 2-D rows (the op along its last dimension), "
                f"not {x.dim()}-D along dim {dim}"
            )
    elif dim not in (-1, 1):
        raise UsageError(f"a device buffer of rows is processed along its rows (dim=-1), not {dim}")
    return _run_rows(dev, kind, x, signed_out=signed_out, out=out, policy=policy)


# ---- softmax -------------------------------------------------------------------------------


def softmax_int(dev, x, dim: int = -1, *, out: str = "host", range: str = "error"):
    """Softmax of integer logits (``in_dtype``; its minimum is a masked entry) along ``dim``:
    int64 probabilities with 1.0 == 2**15 (see ``generators/softmax/engine.py``).

    ``x`` may be a device buffer of rows (softmax over its last dimension); ``out="device"``
    returns the probabilities as a device buffer of rows (:class:`Rows`) instead. With
    ``range="saturate"`` a logit below the format saturates to the minimum plus one (the minimum
    itself means masked)."""
    cfg, _ = _engine(dev, "softmax")
    policy, floor = check_policy(range), cfg.in_fmt.min + 1
    if _is_buffer(x) or out == "device":
        return _rows_op(dev, "softmax", x, dim, cfg, signed_out=False, out=out, policy=policy,
                        floor=floor)  # fmt: skip
    x = _as_int(x, cfg.in_fmt, "x", policy, "softmax", floor)
    if x.numel() == 0:
        _rows_last(x, dim)  # the dim check
        return torch.zeros(x.shape, dtype=torch.int64)
    xt, rows = _rows_last(x, dim)
    out = _run_rows(dev, "softmax", rows, signed_out=False)
    return out.reshape(xt.shape).movedim(-1, dim)


def softmax(dev, x: torch.Tensor, dim: int = -1, *, mask: torch.Tensor | None = None,
            range: str = "error"):  # fmt: skip
    """``torch.softmax(x, dim)`` on the engine; ``-inf`` or ``mask == True`` entries are masked
    (a fully masked row gives zeros). Returns ``x.dtype`` probabilities (multiples of 2**-15).
    Other logits outside the input range (``+inf`` included) raise, or with
    ``range="saturate"`` are clamped and reported."""
    cfg, _ = _engine(dev, "softmax")
    policy = check_policy(range)
    x = _as_float(x, "x")
    fmt = cfg.in_fmt
    masked = torch.isneginf(x)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise UsageError(f"mask must be a bool torch tensor, not {_describe(mask)}")
        if mask.shape != x.shape:
            raise UsageError(f"mask must have x's shape {tuple(x.shape)}, not {tuple(mask.shape)}")
        masked = masked | mask
    q = fit_float(torch.where(masked, 0.0, x), cfg.in_frac, fmt, policy, op="softmax", name="x",
                  lo=fmt.min + 1)  # fmt: skip
    q = torch.where(masked, fmt.min, q)
    return (softmax_int(dev, q, dim).double() / 2**15).to(x.dtype)


# ---- GELU ----------------------------------------------------------------------------------


def gelu_int(dev, x, *, out: str = "host", range: str = "error"):
    """GELU of ``in_dtype`` integers (any shape): ``out_dtype`` integers as int64.

    ``x`` may be a device buffer of rows; ``out="device"`` keeps the result on the device as
    rows (:class:`Rows`; a tensor is then taken as rows of its last dimension)."""
    cfg, _ = _engine(dev, "gelu")
    policy = check_policy(range)
    if _is_buffer(x) or out == "device":
        return _rows_op(dev, "gelu", x, -1, cfg, signed_out=True, out=out, policy=policy)
    x = _as_int(x, cfg.in_fmt, "x", policy, "gelu")
    flat = x.reshape(-1)
    if flat.numel() == 0:
        return x.clone()
    n = min(cfg.max_len, cfg.depth * cfg.lanes, flat.numel())
    rows = -(-flat.numel() // n)
    padded = torch.zeros(rows * n, dtype=torch.int64)
    padded[: flat.numel()] = flat
    out = _run_rows(dev, "gelu", padded.view(rows, n), signed_out=True)
    return out.reshape(-1)[: flat.numel()].reshape(x.shape)


def gelu(dev, x: torch.Tensor, *, range: str = "error") -> torch.Tensor:
    """``F.gelu(x)`` on the engine: ``x`` quantised to ``in_dtype`` with ``in_frac`` fraction
    bits, result in multiples of ``2**-out_frac``, as ``x.dtype``. Values outside the input
    range (infinities included) raise, or with ``range="saturate"`` are clamped and reported."""
    cfg, _ = _engine(dev, "gelu")
    policy = check_policy(range)
    x = _as_float(x, "x")
    q = fit_float(x, cfg.in_frac, cfg.in_fmt, policy, op="gelu", name="x")
    return (gelu_int(dev, q).double() / 2**cfg.out_frac).to(x.dtype)


# ---- LayerNorm -----------------------------------------------------------------------------


def layer_norm_int(dev, x, gamma: torch.Tensor, beta: torch.Tensor, *, out: str = "host",
                   range: str = "error"):  # fmt: skip
    """LayerNorm over the last dimension of ``in_dtype`` integers with int16 ``gamma`` and
    ``beta`` (``gamma_frac`` / ``out_frac`` fraction bits): ``out_dtype`` integers as int64.

    ``x`` may be a device buffer of rows; ``out="device"`` keeps the result on the device."""
    cfg, wins = _engine(dev, "layernorm")
    policy = check_policy(range)
    if _is_buffer(x):
        n = _input_rows(dev, "layernorm", x, policy)[3]
    else:
        x = _as_int(x, cfg.in_fmt, "x", policy, "layernorm")
        n = x.shape[-1] if x.dim() else 0
    params = []
    for name, t in (("gamma", gamma), ("beta", beta)):
        t = _as_int(t, IntFormat(16), name, policy, "layernorm")
        if t.shape != (n,):
            raise UsageError(f"{name} must have shape ({n},), not {tuple(t.shape)}")
        params.append(t)
    gamma, beta = params
    if not _is_buffer(x) and out == "host" and x.dim() and x.numel() == 0:
        return torch.zeros(x.shape, dtype=torch.int64)
    if not 1 <= n <= cfg.max_len:
        raise UsageError(
            f"rows must have 1..{cfg.max_len} elements for this layernorm engine, not {n}"
        )
    _write_region(dev, "layernorm", wins["gamma"], gamma.long()[None].numpy(), cfg.lanes)
    _write_region(dev, "layernorm", wins["beta"], beta.long()[None].numpy(), cfg.lanes)
    if _is_buffer(x) or out == "device":
        return _rows_op(dev, "layernorm", x, -1, cfg, signed_out=True, out=out, policy=policy)
    _xt, rows = _rows_last(x, -1)
    return _run_rows(dev, "layernorm", rows, signed_out=True).reshape(x.shape)


def layer_norm(dev, x, normalized_shape, weight=None, bias=None, eps: float | None = None, *,
               range: str = "error"):  # fmt: skip
    """``F.layer_norm(x, normalized_shape, weight, bias)`` over the last dimension on the engine.

    ``eps`` must be None or equal to the engine's (a generation parameter). Values of ``x``,
    ``weight`` or ``bias`` outside their formats raise, or with ``range="saturate"`` are
    clamped and reported."""
    cfg, _ = _engine(dev, "layernorm")
    policy = check_policy(range)
    x = _as_float(x, "x")
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if len(shape) != 1 or x.dim() == 0 or shape[0] != x.shape[-1]:
        raise UsageError(
            "normalized_shape must be the size of x's last dimension "
            f"({x.shape[-1] if x.dim() else 'none'}), not {normalized_shape!r}"
        )
    if eps is not None and not math.isclose(eps, cfg.eps, rel_tol=1e-9, abs_tol=0):
        raise UsageError(f"eps must be the engine's {cfg.eps} (a generation parameter), not {eps}")
    n = shape[0]
    w = torch.ones(n, dtype=torch.float64) if weight is None else _as_float(weight, "weight")
    b = torch.zeros(n, dtype=torch.float64) if bias is None else _as_float(bias, "bias")
    ints = []
    for name, t, frac in (("weight", w, cfg.gamma_frac), ("bias", b, cfg.out_frac)):
        if t.shape != (n,):
            raise UsageError(f"{name} must have shape ({n},), not {tuple(t.shape)}")
        ints.append(fit_float(t, frac, IntFormat(16), policy, op="layer_norm", name=name))
    q = fit_float(x, cfg.in_frac, cfg.in_fmt, policy, op="layer_norm", name="x")
    return (layer_norm_int(dev, q, *ints).double() / 2**cfg.out_frac).to(x.dtype)
