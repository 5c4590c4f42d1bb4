"""PIM config validation, instruction encoding, golden model and cycle model (no RTL here)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from gatesmith.config import AccelConfig
from gatesmith.errors import ConfigError
from gatesmith.generators.engine import ErrorCode
from gatesmith.generators.pim import SPEC, GemvInstr, PimConfig
from gatesmith.generators.pim.cycles import (
    FIRST_ACT,
    PIPE,
    activation_bound,
    bandwidth_bound,
    schedule,
)
from gatesmith.generators.pim.model import (
    PimState,
    gemv,
    pack_operands,
    reference_gemv,
    unpack_results,
)
from gatesmith.generators.registry import engines


@pytest.mark.parametrize(
    "kwargs,exc,msg",
    [
        (dict(banks=65), ValueError, "banks must be an integer in 1..64, not 65"),
        (dict(banks=0), ValueError, "banks must be an integer in 1..64, not 0"),
        (dict(banks=2.0), TypeError, "banks must be an integer, not 2.0"),
        (dict(lanes=6), ValueError, "lanes must be a power of two in 1..64, not 6"),
        (dict(burst=32), ValueError, "burst must be an integer in 1..16, not 32"),
        (dict(row_size=8, lanes=8, burst=2), ValueError,
         "row_size must be a multiple of lanes * burst (16), not 8"),
        (dict(rows_per_bank=100), ValueError,
         "rows_per_bank must be a power of two in 2..65536, not 100"),
        (dict(dtype="int16"), ValueError, "dtype must be one of int8, int4, not 'int16'"),
        (dict(acc_width=15), ValueError, "acc_width must be an integer in 16..64, not 15"),
        (dict(dtype="int4", acc_width=7), ValueError, "acc_width must be an integer in 8..64, not 7"),
        (dict(t_rcd=0), ValueError, "t_rcd must be an integer in 1..64, not 0"),
        (dict(t_rp=65), ValueError, "t_rp must be an integer in 1..64, not 65"),
        (dict(t_ccd=1, burst=2), ValueError, "t_ccd must be >= burst (2), not 1"),
        (dict(dual_row_buffer=1), TypeError, "dual_row_buffer must be a bool, not 1"),
        (dict(vector_depth=128), ValueError, "vector_depth must be >= row_size (256), not 128"),
        (dict(result_depth=3), ValueError,
         "result_depth must be a power of two in 1..65536, not 3"),
        (dict(banks=64, rows_per_bank=4096, row_size=1024), ValueError,
         "the memories need 67113280 window words, more than the 4194304 an engine window "
         "holds; use fewer banks, rows or vector/result depth"),
    ],
)  # fmt: skip
def test_config_errors(kwargs, exc, msg):
    with pytest.raises(exc) as e:
        PimConfig(**kwargs)
    assert str(e.value) == msg


def test_registered_and_loadable_from_yaml_mapping():
    assert engines()["pim"] is SPEC
    assert set(SPEC.opcodes.values()) <= set(range(0x40, 0x50))
    cfg = AccelConfig.from_dict({"engines": {"pim": {"banks": 8, "dual_row_buffer": True}}})
    assert cfg.engine("pim") == PimConfig(banks=8, dual_row_buffer=True)
    with pytest.raises(ConfigError) as e:
        AccelConfig.from_dict({"engines": {"pim": {"lanes": 3}}})
    assert str(e.value) == "engines.pim.lanes must be a power of two in 1..64, not 3"


def test_instruction_round_trip():
    r = random.Random(0)
    for _ in range(50):
        ins = GemvInstr(*(r.randrange(1 << 16) for _ in range(6)), col_mode=r.random() < 0.5)
        words = ins.words()
        assert words[0] & 0xFF == 0x40
        assert GemvInstr.from_words(words) == ins


def test_window_regions_aligned_and_disjoint():
    for cfg in (PimConfig(), PimConfig(banks=3, lanes=2, dtype="int4", acc_width=40),
                PimConfig(banks=64, lanes=64, row_size=256, rows_per_bank=16)):  # fmt: skip
        spans = []
        for w in cfg.windows().values():
            size = w.depth * w.stride
            spans.append((w.offset, w.offset + size))
            assert w.offset % (1 << max(0, (size - 1).bit_length())) == 0, w
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("dtype", ["int8", "int4"])
@pytest.mark.parametrize("lanes", [1, 4, 8, 16])
def test_pack_operands_layout(dtype, lanes):
    cfg = PimConfig(lanes=lanes, dtype=dtype, row_size=64, burst=1, t_ccd=1, vector_depth=64)
    w = cfg.fmt.width
    vals = torch.arange(cfg.fmt.min, cfg.fmt.min + 4 * lanes) % (1 << w) + cfg.fmt.min
    words = pack_operands(vals, cfg)
    assert len(words) == len(vals) * w // 32 if lanes * w >= 32 else len(vals) // lanes
    bits = "".join(f"{int(x):032b}"[::-1][: min(32, lanes * w)] for x in words)
    got = [int(bits[i * w : (i + 1) * w][::-1], 2) for i in range(len(vals))]
    assert got == [int(v) & ((1 << w) - 1) for v in vals]


def test_unpack_results_sign_and_width():
    words = np.array([0xFFFF_FFFF, 0x7FFF_FFFF, 0x8000_0000], dtype=np.uint32)
    assert unpack_results(words, 32).tolist() == [-1, 2**31 - 1, -(2**31)]
    assert unpack_results(words, 16).tolist() == [-1, -1, 0]
    wide = np.array([0xFFFF_FFFE, 0x0000_00FF, 5, 0], dtype=np.uint32)
    assert unpack_results(wide, 40).tolist() == [-2, 5]


def test_model_semantics_against_reference():
    """One instruction per dot product layout: rows hold w segments, cols_last cuts the tail."""
    cfg = PimConfig(banks=2, lanes=4, row_size=16, rows_per_bank=16, vector_depth=64,
                    result_depth=8, burst=2, t_ccd=2)  # fmt: skip
    g = torch.Generator().manual_seed(3)
    st = PimState(cfg)
    st.weights = torch.randint(-128, 128, st.weights.shape, generator=g)
    st.vector = torch.randint(-128, 128, st.vector.shape, generator=g)
    ins = GemvInstr(rounds=3, segments=2, cols_last=1, w_row=2, x_seg=1, y_base=4)
    assert gemv(st, ins) == ErrorCode.NONE
    for b in range(2):
        for p in range(3):
            w = st.weights[b, 2 + 2 * p : 4 + 2 * p].reshape(-1)[: 16 + 8]
            x = st.vector[16 : 16 + 24]
            assert st.results[b, 4 + p] == reference_gemv(w[None], x)[0]
    st.xoff = [0, 2]
    ins = GemvInstr(rounds=1, segments=2, cols_last=2, col_mode=True)
    gemv(st, ins)
    w = st.weights[1, :2].reshape(-1)
    assert st.results[1, 0] == reference_gemv(w[None], st.vector[32:64])[0]


def test_reference_wraps_like_the_accumulator():
    w = torch.full((1, 4), -128)
    x = torch.full((4,), -128)
    assert reference_gemv(w, x, 16).item() == (4 * 16384) - 65536
    assert reference_gemv(w, x, 32).item() == 65536


@pytest.mark.parametrize("seed", range(20))
def test_cycle_model_properties(seed):
    """Beats are all there, two row buffers never lose, and a burst-only stream meets the bound."""
    r = random.Random(seed)
    kw = dict(banks=r.randint(1, 8), lanes=r.choice([2, 4, 8]), row_size=64, burst=r.choice([1, 2]),
              t_rcd=r.randint(1, 12), t_rp=r.randint(1, 12), rows_per_bank=512)  # fmt: skip
    kw["t_ccd"] = kw["burst"] + r.randint(0, 1)
    single, dual = PimConfig(**kw), PimConfig(**kw, dual_row_buffer=True)
    ins = GemvInstr(rounds=r.randint(1, 30), segments=r.randint(1, 4),
                    cols_last=r.randint(1, single.cols_per_row))  # fmt: skip
    s1, s2 = schedule(single, ins), schedule(dual, ins)
    full = single.cols_per_row * (ins.segments - 1) + ins.cols_last
    assert s1.beats == s2.beats == ins.rounds * full * single.burst
    assert len(s1.cols) == len(set(s1.cols)) == ins.rounds * full
    assert s2.done <= s1.done
    assert all(b - a >= single.t_ccd for a, b in zip(s1.cols, s1.cols[1:]))
    # the analytic count: start + rows x (t_rcd + bursts + t_rp), the last t_rp replaced by the
    # longer of precharge and datapath drain
    full_rows = GemvInstr(rounds=ins.rounds, segments=ins.segments, cols_last=single.cols_per_row)
    s1 = schedule(single, full_rows)
    job = single.t_rcd + (single.cols_per_row - 1) * single.t_ccd + single.burst + single.t_rp
    tail = max(PIPE, single.t_rp) - single.t_rp
    assert s1.done == FIRST_ACT + full_rows.jobs * job + tail
    if single.t_ccd == single.burst:
        n, k = ins.rounds * single.banks, ins.segments * single.row_size
        assert s1.done == activation_bound(single, n, k) + FIRST_ACT + tail
        assert schedule(dual, full_rows).done >= bandwidth_bound(dual, n, k)
