"""`ffnn report` against runs with known accuracies logged into a temporary MLflow store.

The statistics are checked against scipy computed here, the Holm correction by hand.
"""

from __future__ import annotations

import ast
import math
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ffnn import cli, report
from ffnn.models import REGISTRY, ModelSpec, count_params
from ffnn.report import (ModelInfo, ReportConfig, ReportError, band, build_report_config, hedges_g, holm,
                         make_report, mean_ci, plan_comparisons, seeds_needed, t_test_power, verdict, welch)
from ffnn.tracking import TAG_KEY, TAG_KIND, Tracker

# Final test accuracies (percent) per model and seed: C is clearly above LR, D is C within noise.
ACC = {
    "LR": [91.7, 91.8, 91.9, 91.75, 91.85],
    "C": [95.6, 95.8, 95.7, 95.9, 95.75],
    "D": [95.7, 95.6, 95.9, 95.65, 95.85],
    "E": [96.0],  # one seed only
}
TRAIN = {"lr": 0.1, "batch_size": 100, "iters": 20, "eval_every": 10, "dataset": "tiny"}


def log_run(tracker: Tracker, exp_id: str, parent: str, model: str, seed: int, accuracy: float | None,
            status: str = "FINISHED") -> str:
    """One child run as `ffnn compare` logs it; ``accuracy`` None logs no final metric."""
    spec = REGISTRY[model]
    params = {"model": model, "activation": spec.activation_name, "hidden_sizes": spec.hidden_str, **TRAIN,
              "seed": seed, "device": "cpu", "n_params": count_params(spec)}
    run_id = tracker.start_run(exp_id, f"{model} seed={seed}", params,
                               {TAG_KIND: "run", TAG_KEY: f"{model}-{seed}", "ffnn.model": model,
                                "ffnn.spec": spec.describe(), "ffnn.device_name": "test cpu"}, parent_id=parent)
    if accuracy is not None:
        tracker.log_metrics(run_id, "test_accuracy", [(10, accuracy - 1.0), (20, accuracy)])
        tracker.log_metrics(run_id, "train_loss", [(s, 2.0 / s) for s in range(1, 21)])
        tracker.log_values(run_id, {"final_test_accuracy": accuracy, "train_seconds": 1.5}, step=20)
    if status != "RUNNING":
        tracker.end_run(run_id, status)
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
    log_run(tracker, exp_id, parent, "D", 7, None, "FAILED")
    log_run(tracker, exp_id, parent, "C", 8, None, "RUNNING")
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


# ---------------------------------------------------------------- pure statistics
def test_holm_matches_a_hand_computed_case():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001, 0.02, 0.9]).tolist() == pytest.approx([1.0, 0.004, 0.06, 1.0])


def test_holm_leaves_nan_out_of_the_family():
    out = holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_mean_ci_matches_scipy_t_interval():
    x = [91.7, 91.8, 91.9, 91.75]
    assert mean_ci(x) == pytest.approx(stats.t.interval(0.95, 3, loc=np.mean(x), scale=stats.sem(x)))
    assert all(math.isnan(v) for v in mean_ci([1.0]))


def test_welch_matches_scipy_and_hedges_g_by_formula():
    a, b = ACC["LR"], ACC["C"]
    res = stats.ttest_ind(b, a, equal_var=False)
    d = welch(a, b)
    assert d.diff == pytest.approx(np.mean(b) - np.mean(a))
    assert d.p == pytest.approx(res.pvalue)
    assert (d.ci_low, d.ci_high) == pytest.approx(tuple(res.confidence_interval(0.95)))
    pooled = math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)  # equal n
    assert hedges_g(a, b) == pytest.approx((np.mean(b) - np.mean(a)) / pooled * (1 - 3 / (4 * 10 - 9)))


def test_band_is_mean_ci_at_every_step():
    curves = pd.DataFrame({"step": [10, 10, 10, 20, 20, 30], "value": [1.0, 2.0, 4.0, 5.0, 5.5, 7.0]})
    b = band(curves).set_index("step")
    for step in (10, 20):
        values = curves.loc[curves["step"] == step, "value"]
        assert (b.loc[step, "low"], b.loc[step, "high"]) == pytest.approx(mean_ci(values))
        assert b.loc[step, "mean"] == pytest.approx(values.mean())
    assert math.isnan(b.loc[30, "low"]) and b.loc[30, "mean"] == 7.0


def test_seeds_needed_matches_cohens_table():
    assert round(t_test_power(0.5, 64), 3) == 0.801
    assert seeds_needed(0.5, 1.0) == 64  # d = 0.5, alpha 0.05 two-sided, 80% power
    assert seeds_needed(0.8, 1.0) == 26
    assert seeds_needed(0.2, 0.0) == 2 and seeds_needed(0.2, math.nan) is None


def test_verdict_by_corrected_p_and_sign():
    assert [verdict(0.6, 0.002), verdict(-0.6, 0.002), verdict(0.6, 0.2), verdict(0.6, math.nan)] == \
        ["helped", "hurt", "no evidence", "undecidable"]


def _infos(**specs: ModelSpec) -> dict[str, ModelInfo]:
    return {n: ModelInfo(n, s, (0.1, 100, 3000, "mnist")) for n, s in specs.items()}


def test_plan_comparisons_of_the_tutorial_models():
    steps = plan_comparisons(_infos(**REGISTRY))
    assert [(s.a, s.b, s.kind) for s in steps] == [
        ("LR", "C", "nonlinearity"), ("A", "B", "activation"), ("A", "C", "activation"),
        ("B", "C", "activation"), ("C", "D", "depth"), ("D", "E", "depth")]


def test_plan_comparisons_adds_width_pairs_and_tuned_models():
    infos = _infos(C=REGISTRY["C"], W50=ModelSpec((50,), "relu"), W200=ModelSpec((200,), "relu"))
    infos["C*"] = ModelInfo("C*", ModelSpec((300,), "relu"), (0.05, 100, 3000, "mnist"))  # tuned lr
    pairs = {(s.a, s.b): s.kind for s in plan_comparisons(infos)}
    assert pairs == {("W50", "C"): "width", ("C", "W200"): "width", ("C", "C*"): "tuned"}


def test_plan_comparisons_skips_pairs_with_different_training():
    infos = _infos(C=REGISTRY["C"])
    infos["D"] = ModelInfo("D", REGISTRY["D"], (0.1, 100, 1000, "mnist"))
    assert plan_comparisons(infos) == []


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


def test_failed_unfinished_and_duplicate_runs_are_excluded_and_counted(full):
    s = full.summary.set_index("model")
    assert (s.loc["D", "n_failed"], s.loc["D", "n_unfinished"]) == (1, 0)
    assert (s.loc["C", "n_failed"], s.loc["C", "n_unfinished"]) == (0, 1)
    assert s.loc["C", "min"] > 90  # the superseded 50% run of C seed 0 is not used
    notes = " ".join(full.notes)
    assert "1 duplicate run(s)" in notes and "1 failed or killed, 1 unfinished" in notes


def test_comparisons_p_values_and_holm_match_scipy(full):
    c = full.comparisons.set_index(["a", "b"])
    assert list(c.index) == [("LR", "C"), ("C", "D"), ("D", "E")]
    p = {}
    for a, b in [("LR", "C"), ("C", "D")]:
        res = stats.ttest_ind(ACC[b], ACC[a], equal_var=False)
        p[a, b] = res.pvalue
        assert c.loc[(a, b), "p"] == pytest.approx(res.pvalue)
        ci = res.confidence_interval(0.95)
        assert (c.loc[(a, b), "ci_low"], c.loc[(a, b), "ci_high"]) == pytest.approx((ci.low, ci.high))
    # two decidable comparisons: the smaller p doubles, the larger stays (if still above)
    small, large = sorted(p.values())
    assert sorted(c["p_holm"].dropna()) == pytest.approx([2 * small, max(2 * small, large)])


def test_verdicts_helped_no_evidence_and_undecidable(full):
    v = full.comparisons.set_index(["a", "b"])["verdict"]
    assert v[("LR", "C")] == "helped"
    assert v[("C", "D")] == "no evidence"
    assert v[("D", "E")] == "undecidable"
    lines = full.verdict_lines()
    assert lines[0].startswith("LR -> C (add a hidden ReLU layer): +") and lines[0].endswith("helped (p<0.001)")
    assert "undecidable: E has 1 seed (need >= 2)" in lines[2] and "seeds per model to detect 0.2 pts" in lines[2]
    assert "E: only 1 finished seed" in " ".join(full.notes)


def test_every_export_exists_and_parses(full):
    names = {p.name for p in full.files}
    assert names == {"summary.csv", "comparisons.csv", "summary.md", "summary.tex", "summary.html",
                     "accuracy_curves.png", "train_loss.png", "final_accuracy.png"}
    summary = pd.read_csv(full.out / "summary.csv")
    pd.testing.assert_frame_equal(summary, full.summary, check_dtype=False, check_exact=False)
    comparisons = pd.read_csv(full.out / "comparisons.csv")
    assert comparisons[["a", "b", "verdict"]].values.tolist() == \
        full.comparisons[["a", "b", "verdict"]].values.tolist()
    assert comparisons["p"].to_numpy() == pytest.approx(full.comparisons["p"].to_numpy(float), nan_ok=True)
    md = (full.out / "summary.md").read_text()
    assert "| Model | Spec |" in md and "![" in md and "(accuracy_curves.png)" in md and "**helped**" in md
    tex = (full.out / "summary.tex").read_text()
    assert tex.count(r"\toprule") == 2 and r"\bottomrule" in tex and "LR $\\rightarrow$ C" in tex
    page = (full.out / "summary.html").read_text()
    tables = html_tables(page)
    assert len(tables) == 2
    assert tables[0][0][:2] == ["Model", "Spec"] and [r[0] for r in tables[0][1:]] == ["LR", "C", "D", "E"]
    assert [r[0] for r in tables[1][1:]] == ["LR -> C", "C -> D", "D -> E"]
    assert page.count("data:image/png;base64,") == 3 and "src=\"http" not in page
    for name in ("accuracy_curves.png", "train_loss.png", "final_accuracy.png"):
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
    with pytest.raises(ReportError, match=r"no finished runs to report on \(1 failed, 0 unfinished\)"):
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
    assert "LR -> C (add a hidden ReLU layer)" in out and "helped" in out and "summary.md" in out
    assert cli.main(["report", "--tracking-uri", store, "--experiment", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ffnn report: error: --experiment: no experiment 'nope'")


def test_report_module_does_not_import_mlflow():
    tree = ast.parse(open(report.__file__).read())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "mlflow" not in imported


def test_compare_runs_the_report_at_the_end(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default --out is reports/<experiment>/ under the working directory
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert cli.main(["compare", "--dataset", "tiny", "--data-dir", str(tmp_path / "data"), "--tracking-uri", uri,
                     "--experiment", "t", "--models", "LR,C", "--seeds", "2", "--workers", "1",
                     "--iters", "20", "--eval-every", "10", "--batch-size", "20"]) == 0
    out = capsys.readouterr().out
    assert "LR -> C (add a hidden ReLU layer):" in out
    assert (tmp_path / "reports" / "t" / "summary.html").is_file()
    assert len(pd.read_csv(tmp_path / "reports" / "t" / "summary.csv")) == 2
