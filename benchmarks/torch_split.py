"""A model split between the simulated accelerator and the CPU: split vs CPU-only vs
accelerator-only, on the examples' sentence encoder and KV-cache decoder.

    python benchmarks/torch_split.py            # writes benchmarks/results/torch_split.{md,json,png}

For each placement (``balance``: the split; ``host``: CPU-only; ``accelerator``: every op the
chain config can run) the encoder embeds 8 sentences (requests pipelined over both devices) and
the decoder generates greedily for 2 prompts in lockstep (each step's requests pipelined).
Reported: throughput over the simulated wall time (Verilator board + host), the accelerator's
board cycles and their time at the config's clock (50 MHz), the share of the wall time both
devices were busy, and agreement with the float model (embedding cosine, greedy-token match).
The accelerator part of every run is checked bit for bit against its golden models.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
POLICIES = ("balance", "host", "accelerator")


def _example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def encoder(dev, policy):
    import gatesmith

    E = _example("sentence_encoder")
    m = E.model()
    g = gatesmith.compile(m, E.example_inputs(), device=dev, placement=policy, host="cpu",
                          calibration=E.calibration())  # fmt: skip
    reqs = E.sentences(8, 40)
    t0 = time.perf_counter()
    outs = g.run_many(reqs)
    wall = time.perf_counter() - t0
    tl = g.last_timeline
    golden = [g(*r, backend="golden") for r in reqs]
    with torch.no_grad():
        ref = [m(*r) for r in reqs]
    cos = min(F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
              for a, b in zip(outs, ref, strict=True))  # fmt: skip
    row = {"model": "sentence encoder", "placement": policy, "items": len(reqs),
           "wall_s": wall, "per_s": len(reqs) / wall, "board_cycles": tl.board_cycles(),
           "both_busy": tl.both_busy(), "accel_ops": len(g.accel_ops()),
           "partitions": len(g.parts), "bit_exact": all(torch.equal(a, b) for a, b in zip(outs, golden, strict=True)),
           "agreement": f"min cosine {cos:.4f}"}  # fmt: skip
    report = g.report()
    if policy == "balance":
        tl.plot(OUT / "torch_split_encoder_timeline.png", "sentence encoder, split")
    g.close()
    return row, report


def decoder(dev, policy):
    import gatesmith

    D = _example("gpt_decoder")
    m = D.model()
    g = gatesmith.compile(m, D.example_inputs(), device=dev, placement=policy, host="cpu",
                          calibration=D.calibration())  # fmt: skip
    prompts, new = D.prompts(2, seed=41), 4
    with torch.no_grad():
        ref = [D.generate(m, p, new) for p in prompts]
    state = [(list(p), *D.empty_cache()) for p in prompts]
    wall = cycles = both = 0.0
    exact = True
    steps = len(prompts[0]) + new - 1
    for t in range(steps):
        reqs = [D.step_inputs(toks[t], t, k, v) for toks, k, v in state]
        t0 = time.perf_counter()
        outs = g.run_many(reqs)
        dt = time.perf_counter() - t0
        wall += dt
        cycles += g.last_timeline.board_cycles()
        both += g.last_timeline.both_busy() * g.last_timeline.span
        exact &= all(torch.equal(o[0], g(*r, backend="golden")[0]) for o, r in zip(outs, reqs, strict=True))
        for i, (logits, k, v) in enumerate(outs):
            toks = state[i][0]
            if t + 1 >= len(prompts[i]):
                toks.append(int(logits[0, -1].argmax()))
            state[i] = (toks, k, v)
    gen = [s[0][len(p):] for s, p in zip(state, prompts, strict=True)]
    want = [r[len(p):] for r, p in zip(ref, prompts, strict=True)]
    match = sum(a == b for x, y in zip(gen, want, strict=True) for a, b in zip(x, y, strict=True))
    tokens = len(prompts) * steps  # every step processes one token per prompt
    row = {"model": "KV-cache decoder", "placement": policy, "items": tokens, "wall_s": wall,
           "per_s": tokens / wall, "board_cycles": int(cycles), "both_busy": both / wall,
           "accel_ops": len(g.accel_ops()), "partitions": len(g.parts), "bit_exact": exact,
           "agreement": f"greedy tokens {match}/{len(prompts) * new} match float"}  # fmt: skip
    report = g.report()
    g.close()
    return row, report


def main() -> int:
    import gatesmith.host
    from gatesmith.config import load_config

    cfg = load_config(str(ROOT / "examples" / "chain.yaml"))
    rows, reports = [], {}
    with gatesmith.host.open("sim", config=cfg) as dev:
        for fn in (encoder, decoder):
            for policy in POLICIES:
                row, rep = fn(dev, policy)
                rows.append(row)
                reports[f"{row['model']} ({policy})"] = rep
                print(row, flush=True)
    f = cfg.clock_hz
    lines = ["# A torch model split between the simulated accelerator and the CPU", "",
             f"Accelerator: `examples/chain.yaml` (4x4 systolic, softmax, GELU, LayerNorm) on the "
             f"Verilator-simulated board; board time is board cycles at its clock, "
             f"{f / 1e6:g} MHz. Host: the CPU of a shared 2-core machine (no GPU). `balance` is "
             "the split, `host` CPU-only, `accelerator` every op the config can run. Wall time "
             "is simulated: the Verilator board is far slower than the 50 MHz it models.", "",
             "| model | placement | items | wall s | items/s (wall) | board cycles | board ms at "
             f"{f / 1e6:g} MHz | both busy | accel ops | partitions | accel part bit-exact | agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['model']} | {r['placement']} | {r['items']} | {r['wall_s']:.2f} | "
                     f"{r['per_s']:.1f} | {r['board_cycles']:,} | {r['board_cycles'] / f * 1e3:.2f} | "
                     f"{r['both_busy']:.0%} | {r['accel_ops']} | {r['partitions']} | "
                     f"{'yes' if r['bit_exact'] else 'NO'} | {r['agreement']} |")  # fmt: skip
    lines += ["", "Items: sentences (encoder), tokens processed (decoder; prompt tokens fed one "
              "step at a time, 2 prompts in lockstep).", "",
              "Timeline of the split encoder: `torch_split_encoder_timeline.png`.", ""]  # fmt: skip
    for name, rep in reports.items():
        if "(balance)" in name:
            lines += [f"## Placement: {name}", "", rep, ""]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "torch_split.md").write_text("\n".join(lines))
    (OUT / "torch_split.json").write_text(json.dumps({"clock_hz": f, "rows": rows}, indent=1))
    print("\n".join(lines[:20]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
