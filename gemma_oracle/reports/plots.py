"""The report's plots as PNG bytes (matplotlib, Agg: no display needed), one function per plot.

Each takes a gemma_oracle.reports.tables frame and returns None when there is nothing to draw.
"""
from __future__ import annotations

import io

import pandas as pd

# Exact policies give NMSE 0, which a log axis cannot show: such points are drawn at this floor and the
# axis label says so. float64 reordering noise sits near 1e-30, so the floor is well below any real value.
NMSE_FLOOR = 1e-40


def _figure(n_panels: int, width: float = 6.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, height), squeeze=False)
    return fig, list(axes[0])


def _per_n_axes(ax, ylabel: str) -> None:
    """A figure of something against N: both axes logarithmic (N in powers of 2), a grid and the legend."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("N (sequences per step)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def tokens_per_s_vs_n(perf: pd.DataFrame) -> bytes | None:
    """Aggregate t/s vs N, one panel per model, one line per route mode (dashed: the roofline ceiling)."""
    if perf.empty:
        return None
    models = sorted(perf["model"].unique())
    fig, axes = _figure(len(models), width=5.0)
    for ax, model in zip(axes, models):
        sub = perf[perf["model"] == model]
        for route, g in sub.groupby("route"):
            g = g.sort_values("n")
            line, = ax.plot(g["n"], g["tokens_per_s"], marker="o", label=f"{route}")
            ax.plot(g["n"], g["roofline_tokens_per_s"], linestyle="--", color=line.get_color(), alpha=0.5,
                    label=f"{route} roofline")
        _per_n_axes(ax, "tokens/s")
        ax.set_title(model, fontsize=9)
    return _png(fig)


def worst_error_vs_n(summary: pd.DataFrame) -> bytes | None:
    """Worst NMSE over fixtures vs N, one line per suite x backend x route."""
    if summary.empty:
        return None
    fig, (ax,) = _figure(1, width=7.0)
    worst = summary.groupby(["suite", "backend", "route", "n"])["worst_nmse"].max().reset_index()
    for (suite, backend, route), g in worst.groupby(["suite", "backend", "route"]):
        g = g.sort_values("n")
        ax.plot(g["n"], g["worst_nmse"].clip(lower=NMSE_FLOOR), marker="o", label=f"{suite} {backend} {route}")
    _per_n_axes(ax, f"worst NMSE (0 drawn at {NMSE_FLOOR:g})")
    return _png(fig)


def trends(trend: pd.DataFrame) -> bytes | None:
    """Headline figures over the stored runs: failed cases, and t/s at each model x route's largest N."""
    if trend.empty:
        return None
    panels = [("failed cases", "failed cases"), ("t/s", "tokens/s at the largest N")]
    fig, axes = _figure(len(panels), width=6.5)
    order = trend.drop_duplicates("run_id")[["run_id", "created"]].sort_values("created")
    xs = {rid: i for i, rid in enumerate(order["run_id"])}
    for ax, (prefix, ylabel) in zip(axes, panels):
        sub = trend[trend["figure"].str.startswith(prefix + ":")]
        for (figure, device), g in sub.groupby(["figure", "device"]):  # speeds of different devices never share a line
            label = f"{figure[len(prefix) + 2:]} ({device})"
            ax.plot([xs[r] for r in g["run_id"]], g["value"], marker="o", label=label)
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels([c[:16] for c in order["created"]], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if prefix == "failed cases":
            from matplotlib.ticker import MaxNLocator

            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(bottom=0)
        if not sub.empty:
            ax.legend(fontsize=6)
    return _png(fig)
