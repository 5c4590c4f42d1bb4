"""Quantisation quality: BitMoD's per-group datatype mix against plain INT4 / INT3.

Weights [N, K] from three weight-like distributions (Gaussian; heavy-tailed Student-t, 3 degrees
of freedom; Gaussian with 0.5% outliers at 10x) are quantised per group of 128 along K with
:func:`gatesmith.host.quant.quantize_weights`: INT-b alone, or BitMoD (INT-b plus the FP-b grids
with extra resolution / extra asymmetry, least squared error per group). Scales are the engine's
16-bit integers with a power-of-two exponent per row. Reports mean squared error (relative to the
weights' variance too) and which datatypes the groups chose.

    python benchmarks/bitserial_quant.py [--n 256 --k 4096 --seed 0]

Writes ``benchmarks/results/bitserial_quant.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

from gatesmith.generators.bitserial.model import DATATYPES
from gatesmith.host.quant import quantize_weights


def distributions(n: int, k: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gauss = torch.randn(n, k, generator=g)
    u = torch.rand(n, k, generator=g).clamp_min(1e-12)
    chi = torch.randn(n, k, 3, generator=g).pow(2).sum(-1)
    student = torch.randn(n, k, generator=g) / torch.sqrt(chi / 3)
    outl = torch.randn(n, k, generator=g)
    mask = u < 0.005
    outl[mask] *= 10
    return {"gaussian": gauss, "student_t3": student, "outliers_0.5pct": outl}


def name_of(dt: int, bits: int) -> str:
    return f"int{bits}" if dt == 0 else DATATYPES[dt][0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/bitserial_quant")
    args = ap.parse_args(argv)
    rows = []
    for dist, w in distributions(args.n, args.k, args.seed).items():
        var = float(w.double().var())
        for bits in (4, 3):
            res = {}
            for types in ("int", "bitmod"):
                q = quantize_weights(w, bits=bits, group_size=args.group_size, types=types)
                mse = float(((q.dequantize() - w.double()) ** 2).mean())
                use = Counter(name_of(int(d), bits) for d in q.dtypes.flatten())
                res[types] = (mse, use)
            mse_i, mse_b = res["int"][0], res["bitmod"][0]
            total = sum(res["bitmod"][1].values())
            mix = ", ".join(f"{k} {100 * v / total:.0f}%"
                            for k, v in res["bitmod"][1].most_common())  # fmt: skip
            rows.append(dict(distribution=dist, bits=bits, mse_int=mse_i, mse_bitmod=mse_b,
                             rel_int=mse_i / var, rel_bitmod=mse_b / var,
                             reduction_pct=100 * (1 - mse_b / mse_i), mix=mix))  # fmt: skip
    md = ["# Quantisation quality: BitMoD datatype mix vs plain INT", "",
          f"`benchmarks/bitserial_quant.py`: weights {args.n} x {args.k}, groups of "
          f"{args.group_size} along K, seed {args.seed}, absmax scale per group (16-bit integer "
          "+ per-row exponent, as the engine applies it). MSE against the float weights; rel = "
          "MSE / variance.", "",
          "| distribution | bits | MSE INT | MSE BitMoD | rel INT | rel BitMoD | reduction | "
          "BitMoD datatypes chosen |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        md.append(f"| {r['distribution']} | {r['bits']} | {r['mse_int']:.4e} | "
                  f"{r['mse_bitmod']:.4e} | {r['rel_int']:.4f} | {r['rel_bitmod']:.4f} | "
                  f"{r['reduction_pct']:.1f}% | {r['mix']} |")  # fmt: skip
    text = "\n".join(md) + "\n"
    print(text)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
