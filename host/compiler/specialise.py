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
* ``variant="sequential"``: the same engines without the COPY unit; compile with
  ``mode="sequential"`` for it (every op its own program through device memory).

Nothing else changes (memory sizes, formats, lanes), so compiling the model again for the
specialised config gives the same golden outputs (``tests/test_specialise.py``). The CLI:
``gatesmith compile MODEL.py --config ACCEL.yaml -o OUT --specialise`` writes
``OUT/specialised.yaml`` (and ``OUT/sequential.yaml``) for ``gatesmith generate``/``build``.
"""

from __future__ import annotations

import dataclasses

from ...errors import UsageError

__all__ = ["specialise", "VARIANTS"]

VARIANTS = ("schedule", "sequential")


def specialise(compiled, *, variant: str = "schedule", name: str | None = None):
    """(AccelConfig, notes): ``compiled.config`` cut down to what the schedule uses (module
    docstring); each note says what was dropped and why. UsageError for an unknown variant or
    a schedule that puts nothing on the accelerator."""
    if variant not in VARIANTS:
        raise UsageError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    cfg = compiled.config
    used = {engine for engine, _ in compiled.placement.values()}
    fused = "attention" in used
    kinds = {type(e).kind for e in cfg.engines}
    need = (used & kinds) | ({"systolic", "softmax"} if fused else set())
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
        if kind == "systolic" and dataflows:
            keep = tuple(d for d in e.dataflows if d in dataflows)
            if keep != tuple(e.dataflows):
                gone = ", ".join(d for d in e.dataflows if d not in keep)
                notes.append(f"dropped the systolic dataflows {gone}: the schedule picks none")
                e = dataclasses.replace(e, dataflows=keep)
        engines.append(e)
    copy = (fused or resident) and variant == "schedule"
    if cfg.copy_unit and not copy:
        why = ("the sequential variant chains nothing on chip" if variant == "sequential"
               else "the schedule runs no chain on chip")  # fmt: skip
        notes.append(f"dropped the COPY unit: {why}")
    suffix = "spec" if variant == "schedule" else "seq"
    new = dataclasses.replace(cfg, name=name or f"{cfg.name}_{suffix}", engines=tuple(engines),
                              copy_unit=copy)  # fmt: skip
    return new, notes
