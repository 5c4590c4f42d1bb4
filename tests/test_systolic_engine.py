"""Systolic engine in the Amaranth simulator: bit-exact vs the golden model, cycles exact.

Small configs only (the Verilator regressions in test_systolic_rtl.py cover larger ones).
"""

import pytest
import torch

from gatesmith.generators.engine import ErrorCode
from gatesmith.generators.systolic import model
from gatesmith.generators.systolic.config import SystolicConfig

from .systolic_amsim import rand_operands, run_gemms

# (1, 5, 3) and (3, 5, 1): one-row WS (IS) folds repeated over K write one address on
# consecutive beats of a one-row array (the write-back forwards its sum)
SHAPES = [(1, 1, 1), (2, 3, 3), (3, 5, 4), (5, 2, 7), (4, 8, 6), (7, 1, 2), (1, 5, 3), (3, 5, 1)]


@pytest.mark.parametrize(
    "rows,cols,dtype,acc",
    [(2, 3, "int8", "cpa"), (3, 2, "int8", "carry_save"), (1, 1, "uint4", "cpa"),
     (2, 2, "int16", "carry_save"), (4, 4, "int4", "cpa")],
)  # fmt: skip
def test_random_gemms_all_dataflows(rows, cols, dtype, acc):
    cfg = SystolicConfig(
        rows=rows, cols=cols, dtype=dtype, accumulation=acc, spad_depth=64, acc_depth=64
    )
    jobs = []
    for df in ("os", "ws", "is"):
        for i, (m, k, n) in enumerate(SHAPES):
            a, b = rand_operands(cfg, m, k, n, seed=1000 * rows + 10 * i + len(df))
            jobs.append((df, a, b))
    for (df, a, b), (res, cyc, err) in zip(jobs, run_gemms(cfg, jobs), strict=True):
        m, k = a.shape
        n = b.shape[1]
        assert err == 0
        assert torch.equal(res, model.gemm(a, b, cfg)), (df, m, k, n)
        assert cyc == model.cycles(m, k, n, df, cfg), (df, m, k, n)


def test_extremes_wrap_like_the_model():
    # every product at the format's extremes; a narrow accumulator overflows and wraps
    cfg = SystolicConfig(rows=2, cols=2, acc_width=16, spad_depth=128, acc_depth=64)
    k = 40
    a = torch.full((3, k), -128)
    b = torch.full((k, 3), -128)
    b[:, 1] = 127
    jobs = [(df, a, b) for df in ("os", "ws", "is")]
    for (df, a_, b_), (res, _, err) in zip(jobs, run_gemms(cfg, jobs), strict=True):
        assert err == 0
        exp = model.gemm(a_, b_, cfg)
        assert torch.equal(res, exp), df
        assert not torch.equal(exp, a_.long() @ b_.long())  # it did overflow


def test_dataflow_not_built_is_rejected():
    cfg = SystolicConfig(rows=2, cols=2, dataflows=("os",), spad_depth=64, acc_depth=64)
    a, b = rand_operands(cfg, 2, 2, 2, seed=3)
    (_, _, err_os), (_, _, err_ws) = run_gemms(cfg, [("os", a, b), ("ws", a, b)])
    assert err_os == 0
    assert err_ws == ErrorCode.BAD_DATAFLOW


def test_ws_only_build():
    cfg = SystolicConfig(rows=2, cols=3, dataflows=("ws", "is"), spad_depth=64, acc_depth=64)
    jobs = [(df, *rand_operands(cfg, 5, 7, 4, seed=9)) for df in ("ws", "is")]
    for (_, a, b), (res, _, err) in zip(jobs, run_gemms(cfg, jobs), strict=True):
        assert err == 0 and torch.equal(res, model.gemm(a, b, cfg))


def test_operands_past_the_scratchpad_are_reported():
    cfg = SystolicConfig(rows=2, cols=2, spad_depth=16, acc_depth=16)
    a, b = rand_operands(cfg, 4, 9, 2, seed=5)  # OS needs 2 * 9 = 18 left words > 16
    ((_, _, err),) = run_gemms(cfg, [("os", a, b)])
    assert err == ErrorCode.OUT_OF_RANGE


@pytest.mark.parametrize("df", ["os", "ws"])
@pytest.mark.parametrize("field", ["acc", "left", "top"])
def test_bases_far_past_the_memories_saturate_and_are_reported(df, field):
    # 16-bit base fields far beyond 16-entry memories: the narrow address counters saturate
    cfg = SystolicConfig(rows=2, cols=2, spad_depth=16, acc_depth=16)
    a, b = rand_operands(cfg, 3, 3, 3, seed=8)
    ((_, _, err),) = run_gemms(cfg, [(df, a, b, {field: 65000})])
    assert err == ErrorCode.OUT_OF_RANGE
