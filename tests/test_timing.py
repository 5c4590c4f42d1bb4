"""The program timing model (host/timing.py, host/cyclemodel.py) against the board's counters.

Whole programs as the drivers build them (GEMMs in every dataflow, nonlinear row programs,
fused attention with its on-chip COPYs) and DMA-only programs, on the simulated board: the
predicted PERF_PROGRAM count equals the measured one, cycle for cycle. Two boards: the chain
board (four engines, COPY, 16-deep queues, device memory at 4 bytes a cycle) and a small one
whose 2-deep queues fill, without COPY, with memory at half that rate and 8-beat bursts.
"""

import pytest
import torch

import gatesmith.host
from gatesmith.config import AccelConfig
from gatesmith.generators.systolic.config import SystolicConfig

from .test_chain import CFG, dev  # noqa: F401 - the chain board fixture

SEED = 20261203

SMALL = AccelConfig(
    name="timing",
    queue_depth=2,
    copy_unit=False,
    mem_latency=5,
    mem_cycles_per_beat=2,
    mem_max_burst=8,
    engines=(SystolicConfig(rows=2, cols=2, spad_depth=64, acc_depth=32, dataflows=("os", "ws")),),
)


@pytest.fixture(scope="module")
def small():
    with gatesmith.host.open("sim", config=SMALL) as d:
        yield d


def _measured(dev, fn):
    dev.reset_perf()
    fn()
    return dev.perf()["program"], dev.last_program


def _ints(g, shape):
    return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)


SHAPES = [(4, 4, 4), (8, 32, 32), (16, 16, 16), (4, 64, 4), (64, 8, 64), (48, 96, 40),
          (1, 64, 64), (100, 20, 30)]  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("df", ["os", "ws"])
def test_gemm_programs(dev, shape, df):  # noqa: F811
    g = torch.Generator().manual_seed(SEED)
    m, k, n = shape
    a, b = _ints(g, (m, k)), _ints(g, (k, n))
    meas, prog = _measured(dev, lambda: dev.matmul(a, b, dataflow=df))
    assert prog.predict() == meas, (prog.predict(), meas, len(prog))


@pytest.mark.parametrize("shape", [(4, 4, 4), (16, 64, 32), (33, 70, 41), (1, 64, 64)])
@pytest.mark.parametrize("df", ["os", "ws"])
def test_gemm_programs_small_board(small, shape, df):
    """Full 2-deep queues hold the fetcher back; memory beats are 2 cycles apart."""
    g = torch.Generator().manual_seed(SEED + 3)
    m, k, n = shape
    a, b = _ints(g, (m, k)), _ints(g, (k, n))
    meas, prog = _measured(small, lambda: small.matmul(a, b, dataflow=df))
    assert prog.predict() == meas, (prog.predict(), meas, len(prog))


def test_nonlinear_and_attention_programs(dev):  # noqa: F811
    from gatesmith.host.attention import attention

    g = torch.Generator().manual_seed(SEED + 1)
    for shape in [(1, 8), (40, 24), (64, 64)]:
        x = torch.randint(-2000, 2000, shape, generator=g)
        for fn in (lambda: dev.gelu(x.float() / 256), lambda: dev.softmax(x.float() / 256)):
            meas, prog = _measured(dev, fn)
            assert prog.predict() == meas, (shape, prog.predict(), meas)
    for heads, s, d in [(1, 8, 8), (6, 8, 8), (2, 4, 8)]:
        q, k, v = (torch.randn(heads, s, d, generator=g) for _ in range(3))
        meas, prog = _measured(dev, lambda: attention(dev, q, k, v))
        assert prog.predict() == meas, (heads, s, d, prog.predict(), meas, len(prog))


@pytest.mark.parametrize("rows,row_words", [(1, 16), (4, 4), (2, 8), (1, 64)])
def test_dma_programs(dev, rows, row_words):  # noqa: F811
    """Back-to-back LOADs (sharing the read channel with the program fetcher), STOREs (a
    writer that waits for its first burst's words) and both at once on one window port."""
    buf = dev.alloc((4096,), torch.int32)
    kw = dict(rows=rows, row_words=row_words, mem_stride=row_words)
    builds = {
        "loads": lambda p, i: p.load("systolic", win_addr=0, buf=buf, offset=64 * i, **kw),
        "stores": lambda p, i: p.store("systolic", win_addr=0, buf=buf, offset=64 * i, **kw),
        "both": lambda p, i: (p.load("systolic", win_addr=0, buf=buf, offset=64 * i, **kw),
                              p.store("systolic", win_addr=256, buf=buf, offset=8192 + 64 * i,
                                      **kw)),
    }  # fmt: skip
    for name, add in builds.items():
        prog = dev.program()
        for i in range(8):
            add(prog, i)
        meas, _ = _measured(dev, prog.run)
        assert prog.predict() == meas, (name, prog.predict(), meas)
    buf.free()


def test_single_buffered_accumulator_plan(dev):  # noqa: F811
    """A plan with one output tile in the accumulator at a time (each tile's store waited for
    by the next tile's GEMMs): exact over many tiles, and predicted like the others."""
    from gatesmith.generators.systolic.engine import window_layout
    from gatesmith.host.systolic import Packed, Plan, gemm_program, upload

    g = torch.Generator().manual_seed(SEED + 2)
    cfg = dev.config.engine("systolic")
    m, k, n = 40, 48, 36
    a, b = _ints(g, (m, k)), _ints(g, (k, n))
    la, lb = upload(dev, a, "a", "os"), upload(dev, b, "b", "os")
    acc = window_layout(cfg)["acc"]
    res = dev.alloc((-(-n // cfg.cols) * m * acc.stride,), torch.int32)
    res.layout = Packed(role="result", dataflow="os", rows=m, cols=n)
    prog = gemm_program(dev, la, lb, res, Plan(mt=16, nt=16, kc=16, acc_bufs=1), "os", cfg)
    dev.reset_perf()
    prog.run()
    meas = dev.perf()["program"]
    assert torch.equal(res.layout.unpack_from(res).long(), a.long() @ b.long())
    assert prog.predict() == meas, (prog.predict(), meas)
    for buf in (la, lb, res):
        buf.free()


@pytest.mark.parametrize("split,head", [(2, 0), (3, 8), (8, 4), (1, 12)])
@pytest.mark.parametrize("df,acc_bufs", [("os", 2), ("ws", 2), ("os", 1)])
def test_split_and_head(dev, split, head, df, acc_bufs):  # noqa: F811
    """The last tile's last chunk in column parts, each stored while the next computes
    (``Plan.split``; 3 parts of 4 column blocks are uneven, 8 more than there are), and the
    first chunk cut in two (``Plan.head``): exact, predicted cycle for cycle, and the queues
    hold no token afterwards (the next program, the planner's own, is exact and predicted)."""
    from gatesmith.generators.systolic.engine import window_layout
    from gatesmith.host.systolic import Packed, Plan, gemm_program, upload

    g = torch.Generator().manual_seed(SEED + 4)
    cfg = dev.config.engine("systolic")
    m, k, n = 24, 40, 16
    a, b = _ints(g, (m, k)), _ints(g, (k, n))
    la, lb = upload(dev, a, "a", df), upload(dev, b, "b", df)
    acc = window_layout(cfg)["acc"]
    res = dev.alloc((-(-n // cfg.cols) * m * acc.stride,), torch.int32)
    res.layout = Packed(role="result", dataflow=df, rows=m, cols=n)
    plan = Plan(mt=8, nt=16, kc=16, acc_bufs=acc_bufs, split=split, head=head)
    prog = gemm_program(dev, la, lb, res, plan, df, cfg)
    gemms = [e[2] for e in prog.entries if e[2].startswith("GEMM")]
    assert sum("columns" in w for w in gemms) == (split > 1) * min(split, n // cfg.cols)
    assert len(gemms) == len(list(plan.gemms(m, k, n, cfg.cols))) == 9 + bool(head) + (
        min(split, n // cfg.cols) - 1)
    meas, _ = _measured(dev, prog.run)
    assert torch.equal(res.layout.unpack_from(res).long(), a.long() @ b.long())
    assert prog.predict() == meas, (prog.predict(), meas)
    for buf in (la, lb, res):
        buf.free()
    meas, prog = _measured(dev, lambda: dev.matmul(a, b, dataflow=df))
    assert prog.predict() == meas


@pytest.mark.parametrize("df,k", [("os", 40), ("os", 16), ("ws", 40)])
def test_snake_order_reuses_panels(dev, df, k):  # noqa: F811
    """Tiles back and forth along N, every other tile's K chunks reversed (``Plan.snake``), so
    each tile finds one operand panel in the scratchpad, and the last three tiles' last chunks
    in column parts (``Plan.split_tiles``): exact, predicted cycle for cycle, and the words
    loaded are ``plan_traffic``'s, fewer than in the plain order."""
    import dataclasses

    from gatesmith.generators.systolic.engine import window_layout
    from gatesmith.host.systolic import Packed, Plan, gemm_program, plan_traffic, upload

    g = torch.Generator().manual_seed(SEED + 5)
    cfg = dev.config.engine("systolic")
    m, n = 24, 32  # 3 x 2 tiles of 8 x 16
    a, b = _ints(g, (m, k)), _ints(g, (k, n))
    la, lb = upload(dev, a, "a", df), upload(dev, b, "b", df)
    acc = window_layout(cfg)["acc"]
    res = dev.alloc((-(-n // cfg.cols) * m * acc.stride,), torch.int32)
    res.layout = Packed(role="result", dataflow=df, rows=m, cols=n)
    plan = Plan(mt=8, nt=16, kc=16, split=2, split_tiles=3, snake=True, head=8 * (k > 16))
    prog = gemm_program(dev, la, lb, res, plan, df, cfg)
    gemms = [e[2] for e in prog.entries if e[2].startswith("GEMM")]
    assert sum("columns" in w for w in gemms) == 3 * 2
    assert len(gemms) == len(list(plan.gemms(m, k, n, cfg.cols)))
    dev.reset_perf()
    prog.run()
    perf = dev.perf()
    assert torch.equal(res.layout.unpack_from(res).long(), a.long() @ b.long())
    assert prog.predict() == perf["program"], (prog.predict(), perf["program"])
    words = plan_traffic(plan, m, k, n, df, cfg)
    assert perf["load"] == words["load"] < plan_traffic(
        dataclasses.replace(plan, snake=False), m, k, n, df, cfg)["load"]
    assert perf["store"] == words["store"]
    for buf in (la, lb, res):
        buf.free()


def test_prediction_before_and_after_launch(dev):  # noqa: F811
    """Before a launch the program's device address is unknown and 0 is assumed; a launch
    records where it was written, which is what the fetcher read."""
    buf = dev.alloc((64,), torch.int32)
    prog = dev.program()
    prog.load("systolic", win_addr=0, buf=buf, rows=1, row_words=16)
    before = prog.predict()
    meas, _ = _measured(dev, prog.run)
    assert prog.code_addr == dev.read_reg("PROG_ADDR")
    assert before == prog.predict() == meas  # one entry: no 4 KiB crossing either way
    buf.free()


def test_long_panels_split_into_rows():
    """A result panel longer than a DMA row (``row_words`` is 12 bits: 256 rows of a 16-column
    array's int32 accumulators are 4096 words) is stored row by row; planned, not refused."""
    from gatesmith.host.systolic import Plan
    from gatesmith.host.timing import gemm_program_cycles

    cfg = SystolicConfig(rows=8, cols=16)
    acfg = AccelConfig(engines=(cfg,))
    for df in ("os", "ws"):
        plan = Plan(mt=256, nt=32, kc=64 if df == "os" else 16)
        assert gemm_program_cycles(512, 128, 64, df, plan, cfg, acfg) > 512 * 128 * 64 // 128
