"""A study's search: the space (widths and lr of a family), the sampler, the pruner, and opening the study.

Reproducible: trial ``n`` of a study is sampled by a sampler seeded with ``trial_seed(N, n)``, N being
``--sampler-seed``. Given the same finished trials it samples the same point, so the same command on a
fresh study samples the same configurations (the driver asks and tells in batches, in trial-number order);
processes sharing a study get distinct trial numbers from the storage, hence distinct seeds, and a resume
samples new points. Replicate study k (``--studies K``) is a study of its own, ``tune-C-s<k>``, whose N is
``study_seed(N, k)``: independent searches of the same space, as a benchmark must vary its hyperparameter
search (X. Bouthillier et al., Accounting for variance in machine learning benchmarks, MLSys 2021).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from ..config import ConfigError, Family, TuneConfig
from ..models import ModelSpec
from .storage import OnStale, fail_dead_owners, storage_label

optuna.logging.set_verbosity(optuna.logging.WARNING)

CONFIG_ATTR = "ffnn_config"  # study user attr: what must stay the same for trials to be comparable
TPE_STARTUP = 10  # TPE's random start: trials sampled at random until this many have finished


def suggest(trial: optuna.Trial, family: Family) -> tuple[ModelSpec, float]:
    """Sample a model and a learning rate; parameters are named after the structure (``n_units_l0``, ``lr``)."""
    lo, hi = family.width
    if family.shared_width and family.depth:
        hidden = (trial.suggest_int("n_units", lo, hi, log=True),) * family.depth
    else:
        hidden = tuple(trial.suggest_int(f"n_units_l{i}", lo, hi, log=True) for i in range(family.depth))
    lr = trial.suggest_float("lr", *family.lr, log=True)
    return ModelSpec(hidden, family.activation if hidden else "none"), lr


def spec_of(params: dict, family: Family) -> ModelSpec:
    """The model that ``suggest`` built from these params: ``{"n_units_l0": 64, "lr": 0.1}`` -> 784-64-10."""
    if "n_units" in params:
        hidden = (int(params["n_units"]),) * family.depth
    else:
        hidden = tuple(int(params[f"n_units_l{i}"]) for i in range(family.depth))
    return ModelSpec(hidden, family.activation if hidden else "none")


def trial_seed(sampler_seed: int, number: int) -> int:
    """The seed that samples trial ``number``: ``numpy.random.SeedSequence([sampler_seed, number])``'s first word.

    ``trial_seed(7, 0) != trial_seed(7, 1) != trial_seed(8, 0)``
    """
    return int(np.random.SeedSequence([sampler_seed, number]).generate_state(1)[0])


def study_seed(sampler_seed: int, study: int) -> int:
    """The sampler seed of replicate study ``study`` (1-based): study 1 keeps ``sampler_seed``, so a study from
    before --studies replays and resumes as it did; study k >= 2 takes the first word of numpy's
    ``SeedSequence(sampler_seed, spawn_key=(k,))``, a child stream independent of the parent's.

    ``study_seed(7, 1) == 7``; ``study_seed(7, 2) != study_seed(7, 3) != study_seed(8, 2)``
    """
    if study == 1:
        return sampler_seed
    return int(np.random.SeedSequence(sampler_seed, spawn_key=(study,)).generate_state(1)[0])


def replicate(cfg: TuneConfig, study: int) -> TuneConfig:
    """The config of replicate study ``study``: its own name (``tune-C-s2``) and sampler seed; ``cfg`` for study 1."""
    if study == 1:
        return cfg
    return replace(cfg, study_name=cfg.name_of("{model}", study), sampler_seed=study_seed(cfg.sampler_seed, study))


class PerTrialSeed(optuna.samplers.BaseSampler):
    """A sampler that draws each trial with a sampler of its own, seeded by ``trial_seed(seed, number)``:
    what it samples depends on the study's history and the trial's number, never on what this process
    sampled before (as one seeded sampler's running random state would)."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self.make, self.seed = make, seed
        self.samplers: dict[int, optuna.samplers.BaseSampler] = {}  # trial number -> its sampler, while it runs

    def _of(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number not in self.samplers:
            self.samplers[trial.number] = self.make(trial_seed(self.seed, trial.number))
        return self.samplers[trial.number]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._of(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._of(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._of(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._of(trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._of(trial).after_trial(study, trial, state, values)
        self.samplers.pop(trial.number, None)

    def reseed_rng(self) -> None:  # the seeds come from the trial numbers: nothing to reseed
        pass


def make_sampler(cfg: TuneConfig) -> optuna.samplers.BaseSampler:
    def make(seed: int) -> optuna.samplers.BaseSampler:
        if cfg.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # constant_liar: running trials count as bad guesses, so the trials of a batch (and of other
        # processes) spread out
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=TPE_STARTUP)

    return PerTrialSeed(make, cfg.sampler_seed)


def make_pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_steps)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.train.eval_every, max_resource=cfg.train.iters,
                                              reduction_factor=cfg.reduction_factor)
    return optuna.pruners.NopPruner()


def fingerprint(cfg: TuneConfig, model: str) -> dict:
    """What a study's trials share; a resume with other values would mix incomparable trials."""
    t = cfg.train
    return json.loads(json.dumps({
        "family": asdict(cfg.families[model]), "dataset": cfg.dataset, "val_size": cfg.val_size,
        "split_seed": cfg.split_seed, "batch_size": t.batch_size, "iters": t.iters, "eval_every": t.eval_every,
        "seed": t.seed, "trial_seeds": cfg.trial_seeds}))


def open_study(cfg: TuneConfig, model: str, storage: optuna.storages.BaseStorage,
               on_stale: OnStale | None = None) -> optuna.Study:
    """Create the study or load it (``load_if_exists``); refuse a resume with another budget or space."""
    name = cfg.name_of(model)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"study {name!r} in {storage_label(cfg.storage)} minimizes; use another --study-name")
    wanted = fingerprint(cfg, model)
    have = study.user_attrs.get(CONFIG_ATTR)
    if have is None:
        study.set_user_attr(CONFIG_ATTR, wanted)
    else:
        have = {"trial_seeds": 1, **have}  # studies from before --trial-seeds trained one seed per trial
        if have != wanted:
            diff = [k for k in wanted if have.get(k) != wanted[k]]
            k = diff[0] if diff else "config"
            raise ConfigError(f"study {name!r} in {storage_label(cfg.storage)} was created with {k}="
                              f"{have.get(k)!r}, not {wanted.get(k)!r}; use another --study-name, or the same "
                              f"settings to resume")
    fail_dead_owners(study, on_stale)
    return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(cfg), pruner=make_pruner(cfg))
