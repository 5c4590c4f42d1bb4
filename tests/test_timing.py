"""The program timing model (host/timing.py) against the board's PERF_PROGRAM counter.

Whole programs as the drivers build them (GEMMs in every dataflow, nonlinear row programs,
fused attention) on the simulated board: the prediction is within 3% on programs of 100
entries or more, and within 10% on the smallest, whose cycles are mostly fixed costs.
"""

import pytest
import torch

from .test_chain import CFG, dev  # noqa: F401 - the chain board fixture

SEED = 20261203


def _measured(dev, fn):
    dev.reset_perf()
    fn()
    return dev.perf()["program"], dev.last_program


@pytest.mark.parametrize("shape", [(8, 32, 32), (32, 64, 32), (64, 64, 64), (48, 96, 40)])
@pytest.mark.parametrize("df", ["os", "ws"])
def test_gemm_programs(dev, shape, df):  # noqa: F811
    g = torch.Generator().manual_seed(SEED)
    m, k, n = shape
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    meas, prog = _measured(dev, lambda: dev.matmul(a, b, dataflow=df))
    pred = prog.predict()
    bound = 0.03 if len(prog) >= 100 else 0.10
    assert abs(pred - meas) <= bound * meas, (pred, meas, len(prog))


def test_nonlinear_and_attention_programs(dev):  # noqa: F811
    from gatesmith.host.attention import attention

    g = torch.Generator().manual_seed(SEED + 1)
    x = torch.randint(-2000, 2000, (40, 24), generator=g)
    for fn in (lambda: dev.gelu(x.float() / 256),
               lambda: dev.softmax(x.float() / 256)):  # fmt: skip
        meas, prog = _measured(dev, fn)
        assert abs(prog.predict() - meas) <= 0.10 * meas, (prog.predict(), meas)
    q, k, v = (torch.randn(6, 8, 8, generator=g) for _ in range(3))
    meas, prog = _measured(dev, lambda: attention(dev, q, k, v))
    assert abs(prog.predict() - meas) <= 0.05 * meas, (prog.predict(), meas, len(prog))


def test_single_buffered_accumulator_plan(dev):  # noqa: F811
    """A plan with one output tile in the accumulator at a time (each tile's store waited for
    by the next tile's GEMMs): exact over many tiles, and predicted like the others."""
    from gatesmith.generators.systolic.engine import window_layout
    from gatesmith.host.systolic import Packed, Plan, gemm_program, upload

    g = torch.Generator().manual_seed(SEED + 2)
    cfg = dev.config.engine("systolic")
    m, k, n = 40, 48, 36
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    la, lb = upload(dev, a, "a", "os"), upload(dev, b, "b", "os")
    acc = window_layout(cfg)["acc"]
    res = dev.alloc((-(-n // cfg.cols) * m * acc.stride,), torch.int32)
    res.layout = Packed(role="result", dataflow="os", rows=m, cols=n)
    prog = gemm_program(dev, la, lb, res, Plan(mt=16, nt=16, kc=16, acc_bufs=1), "os", cfg)
    dev.reset_perf()
    prog.run()
    meas = dev.perf()["program"]
    assert torch.equal(res.layout.unpack_from(res).long(), a.long() @ b.long())
    assert abs(prog.predict() - meas) <= 0.10 * meas, (prog.predict(), meas)
    for buf in (la, lb, res):
        buf.free()


@pytest.mark.parametrize("rows,row_words", [(1, 16), (4, 4), (2, 8)])
def test_store_programs_with_short_rows(dev, rows, row_words):  # noqa: F811
    """Eight STOREs back to back: the writer waits for its first burst's words, which a row
    shorter than ``mem_max_burst`` limits (the model charged ``max_burst`` words: +24% at
    4-word rows)."""
    buf = dev.alloc((1024,), torch.int32)
    prog = dev.program()
    for i in range(8):
        prog.store("systolic", win_addr=0, buf=buf, offset=256 * i, rows=rows,
                   row_words=row_words, mem_stride=row_words)  # fmt: skip
    meas, _ = _measured(dev, prog.run)
    assert abs(prog.predict() - meas) <= 0.05 * meas, (prog.predict(), meas)
    buf.free()
