"""`report`: runs in MLflow -> pandas -> statistics -> tables, plots and files.

Reads what ``ffnn compare`` (and ``ffnn tune --final``) logged; never trains.
Per model: final test accuracy over seeds (mean, std, 95% t-interval). Per
capacity step (LR -> C, activation swaps, an added layer, a wider layer, a
tuned model): the difference in means with Welch's 95% CI and p-value, the
p-values Holm-corrected across the family, Hedges' g, and a verdict.
Accuracy is in percent; differences are in points (percentage points).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global state, no display; PNGs go through Agg
from scipy import stats

from .errors import UserError
from .models import ACTIVATIONS, REGISTRY, ModelSpec, SpecError, count_params, parse_hidden
from .tracking import TAG_KEY, TAG_KIND, Tracker

FORMATS = ("csv", "md", "tex", "html", "png")
PLOTS = {"accuracy_curves.png": "Test accuracy vs iteration (mean over seeds, 95% band)",
         "train_loss.png": "Train loss vs iteration (smoothed, mean over seeds, 95% band)",
         "final_accuracy.png": "Final test accuracy per seed, with mean and 95% CI"}
TRAIN_FIELDS = ("lr", "batch_size", "iters", "dataset")  # what must match for a clean comparison
LOSS_SMOOTHING = 20  # logged train_loss points (10 steps each) per rolling mean: 200 steps
VERDICTS = ("helped", "hurt", "no evidence", "undecidable")


class ReportError(UserError):
    """Nothing to report on, or a bad report option."""


@dataclass(frozen=True)
class ReportConfig:
    experiments: tuple[str, ...] = ("compare",)  # MLflow experiment names, pooled
    models: tuple[str, ...] = ()  # model names to include; () = all
    out: Path | None = None  # output folder; None = reports/<experiment>/
    formats: tuple[str, ...] = FORMATS  # files to write, from FORMATS
    alpha: float = 0.05  # family-wise error rate of the Holm-corrected tests
    confidence: float = 0.95  # of every interval
    min_effect: float = 0.2  # points of accuracy the sample-size estimate is for
    power: float = 0.8  # wanted probability of detecting min_effect

    @property
    def out_dir(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        return Path("reports") / "+".join(re.sub(r"[^A-Za-z0-9._-]+", "_", e) for e in self.experiments)


def build_report_config(experiments: Sequence[str] | None = None, models: str | None = None,
                        out: str | None = None, formats: str | None = None) -> ReportConfig:
    """From CLI values; every error names the flag and the bad value."""
    names = tuple(dict.fromkeys(e.strip() for e in (experiments or ["compare"]) if e.strip()))
    if not names:
        raise ReportError("--experiment: give an experiment name")
    model_names = tuple(dict.fromkeys(m.strip() for m in (models or "").split(",") if m.strip()))
    fmts = tuple(dict.fromkeys(f.strip().lower() for f in (formats or ",".join(FORMATS)).split(",") if f.strip()))
    for f in fmts:
        if f not in FORMATS:
            raise ReportError(f"--formats: unknown format {f!r}; known: {', '.join(FORMATS)}")
    return ReportConfig(names, model_names, Path(out) if out else None, fmts)


# ---------------------------------------------------------------- statistics (pure)
def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean; NaN below two values.

    ``mean_ci([1.0, 2.0, 3.0])`` -> ``(-0.484, 4.484)`` (rounded)
    """
    x = np.asarray(values, float)
    if len(x) < 2:
        return (math.nan, math.nan)
    sem = stats.sem(x)
    if sem == 0:
        return (float(x.mean()), float(x.mean()))
    low, high = stats.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=sem)
    return (float(low), float(high))


@dataclass(frozen=True)
class Difference:
    diff: float  # mean(b) - mean(a), points
    ci_low: float  # Welch interval of diff, points
    ci_high: float
    p: float  # two-sided Welch t-test, uncorrected
    g: float  # Hedges' g: diff over the pooled std, small-sample corrected


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Difference:
    """Welch's t-test of mean(b) - mean(a), with its confidence interval and Hedges' g.

    ``welch([1, 2, 3], [4, 5, 6]).diff == 3.0``
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(b.mean() - a.mean())
    if len(a) < 2 or len(b) < 2:
        return Difference(diff, math.nan, math.nan, math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance gives NaN, handled by the caller
        res = stats.ttest_ind(b, a, equal_var=False)
        ci = res.confidence_interval(confidence)
    return Difference(diff, float(ci.low), float(ci.high), float(res.pvalue), hedges_g(a, b))


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float:
    """(mean(b) - mean(a)) / pooled std, times the small-sample correction 1 - 3 / (4 (na + nb) - 9).

    ``round(hedges_g([1, 2, 3], [2, 3, 4]), 3) == 0.8``
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return math.nan
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    if pooled == 0:
        return math.nan
    return float((b.mean() - a.mean()) / pooled * (1 - 3 / (4 * (na + nb) - 9)))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaN stays NaN and is not counted in the family.

    ``holm([0.01, 0.04, 0.03])`` -> ``[0.03, 0.06, 0.06]``
    """
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def t_test_power(effect_size: float, n: int, alpha: float = 0.05) -> float:
    """Power of a two-sided two-sample t-test, ``n`` per group, standardized effect ``effect_size``.

    ``round(t_test_power(0.5, 64), 3) == 0.801`` (Cohen's table: d = 0.5 needs 64 per group)
    """
    df = 2 * n - 2
    ncp = effect_size * math.sqrt(n / 2)
    t_crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(t_crit, df, ncp) + stats.nct.cdf(-t_crit, df, ncp))


def seeds_needed(effect: float, std: float, alpha: float = 0.05, power: float = 0.8,
                 limit: int = 100_000) -> int | None:
    """Seeds per model for a two-sided t-test to detect ``effect`` at ``power``; None if unknown.

    ``seeds_needed(0.5, 1.0) == 64``; ``effect`` and ``std`` in the same unit (points).
    """
    if not (std >= 0) or not (effect > 0) or math.isinf(std):
        return None
    if std == 0:
        return 2
    d = effect / std
    lo, hi = 1, 2
    while t_test_power(d, hi, alpha) < power:  # power grows with n: double, then bisect
        lo, hi = hi, hi * 2
        if hi > limit:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if t_test_power(d, mid, alpha) >= power else (mid, hi)
    return hi


# ---------------------------------------------------------------- runs -> frames
@dataclass(frozen=True)
class ModelInfo:
    name: str
    spec: ModelSpec
    train: tuple  # values of TRAIN_FIELDS

    def train_dict(self) -> dict[str, object]:
        return dict(zip(TRAIN_FIELDS, self.train))


def _column(frame: pd.DataFrame, name: str, default: object = math.nan) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series(default, index=frame.index)


def _number(text: object) -> float | int | str:
    """``"0.1"`` -> 0.1, ``"100"`` -> 100, missing -> ``""``; other text unchanged (params come back as strings)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""  # comparable with itself, unlike NaN
    if isinstance(text, str):
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return text
    return text


def tidy_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """``mlflow.search_runs`` output -> one row per child run with typed columns.

    Columns: run_id, experiment_id, status, start_time, model, seed, hidden, activation, lr, batch_size,
    iters, dataset, spec, device_name, key, accuracy (percent), train_seconds, parent_run_id.
    """
    runs = frame[_column(frame, f"tags.{TAG_KIND}", "") == "run"]
    out = pd.DataFrame({
        "run_id": runs["run_id"], "experiment_id": runs["experiment_id"], "status": runs["status"],
        "start_time": runs["start_time"],
        "model": _column(runs, "params.model").fillna(_column(runs, "tags.ffnn.model")),
        "seed": pd.to_numeric(_column(runs, "params.seed"), errors="coerce"),
        "hidden": _column(runs, "params.hidden_sizes", "").fillna(""),
        "activation": _column(runs, "params.activation", "none").fillna("none"),
        "lr": [_number(v) for v in _column(runs, "params.lr")],
        "batch_size": [_number(v) for v in _column(runs, "params.batch_size")],
        "iters": [_number(v) for v in _column(runs, "params.iters")],
        "dataset": _column(runs, "params.dataset", "").fillna(""),
        "spec": _column(runs, "tags.ffnn.spec", ""),
        "device_name": _column(runs, "tags.ffnn.device_name", "").fillna(""),
        "key": _column(runs, f"tags.{TAG_KEY}"),
        "accuracy": pd.to_numeric(_column(runs, "metrics.final_test_accuracy"), errors="coerce"),
        "train_seconds": pd.to_numeric(_column(runs, "metrics.train_seconds"), errors="coerce"),
        "parent_run_id": _column(runs, "tags.mlflow.parentRunId"),
    })
    out = out[out["model"].notna() & out["seed"].notna()].copy()
    out["seed"] = out["seed"].astype(int)
    # runs logged without a run_key are identified by what determines their result
    fallback = out[["model", "hidden", "activation", "lr", "batch_size", "iters", "seed", "dataset"]] \
        .astype(str).agg("|".join, axis=1)
    out["key"] = out["key"].where(out["key"].notna() & (out["key"] != ""), fallback)
    return out.sort_values("start_time", kind="stable").reset_index(drop=True)


def model_info(row: pd.Series) -> ModelInfo:
    try:
        spec = ModelSpec(parse_hidden(str(row["hidden"])), str(row["activation"]))
    except SpecError:
        spec = ModelSpec()
    return ModelInfo(str(row["model"]), spec, tuple(row[f] for f in TRAIN_FIELDS))


@dataclass
class Selection:
    kept: pd.DataFrame  # one FINISHED run per (model, seed): the runs the statistics use
    excluded: pd.DataFrame  # model, n_failed, n_unfinished: runs with no finished counterpart
    models: dict[str, ModelInfo]  # in report order
    notes: list[str] = field(default_factory=list)


def model_order(names: Sequence[str]) -> list[str]:
    """Registry models in the tutorial's order, then the rest by name; ``X*`` right after ``X``."""
    index = {m: i for i, m in enumerate(REGISTRY)}

    def key(name: str) -> tuple:
        base, tuned = (name[:-1], 1) if name.endswith("*") else (name, 0)
        return (0, index[base], "", tuned) if base in index else (1, 0, base, tuned)
    return sorted(names, key=key)


def select_runs(runs: pd.DataFrame, models: Sequence[str] = ()) -> Selection:
    """Keep the latest FINISHED run of each (model, seed, config); count the rest in notes.

    A model logged under several training configs keeps the config of its latest finished run.
    """
    notes: list[str] = []
    if models:
        present = model_order(runs["model"].unique())
        missing = [m for m in models if m not in present]
        if missing:
            raise ReportError(f"--models: no runs of {', '.join(missing)}; models present: {', '.join(present)}")
        runs = runs[runs["model"].isin(models)]
    finished = runs[(runs["status"] == "FINISHED") & runs["accuracy"].notna()]
    no_metric = runs[(runs["status"] == "FINISHED") & runs["accuracy"].isna()]
    if len(no_metric):
        notes.append(f"{len(no_metric)} FINISHED run(s) without final_test_accuracy excluded")

    latest = finished.drop_duplicates("key", keep="last")
    if len(finished) > len(latest):
        notes.append(f"{len(finished) - len(latest)} duplicate run(s) of the same (model, seed, config) "
                     f"counted once (latest FINISHED)")
    kept_parts, infos = [], {}
    for name in model_order(latest["model"].unique()):
        mine = latest[latest["model"] == name]
        info = model_info(mine.iloc[-1])
        same = mine.apply(lambda r: model_info(r) == info, axis=1)
        if not same.all():
            other = mine[~same]
            notes.append(f"{name}: {len(other)} finished run(s) with another spec or training config left out "
                         f"(kept {info.spec.describe()}, {_train_text(info)})")
        kept_parts.append(mine[same].drop_duplicates("seed", keep="last"))
        infos[name] = info
    kept = pd.concat(kept_parts) if kept_parts else latest.iloc[:0]

    superseded = runs[(runs["status"] != "FINISHED") & runs["key"].isin(set(finished["key"]))]
    if len(superseded):
        notes.append(f"{len(superseded)} failed or unfinished run(s) superseded by a finished re-run")
    open_runs = runs[(runs["status"] != "FINISHED") & ~runs["key"].isin(set(finished["key"]))]
    failed = open_runs[open_runs["status"].isin(["FAILED", "KILLED"])]
    unfinished = open_runs[~open_runs["status"].isin(["FAILED", "KILLED"])]
    names = model_order(set(runs["model"]))
    excluded = pd.DataFrame({"model": names,
                             "n_failed": [int((failed["model"] == m).sum()) for m in names],
                             "n_unfinished": [int((unfinished["model"] == m).sum()) for m in names]})
    if len(failed) or len(unfinished):
        notes.append(f"excluded: {len(failed)} failed or killed, {len(unfinished)} unfinished run(s) "
                     f"(counted per model in the table)")
    for name in names:
        if name not in infos:
            notes.append(f"{name}: no finished runs")
    for name, info in infos.items():
        n = int((kept["model"] == name).sum())
        if n < 2:
            notes.append(f"{name}: only {n} finished seed; its comparisons are undecidable")
    return Selection(kept.reset_index(drop=True), excluded, infos, notes)


def _train_text(info: ModelInfo) -> str:
    t = info.train_dict()
    return f"lr {t['lr']}, batch {t['batch_size']}, {t['iters']} iters, {t['dataset']}"


def _seed_text(seeds: Sequence[int]) -> str:
    """``[0, 1, 2, 4]`` -> ``"0-2,4"``"""
    seeds, parts = sorted(seeds), []
    for s in seeds:
        if parts and s == parts[-1][1] + 1:
            parts[-1][1] = s
        else:
            parts.append([s, s])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


def summarise(sel: Selection, confidence: float = 0.95) -> pd.DataFrame:
    """One row per model: spec, seeds, excluded runs, accuracy statistics (percent), seconds, device."""
    rows = []
    for name, info in sel.models.items():
        mine = sel.kept[sel.kept["model"] == name]
        acc = mine["accuracy"].to_numpy(float)
        low, high = mean_ci(acc, confidence)
        ex = sel.excluded[sel.excluded["model"] == name]
        rows.append({
            "model": name, "spec": info.spec.describe(),
            "n_params": count_params(info.spec),
            "n_seeds": len(acc), "seeds": _seed_text(mine["seed"].tolist()),
            "n_failed": int(ex["n_failed"].sum()), "n_unfinished": int(ex["n_unfinished"].sum()),
            "mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if len(acc) > 1 else math.nan,
            "ci_low": low, "ci_high": high, "min": float(acc.min()), "max": float(acc.max()),
            "train_seconds": float(mine["train_seconds"].mean()),
            "devices": "; ".join(sorted(d for d in mine["device_name"].unique() if d)),
            **info.train_dict(),
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- comparisons
@dataclass(frozen=True)
class Step:
    kind: str  # nonlinearity, activation, depth, width, tuned
    a: str  # the smaller / baseline model
    b: str  # the model after the change
    change: str  # in words


KINDS = ("nonlinearity", "activation", "depth", "width", "tuned")


def plan_comparisons(models: dict[str, ModelInfo]) -> list[Step]:
    """The capacity steps present among ``models``, in the order of KINDS.

    Except for ``tuned`` (X -> X*), both models must share the training config.
    """
    infos = list(models.values())
    act_rank = {a: i for i, a in enumerate(ACTIVATIONS)}
    steps: list[Step] = []
    for x in infos:
        for y in infos:
            if x is y or x.train != y.train:
                continue
            hx, hy = x.spec.hidden, y.spec.hidden
            if not hx and len(hy) == 1 and y.spec.activation == "relu":
                steps.append(Step("nonlinearity", x.name, y.name, "add a hidden ReLU layer"))
            elif hx and hx == hy and act_rank[x.spec.activation] < act_rank[y.spec.activation]:
                steps.append(Step("activation", x.name, y.name, f"{x.spec.activation} -> {y.spec.activation}"))
            elif hx and x.spec.activation == y.spec.activation and hy == (*hx, hx[-1]):
                steps.append(Step("depth", x.name, y.name, "add a layer"))
    widths: dict[tuple, list[ModelInfo]] = {}
    for x in infos:
        if x.spec.hidden:
            widths.setdefault((x.spec.activation, len(x.spec.hidden), x.train), []).append(x)
    for group in widths.values():
        group = sorted(group, key=lambda m: (sum(m.spec.hidden), m.spec.hidden))
        for x, y in zip(group, group[1:]):
            if x.spec.hidden != y.spec.hidden:
                steps.append(Step("width", x.name, y.name,
                                  f"width {x.spec.hidden_str} -> {y.spec.hidden_str}"))
    for y in infos:
        base = models.get(y.name[:-1]) if y.name.endswith("*") else None
        if base is not None:
            steps.append(Step("tuned", base.name, y.name, f"tuned: {y.spec.describe()}, lr {y.train_dict()['lr']}"))
    unique = {(s.a, s.b): s for s in reversed(steps)}  # a pair planned twice keeps its first kind
    return sorted(unique.values(), key=lambda s: (KINDS.index(s.kind), steps.index(s)))


def compare_steps(sel: Selection, steps: Sequence[Step], cfg: ReportConfig) -> pd.DataFrame:
    """One row per step: Welch difference and CI (points), p, Holm p, Hedges' g, verdict, seeds needed."""
    acc = {m: sel.kept.loc[sel.kept["model"] == m, "accuracy"].to_numpy(float) for m in sel.models}
    spreads = [v.std(ddof=1) for v in acc.values() if len(v) > 1]
    typical_std = float(np.sqrt(np.mean(np.square(spreads)))) if spreads else math.nan
    rows = []
    for s in steps:
        a, b = acc[s.a], acc[s.b]
        d = welch(a, b, cfg.confidence)
        own = [v.var(ddof=1) for v in (a, b) if len(v) > 1]
        std = float(np.sqrt(np.mean(own))) if own else typical_std  # root mean variance, points
        reason = ""
        if len(a) < 2 or len(b) < 2:
            few = ", ".join(f"{m} has {len(acc[m])} seed{'s' * (len(acc[m]) != 1)}"
                            for m in (s.a, s.b) if len(acc[m]) < 2)
            reason = f"{few} (need >= 2)"
        elif math.isnan(d.p):
            reason = "no seed-to-seed variance in either model"
        rows.append({"kind": s.kind, "a": s.a, "b": s.b, "change": s.change,
                     "spec_a": sel.models[s.a].spec.describe(), "spec_b": sel.models[s.b].spec.describe(),
                     "n_a": len(a), "n_b": len(b), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
                     "diff": d.diff, "ci_low": d.ci_low, "ci_high": d.ci_high, "p": d.p, "hedges_g": d.g,
                     "std": std, "seeds_needed": seeds_needed(cfg.min_effect, std, cfg.alpha, cfg.power),
                     "reason": reason})
    cols = ["kind", "a", "b", "change", "spec_a", "spec_b", "n_a", "n_b", "mean_a", "mean_b", "diff",
            "ci_low", "ci_high", "p", "p_holm", "hedges_g", "verdict", "std", "seeds_needed", "reason"]
    table = pd.DataFrame(rows, columns=[c for c in cols if c not in ("p_holm", "verdict")])
    table.insert(cols.index("p_holm"), "p_holm", holm(table["p"].to_numpy(float)) if len(table) else [])
    table.insert(cols.index("verdict"), "verdict",
                 [verdict(r.diff, r.p_holm, cfg.alpha) for r in table.itertuples()])
    table["seeds_needed"] = table["seeds_needed"].astype("Int64")
    return table


def verdict(diff: float, p_holm: float, alpha: float = 0.05) -> str:
    """``verdict(0.6, 0.002) == "helped"``; NaN p (too few seeds) is ``"undecidable"``."""
    if math.isnan(p_holm):
        return "undecidable"
    if p_holm < alpha:
        return "helped" if diff > 0 else "hurt"
    return "no evidence"


# ---------------------------------------------------------------- the report
@dataclass
class Report:
    cfg: ReportConfig
    uri: str
    summary: pd.DataFrame
    comparisons: pd.DataFrame
    notes: list[str]
    n_runs: int  # finished runs the statistics use
    out: Path
    files: list[Path] = field(default_factory=list)
    parent_run_id: str | None = None  # where the files were logged

    def evidence(self) -> str:
        """``"n=30 finished runs: 6 models x 5 seeds; mnist, lr 0.1, batch 100, 3000 iters"``"""
        seeds = sorted(set(self.summary["n_seeds"]))
        per = f"{seeds[0]} seeds" if len(seeds) == 1 else f"{min(seeds)}-{max(seeds)} seeds"
        configs = self.summary[list(TRAIN_FIELDS)].astype(str).drop_duplicates()
        if len(configs) == 1:
            c = configs.iloc[0]
            setup = f"{c['dataset']}, lr {c['lr']}, batch {c['batch_size']}, {c['iters']} iters"
        else:
            setup = "training configs differ between models (see summary.csv)"
        n_models = len(self.summary)
        return f"n={self.n_runs} finished runs: {n_models} model{'s' * (n_models != 1)} x {per}; {setup}"

    def verdict_lines(self) -> list[str]:
        """``C -> D (add a layer): +0.76 pts [0.52, 1.00], helped (p<0.001)``"""
        lines = []
        for r in self.comparisons.itertuples():
            head = f"{r.a} -> {r.b} ({r.change}): {r.diff:+.2f} pts"
            if r.verdict == "undecidable":
                need = f"; ~{r.seeds_needed} seeds per model to detect {self.cfg.min_effect:g} pts" \
                    if not pd.isna(r.seeds_needed) else ""
                lines.append(f"{head}, undecidable: {r.reason}{need}")
                continue
            line = f"{head} [{r.ci_low:+.2f}, {r.ci_high:+.2f}], {r.verdict} (p{_p_text(r.p_holm)})"
            if r.verdict == "no evidence" and not pd.isna(r.seeds_needed) and r.seeds_needed > min(r.n_a, r.n_b):
                line += f"; ~{r.seeds_needed} seeds per model to detect {self.cfg.min_effect:g} pts"
            lines.append(line)
        return lines

    def verdict_header(self) -> str:
        m = int(self.comparisons["p_holm"].notna().sum())
        return (f"{self.cfg.confidence:.0%} CI of the difference in final test accuracy; p Holm-corrected over "
                f"{m} comparison{'s' * (m != 1)}, alpha {self.cfg.alpha:g}")


def _p_text(p: float) -> str:
    """``"=0.002"``, ``"<0.001"``"""
    return "<0.001" if p < 0.001 else f"={p:.3f}"


def open_experiments(tracker: Tracker, names: Sequence[str]) -> list[str]:
    """Experiment ids; an unknown name is an error that lists the experiments that exist."""
    ids = []
    for name in names:
        exp_id = tracker.experiment_id(name, create=False)
        if exp_id is None:
            existing = [e for e in tracker.experiment_names() if e != "Default"]
            have = f"existing: {', '.join(existing)}" if existing else "there are none yet; run `ffnn compare`"
            raise ReportError(f"--experiment: no experiment {name!r} at {tracker.uri}; {have}")
        ids.append(exp_id)
    return ids


def make_report(cfg: ReportConfig, tracking_uri: str | None = None) -> Report:
    """Read, compute, plot, write the files and log them on the latest comparison parent run."""
    tracker = Tracker.open(tracking_uri)
    frame = tracker.runs_frame(open_experiments(tracker, cfg.experiments))
    runs = tidy_runs(frame) if len(frame) else pd.DataFrame()
    where = ", ".join(repr(e) for e in cfg.experiments)
    if runs.empty:
        raise ReportError(f"experiment {where} has no model runs; run `ffnn compare` first")
    sel = select_runs(runs, cfg.models)
    if sel.kept.empty:
        raise ReportError(f"experiment {where}: no finished runs to report on "
                          f"({int(sel.excluded['n_failed'].sum())} failed, "
                          f"{int(sel.excluded['n_unfinished'].sum())} unfinished)")
    report = Report(cfg, tracker.uri, summarise(sel, cfg.confidence),
                    compare_steps(sel, plan_comparisons(sel.models), cfg), sel.notes, len(sel.kept), cfg.out_dir)
    figures = {}
    if {"png", "html"} & set(cfg.formats):
        curves = histories(tracker, sel.kept)
        figures = render_plots(sel, curves, report.summary, cfg.confidence)
    report.files = write_files(report, figures)

    parents = frame[_column(frame, f"tags.{TAG_KIND}", "") == "comparison"].sort_values("start_time")
    if parents.empty:
        report.notes.append("no comparison parent run in the experiment: files not logged to MLflow")
    elif report.files:
        report.parent_run_id = str(parents["run_id"].iloc[-1])
        try:
            tracker.log_paths(report.parent_run_id, report.files, "report")
        except Exception as e:  # the files are written; a store problem must not hide them
            report.notes.append(f"could not log the files to run {report.parent_run_id}: {e}".splitlines()[0])
            report.parent_run_id = None
    return report


# ---------------------------------------------------------------- plots
def histories(tracker: Tracker, kept: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``test_accuracy`` and ``train_loss`` histories: columns model, seed, step (iteration), value."""
    out = {}
    for key in ("test_accuracy", "train_loss"):
        parts = []
        for r in kept.itertuples():
            h = tracker.metric_history(r.run_id, key)
            parts.append(h.assign(model=r.model, seed=r.seed))
        out[key] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            columns=["step", "value", "model", "seed"])
    return out


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


def render_plots(sel: Selection, curves: dict[str, pd.DataFrame], summary: pd.DataFrame,
                 confidence: float = 0.95) -> dict[str, bytes]:
    """The three figures as PNG bytes, keyed by file name (see PLOTS)."""
    names = list(sel.models)
    colors = _colors(names)
    label = {m: f"{m} ({sel.models[m].spec.describe()})" for m in names}
    pct = f"{confidence:.0%}"
    figs = {}

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
        mine = mine.assign(value=mine.groupby("seed")["value"].transform(
            lambda v: v.rolling(LOSS_SMOOTHING, min_periods=1).mean()))
        b = band(mine, confidence)
        ax.plot(b["step"], b["mean"], color=colors[m], label=label[m], lw=1.5)
        ax.fill_between(b["step"], b["low"], b["high"], color=colors[m], alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set(xlabel="iteration (optimizer step)", ylabel="train loss (cross-entropy, log scale)",
           title=f"Train loss, rolling mean over {LOSS_SMOOTHING * 10} steps: mean over seeds, {pct} band")
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


# ---------------------------------------------------------------- files
def _num(x: float, spec: str = ".2f") -> str:
    return "-" if x is None or pd.isna(x) else format(x, spec)


def display_tables(report: Report) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two tables as formatted text, shared by the markdown, LaTeX and HTML files."""
    s = report.summary
    pct = f"{report.cfg.confidence:.0%} CI"
    models = pd.DataFrame({
        "Model": s["model"], "Spec": s["spec"], "Params": [f"{n:,}" for n in s["n_params"]],
        "Seeds": s["n_seeds"].astype(str),
        "Excluded": [", ".join(t for t in (f"{f} failed" if f else "", f"{u} unfinished" if u else "") if t) or "0"
                     for f, u in zip(s["n_failed"], s["n_unfinished"])],
        "Mean (%)": [_num(v) for v in s["mean"]], "Std": [_num(v) for v in s["std"]],
        pct: [f"[{_num(lo)}, {_num(hi)}]" if not pd.isna(lo) else "-" for lo, hi in zip(s["ci_low"], s["ci_high"])],
        "Min": [_num(v) for v in s["min"]], "Max": [_num(v) for v in s["max"]],
        "Train (s)": [_num(v, ".1f") for v in s["train_seconds"]], "Device": s["devices"],
    })
    c = report.comparisons
    comparisons = pd.DataFrame({
        "Comparison": [f"{a} -> {b}" for a, b in zip(c["a"], c["b"])], "Change": c["change"],
        "Diff (pts)": [f"{v:+.2f}" for v in c["diff"]],
        pct: [f"[{lo:+.2f}, {hi:+.2f}]" if not pd.isna(lo) else "-" for lo, hi in zip(c["ci_low"], c["ci_high"])],
        "p": [_num(v, ".2g") for v in c["p"]], "p (Holm)": [_num(v, ".2g") for v in c["p_holm"]],
        "Hedges' g": [_num(v, ".2f") for v in c["hedges_g"]], "Verdict": c["verdict"],
        f"Seeds for {report.cfg.min_effect:g} pts": ["-" if pd.isna(v) else str(v) for v in c["seeds_needed"]],
    })
    return models, comparisons


def verdict_sentences(report: Report) -> list[str]:
    """The verdicts in words, one sentence per comparison (markdown emphasis included)."""
    cfg, out = report.cfg, []
    for r in report.comparisons.itertuples():
        what = f"**{_md(r.a)} -> {_md(r.b)}** ({_md(r.change)}; {r.spec_a} -> {r.spec_b})"
        need = "" if pd.isna(r.seeds_needed) else (
            f" About {r.seeds_needed} seeds per model would detect a {cfg.min_effect:g}-point difference "
            f"with {cfg.power:.0%} power at this seed-to-seed spread.")
        if r.verdict == "undecidable":
            out.append(f"{what}: {r.diff:+.2f} points, **undecidable**: {_md(r.reason)}.{need}")
            continue
        body = (f"{what}: {r.diff:+.2f} points ({cfg.confidence:.0%} CI {r.ci_low:+.2f} to {r.ci_high:+.2f}), "
                f"Hedges' g {_num(r.hedges_g)}, Holm-corrected p{_p_text(r.p_holm)}")
        if r.verdict == "helped":
            out.append(f"{body}: **helped**.")
        elif r.verdict == "hurt":
            out.append(f"{body}: **hurt**.")
        else:
            under = need if not pd.isna(r.seeds_needed) and r.seeds_needed > min(r.n_a, r.n_b) else ""
            out.append(f"{body}: **no evidence** of a difference at alpha {cfg.alpha:g}.{under}")
    return out


NO_STEPS = "No capacity steps among the models present."
METHOD = ("Each run's final test accuracy (percent) is one observation; each seed counts once (the latest finished "
          "run of a repeated (model, seed, config)). Model intervals are Student-t intervals of the mean. "
          "Comparisons use Welch's t-test (unequal variances) on mean(after) - mean(before), in points; p-values "
          "are Holm-corrected across all comparisons and a verdict is helped/hurt when the corrected p is below "
          "alpha, no evidence otherwise. Hedges' g is the difference over the pooled standard deviation. Seeds "
          "needed: smallest n per model for a two-sided two-sample t-test (alpha {alpha:g}, uncorrected) to reach "
          "{power:.0%} power for a {effect:g}-point difference at the observed spread.")


def _md(text: str) -> str:
    """Markdown-escape the characters model names may hold: ``_md("C*") == "C\\*"``."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_").replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    """``| a | b |`` rows; text columns left-aligned, the rest right-aligned."""
    left = {"Model", "Spec", "Device", "Comparison", "Change", "Verdict"}
    cells = frame.astype(str).map(_md)
    lines = ["| " + " | ".join(frame.columns) + " |",
             "|" + "|".join(":---" if c in left else "---:" for c in frame.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def markdown(report: Report, plots: Sequence[str]) -> str:
    models, comparisons = display_tables(report)
    parts = [f"# ffnn report: {', '.join(report.cfg.experiments)}", "",
             f"{report.evidence()}. Accuracy in percent, differences in points. "
             f"Tracking store: `{report.uri}`; generated {_now()}.", "",
             "## Verdicts", "", *([f"- {s}" for s in verdict_sentences(report)] or [NO_STEPS]), "",
             "## Models", "", markdown_table(models), "",
             "## Comparisons", "", markdown_table(comparisons) if len(comparisons) else NO_STEPS, ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{PLOTS[p]}]({p})\n" for p in plots]
    if report.notes:
        parts += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    parts += ["## Method", "", METHOD.format(alpha=report.cfg.alpha, power=report.cfg.power,
                                             effect=report.cfg.min_effect), ""]
    return "\n".join(parts)


def _tex(text: str) -> str:
    """LaTeX-escape ``text``; ``->`` becomes an arrow."""
    out = "".join({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                   "<": r"\textless{}", ">": r"\textgreater{}"}.get(ch, ch) for ch in text)
    return out.replace(r"-\textgreater{}", r"$\rightarrow$")


def latex_table(frame: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs ``table`` environment."""
    left = {"Model", "Spec", "Device", "Comparison", "Change", "Verdict"}
    align = "".join("l" if c in left else "r" for c in frame.columns)
    rows = [" & ".join(_tex(str(v)) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    return "\n".join([r"\begin{table}[ht]", r"\centering", r"\small", rf"\caption{{{_tex(caption)}}}",
                      rf"\label{{{label}}}", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
                      " & ".join(_tex(c) for c in frame.columns) + r" \\", r"\midrule", *rows,
                      r"\bottomrule", r"\end{tabular}", r"\end{table}"])


def latex(report: Report) -> str:
    models, comparisons = display_tables(report)
    name = ", ".join(report.cfg.experiments)
    parts = [f"% ffnn report: {name}; generated {_now()}. Needs \\usepackage{{booktabs}}.",
             f"% {report.evidence()}", "",
             latex_table(models, f"Final test accuracy (%) per model over seeds ({report.evidence()}).",
                         "tab:ffnn-models"), ""]
    if len(comparisons):
        parts += [latex_table(comparisons,
                              f"Capacity steps: difference in final test accuracy (points), Welch's t-test, "
                              f"p Holm-corrected over the family, alpha {report.cfg.alpha:g}.",
                              "tab:ffnn-comparisons"), ""]
    return "\n".join(parts)


def html_page(report: Report, figures: dict[str, bytes]) -> str:
    """One self-contained page: tables and plots (base64 PNG) inline, no external resources."""
    models, comparisons = display_tables(report)
    esc = html.escape
    bold = re.compile(r"\*\*((?:\\.|[^*\\])+?)\*\*")  # **text**, where text may hold \* escapes
    verdicts = "".join("<li>" + re.sub(r"\\(.)", r"\1", bold.sub(r"<b>\1</b>", esc(s))) + "</li>"
                       for s in verdict_sentences(report))
    images = "".join(f'<figure><img alt="{esc(PLOTS[n])}" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode()}"><figcaption>{esc(PLOTS[n])}</figcaption></figure>'
                     for n, png in figures.items())
    notes = "".join(f"<li>{esc(n)}</li>" for n in report.notes)
    title = f"ffnn report: {', '.join(report.cfg.experiments)}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }}
th {{ border-bottom: 2px solid #444; }}
td:nth-child(-n+2), th:nth-child(-n+2) {{ text-align: left; }}
img {{ max-width: 100%; }} figure {{ margin: 1.5em 0; }} figcaption {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>{esc(report.evidence())}. Accuracy in percent, differences in points.
Tracking store: <code>{esc(report.uri)}</code>; generated {esc(_now())}.</p>
<h2>Verdicts</h2>{f"<ul>{verdicts}</ul>" if verdicts else f"<p>{NO_STEPS}</p>"}
<h2>Models</h2>{models.to_html(index=False, border=0)}
<h2>Comparisons</h2>{comparisons.to_html(index=False, border=0) if len(comparisons) else f"<p>{NO_STEPS}</p>"}
{"<h2>Plots</h2>" + images if images else ""}
{"<h2>Notes</h2><ul>" + notes + "</ul>" if notes else ""}
<h2>Method</h2><p>{esc(METHOD.format(alpha=report.cfg.alpha, power=report.cfg.power,
                                     effect=report.cfg.min_effect))}</p>
</body></html>
"""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_files(report: Report, figures: dict[str, bytes]) -> list[Path]:
    """Write the requested formats into ``report.out``; return the paths written."""
    out, fmts = report.out, set(report.cfg.formats)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"--out: cannot create {out} ({e.strerror})") from None
    files: dict[str, str | bytes] = {}
    if "csv" in fmts:
        files["summary.csv"] = report.summary.to_csv(index=False)
        files["comparisons.csv"] = report.comparisons.to_csv(index=False)
    plots = list(figures) if "png" in fmts else []
    if "md" in fmts:
        files["summary.md"] = markdown(report, plots)
    if "tex" in fmts:
        files["summary.tex"] = latex(report)
    if "html" in fmts:
        files["summary.html"] = html_page(report, figures)
    for name in plots:
        files[name] = figures[name]
    paths = []
    for name, content in files.items():
        path = out / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        paths.append(path)
    return paths
