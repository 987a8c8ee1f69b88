"""The checks every config shares: one line naming the field and the bad value."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..data import DataError
from ..datasets import check_name
from ..errors import UserError
from ..train import TrainConfig


class ConfigError(UserError, ValueError):
    """Bad configuration: the message names the field and the value."""


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such experiment file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None


def check_keys(where: str, table: Any, allowed: set[str]) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def integer(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def dataset_name(value: Any) -> str:
    try:  # a known name, "digits" or an .npz path (opened when the command starts)
        return check_name(value)
    except DataError as e:
        raise ConfigError(str(e)) from None


def validate_train(cfg: TrainConfig, n_train: int | None = None) -> TrainConfig:
    if isinstance(cfg.lr, bool) or not isinstance(cfg.lr, (int, float)) or not cfg.lr > 0:
        raise ConfigError(f"lr must be a number > 0, got {cfg.lr!r}")
    integer("batch_size", cfg.batch_size)
    integer("iters", cfg.iters)
    integer("eval_every", cfg.eval_every)
    if cfg.eval_every > cfg.iters:
        raise ConfigError(f"eval_every ({cfg.eval_every}) must not exceed iters ({cfg.iters})")
    if n_train is not None and cfg.batch_size > n_train:
        raise ConfigError(f"batch_size ({cfg.batch_size}) is larger than the training set ({n_train})")
    return replace(cfg, lr=float(cfg.lr))
