"""Host driver of the systolic engine: tiling, operand layout, double buffering.

:func:`matmul` runs ``a @ b`` of any shape. The GEMM is cut into output tiles that fit half of the
accumulator and K-chunks whose operands fit half of each scratchpad memory; chunk ``i + 1``'s
operands are written into the other half while chunk ``i`` computes (the engine reads one half,
the host writes the other), and a tile's results are read back while the next tile computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..generators.engine import pack_instr
from ..generators.systolic import OPCODES
from ..generators.systolic.config import SystolicConfig
from ..generators.systolic.engine import DATAFLOW_CODES, GEMM_FIELDS, window_layout
from ..generators.systolic.layout import os_operands, pack_words, unpack_acc, ws_operands

__all__ = ["matmul", "plan", "Plan", "gemm_instr", "default_dataflow"]

_MAX_DIM = 65535  # an instruction's M, N, K fields are 16 bits; the host tiles larger shapes


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def gemm_instr(dataflow: str, m: int, k: int, n: int, *, acc: int = 0, left: int = 0,
               top: int = 0, accumulate: bool = False) -> list[int]:  # fmt: skip
    """The 4 instruction words of one GEMM (hardware roles: IS passes M/N swapped)."""
    f = GEMM_FIELDS
    return pack_instr(
        OPCODES["gemm"],
        [
            (f["dataflow"][0], 2, DATAFLOW_CODES[dataflow]),
            (f["accumulate"][0], 1, int(accumulate)),
            (f["m"][0], 16, m),
            (f["n"][0], 16, n),
            (f["k"][0], 16, k),
            (f["acc_base"][0], 16, acc),
            (f["left_base"][0], 16, left),
            (f["top_base"][0], 16, top),
        ],
    )


def default_dataflow(cfg: SystolicConfig) -> str:
    for d in ("os", "ws", "is"):
        if d in cfg.dataflows:
            return d
    raise AssertionError("a config always has a dataflow")


@dataclass(frozen=True)
class Plan:
    """Tile sizes in hardware roles: output tiles mt x nt, K chunks of kc."""

    mt: int
    nt: int
    kc: int

    def chunks(self, m: int, k: int, n: int):
        """(m0, n0, k0, tile_index, first_chunk, last_chunk) in issue order."""
        tile = 0
        for m0 in range(0, m, self.mt):
            for n0 in range(0, n, self.nt):
                for k0 in range(0, k, self.kc):
                    yield m0, n0, k0, tile, k0 == 0, k0 + self.kc >= k
                tile += 1


def plan(m: int, k: int, n: int, dataflow: str, cfg: SystolicConfig) -> Plan:
    """Largest tiles whose operands fit half a scratchpad and results half the accumulator."""
    R, C = cfg.rows, cfg.cols
    half, acc_half = cfg.spad_depth // 2, cfg.acc_depth // 2
    if dataflow == "os":
        kc = min(k, half)
        mt = min(m, (half // kc) * R)
        nt = min(n, (half // kc) * C)
    else:
        kc = min(k, (half // R) * R) if k > half else k
        nt = min(n, (half // kc) * C)
        mt = min(m, half // _ceil(kc, R))
    mt = min(mt, acc_half, _MAX_DIM)
    nt = min(nt, max(C, (acc_half // mt) * C), _MAX_DIM // C * C)
    while _ceil(nt, C) * mt > acc_half:
        mt = max(1, acc_half // _ceil(nt, C))
    if dataflow == "os":
        mt = max(R, mt // R * R) if mt >= R else mt
    # balance: the same number of tiles, evenly sized (a sliver of a last tile pays a whole
    # fold's minimum period); rounded up to the array's granularity, never above the limit
    mt = _balanced(m, max(1, mt), R if dataflow == "os" else 1)
    nt = _balanced(n, max(1, nt), C)
    kc = _balanced(k, max(1, kc), 1 if dataflow == "os" else R)
    return Plan(mt=mt, nt=nt, kc=kc)


def _balanced(total: int, limit: int, grain: int) -> int:
    """The smallest tile (a multiple of ``grain`` where possible) giving ceil(total/limit) tiles."""
    tiles = _ceil(total, limit)
    size = _ceil(total, tiles)
    rounded = _ceil(size, grain) * grain
    return rounded if rounded <= limit else size


def _check_operands(a, b, cfg: SystolicConfig):
    fmt = cfg.fmt
    want = {"int8": "torch.int8", "uint8": "torch.uint8", "int16": "torch.int16"}.get(
        fmt.name, "an integer dtype"
    )
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise UsageError(f"{name} must be a torch tensor, not {type(t).__name__}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise UsageError(
                f"{name} must be an integer tensor ({want} for this {fmt.name} engine), "
                f"not {t.dtype}"
            )
        if t.dim() != 2:
            raise UsageError(f"{name} must be 2-D (rows x columns), not {t.dim()}-D {tuple(t.shape)}")
        if t.numel():
            lo, hi = int(t.min()), int(t.max())
            if lo < fmt.min or hi > fmt.max:
                raise UsageError(
                    f"{name} has values in {lo}..{hi}, outside this engine's {fmt.name} "
                    f"range {fmt.min}..{fmt.max}"
                )
    if a.shape[1] != b.shape[0]:
        raise UsageError(
            f"a and b do not chain: a is {a.shape[0]}x{a.shape[1]}, b is "
            f"{b.shape[0]}x{b.shape[1]} (a's columns must equal b's rows)"
        )


def matmul(dev, a: torch.Tensor, b: torch.Tensor, *, dataflow: str | None = None) -> torch.Tensor:
    """``a @ b`` on the device's systolic engine.

    ``a`` (M x K) and ``b`` (K x N) are integer tensors whose values fit the engine's format
    (int8 by default). Returns a torch.int32 tensor (int64 when acc_width > 32) equal to
    ``a.long() @ b.long()`` reduced modulo ``2**acc_width`` (it is equal outright when no
    partial sum overflows the accumulator). ``dataflow`` picks one of the built-in dataflows
    (default: os if built, else ws, else is).
    """
    cfg = dev.config.engine("systolic")
    if cfg is None:
        have = ", ".join(type(e).kind for e in dev.config.engines)
        raise UsageError(f"this accelerator has no systolic engine (it has: {have})")
    _check_operands(a, b, cfg)
    df = dataflow or default_dataflow(cfg)
    if df not in DATAFLOW_CODES:
        raise UsageError(f"dataflow must be one of os, ws, is, not {df!r}")
    if df not in cfg.dataflows:
        raise UsageError(
            f"dataflow {df!r} is not built into this accelerator "
            f"(built: {', '.join(cfg.dataflows)})"
        )
    out_dtype = torch.int32 if cfg.acc_width <= 32 else torch.int64
    M, K, N = a.shape[0], a.shape[1], b.shape[1]
    if 0 in (M, K, N):
        return torch.zeros((M, N), dtype=out_dtype)
    if df == "is":
        ha, hb = b.t().to(torch.int64), a.t().to(torch.int64)
    else:
        ha, hb = a.to(torch.int64), b.to(torch.int64)
    hm, hk, hn = ha.shape[0], ha.shape[1], hb.shape[1]
    out = _run(dev, ha, hb, df, cfg, plan(hm, hk, hn, df, cfg))
    out = out.t() if df == "is" else out
    return out.contiguous().to(out_dtype)


def _run(dev, ha, hb, df, cfg: SystolicConfig, p: Plan) -> torch.Tensor:
    lay = window_layout(cfg)
    base = dev.window_base("systolic")
    lw, tw, aw = lay["left"], lay["top"], lay["acc"]
    half, acc_half = cfg.spad_depth // 2, cfg.acc_depth // 2
    hm, hk, hn = ha.shape[0], ha.shape[1], hb.shape[1]
    out = torch.zeros((hm, hn), dtype=torch.int64)
    start = dev.retired()
    pending: list[tuple[int, int, int, int, int]] = []  # (issue index, m0, n0, acc half, tile)

    def read_tile(entry):
        idx, m0, n0, ah, _ = entry
        dev.wait_retired(start + idx + 1)
        mt, nt = min(p.mt, hm - m0), min(p.nt, hn - n0)
        rows = _ceil(nt, cfg.cols) * mt
        words = dev.read(base + 4 * (aw.offset + ah * acc_half * aw.stride), rows * aw.stride)
        out[m0 : m0 + mt, n0 : n0 + nt] = unpack_acc(words, mt, nt, cfg, aw.stride)

    for idx, (m0, n0, k0, tile, first, last) in enumerate(p.chunks(hm, hk, hn)):
        buf = idx % 2
        if idx >= 2:
            dev.wait_retired(start + idx - 1)  # chunk idx-2 used this buffer
        ah = tile % 2
        if first:
            for e in [e for e in pending if e[3] == ah]:
                read_tile(e)  # its accumulator half is about to be reused
                pending.remove(e)
        mt, nt, kc = min(p.mt, hm - m0), min(p.nt, hn - n0), min(p.kc, hk - k0)
        sa = ha[m0 : m0 + mt, k0 : k0 + kc]
        sb = hb[k0 : k0 + kc, n0 : n0 + nt]
        left, top = os_operands(sa, sb, cfg) if df == "os" else ws_operands(sa, sb, cfg)
        w = cfg.fmt.width
        dev.write(base + 4 * (lw.offset + buf * half * lw.stride),
                  pack_words(left, w, lw.width // 32, lw.stride))  # fmt: skip
        dev.write(base + 4 * (tw.offset + buf * half * tw.stride),
                  pack_words(top, w, tw.width // 32, tw.stride))  # fmt: skip
        instr = gemm_instr(df, mt, kc, nt, acc=ah * acc_half, left=buf * half, top=buf * half,
                           accumulate=not first)  # fmt: skip
        dev.execute([instr])
        if last:
            pending.append((idx, m0, n0, ah, tile))
    for e in pending:
        read_tile(e)
    return out
