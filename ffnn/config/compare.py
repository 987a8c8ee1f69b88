"""compare's configuration: an experiment file ([train], [specs], [grid], [divergence]), then the flags."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..grid import Grid, expand
from ..models import ACTIVATIONS, REGISTRY, ModelSpec, SpecError
from ..train import DivergenceRule, TrainConfig
from .checks import ConfigError, check_keys, dataset_name, integer, validate_train


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
    log_models: str = "best"  # LoggedModels: "best" (each model's best seed; every run keeps weights.pt), "all"
    divergence: DivergenceRule = field(default_factory=DivergenceRule)  # when a seed counts as diverged
    recipes: dict[str, TrainConfig] = field(default_factory=dict)  # model -> its own recipe (grid cells on an
    #                                                                 iters or lr axis); the others use `train`
    grid: Grid | None = None  # the [grid] table the cells in `specs` came from

    def spec(self, name: str) -> ModelSpec:
        return self.specs[name]

    def train_of(self, name: str) -> TrainConfig:
        """The recipe model ``name`` trains with (seed unset)."""
        return self.recipes.get(name, self.train)


TOP_KEYS = {"experiment", "dataset", "models", "seeds", "device", "workers", "stack_size", "log_models", "train",
            "specs", "divergence", "grid"}
GRID_KEYS = {"widths", "depths", "activation", "iters", "lr"}
DIVERGENCE_KEYS = {"threshold", "window"}
TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"seed"}
# the command-line flags that override a file's values, by their config names (argparse dests)
COMPARE_FLAGS = ("models", "seeds", "iters", "eval_every", "lr", "batch_size", "device", "dataset", "experiment",
                 "workers", "stack_size", "log_models", "divergence_threshold", "divergence_window")
LOG_MODELS = ("best", "all")
SPEC_KEYS = {"hidden", "activation"}


def parse_spec(name: str, table: Any) -> ModelSpec:
    check_keys(f"specs.{name}", table, SPEC_KEYS)
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
    return tuple(sorted({integer(name, v, minimum) for v in value}))


def parse_grid(table: Any) -> Grid:
    """``[grid]``: widths, depths (each a list), activation, and the optional iters and lr axes."""
    check_keys("grid", table, GRID_KEYS)
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


def build_compare_config(file_values: dict[str, Any], overrides: dict[str, Any]) -> CompareConfig:
    """File values first, then non-None CLI overrides; validated."""
    check_keys("experiment file", file_values, TOP_KEYS)
    grid = parse_grid(file_values["grid"]) if "grid" in file_values else None
    for key, axis in (("iters", grid.iters), ("lr", grid.lr)) if grid else ():
        if axis and overrides.get(key) is not None:
            raise ConfigError(f"--{key}: the grid has an {key} axis (grid.{key} = {list(axis)}); drop --{key} "
                              f"or the axis")
    specs = dict(REGISTRY)
    file_specs = file_values.get("specs", {})
    check_keys("specs", file_specs, set(file_specs) if isinstance(file_specs, dict) else set())
    for name, table in file_specs.items():
        specs[name] = parse_spec(name, table)

    train_table = file_values.get("train", {})
    check_keys("train", train_table, TRAIN_KEYS)
    train_values = {**train_table, **{k: v for k, v in overrides.items() if k in TRAIN_KEYS and v is not None}}
    train = validate_train(TrainConfig(**train_values))

    div_table = file_values.get("divergence", {})
    check_keys("divergence", div_table, DIVERGENCE_KEYS)
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
        seeds=integer("seeds", values.get("seeds", CompareConfig.seeds)),
        train=train,
        specs=specs,
        device=device,
        workers=integer("workers", values.get("workers", 0), minimum=0),
        stack_size=integer("stack_size", values.get("stack_size", 0), minimum=0),
        log_models=_log_models(values.get("log_models", CompareConfig.log_models)),
        divergence=divergence,
        recipes=recipes,
        grid=grid,
    )


def _log_models(value: Any) -> str:
    if value not in LOG_MODELS:
        raise ConfigError(f"log_models must be one of {', '.join(LOG_MODELS)}, got {value!r}")
    return str(value)


def parse_divergence(table: dict[str, Any]) -> DivergenceRule:
    threshold = table.get("threshold", DivergenceRule.threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ConfigError(f"divergence threshold must be a loss > 0, got {threshold!r}")
    return DivergenceRule(float(threshold), integer("divergence window", table.get("window", DivergenceRule.window)))
