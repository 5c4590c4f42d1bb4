"""The scratchpad allocation across the graph (host/compiler/alloc.py, residency.py).

* Property tests on random allocation problems: the ILP's and the heuristic's allocations never
  put two live tensors (or a live tensor and an op's working set) on the same on-chip entry, the
  ILP is never worse than the heuristic and equals a brute-force optimum on small problems.
* Property test on random graphs (linear / GELU / LayerNorm / softmax with fan-out) and random
  scratchpad sizes: the allocation is valid, the golden run with the scratchpad model (which
  refuses a resident operand that something overwrote) gives the same bits as the run with
  nothing resident, and the predicted device-memory words equal the ILP objective.
* On the simulated board (the chain config of tests/test_chain.py): the counted device-memory
  words (PERF_LOAD + PERF_STORE) equal the objective, for the ILP and for the heuristic, on a
  seeded two-branch model where the ILP keeps more on chip than the heuristic can.
"""

from __future__ import annotations

import itertools
import math

import gatesmith.host
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from gatesmith.generators.gelu.config import GeluConfig
from gatesmith.generators.layernorm.config import LayerNormConfig
from gatesmith.generators.softmax.config import SoftmaxConfig
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.host.compiler import DeviceBackend, GoldenBackend, allocate_scratchpad, compile
from gatesmith.host.compiler import alloc as A
from gatesmith.host.compiler.golden import execute
from gatesmith.host.compiler.graph import Graph, Op
from gatesmith.host.compiler.quant import calibrate, prepare
from gatesmith.host.compiler.report import place
from gatesmith.host.compiler.residency import problem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatesmith.config import AccelConfig

SEED = 20261202
NL = (GeluConfig(lanes=4, depth=64, max_len=64), LayerNormConfig(lanes=4, depth=64, max_len=64),
      SoftmaxConfig(lanes=4, depth=64, max_len=64))  # fmt: skip
CFG = AccelConfig(name="chain", engines=(*NL, SystolicConfig(
    rows=4, cols=4, spad_depth=128, acc_depth=64, dataflows=("os", "ws"))))  # fmt: skip


# ---- an independent check: live tensors never overlap ----------------------------------------


def _overlaps(p: A.Problem, offsets: dict) -> list[str]:
    """Every (step, a, b) where two live things share an entry (tensors, present blocks)."""
    ts = {t.name: t for t in p.tensors}
    bad = []
    for name, o in offsets.items():
        if not 0 <= o <= p.capacity[ts[name].memory] - ts[name].size:
            bad.append(f"{name} outside its memory")
    steps = range(max([t.end for t in p.tensors] + [b.step for b in p.blocks] + [0]) + 1)
    for s in steps:
        live = [(ts[n].memory, o, o + ts[n].size, n) for n, o in offsets.items()
                if ts[n].start <= s <= ts[n].end]  # fmt: skip
        blocks = [(b.memory, b.lo, b.hi, "block") for b in p.blocks
                  if b.step == s and b.unless not in offsets]  # fmt: skip
        for x, y in itertools.combinations(live + blocks, 2):
            if x[3] == y[3] == "block":
                continue
            if x[0] == y[0] and x[1] < y[2] and y[1] < x[2]:
                bad.append(f"step {s}: {x[3]} and {y[3]}")
    return bad


def _brute(p: A.Problem) -> int:
    """The optimum by enumeration: every subset, every order, each tensor resting on 0, a
    block or a tensor placed before it (a placement pushed down keeps that form)."""
    best = p.base
    ts = [t for t in p.tensors if 0 < t.size <= p.capacity[t.memory] and t.saving > 0]
    for r in range(1, len(ts) + 1):
        for sub in itertools.combinations(ts, r):
            names = {t.name for t in sub}
            if p.objective(names) >= best:
                continue
            blocks = [b for b in p.blocks if b.unless not in names]
            if any(_place(p, blocks, list(perm), {}) for perm in itertools.permutations(sub)):
                best = p.objective(names)
    return best


def _place(p, blocks, rest, offsets) -> bool:
    if not rest:
        return True
    size = {t.name: t.size for t in p.tensors}
    cands = {0} | {b.hi for b in blocks} | {o + size[n] for n, o in offsets.items()}
    for o in sorted(cands):
        trial = {**offsets, rest[0].name: o}
        sub = A.Problem(p.capacity, [t for t in p.tensors if t.name in trial], blocks, p.base)
        if not _overlaps(sub, trial) and _place(p, blocks, rest[1:], trial):
            return True
    return False


@st.composite
def problems(draw, max_tensors=4):
    cap = draw(st.integers(4, 32))
    n = draw(st.integers(0, max_tensors))
    mems = ["left", "acc"][: draw(st.integers(1, 2))]
    tensors = []
    for i in range(n):
        start = draw(st.integers(0, 6))
        mem, size = draw(st.sampled_from(mems)), draw(st.integers(1, cap))
        end = start + draw(st.integers(0, 3))
        tensors.append(A.Tensor(f"t{i}", mem, size, start, end, draw(st.integers(0, 50))))
    blocks = []
    for _ in range(draw(st.integers(0, 4))):
        lo = draw(st.integers(0, cap - 1))
        unless = draw(st.sampled_from([None] + [t.name for t in tensors]))
        blocks.append(A.Block(draw(st.sampled_from(mems)), lo, draw(st.integers(lo + 1, cap)),
                              draw(st.integers(0, 9)), unless))  # fmt: skip
    return A.Problem({m: cap for m in mems}, tensors, blocks, 1000)


@settings(max_examples=60, deadline=None)
@given(problems())
def test_ilp_and_heuristic_never_overlap_and_ilp_is_optimal(p):
    ilp = A.solve_ilp(p)
    heur = A.heuristic(p)
    for a in (ilp, heur):
        assert _overlaps(p, a.offsets) == [], a
        A.check(p, a.offsets)
        assert a.objective == p.objective(a.offsets)
    assert ilp.method == "ilp" and ilp.status == "optimal"
    assert ilp.objective <= heur.objective
    assert ilp.objective == _brute(p)


def test_check_refuses_an_overlap_and_a_block():
    p = A.Problem({"m": 8}, [A.Tensor("a", "m", 4, 0, 2, 5), A.Tensor("b", "m", 4, 1, 3, 5)],
                  [A.Block("m", 0, 2, 3, unless="a")])  # fmt: skip
    A.check(p, {"a": 0, "b": 4})
    with pytest.raises(ValueError, match="step 1: a and b overlap in m"):
        A.check(p, {"a": 0, "b": 2})
    with pytest.raises(ValueError, match="b and block of step 3 overlap in m"):
        A.check(p, {"b": 0})
    A.check(p, {"a": 4, "b": 0})  # a resident: its consumer's block at step 3 is gone
    with pytest.raises(ValueError, match="b at 6..10 leaves m"):
        A.check(p, {"b": 6})


def test_above_the_limit_the_heuristic_runs_and_says_so():
    ts = [A.Tensor(f"t{i}", "m", 1 + i % 5, i % 40, i % 40 + 6, 10 + i % 7) for i in range(300)]
    p = A.Problem({"m": 16}, ts, [], 10**6)
    said = []
    a = A.allocate(p, progress=said.append)
    assert a.method == "heuristic" and a.status == "greedy"
    assert said == [f"allocate: {a.variables or _nv(p)} integer variables > {A.ILP_LIMIT}; "
                    "greedy heuristic"]  # fmt: skip
    assert _overlaps(p, a.offsets) == [] and a.objective < p.base
    small = A.Problem({"m": 16}, ts[:6], [], 10**6)
    said.clear()
    b = A.allocate(small, progress=said.append)
    assert b.method == "ilp" and said[0].startswith("allocate: ILP over 6 tensors (")


def test_the_ilp_reports_progress_while_it_runs():
    """The ILP runs in a worker thread; the caller hears the elapsed time meanwhile (the
    ``gatesmith compile`` status line), and the answer is the same as without ticks."""
    import random

    rnd = random.Random(30)
    ts = []
    for i in range(30):
        s = rnd.randrange(0, 30)
        ts.append(A.Tensor(f"t{i}", "m", rnd.choice([16, 32, 48, 64]), s, s + rnd.randrange(4),
                           rnd.randrange(50, 500)))  # fmt: skip
    p = A.Problem({"m": 128}, ts, [A.Block("m", 0, 64, s) for s in range(0, 30, 2)], 10**6)
    ticks: list = []
    a = A.solve_ilp(p, tick=ticks.append, tick_s=0.002)
    assert a.status == "optimal" and _overlaps(p, a.offsets) == []
    assert ticks and ticks == sorted(ticks) and ticks[-1] <= a.solve_s
    assert a.objective <= A.heuristic(p).objective


def _nv(p):
    return 2 * len(p.tensors) + sum(1 for _ in p.pairs()) + sum(1 for _ in p.clashes())


# ---- random graphs ------------------------------------------------------------------------------


@st.composite
def graphs(draw, cfg=None):
    """A random graph of linear / GELU / LayerNorm / softmax ops whose values fan out (and a
    random scratchpad and accumulator size unless ``cfg`` is given)."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    m = draw(st.integers(1, 8))
    width = {"x": draw(st.sampled_from([8, 16, 32]))}
    ops = [Op("x", "input", [], {}, (m, width["x"]))]
    consts: dict = {}
    used: set = set()
    for i in range(draw(st.integers(2, 7))):
        src = draw(st.sampled_from(sorted(width)))
        k = width[src]
        kind = draw(st.sampled_from(["linear", "linear", "gelu", "layer_norm", "softmax"]))
        name = f"{kind}{i}"
        if kind == "linear":
            n = draw(st.sampled_from([4, 8, 16, 32]))
            consts[f"w{i}"] = torch.randn(n, k, generator=g) / math.sqrt(k)
            consts[f"b{i}"] = torch.randn(n, generator=g) * 0.1
            ops.append(Op(name, "linear", [src], {"weight": f"w{i}", "bias": f"b{i}"}, (m, n)))
        else:
            attrs = {"gelu": {"approximate": "none"}, "softmax": {"dim": 1},
                     "layer_norm": {"weight": None, "bias": None, "eps": 1e-5}}[kind]  # fmt: skip
            ops.append(Op(name, kind, [src], attrs, (m, k)))
            n = k
        width[name] = n
        used.add(src)
    outs = [o.name for o in ops[1:] if o.name not in used] or [ops[-1].name]
    if cfg is None:
        spad = draw(st.sampled_from([32, 64, 128, 256]))
        acc = draw(st.sampled_from([16, 32, 64]))
        cfg = AccelConfig(name="rand", engines=(*NL, SystolicConfig(
            rows=4, cols=4, spad_depth=spad, acc_depth=acc, dataflows=("os", "ws"))))  # fmt: skip
    graph = Graph(ops, consts, ["x"], outs, [(m, width["x"])])
    x = [(torch.randn(m, width["x"], generator=g) * 2,) for _ in range(2)]
    return graph, cfg, x


def _prepared(graph, cfg, x):
    from gatesmith.host.compiler import schedule

    placement = place(graph, cfg)
    engines = {k: v[0] for k, v in placement.items()}
    consts = prepare(graph, calibrate(graph, x), cfg, engines)
    for name, sc in schedule(graph, placement, cfg).items():
        consts[name]["schedule"] = sc
    return placement, engines, consts


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.sampled_from([None, 0]))
def test_random_graphs_live_tensors_never_overlap(case, ilp_limit):
    graph, cfg, x = case
    placement, engines, consts = _prepared(graph, cfg, x)
    prob, _ = problem(graph, placement, consts, cfg)
    resident, summary = allocate_scratchpad(graph, placement, consts, cfg, ilp_limit=ilp_limit)
    assert _overlaps(prob, summary["offsets"]) == []
    assert summary["method"] == ("none" if not prob.tensors else
                                 "heuristic" if ilp_limit == 0 else "ilp")  # fmt: skip
    # the golden backend's scratchpad model raises if a resident operand was overwritten
    trace: list = []
    got = execute(graph, consts, engines, GoldenBackend(cfg), x[1], trace, resident)
    want = execute(graph, consts, engines, GoldenBackend(cfg), x[1])
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    words = sum(t["predicted"]["words"] for t in trace)
    assert words == summary["objective"] <= prob.base


# ---- the simulated board ------------------------------------------------------------------------


class Branches(nn.Module):
    """LayerNorm and GELU branches whose outputs are both live across an unrelated GEMM: the
    LayerNorm output survives it only when placed above the entries that GEMM streams through."""

    def __init__(self):
        super().__init__()
        self.ln, self.l0 = nn.LayerNorm(16), nn.Linear(16, 16)
        self.la, self.lb = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        a = self.ln(x)
        b = F.gelu(self.l0(x))
        return self.la(a) + self.lb(b)


def test_counted_device_words_equal_the_objective():
    """ILP and heuristic allocations of a seeded model on the simulated board: device ==
    golden bit for bit, and PERF_LOAD + PERF_STORE == each allocation's objective."""
    torch.manual_seed(SEED)
    model = Branches().eval()
    g = torch.Generator().manual_seed(SEED)
    calib = [(torch.randn(1, 8, 16, generator=g),) for _ in range(4)]
    x = (torch.randn(1, 8, 16, generator=g),)
    got = {}
    with gatesmith.host.open("sim", config=CFG) as dev:
        for limit in (None, 0):
            c = compile(model, calib[0], CFG, calibration=calib, ilp_limit=limit)
            golden = c.run(x)
            be = DeviceBackend(dev)
            dev.reset_perf()
            y = c.run(x, be)
            perf = dev.perf()
            be.close()
            assert torch.equal(y, golden)
            a = c.report.allocation
            assert perf["load"] + perf["store"] == a["objective"] == c.report.words()["measured"]
            assert f"measured words {a['objective']:,}" in str(c.report)
            got[a["method"]] = (a["objective"], a["resident"], a["offsets"])
    assert got["ilp"][0] < got["heuristic"][0] < c.report.allocation["base"]
    assert got["ilp"][1] == ["gelu", "layer_norm"] and got["heuristic"][1] == ["gelu"]
    assert got["ilp"][2]["layer_norm"] >= 80  # above the 80 entries the unrelated GEMM uses


@pytest.fixture(scope="module")
def board():
    with gatesmith.host.open("sim", config=CFG) as dev:
        yield dev


@settings(max_examples=6, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(graphs(cfg=CFG))
def test_random_graphs_on_the_board_count_the_objective(board, case):
    """Random graphs (softmax producers, fan-out to several linears, 1..8 rows) on the board:
    device == golden with the allocation, and the counted words equal its objective."""
    graph, cfg, x = case
    placement, engines, consts = _prepared(graph, cfg, x)
    resident, summary = allocate_scratchpad(graph, placement, consts, cfg)
    want = execute(graph, consts, engines, GoldenBackend(cfg), x[1], None, resident)
    be = DeviceBackend(board)
    board.reset_perf()
    try:
        got = execute(graph, consts, engines, be, x[1], None, resident)
    finally:
        be.close()
    perf = board.perf()
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert perf["load"] + perf["store"] == summary["objective"]
