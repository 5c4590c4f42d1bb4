"""Placement by roofline: each engine-capable op on the accelerator or on the host (GPU or CPU).

    acc = AccelRoofline.from_config(cfg)            # peak MAC/s at cfg.clock_hz, bytes/s of DMA
    host = HostRoofline.measure("cpu")              # a timed matmul, copy and tiny op, now
    d = decide(op, graph, cfg, acc, host, policy="roofline")
    d.device, d.reason, d.pred_accel_s, d.pred_host_s

Each device is a roofline: a peak compute rate and a memory bandwidth, so an op of ``work``
units over ``bytes`` of traffic (arithmetic intensity ``work / bytes``) takes
``max(work / peak, bytes / bandwidth)`` plus the device's fixed cost per op.

* **Accelerator** (:class:`AccelRoofline`), at the config's ``clock_hz`` (50 MHz unless the
  config says otherwise): the systolic engine's peak is ``rows * cols`` MAC per cycle; a
  nonlinear engine's ``lanes`` elements per cycle; the PIM engine's ``banks * lanes`` MAC per
  cycle; memory moves 4 bytes per beat, one beat every ``mem_cycles_per_beat`` cycles (int8
  operands, int32 accumulators, 16-bit nonlinear values). The roofline is a bound; the engine's
  cycle model (``host.compiler.report.predict``: the exact GEMM cycles of the tiles the driver
  picks and that plan's modelled DMA program time, or the nonlinear engines' per-row models) is
  the tighter prediction, and the placement takes the larger of the two. The fixed cost per op,
  ``launch_cycles``, is the program fetch, the DMA descriptors and the done handshake.
* **Host** (:class:`HostRoofline`): its peak is measured on the spot (a timed float32 matmul),
  its bandwidth a timed copy, its fixed cost per op a timed tiny op (the eager dispatch);
  float32 values in and out. A nonlinear op counts a few flops per element (softmax 5,
  LayerNorm 8, GELU 10).

Policies: ``"roofline"`` (the faster predicted device), ``"balance"`` (from the roofline
placement, move ops to the accelerator, least slowed down first, while that lowers the busier
device's predicted time per request: with requests pipelined over both devices the slower one
sets the throughput), ``"accelerator"`` (every op the
accelerator can run, whatever it costs: accelerator-only) and ``"host"`` (nothing on the
accelerator: GPU- or CPU-only). Every decision carries its reason.

GEMV-shaped work (a ``linear`` with ``M = 1``: decode steps, classifier heads) goes to the PIM
banks when the config has a PIM engine that holds it and its modelled program beats the
systolic engine's (``host.compiler.pim.route_gemv``, which gives the reason); it is then priced
here on the PIM engine's roofline, whose traffic is the vector in and the results out (the
weights stay resident in the banks), and its cycle model is ``gemv_program_cycles`` (the
mapper's exact engine cycles and the program's DMA), against the host as for any engine op.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..errors import UsageError

__all__ = ["AccelRoofline", "HostRoofline", "Decision", "decide", "POLICIES", "op_work"]

POLICIES = ("roofline", "balance", "accelerator", "host")
ACCEL_ENGINES = ("systolic", "softmax", "gelu", "layernorm", "pim")
_HOST_FLOPS_PER_ELEM = {"softmax": 5, "layer_norm": 8, "gelu": 10}
# measured on the simulated chain board: program cycles minus engine busy cycles of a one-row
# softmax program (fetch, DMA descriptors, done handshake); see benchmarks/torch_split.py
LAUNCH_CYCLES = 150


@dataclass(frozen=True)
class AccelRoofline:
    """The accelerator's roofline at ``clock_hz``: peaks per engine and DMA bandwidth."""

    clock_hz: float
    bytes_per_s: float
    peaks: dict  # engine -> work units per second (MAC/s or elements/s)
    launch_s: float

    @classmethod
    def from_config(cls, cfg, clock_hz: float | None = None,
                    launch_cycles: int = LAUNCH_CYCLES) -> AccelRoofline:  # fmt: skip
        f = float(cfg.clock_hz if clock_hz is None else clock_hz)
        peaks = {}
        for e in cfg.engines:
            kind = type(e).kind
            if kind == "systolic":
                peaks[kind] = e.rows * e.cols * f
            elif kind == "pim":
                peaks[kind] = e.banks * e.lanes * f
            elif kind in ("softmax", "gelu", "layernorm"):
                peaks[kind] = e.lanes * f
        return cls(f, 4.0 * f / cfg.mem_cycles_per_beat, peaks, launch_cycles / f)

    def describe(self) -> str:
        p = ", ".join(f"{k} {v / 1e6:,.0f} M/s" for k, v in self.peaks.items())
        return (f"accelerator at {self.clock_hz / 1e6:g} MHz: {p}; "
                f"{self.bytes_per_s / 1e6:,.0f} MB/s DMA; {self.launch_s * 1e6:.1f} us per program")  # fmt: skip


@dataclass(frozen=True)
class HostRoofline:
    """The host device's roofline: ``flops`` (float32 flop/s), ``bytes_per_s``, ``op_s``."""

    device: str
    flops: float
    bytes_per_s: float
    op_s: float

    @classmethod
    def measure(cls, device: str = "cpu", *, n: int | None = None) -> HostRoofline:
        """Time a square float32 matmul (peak), a large copy (bandwidth) and a tiny add (the
        fixed cost per op) on ``device`` now; each the best of a few runs."""
        dev = torch.device(device)
        n = n or (4096 if dev.type == "cuda" else 384)
        a = torch.randn(n, n, device=dev)
        b = torch.randn(n, n, device=dev)
        big = torch.ones(8 << 20, device=dev)  # 32 MiB
        dst = torch.empty_like(big)
        tiny = torch.ones(8, device=dev)
        t_mm = _best(lambda: a @ b, dev)
        t_cp = _best(lambda: dst.copy_(big), dev)
        t_op = _best(lambda: tiny + tiny, dev, reps=50)
        return cls(str(dev), 2.0 * n**3 / t_mm, 2.0 * big.numel() * 4 / t_cp, t_op)

    def describe(self) -> str:
        return (f"{self.device}: {self.flops / 1e9:,.1f} GFLOP/s (timed {self.device} matmul), "
                f"{self.bytes_per_s / 1e9:,.1f} GB/s, {self.op_s * 1e6:.1f} us per op")  # fmt: skip


def _best(fn, dev, reps: int = 3) -> float:
    fn()  # warm up
    best = math.inf
    for _ in range(reps):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        best = min(best, time.perf_counter() - t0)
    return max(best, 1e-9)


@dataclass
class Decision:
    """Where one op runs and why; predicted seconds on each device (None: cannot run there)."""

    op: str
    kind: str
    device: str  # "accel" or "host"
    engine: str  # the engine, or "host"
    reason: str
    intensity: float | None = None  # work units per byte on the accelerator
    pred_accel_s: float | None = None
    pred_host_s: float | None = None
    planned: str = ""  # the engine it runs on when on the accelerator


def op_work(op, graph) -> dict:
    """``{"macs" | "elems", "m", "accel_bytes", "host_bytes", "host_flops"}`` of an engine op."""
    if op.kind in ("linear", "matmul"):
        a = graph.op(op.inputs[0]).shape
        k = a[-1]
        n = op.shape[-1]
        m = math.prod(op.shape[:-1]) if op.kind == "linear" else op.shape[-2]
        batch = 1 if op.kind == "linear" else math.prod(op.shape[:-2])
        macs = batch * m * k * n
        w_elems = k * n * batch
        return {"macs": macs, "m": m, "k": k, "n": n, "batch": batch,
                "accel_bytes": batch * m * k + w_elems + 4 * batch * m * n,
                "host_bytes": 4 * (batch * m * k + w_elems + batch * m * n),
                "host_flops": 2 * macs}  # fmt: skip
    elems = math.prod(op.shape)
    return {"elems": elems, "m": None, "accel_bytes": 4 * elems, "host_bytes": 8 * elems,
            "host_flops": _HOST_FLOPS_PER_ELEM.get(op.kind, 1) * elems}  # fmt: skip


def _host_time(w: dict, host: HostRoofline) -> float:
    return max(w["host_flops"] / host.flops, w["host_bytes"] / host.bytes_per_s) + host.op_s


def _model_cycles(op, graph, engine: str, w: dict, cfg) -> int:
    """The engine's cycle model for this op's calls (DMA program time for the systolic one)."""
    from .compiler.report import predict

    if engine == "systolic":
        p = predict("systolic", [(w["m"], w["k"], w["n"])] * w["batch"], cfg)
        return int(p["program"] or p["cycles"])
    if engine == "pim":
        from .compiler.pim import gemv_program_cycles

        return int(gemv_program_cycles(cfg, w["n"], w["k"])["program"])
    ecfg = cfg.engine(engine)
    n = op.shape[op.attrs["dim"]] if op.kind == "softmax" else op.shape[-1]
    rows = w["elems"] // max(1, n)
    if engine == "gelu":
        return int(predict("gelu", [w["elems"]], cfg)["cycles"])
    fmt = ecfg.in_fmt
    ramp = torch.arange(n, dtype=torch.int64) * max(1, fmt.max // max(1, 2 * n))
    return int(predict(engine, [ramp.expand(rows, n)], cfg)["cycles"])


def decide(op, graph, cfg, engine: str, acc: AccelRoofline, host: HostRoofline,
           policy: str = "roofline") -> Decision:  # fmt: skip
    """Place one op the compiler can run on ``engine`` of ``cfg`` (see the module doc)."""
    if policy not in POLICIES or policy == "balance":
        raise UsageError(f"placement must be one of {', '.join(POLICIES)}, not {policy!r}")
    w = op_work(op, graph)
    if engine == "pim":  # the weights stay in the banks: the vector in, the results out
        w["accel_bytes"] = w["k"] + 4 * w["n"]
    peak = acc.peaks.get(engine)
    work = w.get("macs", w.get("elems"))
    ai = work / w["accel_bytes"]
    roof = max(work / peak, w["accel_bytes"] / acc.bytes_per_s)
    model = _model_cycles(op, graph, engine, w, cfg) / acc.clock_hz
    t_acc = max(roof, model) + acc.launch_s
    t_host = _host_time(w, host)
    bound = "compute" if work / peak >= w["accel_bytes"] / acc.bytes_per_s else "memory"
    d = Decision(op.name, op.kind, "accel", engine, "", ai, t_acc, t_host, engine)
    where = f"{engine} {t_acc * 1e6:,.1f} us ({bound}-bound, AI {ai:.2f}) vs {host.device} {t_host * 1e6:,.1f} us"
    if policy == "accelerator":
        d.reason = f"accelerator-only placement ({where})"
    elif policy == "host":
        d.device, d.engine, d.reason = "host", "host", f"host-only placement ({where})"
    elif t_acc <= t_host:
        d.reason = f"roofline: {where}"
    else:
        d.device, d.engine = "host", "host"
        d.reason = f"roofline: {host.device} is faster: {where}"
    return d
