"""``gatesmith verify``: the checks a user runs on a configuration before trusting it.

1. The cocotb bench ``gatesmith.tests.bench_axi`` on the generated AXI4-Lite accelerator under
   Verilator (identity block, CSRs, queue, GEMMs in every built dataflow, errors, backpressure).
2. Seeded random GEMMs through the host API on the simulated board (the host-link protocol over
   a socket, the tiling host driver), shapes that are not multiples of the array and operands at
   the format's extremes, each compared bit-exact with the golden model, and the golden model
   with ``torch`` int64 matmul.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..config import AccelConfig

__all__ = ["verify", "VerifyReport", "random_gemm_cases"]


@dataclass
class VerifyReport:
    rows: list[tuple[str, str, bool, str]] = field(default_factory=list)  # (check, case, ok, note)

    @property
    def ok(self) -> bool:
        return all(r[2] for r in self.rows)


def random_gemm_cases(scfg, seed: int, count: int):
    """(dataflow, a, b) cases: random shapes around the array size, plus the format's extremes."""
    g = torch.Generator().manual_seed(seed)
    fmt = scfg.fmt
    R, C = scfg.rows, scfg.cols
    cases = []
    for df in scfg.dataflows:
        for i in range(count):
            m = int(torch.randint(1, 3 * R + 2, (1,), generator=g))
            k = int(torch.randint(1, 4 * max(R, C) + 2, (1,), generator=g))
            n = int(torch.randint(1, 3 * C + 2, (1,), generator=g))
            a = torch.randint(fmt.min, fmt.max + 1, (m, k), generator=g)
            b = torch.randint(fmt.min, fmt.max + 1, (k, n), generator=g)
            cases.append((df, f"random {m}x{k}x{n}", a, b))
        m, k, n = R + 1, 2 * R + 3, C + 1
        for lo_a, lo_b in ((fmt.min, fmt.min), (fmt.min, fmt.max), (fmt.max, fmt.max)):
            a = torch.full((m, k), lo_a)
            b = torch.full((k, n), lo_b)
            cases.append((df, f"extremes {lo_a}*{lo_b} {m}x{k}x{n}", a, b))
    return cases


def verify(cfg: AccelConfig, *, seed: int = 1, count: int = 8, console=None,
           cocotb: bool = True) -> VerifyReport:  # fmt: skip
    from rich.console import Console
    from rich.table import Table

    from .. import host
    from ..generators.accel.top import Accelerator
    from ..generators.systolic import model
    from ..sim.cocotb_runner import run_cocotb, verilog_of

    con = console or Console(stderr=True)
    rep = VerifyReport()
    scfg = cfg.engine("systolic")
    if cocotb:
        with con.status("cocotb: AXI4-Lite bench on Verilator (the first build takes a minute)"):
            t0 = time.monotonic()
            try:
                run_cocotb(
                    verilog_of(Accelerator(cfg), name="accel"),
                    toplevel="accel",
                    test_module="gatesmith.tests.bench_axi",
                    env={"GATESMITH_CFG": cfg.to_json(), "GATESMITH_SEED": str(seed)},
                    seed=seed,
                )
                rep.rows.append(("cocotb bench_axi", "all tests", True, f"{time.monotonic() - t0:.1f} s"))
            except AssertionError as e:
                rep.rows.append(("cocotb bench_axi", "all tests", False, str(e)))
    if scfg is not None:
        cases = random_gemm_cases(scfg, seed, count)
        with con.status("starting the simulated board") as st:
            dev = host.open("sim", config=cfg, progress=lambda m: st.update(m))
        with dev, con.status("random GEMMs through the host link") as st:
            for i, (df, name, a, b) in enumerate(cases):
                st.update(f"GEMM {i + 1}/{len(cases)}: {df} {name}")
                got = dev.matmul(a, b, dataflow=df)
                gold = model.gemm(a, b, scfg)
                exact = torch.equal(got.long(), gold)
                ref = a.long() @ b.long()
                note = "== torch" if torch.equal(gold, ref) else "wrapped (acc overflow, as the model)"
                rep.rows.append((f"GEMM {df}", name, exact, note))
    t = Table(title=f"gatesmith verify: {cfg.name}")
    for col in ("check", "case", "result", "note"):
        t.add_column(col)
    for check, case, ok, note in rep.rows:
        t.add_row(check, case, "[green]pass" if ok else "[red]FAIL", note)
    con.print(t)
    passed = sum(r[2] for r in rep.rows)
    con.print(f"{passed} passed, {len(rep.rows) - passed} failed")
    return rep
