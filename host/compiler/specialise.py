"""An accelerator specialised to a compiled schedule: only the engines, dataflows and on-chip
chaining the schedule uses.

::

    c = compile(model, inputs, "accel.yaml")
    spec, notes = specialise(c)                  # an AccelConfig, and what was dropped and why
    seq, _ = specialise(c, variant="sequential")  # the baseline: no on-chip chaining at all

Engines talk to each other through one unit, the on-chip COPY (``generators/accel/copy.py``),
not through a route per engine pair, so "the connections the schedule uses" are: the engines
it places ops on, and the COPY unit when it runs a chain on chip (fused attention, or a
nonlinear output the scratchpad allocation keeps resident for the next GEMM). A systolic engine
keeps only the dataflows the schedule picked (plus OS and WS for fused attention, WS for a
resident operand's consumers).

* ``variant="schedule"`` (default): as above.
* ``variant="dataflow"``: the pure-dataflow baseline: the same engines with every connection
  between them built (the COPY unit, and every dataflow of the original systolic engine), so
  every chain that fits runs on chip whatever the schedule picked.
* ``variant="sequential"``: the pure-sequential baseline: the same engines without the COPY
  unit; every op is its own program through device memory (attention chains op by op, as
  ``mode="sequential"`` compiles them on any accelerator).

Nothing else changes (memory sizes, formats, lanes), and an attention chain is quantised the
same way whether it runs on chip or op by op (``fuse.py``), so the model compiled for any of
the three gives the same outputs bit for bit (``tests/test_specialise.py``; on the simulated
board, ``tests/test_variants.py``). The CLI: ``gatesmith compile MODEL.py --config ACCEL.yaml
-o OUT --specialise`` writes ``OUT/specialised.yaml``, ``OUT/dataflow.yaml`` and
``OUT/sequential.yaml`` for ``gatesmith generate``/``build``.
"""

from __future__ import annotations

import dataclasses

from ...errors import UsageError
from .fuse import on_chip

__all__ = ["specialise", "VARIANTS"]

VARIANTS = ("schedule", "dataflow", "sequential")


def specialise(compiled, *, variant: str = "schedule", name: str | None = None):
    """(AccelConfig, notes): ``compiled.config`` cut down to what the schedule uses (module
    docstring); each note says what was dropped and why. UsageError for an unknown variant or
    a schedule that puts nothing on the accelerator."""
    if variant not in VARIANTS:
        raise UsageError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    cfg = compiled.config
    used = {engine for engine, _ in compiled.placement.values()}
    fused = any(on_chip(c["fusion"]) for c in compiled.consts.values() if "fusion" in c)
    kinds = {type(e).kind for e in cfg.engines}
    need = (used & kinds) | ({"systolic", "softmax"} if "attention" in used else set())
    if not need:
        raise UsageError(
            f"the schedule puts no op on {cfg.name}'s engines: there is nothing to specialise"
        )
    dataflows = set()
    for op, (engine, _) in compiled.placement.items():
        sc = compiled.consts.get(op, {}).get("schedule") if engine == "systolic" else None
        if isinstance(sc, dict):
            dataflows.add(sc["dataflow"])
    if fused:
        dataflows |= {"os", "ws"}  # Q K^T in OS, P V in WS (host.attention)
    resident = bool(compiled.alloc)  # scratchpad-resident operands (.alloc)
    if resident:
        dataflows.add("ws")  # a resident operand's consumers run in WS (.residency)
    engines, notes = [], []
    for e in cfg.engines:
        kind = type(e).kind
        if kind not in need:
            notes.append(f"dropped the {kind} engine: no op of the schedule runs on it")
            continue
        if kind == "systolic" and dataflows and variant != "dataflow":
            keep = tuple(d for d in e.dataflows if d in dataflows)
            if keep != tuple(e.dataflows):
                gone = ", ".join(d for d in e.dataflows if d not in keep)
                notes.append(f"dropped the systolic dataflows {gone}: the schedule picks none")
                e = dataclasses.replace(e, dataflows=keep)
        engines.append(e)
    copy = variant == "dataflow" or ((fused or resident) and variant == "schedule")
    if cfg.copy_unit and not copy:
        why = ("the sequential variant chains nothing on chip" if variant == "sequential"
               else "the schedule runs no chain on chip")  # fmt: skip
        notes.append(f"dropped the COPY unit: {why}")
    elif copy and not cfg.copy_unit:
        notes.append("added the COPY unit: the dataflow variant chains on chip")
    suffix = {"schedule": "spec", "dataflow": "dataflow", "sequential": "seq"}[variant]
    new = dataclasses.replace(cfg, name=name or f"{cfg.name}_{suffix}", engines=tuple(engines),
                              copy_unit=copy)  # fmt: skip
    return new, notes
