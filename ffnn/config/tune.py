"""tune's configuration: a tuning file ([families], [train]), then the flags."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from ..models import ACTIVATIONS
from ..train import TrainConfig
from .checks import ConfigError, check_keys, dataset_name, integer, validate_train


@dataclass(frozen=True)
class Family:
    """An architecture family: fixed activation and depth; widths and learning rate are searched."""

    activation: str  # one of ffnn.models.ACTIVATIONS
    depth: int  # hidden layers; 0 is logistic regression (only lr is searched)
    width: tuple[int, int] = (16, 1024)  # hidden units per layer, searched on a log scale
    shared_width: bool = False  # one width for every layer (Optuna param n_units) instead of n_units_l{i}
    lr: tuple[float, float] = (1e-3, 1.0)  # SGD learning rate per step, searched on a log scale


@dataclass(frozen=True)
class TuneConfig:
    families: dict[str, Family]  # name (the tutorial model it generalises, e.g. "C") -> search space
    models: tuple[str, ...]  # the families to tune, one study each, in this order
    experiment: str = "tune"  # MLflow experiment of the studies and their trials
    final_experiment: str = "compare"  # where --final's runs land, beside the untuned comparison
    dataset: str = "mnist"  # one of ffnn.data.DATASETS, "digits", or a path to an .npz file (ffnn.datasets)
    n_trials: int = 30  # trials per study and invocation; a rerun adds as many again
    timeout: float | None = None  # seconds per study and invocation; running trials finish
    storage: str = "sqlite:///mlruns/optuna.db"  # Optuna storage URL, or a journal file path
    study_name: str = "tune-{model}"  # {model}: the family; study k >= 2 adds "-s<k>" (study 1's name as before)
    studies: int = 1  # independent studies per family, each with its own sampler seed (--studies K)
    sampler: str = "tpe"  # tpe or random
    sampler_seed: int = 0  # trial n is sampled with a seed from (sampler_seed, n): a fresh study replays, a resume not
    trial_seeds: int = 1  # seeds per trial, one stack; the objective is their mean validation accuracy
    trial_batch: int = 0  # trials asked and trained at once; 0 = 2 per CPU training process (32 on a GPU)
    pruner: str = "median"  # median, hyperband or none
    startup_trials: int = 5  # median: finished trials before any trial is pruned
    warmup_steps: int = 0  # median: optimizer steps before a trial can be pruned
    reduction_factor: int = 3  # hyperband: one in this many trials goes on at each rung
    val_size: int = 10_000  # training examples held out for validation, the same for every trial
    val_share: float | None = None  # instead, this share of the training set (the file's val_size = 0.1667)
    split_seed: int = 0  # which training images are held out
    train: TrainConfig = field(default_factory=TrainConfig)  # lr unused (searched); seed seeds every trial
    device: str = "auto"  # auto, cpu or cuda
    workers: int = 0  # training processes; 0 = one per CPU core (one on a GPU)
    reports_dir: str = "reports/tune"  # best params and plots go to <reports_dir>/<study>/
    final: bool = False  # after tuning, retrain each best configuration on the full training set
    seeds: int = 5  # --final: seeds 0 .. seeds-1

    def name_of(self, model: str, study: int = 1) -> str:  # tune-C, tune-C-s2, ...
        return self.study_name.format(model=model) + (f"-s{study}" if study > 1 else "")

    def val_examples(self, n_train: int) -> int:
        """Examples held out of ``n_train``: ``val_size``, or ``val_share`` of them rounded (0.1666667 of MNIST's
        60,000 is 10,000; of the digits' 1437, 240)."""
        return self.val_size if self.val_share is None else max(1, round(self.val_share * n_train))


_Number = TypeVar("_Number", int, float)
TUNE_KEYS = {f.name for f in fields(TuneConfig)} - {"val_share"}  # a float val_size sets it
TUNE_FLAGS = ("models", "n_trials", "timeout", "storage", "study_name", "workers", "sampler_seed", "trial_seeds",
              "trial_batch", "studies", "sampler", "pruner", "experiment", "device", "iters", "final", "seeds",
              "dataset")
FAMILY_KEYS = {f.name for f in fields(Family)}
TUNE_TRAIN_KEYS = {"batch_size", "iters", "eval_every", "seed"}
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")


def _range(name: str, value: Any, kind: type[_Number]) -> tuple[_Number, _Number]:
    ok = isinstance(value, list) and len(value) == 2 and all(
        not isinstance(v, bool) and isinstance(v, (int, float) if kind is float else int) for v in value)
    if not ok or not 0 < value[0] <= value[1]:
        raise ConfigError(f"{name} must be [low, high] with 0 < low <= high ({kind.__name__}s), got {value!r}")
    return kind(value[0]), kind(value[1])


def _val_size(value: Any) -> tuple[int, float | None]:
    """(val_size, val_share) from the file's val_size: a number of examples, or a float in (0, 1), a share."""
    if isinstance(value, float):
        if not 0 < value < 1:
            raise ConfigError(f"val_size: a share of the training set must lie in (0, 1), got {value!r}")
        return TuneConfig.val_size, value
    return integer("val_size", value), None


def parse_family(name: str, table: Any) -> Family:
    check_keys(f"families.{name}", table, FAMILY_KEYS)
    depth = integer(f"families.{name}.depth", table.get("depth", 1), minimum=0)
    activation = table.get("activation", "relu" if depth else "none")
    if depth and activation not in ACTIVATIONS:
        raise ConfigError(f"families.{name}.activation: unknown {activation!r}; known: {', '.join(ACTIVATIONS)}")
    shared = table.get("shared_width", False)
    if not isinstance(shared, bool):
        raise ConfigError(f"families.{name}.shared_width must be true or false, got {shared!r}")
    return Family(activation, depth, _range(f"families.{name}.width", table.get("width", [16, 1024]), int),
                  shared, _range(f"families.{name}.lr", table.get("lr", [1e-3, 1.0]), float))


def build_tune_config(file_values: dict[str, Any], overrides: dict[str, Any]) -> TuneConfig:
    """File values first, then non-None CLI overrides; validated. ``overrides["models"]``: names or comma lists."""
    check_keys("tuning file", file_values, TUNE_KEYS)
    families_table = file_values.get("families", {})
    check_keys("families", families_table, set(families_table) if isinstance(families_table, dict) else set())
    families = {name: parse_family(name, t) for name, t in families_table.items()}
    if not families:
        raise ConfigError("families: the tuning file defines no architecture family ([families.C] ...)")

    train_table = file_values.get("train", {})
    if isinstance(train_table, dict) and "lr" in train_table:
        raise ConfigError("train.lr: the learning rate is searched; set families.<name>.lr = [low, high]")
    check_keys("train", train_table, TUNE_TRAIN_KEYS)
    train_values = {**train_table, **({"iters": overrides["iters"]} if overrides.get("iters") is not None else {})}
    train = validate_train(TrainConfig(**train_values))
    integer("train.seed", train.seed, minimum=0)

    values = {k: v for k, v in file_values.items() if k not in ("families", "train")}
    values.update({k: v for k, v in overrides.items() if k != "iters" and v is not None})
    models = values.get("models", list(families))
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, (list, tuple)) or not all(isinstance(m, str) for m in models):
        raise ConfigError(f"models must be a list of family names, got {models!r}")
    models = [p.strip() for m in models for p in m.split(",") if p.strip()]
    if not models:
        raise ConfigError("models: no family to tune")
    for m in models:
        if m not in families:
            raise ConfigError(f"unknown family {m!r}; the tuning file defines: {', '.join(families)}")
    models = list(dict.fromkeys(models))

    for key in ("experiment", "final_experiment", "storage", "study_name", "reports_dir"):
        v = values.get(key, getattr(TuneConfig, key))
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{key} must be a non-empty string, got {v!r}")
    study_name = values.get("study_name", TuneConfig.study_name)
    if len(models) > 1 and "{model}" not in study_name:
        raise ConfigError(f"study_name {study_name!r}: with several families put {{model}} in it, or give one --model")
    try:
        study_name.format(model="C")
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"study_name {study_name!r}: the only placeholder allowed is {{model}}") from None
    for key, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS), ("device", ("auto", "cpu", "cuda"))):
        v = values.get(key, getattr(TuneConfig, key))
        if v not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {v!r}")
    dataset = dataset_name(values.get("dataset", TuneConfig.dataset))
    timeout = values.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    val_size, val_share = _val_size(values.get("val_size", TuneConfig.val_size))
    final = values.get("final", False)
    if not isinstance(final, bool):
        raise ConfigError(f"final must be true or false, got {final!r}")
    return TuneConfig(
        families=families,
        models=tuple(models),
        experiment=values.get("experiment", TuneConfig.experiment),
        final_experiment=values.get("final_experiment", TuneConfig.final_experiment),
        dataset=dataset,
        n_trials=integer("n_trials", values.get("n_trials", TuneConfig.n_trials), minimum=0),
        timeout=None if timeout is None else float(timeout),
        storage=values.get("storage", TuneConfig.storage),
        study_name=study_name,
        studies=integer("studies", values.get("studies", TuneConfig.studies)),
        sampler=values.get("sampler", TuneConfig.sampler),
        sampler_seed=integer("sampler_seed", values.get("sampler_seed", TuneConfig.sampler_seed), minimum=0),
        trial_seeds=integer("trial_seeds", values.get("trial_seeds", TuneConfig.trial_seeds)),
        trial_batch=integer("trial_batch", values.get("trial_batch", TuneConfig.trial_batch), minimum=0),
        pruner=values.get("pruner", TuneConfig.pruner),
        startup_trials=integer("startup_trials", values.get("startup_trials", TuneConfig.startup_trials), minimum=0),
        warmup_steps=integer("warmup_steps", values.get("warmup_steps", TuneConfig.warmup_steps), minimum=0),
        reduction_factor=integer("reduction_factor", values.get("reduction_factor", TuneConfig.reduction_factor),
                              minimum=2),
        val_size=val_size,
        val_share=val_share,
        split_seed=integer("split_seed", values.get("split_seed", TuneConfig.split_seed), minimum=0),
        train=train,
        device=values.get("device", TuneConfig.device),
        workers=integer("workers", values.get("workers", TuneConfig.workers), minimum=0),
        reports_dir=values.get("reports_dir", TuneConfig.reports_dir),
        final=final,
        seeds=integer("seeds", values.get("seeds", TuneConfig.seeds)),
    )
