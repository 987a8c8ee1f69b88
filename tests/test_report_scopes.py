"""The report's five verdicts, its new-images scope, its failure test and its record of looks, on runs
logged into a temporary MLflow store the way `ffnn compare` logs them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_report import log_run

from ffnn.bits import pack_correct
from ffnn.report import ReportConfig, make_report
from ffnn.report.scope import new_images_se
from ffnn.tracking import TAG_LOOKS, TAG_TEST_CORRECT, Tracker

N_IMAGES = 200


def _bits(rng, accuracy_pts: float, hard: np.ndarray, shift: float) -> np.ndarray:
    """Per-image correctness with about ``accuracy_pts`` percent right; ``hard`` images right ``shift`` more often."""
    p = np.full(N_IMAGES, accuracy_pts / 100)
    p[hard] = np.clip(p[hard] - 0.4 + shift, 0, 1)
    return rng.random(N_IMAGES) < p


def _log(tracker, exp_id, parent, model, seed, correct=None, accuracy=None):
    run_id = log_run(tracker, exp_id, parent, model, seed, accuracy if accuracy is not None else
                     float(100 * correct.mean()), status="RUNNING")
    if correct is not None:
        tracker.set_tags(run_id, {TAG_TEST_CORRECT: pack_correct(correct)})
    tracker.end_run(run_id, "FINISHED")


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('scopes')}/mlflow.db"


def _experiment(uri, name, seeds, with_bits=True, delta=0.3):
    """LR, C and D over ``seeds`` seeds: C -> D is a real change of about ``delta`` points on hard images."""
    tracker = Tracker.open(uri)
    exp_id = tracker.experiment_id(name)
    parent = tracker.start_run(exp_id, "compare", {}, {"ffnn.kind": "comparison"})
    rng = np.random.default_rng(0)
    hard = rng.random(N_IMAGES) < 0.3
    for seed in seeds:
        for model, acc, shift in (("LR", 80.0, 0.0), ("C", 95.0, 0.0), ("D", 95.0, delta)):
            bits = _bits(rng, acc, hard, shift)
            _log(tracker, exp_id, parent, model, seed, bits if with_bits else None, float(100 * bits.mean()))
    tracker.end_run(parent)
    return tracker, exp_id


def test_new_images_interval_adds_the_test_sets_sampling_error(uri, tmp_path):
    tracker, exp_id = _experiment(uri, "bits", range(8))
    rep = make_report(ReportConfig(experiments=("bits",), out=tmp_path, formats=("csv",)), uri)
    c = rep.comparisons.set_index(["a", "b"]).loc[("C", "D")]
    assert c["pop_verdict"] != "unavailable" and c["pop_high"] - c["pop_low"] > c["high"] - c["low"]
    # recomputed from the tags MLflow gives back
    frame = tracker.runs_frame([exp_id])
    rows = {(r["params.model"], int(r["params.seed"])): r[f"tags.{TAG_TEST_CORRECT}"] for _, r in frame.iterrows()
            if r.get("tags.ffnn.kind") == "run"}
    from ffnn.bits import unpack_correct
    a = np.stack([unpack_correct(rows[("C", s)]) for s in range(8)])
    b = np.stack([unpack_correct(rows[("D", s)]) for s in range(8)])
    assert c["pop_se"] == pytest.approx(new_images_se(a, b).se)
    assert c["diff"] == pytest.approx(100 * (b.mean() - a.mean()))


def test_a_store_without_per_image_records_reports_with_that_scope_unavailable(uri, tmp_path):
    _experiment(uri, "old", range(5), with_bits=False)
    rep = make_report(ReportConfig(experiments=("old",), out=tmp_path, formats=("csv", "md")), uri)
    assert (rep.comparisons["pop_verdict"] == "unavailable").all()
    assert any("new-images scope unavailable" in n for n in rep.notes)
    assert "new images: unavailable" in rep.verdict_lines()[0]


def test_each_report_records_its_look_and_a_grown_experiment_switches_to_the_sequential_rule(uri, tmp_path):
    tracker, exp_id = _experiment(uri, "grow", range(5))
    first = make_report(ReportConfig(experiments=("grow",), out=tmp_path / "1", formats=("csv",)), uri)
    assert set(first.comparisons["rule"]) == {"holm"} and not first.grown
    looks = json.loads(tracker.experiment_tags(exp_id)[TAG_LOOKS])
    assert looks == [{"seeds": {"C": 5, "D": 5, "LR": 5}, "alpha": 0.05, "margin": 0.2}]
    make_report(ReportConfig(experiments=("grow",), out=tmp_path / "2", formats=("csv",)), uri)
    assert len(json.loads(tracker.experiment_tags(exp_id)[TAG_LOOKS])) == 1  # the same look again: not a new one
    parent = tracker.start_run(exp_id, "compare", {}, {"ffnn.kind": "comparison"})
    rng = np.random.default_rng(1)
    hard = rng.random(N_IMAGES) < 0.3
    for seed in range(5, 12):
        for model, acc, shift in (("LR", 80.0, 0.0), ("C", 95.0, 0.0), ("D", 95.0, 0.3)):
            _log(tracker, exp_id, parent, model, seed, _bits(rng, acc, hard, shift))
    tracker.end_run(parent)
    grown = make_report(ReportConfig(experiments=("grow",), out=tmp_path / "3", formats=("csv",)), uri)
    assert grown.grown == {"tutorial": 5} and set(grown.comparisons["rule"]) == {"anytime"}
    assert set(grown.comparisons["interval"]) == {"sequence"}
    assert any("fixed-sample guarantee no longer holds" in n for n in grown.notes)
    assert len(json.loads(tracker.experiment_tags(exp_id)[TAG_LOOKS])) == 2


def test_one_seed_per_model_says_no_verdict_is_possible(uri, tmp_path):
    _experiment(uri, "single", range(1))
    rep = make_report(ReportConfig(experiments=("single",), out=tmp_path, formats=("csv",)), uri)
    assert (rep.comparisons["verdict"] == "undecided").all()
    assert rep.comparisons["reason"].str.contains("no verdict below 3 seeds").all()
    assert any("no verdict is possible below 3 seeds per model" in n for n in rep.notes)


def test_a_real_difference_inside_the_margin_is_negligible_not_helped(uri, tmp_path):
    tracker = Tracker.open(uri)
    exp_id = tracker.experiment_id("small")
    parent = tracker.start_run(exp_id, "compare", {}, {"ffnn.kind": "comparison"})
    rng = np.random.default_rng(2)
    for seed in range(30):
        base = 95 + rng.normal(0, 0.15)
        log_run(tracker, exp_id, parent, "C", seed, round(base, 2))
        log_run(tracker, exp_id, parent, "D", seed, round(base + 0.1 + rng.normal(0, 0.05), 2))
    tracker.end_run(parent)
    rep = make_report(ReportConfig(experiments=("small",), out=tmp_path, formats=("csv",)), uri)
    r = rep.comparisons.iloc[0]
    assert r["verdict"] == "negligible" and r["low"] > 0 and r["high"] < 0.2 and r["interval"] == "equivalence"
    assert "negligible: +0.1" in rep.answer_lines()[0] and "real but inside +-0.2" in rep.answer_lines()[0]


def test_a_side_that_fails_more_often_is_never_the_one_that_helped(uri, tmp_path):
    """D trains to 95 % on 12 of 30 seeds and crashes on 18; C always ends near 20 %. Scored at chance, D's
    failures still leave it ahead on average (the t-test alone says helped), but it fails far more often."""
    tracker = Tracker.open(uri)
    exp_id = tracker.experiment_id("fails")
    parent = tracker.start_run(exp_id, "compare", {}, {"ffnn.kind": "comparison"})
    rng = np.random.default_rng(3)
    for seed in range(30):
        log_run(tracker, exp_id, parent, "C", seed, round(20 + rng.normal(0, 0.5), 2))
        if seed < 18:
            log_run(tracker, exp_id, parent, "D", seed, None, "FAILED", "training failed: out of memory")
        else:
            log_run(tracker, exp_id, parent, "D", seed, round(95 + rng.normal(0, 0.2), 2))
    tracker.end_run(parent)
    rep = make_report(ReportConfig(experiments=("fails",), out=tmp_path, formats=("csv",)), uri)
    r = rep.comparisons.iloc[0]
    assert r["p_adj"] < 0.05 and r["low"] > 0  # the scores alone would read "helped"
    assert (r["fail_a"], r["fail_b"]) == (0, 18) and r["p_fail"] < 1e-6
    assert r["verdict"] == "undecided" and r["reason"].startswith("D fails more often (18 of 30 seeds, Fisher p")
    assert r["mean_b"] == pytest.approx((18 * 10 + sum(rep.summary.set_index("model").loc["D", ["mean"]]) * 12) / 30)
