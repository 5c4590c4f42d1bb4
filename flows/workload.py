"""Cycles of a GEMM workload on an accelerator, from the engines' exact Python cycle models.

A workload is a list of GEMMs ``C[M x N] = A[M x K] @ B[K x N]``. Each GEMM is placed on one
engine of the accelerator that runs GEMMs, and costed with the cycle model the engine's tests hold
equal to its RTL, for exactly the instructions its host driver issues:

* ``systolic``: ``host/systolic.plan_dma`` tiles the GEMM as the driver does; every tile's
  instruction costs ``generators/systolic/model.cycles`` (in the dataflow asked for, or the
  fastest built one); ``program_cycles`` is the planner's end-to-end estimate with the DMA
  traffic of operands in device memory. Ideal: ``M*K*N / (rows*cols)``.
* ``bitserial``: ``host/bitserial.plan`` blocks; each instruction costs
  ``generators/bitserial/model.cycles`` at the GEMM's ``w_bits``/``a_bits`` (default: the
  engine's maximum). Ideal: ``M*K*N * ceil(w_bits / bits_per_cycle) / (lanes*pes)``.
* ``pim``: ``M`` GEMVs of the ``N x K`` weight matrix, each as ``host/pim.plan_gemv`` maps it
  (cycles of its best mapping). Ideal: ``M * N*K / macs_per_cycle``.

The cycles are the engines' busy cycles: host transfers, which the drivers overlap with compute,
are not counted. The nonlinear engines (gelu, softmax, layernorm) run no GEMM and are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, UsageError

__all__ = ["Gemm", "GEMM_ENGINES", "parse_workload", "workload_cycles"]

GEMM_ENGINES = ("systolic", "bitserial", "pim")


@dataclass(frozen=True)
class Gemm:
    name: str
    m: int
    k: int
    n: int
    w_bits: int | None = None  # bitserial only: weight precision (default: the engine's max)
    a_bits: int | None = None  # bitserial only: activation precision

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n


def _int_field(value, path: str, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{path} must be an integer >= {lo}, not {value!r}")
    return value


def parse_workload(data, path: str = "workload") -> dict:
    """``{"gemms": [Gemm, ...], "engine": str, "dataflow": str}`` from the sweep file's mapping.

    ``gemms`` entries are ``[M, K, N]`` or ``{name, m, k, n, w_bits, a_bits}``; ``engine`` is
    ``auto`` (each GEMM on the engine with the fewest cycles) or an engine kind; ``dataflow`` is
    ``best`` or one of os, ws, is (systolic).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping with a 'gemms' list, not {data!r}")
    unknown = sorted(set(data) - {"gemms", "engine", "dataflow"})
    if unknown:
        raise ConfigError(f"{path} has no field {unknown[0]!r}; valid fields are dataflow, "
                          "engine, gemms")  # fmt: skip
    items = data.get("gemms")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}.gemms must be a non-empty list of [M, K, N], not {items!r}")
    gemms = []
    for i, it in enumerate(items):
        p = f"{path}.gemms[{i}]"
        if isinstance(it, (list, tuple)):
            if len(it) != 3:
                raise ConfigError(f"{p} must be [M, K, N], not {it!r}")
            it = dict(zip("mkn", it, strict=True))
        if not isinstance(it, dict):
            raise ConfigError(f"{p} must be [M, K, N] or a mapping with m, k, n, not {it!r}")
        bad = sorted(set(it) - {"name", "m", "k", "n", "w_bits", "a_bits"})
        if bad:
            raise ConfigError(f"{p} has no field {bad[0]!r}; valid fields are a_bits, k, m, n, "
                              "name, w_bits")  # fmt: skip
        dims = {d: _int_field(it.get(d), f"{p}.{d}") for d in "mkn"}
        bits = {b: None if it.get(b) is None else _int_field(it[b], f"{p}.{b}")
                for b in ("w_bits", "a_bits")}  # fmt: skip
        name = str(it.get("name", f"{dims['m']}x{dims['k']}x{dims['n']}"))
        gemms.append(Gemm(name=name, **dims, **bits))
    engine = data.get("engine", "auto")
    if engine not in ("auto", *GEMM_ENGINES):
        raise ConfigError(f"{path}.engine must be auto or one of {', '.join(GEMM_ENGINES)}, "
                          f"not {engine!r}")  # fmt: skip
    dataflow = data.get("dataflow", "best")
    if dataflow not in ("best", "os", "ws", "is"):
        raise ConfigError(f"{path}.dataflow must be best, os, ws or is, not {dataflow!r}")
    return {"gemms": gemms, "engine": engine, "dataflow": dataflow}


def _systolic(g: Gemm, cfg, dataflow: str) -> dict:
    from ..generators.systolic import model
    from ..host.systolic import plan_dma

    dfs = cfg.dataflows if dataflow == "best" else (dataflow,)
    if dataflow != "best" and dataflow not in cfg.dataflows:
        raise UsageError(f"dataflow {dataflow!r} is not built (built: {', '.join(cfg.dataflows)})")
    best = None
    for df in dfs:
        hm, hk, hn = (g.n, g.k, g.m) if df == "is" else (g.m, g.k, g.n)  # IS runs b.T @ a.T
        p, program = plan_dma(hm, hk, hn, df, cfg)
        total = sum(model.cycles(*((nt, kc, mt) if df == "is" else (mt, kc, nt)), df, cfg)
                    for mt, kc, nt in p.gemms(hm, hk, hn, cfg.cols))  # fmt: skip
        if best is None or total < best["cycles"]:
            best = {"cycles": total, "dataflow": df, "program_cycles": program}
    best["ideal"] = g.macs / (cfg.rows * cfg.cols)
    return best


def _bitserial(g: Gemm, cfg) -> dict:
    from ..generators.bitserial.model import Instr, check, cycles
    from ..host.bitserial import plan

    w_bits = g.w_bits or cfg.w_max_bits
    a_bits = g.a_bits or cfg.a_max_bits
    if w_bits > cfg.w_max_bits or a_bits > cfg.a_max_bits:
        raise UsageError(f"{w_bits}-bit weights / {a_bits}-bit activations do not fit this engine "
                         f"(w_max_bits {cfg.w_max_bits}, a_max_bits {cfg.a_max_bits})")  # fmt: skip
    m, n, k = g.m, g.n, g.k
    p = plan(cfg, m, n, k)
    total = 0
    for k0 in range(0, k, p.kb):
        for n0 in range(0, n, p.nb):
            for m0 in range(0, m, p.mb):
                ins = Instr(m=min(p.mb, m - m0), n=min(p.nb, n - n0), k=min(p.kb, k - k0),
                            w_bits=w_bits, a_bits=a_bits, w_enc=cfg.encodings[0],
                            a_enc=cfg.encodings[0])  # fmt: skip
                if check(cfg, ins) != 0:
                    raise UsageError(f"the engine rejects a {ins.m}x{ins.k}x{ins.n} block")
                total += cycles(cfg, ins)
    planes = -(-w_bits // cfg.bits_per_cycle)
    return {"cycles": total, "ideal": g.macs * planes / (cfg.lanes * cfg.pes)}


def _pim(g: Gemm, cfg) -> dict:
    from ..generators.pim.cycles import bandwidth_bound
    from ..host.pim import plan_gemv

    p = plan_gemv(cfg, g.n, g.k)
    return {"cycles": g.m * p.cycles, "ideal": g.m * bandwidth_bound(cfg, g.n, g.k),
            "mapping": p.strategy}  # fmt: skip


def _on_engine(g: Gemm, eng, dataflow: str) -> dict:
    kind = type(eng).kind
    if kind == "systolic":
        return _systolic(g, eng, dataflow)
    if kind == "bitserial":
        return _bitserial(g, eng)
    return _pim(g, eng)


def workload_cycles(cfg, workload: dict) -> dict:
    """Cycles of ``workload`` (from :func:`parse_workload`) on the AccelConfig ``cfg``.

    Returns ``{"cycles", "ideal", "utilisation", "per_engine": {kind: cycles or None},
    "gemms": [per-GEMM rows]}``; raises UsageError when no engine of ``cfg`` can run a GEMM.
    """
    engs = [e for e in cfg.engines if type(e).kind in GEMM_ENGINES]
    if workload["engine"] != "auto":
        engs = [e for e in engs if type(e).kind == workload["engine"]]
    if not engs:
        have = ", ".join(type(e).kind for e in cfg.engines)
        want = workload["engine"] if workload["engine"] != "auto" else " or ".join(GEMM_ENGINES)
        raise UsageError(f"the workload needs a {want} engine (this accelerator has: {have})")
    rows, per_engine = [], {type(e).kind: 0 for e in engs}
    for g in workload["gemms"]:
        best, why = None, []
        for eng in engs:
            kind = type(eng).kind
            try:
                r = _on_engine(g, eng, workload["dataflow"])
            except UsageError as e:
                per_engine[kind] = None
                why.append(f"{kind}: {e}")
                continue
            if per_engine[kind] is not None:
                per_engine[kind] += r["cycles"]
            if best is None or r["cycles"] < best["cycles"]:
                best = dict(r, engine=kind)
        if best is None:
            raise UsageError(f"no engine can run GEMM {g.name}: {'; '.join(why)}")
        rows.append({"name": g.name, "m": g.m, "k": g.k, "n": g.n, **best,
                     "utilisation": round(best["ideal"] / best["cycles"], 6)})  # fmt: skip
    cycles = sum(r["cycles"] for r in rows)
    ideal = sum(r["ideal"] for r in rows)
    return {"cycles": cycles, "ideal": ideal, "utilisation": round(ideal / cycles, 6),
            "per_engine": per_engine, "gemms": rows}  # fmt: skip
