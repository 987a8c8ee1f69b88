"""The report of a grid: the capacity map, the frontier per depth, the budget interaction, the scaling fits.

Pure: a ``Selection``, the model summary and the verdicts table in, frames and sentences out. The
``capacity`` family's steps (``plan.capacity_steps``) get their verdicts with every other family's; here
they are read back as a frontier per depth (the width after which no step helped, and what the steps
beyond it were). With an ``iters`` axis, whether the gain from capacity grows with the budget is a test
of its own: per depth, the gain from the narrowest to the widest cell at the largest budget minus that
at the smallest, paired over the seeds all four cells share, Holm across the depths, the same five
verdicts (``stats.holm_verdicts``). Per depth (and budget) a law err(N) = E + A N^-alpha (``scaling``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..grid import is_cell
from ..models import ModelSpec, count_params
from .runs import Selection
from .scaling import COLUMNS as SCALING_COLUMNS
from .scaling import N_BOOT, fit_depth, scaling_text
from .stats import MIN_SEEDS, holm_verdicts, paired_or_welch

CELL_COLUMNS = ["iters", "lr", "depth", "width", "model", "n_params", "n_seeds", "mean", "ci_low", "ci_high"]
INTERACTION_COLUMNS = ["lr", "depth", "narrow", "wide", "iters_low", "iters_high", "gain_low", "gain_high", "n",
                       "diff", "level", "low", "high", "p", "p_adj", "p_tost", "p_tost_adj", "verdict", "reason"]
GROWS = {"helped": "grows with the budget", "hurt": "shrinks with the budget",
         "equivalent": "stays the same with the budget (within +-{m:g})",
         "negligible": "changes with the budget, by less than +-{m:g} (negligible)",
         "undecided": "may or may not change with the budget (undecided)"}


@dataclass
class Capacity:
    cells: pd.DataFrame  # CELL_COLUMNS: the map
    frontier: list[str]  # one sentence per (budget, lr, depth)
    interaction: pd.DataFrame  # INTERACTION_COLUMNS; empty without an iters axis
    scaling: pd.DataFrame  # scaling.COLUMNS (with iters and lr first when the grid has several budgets or lrs)
    scaling_lines: list[str] = field(default_factory=list)
    interaction_lines: list[str] = field(default_factory=list)

    def csv_files(self) -> dict[str, str]:
        """capacity_map.csv (the cells), scaling.csv (the fits) and, with a budget axis, interaction.csv."""
        out = {"capacity_map.csv": self.cells.to_csv(index=False), "scaling.csv": self.scaling.to_csv(index=False)}
        if len(self.interaction):
            out["interaction.csv"] = self.interaction.to_csv(index=False)
        return out

    def scaling_display(self) -> pd.DataFrame:
        """The fits as the markdown and HTML reports show them."""
        s = self.scaling

        def num(v: object, spec: str = ".2f") -> str:
            return "-" if v is None or pd.isna(v) else format(v, spec)
        return pd.DataFrame({
            **({"Budget": s["iters"].astype(str), "lr": s["lr"].astype(str)} if "iters" in s else {}),
            "Depth": s["depth"].astype(str),
            "alpha [95%]": [f"{num(a)} [{num(lo)}, {num(hi)}]" for a, lo, hi in
                            zip(s["alpha"], s["alpha_low"], s["alpha_high"])],
            "E (%)": [num(v) for v in s["E"]], "Next doubling (pts)": [num(v, "+.2f") for v in s["next_doubling_gain"]],
            "Hold-out width": [num(w, "g") for w in s["holdout_width"]],
            "Predicted (%)": [num(v) for v in s["holdout_predicted"]],
            "Measured (%)": [num(v) for v in s["holdout_measured"]],
            "Miss (pts)": [num(v, "+.2f") for v in s["holdout_error"]],
            "Hold-out": ["-" if pd.isna(v) else "passed" if v else "failed" for v in s["holdout_passed"]]})

    def lines(self) -> list[str]:
        """Every sentence, capitalised: frontiers, then the budget interaction, then the fits."""
        return [s[:1].upper() + s[1:] for s in (*self.frontier, *self.interaction_lines, *self.scaling_lines)]


def cell_frame(sel: Selection, summary: pd.DataFrame) -> pd.DataFrame:
    """One row per grid cell present (CELL_COLUMNS), by budget, lr, depth and width."""
    rows = []
    by_model = summary.set_index("model")
    for name, info in sel.models.items():
        if not is_cell(name, info.spec):
            continue
        s, t = by_model.loc[name], info.train_dict()
        rows.append({"iters": t["iters"], "lr": t["lr"], "depth": len(info.spec.hidden), "width": info.spec.hidden[0],
                     "model": name, "n_params": int(s["n_params"]), "n_seeds": int(s["n_seeds"]), "mean": s["mean"],
                     "ci_low": s["ci_low"], "ci_high": s["ci_high"]})
    frame = pd.DataFrame(rows, columns=CELL_COLUMNS)
    return frame.sort_values(["iters", "lr", "depth", "width"], kind="stable").reset_index(drop=True)


def _where(cells: pd.DataFrame, iters: object, lr: object) -> str:
    """``"at 3000 iters, "`` where the grid has several budgets (and lrs); "" otherwise."""
    parts = ([f"{iters} iters"] if cells["iters"].nunique() > 1 else []) + \
        ([f"lr {lr}"] if cells["lr"].nunique() > 1 else [])
    return f"at {', '.join(parts)}, " if parts else ""


def frontier_text(depth: int, steps: list[tuple[int, int, str]], margin: float, where: str = "") -> str:
    """The frontier of one depth from its width steps (width, next width, verdict), narrowest first.

    ``frontier_text(2, [(100, 200, "helped"), (200, 400, "equivalent")], 0.2)`` ->
    ``"at depth 2, widths beyond 200 are negligible (within +-0.2): 200 -> 400 equivalent."``
    """
    if not steps:
        return f"{where}at depth {depth}, one width only: no frontier."
    helped = [i for i, (_, _, v) in enumerate(steps) if v == "helped"]
    last = helped[-1] if helped else -1
    tail = steps[last + 1:]
    if not tail:
        return (f"{where}at depth {depth}, every wider net helped, up to width {steps[-1][1]}, the widest tried: "
                f"the frontier lies beyond the grid.")
    edge = steps[last][1] if last >= 0 else steps[0][0]
    details = ", ".join(f"{w} -> {v} {verdict}" for w, v, verdict in tail)
    verdicts = {v for _, _, v in tail}
    head = f"{where}at depth {depth}, "
    if verdicts <= {"equivalent", "negligible"}:
        return f"{head}widths beyond {edge} are negligible (within +-{margin:g}): {details}."
    if "hurt" in verdicts:
        return f"{head}widths beyond {edge} do not help: {details}."
    if last < 0:
        return f"{head}no wider net was shown to help from width {edge} on: {details}."
    return f"{head}width helped up to {edge}; beyond it not yet decided: {details}."


def _frontiers(cells: pd.DataFrame, table: pd.DataFrame, margin: float) -> list[str]:
    verdict = {(r.a, r.b): r.verdict for r in table.itertuples() if r.family == "capacity"}
    lines = []
    for (iters, lr, depth), g in cells.groupby(["iters", "lr", "depth"], sort=True):
        names, widths = list(g["model"]), list(g["width"])
        steps = [(w, v, verdict.get((a, b), "undecided"))
                 for w, v, a, b in zip(widths, widths[1:], names, names[1:])]
        lines.append(frontier_text(int(depth), steps, margin, _where(cells, iters, lr)))
    return lines


def _scores(sel: Selection, model: str, scored: bool) -> dict[int, float]:
    """Seed -> accuracy: every seed with an outcome as comparisons score it, or only the runs that trained."""
    if scored:
        s = sel.scored(model)
        return dict(zip(s["seed"].tolist(), s["score"].tolist()))
    k = sel.kept[sel.kept["model"] == model]
    return dict(zip(k["seed"].tolist(), k["accuracy"].tolist()))


def _interaction(sel: Selection, cells: pd.DataFrame, alpha: float, margin: float) -> pd.DataFrame:
    """Per (lr, depth): does the gain from the narrowest to the widest width grow from the smallest budget to
    the largest? Paired over the seeds of all four cells; Holm over the rows."""
    if cells["iters"].nunique() < 2:
        return pd.DataFrame(columns=INTERACTION_COLUMNS)
    rows, tests = [], []
    for (lr, depth), g in cells.groupby(["lr", "depth"], sort=True):
        lo_t, hi_t = g["iters"].min(), g["iters"].max()
        at = {(r.iters, r.width): r.model for r in g.itertuples()}
        narrow, wide = g["width"].min(), g["width"].max()
        corners = [at.get(k) for k in ((lo_t, narrow), (lo_t, wide), (hi_t, narrow), (hi_t, wide))]
        if lo_t == hi_t or narrow == wide or None in corners:
            continue
        s = [_scores(sel, str(m), scored=True) for m in corners]
        seeds = sorted(set(s[0]) & set(s[1]) & set(s[2]) & set(s[3]))
        gain_lo = np.array([s[1][k] - s[0][k] for k in seeds])
        gain_hi = np.array([s[3][k] - s[2][k] for k in seeds])
        t = paired_or_welch(gain_lo, gain_hi, seeds, seeds, margin)
        reason = "" if len(seeds) >= MIN_SEEDS else f"{len(seeds)} shared seeds: no verdict below {MIN_SEEDS}"
        rows.append({"lr": lr, "depth": int(depth), "narrow": int(narrow), "wide": int(wide), "iters_low": lo_t,
                     "iters_high": hi_t, "gain_low": float(gain_lo.mean()) if len(seeds) else math.nan,
                     "gain_high": float(gain_hi.mean()) if len(seeds) else math.nan, "n": len(seeds),
                     "diff": t.diff, "p": t.p, "p_tost": t.p_tost, "reason": reason})
        tests.append((t, reason))
    if not rows:
        return pd.DataFrame(columns=INTERACTION_COLUMNS)
    p = np.array([t.p if not r else np.nan for t, r in tests])
    p_tost = np.array([t.p_tost if not r else np.nan for t, r in tests])
    h = holm_verdicts(np.array([t.diff for t, _ in tests]), np.array([t.se for t, _ in tests]),
                      np.array([t.df for t, _ in tests]), p, p_tost, alpha, margin)
    for i, row in enumerate(rows):
        row.update({k: h[k][i].item() for k in ("verdict", "p_adj", "p_tost_adj", "level", "low", "high")})
    return pd.DataFrame(rows, columns=INTERACTION_COLUMNS)


def interaction_text(r: pd.Series, margin: float, several_lr: bool) -> str:
    where = f"at depth {r['depth']}" + (f", lr {r['lr']}" if several_lr else "")
    grows = GROWS[str(r["verdict"])].format(m=margin)
    how = f"{r['reason']}" if r["reason"] else (f"{r['diff']:+.2f} points, {r['level']:.1%} interval "
                                                f"[{r['low']:+.2f}, {r['high']:+.2f}], {r['n']} paired seeds")
    return (f"{where}, the gain from width {r['narrow']} to {r['wide']} {grows}: {r['gain_low']:+.2f} points at "
            f"{r['iters_low']} iters, {r['gain_high']:+.2f} at {r['iters_high']} ({how}).")


def _scaling(sel: Selection, cells: pd.DataFrame, n_test: int | None, confidence: float, n_boot: int
             ) -> tuple[pd.DataFrame, list[str]]:
    several = cells["iters"].nunique() > 1 or cells["lr"].nunique() > 1
    floor = 100 * 0.5 / n_test if n_test else 1e-3  # half an example of the test set, percent
    rows, lines = [], []
    for (iters, lr, depth), g in cells.groupby(["iters", "lr", "depth"], sort=True):
        kept = [_scores(sel, m, scored=False) for m in g["model"]]
        seeds = sorted(set.intersection(*(set(k) for k in kept)))
        acc = np.array([[k[s] for s in seeds] for k in kept])
        spec = sel.models[g["model"].iloc[-1]].spec
        wider = ModelSpec((2 * int(g["width"].max()),) * int(depth), spec.activation, spec.n_inputs, spec.n_classes)
        fit = fit_depth(int(depth), [int(w) for w in g["width"]], [int(n) for n in g["n_params"]],
                        count_params(wider), acc.reshape(len(kept), len(seeds)), floor, confidence, n_boot)
        rows.append({**({"iters": iters, "lr": lr} if several else {}), **fit.row()})
        lines.append(scaling_text(fit, f"{_where(cells, iters, lr)}scaling at depth {int(depth)}"))
    columns = (["iters", "lr"] if several else []) + SCALING_COLUMNS
    return pd.DataFrame(rows, columns=columns), lines


def analyse_capacity(sel: Selection, summary: pd.DataFrame, table: pd.DataFrame, alpha: float, margin: float,
                     n_test: int | None = None, confidence: float = 0.95, n_boot: int = N_BOOT) -> Capacity | None:
    """The grid's map, frontiers, budget interaction and scaling fits; None when no grid cell is present."""
    cells = cell_frame(sel, summary)
    if cells.empty:
        return None
    inter = _interaction(sel, cells, alpha, margin)
    scaling, scaling_lines = _scaling(sel, cells, n_test, confidence, n_boot)
    several_lr = cells["lr"].nunique() > 1
    return Capacity(cells, _frontiers(cells, table, margin), inter, scaling, scaling_lines,
                    [interaction_text(r, margin, several_lr) for _, r in inter.iterrows()])
