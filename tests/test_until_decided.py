"""`ffnn compare --until-decided` end to end on the tiny dataset: rounds, the recorded design, resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ffnn import cli
from ffnn import until_decided as ud
from ffnn.config import CompareConfig
from ffnn.report.build import design_from_tag
from ffnn.report.sequential import Design
from ffnn.report.spending import t_critical, z_boundaries
from ffnn.tracking import TAG_SEQUENTIAL, Tracker


def _argv(tmp_path, uri: str, *extra: str) -> list[str]:
    return ["compare", "--dataset", "tiny", "--data-dir", str(tmp_path / "data"), "--tracking-uri", uri,
            "--experiment", "seq", "--models", "LR,C", "--workers", "1", "--iters", "10", "--eval-every", "5",
            "--lr", "0.01", "--batch-size", "20", "--until-decided", "--round", "2", "--max-seeds", "4", *extra]


def test_until_decided_trains_in_rounds_records_the_design_and_resumes(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert cli.main(_argv(tmp_path, uri)) == 0
    captured = capsys.readouterr()
    assert "look at 2 seeds: undecided: LR -> C" in captured.err  # 2 seeds never decide (MIN_SEEDS is 3)
    tracker = Tracker.open(uri)
    exp_id = tracker.experiment_id("seq", create=False)
    assert design_from_tag(tracker.experiment_tags(exp_id)[TAG_SEQUENTIAL]) == Design(0.05, 0.2, 2, 4)
    runs = tracker.search(exp_id, "tags.`ffnn.kind` = 'run' and attributes.status = 'FINISHED'")
    seeds = sorted((r.data.params["model"], int(r.data.params["seed"])) for r in runs)
    last = 4 if "look at 4 seeds" in captured.err else 2
    assert seeds == sorted((m, s) for m in ("LR", "C") for s in range(last))
    assert f"--until-decided: {2 * last} runs (LR {last}, C {last} seeds)" in captured.out
    assert "--until-decided: repeated confidence intervals" in captured.out  # the report used the same rule
    table = pd.read_csv(tmp_path / "reports" / "seq" / "comparisons.csv")
    assert table[["a", "b", "family", "rule"]].values.tolist() == [["LR", "C", "tutorial", "spending"]]
    # the spending boundary at the analysed number of seeds (m = 1), wider than the one-look 95% interval
    r = table.iloc[0]
    if not pd.isna(r["low"]):
        looks = Design(0.05, 0.2, 2, 4).looks_until(int(r["n_a"]))
        z = z_boundaries([k / 4 for k in looks], 0.05 if r["interval"] == "repeated" else 0.1)[-1]
        assert r["level"] == pytest.approx(1 - 2 * stats.norm.sf(z)) and r["level"] > 0.95
        half = float(t_critical(z, r["n_a"] - 1)) * r["sd"] / np.sqrt(r["n_a"])
        assert (r["low"], r["high"]) == pytest.approx((r["diff"] - half, r["diff"] + half))

    assert cli.main(_argv(tmp_path, uri, "--no-report")) == 0  # resumes: nothing left to train
    err = capsys.readouterr().err
    assert "training 0" in err and "training 2" not in err

    assert cli.main(_argv(tmp_path, uri, "--round", "1")) == 2  # the design cannot change mid-way
    assert "was run with --round 2 --max-seeds 4" in capsys.readouterr().err


def test_until_decided_bad_flags_are_one_line_errors(tiny, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert cli.main(_argv(tmp_path, uri, "--round", "9")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ffnn compare: error: --round: must be between 1 and --max-seeds (4), got 9"]


def test_only_the_models_of_undecided_comparisons_get_more_seeds(monkeypatch):
    """The loop itself, with training and the look replaced: which models each round trains, and when it stops."""
    asked = []

    def fake_round(cfg, seeds, ctx, progress):
        asked.append((cfg.models, seeds))
        return [ud.RunRow(m, s, "FINISHED", 90.0, 1.0) for m in cfg.models for s in range(seeds)], "1"

    open_at = {10: {("LR", "A"), ("D", "E")}, 20: {("D", "E")}, 30: set()}

    def fake_look(tracker, exp_id, cfg, design, seeds):
        steps = [("LR", "A"), ("A", "B"), ("C", "D"), ("D", "E")]
        return "tutorial", pd.DataFrame({"a": [a for a, _ in steps], "b": [b for _, b in steps],
                                         "verdict": ["undecided" if s in open_at[seeds] else "helped" for s in steps]})

    class Ctx:
        class tracker:
            experiment_id = staticmethod(lambda name: "1")
            experiment_tags = staticmethod(lambda exp_id: {})
            set_experiment_tags = staticmethod(lambda exp_id, tags: None)

    monkeypatch.setattr(ud, "_compare_round", fake_round)
    monkeypatch.setattr(ud, "decide_look", fake_look)
    cfg = CompareConfig(models=("LR", "A", "B", "C", "D", "E"))
    res = ud.until_decided(cfg, Design(), Ctx())
    assert asked == [(("LR", "A", "B", "C", "D", "E"), 10), (("LR", "A", "D", "E"), 20), (("D", "E"), 30)]
    assert res.decided and res.runs == 6 * 10 + 4 * 10 + 2 * 10
    assert res.seeds_per_model() == {"LR": 20, "A": 20, "B": 10, "C": 10, "D": 30, "E": 30}
