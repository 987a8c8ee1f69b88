"""What a study leaves behind: its summary, ``best_params.json``, ``trials.csv`` and Optuna's plots."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..config import TuneConfig
from ..errors import Fault
from ..files import write_all
from ..models import ModelSpec
from .search import spec_of
from .storage import storage_label


@dataclass
class StudySummary:
    model: str  # family name
    name: str  # Optuna study name
    states: dict[str, int]  # every trial in the study, by state
    finished_now: int  # trials this invocation finished
    seconds: float  # this invocation's wall time on the study
    best_number: int | None = None
    best_value: float | None = None  # validation accuracy, percent: the mean over the trial's seeds
    best_per_seed: list[float] = field(default_factory=list)  # the best trial's seeds' validation accuracy
    best_params: dict = field(default_factory=dict)
    best_spec: ModelSpec | None = None
    out: Path | None = None  # reports folder
    files: list[Path] = field(default_factory=list)
    parent_run_id: str = ""
    notes: list[str] = field(default_factory=list)
    index: int = 1  # replicate study 1..K of its family (--studies)
    sampler_seed: int = 0  # the one this study samples with (``search.study_seed``)
    search_seconds: float = 0.0  # wall time of every invocation on the study, summed
    best_at: int | None = None  # the best trial's place among the finished trials, 1-based
    top: list[float] = field(default_factory=list)  # the best TOP complete trials' values, best first, percent

    @property
    def trials_per_minute(self) -> float:
        return 60.0 * self.finished_now / self.seconds if self.seconds > 0 else math.nan

    def budget(self, cfg: TuneConfig) -> dict:
        """What a report needs to judge this study's search: its budget and when its best trial came (the
        ``TAG_TUNED_BY`` tag of the runs retrained from it)."""
        st = self.states
        return {"study": self.name, "family": self.model, "index": self.index, "sampler_seed": self.sampler_seed,
                "trials": st.get("COMPLETE", 0) + st.get("PRUNED", 0), "complete": st.get("COMPLETE", 0),
                "pruned": st.get("PRUNED", 0), "failed": st.get("FAIL", 0), "seconds": round(self.search_seconds, 1),
                "best_trial": self.best_number, "best_at": self.best_at, "top": [round(v, 4) for v in self.top],
                "trial_seeds": cfg.trial_seeds, "iters": cfg.train.iters, "sampler": cfg.sampler}


TOP = 5  # trials whose spread tells whether a search has settled (the report's convergence check)
WALL_ATTR = "ffnn_wall_seconds"  # study user attr: the invocations' wall time on the study, summed


def summarize(cfg: TuneConfig, model: str, study: optuna.Study, finished: int, seconds: float,
              parent_id: str, index: int = 1) -> StudySummary:
    trials = study.get_trials(deepcopy=False)
    s = StudySummary(model, study.study_name, dict(Counter(t.state.name for t in trials)), finished, seconds,
                     parent_run_id=parent_id, index=index, sampler_seed=cfg.sampler_seed)
    s.search_seconds = float(study.user_attrs.get(WALL_ATTR, seconds))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        s.best_number, s.best_value, s.best_params = best.number, best.value, dict(best.params)
        s.best_per_seed = list(best.user_attrs.get("val_accuracy_per_seed", []))
        s.best_spec = spec_of(best.params, cfg.families[model])
        done = [t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        s.best_at = done.index(best.number) + 1
        s.top = sorted((float(t.value) for t in complete if t.value is not None), reverse=True)[:TOP]
    return s


PLOTS = {
    "optimization history": "plot_optimization_history",
    "parameter importances (fANOVA)": "plot_param_importances",
    "parallel coordinates": "plot_parallel_coordinate",
    "intermediate values (validation accuracy by iteration)": "plot_intermediate_values",
}


def write_outputs(study: optuna.Study, s: StudySummary, out: Path, cfg: TuneConfig) -> tuple[list[Path], list[str]]:
    """best_params.json, trials.csv and plots.html: Optuna's four plots on one page, plotly.js inside, so it
    opens offline and in MLflow's artifact view (a sandboxed blob that cannot load a script beside it).
    Written all or nothing (``files.write_all``): a full disk leaves the previous outputs as they were."""
    files: dict[str, str | bytes] = {}
    notes: list[str] = []
    best = {"study": s.name, "storage": storage_label(cfg.storage), "model": s.model,
            "trials": s.states, "best_trial": s.best_number, "val_accuracy": s.best_value, "params": s.best_params,
            "trial_seeds": cfg.trial_seeds, "val_accuracy_per_seed": s.best_per_seed,
            "hidden_sizes": s.best_spec.hidden_str if s.best_spec else None,
            "spec": s.best_spec.describe() if s.best_spec else None,
            "train": {k: v for k, v in cfg.train.as_dict().items() if k != "lr"},
            "val_size": cfg.val_size, "split_seed": cfg.split_seed, "dataset": cfg.dataset, "budget": s.budget(cfg)}
    files["best_params.json"] = json.dumps(best, indent=2) + "\n"
    if not study.get_trials(deepcopy=False):
        return write_all(out, files, "study's outputs", Fault), notes
    files["trials.csv"] = study.trials_dataframe().to_csv(index=False)

    import optuna.visualization as vis
    from plotly.offline import get_plotlyjs
    sections = []
    for title, fn in PLOTS.items():
        kwargs = {"evaluator": optuna.importance.FanovaImportanceEvaluator(seed=0)} if "importances" in title else {}
        try:
            fig = getattr(vis, fn)(study, **kwargs)
        except Exception as e:  # too few trials for this plot, say; the others still come
            notes.append(f"{title} plot skipped: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        sections.append(f"<h2>{title}</h2>\n" + fig.to_html(full_html=False, include_plotlyjs=False))
    if sections:
        head = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>study {s.name}</title>"
                f"<script>{get_plotlyjs()}</script></head><body>\n<h1>Optuna study {s.name}</h1>\n")
        files["plots.html"] = head + "\n".join(sections) + "\n</body></html>\n"
    return write_all(out, files, "study's outputs", Fault), notes

