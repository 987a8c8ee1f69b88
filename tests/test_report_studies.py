"""Tuned verdicts that account for the search: replicate studies, convergence and equal budgets.

Runs are logged into a temporary MLflow store as `ffnn tune --final` logs them, each tuned run with its
study's budget written by the tune side's own ``StudySummary.budget``; the study-level verdicts are
recomputed with scipy from the runs' accuracies.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ffnn.config import build_tune_config, read_toml
from ffnn.models import ModelSpec, count_params, tuned_name
from ffnn.report import ReportConfig, make_report, plan
from ffnn.report.runs import ModelInfo
from ffnn.report.studies import Budget, budget_text, convergence, more_studies_minutes, tuned_groups
from ffnn.tracking import TAG_KEY, TAG_KIND, TAG_TUNED_BY, Tracker
from ffnn.tune import StudySummary

CFG = replace(build_tune_config(read_toml(Path(__file__).parents[1] / "experiments" / "tune.toml"), {}),
              n_trials=6, train=replace(build_tune_config(read_toml(
                  Path(__file__).parents[1] / "experiments" / "tune.toml"), {}).train, iters=20))
TRAIN = {"batch_size": 100, "iters": 20, "eval_every": 10, "dataset": "tiny"}
# per study: (spec, lr, accuracies of seeds 0-2); C's searches find 1.5 points apart, D's agree and beat them
STUDIES = {
    "C": [(ModelSpec((900,), "relu"), 0.6, [97.9, 98.0, 98.1]), (ModelSpec((200,), "relu"), 0.1, [96.4, 96.5, 96.6]),
          (ModelSpec((500,), "relu"), 0.3, [97.2, 97.3, 97.1])],
    "D": [(ModelSpec((70, 1000), "relu"), 0.07, [98.3, 98.45, 98.55]),
          (ModelSpec((600, 300), "relu"), 0.2, [98.6, 98.5, 98.7]),
          (ModelSpec((400, 400), "relu"), 0.4, [98.4, 98.6, 98.5])],
}


def summary_of(family: str, k: int, trials: int = 6, best_at: int = 3, top=(97.5, 97.45, 97.4, 97.4, 97.35)
               ) -> StudySummary:
    """A study as tune summarises it: ``trials`` finished (one pruned), the best at place ``best_at``."""
    s = StudySummary(family, CFG.name_of(family, k), {"COMPLETE": trials - 1, "PRUNED": 1}, trials, 60.0 * trials,
                     best_number=best_at - 1, index=k, search_seconds=60.0 * trials, best_at=best_at, top=list(top))
    return s


def log_tuned(tracker: Tracker, exp_id: str, parent: str, family: str, k: int, spec: ModelSpec, lr: float,
              accs: list[float], study: StudySummary | None) -> None:
    name = tuned_name(family, k)
    for seed, acc in enumerate(accs):
        params = {"model": name, "activation": spec.activation_name, "hidden_sizes": spec.hidden_str, **TRAIN,
                  "lr": lr, "seed": seed, "device": "cpu", "n_params": count_params(spec)}
        tags = {TAG_KIND: "run", TAG_KEY: f"{name}-{seed}", "ffnn.model": name, "ffnn.spec": spec.describe()}
        if study is not None:
            tags[TAG_TUNED_BY] = json.dumps(study.budget(CFG))
        run_id = tracker.start_run(exp_id, f"{name} seed={seed}", params, tags, parent_id=parent)
        tracker.log_values(run_id, {"final_test_accuracy": acc, "train_seconds": 2.0}, step=20)
        tracker.end_run(run_id)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """``three``: three studies per architecture, C*s2's best trial in its last fifth; ``one``: study 1 only;
    ``unequal``: one study each, C*'s of 12 trials."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    tracker = Tracker.open(uri)
    for name, ks in (("three", (1, 2, 3)), ("one", (1,)), ("unequal", (1,))):
        exp_id = tracker.experiment_id(name)
        parent = tracker.start_run(exp_id, "compare", {}, {TAG_KIND: "comparison"})
        for family, found in STUDIES.items():
            for k in ks:
                spec, lr, accs = found[k - 1]
                late = name == "three" and (family, k) == ("C", 2)
                study = summary_of(family, k, trials=12 if name == "unequal" and family == "C" else 6,
                                   best_at=6 if late else 3)
                log_tuned(tracker, exp_id, parent, family, k, spec, lr, accs, study)
        tracker.end_run(parent)
    return uri


def report(store, experiment, tmp_path):
    return make_report(ReportConfig(experiments=(experiment,), out=tmp_path / experiment, formats=("csv", "md")),
                       store)


def test_three_studies_give_a_verdict_over_studies_with_its_interval_in_comparisons_csv(store, tmp_path):
    rep = report(store, "three", tmp_path)
    rows = pd.read_csv(tmp_path / "three" / "comparisons.csv")
    row = rows[(rows["a"] == "C*") & (rows["b"] == "D*")].iloc[0]
    assert row["family"] == "tuned" and row["reading"] == "architecture" and row["n_studies"] == 3
    assert (row["n_a"], row["n_b"], row["paired"]) == (3, 3, False)
    means = {f: [np.mean(accs) for _, _, accs in found] for f, found in STUDIES.items()}
    ref = stats.ttest_ind(means["D"], means["C"], equal_var=False)
    assert row["p"] == pytest.approx(ref.pvalue) and row["diff"] == pytest.approx(np.mean(means["D"]) -
                                                                                   np.mean(means["C"]))
    half = stats.t.isf(0.025, ref.df) * (row["diff"] / ref.statistic)  # one comparison: Holm tests it at alpha
    assert (row["study_low"], row["study_high"]) == pytest.approx((row["diff"] - half, row["diff"] + half))
    assert (row["low"], row["high"]) == (row["study_low"], row["study_high"])
    # the seeds alone (1.6 points apart, sd 0.1) would call it helped; three searches of C disagree by 1.5
    assert row["verdict"] == "undecided" and row["seeds_needed"] >= 3
    assert bool(row["equal_budget"]) and row["budget"] == "equal budgets: 6 trials of 20 steps per study"
    assert row["unconverged"] == "C*s2: best trial 6 of 6"
    line = next(x for x in rep.answer_lines() if x.startswith("C* -> D*"))
    assert "over 3 independent searches" in line and "studies per architecture would decide it" in line
    assert "The searches: equal budgets" in line and "May not have converged: C*s2: best trial 6 of 6." in line
    assert "3 vs 3 studies" in line and "found" not in line.split(".")[0]


def test_summary_csv_has_each_studys_budget_and_convergence_flag(store, tmp_path):
    report(store, "three", tmp_path)
    s = pd.read_csv(tmp_path / "three" / "summary.csv").set_index("model")
    assert list(s.index) == ["C*", "C*s2", "C*s3", "D*", "D*s2", "D*s3"]
    assert s.loc["C*s2", "study"] == 2 and (s["n_studies"] == 3).all() and s.loc["C*s2", "study_name"] == "tune-C-s2"
    assert (s["trials"] == 6).all() and (s["pruned"] == 1).all() and (s["search_seconds"] == 360).all()
    assert s.loc["C*s2", "best_at"] == 6 and not s.loc["C*s2", "converged"]
    assert s.loc["C*s2", "convergence"] == "best trial 6 of 6"
    assert s.drop(index="C*s2")["converged"].all() and s.loc["C*", "top_spread"] == pytest.approx(0.15)
    md = (tmp_path / "three" / "summary.md").read_text()
    assert "maybe not: best trial 6 of 6" in md and "6 trials (1 pruned), 6.0 min, best 3 of 6" in md
    assert "Montgomery" in md and "Bouthillier" in md


def test_one_study_compares_the_found_configurations_not_depth(store, tmp_path):
    rep = report(store, "one", tmp_path)
    row = rep.comparisons.set_index(["a", "b"]).loc[("C*", "D*")]
    assert row["reading"] == "configurations" and row["n_studies"] == 1 and row["paired"]
    assert row["verdict"] == "helped"  # seeds of these two configurations: a fact about them
    line = next(x for x in rep.verdict_lines() if x.startswith("C* -> D*"))
    assert "(add a layer, each tuned: the configurations one search found, not depth)" in line
    assert line.endswith("; a claim about depth needs `ffnn tune --studies 3` or more, about 24 min "
                         "more at the measured rate")
    answer = next(x for x in rep.answer_lines() if x.startswith("C* -> D*"))
    assert "as one search each found them (equal budgets: 6 trials of 20 steps per study), not depth: " in answer
    # two more studies of each, at what this one cost: 6 min of search and 3 x 2 s of retraining
    assert row["more_studies_minutes"] == pytest.approx(2 * 2 * (6 + 6 / 60))
    assert "`ffnn tune --studies 3` or more, about 24 min more at the measured rate" in answer


def test_unequal_budgets_are_named_in_the_comparison(store, tmp_path):
    rep = report(store, "unequal", tmp_path)
    row = rep.comparisons.set_index(["a", "b"]).loc[("C*", "D*")]
    assert not row["equal_budget"] and row["budget"] == "unequal budgets: C* 12 trials, D* 6 trials"
    answer = next(x for x in rep.answer_lines() if x.startswith("C* -> D*"))
    assert "not at equal search effort" in answer


def test_convergence_flags_a_late_best_and_a_wide_top_five():
    b = Budget("s", 1, 10, 10, 0, 0, 60.0, 3, 4, (97.0, 96.95, 96.9, 96.9, 96.85), 1, 3000)
    assert convergence(b, 0.2) == ""
    assert convergence(replace(b, best_at=8), 0.2) == ""  # the last fifth of 10 trials is 9 and 10
    assert convergence(replace(b, best_at=9), 0.2) == "best trial 9 of 10"
    assert convergence(replace(b, top=(97.0, 96.9, 96.8, 96.7, 96.5)), 0.2) == "top 5 spread 0.50 pts > 0.2"
    assert convergence(replace(b, top=(97.0, 96.9, 96.8, 96.7, 96.5)), 1.0) == ""
    assert convergence(replace(b, top=(97.0, 96.9)), 0.2).startswith("2 complete trials, fewer than the 5")
    assert convergence(replace(b, best_at=None, top=()), 0.2) == "no complete trial"


def test_equal_budget_means_the_same_trials_seeds_and_steps():
    b = Budget("s", 1, 6, 5, 1, 0, 60.0, 2, 3, (97.0,) * 5, 1, 1000)
    same = {"C*": b, "C*s2": replace(b, index=2, seconds=99.0), "D*": replace(b, study="t")}
    assert budget_text("C*", "D*", ["C*", "C*s2"], ["D*"], same) == \
        (True, "equal budgets: 6 trials of 1000 steps per study")
    assert budget_text("C*", "D*", ["C*"], ["D*"], {**same, "D*": replace(b, trial_seeds=3)}) == \
        (False, "unequal budgets: C* 6 trials (1 seed(s) x 1000 steps), D* 6 trials (3 seed(s) x 1000 steps)")
    assert budget_text("C*", "D*", ["C*"], ["D*"], {"C*": b})[0] is None
    resumed = {**same, "C*": replace(b, trials=12), "D*s2": replace(b, trials=12)}  # study 1 ran again
    assert budget_text("C*", "D*", ["C*", "C*s2"], ["D*", "D*s2"], resumed) == \
        (True, "equal budgets on both sides: studies of 6/12 trials of 1000 steps")
    assert budget_text("C*", "D*", ["C*", "C*s2"], ["D*", "D*s2"], {**resumed, "D*s2": b})[0] is False
    assert more_studies_minutes(["C*", "D*"], same, {"C*": 60.0, "D*": 60.0}) == pytest.approx(2 * 2 * 2.0)
    assert more_studies_minutes(["C*", "C*s2", "C*s3"], same, {}) == 0


def test_plan_groups_replicate_studies_into_one_tuned_step():
    def info(name):
        return ModelInfo(name, ModelSpec((10,) * (1 + (name[0] == "D")), "relu"), (0.1, 100, 20, "x"))
    names = ["C*", "C*s2", "C*s3", "D*", "D*s2"]
    assert tuned_groups(["C*s3", "D*", "C", "C*", "C*s2"]) == {"C": ["C*", "C*s2", "C*s3"], "D": ["D*"]}
    [step] = plan({n: info(n) for n in names})
    assert (step.a, step.b, step.a_units, step.b_units) == ("C*", "D*", ("C*", "C*s2", "C*s3"), ("D*", "D*s2"))
    assert step.over_studies and step.change == "add a layer, each tuned, over 3 and 2 independent searches"
    [one] = plan({n: info(n) for n in ["C*", "C*s2", "D*"]})
    assert not one.over_studies and "the configurations one search found" in one.change
    # a replicate study's model is never an untuned spec of the specs family
    assert [s.family for s in plan({n: info(n) for n in ["C", "C*", "C*s2", "D*", "D*s2"]})] == ["recipe", "tuned"]
