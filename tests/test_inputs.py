"""Every bad input: one clear line naming the problem, exit status 2, and the MLflow store untouched."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from conftest import tune_toml

from ffnn import cli

BUDGET = ["--iters", "30", "--eval-every", "10", "--batch-size", "20", "--seeds", "1", "--models", "C"]

TUNE_TOML = tune_toml("t", 1)


def experiment_file(tmp_path, text: str) -> list[str]:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return ["--config", str(path), "--models", "W"]


def corrupt_data_dir(tmp_path) -> list[str]:
    from ffnn import data
    folder = data.prepare(data.DATASETS["tiny"], tmp_path / "data")
    labels = folder / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1] + b"\x09")
    return []


def no_source(tmp_path) -> list[str]:
    (tmp_path / "mirror").rename(tmp_path / "elsewhere")
    return []


CASES = [
    # (id, extra argv or a function of tmp_path giving it, expected words in the message)
    ("malformed-toml", lambda t: experiment_file(t, "seeds = 2\nmodels = = 3\n"), ["malformed TOML", "line 2"]),
    ("unknown-key", lambda t: experiment_file(t, "modles = ['C']\n"), ["unknown key 'modles'"]),
    ("unknown-train-key", lambda t: experiment_file(t, "[train]\nlearning_rate = 0.1\n"),
     ["train", "unknown key 'learning_rate'"]),
    ("unknown-model", ["--models", "C,Z"], ["unknown model 'Z'", "known: LR, A, B, C, D, E"]),
    ("width-zero", lambda t: experiment_file(t, "[specs.W]\nhidden = [0]\n") + ["--models", "W"],
     ["specs.W.hidden", "positive integer", "0"]),
    ("width-not-integer", lambda t: experiment_file(t, "[specs.W]\nhidden = [12.5]\n") + ["--models", "W"],
     ["specs.W.hidden", "positive integer", "12.5"]),
    ("unknown-activation", lambda t: experiment_file(t, "[specs.W]\nhidden = [10]\nactivation = 'swish'\n")
     + ["--models", "W"], ["unknown activation 'swish'"]),
    ("lr-zero", ["--lr", "0"], ["lr must be a number > 0", "0"]),
    ("lr-negative", ["--lr", "-0.1"], ["lr must be a number > 0", "-0.1"]),
    ("batch-size-zero", ["--batch-size", "0"], ["batch_size must be >= 1"]),
    ("batch-size-too-large", ["--batch-size", "601"], ["batch_size (601)", "larger than the training set (600)"]),
    ("iters-zero", ["--iters", "0"], ["iters must be >= 1"]),
    ("eval-every-past-iters", ["--eval-every", "31"], ["eval_every (31) must not exceed iters (30)"]),
    ("seeds-zero", ["--seeds", "0"], ["seeds must be >= 1"]),
    ("unknown-dataset", ["--dataset", "cifar"], ["unknown dataset 'cifar'", "mnist"]),
    ("missing-data-no-source", no_source, ["missing", "--data-source"]),
    ("wrong-checksum", corrupt_data_dir, ["train-labels-idx1-ubyte", "expected SHA-256"]),
    ("tracking-uri-malformed", ["--tracking-uri", "bogus://x"], ["tracking URI 'bogus://x'"]),
    ("tracking-uri-unreachable", ["--tracking-uri", "http://127.0.0.1:9"],
     ["tracking URI 'http://127.0.0.1:9' is unreachable"]),
    ("device-cuda-without-gpu", ["--device", "cuda"], ["--device cuda", "no CUDA GPU"]),
    ("spec-too-big-for-memory", lambda tmp: _huge_spec(tmp),
     ["model W (784-100000000-10 relu) needs", "GiB of memory for one seed", "is available: make it smaller"]),
    ("store-truncated", lambda tmp: _damaged_store(tmp, "truncate"), ["mlflow.db is damaged", "a truncated copy?",
                                                                      "leaves it as it is"]),
    ("store-overwritten", lambda tmp: _damaged_store(tmp, "scribble"), ["mlflow.db is damaged", "malformed"]),
    ("store-not-sqlite", lambda tmp: _damaged_store(tmp, "text"), ["mlflow.db is not an SQLite database"]),
]


def _damaged_store(tmp, how: str) -> list[str]:
    """A store at the test's path that a crash, a bad copy or a stray write damaged."""
    db = tmp / "mlruns" / "mlflow.db"
    if how == "text":
        db.parent.mkdir(parents=True)
        db.write_text("not a database\n" * 20)
        return []
    import sqlite3
    db.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(db)) as con, con:  # a database of some 100 pages
        con.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)")
        con.executemany("INSERT INTO runs (name) VALUES (?)", [(f"run {i}" * 20,) for i in range(3000)])
    data = db.read_bytes()
    if how == "truncate":
        db.write_bytes(data[:len(data) // 3])
    else:  # the schema's first page written over
        db.write_bytes(data[:100] + b"\xff" * 3000 + data[3100:])
    return []


def _huge_spec(tmp) -> list[str]:
    """An experiment whose one model cannot fit in memory (313 GB of weights alone)."""
    path = tmp / "huge.toml"
    path.write_text('models = ["W"]\n[specs.W]\nhidden = [100000000]\nactivation = "relu"\n')
    return ["--config", str(path), "--models", "W"]


def store_state(path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.mark.parametrize("argv, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_compare_bad_input(tiny, tmp_path, capsys, argv, words):
    import torch
    extra = argv(tmp_path) if callable(argv) else argv
    if "--device" in extra and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    db = tmp_path / "mlruns" / "mlflow.db"
    before = store_state(db)
    base = ["compare", "--dataset", "tiny", "--data-dir", str(tmp_path / "data"),
            "--tracking-uri", f"sqlite:///{db}", "--no-report", *BUDGET]
    assert cli.main(base + extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err
    assert store_state(db) == before  # nothing created, nothing changed


@pytest.mark.parametrize("storage, words", [
    ("bogus://nowhere", ["storage", "bogus://nowhere"]),
    ("postgresql://nobody@127.0.0.1:9/optuna", ["storage", "postgresql://nobody@127.0.0.1:9/optuna"]),
])
def test_tune_bad_storage(tiny, tmp_path, capsys, storage, words):
    (tmp_path / "tune.toml").write_text(TUNE_TOML)
    db = tmp_path / "mlruns" / "mlflow.db"
    argv = ["tune", "--config", str(tmp_path / "tune.toml"), "--data-dir", str(tmp_path / "data"),
            "--tracking-uri", f"sqlite:///{db}", "--storage", storage]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err
    assert not db.exists()


def test_tune_unknown_key_in_file(tiny, tmp_path, capsys):
    (tmp_path / "tune.toml").write_text(TUNE_TOML + "\n[families.C2]\nactivation = 'relu'\ndepht = 2\n")
    argv = ["tune", "--config", str(tmp_path / "tune.toml"), "--data-dir", str(tmp_path / "data"),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "depht" in err and len(err.splitlines()) == 1


def test_the_console_script_exits_with_the_status_and_all_its_output(tiny, tmp_path):
    """The console script's exit status, its one error line on stderr and its output on stdout, through a pipe."""
    import os
    import subprocess

    from conftest import cli_command
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe's output stays buffered
    ok = subprocess.run(cli_command(tiny, "data", "--dataset", "tiny", "--data-dir", str(tmp_path / "data")),
                        capture_output=True, text=True, timeout=120, env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("tiny: verified files in "), ok
    bad = subprocess.run(cli_command(tiny, "compare", "--dataset", "tiny", "--models", "Q"),
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert bad.returncode == 2 and bad.stderr == "ffnn compare: error: unknown model 'Q'; known: LR, A, B, C, D, E\n"


@pytest.mark.parametrize("command", ["report", "ui"])
def test_a_damaged_store_is_one_line_for_report_and_ui_too(tmp_path, capsys, command):
    _damaged_store(tmp_path, "truncate")
    db = tmp_path / "mlruns" / "mlflow.db"
    before = store_state(db)
    argv = [command, "--tracking-uri", f"sqlite:///{db}"] + (["--port", "0"] if command == "ui" else [])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mlflow.db is damaged" in err, err
    assert store_state(db) == before
