"""Decode steps of the KV-cache decoder on a board with a systolic engine, a softmax engine and
PIM banks: GEMVs on the systolic engine vs on the PIM banks, and with decode attention
offloaded (``gatesmith.compile(..., pim=..., offload_attention=...)``).

    python benchmarks/pim_decode.py     # writes benchmarks/results/pim_decode.{md,json}

Every op the config can run is on the accelerator (``placement="accelerator"``; LayerNorm and
GELU have no engine here and run on the CPU). Per decode step (one prompt, 7 steps): board
cycles of the accelerator stages (PERF_PROGRAM, at the config's 50 MHz clock) and the simulated
wall time; every step is checked bit for bit against the golden models; then 4 steps pipelined
(``run_many``: programs launched and polled, host stages meanwhile) for the share of wall time
both devices were busy.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
RUNS = (("GEMVs on the systolic engine", False, False), ("GEMVs on the PIM banks", True, False),
        ("PIM GEMVs + offloaded decode attention", True, True))  # fmt: skip


def _example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def config():
    from gatesmith.config import load_config

    return load_config(str(ROOT / "examples" / "pim_split.yaml"))


def main() -> int:
    import gatesmith
    import gatesmith.host

    cfg = config()
    dec = _example("gpt_decoder")
    reqs = dec.requests()
    rows, reports = [], {}
    with gatesmith.host.open("sim", config=cfg) as dev:
        for name, pim, att in RUNS:
            g = gatesmith.compile(dec.model(), dec.example_inputs(), device=dev,
                                  placement="accelerator", host="cpu",
                                  calibration=dec.calibration(), pim=pim,
                                  offload_attention=att)  # fmt: skip
            g(*reqs[0])  # the PIM weights are loaded once, before the timed steps
            cyc, t0 = 0, time.perf_counter()
            for r in reqs:
                g(*r)
                cyc += g.last_timeline.board_cycles()
            wall = time.perf_counter() - t0
            exact = all(torch.equal(a, b) for r in reqs
                        for a, b in zip(g(*r), g(*r, backend="golden"), strict=True))  # fmt: skip
            g.run_many(reqs[:4])
            tl = g.last_timeline
            n_pim = sum(d.engine == "pim" for d in g.decisions.values())
            rows.append({"run": name, "accel_ops": len(g.accel_ops()), "pim_ops": n_pim,
                         "partitions": len(g.parts), "steps": len(reqs),
                         "board_cycles_per_step": cyc / len(reqs),
                         "wall_s_per_step": wall / len(reqs), "bit_exact": exact,
                         "both_busy": tl.both_busy()})  # fmt: skip
            reports[name] = g.report()
            print(rows[-1], flush=True)
            g.close()
    f = cfg.clock_hz
    lines = ["# Decode steps with PIM GEMVs and offloaded decode attention", "",
             "Board: `examples/pim_split.yaml`, 4x4 systolic (os, ws; 256-entry scratchpads), softmax (4 lanes), PIM (4 banks "
             "x 4 lanes int8, 32-operand rows) on the Verilator-simulated board at "
             f"{f / 1e6:g} MHz; host: the CPU of a shared 2-core machine. Model: "
             "`examples/gpt_decoder.py` (2 layers, hidden 32, 2 heads, context 16), 7 decode "
             "steps of one prompt, `placement=\"accelerator\"`.", "",
             "| run | accel ops | on PIM | partitions | board cycles / step | board us / step | "
             "wall s / step (simulated) | bit-exact vs golden | both busy (4 steps pipelined) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        c = r["board_cycles_per_step"]
        lines.append(f"| {r['run']} | {r['accel_ops']} | {r['pim_ops']} | {r['partitions']} | "
                     f"{c:,.0f} | {c / f * 1e6:,.1f} | {r['wall_s_per_step']:.2f} | "
                     f"{'yes' if r['bit_exact'] else 'NO'} | {r['both_busy']:.1%} |")  # fmt: skip
    lines += ["", "Board cycles: the accelerator stages' PERF_PROGRAM sums; wall time is "
              "dominated by the simulator and the host link, not by the board cycles.", ""]
    lines += ["## Placement: PIM GEMVs + offloaded decode attention", "", reports[RUNS[2][0]], ""]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pim_decode.md").write_text("\n".join(lines))
    (OUT / "pim_decode.json").write_text(json.dumps({"clock_hz": f, "rows": rows}, indent=1))
    print("\n".join(lines[:12]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
