"""The report's figures: the comparisons' forest plot, accuracy curves, train loss, final accuracy per seed
(matplotlib, no pyplot)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib
import matplotlib.lines
import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global state, no display; PNGs go through Agg
from scipy import stats

from .runs import Selection

PLOTS = {"comparisons.png": "Each comparison's difference: the interval that decides it on this test set (thick) "
                            "and on new images (thin), lines at 0 and +-margin, coloured by verdict",
         "accuracy_curves.png": "Test accuracy vs iteration (mean over seeds, 95% band)",
         "train_loss.png": "Train loss vs iteration (smoothed, mean over seeds, 95% band)",
         "final_accuracy.png": "Final test accuracy per seed, with mean and 95% CI",
         "capacity_map.png": "The capacity map: mean final test accuracy of each grid cell (width x depth, one panel "
                             "per budget), with the half-width of its 95% CI"}
VERDICT_COLORS = {"helped": "#1a9850", "hurt": "#d73027", "negligible": "#7b3294", "equivalent": "#4575b4",
                  "undecided": "#999999"}
CAPACITY_MAP = "capacity_map.png"
LOSS_SMOOTHING = 200  # steps per rolling mean of the logged train_loss points


def band(curves: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per step: mean over seeds and its Student-t interval (NaN with one seed), as ``mean_ci`` gives it.

    ``band(pd.DataFrame({"step": [1, 1, 1], "value": [1.0, 2.0, 3.0]}))`` -> step 1, mean 2, low -0.484, high 4.484
    """
    g = curves.groupby("step", sort=True)["value"].agg(["mean", "std", "count"]).reset_index()
    with np.errstate(invalid="ignore"):
        half = stats.t.ppf((1 + confidence) / 2, g["count"] - 1) * g["std"] / np.sqrt(g["count"])
    return g.assign(low=g["mean"] - half, high=g["mean"] + half)[["step", "mean", "low", "high"]]


def _colors(names: Sequence[str]) -> dict[str, tuple]:
    cmap = matplotlib.colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(names)}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def forest_plot(comparisons: pd.DataFrame, margin: float) -> bytes | None:
    """One row per comparison (report.verdicts columns): difference, deciding and new-images intervals."""
    if comparisons.empty:
        return None
    rows = comparisons.iloc[::-1].reset_index(drop=True)  # the first comparison on top
    fig = Figure(figsize=(9, 1.2 + 0.45 * len(rows)))
    ax = fig.subplots()
    for i, r in rows.iterrows():
        color = VERDICT_COLORS.get(r["verdict"], "#999999")
        if not pd.isna(r["pop_low"]):
            ax.plot([r["pop_low"], r["pop_high"]], [i, i], color=color, lw=1.2, alpha=0.7, zorder=2)
        if not pd.isna(r["low"]):
            ax.plot([r["low"], r["high"]], [i, i], color=color, lw=5, solid_capstyle="butt", zorder=3)
        ax.plot(r["diff"], i, "o", color="black", ms=4, zorder=4)
    for x, style in ((0, "-"), (-margin, "--"), (margin, "--")):
        ax.axvline(x, color="#444444", lw=0.8, ls=style, zorder=1)
    labels = [f"{r['a']} -> {r['b']} ({r['family']}): {r['verdict']}"
              + ("" if r["pop_verdict"] in (r["verdict"], "unavailable") else f", new images {r['pop_verdict']}")
              for _, r in rows.iterrows()]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    handles = [matplotlib.lines.Line2D([], [], color=c, lw=5, label=v) for v, c in VERDICT_COLORS.items()
               if v in set(rows["verdict"])]
    ax.legend(handles=handles, loc="best", fontsize=8)
    ax.set(xlabel="difference in final test accuracy, b - a (points)",
           title=f"Comparisons: deciding interval (thick), new images (thin); dashed: +-{margin:g} margin")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def capacity_map(cells: pd.DataFrame) -> bytes | None:
    """A heatmap per (budget, lr) of ``capacity.cell_frame``: rows depth, columns width, mean and +-CI in each cell."""
    if cells.empty:
        return None
    groups = list(cells.groupby(["iters", "lr"], sort=True))
    widths, depths = sorted(cells["width"].unique()), sorted(cells["depth"].unique())
    lo, hi = float(cells["mean"].min()), float(cells["mean"].max())
    fig = Figure(figsize=(1.1 * len(widths) * len(groups) + 2, 0.9 * len(depths) + 1.8))
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    image = None
    for ax, ((iters, lr), g) in zip(axes, groups):
        grid = np.full((len(depths), len(widths)), np.nan)
        for r in g.itertuples():
            i, j = depths.index(r.depth), widths.index(r.width)
            grid[i, j] = r.mean
            half = (r.ci_high - r.ci_low) / 2 if not pd.isna(r.ci_low) else math.nan
            text = f"{r.mean:.2f}" + ("" if pd.isna(half) else f"\n+-{half:.2f}")
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if hi > lo and (r.mean - lo) / (hi - lo) < 0.5 else "black")
        image = ax.imshow(grid, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect="auto",
                          origin="lower")
        ax.set_xticks(range(len(widths)), [str(w) for w in widths], fontsize=8)
        ax.set_yticks(range(len(depths)), [str(d) for d in depths], fontsize=8)
        ax.set(xlabel="width (hidden units per layer)", ylabel="depth (hidden layers)",
               title=f"{iters} iters, lr {lr}" if len(groups) > 1 else "")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="mean final test accuracy (%)")
    fig.suptitle("Capacity map: mean final test accuracy per cell, +- half its 95% CI")
    return _png(fig)


def render_plots(sel: Selection, curves: dict[str, pd.DataFrame], summary: pd.DataFrame,
                 confidence: float = 0.95, comparisons: pd.DataFrame | None = None,
                 margin: float = 0.2) -> dict[str, bytes]:
    """The figures as PNG bytes, keyed by file name (see PLOTS); the forest plot when there are comparisons."""
    names = list(sel.models)
    colors = _colors(names)
    label = {m: f"{m} ({sel.models[m].spec.describe()})" for m in names}
    pct = f"{confidence:.0%}"
    figs = {}
    forest = forest_plot(comparisons, margin) if comparisons is not None else None
    if forest is not None:
        figs["comparisons.png"] = forest

    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    acc = curves["test_accuracy"]
    for m in names:
        b = band(acc[acc["model"] == m], confidence)
        if b.empty:
            continue
        ax.plot(b["step"], b["mean"], marker="o", ms=3, color=colors[m], label=label[m])
        ax.fill_between(b["step"], b["low"], b["high"], color=colors[m], alpha=0.2, lw=0)
    if not acc.empty:
        last = acc[acc["step"] == acc["step"].max()]["value"]
        ax.set_ylim(max(acc["value"].min(), last.min() - 8) - 0.5, min(100, acc["value"].max() + 0.5))
    ax.set(xlabel="iteration (optimizer step)", ylabel="test accuracy (%)",
           title=f"Test accuracy vs iteration: mean over seeds, {pct} band")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    figs["accuracy_curves.png"] = _png(fig)

    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    loss = curves["train_loss"]
    for m in names:
        mine = loss[loss["model"] == m].sort_values(["seed", "step"])
        if mine.empty:
            continue
        mine = mine.sort_values(["seed", "step"])
        spacing = mine.groupby("seed")["step"].diff().median()  # steps per logged point (50; 10 in older runs)
        window = max(1, round(LOSS_SMOOTHING / spacing)) if spacing > 0 else 1
        mine = mine.assign(value=mine.groupby("seed")["value"].transform(
            lambda v, window=window: v.rolling(window, min_periods=1).mean()))
        b = band(mine, confidence)
        ax.plot(b["step"], b["mean"], color=colors[m], label=label[m], lw=1.5)
        ax.fill_between(b["step"], b["low"], b["high"], color=colors[m], alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set(xlabel="iteration (optimizer step)", ylabel="train loss (cross-entropy, log scale)",
           title=f"Train loss, rolling mean over {LOSS_SMOOTHING} steps: mean over seeds, {pct} band")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper right", fontsize=9)
    figs["train_loss.png"] = _png(fig)

    fig = Figure(figsize=(max(6, 1.3 * len(names) + 2), 5.5))
    ax = fig.subplots()
    rng = np.random.default_rng(0)  # jitter only
    for i, m in enumerate(names):
        vals = sel.kept.loc[sel.kept["model"] == m, "accuracy"].to_numpy(float)
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(vals)), vals, s=22, color=colors[m], alpha=0.8, zorder=3)
        row = summary[summary["model"] == m].iloc[0]
        if row["n_seeds"] == 0:
            continue
        if row["n_seeds"] > 1:
            ax.errorbar(i + 0.25, row["mean"], yerr=[[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]],
                        fmt="D", color="black", ms=5, capsize=4, zorder=4)
        else:
            ax.plot(i + 0.25, row["mean"], "D", color="black", ms=5, zorder=4)
        ax.annotate(f"{row['mean']:.2f}", (i + 0.32, row["mean"]), va="center", fontsize=8)
    ax.set_xticks(range(len(names)), [f"{m}\n{sel.models[m].spec.describe()}".replace(" ", "\n", 1)
                                      for m in names], fontsize=8)
    ax.set_xlim(-0.5, len(names) - 0.2)
    ax.set(ylabel="final test accuracy (%)",
           title=f"Final test accuracy: one dot per seed, diamond = mean with {pct} CI")
    ax.grid(axis="y", alpha=0.3)
    figs["final_accuracy.png"] = _png(fig)
    return figs
