"""Experiment configuration: TOML file, then CLI flags, validated once, here.

Every error names the field and the bad value, on one line.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .data import DATASETS
from .errors import UserError
from .models import REGISTRY, ModelSpec, SpecError
from .train import TrainConfig


class ConfigError(UserError, ValueError):
    """Bad configuration: the message names the field and the value."""


@dataclass(frozen=True)
class CompareConfig:
    experiment: str = "compare"  # MLflow experiment name
    dataset: str = "mnist"  # one of ffnn.data.DATASETS
    models: tuple[str, ...] = ("LR", "A", "B", "C", "D", "E")  # names in `specs`
    seeds: int = 5  # runs per model, seeds 0 .. seeds-1
    train: TrainConfig = field(default_factory=TrainConfig)  # seed is set per run
    specs: dict[str, ModelSpec] = field(default_factory=lambda: dict(REGISTRY))  # name -> architecture
    device: str = "auto"  # auto, cpu or cuda
    workers: int = 0  # training processes; 0 = one per CPU core (one on a GPU)

    def spec(self, name: str) -> ModelSpec:
        return self.specs[name]


TOP_KEYS = {"experiment", "dataset", "models", "seeds", "device", "workers", "train", "specs"}
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
    specs = dict(REGISTRY)
    file_specs = file_values.get("specs", {})
    _check_keys("specs", file_specs, set(file_specs) if isinstance(file_specs, dict) else set())
    for name, table in file_specs.items():
        specs[name] = parse_spec(name, table)

    train_table = file_values.get("train", {})
    _check_keys("train", train_table, TRAIN_KEYS)
    train_values = {**train_table, **{k: v for k, v in overrides.items() if k in TRAIN_KEYS and v is not None}}
    train = validate_train(TrainConfig(**train_values))

    values = {k: v for k, v in file_values.items() if k not in ("train", "specs")}
    values.update({k: v for k, v in overrides.items() if k not in TRAIN_KEYS and v is not None})
    models = values.get("models", CompareConfig.models)
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if not isinstance(models, (list, tuple)) or not models:
        raise ConfigError(f"models must be a non-empty list of model names, got {models!r}")
    for m in models:
        if m not in specs:
            raise ConfigError(f"unknown model {m!r}; known: {', '.join(specs)}")
    dataset = values.get("dataset", CompareConfig.dataset)
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
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
    )
