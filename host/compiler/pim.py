"""GEMV work on the PIM banks: routing ``M = 1`` linears there, and running them.

A ``linear`` whose activations have one row (a decode step, a classifier head) is a GEMV
``y = W x``: every weight is used once, so on the systolic engine its time is the weight
traffic, where the PIM engine keeps the weights resident in its banks and streams them from
the open rows at ``banks * lanes`` MACs per cycle. :func:`route_gemv` moves such an op from
the systolic engine (or from the host, when the config has no systolic engine) to ``"pim"``
when the PIM engine can hold it and its modelled program is faster:

* it can hold it: int8 operands (``dtype="int8"``), an accumulator that cannot overflow on a
  K-long int8 dot product (``K * 2**14 < 2**(acc_width - 1)``, as for the systolic engine),
  ``K <= vector_depth``, and a bank mapping (``host.pim.plan_gemv``) in the rows the graph's
  other PIM ops leave free (weights stay resident, so the graph's PIM weights share the banks);
* it is faster: :func:`gemv_program_cycles` (the mapper's exact engine cycles plus the vector
  LOAD and result STOREs of ``host.pim.gemv``'s program) against the systolic engine's modelled
  program time for the ``1 x K x N`` GEMM (``report.predict``: weights loaded each call).

Integer semantics (``generators/pim/model.py``): products of int8 operands summed and wrapped
modulo ``2**acc_width``; the weights are the per-channel int8 ``W_q`` of ``quant.prepare``, the
vector the int8 activation row; the int32 bias in accumulator units is added and wrapped as on
the systolic route, so the value that leaves the op is the same ``QT`` either way.
:func:`gemv_golden` runs the mapper's plan through the engine's golden model
(``PimState`` + ``gemv``), one GEMV instruction at a time, as the device does.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from ...errors import CompileError, UsageError
from .graph import Graph
from .quant import I8, QT, to_int

__all__ = ["route_gemv", "gemv_program_cycles", "gemv_golden", "run_gemv", "gemv_why_not"]


def _gemv_shape(graph: Graph, op) -> tuple[int, int, int] | None:
    """``(m, k, n)`` of a linear op, or None for other kinds."""
    if op.kind != "linear":
        return None
    a = graph.op(op.inputs[0]).shape
    return math.prod(a[:-1]), a[-1], op.shape[-1]


def gemv_why_not(pcfg, k: int, n: int, row: int = 0) -> str:
    """'' when an ``n x k`` int8 GEMV fits the PIM engine ``pcfg`` from bank row ``row``."""
    from ..pim import plan_gemv

    if pcfg.fmt.width < 8 or not pcfg.fmt.signed:
        return f"the PIM engine's {pcfg.dtype} operands cannot hold int8"
    if k * (1 << 14) >= 1 << (pcfg.acc_width - 1):
        return f"K = {k} could overflow the PIM engine's {pcfg.acc_width}-bit accumulator"
    if k > pcfg.vector_depth:
        return f"K = {k} exceeds the PIM engine's vector_depth of {pcfg.vector_depth}"
    try:
        plan_gemv(pcfg, n, k, row=row)
    except UsageError as e:
        return f"the PIM banks cannot hold the weights: {e}"
    return ""


def gemv_program_cycles(acfg, n: int, k: int) -> dict:
    """``{"cycles", "program", "words", "rows"}`` of one ``n x k`` GEMV by ``host.pim.gemv``.

    ``cycles``: the engine's (exact, ``generators/pim/cycles.py`` through the mapper's plan);
    ``program``: modelled PERF_PROGRAM cycles of the program ``host.pim`` runs (the vector
    LOAD, then per GEMV instruction its dispatch and the STORE of its results, in order, with
    the constants below, measured on single-entry programs: a closed form the compiler can
    evaluate for every candidate without building the program); ``words``: device-memory
    words moved."""
    return dict(_gemv_program_cycles(acfg, n, k))


class _ProgramCosts:
    """Cycles of a program's parts on the simulated board (measured on one-entry programs)."""

    FETCH = 6  # per program entry (5 words + the hand-off)
    FIRST = 19  # program start -> first entry classified
    END = 2  # last retirement -> PERF_PROGRAM stops
    DISPATCH = 3
    LOAD_FIXED = 18
    STORE_FIXED = 19
    NOP = 3
    TOKEN = 2  # a pushed token -> the popping unit starts


@lru_cache(maxsize=256)
def _gemv_program_cycles(acfg, n: int, k: int) -> dict:
    from ...generators.pim.cycles import schedule
    from ...generators.pim.model import pack_operands
    from ..pim import plan_gemv

    t = _ProgramCosts

    pcfg = acfg.engine("pim")
    plan = plan_gemv(pcfg, n, k)
    res = pcfg.windows()["results"]
    beat = acfg.mem_cycles_per_beat
    kpad = -(-k // pcfg.row_size) * pcfg.row_size
    x_words = pack_operands(torch.zeros(kpad, dtype=torch.int64), pcfg).size
    words = x_words
    prog = t.FIRST + t.LOAD_FIXED + acfg.mem_latency - 12 + x_words * beat
    jobs = 0
    for ps in plan.passes:
        used = ps.per_round * ps.parts
        for p0, instr in ps.instrs(pcfg.result_depth):
            jobs += 1
            if ps.parts > 1 and p0 == 0:  # the pass's offsets' LOAD (after the previous GEMV)
                prog += t.NOP + t.TOKEN + t.LOAD_FIXED + acfg.mem_latency - 12 + pcfg.banks * beat
                words += pcfg.banks
            out = ((used - 1) * pcfg.result_depth + instr.rounds) * res.stride
            words += out
            prog += t.TOKEN + t.DISPATCH + schedule(pcfg, instr, ps.xoff).done + t.TOKEN
            prog += t.STORE_FIXED + min(out, acfg.mem_max_burst) + out / 32 + out * beat
    prog = max(prog, t.FIRST + (2 * jobs + 2) * t.FETCH) + t.NOP + t.TOKEN + t.END
    return {"cycles": plan.cycles, "program": int(round(prog)), "words": int(words),
            "rows": plan.rows}  # fmt: skip


def route_gemv(graph: Graph, placement: dict, cfg, engines: list[str] | None = None
               ) -> dict[str, str]:  # fmt: skip
    """Move ``M = 1`` linears to ``"pim"`` where it fits and is faster (see the module doc);
    ``placement`` is updated in place. Returns ``{op: reason}`` for every GEMV considered.

    ``engines``: the engine of each GEMV considered, in op order, decided by the caller (a
    partition of a split model follows the whole model's routing, which shared the banks
    among all its GEMVs); its reason is then the caller's."""
    from .report import predict

    pcfg = cfg.engine("pim")
    out: dict[str, str] = {}
    if pcfg is None:
        return out
    row = 0
    todo = None if engines is None else list(engines)
    for op in graph.ops:
        shape = _gemv_shape(graph, op)
        if shape is None or shape[0] != 1 or op.name not in placement:
            continue
        engine, reason = placement[op.name]
        no_systolic = cfg.engine("systolic") is None
        if engine != "systolic" and not (engine == "host" and no_systolic):
            continue
        _, k, n = shape
        if todo is not None:
            if not todo:
                raise CompileError(f"route_gemv: more GEMVs than the {len(engines)} engines given")
            want = todo.pop(0)
            if want == "pim":
                placement[op.name] = ("pim", "GEMV (M = 1) on the PIM banks")
            continue
        why = gemv_why_not(pcfg, k, n, row)
        if why:
            out[op.name] = f"GEMV stays off the PIM banks: {why}"
            if engine == "systolic":
                placement[op.name] = (engine, out[op.name])
            continue
        p = gemv_program_cycles(cfg, n, k)
        if no_systolic:
            out[op.name] = (f"GEMV (M = 1) on the PIM banks: {p['program']:,} cycles modelled "
                            "(no systolic engine)")  # fmt: skip
        else:
            s = predict("systolic", [(1, k, n)], cfg)
            s_cyc = int(s["program"] or s["cycles"])
            if s_cyc <= p["program"]:
                out[op.name] = (f"GEMV (M = 1): systolic {s_cyc:,} cycles <= PIM "
                                f"{p['program']:,} (modelled programs)")  # fmt: skip
                placement[op.name] = (engine, out[op.name])
                continue
            out[op.name] = (f"GEMV (M = 1) on the PIM banks: {p['program']:,} cycles vs systolic "
                            f"{s_cyc:,} (modelled programs; weights resident)")  # fmt: skip
        placement[op.name] = ("pim", out[op.name])
        row += p["rows"]
    if todo:
        raise CompileError(f"route_gemv: {len(todo)} of the engines given were not used")
    return out


def gemv_golden(pcfg, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The PIM engine's ``w @ x`` (``w [n, k]``, ``x [k]`` integers) by its golden model: the
    mapper's plan, bank images and one ``generators.pim.model.gemv`` per GEMV instruction,
    partial sums gathered as ``host.pim`` does. int64, wrapped to ``acc_width``."""
    from ...generators.engine import ErrorCode
    from ...generators.pim.model import PimState, gemv
    from ..pim import _gather, bank_images, plan_gemv

    n, k = w.shape
    plan = plan_gemv(pcfg, n, k)
    st = PimState(pcfg)
    st.weights[:, : plan.rows] = torch.from_numpy(bank_images(pcfg, plan, w))
    st.vector[:k] = x.to(torch.int64)
    y = torch.zeros(n, dtype=torch.int64)
    for ps in plan.passes:
        st.xoff = list(ps.xoff)
        for p0, instr in ps.instrs(pcfg.result_depth):
            err = gemv(st, instr)
            if err != ErrorCode.NONE:
                raise AssertionError(f"the PIM golden model refused {instr}: {err!r}")
            _gather(pcfg, ps, instr.rounds, p0, st.results.reshape(-1).clone(), y)
    return pcfg.acc_fmt.wrap(y)


def run_gemv(op, vals, c, backend, calls):
    """The executor's ``linear`` on the PIM engine (``M = 1``): int8 row in, int32 out, the
    bias added in accumulator units; the same ``QT`` as the systolic route's."""
    x = vals[0]
    lead, k = tuple(x.shape[:-1]), x.shape[-1]
    sa, sw = c["a_scale"], c["w_scale"]
    xq = to_int(x, sa.reshape(*lead, 1) if sa.dim() else sa, I8).reshape(k)
    wq = c["w_q"]  # [K, N]
    n = wq.shape[1]
    calls.append((n, k))
    acc = backend.gemv(xq, backend.gemv_weight(op.name, wq.t().contiguous())).long()
    if "bias_q" in c:
        acc = backend.config.engine("pim").acc_fmt.wrap(acc + c["bias_q"].reshape(n))
    scale = (sa.reshape(-1, 1) if sa.dim() else sa) * sw[None, :]
    return QT(acc.reshape(*lead, n), scale.expand(1, n).reshape(*lead, n))
