"""Pareto front of sweep trials over chosen objectives, and a matplotlib plot of it.

An objective is ``(metric, "min" | "max")``. A trial is on the front when no other trial is at
least as good in every objective and strictly better in one; trials that failed, or lack a value
for an objective, take no part.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["pareto_front", "plot_front"]


def _dominates(a: tuple, b: tuple) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def pareto_front(records: list[dict], objectives: list[tuple[str, str]]) -> list[str]:
    """Ids of the trials on the front (in ``records`` order)."""
    pts = []
    for r in records:
        m = r.get("metrics", {})
        if r.get("status") != "ok" or any(m.get(k) is None for k, _ in objectives):
            continue
        pts.append((r["id"], tuple(m[k] if s == "min" else -m[k] for k, s in objectives)))
    return [i for i, p in pts if not any(_dominates(q, p) for _, q in pts)]


def _label(r: dict) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in r["point"].items())


def plot_front(records: list[dict], objectives: list[tuple[str, str]], front: list[str],
               path_stem: Path, title: str = "") -> list[Path]:  # fmt: skip
    """Write ``<stem>.svg`` and ``<stem>.png``: the first two objectives as x and y (log scale
    over wide ranges), a third as colour; front points ringed, labelled and joined."""
    import matplotlib

    matplotlib.rcParams["svg.hashsalt"] = "gatesmith"  # stable ids: the same sweep, the same SVG
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    (xk, xs), (yk, ys) = objectives[0], objectives[1]
    ck = objectives[2][0] if len(objectives) > 2 else None
    ok = [r for r in records if r.get("status") == "ok"
          and all(r["metrics"].get(k) is not None for k, _ in objectives)]  # fmt: skip
    on = [r for r in ok if r["id"] in set(front)]
    fig = Figure(figsize=(7, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xv = [r["metrics"][xk] for r in ok]
    yv = [r["metrics"][yk] for r in ok]
    if ck:
        sc = ax.scatter(xv, yv, c=[r["metrics"][ck] for r in ok], cmap="viridis", s=28, zorder=2)
        fig.colorbar(sc, ax=ax, label=f"{ck} ({objectives[2][1]})")
    else:
        ax.scatter(xv, yv, color="0.6", s=24, zorder=2, label="trials")
    on_sorted = sorted(on, key=lambda r: r["metrics"][xk])
    ax.plot([r["metrics"][xk] for r in on_sorted], [r["metrics"][yk] for r in on_sorted],
            color="tab:red", lw=1, zorder=1)  # fmt: skip
    ax.scatter([r["metrics"][xk] for r in on_sorted], [r["metrics"][yk] for r in on_sorted],
               facecolors="none", edgecolors="tab:red", s=90, lw=1.5, zorder=3,
               label="Pareto front")  # fmt: skip
    for r in on_sorted[:20]:
        ax.annotate(_label(r), (r["metrics"][xk], r["metrics"][yk]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    for vals, setter in ((xv, ax.set_xscale), (yv, ax.set_yscale)):
        pos = [v for v in vals if v > 0]
        if pos and len(pos) == len(vals) and max(pos) / min(pos) > 50:
            setter("log")
    ax.set_xlabel(f"{xk} ({xs})")
    ax.set_ylabel(f"{yk} ({ys})")
    ax.set_title(title or "Pareto front")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = [Path(f"{path_stem}.svg"), Path(f"{path_stem}.png")]
    fig.savefig(out[0], metadata={"Date": None})
    fig.savefig(out[1], dpi=110)
    return out
