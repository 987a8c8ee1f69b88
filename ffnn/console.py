"""What the commands print: progress drawn from the workflows' events, and the result tables.

Progress and notes go to stderr, results to stdout, so that ``ffnn compare > table.txt`` keeps the table.
"""

from __future__ import annotations

import math
import statistics
import sys
from typing import TYPE_CHECKING, Any

from .events import Event, Note, Planned, Trained

if TYPE_CHECKING:
    from .compare import RunRow
    from .config import CompareConfig, TuneConfig
    from .registry import Registered
    from .tune import TuneResult


class Progress:
    """A tqdm bar of the runs being trained on a terminal, a line per event otherwise."""

    def __init__(self, tty: bool | None = None):
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar: Any = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Note):
            print(event.text, file=sys.stderr, flush=True)
        elif isinstance(event, Planned):
            print(f"{event.done} of {event.total} runs already finished; training {event.training}",
                  file=sys.stderr, flush=True)
            if self.tty and event.training:
                from tqdm import tqdm
                self.bar = tqdm(total=event.training, unit="run", file=sys.stderr)
        elif isinstance(event, Trained):
            line = (f"{event.label}: {event.accuracy:.2f}% in {event.seconds:.1f}s" if event.error is None
                    else f"{event.label}: FAILED ({event.error.splitlines()[0]})")
            if self.bar is None:
                print(line, file=sys.stderr, flush=True)
                return
            self.bar.set_postfix_str(line)
            self.bar.update(1)
            if self.bar.n >= self.bar.total:
                self.bar.close()
                self.bar = None


def mean_sd(values: list[float], spec: str = ".2f") -> str:
    """``"95.78 +/- 0.12"``; one value alone; ``"-"`` for none."""
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{statistics.mean(values):{spec}} +/- {statistics.stdev(values):{spec}}"


def print_table(rows: list[RunRow], cfg: CompareConfig) -> None:
    print(f"\n{'model':<6} {'spec':<24} {'runs':>5} {'final test acc (%)':>20} {'mean s':>8}  failed")
    for m in cfg.models:
        mine = [r for r in rows if r.model == m]
        ok = [r for r in mine if r.status == "FINISHED"]
        acc = [r.accuracy for r in ok if not math.isnan(r.accuracy)]
        secs = [r.seconds for r in ok]
        failed = [r for r in mine if r.status != "FINISHED"]
        fail_txt = "; ".join(f"seed {r.seed}: {r.status} {r.failure}".strip() for r in failed)
        print(f"{m:<6} {cfg.spec(m).describe():<24} {len(ok):>5} {mean_sd(acc):>20} "
              f"{(statistics.mean(secs) if secs else float('nan')):>8.2f}  {fail_txt}")


def print_failed(rows: list[RunRow]) -> None:
    failed = [r for r in rows if r.status == "FAILED"]
    if failed:
        print(f"\n{len(failed)} of {len(rows)} runs FAILED (see the table): exit status 1", file=sys.stderr)


def print_registered(registered: list[Registered]) -> None:
    for r in registered:
        print(f"registered {r.model} seed {r.seed} ({r.accuracy:.2f}%): {r.uri} (version {r.version})")


def print_report(report: Any) -> None:
    """The evidence, notes and the short verdict list; where the files went."""
    print(f"\nreport on {', '.join(report.cfg.experiments)}: {report.evidence()}")
    for note in report.notes:
        print(f"  note: {note}")
    if len(report.comparisons):
        print(f"verdicts ({report.verdict_header()}):")
        for line in report.verdict_lines():
            print(f"  {line}")
    else:
        print("no capacity steps among the models present: nothing to compare")
    if report.files:
        names = " ".join(p.name for p in report.files)
        logged = f"; logged to run {report.parent_run_id} (artifacts report/)" if report.parent_run_id else ""
        print(f"files in {report.out}/: {names}{logged}")


def print_tune(res: TuneResult, cfg: TuneConfig) -> None:
    print(f"\n{'study':<14} {'trials':>6} {'done/pruned/failed':>18} {'per min':>8} {'best val acc (%)':>17}  "
          f"best configuration")
    for s in res.studies:
        st = s.states
        best = (f"{s.best_value:17.2f}  {s.best_spec.describe()}, lr {s.best_params['lr']:.3g} (trial {s.best_number})"
                if s.best_spec is not None else f"{'-':>17}")
        counts = f"{st.get('COMPLETE', 0)}/{st.get('PRUNED', 0)}/{st.get('FAIL', 0)}"
        rate = f"{s.trials_per_minute:8.2f}" if s.finished_now else f"{'-':>8}"
        print(f"{s.name:<14} {sum(st.values()):>6} {counts:>18} {rate} {best}")
        for note in s.notes:
            print(f"  note: {note}")
    n, minutes = sum(s.finished_now for s in res.studies), sum(s.seconds for s in res.studies) / 60
    if n:
        print(f"\nthis invocation: {n} trials in {minutes:.1f} min ({n / minutes:.1f} per minute) "
              f"with {res.workers} training process(es)")
    if res.studies:
        first = res.studies[0]
        if first.out is not None:
            print(f"best params and plots: {first.out.parent}/<study>/best_params.json, plots.html")
        print(f"trials in Optuna: optuna trials --study-name {first.name} --storage {res.storage}  "
              f"(make dashboard to browse)")
    print(f"runs in MLflow: experiment {cfg.experiment!r} at {res.tracking_uri}, one parent run per study")


def print_final(res: TuneResult) -> None:
    """The retrained best configurations of ``tune --final`` beside their tutorial models."""
    print(f"\n{'model':<6} {'spec':<28} {'runs':>5} {'final test acc (%)':>20}")
    for name, rows in res.final.items():
        acc = [r.accuracy for r in rows if r.status == "FINISHED" and not math.isnan(r.accuracy)]
        spec = res.final_specs.get(name)
        print(f"{name:<6} {(spec.describe() if spec else 'tutorial'):<28} {len(acc):>5} {mean_sd(acc):>20}")
