"""Bit-exact golden model of the bit-serial engine, in torch integer ops.

What the engine computes for one MATMUL instruction (``Instr``)::

    R[m, n] = wrap_acc( sum_g  S[n, g] * P[m, n, g] )
    P[m, n, g] = sum_{k in group g, k < K}  Wv[n, k] * Av[m, k]            (exact, no wrap)

``Av`` are the activation codes decoded as ``a_bits``-bit integers (two's complement, or
bipolar-INT: value = sum_i (2 b_i - 1) 2^i = 2u - (2^b - 1)). ``Wv`` are the weight codes decoded
by the group's datatype: INT of ``w_bits`` bits in the weight encoding, or (when the instruction
sets ``mixed``) one of BitMoD's FP3/FP4 integer grids, where the redundant negative-zero code holds
the "extra resolution" or "extra asymmetry" value (``DATATYPES``). ``S`` is the group's 16-bit
unsigned scale, or 1 when ``scaled`` is clear. ``wrap_acc`` wraps modulo ``2**acc_width``.

The hardware turns every weight into sign and magnitude and walks the magnitude's bit-planes,
``bits_per_cycle`` planes per cycle: ``P = sum_i 2^i sum_k bit_i(|Wv|) * sign(Wv) * Av``. A
magnitude too wide for the planes (only FP4's extra-asymmetry value 16 at 4 bits) is walked as
half of it against a doubled activation. :func:`matmul_planes` computes exactly that; tests hold it
equal to ``Wv @ Av.T`` in int64.

Cycles (from the cycle the instruction is accepted to its ``done`` pulse)::

    cycles = ceil(N / pes) * M * ceil(K / lanes) * ceil(planes / bits_per_cycle) + OVERHEAD

with ``planes = w_bits`` (BitMoD datatypes included). A rejected instruction retires after
``REJECT_CYCLES``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from amaranth.lib import data

from ...hdl.fields import struct_fields
from ..engine import ErrorCode, pack_instr, unpack_instr
from .config import SCALE_BITS, BitserialConfig

__all__ = [
    "OPCODES",
    "DATATYPES",
    "DT_INT",
    "Instr",
    "decode_int",
    "decode_weights",
    "datatype_grid",
    "planes_of",
    "check",
    "cycles",
    "matmul",
    "matmul_planes",
    "pack_slots",
    "unpack_slots",
    "weight_image",
    "act_image",
    "group_image",
    "result_from_image",
    "execute",
    "OVERHEAD",
    "REJECT_CYCLES",
]

OPCODES = {"matmul": 0x30}
OVERHEAD = 18  # check, 2 multiplier cycles, range, verdict, start, read, read register, 2 decode
# steps, 3 plane-sum levels, 3 dequantisation cycles (two multiplier registers, their sum),
# acc+write, done
REJECT_CYCLES = 7

DT_INT = 0
# id -> (name, code bits, magnitude grid indexed by the code's low bits, extra value)
# The extra value replaces negative zero (code: sign bit set, magnitude index 0).
_FP3 = (0, 1, 2, 4)
_FP4 = (0, 1, 2, 3, 4, 6, 8, 12)
DATATYPES = {
    1: ("fp3_er_pos", 3, _FP3, 3),
    2: ("fp3_er_neg", 3, _FP3, -3),
    3: ("fp3_ea_pos", 3, _FP3, 6),
    4: ("fp3_ea_neg", 3, _FP3, -6),
    5: ("fp4_er_pos", 4, _FP4, 10),
    6: ("fp4_er_neg", 4, _FP4, -10),
    7: ("fp4_ea_pos", 4, _FP4, 16),
    8: ("fp4_ea_neg", 4, _FP4, -16),
}

# Bit offsets of the MATMUL instruction fields (bit 0 = bit 0 of word 0; [7:0] is the opcode).
MatmulLayout = data.StructLayout(
    {
        "opcode": 8,
        "w_bits_m1": 3,
        "a_bits_m1": 3,
        "w_enc": 1,  # 0 two's complement, 1 bipolar-INT
        "a_enc": 1,
        "mixed": 1,  # per-group BitMoD datatype ids from the group memory
        "scaled": 1,  # per-group scales from the group memory (else 1)
        "m": 14,
        "n": 14,
        "k": 16,
        "w_base": 16,
        "a_base": 16,
        "g_base": 16,
        "r_base": 16,
        "reserved": 2,
    }
)
FIELDS = struct_fields(MatmulLayout)


@dataclass(frozen=True)
class Instr:
    """One MATMUL: ``R = A[m x k] @ W[n x k].T`` with memory bases in words (see module doc)."""

    m: int
    n: int
    k: int
    w_bits: int = 8
    a_bits: int = 8
    w_enc: str = "twos"
    a_enc: str = "twos"
    mixed: bool = False
    scaled: bool = False
    w_base: int = 0
    a_base: int = 0
    g_base: int = 0
    r_base: int = 0

    def words(self) -> list[int]:
        v = {
            "w_bits_m1": self.w_bits - 1,
            "a_bits_m1": self.a_bits - 1,
            "w_enc": int(self.w_enc == "bipolar"),
            "a_enc": int(self.a_enc == "bipolar"),
            "mixed": int(self.mixed),
            "scaled": int(self.scaled),
        }
        v.update({f: getattr(self, f) for f in ("m", "n", "k", "w_base", "a_base", "g_base",
                                                 "r_base")})
        return pack_instr(OPCODES["matmul"], [(o, w, v[name]) for name, (o, w) in FIELDS.items()])

    @classmethod
    def from_words(cls, words: list[int]) -> Instr:
        f = unpack_instr(words, FIELDS)
        enc = ("twos", "bipolar")
        return cls(
            m=f["m"], n=f["n"], k=f["k"], w_bits=f["w_bits_m1"] + 1, a_bits=f["a_bits_m1"] + 1,
            w_enc=enc[f["w_enc"]], a_enc=enc[f["a_enc"]], mixed=bool(f["mixed"]),
            scaled=bool(f["scaled"]), w_base=f["w_base"], a_base=f["a_base"],
            g_base=f["g_base"], r_base=f["r_base"],
        )

    def replace(self, **kw) -> Instr:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(kw)
        return Instr(**d)


# ---------------------------------------------------------------------------------------------
# Number decoding
# ---------------------------------------------------------------------------------------------


def decode_int(codes: torch.Tensor, bits: int, enc: str) -> torch.Tensor:
    """Codes (their low ``bits`` bits) -> int64 values, two's complement or bipolar-INT."""
    u = codes.to(torch.int64) & ((1 << bits) - 1)
    if enc == "bipolar":
        return 2 * u - ((1 << bits) - 1)
    return u - ((u >> (bits - 1)) & 1) * (1 << bits)


def datatype_grid(dt: int, w_bits: int, enc: str = "twos") -> torch.Tensor:
    """All values of datatype ``dt``, indexed by code (``w_bits`` used for INT)."""
    if dt == DT_INT:
        return decode_int(torch.arange(1 << w_bits), w_bits, enc)
    _, bits, mags, extra = DATATYPES[dt]
    codes = torch.arange(1 << bits)
    return _decode_fp(codes, dt)


def _decode_fp(codes: torch.Tensor, dt: int) -> torch.Tensor:
    _, bits, mags, extra = DATATYPES[dt]
    c = codes.to(torch.int64) & ((1 << bits) - 1)
    idx = c & ((1 << (bits - 1)) - 1)
    neg = (c >> (bits - 1)) & 1
    mag = torch.tensor(mags, dtype=torch.int64)[idx]
    v = torch.where(neg.bool(), -mag, mag)
    return torch.where(c == (1 << (bits - 1)), torch.full_like(v, extra), v)


def valid_datatype(dt: int, w_bits: int) -> bool:
    """Which ids a mixed instruction at ``w_bits`` may use (others decode to 0 and raise
    BAD_FIELD): INT always, FP3 at 3 or 4 bits, FP4 at 4 bits."""
    if dt == DT_INT:
        return True
    if dt in DATATYPES:
        return DATATYPES[dt][1] <= w_bits
    return False


def decode_weights(codes, dts, w_bits: int, enc: str, mixed: bool) -> torch.Tensor:
    """Weight codes [..., K] with per-element datatype ids [..., K] -> int64 values."""
    v = decode_int(codes, w_bits, enc)
    if not mixed:
        return v
    dts = dts.to(torch.int64)
    out = torch.where(dts == DT_INT, v, torch.zeros_like(v))
    for dt in DATATYPES:
        if valid_datatype(dt, w_bits):
            out = torch.where(dts == dt, _decode_fp(codes, dt), out)
    return out


def planes_of(w_bits: int, mixed: bool) -> int:
    """Magnitude bit-planes one pass walks (``mixed`` costs no extra plane)."""
    return w_bits


# ---------------------------------------------------------------------------------------------
# Instruction checks and cycles
# ---------------------------------------------------------------------------------------------


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def check(cfg: BitserialConfig, ins: Instr) -> ErrorCode:
    """The error code the engine raises at accept (NONE when it runs the instruction)."""
    if ins.m == 0 or ins.n == 0 or ins.k == 0:
        return ErrorCode.BAD_SHAPE
    if ins.w_bits > cfg.w_max_bits or ins.a_bits > cfg.a_max_bits:
        return ErrorCode.BAD_FIELD
    if ins.w_enc not in cfg.encodings or ins.a_enc not in cfg.encodings:
        return ErrorCode.BAD_FIELD
    if ins.mixed and (not cfg.bitmod or ins.w_bits not in (3, 4)):
        return ErrorCode.BAD_FIELD
    nt, kc, ng = _cdiv(ins.n, cfg.pes), _cdiv(ins.k, cfg.lanes), _cdiv(ins.k, cfg.group_size)
    if ins.w_base + nt * kc > cfg.w_depth or ins.a_base + ins.m * kc > cfg.a_depth:
        return ErrorCode.OUT_OF_RANGE
    if (ins.mixed or ins.scaled) and ins.g_base + nt * ng > cfg.g_depth:
        return ErrorCode.OUT_OF_RANGE
    if ins.r_base + nt * ins.m > cfg.r_depth:
        return ErrorCode.OUT_OF_RANGE
    return ErrorCode.NONE


def cycles(cfg: BitserialConfig, ins: Instr) -> int:
    """Cycles from accept to ``done`` (see the module docstring)."""
    if check(cfg, ins) != ErrorCode.NONE:
        return REJECT_CYCLES
    passes = _cdiv(ins.n, cfg.pes) * ins.m * _cdiv(ins.k, cfg.lanes)
    return passes * _cdiv(planes_of(ins.w_bits, ins.mixed), cfg.bits_per_cycle) + OVERHEAD


def psum_width(cfg: BitserialConfig) -> int:
    """Signed bits that hold any group's exact partial sum."""
    return cfg.a_max_bits + 1 + cfg.max_planes + math.ceil(math.log2(cfg.group_size)) + 1


# ---------------------------------------------------------------------------------------------
# The computation
# ---------------------------------------------------------------------------------------------


def _group_ids(k: int, group_size: int) -> torch.Tensor:
    return torch.arange(k) // group_size


def _wrap(t: torch.Tensor, width: int) -> torch.Tensor:
    if width >= 64:
        return t
    t = t & ((1 << width) - 1)
    return t - ((t >> (width - 1)) & 1) * (1 << width)


def matmul_planes(av: torch.Tensor, wv: torch.Tensor, group_size: int, planes: int):
    """Per-group partial sums [M, N, NG] the way the PEs form them: sign-magnitude bit-planes."""
    m, k = av.shape
    ng = _cdiv(k, group_size)
    sgn = torch.where(wv < 0, -1, 1).to(torch.int64)
    mag = wv.abs()
    dbl = mag >= (1 << planes)  # FP4's 16 at 4 planes: 8 against a doubled activation
    assert not bool((dbl & (mag & 1).bool()).any()), "only even magnitudes may be halved"
    mag = torch.where(dbl, mag >> 1, mag)
    assert mag.numel() == 0 or int(mag.max()) < (1 << planes), "magnitude exceeds the planes"
    sgn = sgn << dbl.to(torch.int64)
    gid = _group_ids(k, group_size)
    out = torch.zeros(m, wv.shape[0], ng, dtype=torch.int64)
    for i in range(planes):
        plane = ((mag >> i) & 1) * sgn  # [N, K] in {-1, 0, 1}
        for g in range(ng):
            sel = gid == g
            out[:, :, g] += (av[:, sel] @ plane[:, sel].T) << i
    return out


def matmul(
    cfg: BitserialConfig,
    ins: Instr,
    a_codes: torch.Tensor,
    w_codes: torch.Tensor,
    dtypes: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, ErrorCode]:
    """``(R [M, N] int64, partial sums [M, N, NG] int64, error)`` for tensors of codes.

    ``a_codes`` [M, K], ``w_codes`` [N, K], ``dtypes`` and ``scales`` [N, NG] (NG groups of
    ``cfg.group_size`` along K). ``R`` is wrapped to ``acc_width`` bits.
    """
    err = check(cfg, ins)
    m, k, n = ins.m, ins.k, ins.n
    ng = _cdiv(k, cfg.group_size)
    gid = _group_ids(k, cfg.group_size)
    if dtypes is None:
        dtypes = torch.zeros(n, ng, dtype=torch.int64)
    if scales is None:
        scales = torch.ones(n, ng, dtype=torch.int64)
    dt_el = dtypes.to(torch.int64)[:, gid]
    if err == ErrorCode.NONE and ins.mixed:
        bad = [d for d in dt_el.unique().tolist() if not valid_datatype(d, ins.w_bits)]
        if bad:
            err = ErrorCode.BAD_FIELD
    av = decode_int(a_codes[:m, :k], ins.a_bits, ins.a_enc)
    wv = decode_weights(w_codes[:n, :k], dt_el, ins.w_bits, ins.w_enc, ins.mixed)
    psums = matmul_planes(av, wv, cfg.group_size, planes_of(ins.w_bits, ins.mixed))
    if ins.scaled:
        s = scales.to(torch.int64) & ((1 << SCALE_BITS) - 1)
    else:
        s = torch.ones(n, ng, dtype=torch.int64)
    r = _wrap((psums * s[None]).sum(-1), cfg.acc_width)
    return r, psums, err


# ---------------------------------------------------------------------------------------------
# Memory images: how the engine lays tensors out in its memories (shared with the host packer)
# ---------------------------------------------------------------------------------------------


def pack_slots(values, slot_bits: int, stride: int) -> np.ndarray:
    """[E, nslots] integers -> [E, stride] uint32 words, slot ``i`` at bit ``i * slot_bits``."""
    v = np.asarray(values, dtype=np.int64).astype(np.uint64) & np.uint64((1 << slot_bits) - 1)
    e, ns = v.shape
    bits = (v[..., None] >> np.arange(slot_bits, dtype=np.uint64)) & np.uint64(1)
    bits = bits.reshape(e, ns * slot_bits)
    total = stride * 32
    if bits.shape[1] > total:
        raise ValueError(f"{ns} slots of {slot_bits} bits do not fit {stride} words")
    bits = np.concatenate([bits, np.zeros((e, total - bits.shape[1]), np.uint64)], axis=1)
    words = (bits.reshape(e, stride, 32) << np.arange(32, dtype=np.uint64)).sum(-1)
    return words.astype(np.uint32)


def unpack_slots(words, slot_bits: int, nslots: int) -> np.ndarray:
    """Inverse of :func:`pack_slots`: [E, stride] uint32 -> [E, nslots] unsigned int64."""
    w = np.asarray(words, dtype=np.uint64)
    e = w.shape[0]
    bits = ((w[..., None] >> np.arange(32, dtype=np.uint64)) & np.uint64(1)).reshape(e, -1)
    bits = bits[:, : nslots * slot_bits].reshape(e, nslots, slot_bits)
    return (bits << np.arange(slot_bits, dtype=np.uint64)).sum(-1).astype(np.int64)


def _pad2(t: np.ndarray, r: int, c: int) -> np.ndarray:
    out = np.zeros((r, c), dtype=np.int64)
    out[: t.shape[0], : t.shape[1]] = t
    return out


def weight_image(cfg: BitserialConfig, w_codes) -> np.ndarray:
    """Weight codes [N, K] -> words [ceil(N/pes) * ceil(K/lanes), stride]; entry t*KC + c."""
    w = np.asarray(w_codes, dtype=np.int64)
    nt, kc = _cdiv(w.shape[0], cfg.pes), _cdiv(w.shape[1], cfg.lanes)
    w = _pad2(w, nt * cfg.pes, kc * cfg.lanes).reshape(nt, cfg.pes, kc, cfg.lanes)
    slots = w.transpose(0, 2, 1, 3).reshape(nt * kc, cfg.pes * cfg.lanes)
    return pack_slots(slots, cfg.w_max_bits, cfg.stride_of(cfg.w_word_bits))


def act_image(cfg: BitserialConfig, a_codes) -> np.ndarray:
    """Activation codes [M, K] -> words [M * ceil(K/lanes), stride]; entry m*KC + c."""
    a = np.asarray(a_codes, dtype=np.int64)
    kc = _cdiv(a.shape[1], cfg.lanes)
    a = _pad2(a, a.shape[0], kc * cfg.lanes).reshape(a.shape[0] * kc, cfg.lanes)
    return pack_slots(a, cfg.a_max_bits, cfg.stride_of(cfg.a_word_bits))


def group_image(cfg: BitserialConfig, dtypes, scales) -> np.ndarray:
    """Datatype ids and scales [N, NG] -> words [ceil(N/pes) * NG, stride]; entry t*NG + g,
    slot p = scale (bits 15:0) | datatype id << 16."""
    d, s = np.asarray(dtypes, dtype=np.int64), np.asarray(scales, dtype=np.int64)
    nt, ng = _cdiv(d.shape[0], cfg.pes), d.shape[1]
    v = (s & 0xFFFF) | ((d & 0xF) << 16)
    v = _pad2(v, nt * cfg.pes, ng).reshape(nt, cfg.pes, ng).transpose(0, 2, 1)
    return pack_slots(v.reshape(nt * ng, cfg.pes), 32, cfg.stride_of(cfg.g_word_bits))


def result_from_image(cfg: BitserialConfig, words, m: int, n: int) -> torch.Tensor:
    """Result words [ceil(N/pes) * M, stride] (entry t*M + m) -> R [M, N] int64."""
    nt = _cdiv(n, cfg.pes)
    v = unpack_slots(np.asarray(words)[: nt * m], 64, cfg.pes)
    v = v.reshape(nt, m, cfg.pes).transpose(1, 0, 2).reshape(m, nt * cfg.pes)[:, :n]
    return _wrap(torch.from_numpy(np.ascontiguousarray(v)), cfg.acc_width)


def _unimage(cfg, img, base, entries, slot_bits, nslots):
    return unpack_slots(np.asarray(img)[base : base + entries], slot_bits, nslots)


def execute(cfg: BitserialConfig, ins: Instr, wmem, amem, gmem, rmem) -> ErrorCode:
    """Run ``ins`` on memory images (numpy [depth, stride] uint32), writing ``rmem`` in place,
    exactly as the engine does: full tiles of ``pes`` results, also for rows past ``n``."""
    err = check(cfg, ins)
    if err != ErrorCode.NONE:
        return err
    nt, kc, ng = _cdiv(ins.n, cfg.pes), _cdiv(ins.k, cfg.lanes), _cdiv(ins.k, cfg.group_size)
    npad = nt * cfg.pes
    w = _unimage(cfg, wmem, ins.w_base, nt * kc, cfg.w_max_bits, cfg.pes * cfg.lanes)
    w = w.reshape(nt, kc, cfg.pes, cfg.lanes).transpose(0, 2, 1, 3).reshape(npad, kc * cfg.lanes)
    a = _unimage(cfg, amem, ins.a_base, ins.m * kc, cfg.a_max_bits, cfg.lanes)
    a = a.reshape(ins.m, kc * cfg.lanes)
    if ins.mixed or ins.scaled:
        g = _unimage(cfg, gmem, ins.g_base, nt * ng, 32, cfg.pes)
        g = g.reshape(nt, ng, cfg.pes).transpose(0, 2, 1).reshape(npad, ng)
        dts, scs = torch.from_numpy((g >> 16) & 0xF), torch.from_numpy(g & 0xFFFF)
    else:
        dts = scs = None
    full = ins.replace(n=npad)
    r, _, err = matmul(cfg, full, torch.from_numpy(a), torch.from_numpy(w), dts, scs)
    if ins.mixed:  # datatype ids are only checked on rows < n
        err = matmul(cfg, ins, torch.from_numpy(a), torch.from_numpy(w)[: ins.n],
                     dts[: ins.n], scs[: ins.n])[2]
    rows = r.reshape(ins.m, nt, cfg.pes).permute(1, 0, 2).reshape(nt * ins.m, cfg.pes)
    rmem[ins.r_base : ins.r_base + nt * ins.m] = pack_slots(
        rows.numpy(), 64, cfg.stride_of(cfg.r_word_bits)
    )
    return err
