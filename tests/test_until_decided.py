"""`ffnn compare --until-decided` end to end on the tiny dataset: rounds, the recorded design, resume."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy import stats

from ffnn import cli
from ffnn.report.build import design_from_tag
from ffnn.report.sequential import Design
from ffnn.tracking import TAG_SEQUENTIAL, Tracker


def _argv(tmp_path, uri: str, *extra: str) -> list[str]:
    return ["compare", "--dataset", "tiny", "--data-dir", str(tmp_path / "data"), "--tracking-uri", uri,
            "--experiment", "seq", "--models", "LR,C", "--workers", "1", "--iters", "10", "--eval-every", "5", "--lr", "0.01",
            "--batch-size", "20", "--until-decided", "--round", "2", "--max-seeds", "4", *extra]


def test_until_decided_trains_in_rounds_records_the_design_and_resumes(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert cli.main(_argv(tmp_path, uri)) == 0
    captured = capsys.readouterr()
    assert "look at 2 seeds: undecided: LR -> C" in captured.err  # 2 seeds never decide under O'Brien-Fleming
    tracker = Tracker.open(uri)
    exp_id = tracker.experiment_id("seq", create=False)
    assert design_from_tag(tracker.experiment_tags(exp_id)[TAG_SEQUENTIAL]) == Design(0.05, 0.2, 2, 4)
    runs = tracker.search(exp_id, "tags.`ffnn.kind` = 'run' and attributes.status = 'FINISHED'")
    seeds = sorted((r.data.params["model"], int(r.data.params["seed"])) for r in runs)
    last = 4 if "look at 4 seeds" in captured.err else 2
    assert seeds == sorted((m, s) for m in ("LR", "C") for s in range(last))
    assert f"--until-decided: {last} seeds per model" in captured.out
    assert "sequential, repeated confidence intervals" in captured.out  # the report used the same rule
    table = pd.read_csv(tmp_path / "reports" / "seq" / "comparisons.csv")
    assert table[["a", "b", "family"]].values.tolist() == [["LR", "C", "tutorial"]]
    # the spending boundary at the analysed number of seeds, wider than the one-look 95% interval
    z = Design(0.05, 0.2, 2, 4).z_boundary(int(table["n_a"].iloc[0]), 1)
    assert table["level"].iloc[0] == pytest.approx(1 - 2 * stats.norm.sf(z)) and table["level"].iloc[0] > 0.95

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
