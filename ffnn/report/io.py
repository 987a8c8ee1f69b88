"""The report's reading and writing: the only report module that talks to the store.

``make_report`` reads the experiments' runs, tags and curves, hands them to the pure modules (``build``,
``plots``, ``export``), records this look on the experiments and logs the files on the latest comparison.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..tracking import RUN_COLUMNS, TAG_LOOKS, TAG_SEQUENTIAL, Tracker
from .build import N_TEST, Analysis, Report, ReportConfig, analyse, assemble, design_from_tag
from .export import write_files
from .looks import add_look, parse_looks
from .plots import CAPACITY_MAP, capacity_map, render_plots
from .runs import ReportError, tidy_runs
from .sequential import Design


def open_experiments(tracker: Tracker, names: Sequence[str]) -> list[str]:
    """Experiment ids; an unknown name is an error that lists the experiments that exist."""
    ids = []
    for name in names:
        exp_id = tracker.experiment_id(name, create=False)
        if exp_id is None:
            existing = [e for e in tracker.experiment_names() if e != "Default"]
            have = f"existing: {', '.join(existing)}" if existing else "there are none yet; run `ffnn compare`"
            raise ReportError(f"--experiment: no experiment {name!r} at {tracker.uri}; {have}")
        ids.append(exp_id)
    return ids


def sequential_design(tracker: Tracker, exp_ids: Sequence[str]) -> Design | None:
    """The --until-decided design recorded on the experiments; pooled experiments must agree."""
    tags = {design_from_tag(tracker.experiment_tags(e).get(TAG_SEQUENTIAL)) for e in exp_ids}
    if len(tags) > 1:
        raise ReportError("--experiment: the experiments were run with different --until-decided designs; "
                          "report on them one at a time")
    return tags.pop()


def read_runs(tracker: Tracker, exp_ids: Sequence[str]) -> pd.DataFrame:
    """The experiments' runs as the report reads them (``runs.tidy_runs``); empty if there are none."""
    frame = tracker.runs_frame(list(exp_ids))
    return tidy_runs(frame) if len(frame) else pd.DataFrame()


def histories(tracker: Tracker, kept: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``test_accuracy`` and ``train_loss`` histories: columns model, seed, step (iteration), value."""
    out = {}
    for key in ("test_accuracy", "train_loss"):
        parts = []
        for r in kept.itertuples():
            h = tracker.metric_history(r.run_id, key)
            parts.append(h.assign(model=r.model, seed=r.seed))
        out[key] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            columns=["step", "value", "model", "seed"])
    return out


def record_look(tracker: Tracker, exp_ids: Sequence[str], result: Analysis) -> None:
    """Append this look to each experiment's ``TAG_LOOKS`` (nothing when it saw what the last one saw)."""
    for exp_id in exp_ids:
        text = add_look(parse_looks(tracker.experiment_tags(exp_id).get(TAG_LOOKS)), result.seeds, result.alpha,
                        result.margin)
        if text is not None:
            tracker.set_experiment_tags(exp_id, {TAG_LOOKS: text})


def make_report(cfg: ReportConfig, tracking_uri: str | None = None) -> Report:
    """Read, compute, plot, write the files and log them on the latest comparison parent run."""
    tracker = Tracker.open(tracking_uri)
    exp_ids = open_experiments(tracker, cfg.experiments)
    frame = tracker.runs_frame(exp_ids)
    runs = tidy_runs(frame) if len(frame) else pd.DataFrame()
    if runs.empty:
        where = ", ".join(repr(e) for e in cfg.experiments)
        raise ReportError(f"experiment {where} has no model runs; run `ffnn compare` first")
    design = sequential_design(tracker, exp_ids)
    looks = [x for e in exp_ids for x in parse_looks(tracker.experiment_tags(e).get(TAG_LOOKS))]
    result = analyse(runs, cfg, design, looks)
    sel, summary = result.sel, result.summary
    n_test = None
    datasets = set(summary["dataset"])
    if len(datasets) == 1 and not sel.kept.empty:
        n_test = tracker.dataset_profile(str(sel.kept["run_id"].iloc[-1])).get("num_test") or \
            N_TEST.get(next(iter(datasets)))
    report = assemble(cfg, tracker.uri, result, design, n_test)
    try:
        record_look(tracker, exp_ids, result)
    except Exception as e:  # a read-only or lost store must not hide the report
        report.notes.append(f"could not record this look on the experiment: {e}".splitlines()[0])
    figures = {}
    if {"png", "html"} & set(cfg.formats):
        figures = render_plots(sel, histories(tracker, sel.kept), summary, cfg.confidence, result.table,
                               result.margin)
        heatmap = capacity_map(report.capacity.cells) if report.capacity else None
        if heatmap is not None:
            figures[CAPACITY_MAP] = heatmap
    report.files = write_files(report, figures)

    kind = frame[RUN_COLUMNS["kind"]] if RUN_COLUMNS["kind"] in frame.columns else pd.Series("", index=frame.index)
    parents = frame[kind == "comparison"].sort_values("start_time")
    if parents.empty:
        report.notes.append("no comparison parent run in the experiment: files not logged to MLflow")
    elif report.files:
        report.parent_run_id = str(parents["run_id"].iloc[-1])
        try:
            tracker.log_paths(report.parent_run_id, report.files, "report")
        except Exception as e:  # the files are written; a store problem must not hide them
            report.notes.append(f"could not log the files to run {report.parent_run_id}: {e}".splitlines()[0])
            report.parent_run_id = None
    return report
