"""Grid experiments and their report: the cells a [grid] expands into, the capacity family, the frontier,
the budget interaction, the scaling fit (a known law recovered, its hold-out) and a grid compare end to end."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ffnn import cli
from ffnn.config import ConfigError, build_compare_config
from ffnn.grid import Cell, Grid, expand, is_cell, parse_cell
from ffnn.models import ModelSpec, count_params
from ffnn.report import ReportConfig, analyse
from ffnn.report.capacity import analyse_capacity, frontier_text
from ffnn.report.plan import capacity_steps
from ffnn.report.runs import ModelInfo
from ffnn.report.scaling import COLUMNS, Law, fit_depth, fit_law
from ffnn.train import TrainConfig

GRID = {"widths": [25, 50, 100], "depths": [1, 2], "activation": "relu"}


# ---------------------------------------------------------------- the grid and its cells
def test_grid_expands_into_one_spec_per_cell_with_the_experiments_recipe():
    cfg = build_compare_config({"grid": GRID, "seeds": 3, "train": {"iters": 200, "eval_every": 100}}, {})
    assert cfg.models == ("w25d1", "w50d1", "w100d1", "w25d2", "w50d2", "w100d2")
    assert cfg.spec("w50d2") == ModelSpec((50, 50), "relu")
    assert cfg.recipes == {} and cfg.train_of("w50d2").iters == 200
    assert cfg.grid == Grid((25, 50, 100), (1, 2), "relu")


def test_grid_budget_and_lr_axes_give_each_cell_its_own_recipe():
    cfg = build_compare_config({"grid": {**GRID, "iters": [3000, 1000], "lr": [0.05]}, "train": {"eval_every": 100}},
                               {})
    assert len(cfg.models) == 12 and cfg.models[0] == "w25d1i1000lr0.05"
    r = cfg.train_of("w100d2i3000lr0.05")
    assert (r.iters, r.lr, r.eval_every) == (3000, 0.05, 100)
    assert parse_cell("w100d2i3000lr0.05") == Cell(100, 2, 3000, 0.05)


def test_listed_models_come_before_the_cells_and_models_flag_picks_among_them():
    assert build_compare_config({"grid": GRID, "models": ["C"]}, {}).models[:2] == ("C", "w25d1")
    assert build_compare_config({"grid": GRID}, {"models": "w25d1,C"}).models == ("w25d1", "C")


@pytest.mark.parametrize("table, overrides, message", [
    ({"widths": [25], "depths": [0]}, {}, "grid.depths must be >= 1"),
    ({"widths": [], "depths": [1]}, {}, "grid.widths must be a non-empty list"),
    ({"depths": [1]}, {}, "widths .* and depths .* are required"),
    ({"widths": [25], "depths": [1], "activation": "gelu"}, {}, "grid.activation: unknown 'gelu'"),
    ({"widths": [25], "depths": [1], "height": [2]}, {}, "grid: unknown key 'height'"),
    ({"widths": [25], "depths": [1], "iters": [1000]}, {"iters": 500}, "--iters: the grid has an iters axis"),
    ({"widths": [25], "depths": [1], "lr": [0.1, -1]}, {}, "grid.lr must be a list of learning rates > 0"),
    ({"widths": [25], "depths": [1], "iters": [100]}, {}, "grid cell w25d1i100: eval_every \\(500\\)"),
])
def test_bad_grid_is_one_line_naming_the_field(table, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_compare_config({"grid": table}, overrides)


def test_a_cell_is_named_after_its_width_and_depth_and_has_them():
    assert [c for c in expand(Grid((8,), (1, 3)), TrainConfig())] == ["w8d1", "w8d3"]
    assert is_cell("w8d3", ModelSpec((8, 8, 8), "relu")) and not is_cell("w8d3", ModelSpec((8, 8), "relu"))
    assert parse_cell("C") is None and parse_cell("w8") is None and parse_cell("w8d2lrx") is None


# ---------------------------------------------------------------- the capacity family and the frontier
def _info(name: str, spec: ModelSpec, iters: int = 100) -> ModelInfo:
    return ModelInfo(name, spec, (0.1, 100, iters, "tiny"))


def test_capacity_steps_are_width_steps_per_depth_then_added_layers_per_width():
    infos = {n: _info(n, ModelSpec((w,) * d, "relu")) for n, (w, d) in
             {"w8d1": (8, 1), "w16d1": (16, 1), "w8d2": (8, 2), "w16d2": (16, 2)}.items()}
    infos["C"] = _info("C", ModelSpec((100,), "relu"))  # not a cell: never in the family
    steps = [(s.a, s.b, s.change) for s in capacity_steps(infos)]
    assert steps == [("w8d1", "w16d1", "width 8 -> 16 at depth 1"), ("w8d2", "w16d2", "width 8 -> 16 at depth 2"),
                     ("w8d1", "w8d2", "add a layer at width 8"), ("w16d1", "w16d2", "add a layer at width 16")]
    other_budget = {**infos, "w16d1i200": _info("w16d1i200", ModelSpec((16,), "relu"), 200)}
    assert len(capacity_steps(other_budget)) == 4  # a cell of another budget has no step to these


@pytest.mark.parametrize("verdicts, expected", [
    (["helped", "helped"], "every wider net helped, up to width 400, the widest tried"),
    (["helped", "equivalent"], "widths beyond 200 are negligible (within +-0.2): 200 -> 400 equivalent"),
    (["helped", "hurt"], "widths beyond 200 do not help: 200 -> 400 hurt"),
    (["helped", "undecided"], "width helped up to 200; beyond it not yet decided: 200 -> 400 undecided"),
    (["undecided", "helped"], "every wider net helped"),  # the last step decides where the frontier is
    (["negligible", "undecided"], "no wider net was shown to help from width 100 on"),
])
def test_frontier_is_the_width_after_the_last_step_that_helped(verdicts, expected):
    text = frontier_text(2, list(zip([100, 200], [200, 400], verdicts)), 0.2)
    assert text.startswith("at depth 2, ") and expected in text


# ---------------------------------------------------------------- the scaling fit
WIDTHS = [25, 50, 100, 200, 400, 800]


def _params(depth: int, widths=WIDTHS) -> list[int]:
    return [count_params(ModelSpec((w,) * depth, "relu")) for w in widths]


def _seeds(law: Law, n: list[int], sd: float, seeds: int, rng: np.random.Generator) -> np.ndarray:
    """(widths, seeds) accuracies around the law, each seed's noise independent."""
    return 100 - law.err(np.array(n, float))[:, None] + rng.normal(0, sd, (len(n), seeds))


def test_fit_law_recovers_a_known_exponent_exactly_without_noise():
    n = _params(2)
    law = Law(1.7, 5.0, 0.45, n[0])
    got = fit_law(n, law.err(n))
    assert got.alpha == pytest.approx(0.45, abs=1e-4)
    irreducible = got.E
    assert irreducible == pytest.approx(1.7, abs=1e-3)


def test_fit_depth_interval_covers_the_true_alpha_and_the_law_passes_its_hold_out():
    rng = np.random.default_rng(3)
    n = _params(2)
    law = Law(1.5, 6.0, 0.6, n[0])
    fit = fit_depth(2, WIDTHS, n, count_params(ModelSpec((1600, 1600), "relu")), _seeds(law, n, 0.05, 8, rng),
                    n_boot=100)
    assert fit.alpha_low <= 0.6 <= fit.alpha_high and fit.alpha_high - fit.alpha_low < 0.2
    assert fit.E_low <= 1.5 <= fit.E_high
    true_gain = float(law.err(n[-1]) - law.err(count_params(ModelSpec((1600, 1600), "relu"))))
    assert fit.next_doubling_gain_low <= true_gain <= fit.next_doubling_gain_high
    assert fit.holdout_width == 800 and fit.holdout_passed is True
    assert fit.holdout_measured == pytest.approx(_seeds(law, n, 0, 1, rng)[-1, 0], abs=0.1)
    assert list(fit.row()) == COLUMNS


def test_a_widest_width_off_the_law_fails_the_hold_out():
    rng = np.random.default_rng(4)
    n = _params(1)
    acc = _seeds(Law(2.0, 6.0, 0.5, n[0]), n, 0.05, 6, rng)
    acc[-1] += 1.0  # one point better than the law predicts
    fit = fit_depth(1, WIDTHS, n, count_params(ModelSpec((1600,), "relu")), acc, n_boot=100)
    assert fit.holdout_passed is False and fit.holdout_error > 0.5 and fit.holdout_low > 0


def test_too_few_widths_or_seeds_give_a_reason_not_a_fit():
    assert "a fit needs 4" in fit_depth(1, [25, 50, 100], _params(1, [25, 50, 100]), 1, np.ones((3, 5))).reason
    assert "2 seeds" in fit_depth(1, WIDTHS, _params(1), 1, np.full((6, 1), 90.0)).reason


# ---------------------------------------------------------------- the report of a grid, from a runs frame
def _runs(acc: dict[tuple[int, int, int], list[float]]) -> pd.DataFrame:
    """A runs frame as ``report.tidy_runs`` gives it: cell (width, depth, iters) -> accuracy per seed."""
    rows = []
    for (w, d, iters), values in acc.items():
        spec = ModelSpec((w,) * d, "relu")
        name = Cell(w, d, iters).name
        for seed, a in enumerate(values):
            rows.append({"run_id": f"{name}-{seed}", "experiment_id": "1", "status": "FINISHED",
                         "start_time": len(rows), "model": name, "seed": seed, "hidden": spec.hidden_str,
                         "activation": "relu", "lr": 0.1, "batch_size": 100, "iters": iters, "dataset": "tiny",
                         "spec": spec.describe(), "device_name": "cpu", "key": f"{name}-{seed}", "accuracy": a,
                         "train_seconds": 1.0, "failure": "", "failure_step": math.nan, "parent_run_id": "p",
                         "test_correct": ""})
    return pd.DataFrame(rows)


def _grid_accuracies(gain_at: dict[int, float], seeds: int = 5) -> dict[tuple[int, int, int], list[float]]:
    """Widths 25-200 at depths 1-2 and two budgets; the widest beats the narrowest by ``gain_at[iters]``."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, seeds)  # one per seed, shared by the cells: seeds pair
    out = {}
    for iters, gain in gain_at.items():
        for d in (1, 2):
            for i, w in enumerate((25, 50, 100, 200)):
                out[(w, d, iters)] = list(90 + gain * i / 3 + noise + rng.normal(0, 0.02, seeds))
    return out


def _capacity(acc):
    result = analyse(_runs(acc), ReportConfig(experiments=("g",)))
    return result, analyse_capacity(result.sel, result.summary, result.table, result.alpha, result.margin, 10_000,
                                    n_boot=20)


def test_report_of_a_grid_has_the_capacity_family_map_frontier_and_fits():
    result, cap = _capacity(_grid_accuracies({1000: 3.0, 3000: 3.0}))
    fam = result.table[result.table["family"] == "capacity"]
    assert len(fam) == 2 * (3 * 2 + 4)  # per budget: 3 width steps at 2 depths, 4 added layers
    assert set(result.table["family"]) == {"capacity"}  # the cells make no specs-family steps
    assert (fam[fam["change"].str.startswith("width")]["verdict"] == "helped").all()
    assert len(cap.cells) == 16 and list(cap.cells.columns)[:4] == ["iters", "lr", "depth", "width"]
    assert cap.frontier[0].startswith("at 1000 iters, at depth 1, every wider net helped")
    assert list(cap.scaling.columns) == ["iters", "lr", *COLUMNS] and len(cap.scaling) == 4
    assert any("passed its hold-out" in line or "failed its hold-out" in line for line in cap.lines())


def test_budget_interaction_says_whether_the_gain_from_width_grows_with_the_budget():
    _, grows = _capacity(_grid_accuracies({1000: 1.0, 3000: 3.0}))
    assert list(grows.interaction["verdict"]) == ["helped", "helped"]  # depths 1 and 2
    assert grows.interaction["diff"].iloc[0] == pytest.approx(2.0, abs=0.1)
    assert "the gain from width 25 to 200 grows with the budget" in grows.interaction_lines[0]
    _, same = _capacity(_grid_accuracies({1000: 2.0, 3000: 2.0}))
    assert set(same.interaction["verdict"]) <= {"equivalent", "undecided"}
    assert "grows" not in " ".join(same.interaction_lines)


def test_a_grid_without_a_budget_axis_has_no_interaction_and_plain_frontiers():
    acc = {k: v for k, v in _grid_accuracies({1000: 3.0}).items()}
    _, cap = _capacity(acc)
    assert cap.interaction.empty and cap.frontier[0].startswith("at depth 1, ")
    assert list(cap.scaling.columns) == COLUMNS


# ---------------------------------------------------------------- end to end
def test_compare_of_a_grid_writes_the_capacity_map_scaling_csv_and_family(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.toml").write_text('experiment = "cap"\ndataset = "tiny"\nseeds = 3\n'
                                        '[train]\niters = 30\neval_every = 10\nbatch_size = 20\nlr = 0.3\n'
                                        '[grid]\nwidths = [4, 8, 16, 32]\ndepths = [1, 2]\n')
    assert cli.main(["compare", "--config", str(tmp_path / "grid.toml"), "--data-dir", str(tmp_path / "data"),
                     "--tracking-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db", "--workers", "1"]) == 0
    out = tmp_path / "reports" / "cap"
    assert (out / "capacity_map.png").read_bytes()[:4] == b"\x89PNG"
    scaling = pd.read_csv(out / "scaling.csv")
    assert list(scaling.columns) == COLUMNS and list(scaling["depth"]) == [1, 2]
    fitted = scaling[scaling["reason"].isna()]  # a depth whose seeds collapsed at this budget says why instead
    assert len(fitted) and (fitted["holdout_width"] == 32).all() and fitted["holdout_passed"].notna().all()
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert (comparisons["family"] == "capacity").sum() == 2 * 3 + 4
    assert "capacity_map.png" in (out / "summary.md").read_text()
    assert "Capacity map" in (out / "summary.html").read_text()
