"""The report's plots as PNG bytes (matplotlib, Agg: no display needed), one function per plot.

Each takes a gemma_oracle.reports.tables frame and returns None when there is nothing to draw.
"""
from __future__ import annotations

import io

import pandas as pd

from .records import NO_ROUTE

# Exact policies give NMSE 0, which a log axis cannot show. Exact zeros are drawn on their own shaded band, this
# many decades below the smallest positive value or bound on the plot, with the tick label "exact (0)": never as a
# tiny number such as 1e-40.
ZERO_BAND_DECADES = 3
NOISY_EDGE = "#d62728"
MIN_TICK_GAP_LOG2 = 0.12  # N ticks closer than this (log2 units) drop the later one: 16 and 17 would overprint  # the ring around a noisy figure (tables.NOISY_SPREAD_PCT)


def _figure(n_panels: int, width: float = 6.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, height), squeeze=False)
    return fig, list(axes[0])


def _per_n_axes(ax, ylabel: str, n_values) -> None:
    """A figure of something against N: both axes logarithmic, ticks at the measured N (whole numbers), a grid and
    the legend."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    import math

    ax.set_xscale("log", base=2)
    ticks: list[int] = []
    for n in sorted({int(n) for n in n_values}):  # neighbours closer than MIN_TICK_GAP_LOG2 would overprint (16, 17)
        if not ticks or math.log2(n / ticks[-1]) >= MIN_TICK_GAP_LOG2:
            ticks.append(n)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
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


def tokens_per_s_vs_n(perf: pd.DataFrame, *, noisy_pct: float, roofline_max_pct: float) -> bytes | None:
    """Aggregate t/s vs N, one panel per model, one line per route mode; dashed: the roofline ceiling where it is
    one (a point above it is a measurement error, marked with an x on the ceiling). A red ring marks a noisy
    figure (repeat spread > ``noisy_pct``)."""
    if perf.empty:
        return None
    models = sorted(perf["model"].unique())
    fig, axes = _figure(len(models), width=5.0)
    for ax, model in zip(axes, models):
        sub = perf[perf["model"] == model]
        for route, g in sub.groupby("route"):
            g = g.sort_values("n")
            mode = "" if route == NO_ROUTE else f"{route} "  # an engine without a router has one line
            line, = ax.plot(g["n"], g["tokens_per_s"], marker="o", label=f"{mode}t/s")
            ceiling = g[g["roofline_pct"] <= roofline_max_pct]
            ax.plot(ceiling["n"], ceiling["roofline_tokens_per_s"], linestyle="--", color=line.get_color(), alpha=0.5,
                    label=f"{mode}roofline")
            broken = g[g["roofline_pct"] > roofline_max_pct]
            if not broken.empty:
                ax.plot(broken["n"], broken["roofline_tokens_per_s"], linestyle="none", marker="x", color="#b00",
                        label=f"{mode}roofline below t/s: measurement error")
            noisy = g[g["spread_pct"] > noisy_pct]
            if not noisy.empty:
                ax.plot(noisy["n"], noisy["tokens_per_s"], linestyle="none", marker="o", markersize=12,
                        markerfacecolor="none", markeredgecolor=NOISY_EDGE, markeredgewidth=1.5,
                        label=f"noisy (repeat spread > {noisy_pct:g} %)")
        _per_n_axes(ax, "tokens/s", sub["n"])
        ax.set_title(model, fontsize=9)
    return _png(fig)


def worst_error_vs_n(summary: pd.DataFrame, bounds: dict[str, float | None]) -> bytes | None:
    """Worst NMSE over fixtures vs N, one line per suite x backend x route x policy; each policy's NMSE bound
    (``bounds``: policy name -> bound, 0 for exact, None for none) as a horizontal line; exact zeros on a
    marked band at the bottom."""
    if summary.empty:
        return None
    import numpy as np

    fig, (ax,) = _figure(1, width=7.5, height=4.0)
    keys = ["suite", "backend", "route", "policy"]
    worst = summary.groupby(keys + ["n"])["worst_nmse"].max().reset_index()
    positive = [v for v in list(worst["worst_nmse"]) + [b for b in bounds.values() if b] if v > 0 and np.isfinite(v)]
    zero_y = (min(positive) if positive else 1.0) * 10.0 ** -ZERO_BAND_DECADES
    has_zero = bool((worst["worst_nmse"] == 0).any()) or any(b == 0 for b in bounds.values())
    for (suite, backend, route, policy), g in worst.groupby(keys):
        g = g.sort_values("n")
        y = g["worst_nmse"].where(g["worst_nmse"] > 0, zero_y)
        ax.plot(g["n"], y, marker="o", label=f"{suite} {backend} {route} ({policy})")
    for i, (policy, bound) in enumerate(sorted(bounds.items())):
        if bound is None:
            continue
        color = f"C{(i + 3) % 10}"
        if bound > 0:
            ax.axhline(bound, color=color, linestyle="--", linewidth=1.2,
                       label=f"policy {policy}: pass if NMSE <= {bound:g}")
        else:
            ax.plot([], [], color=color, linestyle="--", label=f"policy {policy}: pass only at exact 0 (the band)")
    # room above the highest value or bound, so a bound at the top of the data stays visible as a line
    # (nothing but zeros: the band alone, centred)
    ax.set_ylim(bottom=zero_y / 10 if has_zero else None, top=max(positive) * 30 if positive else zero_y * 10)
    _per_n_axes(ax, "worst NMSE", worst["n"])
    if has_zero:
        lo, hi = zero_y / 10 ** 0.5, zero_y * 10 ** 0.5
        ax.axhspan(lo, hi, color="#ddd", alpha=0.6, zorder=0)
        ticks = [t for t in ax.get_yticks() if t >= hi * 10 and t <= ax.get_ylim()[1]]
        from matplotlib.ticker import FixedLocator, NullLocator

        ax.yaxis.set_major_locator(FixedLocator([zero_y] + ticks))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_yticklabels(["exact (0)"] + [f"{t:.0e}" for t in ticks])
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
        ringed = False  # one legend entry for the noisy rings of a panel
        for (figure, device), g in sub.groupby(["figure", "device"]):  # speeds of different devices never share a line
            label = f"{figure[len(prefix) + 2:]} ({device})"
            ax.plot([xs[r] for r in g["run_id"]], g["value"], marker="o", label=label)
            noisy = g[g["noisy"].astype(bool)]
            if not noisy.empty:
                ax.plot([xs[r] for r in noisy["run_id"]], noisy["value"], linestyle="none", marker="o", markersize=12,
                        markerfacecolor="none", markeredgecolor=NOISY_EDGE, markeredgewidth=1.5,
                        label="_noisy" if ringed else "noisy (repeat spread over the threshold)")
                ringed = True
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels([c[:16] for c in order["created"]], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if prefix == "failed cases":
            from matplotlib.ticker import MaxNLocator

            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(bottom=0, top=max(1.0, float(sub["value"].max()) * 1.15) if not sub.empty else 1.0)
        if not sub.empty:
            ax.legend(fontsize=6)
    return _png(fig)
