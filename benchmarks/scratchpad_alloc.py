"""The compiler's scratchpad allocation (COSMA-style ILP, heuristic fallback) on the simulated board.

For each seeded model, compiled for its board: the device-memory words with nothing kept on
chip (``base``), the heuristic's and the ILP's objectives, the words the board's PERF_LOAD +
PERF_STORE counters counted for each allocation (they must equal the objective), the sum of
PERF_PROGRAM cycles, the solve time and whether the device output equalled the golden model.

* chain board (``examples/chain.yaml``: 4x4 systolic, 128-entry scratchpads): the BERT-style
  encoder and GPT-style decoder blocks of ``tests/test_compiler.py`` (hidden 32, sequence 8)
  and the two-branch model of ``tests/test_alloc.py``;
* MiniLM board (``benchmarks/minilm_encoder.py``: 8x8, 1024-entry scratchpads): the encoder and
  decoder blocks of ``benchmarks/transformer_block.py`` (hidden 64, 48 tokens).

Then the solvers alone on random problems (one 128-entry memory, blocks every other step):
ILP solve time and its saving against the heuristic's.

    python benchmarks/scratchpad_alloc.py     # writes benchmarks/results/scratchpad_alloc.{md,json}
"""

from __future__ import annotations

import datetime
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _models():
    from gatesmith.tests.test_alloc import CFG, Branches
    from gatesmith.tests.test_compiler import CALIB, HELD_OUT, Decoder, Encoder, _model
    from minilm_encoder import CONFIG
    from transformer_block import BATCH, H, SEQ, Block

    def branches():
        torch.manual_seed(20261202)
        g = torch.Generator().manual_seed(20261202)
        calib = [(torch.randn(1, 8, 16, generator=g),) for _ in range(4)]
        return Branches().eval(), calib, (torch.randn(1, 8, 16, generator=g),)

    def block(causal):
        def make():
            torch.manual_seed(1)
            g = torch.Generator().manual_seed(2)
            calib = [(torch.randn(BATCH, SEQ, H, generator=g),) for _ in range(4)]
            return Block(causal).eval(), calib, (torch.randn(BATCH, SEQ, H, generator=g),)

        return make

    return [
        ("chain", CFG, [("encoder (h32, s8)", lambda: (_model(Encoder), CALIB, HELD_OUT)),
                        ("decoder (h32, s8)", lambda: (_model(Decoder), CALIB, HELD_OUT)),
                        ("two branches", branches)]),
        ("minilm", CONFIG, [("encoder block (h64, 48 tokens)", block(False)),
                            ("decoder block (h64, 48 tokens)", block(True))]),
    ]  # fmt: skip


def run_model(dev, cfg, make) -> dict:
    from gatesmith.host.compiler import DeviceBackend, compile

    model, calib, x = make()
    out = {}
    for label, limit in (("ilp", None), ("heuristic", 0)):
        c = compile(model, calib[0], cfg, calibration=calib, ilp_limit=limit)
        golden = c.run(x)
        runs = [(label, c.alloc)] + ([("none", {})] if label == "ilp" else [])
        for name, alloc in runs:
            keep, c.alloc = c.alloc, alloc
            be = DeviceBackend(dev)
            dev.reset_perf()
            y = c.run(x, be)
            perf = dev.perf()
            be.close()
            c.alloc = keep
            a = c.report.allocation
            out[name] = {"counted": perf["load"] + perf["store"],
                         "objective": a["objective"] if name != "none" else a["base"],
                         "program": c.report.totals()["program"], "exact": torch.equal(y, golden),
                         "method": a["method"] if name != "none" else "none",
                         "solve_ms": round(a["solve_s"] * 1e3, 2), "resident": a["resident"]
                         if name != "none" else []}  # fmt: skip
    return out


def random_problems() -> list[dict]:
    from gatesmith.host.compiler import alloc as A

    rows = []
    for n in (10, 20, 40, 80, 160):
        rnd = random.Random(n)
        ts = []
        for i in range(n):
            s = rnd.randrange(0, n)
            ts.append(A.Tensor(f"t{i}", "m", rnd.choice([16, 32, 48, 64]), s,
                               s + rnd.randrange(0, 4), rnd.randrange(50, 500)))  # fmt: skip
        blocks = [A.Block("m", 0, rnd.choice([32, 64, 80, 128]), s) for s in range(0, n, 2)]
        p = A.Problem({"m": 128}, ts, blocks, 10**6)
        t0 = time.monotonic()
        ilp = A.solve_ilp(p, time_limit=120)
        dt = time.monotonic() - t0
        h = A.heuristic(p)
        rows.append({"tensors": n, "variables": ilp.variables, "constraints": ilp.constraints,
                     "ilp_saving": p.base - ilp.objective, "heuristic_saving": p.base - h.objective,
                     "ilp_s": round(dt, 3), "heuristic_ms": round(h.solve_s * 1e3, 3),
                     "status": ilp.status})  # fmt: skip
    return rows


def main():
    import gatesmith.host
    from gatesmith.config import load_config
    from gatesmith.host.compiler import alloc as A

    A.solve_ilp(A.Problem({"m": 4}, [A.Tensor("a", "m", 1, 0, 0, 1)], [], 1))  # import scipy
    res = {"date": datetime.date.today().isoformat(), "machine": platform.machine(),
           "python": platform.python_version(), "models": [], "random": random_problems()}  # fmt: skip
    for board, cfg, models in _models():
        cfg = load_config(cfg)
        with gatesmith.host.open("sim", config=cfg, timeout=1800) as dev:
            for name, make in models:
                r = run_model(dev, cfg, make)
                res["models"].append({"board": board, "model": name, **r})
                print(board, name, r, flush=True)
    lines = ["# Scratchpad allocation: ILP vs heuristic, counted on the simulated board", "",
             f"{res['date']}, {res['machine']}, Python {res['python']}; "
             "`python benchmarks/scratchpad_alloc.py`.", "",
             "Device-memory words (PERF_LOAD + PERF_STORE, 32-bit) and the sum of PERF_PROGRAM "
             "cycles over the engine ops; `objective` is the allocation's prediction.", "",
             "| board | model | nothing kept | heuristic: objective / counted | ILP: objective / "
             "counted | ILP solve | kept (ILP) | program cycles none / heur / ILP | exact |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for m in res["models"]:
        n, h, i = m["none"], m["heuristic"], m["ilp"]
        lines.append(
            f"| {m['board']} | {m['model']} | {n['counted']:,} | {h['objective']:,} / "
            f"{h['counted']:,} | {i['objective']:,} / {i['counted']:,} | {i['solve_ms']} ms | "
            f"{', '.join(i['resident']) or '-'} | {n['program']:,} / {h['program']:,} / "
            f"{i['program']:,} | {'yes' if n['exact'] and h['exact'] and i['exact'] else 'NO'} |")
    lines += ["", "Random problems (one 128-entry memory, a block every other step):", "",
              "| tensors | integer variables | constraints | ILP solve | ILP saving | heuristic "
              "saving | heuristic time | ILP status |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in res["random"]:
        lines.append(f"| {r['tensors']} | {r['variables']} | {r['constraints']} | {r['ilp_s']} s | "
                     f"{r['ilp_saving']:,} | {r['heuristic_saving']:,} | {r['heuristic_ms']} ms | "
                     f"{r['status']} |")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scratchpad_alloc.json").write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / "scratchpad_alloc.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
