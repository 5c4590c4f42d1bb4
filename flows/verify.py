"""``gatesmith verify``: the checks a user runs on a configuration before trusting it.

1. The AXI4-Lite checks that hold for every accelerator, whatever its engines: the cocotb bench
   ``gatesmith.tests.bench_axi`` (identity block and config ROM, control/status registers and
   performance counters, the instruction queue and its errors, error responses), driven by
   cocotbext-axi's ``AxiLiteMaster`` with and without pauses on every channel, on the generated
   accelerator under Verilator.
2. The verify bench of each engine the config has, and of no other: the function named by the
   engine's registry entry (``EngineSpec.verify``, ``"module:function"``), called as
   ``fn(cfg, engine_cfg, seed=, count=, cocotb=, progress=)``. It returns rows
   ``(check, case, ok, note)`` and raises ``AssertionError`` when a cocotb bench fails. Each
   compares the RTL bit-exact with the engine's golden model (the systolic bench also runs seeded
   random GEMMs through ``gatesmith.host`` on the simulated board).

``cocotb=False`` skips every cocotb bench and keeps the checks through the host driver.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import AccelConfig

__all__ = ["verify", "VerifyReport", "verify_plan", "engine_bench", "AXI_BENCH"]

AXI_BENCH = "gatesmith.tests.bench_axi"


@dataclass
class VerifyReport:
    rows: list[tuple[str, str, bool, str]] = field(default_factory=list)  # (check, case, ok, note)

    @property
    def ok(self) -> bool:
        return all(r[2] for r in self.rows)


def engine_bench(kind: str) -> Callable | None:
    """The verify bench function registered for engine ``kind``, or None when it has none."""
    from ..generators.registry import engine_spec

    ref = engine_spec(kind).verify
    if not ref:
        return None
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def verify_plan(cfg: AccelConfig) -> list[tuple[str, str]]:
    """What ``verify`` runs on ``cfg``, in order: (engine kind or "accelerator", bench)."""
    from ..generators.registry import engine_spec

    plan = [("accelerator", AXI_BENCH)]
    for e in cfg.engines:
        plan.append((type(e).kind, engine_spec(type(e).kind).verify))
    return plan


def _axi_bench(cfg: AccelConfig, seed: int) -> tuple[str, str, bool, str]:
    from ..generators.accel.top import Accelerator
    from ..sim.cocotb_runner import run_cocotb, verilog_of

    t0 = time.monotonic()
    run_cocotb(verilog_of(Accelerator(cfg), name="accel"), toplevel="accel", test_module=AXI_BENCH,
               env={"GATESMITH_CFG": cfg.to_json(), "GATESMITH_SEED": str(seed)},
               seed=seed)  # fmt: skip
    return ("cocotb bench_axi", "identity, registers, queue, errors (+ pauses)", True,
            f"{time.monotonic() - t0:.1f} s")  # fmt: skip


def verify(cfg: AccelConfig, *, seed: int = 1, count: int = 8, console=None,
           cocotb: bool = True) -> VerifyReport:  # fmt: skip
    """Run the accelerator's AXI4-Lite bench and each of its engines' verify benches; print a
    table and return the report (``report.ok`` is False if any check failed)."""
    from rich.console import Console
    from rich.table import Table

    con = console or Console(stderr=True)
    rep = VerifyReport()
    with con.status("verify") as st:
        for kind, ref in verify_plan(cfg):
            try:
                if kind == "accelerator":
                    if cocotb:
                        st.update("accelerator: bench_axi on Verilator (the first build takes "
                                  "a minute)")  # fmt: skip
                        rep.rows.append(_axi_bench(cfg, seed))
                    continue
                fn = engine_bench(kind)
                if fn is None:
                    rep.rows.append((kind, "-", False, "the engine registers no verify bench"))
                    continue
                rep.rows += fn(cfg, cfg.engine(kind), seed=seed, count=count, cocotb=cocotb,
                               progress=st.update)  # fmt: skip
            except AssertionError as e:
                rep.rows.append((kind if kind != "accelerator" else "cocotb bench_axi", ref,
                                 False, str(e)))  # fmt: skip
    if not rep.rows:
        nothing = "no check ran: every bench of this config is a cocotb bench"
        rep.rows.append(("verify", "-", False, nothing))
    t = Table(title=f"gatesmith verify: {cfg.name}")
    for col in ("check", "case", "result", "note"):
        t.add_column(col)
    for check, case, ok, note in rep.rows:
        t.add_row(check, case, "[green]pass" if ok else "[red]FAIL", note)
    con.print(t)
    passed = sum(r[2] for r in rep.rows)
    con.print(f"{passed} passed, {len(rep.rows) - passed} failed")
    return rep
