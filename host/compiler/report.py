"""Placement of each op on an engine (or the host, with the reason) and the compile report.

:func:`place` decides per op, from the accelerator config and the op's static shapes:

* ``linear`` / ``matmul`` -> ``systolic`` when the config has one whose operands hold int8
  (a signed format of >= 8 bits) and whose accumulator cannot overflow on a K-long int8 dot
  product (``K * 2**14 < 2**(acc_width - 1)``); the host driver tiles any M, N, K.
* ``softmax`` -> ``softmax`` when rows (along ``dim``) have <= ``max_len`` elements and fit
  the engine's ``depth``; ``gelu`` -> ``gelu`` (any size: the driver cuts rows);
  ``layer_norm`` -> ``layernorm`` when rows fit as for softmax, ``eps`` equals the engine's
  (a generation parameter) and gamma / beta fit int16 with ``gamma_frac`` / ``out_frac``.
* ``linear`` with one row (``M = 1``) -> ``pim`` instead when the config has a PIM engine that
  holds it and its modelled program is faster (``compiler/pim.py``: :func:`route_gemv`, called
  after :func:`place`).
* ``view`` / ``scale`` / ``mask`` are ``fused`` (data movement and scale folding, no engine);
  ``add`` and ``host`` ops, and any op the config cannot take, go to ``host`` with a reason.
  A missing engine is not an error: the op runs on the host.

:func:`predict` gives an engine op's cycles from the engines' cycle models, for the calls the
host drivers make: the systolic engine's exact ``cycles`` summed over the tiles
``host.systolic.plan_dma`` picks (and that plan's program time from the cycle-level program
model, ``host.timing.gemm_program_cycles``, DMA included); the
nonlinear engines' ``cycles`` methods over the row chunks ``host.nonlinear`` issues (LayerNorm's
depends on the data: the prediction is for the inputs of the run it comes from).
"""

from __future__ import annotations

import math

from .graph import Graph

__all__ = ["place", "predict", "Report", "ENGINES"]

ENGINES = ("systolic", "softmax", "gelu", "layernorm", "pim", "host", "fused")


def place(graph: Graph, cfg) -> dict[str, tuple[str, str]]:
    """``{op name: (engine, reason)}``: why an op is on the host, or a note on an engine op
    whose semantics differ from the float op's (tanh GELU computed by the erf engine)."""
    out = {}
    for op in graph.ops:
        if op.kind == "input":
            out[op.name] = ("input", "")
        elif op.kind in ("view", "scale", "mask"):
            out[op.name] = ("fused", "")
        elif op.kind in ("add", "host"):
            out[op.name] = ("host", op.reason or f"{op.kind} has no engine")
        else:
            why = _check(graph, op, cfg)
            out[op.name] = ("host", why) if why else (_KIND_ENGINE[op.kind], _note(op))
    return out


_KIND_ENGINE = {"linear": "systolic", "matmul": "systolic", "softmax": "softmax",
                "gelu": "gelu", "layer_norm": "layernorm"}  # fmt: skip


def _note(op) -> str:
    if op.kind == "gelu" and op.attrs["approximate"] == "tanh":
        return "tanh GELU computed as erf GELU (they differ by <= 4.7e-4)"
    return ""


def _check(graph, op, cfg) -> str:
    """Why ``op`` cannot run on its engine of ``cfg`` ('' when it can)."""
    kind = _KIND_ENGINE[op.kind]
    e = cfg.engine(kind)
    if e is None:
        have = ", ".join(type(x).kind for x in cfg.engines)
        return f"the accelerator has no {kind} engine (it has: {have})"
    in_shape = graph.op(op.inputs[0]).shape
    if kind == "systolic":
        if op.kind == "matmul" and min(len(in_shape), len(graph.op(op.inputs[1]).shape)) < 2:
            return "a 1-D matmul operand"
        fmt = e.fmt
        if not fmt.signed or fmt.width < 8:
            return f"the systolic engine's {fmt.name} operands cannot hold int8"
        k = in_shape[-1]
        if k * (1 << 14) >= 1 << (e.acc_width - 1):
            return f"K = {k} could overflow the {e.acc_width}-bit accumulator"
        return ""
    if kind == "gelu":
        return ""
    n = op.shape[op.attrs["dim"]] if kind == "softmax" else op.shape[-1]
    if n > e.max_len:
        return f"rows of {n} exceed the {kind} engine's max_len of {e.max_len}"
    if -(-n // e.lanes) > e.depth:
        return f"rows of {n} need more than the {kind} engine's depth of {e.depth} words"
    if kind == "layernorm":
        if not math.isclose(op.attrs["eps"], e.eps, rel_tol=1e-6, abs_tol=0):
            return f"eps {op.attrs['eps']:g} differs from the engine's {e.eps:g}"
        for key, frac in (("weight", e.gamma_frac), ("bias", e.out_frac)):
            name = op.attrs[key]
            if name is not None and float(graph.consts[name].abs().max()) >= 2.0 ** (15 - frac):
                return f"the LayerNorm {key} does not fit int16 with {frac} fraction bits"
    return ""


# ---- cycle predictions ------------------------------------------------------------------------


def _engine(kind, cfg):
    from ..chain import engine_model

    return engine_model(kind, cfg)


def _row_chunks(rows: int, n: int, cfg):
    """(first row, count) of the chunks host.nonlinear issues for rows of n elements."""
    per = min(cfg.depth // -(-n // cfg.lanes), 65535)
    for r0 in range(0, rows, per):
        yield r0, min(per, rows - r0)


def predict(engine: str, calls: list, acfg) -> dict:
    """``{"cycles": engine cycles, "program": modelled program cycles or None, "words":
    device-memory words}`` of the calls (a resident call, a dict: :mod:`.residency`)."""
    if calls and isinstance(calls[0], dict):
        from .residency import predict_resident

        out = [predict_resident(engine, c, acfg) for c in calls]
        return {"cycles": sum(o["cycles"] for o in out), "program": None,
                "words": sum(o["words"] for o in out)}  # fmt: skip
    if engine == "attention" and calls and calls[0][0] == "ops":  # a chain run op by op
        parts = {}
        for _, eng, call in calls:
            parts.setdefault(eng, []).append(call)
        out = [predict(eng, cs, acfg) for eng, cs in parts.items()]
        return {"cycles": sum(o["cycles"] for o in out), "words": sum(o["words"] for o in out),
                "program": None if None in [o["program"] for o in out]
                else sum(o["program"] for o in out)}  # fmt: skip
    if engine == "attention":  # per head: Q K^T (OS), softmax rows, P V (WS)
        from ...generators.systolic.model import cycles

        from ...generators.systolic.engine import window_layout

        scfg, sm = acfg.engine("systolic"), acfg.engine("softmax")
        lay = window_layout(scfg)
        lw, tw = lay["left"].width // 32, lay["top"].width // 32
        aw = scfg.cols * -(-scfg.acc_width // 32)
        R, C = scfg.rows, scfg.cols
        total = words = 0
        for call in calls:  # (heads, seq, dim), or (heads, queries, keys, dim) for a decode step
            heads, s, kv, d = call if len(call) == 4 else (call[0], call[1], call[1], call[2])
            per = cycles(s, d, kv, "os", scfg) + cycles(s, kv, d, "ws", scfg)
            total += heads * (per + _engine("softmax", sm).cycles(kv, s))
            # device memory: Q, K^T, V in and the context out, nothing of S x S
            words += heads * (-(-s // R) * d * lw + -(-kv // C) * d * tw + -(-d // C) * kv * tw
                              + -(-d // C) * s * aw)  # fmt: skip
        return {"cycles": total, "program": None, "words": words}
    if engine == "pim":  # M = 1 linears: (n, k) per call
        from .pim import gemv_program_cycles

        ps = [gemv_program_cycles(acfg, n, k) for n, k in calls]
        return {key: sum(p[key] for p in ps) for key in ("cycles", "program", "words")}
    cfg = acfg.engine(engine)
    if engine == "systolic":
        from ...generators.systolic.model import cycles
        from ..systolic import _hw_df, default_dataflow, plan_dma, plan_traffic
        from ..timing import gemm_program_cycles

        total = program = words = 0
        for call in calls:
            m, k, n = call[:3]
            df = (call[3] if len(call) > 3 else None) or default_dataflow(cfg)
            if df == "is":  # hardware roles: IS computes the transpose
                m, n = n, m
            p, prog = plan_dma(m, k, n, df, cfg, acfg)
            exact = gemm_program_cycles(m, k, n, _hw_df(df), p, cfg, acfg)
            program += prog if exact is None else exact
            t = plan_traffic(p, m, k, n, _hw_df(df), cfg)
            words += t["load"] + t["store"]
            total += sum(cycles(mt, kc, nt, df, cfg) for mt, kc, nt in p.gemms(m, k, n, cfg.cols))
        return {"cycles": total, "program": program, "words": words}
    from ..timing import rows_program_cycles

    eng = _engine(engine, cfg)
    wins = {w.name: w for w in eng.windows()}
    per_row = wins["in"].stride + wins["out"].stride  # words per vector word of a row, in + out
    total = words = 0
    program = 0
    for x in calls:
        if engine == "gelu":
            n = min(cfg.max_len, cfg.depth * cfg.lanes, x)
            rows = -(-x // n) if x else 0
            total += sum(eng.cycles(n, c) for _, c in _row_chunks(rows, n, cfg))
            words += rows * -(-n // cfg.lanes) * per_row
            program += rows_program_cycles(engine, rows, n, acfg) if rows else 0
            continue
        rows, n = x.shape
        words += rows * -(-n // cfg.lanes) * per_row
        per_chunk = []  # each instruction's engine cycles (softmax: fully masked rows are
        for r0, c in _row_chunks(rows, n, cfg):  # shorter; LayerNorm: the data decide)
            chunk = x[r0 : r0 + c]
            if engine == "softmax":
                masked = int((chunk == cfg.in_fmt.min).all(dim=1).sum())
                per_chunk.append(eng.cycles(n, c, masked))
            else:
                per_chunk.append(eng.cycles(chunk.tolist()))
        total += sum(per_chunk)
        if rows:
            program += rows_program_cycles(engine, rows, n, acfg, tuple(per_chunk))
    return {"cycles": total, "program": program, "words": words}


# ---- the report -------------------------------------------------------------------------------


class Report:
    """One row per op: name, kind, engine, reason, shapes, MACs, predicted and measured cycles.

    ``str(report)`` is a markdown table; ``to_dict()`` / ``from_dict()`` round-trip it."""

    COLUMNS = ("op", "kind", "engine", "mode", "dataflow", "tiles", "in shapes", "out shape", "MACs",
               "pred cycles", "pred program", "pred words", "meas busy", "meas program",
               "meas words", "reason")  # fmt: skip

    def __init__(self, rows: list[dict], allocation: dict | None = None):
        self.rows = rows
        self.allocation = allocation  # the scratchpad allocation's summary (compile())

    @classmethod
    def build(cls, graph: Graph, placement: dict) -> Report:
        rows = []
        for op in graph.ops:
            if op.kind == "input":
                continue
            engine, reason = placement[op.name]
            rows.append({"op": op.name, "kind": op.kind, "engine": engine, "reason": reason,
                         "in_shapes": [list(graph.op(i).shape) for i in op.inputs],
                         "shape": list(op.shape), "macs": _macs(graph, op),
                         "predicted": None, "program": None, "words": None,
                         "schedule": None, "measured": None})  # fmt: skip
        return cls(rows)

    def set_schedule(self, schedules: dict) -> None:
        """Record each systolic op's chosen dataflow and tiles (``host.systolic.choose``)."""
        for r in self.rows:
            if r["op"] in schedules:
                r["schedule"] = schedules[r["op"]]

    def update(self, trace: list[dict]) -> None:
        """Fill predicted (and, from a device run, measured) cycles from an executor trace."""
        by = {r["op"]: r for r in self.rows}
        for t in trace:
            row = by[t["name"]]
            row["predicted"] = t["predicted"]["cycles"]
            row["program"] = t["predicted"]["program"]
            row["words"] = t["predicted"].get("words")
            if t["measured"] is not None:
                row["measured"] = t["measured"]

    def engine_of(self, op: str) -> str:
        return next(r["engine"] for r in self.rows if r["op"] == op)

    def set_allocation(self, summary: dict, resident: dict, cfg) -> None:
        """Record the allocation (which ran, objective, time) and mark the chained ops (a
        consumer runs WS GEMMs on its resident operand: its tiles are those)."""
        from .residency import resident_plan

        self.allocation = dict(summary)
        consumers = {c: a for a in resident.values() for c in a["consumers"]}
        for r in self.rows:
            if r["op"] in resident:
                r["chained"] = True
            elif r["op"] in consumers:
                a, n = consumers[r["op"]], r["shape"][-1]
                p = resident_plan(a["m"], a["k"], n, cfg.engine("systolic"), cfg)
                r["chained"] = True
                r["schedule"] = {**(r["schedule"] or {}), "dataflow": "ws", "mt": a["m"],
                                 "nt": p.nt, "kc": p.kc}  # fmt: skip

    def to_dict(self) -> dict:
        return {"rows": [dict(r) for r in self.rows], "allocation": self.allocation}

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        return cls([{"words": None, "schedule": None, **r} for r in d["rows"]],
                   d.get("allocation"))  # fmt: skip

    def words(self) -> dict:
        """Device-memory words over the engine ops: predicted, and measured after a device run."""
        rows = [r for r in self.rows if r.get("words") is not None]
        meas = [r["measured"]["words"] for r in rows if r["measured"]]
        return {"predicted": sum(r["words"] for r in rows),
                "measured": sum(meas) if meas and len(meas) == len(rows) else None}  # fmt: skip

    def totals(self) -> dict:
        """Sums over the ops. After a device run, ``model`` is the timing model's cycles of the
        programs the ops ran, over the ops whose programs it can model (``modelled_program``:
        their measured cycles; ``unmodelled``: the others, LayerNorm's from device buffers,
        whose engine cycles depend on data the host does not have)."""
        out = {"macs": 0, "predicted": 0, "busy": 0, "program": 0, "model": 0,
               "modelled_program": 0, "unmodelled": []}  # fmt: skip
        for r in self.rows:
            out["macs"] += r["macs"]
            out["predicted"] += r["predicted"] or 0
            if r["measured"]:
                out["busy"] += r["measured"]["busy"]
                out["program"] += r["measured"]["program"]
                m = r["measured"].get("model")
                if m is not None:
                    out["model"] += m
                    out["modelled_program"] += r["measured"]["program"]
                elif r["measured"]["program"]:
                    out["unmodelled"].append(r["op"])
        return out

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.COLUMNS) + " |",
                 "|" + "|".join(" --- " for _ in self.COLUMNS) + "|"]  # fmt: skip
        for r in self.rows:
            m = r["measured"] or {}
            sc = r.get("schedule") or {}
            tiles = f"{sc['mt']}x{sc['kc']}x{sc['nt']}" if sc else ""
            mode = {"fused": "", "host": "", "input": ""}.get(
                r["engine"], "chained" if r.get("chained") else "sequential")
            if r["engine"] == "attention" and r["reason"].startswith("fused"):
                mode = "dataflow"  # an attention chain on chip (else op by op: sequential)
            cells = [r["op"], r["kind"], r["engine"], mode, sc.get("dataflow", ""), tiles,
                     " ".join("x".join(map(str, s)) or "()" for s in r["in_shapes"]),
                     "x".join(map(str, r["shape"])) or "()", _n(r["macs"] or None),
                     _n(r["predicted"]), _n(r["program"]), _n(r.get("words")),
                     _n(m.get("busy")), _n(m.get("program")), _n(m.get("words")),
                     r["reason"]]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        t = self.totals()
        engines = {}
        for r in self.rows:
            engines[r["engine"]] = engines.get(r["engine"], 0) + 1
        lines.append("")
        lines.append(
            f"{len(self.rows)} ops ("
            + ", ".join(f"{k} {v}" for k, v in sorted(engines.items()))
            + f"); {t['macs']:,} MACs; predicted engine cycles {t['predicted']:,}"
            + (f"; measured busy {t['busy']:,}, program {t['program']:,}" if t["busy"] else "")
            + (f"; the timing model of the programs that ran: {t['model']:,} cycles vs "
               f"{t['modelled_program']:,} measured"
               + (f" (not modelled: {', '.join(t['unmodelled'])})" if t["unmodelled"] else "")
               if t["busy"] else "")  # fmt: skip
        )
        a = self.allocation
        if a:
            w = self.words()
            lines.append(
                f"scratchpad allocation: {a['method']} ({a['status']}), {a['tensors']} candidate "
                f"tensors, {a['variables']} integer variables, {a['solve_s'] * 1e3:.1f} ms; "
                f"device-memory words {a['objective']:,} (nothing resident: {a['base']:,}); "
                f"resident: {', '.join(a['resident']) or 'none'}"
                + (f"; measured words {w['measured']:,}" if w["measured"] is not None else "")
            )
        return "\n".join(lines)

    __str__ = to_markdown


def _n(v) -> str:
    return "" if v is None else f"{v:,}"


def _macs(graph, op) -> int:
    if op.kind == "linear":
        shape = graph.op(op.inputs[0]).shape
        return math.prod(shape) * op.shape[-1]
    if op.kind == "matmul":
        k = graph.op(op.inputs[0]).shape[-1]
        return math.prod(op.shape) * k
    return 0
