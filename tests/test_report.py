"""`ffnn report` against runs with known accuracies logged into a temporary MLflow store.

The verdicts are recomputed from the runs read back from MLflow with scipy and statsmodels.
"""

from __future__ import annotations

import ast
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from ffnn import cli, report
from ffnn.models import REGISTRY, ModelSpec, count_params
from ffnn.report import ModelInfo, ReportConfig, ReportError, build_report_config, make_report, plan
from ffnn.report.plots import band
from ffnn.report.stats import mean_ci
from ffnn.tracking import RUN_COLUMNS, TAG_FAILURE, TAG_FAILURE_STEP, TAG_KEY, TAG_KIND, Tracker

# Final test accuracies (percent) per model and seed: C is clearly above LR, D is C within noise.
ACC = {
    "LR": [91.7, 91.8, 91.9, 91.75, 91.85],
    "C": [95.6, 95.8, 95.7, 95.9, 95.75],
    "D": [95.7, 95.6, 95.9, 95.65, 95.85],
    "E": [96.0],  # one seed only
}
TRAIN = {"lr": 0.1, "batch_size": 100, "iters": 20, "eval_every": 10, "dataset": "tiny"}


TUNED = {"C*": (ModelSpec((300,), "relu"), 0.05), "D*": (ModelSpec((300, 300), "relu"), 0.03)}


def log_run(tracker: Tracker, exp_id: str, parent: str, model: str, seed: int, accuracy: float | None,
            status: str = "FINISHED", failure: str = "") -> str:
    """One child run as `ffnn compare` logs it; ``accuracy`` None logs no final metric."""
    spec, lr = TUNED.get(model, (REGISTRY.get(model), TRAIN["lr"]))
    params = {"model": model, "activation": spec.activation_name, "hidden_sizes": spec.hidden_str,
              **TRAIN, "lr": lr, "seed": seed, "device": "cpu", "n_params": count_params(spec)}
    run_id = tracker.start_run(exp_id, f"{model} seed={seed}", params,
                               {TAG_KIND: "run", TAG_KEY: f"{model}-{seed}", "ffnn.model": model,
                                "ffnn.spec": spec.describe(), "ffnn.device_name": "test cpu"}, parent_id=parent)
    if accuracy is not None:
        tracker.log_dataset(run_id, "tiny", "0" * 64, "/tiny", 600, 200)
        tracker.log_metrics(run_id, "test_accuracy", [(10, accuracy - 1.0), (20, accuracy)])
        tracker.log_metrics(run_id, "train_loss", [(s, 2.0 / s) for s in range(1, 21)])
        tracker.log_values(run_id, {"final_test_accuracy": accuracy, "train_seconds": 1.5}, step=20)
    if status != "RUNNING":
        tracker.end_run(run_id, status, {TAG_FAILURE: failure, TAG_FAILURE_STEP: "12"} if failure else None)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """``cmp``: the ACC runs, a duplicate, a failed and an unfinished run; ``empty``: none; ``failed``: one failed."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    tracker = Tracker.open(uri)
    exp_id = tracker.experiment_id("cmp")
    old_parent = tracker.start_run(exp_id, "compare old", {}, {TAG_KIND: "comparison"})
    log_run(tracker, exp_id, old_parent, "C", 0, 50.0)  # superseded by the later run of the same key
    tracker.end_run(old_parent)
    parent = tracker.start_run(exp_id, "compare", {}, {TAG_KIND: "comparison"})
    for model, accs in ACC.items():
        for seed, acc in enumerate(accs):
            log_run(tracker, exp_id, parent, model, seed, acc)
    log_run(tracker, exp_id, parent, "D", 7, None, "FAILED", "diverged: loss is nan at step 12")
    log_run(tracker, exp_id, parent, "E", 1, 9.8)  # collapsed: chance accuracy
    log_run(tracker, exp_id, parent, "C", 8, None, "RUNNING")
    tracker.end_run(parent)
    tuned = tracker.experiment_id("tuned")
    parent = tracker.start_run(tuned, "compare", {}, {TAG_KIND: "comparison"})
    for model, accs in {**{m: ACC[m] for m in ("LR", "C", "D")}, "C*": [97.0, 97.1, 97.2, 97.05, 97.15],
                        "D*": [97.8, 97.95, 98.0]}.items():
        for seed, acc in enumerate(accs):
            log_run(tracker, tuned, parent, model, seed, acc)
    for seed in (3, 4):
        log_run(tracker, tuned, parent, "D*", seed, None, "FAILED", "diverged: loss is inf")
    tracker.end_run(parent)
    tracker.experiment_id("empty")
    failed_exp = tracker.experiment_id("failed")
    log_run(tracker, failed_exp, tracker.start_run(failed_exp, "compare", {}, {TAG_KIND: "comparison"}),
            "C", 0, None, "FAILED")
    return uri


@pytest.fixture(scope="module")
def full(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return make_report(ReportConfig(experiments=("cmp",), out=out), store)


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def html_tables(page: str) -> list[list[list[str]]]:
    """Every table of the page as rows of cell texts (the standard library's parser)."""
    parser = _Tables()
    parser.feed(page)
    parser.close()
    return parser.tables


# ---------------------------------------------------------------- pure parts
def test_band_is_mean_ci_at_every_step():
    curves = pd.DataFrame({"step": [10, 10, 10, 20, 20, 30], "value": [1.0, 2.0, 4.0, 5.0, 5.5, 7.0]})
    b = band(curves).set_index("step")
    for step in (10, 20):
        values = curves.loc[curves["step"] == step, "value"]
        assert (b.loc[step, "low"], b.loc[step, "high"]) == pytest.approx(mean_ci(values))
        assert b.loc[step, "mean"] == pytest.approx(values.mean())
    assert math.isnan(b.loc[30, "low"]) and b.loc[30, "mean"] == 7.0


def _infos(**specs: ModelSpec) -> dict[str, ModelInfo]:
    return {n: ModelInfo(n, s, (0.1, 100, 3000, "mnist")) for n, s in specs.items()}


def test_plan_of_the_tutorial_models_is_the_chain_plus_lr_c_and_a_c():
    steps = plan(_infos(**REGISTRY))
    assert [(s.family, s.a, s.b) for s in steps] == [
        ("tutorial", "LR", "A"), ("tutorial", "A", "B"), ("tutorial", "B", "C"), ("tutorial", "C", "D"),
        ("tutorial", "D", "E"), ("tutorial", "LR", "C"), ("tutorial", "A", "C")]


def test_plan_puts_width_steps_recipes_and_tuned_steps_in_their_own_families():
    infos = _infos(C=REGISTRY["C"], D=REGISTRY["D"], W50=ModelSpec((50,), "relu"), W200=ModelSpec((200,), "relu"))
    infos["C*"] = ModelInfo("C*", ModelSpec((300,), "relu"), (0.05, 100, 3000, "mnist"))  # tuned lr
    infos["D*"] = ModelInfo("D*", ModelSpec((300, 50), "relu"), (0.02, 100, 3000, "mnist"))
    got = {(s.a, s.b): s.family for s in plan(infos)}
    assert got == {("C", "D"): "tutorial", ("W50", "C"): "specs", ("C", "W200"): "specs",
                   ("C", "C*"): "recipe", ("D", "D*"): "recipe", ("C*", "D*"): "tuned"}


def test_plan_skips_untuned_pairs_with_different_training():
    infos = _infos(C=REGISTRY["C"])
    infos["D"] = ModelInfo("D", REGISTRY["D"], (0.1, 100, 1000, "mnist"))
    assert plan(infos) == []


# ---------------------------------------------------------------- from the store
def test_summary_numbers_match_the_logged_accuracies(full):
    s = full.summary.set_index("model")
    assert list(s.index) == ["LR", "C", "D", "E"]
    for model, accs in ACC.items():
        assert s.loc[model, "n_seeds"] == len(accs)
        assert s.loc[model, "mean"] == pytest.approx(np.mean(accs))
        assert s.loc[model, "min"] == min(accs) and s.loc[model, "max"] == max(accs)
    assert s.loc["C", "std"] == pytest.approx(np.std(ACC["C"], ddof=1))
    lo, hi = stats.t.interval(0.95, 4, loc=np.mean(ACC["D"]), scale=stats.sem(ACC["D"]))
    assert (s.loc["D", "ci_low"], s.loc["D", "ci_high"]) == pytest.approx((lo, hi))
    assert s.loc["D", "spec"] == "784-100-100-10 relu" and s.loc["D", "n_params"] == count_params(REGISTRY["D"])
    assert s.loc["C", "train_seconds"] == pytest.approx(1.5) and s.loc["C", "devices"] == "test cpu"


def test_failures_are_outcomes_counted_per_model_not_averaged_in(full):
    s = full.summary.set_index("model")
    assert (s.loc["D", "n_diverged"], s.loc["D", "n_crashed"], s.loc["D", "n_unfinished"]) == (1, 0, 0)
    assert (s.loc["E", "n_collapsed"], s.loc["E", "n_seeds"], s.loc["E", "mean"]) == (1, 1, 96.0)
    assert s.loc["C", "n_unfinished"] == 1
    assert s.loc["C", "min"] > 90  # the superseded 50% run of C seed 0 is not used
    assert "1 duplicate run(s)" in " ".join(full.notes)
    c = full.comparisons.set_index(["a", "b"])
    assert c.loc[("C", "D"), "failures"] == "D: 1 of 6 seeds diverged"
    assert c.loc[("D", "E"), "failures"] == "D: 1 of 6 seeds diverged; E: 1 of 2 seeds collapsed"


def _runs_from_mlflow(uri: str, experiment: str) -> pd.DataFrame:
    """The FINISHED child runs, read back with MLflow's own search, as model, seed, accuracy."""
    tracker = Tracker.open(uri)
    frame = tracker.runs_frame([tracker.experiment_id(experiment, create=False)])
    frame = frame[(frame[RUN_COLUMNS["kind"]] == "run") & (frame["status"] == "FINISHED")]
    frame = frame.sort_values("start_time").drop_duplicates(RUN_COLUMNS["key"], keep="last")
    return pd.DataFrame({"model": frame[RUN_COLUMNS["model"]], "seed": frame[RUN_COLUMNS["seed"]].astype(int),
                         "accuracy": frame[RUN_COLUMNS["accuracy"]]})


def test_paired_p_tost_and_adjustment_recompute_from_mlflow_with_scipy_and_statsmodels(full, store):
    runs = _runs_from_mlflow(store, "cmp")
    runs = runs[runs["accuracy"] > 15]  # the collapsed run is an outcome, not an observation
    c = full.comparisons.set_index(["a", "b"])
    assert list(c.index) == [("C", "D"), ("D", "E"), ("LR", "C")] and set(c["family"]) == {"tutorial"}  # chain order
    p, q = [], []
    for a, b in [("C", "D"), ("LR", "C")]:
        x = runs[runs["model"] == a].set_index("seed")["accuracy"]
        y = runs[runs["model"] == b].set_index("seed")["accuracy"]
        shared = sorted(set(x.index) & set(y.index))
        x, y = x[shared].to_numpy(), y[shared].to_numpy()
        ref = stats.ttest_rel(y, x)
        assert c.loc[(a, b), "paired"] and c.loc[(a, b), "n_a"] == 5
        assert c.loc[(a, b), "p"] == pytest.approx(ref.pvalue)
        assert c.loc[(a, b), "p_tost"] == pytest.approx(ttost_paired(y, x, -0.2, 0.2)[0])
        assert c.loc[(a, b), "corr"] == pytest.approx(np.corrcoef(x, y)[0, 1])
        p.append(ref.pvalue)
        q.append(ttost_paired(y, x, -0.2, 0.2)[0])
    # Holm over the family's m = 3 steps; D -> E has no p (E has one seed): counted, never rejected
    assert c["p_adj"].dropna().to_numpy() == pytest.approx(multipletests(p + [1.0], method="holm")[1][:2])
    assert c["p_tost_adj"].dropna().to_numpy() == pytest.approx(multipletests(q + [1.0], method="holm")[1][:2])
    # LR -> C has the smallest p: Holm's first step, at 0.05 / 3, rejects; C -> D is tested at 0.05 / 2 and
    # is not; its TOST (first TOST step, 0.05 / 3) is not rejected either, and the wider interval is shown
    assert p[1] < 0.05 / 3 < 0.05 / 2 < p[0] and q[0] > 0.05 / 3
    for (a, b), level in [(("LR", "C"), 1 - 0.05 / 3), (("C", "D"), 1 - 0.05 / 2)]:
        x = runs[runs["model"] == a].sort_values("seed")["accuracy"].to_numpy()[:5]
        y = runs[runs["model"] == b].sort_values("seed")["accuracy"].to_numpy()[:5]
        ci = stats.ttest_rel(y, x).confidence_interval(level)
        assert c.loc[(a, b), "interval"] == "difference" and c.loc[(a, b), "level"] == pytest.approx(level)
        assert (c.loc[(a, b), "low"], c.loc[(a, b), "high"]) == pytest.approx((ci.low, ci.high))
    csv = pd.read_csv(full.out / "comparisons.csv")
    assert csv["p"].to_numpy() == pytest.approx(c["p"].to_numpy(float), nan_ok=True)
    assert csv["p_adj"].to_numpy() == pytest.approx(c["p_adj"].to_numpy(float), nan_ok=True)
    md = (full.out / "summary.md").read_text()
    assert "| Holm p |" in md and "Holm TOST p" in md and "S. Holm" in md


def test_verdicts_helped_undecided_with_seeds_and_reasons(full):
    c = full.comparisons.set_index(["a", "b"])
    v = c["verdict"]
    assert v[("LR", "C")] == "helped" and v[("C", "D")] == "undecided" and v[("D", "E")] == "undecided"
    assert c.loc[("C", "D"), "seeds_needed"] > 5 and pd.isna(c.loc[("LR", "C"), "seeds_needed"])
    cd, de, lrc = full.verdict_lines()
    assert lrc.startswith("LR -> C (add a relu hidden layer): +") and ", helped; paired n=5, r=" in lrc
    assert "undecided" in cd and "seeds to decide" in cd and "D: 1 of 6 seeds diverged" in cd
    assert "undecided: 2 shared seeds: no verdict below 3 seeds per model" in de  # E seed 1 collapsed: counted
    answers = full.answer_lines()
    diff = np.mean(ACC["C"]) - np.mean(ACC["LR"])
    assert answers[2].startswith(f"LR -> C (add a relu hidden layer): helped, {diff:+.2f} points (98.3% interval")


def test_equivalent_when_the_interval_lies_within_the_margin(store, tmp_path):
    rep = make_report(build_report_config(["cmp"], "C,D", str(tmp_path), "csv", margin=1.0), store)
    r = rep.comparisons.iloc[0]
    assert (r["a"], r["b"], r["verdict"]) == ("C", "D", "equivalent") and -1 < r["low"] < r["high"] < 1


def test_tuned_models_do_not_change_the_tutorial_verdicts_and_failures_are_named(store, tmp_path):
    untuned = make_report(build_report_config(["tuned"], "LR,C,D", str(tmp_path / "a"), "csv"), store)
    everything = make_report(build_report_config(["tuned"], None, str(tmp_path / "b"), "csv"), store)
    cols = ["a", "b", "low", "high", "verdict"]
    tutorial = everything.comparisons[everything.comparisons["family"] == "tutorial"]
    pd.testing.assert_frame_equal(tutorial[cols].reset_index(drop=True), untuned.comparisons[cols])
    c = everything.comparisons.set_index(["a", "b"])
    assert c.loc[("C", "C*"), "family"] == "recipe" and c.loc[("D", "D*"), "family"] == "recipe"
    # D* is better on the seeds that trained, but 2 of its 5 diverged: they score chance, so not "helped"
    assert c.loc[("C*", "D*"), "family"] == "tuned" and c.loc[("C*", "D*"), "verdict"] == "undecided"
    assert c.loc[("C*", "D*"), "fail_b"] == 2 and c.loc[("C*", "D*"), "n_a"] == 5
    line = next(x for x in everything.verdict_lines() if x.startswith("C* -> D*"))
    assert "undecided" in line and "; D*: 2 of 5 seeds diverged (Fisher p 0.44); " in line
    assert everything.summary.set_index("model").loc["D*", "n_diverged"] == 2


def test_every_export_exists_and_parses(full):
    names = {p.name for p in full.files}
    assert names == {"summary.csv", "comparisons.csv", "summary.md", "summary.tex", "summary.html",
                     "comparisons.png", "accuracy_curves.png", "train_loss.png", "final_accuracy.png"}
    summary = pd.read_csv(full.out / "summary.csv")
    pd.testing.assert_frame_equal(summary, full.summary, check_dtype=False, check_exact=False)
    comparisons = pd.read_csv(full.out / "comparisons.csv")
    assert comparisons[["a", "b", "verdict"]].values.tolist() == \
        full.comparisons[["a", "b", "verdict"]].values.tolist()
    assert comparisons["p"].to_numpy() == pytest.approx(full.comparisons["p"].to_numpy(float), nan_ok=True)
    assert {"pop_low", "pop_high", "pop_verdict", "p_fail", "seeds_low", "seeds_high"} <= set(comparisons.columns)
    md = (full.out / "summary.md").read_text()
    assert "(comparisons.png)" in md and "New-images verdict" in md
    assert md.splitlines()[2] == "## Answer"
    assert "- LR -> C (add a relu hidden layer): **helped**, +3.95" in md.split("## Models")[0]
    assert "| Model | Spec |" in md and "![" in md and "(accuracy_curves.png)" in md and "## Method" in md
    p = np.mean([a for accs in ACC.values() for a in accs]) / 100
    assert f"binomial standard error of one run's test accuracy is {100 * math.sqrt(p * (1 - p) / 200):.2f}" in md
    assert "(200 test images)" in md
    assert "ttest_rel" in md and "seed-to-seed standard deviation" in md
    tex = (full.out / "summary.tex").read_text()
    assert tex.count(r"\toprule") == 2 and r"\bottomrule" in tex and "LR $\\rightarrow$ C" in tex
    assert r"\includegraphics[width=\linewidth]{comparisons.png}" in tex
    page = (full.out / "summary.html").read_text()
    tables = html_tables(page)
    assert len(tables) == 2
    assert tables[0][0][:2] == ["Model", "Spec"] and [r[0] for r in tables[0][1:]] == ["LR", "C", "D", "E"]
    assert [r[1] for r in tables[1][1:]] == ["C -> D", "D -> E", "LR -> C"]
    assert "<b>helped</b>" in page
    assert page.count("data:image/png;base64,") == 4 and "src=\"http" not in page
    for name in ("comparisons.png", "accuracy_curves.png", "train_loss.png", "final_accuracy.png"):
        assert (full.out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_files_are_logged_on_the_latest_comparison_run(full, store):
    tracker = Tracker.open(store)
    latest = tracker.search(tracker.experiment_id("cmp", create=False), "run_name = 'compare'")[0]
    assert full.parent_run_id == latest.info.run_id
    logged = {a.path for a in tracker.client.list_artifacts(full.parent_run_id, "report")}
    assert logged == {f"report/{p.name}" for p in full.files}


def test_models_and_formats_select_what_is_written(store, tmp_path):
    rep = make_report(build_report_config(["cmp"], "C,D", str(tmp_path), "csv"), store)
    assert list(rep.summary["model"]) == ["C", "D"] and len(rep.comparisons) == 1
    assert sorted(p.name for p in rep.files) == ["comparisons.csv", "summary.csv"]


# ---------------------------------------------------------------- bad input
def test_unknown_experiment_lists_the_existing_ones(store):
    with pytest.raises(ReportError, match=r"no experiment 'nope'.*existing: .*cmp"):
        make_report(ReportConfig(experiments=("nope",)), store)


def test_experiment_without_runs_is_an_error(store, tmp_path):
    with pytest.raises(ReportError, match="has no model runs"):
        make_report(ReportConfig(experiments=("empty",), out=tmp_path), store)


def test_experiment_with_only_failed_runs_is_an_error(store, tmp_path):
    with pytest.raises(ReportError, match=r"no finished runs to report on \(1 failed, 0 collapsed, 0 unfinished\)"):
        make_report(ReportConfig(experiments=("failed",), out=tmp_path), store)


def test_unknown_model_and_format_are_errors(store, tmp_path):
    with pytest.raises(ReportError, match=r"--models: no runs of Z; models present: LR, C, D, E"):
        make_report(build_report_config(["cmp"], "C,Z", str(tmp_path)), store)
    with pytest.raises(ReportError, match="--formats: unknown format 'pdf'"):
        build_report_config(["cmp"], None, None, "csv,pdf")


def test_cli_report_prints_verdicts_and_exits_2_on_bad_input(store, tmp_path, capsys):
    assert cli.main(["report", "--tracking-uri", store, "--experiment", "cmp", "--out", str(tmp_path),
                     "--formats", "csv,md"]) == 0
    out = capsys.readouterr().out
    assert "LR -> C (add a relu hidden layer)" in out and "helped" in out and "summary.md" in out
    assert cli.main(["report", "--tracking-uri", store, "--experiment", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ffnn report: error: --experiment: no experiment 'nope'")


def test_report_package_does_not_import_mlflow():
    for path in Path(report.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "mlflow" not in imported, path


def test_compare_runs_the_report_at_the_end(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default --out is reports/<experiment>/ under the working directory
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert cli.main(["compare", "--dataset", "tiny", "--data-dir", str(tmp_path / "data"), "--tracking-uri", uri,
                     "--experiment", "t", "--models", "LR,C", "--seeds", "2", "--workers", "1",
                     "--iters", "20", "--eval-every", "10", "--batch-size", "20"]) == 0
    out = capsys.readouterr().out
    assert "LR -> C (add a relu hidden layer):" in out
    assert (tmp_path / "reports" / "t" / "summary.html").is_file()
    assert len(pd.read_csv(tmp_path / "reports" / "t" / "summary.csv")) == 2
