"""Error tables of the nonlinear engines' golden models against torch float64.

Writes benchmarks/results/nonlinear_errors.{md,json} and nonlinear_gelu_error.svg (GELU error
against input, every input value). The models are bit-exact with the RTL (tests/), so these are
the hardware's errors. Run: ``python benchmarks/nonlinear_errors.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from gatesmith.generators.gelu.config import GeluConfig
from gatesmith.generators.gelu.model import gelu_model
from gatesmith.generators.layernorm.config import LayerNormConfig
from gatesmith.generators.layernorm.model import layernorm_model
from gatesmith.generators.softmax.config import SoftmaxConfig
from gatesmith.generators.softmax.model import softmax_model

SEED = 1234
OUT = Path(__file__).parent / "results"


def _logits(gen, rows, n, dist, fmt, f):
    v = torch.randn(rows, n, generator=gen, dtype=torch.float64)
    if dist == "normal(0,4)":
        v = 4 * v
    elif dist == "uniform(full range)":
        v = (torch.rand(rows, n, generator=gen, dtype=torch.float64) * 2 - 1) * fmt.max / 2**f
    return (v * 2**f).round().clamp(fmt.min + 1, fmt.max).long()


def softmax_table():
    rows = []
    for method in ("online", "shiftmax"):
        for dtype, f in (("int8", 4), ("int16", 8), ("int16", 11)):
            for dist in ("normal(0,1)", "normal(0,4)", "uniform(full range)"):
                for n in (128, 1024):
                    gen = torch.Generator().manual_seed(SEED)
                    cfg = SoftmaxConfig(method=method, in_dtype=dtype, in_frac=f, lanes=4)
                    x = _logits(gen, 256 if n == 128 else 64, n, dist, cfg.in_fmt, f)
                    p = softmax_model(x, cfg).double() / 2**15
                    ref = torch.softmax(x.double() / 2**f, dim=-1)
                    err = (p - ref).abs()
                    s = (p.sum(-1) - 1).abs()
                    rows.append(dict(method=method, input=f"{dtype} f={f}", dist=dist, n=n,
                                     max_abs=err.max().item(), mean_abs=err.mean().item(),
                                     max_sum_dev=s.max().item(), mean_sum_dev=s.mean().item()))
    return rows


GELU_FORMATS = [("int8", 4, "int16", 12), ("int8", 5, "int8", 4), ("int16", 12, "int16", 12),
                ("int16", 11, "int16", 11)]  # fmt: skip


def gelu_table():
    rows, curves = [], {}
    for method in ("rom", "shiftgelu"):
        for idt, f, odt, of in GELU_FORMATS:
            cfg = GeluConfig(method=method, in_dtype=idt, in_frac=f, out_dtype=odt, out_frac=of)
            x = torch.arange(cfg.in_fmt.min, cfg.in_fmt.max + 1)
            ref = F.gelu(x.double() / 2**f)
            y = gelu_model(x, cfg).double() / 2**of
            floor = (cfg.out_fmt.saturate((ref * 2**of).round()) / 2**of - ref).abs().max()
            err = (y - ref).abs()
            rows.append(dict(method=method, input=f"{idt} f={f}", output=f"{odt} f={of}",
                             inputs=x.numel(), max_abs=err.max().item(), mean_abs=err.mean().item(),
                             output_floor=floor.item()))
            if idt == "int16" and f == 12:
                curves[method] = (x.double() / 2**f, y - ref)
    return rows, curves


def layernorm_table():
    rows = []
    for dtype, f in (("int8", 4), ("int16", 8), ("int16", 12)):
        for dist in ("normal(0,1)", "normal(3,1)", "normal(0,0.25)", "wide"):
            for n in (64, 768):
                gen = torch.Generator().manual_seed(SEED)
                cfg = LayerNormConfig(in_dtype=dtype, in_frac=f)
                v = torch.randn(64, n, generator=gen, dtype=torch.float64)
                v = {"normal(0,1)": v, "normal(3,1)": v + 3, "normal(0,0.25)": v / 4,
                     "wide": v * cfg.in_fmt.max / 2**f / 4}[dist]  # fmt: skip
                x = (v * 2**f).round().clamp(cfg.in_fmt.min, cfg.in_fmt.max).long()
                g = torch.rand(n, generator=gen, dtype=torch.float64) * 1.5 + 0.25
                g = (g * 4096).round()
                b = (torch.randn(n, generator=gen, dtype=torch.float64) * 2048).round()
                out = layernorm_model(x, g.long(), b.long(), cfg).double() / 2**11
                ref = F.layer_norm(x.double() / 2**f, (n,), g / 4096, b / 2048, 1e-5)
                err = (out - ref).abs()
                rows.append(dict(input=f"{dtype} f={f}", dist=dist, n=n,
                                 max_abs=err.max().item(), mean_abs=err.mean().item()))
    return rows


def _md(rows, cols):
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    fmt = lambda v: f"{v:.2e}" if isinstance(v, float) else str(v)  # noqa: E731
    return head + "".join("| " + " | ".join(fmt(r[c]) for c in cols) + " |\n" for r in rows)


def _svg(curves, path):
    w, h, pad = 800, 360, 50
    xs = [-8, 8]
    ymax = max(c[1].abs().max().item() for c in curves.values())
    colours = {"rom": "#1f77b4", "shiftgelu": "#d62728"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<line x1="{pad}" y1="{h / 2}" x2="{w - pad}" y2="{h / 2}" stroke="#999"/>',
             f'<text x="{pad}" y="20" font-size="13">GELU error (model - F.gelu) against input, '
             f'int16 f=12 -> int16 f=12, every input; y range +/-{ymax:.2e}</text>']  # fmt: skip
    for k, (x, e) in curves.items():
        step = max(1, x.numel() // 2000)
        pts = []
        for xi, ei in zip(x[::step].tolist(), e[::step].tolist(), strict=True):
            px = pad + (xi - xs[0]) / (xs[1] - xs[0]) * (w - 2 * pad)
            py = h / 2 - ei / ymax * (h / 2 - pad)
            pts.append(f"{px:.1f},{py:.1f}")
        parts.append(f'<polyline fill="none" stroke="{colours[k]}" stroke-width="1" '
                     f'points="{" ".join(pts)}"/>')  # fmt: skip
        mx = e.abs().max().item()
        parts.append(f'<text x="{w - 260}" y="{40 + 16 * list(curves).index(k)}" font-size="12" '
                     f'fill="{colours[k]}">{k}: max |err| {mx:.2e}</text>')  # fmt: skip
    for v in (-8, -4, 0, 4, 8):
        px = pad + (v - xs[0]) / (xs[1] - xs[0]) * (w - 2 * pad)
        parts.append(f'<text x="{px - 6:.0f}" y="{h - 20}" font-size="12">{v}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main():
    OUT.mkdir(exist_ok=True)
    sm = softmax_table()
    ge, curves = gelu_table()
    ln = layernorm_table()
    (OUT / "nonlinear_errors.json").write_text(
        json.dumps({"seed": SEED, "softmax": sm, "gelu": ge, "layernorm": ln}, indent=1) + "\n"
    )
    _svg(curves, OUT / "nonlinear_gelu_error.svg")
    md = [
        "# Nonlinear engines: error against torch float64\n",
        "Generated by `benchmarks/nonlinear_errors.py` (seed %d). The golden models are bit-exact "
        "with the RTL, so these are the hardware's errors. Input quantisation is not counted: the "
        "reference is the float function of the quantised input.\n" % SEED,
        "## Softmax (output uint16, 1.0 = 2**15; row-sum deviation |sum - 1|)\n",
        _md(sm, ["method", "input", "dist", "n", "max_abs", "mean_abs", "max_sum_dev",
                 "mean_sum_dev"]),  # fmt: skip
        "\n## GELU (exhaustive over every input value; `output_floor` = error of rounding the "
        "exact GELU to the output format)\n",
        _md(ge, ["method", "input", "output", "inputs", "max_abs", "mean_abs", "output_floor"]),
        "\nError against input: `nonlinear_gelu_error.svg`.\n",
        "\n## LayerNorm (output int16 f=11, gamma in [0.25, 1.75], beta ~ N(0,1), 64 rows)\n",
        _md(ln, ["input", "dist", "n", "max_abs", "mean_abs"]),
    ]
    (OUT / "nonlinear_errors.md").write_text("\n".join(md))
    print((OUT / "nonlinear_errors.md").read_text())


if __name__ == "__main__":
    main()
