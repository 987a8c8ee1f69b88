"""Experiment configuration: TOML file, then CLI flags, validated once, here.

Every error names the field and the bad value, on one line.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from .data import DataError
from .datasets import check_name
from .errors import UserError
from .grid import Grid, expand
from .models import ACTIVATIONS, REGISTRY, ModelSpec, SpecError
from .train import DivergenceRule, TrainConfig


class ConfigError(UserError, ValueError):
    """Bad configuration: the message names the field and the value."""


@dataclass(frozen=True)
class CompareConfig:
    experiment: str = "compare"  # MLflow experiment name
    dataset: str = "mnist"  # one of ffnn.data.DATASETS, "digits", or a path to an .npz file (ffnn.datasets)
    models: tuple[str, ...] = ("LR", "A", "B", "C", "D", "E")  # names in `specs`
    seeds: int = 5  # runs per model, seeds 0 .. seeds-1
    train: TrainConfig = field(default_factory=TrainConfig)  # seed is set per run
    specs: dict[str, ModelSpec] = field(default_factory=lambda: dict(REGISTRY))  # name -> architecture
    device: str = "auto"  # auto, cpu or cuda
    workers: int = 0  # training processes; 0 = one per CPU core (one on a GPU)
    stack_size: int = 0  # seeds trained together in one pass; 0 = chosen for the device
    divergence: DivergenceRule = field(default_factory=DivergenceRule)  # when a seed counts as diverged
    recipes: dict[str, TrainConfig] = field(default_factory=dict)  # model -> its own recipe (grid cells on an
    #                                                                 iters or lr axis); the others use `train`
    grid: Grid | None = None  # the [grid] table the cells in `specs` came from

    def spec(self, name: str) -> ModelSpec:
        return self.specs[name]

    def train_of(self, name: str) -> TrainConfig:
        """The recipe model ``name`` trains with (seed unset)."""
        return self.recipes.get(name, self.train)


TOP_KEYS = {"experiment", "dataset", "models", "seeds", "device", "workers", "stack_size", "train", "specs",
            "divergence", "grid"}
GRID_KEYS = {"widths", "depths", "activation", "iters", "lr"}
DIVERGENCE_KEYS = {"threshold", "window"}
TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"seed"}
SPEC_KEYS = {"hidden", "activation"}


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such experiment file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None


def _check_keys(where: str, table: Any, allowed: set[str]) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def _int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def parse_spec(name: str, table: Any) -> ModelSpec:
    _check_keys(f"specs.{name}", table, SPEC_KEYS)
    hidden = table.get("hidden", [])
    if not isinstance(hidden, list):
        raise ConfigError(f"specs.{name}.hidden must be a list of widths, got {hidden!r}")
    for w in hidden:
        if isinstance(w, bool) or not isinstance(w, int) or w <= 0:
            raise ConfigError(f"specs.{name}.hidden: width must be a positive integer, got {w!r}")
    try:
        return ModelSpec(tuple(hidden), table.get("activation", "relu" if hidden else "none"))
    except SpecError as e:
        raise ConfigError(f"specs.{name}: {e}") from None


def _ints(name: str, value: Any, minimum: int = 1) -> tuple[int, ...]:  # sorted, without repeats
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{name} must be a non-empty list of integers, got {value!r}")
    return tuple(sorted({_int(name, v, minimum) for v in value}))


def parse_grid(table: Any) -> Grid:
    """``[grid]``: widths, depths (each a list), activation, and the optional iters and lr axes."""
    _check_keys("grid", table, GRID_KEYS)
    if "widths" not in table or "depths" not in table:
        raise ConfigError("grid: widths (hidden units per layer) and depths (hidden layers) are required lists")
    activation = table.get("activation", "relu")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"grid.activation: unknown {activation!r}; known: {', '.join(ACTIVATIONS)}")
    lrs = table.get("lr", [])
    if not isinstance(lrs, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0
                                        for v in lrs):
        raise ConfigError(f"grid.lr must be a list of learning rates > 0, got {lrs!r}")
    iters = _ints("grid.iters", table["iters"]) if "iters" in table else ()
    return Grid(_ints("grid.widths", table["widths"]), _ints("grid.depths", table["depths"]), activation, iters,
                tuple(sorted({float(v) for v in lrs})))


def _grid_cells(grid: Grid, train: TrainConfig) -> tuple[dict[str, ModelSpec], dict[str, TrainConfig]]:
    """The grid's specs and, for cells on an iters or lr axis, their recipes; each validated."""
    cells = expand(grid, train)
    for name, (_, recipe) in cells.items():
        try:
            validate_train(recipe)
        except ConfigError as e:
            raise ConfigError(f"grid cell {name}: {e}") from None
    return {n: c[0] for n, c in cells.items()}, {n: c[1] for n, c in cells.items() if c[1] != train}


def dataset_name(value: Any) -> str:
    try:  # a known name, "digits" or an .npz path (opened when the command starts)
        return check_name(value)
    except DataError as e:
        raise ConfigError(str(e)) from None


def validate_train(cfg: TrainConfig, n_train: int | None = None) -> TrainConfig:
    if isinstance(cfg.lr, bool) or not isinstance(cfg.lr, (int, float)) or not cfg.lr > 0:
        raise ConfigError(f"lr must be a number > 0, got {cfg.lr!r}")
    _int("batch_size", cfg.batch_size)
    _int("iters", cfg.iters)
    _int("eval_every", cfg.eval_every)
    if cfg.eval_every > cfg.iters:
        raise ConfigError(f"eval_every ({cfg.eval_every}) must not exceed iters ({cfg.iters})")
    if n_train is not None and cfg.batch_size > n_train:
        raise ConfigError(f"batch_size ({cfg.batch_size}) is larger than the training set ({n_train})")
    return replace(cfg, lr=float(cfg.lr))


def build_compare_config(file_values: dict[str, Any], overrides: dict[str, Any]) -> CompareConfig:
    """File values first, then non-None CLI overrides; validated."""
    _check_keys("experiment file", file_values, TOP_KEYS)
    grid = parse_grid(file_values["grid"]) if "grid" in file_values else None
    for key, axis in (("iters", grid.iters), ("lr", grid.lr)) if grid else ():
        if axis and overrides.get(key) is not None:
            raise ConfigError(f"--{key}: the grid has an {key} axis (grid.{key} = {list(axis)}); drop --{key} "
                              f"or the axis")
    specs = dict(REGISTRY)
    file_specs = file_values.get("specs", {})
    _check_keys("specs", file_specs, set(file_specs) if isinstance(file_specs, dict) else set())
    for name, table in file_specs.items():
        specs[name] = parse_spec(name, table)

    train_table = file_values.get("train", {})
    _check_keys("train", train_table, TRAIN_KEYS)
    train_values = {**train_table, **{k: v for k, v in overrides.items() if k in TRAIN_KEYS and v is not None}}
    train = validate_train(TrainConfig(**train_values))

    div_table = file_values.get("divergence", {})
    _check_keys("divergence", div_table, DIVERGENCE_KEYS)
    divergence = parse_divergence({**div_table, **{k: overrides[f"divergence_{k}"] for k in DIVERGENCE_KEYS
                                                   if overrides.get(f"divergence_{k}") is not None}})

    cells: dict[str, ModelSpec] = {}
    recipes: dict[str, TrainConfig] = {}
    if grid is not None:
        cells, recipes = _grid_cells(grid, train)
        clash = sorted(set(cells) & set(specs))
        if clash:
            raise ConfigError(f"specs.{clash[0]}: the name of a grid cell; name the spec otherwise")
        specs.update(cells)

    values = {k: v for k, v in file_values.items() if k not in ("train", "specs", "divergence", "grid")}
    values.update({k: v for k, v in overrides.items() if k not in TRAIN_KEYS and v is not None})
    models = values.get("models", CompareConfig.models)
    if grid is not None and overrides.get("models") is None:  # a grid's cells are its models, after any listed
        listed = file_values.get("models", [])
        models = [*listed, *cells] if isinstance(listed, list) else listed
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if not isinstance(models, (list, tuple)) or not models:
        raise ConfigError(f"models must be a non-empty list of model names, got {models!r}")
    for m in models:
        if m not in specs:
            raise ConfigError(f"unknown model {m!r}; known: {', '.join(specs)}")
    dataset = dataset_name(values.get("dataset", CompareConfig.dataset))
    device = values.get("device", CompareConfig.device)
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")
    experiment = values.get("experiment", CompareConfig.experiment)
    if not isinstance(experiment, str) or not experiment.strip():
        raise ConfigError(f"experiment must be a non-empty name, got {experiment!r}")
    return CompareConfig(
        experiment=experiment,
        dataset=dataset,
        models=tuple(dict.fromkeys(models)),
        seeds=_int("seeds", values.get("seeds", CompareConfig.seeds)),
        train=train,
        specs=specs,
        device=device,
        workers=_int("workers", values.get("workers", 0), minimum=0),
        stack_size=_int("stack_size", values.get("stack_size", 0), minimum=0),
        divergence=divergence,
        recipes=recipes,
        grid=grid,
    )


def parse_divergence(table: dict[str, Any]) -> DivergenceRule:
    threshold = table.get("threshold", DivergenceRule.threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ConfigError(f"divergence threshold must be a loss > 0, got {threshold!r}")
    return DivergenceRule(float(threshold), _int("divergence window", table.get("window", DivergenceRule.window)))


# ---------------------------------------------------------------- tune
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
    return _int("val_size", value), None


def parse_family(name: str, table: Any) -> Family:
    _check_keys(f"families.{name}", table, FAMILY_KEYS)
    depth = _int(f"families.{name}.depth", table.get("depth", 1), minimum=0)
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
    _check_keys("tuning file", file_values, TUNE_KEYS)
    families_table = file_values.get("families", {})
    _check_keys("families", families_table, set(families_table) if isinstance(families_table, dict) else set())
    families = {name: parse_family(name, t) for name, t in families_table.items()}
    if not families:
        raise ConfigError("families: the tuning file defines no architecture family ([families.C] ...)")

    train_table = file_values.get("train", {})
    if isinstance(train_table, dict) and "lr" in train_table:
        raise ConfigError("train.lr: the learning rate is searched; set families.<name>.lr = [low, high]")
    _check_keys("train", train_table, TUNE_TRAIN_KEYS)
    train_values = {**train_table, **({"iters": overrides["iters"]} if overrides.get("iters") is not None else {})}
    train = validate_train(TrainConfig(**train_values))
    _int("train.seed", train.seed, minimum=0)

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
        n_trials=_int("n_trials", values.get("n_trials", TuneConfig.n_trials), minimum=0),
        timeout=None if timeout is None else float(timeout),
        storage=values.get("storage", TuneConfig.storage),
        study_name=study_name,
        studies=_int("studies", values.get("studies", TuneConfig.studies)),
        sampler=values.get("sampler", TuneConfig.sampler),
        sampler_seed=_int("sampler_seed", values.get("sampler_seed", TuneConfig.sampler_seed), minimum=0),
        trial_seeds=_int("trial_seeds", values.get("trial_seeds", TuneConfig.trial_seeds)),
        trial_batch=_int("trial_batch", values.get("trial_batch", TuneConfig.trial_batch), minimum=0),
        pruner=values.get("pruner", TuneConfig.pruner),
        startup_trials=_int("startup_trials", values.get("startup_trials", TuneConfig.startup_trials), minimum=0),
        warmup_steps=_int("warmup_steps", values.get("warmup_steps", TuneConfig.warmup_steps), minimum=0),
        reduction_factor=_int("reduction_factor", values.get("reduction_factor", TuneConfig.reduction_factor), 2),
        val_size=val_size,
        val_share=val_share,
        split_seed=_int("split_seed", values.get("split_seed", TuneConfig.split_seed), minimum=0),
        train=train,
        device=values.get("device", TuneConfig.device),
        workers=_int("workers", values.get("workers", TuneConfig.workers), minimum=0),
        reports_dir=values.get("reports_dir", TuneConfig.reports_dir),
        final=final,
        seeds=_int("seeds", values.get("seeds", TuneConfig.seeds)),
    )
