"""MLflow's runs frame -> typed child runs -> the runs a report uses, with failures as outcomes.

Reads the columns ``tracking.RUN_COLUMNS`` names; never imports mlflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import UserError
from ..grid import parse_cell
from ..models import (
    MNIST_CLASSES,
    REGISTRY,
    ModelSpec,
    SpecError,
    count_params,
    parse_describe,
    parse_hidden,
    parse_tuned,
)
from ..tracking import RUN_COLUMNS
from .stats import MIN_SEEDS, mean_ci

TRAIN_FIELDS = ("lr", "batch_size", "iters", "dataset")  # what must match for a clean comparison
# A FINISHED run at most this many points above chance (100 / classes) learned nothing: it collapsed
# (e.g. E at lr 100 ends at 9.8 %). It is an outcome, counted like a divergence, not averaged in.
COLLAPSE_POINTS = 5.0
COLLAPSED_AT = 100 / MNIST_CLASSES + COLLAPSE_POINTS  # percent, with 10 classes (``chance`` for others)


def chance(n_classes: int) -> float:
    """Percent a guess gets: what a failed (diverged or crashed) seed scores in a comparison."""
    return 100 / n_classes


class ReportError(UserError):
    """Nothing to report on, or a bad report option."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    spec: ModelSpec
    train: tuple  # values of TRAIN_FIELDS

    def train_dict(self) -> dict[str, object]:
        return dict(zip(TRAIN_FIELDS, self.train))


def _column(frame: pd.DataFrame, name: str, default: object = math.nan) -> pd.Series:
    col = RUN_COLUMNS[name]
    return frame[col] if col in frame.columns else pd.Series(default, index=frame.index)


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
    return text if isinstance(text, (int, float)) else str(text)  # never seen: params come back as text


def tidy_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """``Tracker.runs_frame`` output -> one row per child run with typed columns.

    Columns: run_id, experiment_id, status, start_time, model, seed, hidden, activation, lr, batch_size,
    iters, dataset, spec, device_name, key, accuracy (percent), train_seconds, failure, failure_step,
    parent_run_id, test_correct (``ffnn.bits`` text; empty for runs logged before it was recorded), tuned_by
    (the study behind a tuned model, ``studies.parse_budget``; empty for others).
    """
    runs = frame[_column(frame, "kind", "") == "run"]
    out = pd.DataFrame({
        "run_id": runs[RUN_COLUMNS["run_id"]], "experiment_id": runs[RUN_COLUMNS["experiment_id"]],
        "status": runs[RUN_COLUMNS["status"]], "start_time": runs[RUN_COLUMNS["start_time"]],
        "model": _column(runs, "model").fillna(_column(runs, "model_tag")),
        "seed": pd.to_numeric(_column(runs, "seed"), errors="coerce"),
        "hidden": _column(runs, "hidden", "").fillna(""),
        "activation": _column(runs, "activation", "none").fillna("none"),
        **{f: [_number(v) for v in _column(runs, f)] for f in ("lr", "batch_size", "iters")},
        "dataset": _column(runs, "dataset", "").fillna(""),
        "spec": _column(runs, "spec", ""),
        "device_name": _column(runs, "device_name", "").fillna(""),
        "key": _column(runs, "key"),
        "accuracy": pd.to_numeric(_column(runs, "accuracy"), errors="coerce"),
        "train_seconds": pd.to_numeric(_column(runs, "train_seconds"), errors="coerce"),
        "failure": _column(runs, "failure", "").fillna(""),
        "failure_step": pd.to_numeric(_column(runs, "failure_step"), errors="coerce"),
        "parent_run_id": _column(runs, "parent_run_id"),
        "test_correct": _column(runs, "test_correct", "").fillna(""),
        "tuned_by": _column(runs, "tuned_by", "").fillna(""),
    })
    out = out[out["model"].notna() & out["seed"].notna()].copy()
    out["seed"] = out["seed"].astype(int)
    # runs logged without a run_key are identified by what determines their result
    fallback = out[["model", "hidden", "activation", "lr", "batch_size", "iters", "seed", "dataset"]] \
        .astype(str).agg("|".join, axis=1)
    out["key"] = out["key"].where(out["key"].notna() & (out["key"] != ""), fallback)
    return out.sort_values("start_time", kind="stable").reset_index(drop=True)


def model_info(row: pd.Series) -> ModelInfo:
    """The model of a run; its input and class counts from its ``ffnn.spec`` tag (MNIST's without one)."""
    sizes = parse_describe(row["spec"]) if isinstance(row["spec"], str) else None
    try:
        spec = ModelSpec(parse_hidden(str(row["hidden"])), str(row["activation"]), *(sizes or ()))
    except SpecError:
        spec = ModelSpec()
    return ModelInfo(str(row["model"]), spec, tuple(row[f] for f in TRAIN_FIELDS))


def model_order(names: Sequence[str]) -> list[str]:
    """Registry models in the tutorial's order, then the rest by name, grid cells last by budget, lr, depth and
    width; ``X*`` (then its replicate studies ``X*s2``, ...) right after ``X``."""
    index = {m: i for i, m in enumerate(REGISTRY)}

    def key(name: str) -> tuple:
        base, tuned = parse_tuned(name) or (name, 0)
        cell = parse_cell(base)
        if cell is not None:
            return (2, (cell.iters or 0, cell.lr or 0.0, cell.depth, cell.width), "", tuned)
        return (0, (index[base],), "", tuned) if base in index else (1, (0,), base, tuned)
    return sorted(names, key=key)


def outcome(status: str, accuracy: float, failure: str, n_classes: int = MNIST_CLASSES) -> str:
    """``ok``, ``collapsed``, ``diverged``, ``crashed`` (FAILED otherwise) or ``unfinished``.

    ``outcome("FINISHED", 9.8, "") == "collapsed"``; ``outcome("FAILED", nan, "diverged: ...") == "diverged"``
    """
    if status == "FINISHED":
        return "collapsed" if accuracy <= chance(n_classes) + COLLAPSE_POINTS else "ok"
    if status == "FAILED":
        return "diverged" if str(failure).startswith("diverged") else "crashed"
    return "unfinished"


FAILURES = ("diverged", "crashed", "collapsed")  # outcomes that count against a model


@dataclass
class Selection:
    kept: pd.DataFrame  # one ok FINISHED run per (model, seed): the runs the statistics use
    outcomes: pd.DataFrame  # model, seed, outcome, accuracy, failure, failure_step, test_correct: one row per
    #                         (model, seed) tried
    models: dict[str, ModelInfo]  # in report order
    notes: list[str] = field(default_factory=list)

    def failures(self, model: str) -> dict[str, int]:
        """``{"diverged": 2}``: seeds of ``model`` by failing outcome (unfinished ones are not outcomes)."""
        mine = self.outcomes[self.outcomes["model"] == model]["outcome"]
        return {o: int((mine == o).sum()) for o in FAILURES if (mine == o).any()}

    def scored(self, model: str) -> pd.DataFrame:
        """Every seed of ``model`` with an outcome, as comparisons score it: columns seed, score, failed,
        test_correct. ok and collapsed seeds score their accuracy; diverged and crashed ones chance."""
        mine = self.outcomes[(self.outcomes["model"] == model) & (self.outcomes["outcome"] != "unfinished")]
        lost = mine["outcome"].isin(("diverged", "crashed"))
        return pd.DataFrame({"seed": mine["seed"].to_numpy(int),
                             "score": np.where(lost, chance(self.models[model].spec.n_classes),
                                               mine["accuracy"].to_numpy(float)),
                             "failed": mine["outcome"].isin(FAILURES).to_numpy(),
                             "test_correct": mine["test_correct"].to_numpy(object)}).sort_values("seed")

    def tried(self, model: str) -> int:
        """Seeds of ``model`` with an outcome: ok or failed."""
        mine = self.outcomes[self.outcomes["model"] == model]
        return int((mine["outcome"] != "unfinished").sum())


def select_runs(runs: pd.DataFrame, models: Sequence[str] = ()) -> Selection:
    """Latest run of each (model, seed) of the model's latest config: its outcome, and ok runs kept.

    A FINISHED run beats a failed one of the same key (a re-run that worked); of several of one status
    the latest counts. A model logged under several configs keeps the config of its latest run.
    """
    notes: list[str] = []
    if models:
        present = model_order(runs["model"].unique())
        missing = [m for m in models if m not in present]
        if missing:
            raise ReportError(f"--models: no runs of {', '.join(missing)}; models present: {', '.join(present)}")
        runs = runs[runs["model"].isin(models)]
    no_metric = (runs["status"] == "FINISHED") & runs["accuracy"].isna()
    if no_metric.any():
        notes.append(f"{int(no_metric.sum())} FINISHED run(s) without final_test_accuracy excluded")
        runs = runs[~no_metric]
    rank = runs.assign(_done=(runs["status"] == "FINISHED").astype(int)).sort_values(
        ["_done", "start_time"], kind="stable")
    latest = rank.drop_duplicates("key", keep="last").drop(columns="_done")
    dup = int((runs["status"] == "FINISHED").sum() - (latest["status"] == "FINISHED").sum())
    if dup:
        notes.append(f"{dup} duplicate run(s) of the same (model, seed, config) counted once (latest FINISHED)")
    superseded = len(runs) - len(latest) - dup
    if superseded:
        notes.append(f"{superseded} failed or unfinished run(s) superseded by a later run of the same config")

    parts, infos = [], {}
    for name in model_order(latest["model"].unique()):
        mine = latest[latest["model"] == name].sort_values("start_time", kind="stable")
        info = model_info(mine.iloc[-1])
        same = mine.apply(lambda r, info=info: model_info(r) == info, axis=1)
        if not same.all():
            notes.append(f"{name}: {int((~same).sum())} run(s) with another spec or training config left out "
                         f"(kept {info.spec.describe()}, {train_text(info)})")
        mine = mine[same]
        # per seed: a finished run if there is one, else the latest attempt
        mine = mine.assign(_done=(mine["status"] == "FINISHED").astype(int)).sort_values(
            ["_done", "start_time"], kind="stable").drop_duplicates("seed", keep="last").drop(columns="_done")
        parts.append(mine.sort_values("seed"))
        infos[name] = info
    chosen = pd.concat(parts) if parts else latest.iloc[:0]
    chosen = chosen.assign(outcome=[outcome(s, a, f, infos[m].spec.n_classes) for s, a, f, m in
                                    zip(chosen["status"], chosen["accuracy"], chosen["failure"], chosen["model"])])
    kept = chosen[chosen["outcome"] == "ok"].drop(columns="outcome").reset_index(drop=True)
    outcomes = chosen[["model", "seed", "outcome", "accuracy", "failure", "failure_step", "test_correct"]
                      ].reset_index(drop=True)
    sel = Selection(kept, outcomes, infos, notes)
    for name in infos:
        n = int((kept["model"] == name).sum())
        if n == 0:
            notes.append(f"{name}: no finished runs")
        elif n < MIN_SEEDS:
            notes.append(f"{name}: only {n} finished seed{'s' * (n != 1)}; no verdict is possible below "
                         f"{MIN_SEEDS} seeds per model (see Method)")
    n_unfinished = int((outcomes["outcome"] == "unfinished").sum())
    if n_unfinished:
        notes.append(f"{n_unfinished} unfinished run(s) (killed or still running) left out")
    return sel


def train_text(info: ModelInfo) -> str:
    t = info.train_dict()
    return f"lr {t['lr']}, batch {t['batch_size']}, {t['iters']} iters, {t['dataset']}"


def seed_text(seeds: Sequence[int]) -> str:
    """``[0, 1, 2, 4]`` -> ``"0-2,4"``"""
    parts: list[list[int]] = []  # [first, last] of each run of consecutive seeds
    for s in sorted(seeds):
        if parts and s == parts[-1][1] + 1:
            parts[-1][1] = s
        else:
            parts.append([s, s])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


def failure_text(sel: Selection, model: str) -> str:
    """``"D*: 2 of 5 seeds diverged"``; empty when every seed trained."""
    fails = sel.failures(model)
    if not fails:
        return ""
    what = ", ".join(f"{n} {o}" for o, n in fails.items())
    return f"{model}: {what} of {sel.tried(model)} seeds" if len(fails) > 1 else \
        f"{model}: {next(iter(fails.values()))} of {sel.tried(model)} seeds {next(iter(fails))}"


def summarise(sel: Selection, confidence: float = 0.95) -> pd.DataFrame:
    """One row per model: spec, seeds, outcomes, accuracy statistics (percent), seconds, device."""
    rows = []
    for name, info in sel.models.items():
        mine = sel.kept[sel.kept["model"] == name]
        acc = mine["accuracy"].to_numpy(float)
        low, high = mean_ci(acc, confidence)
        oc = sel.outcomes[sel.outcomes["model"] == name]["outcome"]
        rows.append({
            "model": name, "spec": info.spec.describe(), "n_params": count_params(info.spec),
            "n_seeds": len(acc), "seeds": seed_text(mine["seed"].tolist()),
            **{f"n_{o}": int((oc == o).sum()) for o in (*FAILURES, "unfinished")},
            "mean": float(acc.mean()) if len(acc) else math.nan,
            "std": float(acc.std(ddof=1)) if len(acc) > 1 else math.nan,
            "ci_low": low, "ci_high": high,
            "min": float(acc.min()) if len(acc) else math.nan, "max": float(acc.max()) if len(acc) else math.nan,
            "train_seconds": float(mine["train_seconds"].mean()) if len(mine) else math.nan,
            "devices": "; ".join(sorted(d for d in mine["device_name"].unique() if d)),
            **info.train_dict(),
        })
    return pd.DataFrame(rows)


def typical_std(sel: Selection) -> float:
    """Root mean seed-to-seed variance over the models, points."""
    v = [np.var(g, ddof=1) for _, g in sel.kept.groupby("model")["accuracy"] if len(g) > 1]
    return float(np.sqrt(np.mean(v))) if v else math.nan
