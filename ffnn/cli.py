"""ffnn: does a bigger feed-forward net actually do better? Train, track, tune, report.

Argument parsing, progress and printing only; the work lives in the modules.
"""

from __future__ import annotations

import argparse
import atexit
import math
import os
import signal
import statistics
import sys
import threading
import traceback
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import Fault, Interrupted, UserError, fault_line, install_interrupt_handlers

if TYPE_CHECKING:  # the modules themselves are imported where a command needs them
    from .compare import RunRow
    from .tracking import Tracker

DEFAULT_CONFIG = "experiments/compare.toml"


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows an option's default, except where it is None or False: those options say in their help
    what happens without them (e.g. "default: the file's, 5"), and "(default: None)" would contradict it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False):
            return action.help or ""
        return super()._get_help_string(action) or ""


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default="data", help="where the dataset files live (torchvision layout)")
    p.add_argument("--data-source", default=None,
                   help="folder with the four .gz IDX files to copy from (env FFNN_DATA_SOURCE)")


def _tracking_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (env MLFLOW_TRACKING_URI; default sqlite:///mlruns/mlflow.db)")


def _ray_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="train on the Ray cluster at ADDRESS (default: $RAY_ADDRESS), one task per stack; this "
                        "process alone records the results (make ray starts a local cluster)")


def _register_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--register", action="store_true",
                   help="register each model's best seed (highest final test accuracy) in the MLflow Model "
                        "Registry as <experiment>-<model> with alias 'best' (C* -> <experiment>-C-tuned)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ffnn", description=__doc__.splitlines()[0], formatter_class=Formatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compare", formatter_class=Formatter,
                       help="train every model over several seeds; every run lands in MLflow",
                       description="Train every (model, seed) of an experiment file; runs already FINISHED "
                                   "with the same config are skipped.")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="experiment file (TOML)")
    p.add_argument("--models", default=None, help="comma list of model names (default: the file's, LR,A,B,C,D,E)")
    p.add_argument("--seeds", type=int, default=None, help="runs per model, seeds 0..N-1 (default: the file's, 5)")
    p.add_argument("--iters", type=int, default=None, help="optimizer steps per run (default 3000)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between test evaluations (default 500)")
    p.add_argument("--lr", type=float, default=None, help="SGD learning rate (default 0.1)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per step (default 100)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="training device (default auto)")
    p.add_argument("--workers", type=int, default=None, help="training processes (default: one per CPU core)")
    p.add_argument("--stack-size", type=int, default=None,
                   help="seeds of one model trained together in one pass (default: chosen for the device)")
    p.add_argument("--divergence-threshold", type=float, default=None,
                   help="a seed whose training loss stays above this for --divergence-window steps is stopped "
                        "and recorded FAILED (default 10 ln 10 = 23.03; a non-finite loss always is)")
    p.add_argument("--divergence-window", type=int, default=None,
                   help="consecutive steps above the threshold that count as diverged (default 100)")
    p.add_argument("--dataset", default=None,
                   help="mnist, fashion-mnist, digits (scikit-learn's 8x8, bundled) or a path to an .npz file "
                        "with x_train, y_train, x_test, y_test (default: the file's, mnist)")
    p.add_argument("--experiment", default=None, help="MLflow experiment name (default: the file's)")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    _ray_flag(p)
    _register_flag(p)
    p.add_argument("--until-decided", action="store_true",
                   help="add --round seeds per model at a time until every step of the tutorial's chain is "
                        "helped, hurt or equivalent (sequential rule, see the report's method), or --max-seeds")
    p.add_argument("--max-seeds", type=int, default=60, help="--until-decided: seeds per model at most")
    p.add_argument("--round", type=int, default=10, help="--until-decided: seeds added per model per round")
    p.add_argument("--margin", type=float, default=0.2,
                   help="--until-decided: points of accuracy within which two models count as equivalent")
    _data_flags(p)
    _tracking_flags(p)

    p = sub.add_parser("report", formatter_class=Formatter,
                       help="statistics on which capacity increases helped; tables, plots, exports",
                       description="Read finished runs from MLflow (never trains) and say, per capacity step, "
                                   "whether it helped, with confidence intervals and Holm-corrected p-values.")
    p.add_argument("--experiment", action="append", default=None,
                   help="MLflow experiment to report on; repeat for several (default: compare)")
    p.add_argument("--models", default=None, help="comma list of model names to include (default: all)")
    p.add_argument("--out", default=None, help="output folder (default: reports/<experiment>/)")
    p.add_argument("--formats", default="csv,md,tex,html,png",
                   help="comma list of csv, md, tex, html, png")
    p.add_argument("--margin", type=float, default=0.2,
                   help="points of accuracy within which two models count as equivalent "
                        "(an --until-decided experiment keeps its own)")
    _tracking_flags(p)

    p = sub.add_parser("tune", formatter_class=Formatter,
                       help="Optuna study of hidden sizes and learning rate per architecture",
                       description="Tune each architecture family on a validation split held out from the "
                                   "training set; every trial is a nested MLflow run.")
    p.add_argument("--config", default="experiments/tune.toml", help="tuning file (TOML)")
    p.add_argument("--model", action="append", default=None,
                   help="architecture family to tune (A-E); repeat or comma list (default: all in the file)")
    p.add_argument("--n-trials", type=int, default=None, help="trials per study (default: the file's)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per study (default: none)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: an RDB URL (sqlite:///..., postgresql://...) or a journal file path "
                        "(default: env FFNN_OPTUNA_STORAGE, else the file's, sqlite:///mlruns/optuna.db)")
    p.add_argument("--study-name", default=None, help="study name (default: tune-<model>)")
    p.add_argument("--workers", type=int, default=None,
                   help="training processes sharing each study; 0 = one per CPU core (default: the file's, 0)")
    p.add_argument("--sampler", choices=["tpe", "random"], default=None, help="Optuna sampler (default tpe)")
    p.add_argument("--sampler-seed", type=int, default=None,
                   help="seeds the sampler: trial n draws with a seed from (N, n), so the same command on a fresh "
                        "study samples the same configurations (default: the file's, 0)")
    p.add_argument("--trial-seeds", type=int, default=None,
                   help="seeds per trial, trained in one stack; the objective is their mean validation accuracy "
                        "(default: the file's)")
    p.add_argument("--trial-batch", type=int, default=None,
                   help="trials asked and trained at once; 0 = 2 per CPU training process, 32 on a GPU "
                        "(default: the file's, 0)")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default=None,
                   help="Optuna pruner (default median)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the file's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="training device")
    p.add_argument("--iters", type=int, default=None, help="optimizer steps per trial (default 3000)")
    p.add_argument("--final", action="store_true",
                   help="retrain each study's best configuration on the full training set over --seeds seeds "
                        "and log them as comparison runs (model name e.g. C*)")
    p.add_argument("--seeds", type=int, default=None, help="seeds for --final (default: the file's, 5)")
    p.add_argument("--dataset", default=None,
                   help="mnist, fashion-mnist, digits or an .npz file, as for compare (default: the file's, mnist)")
    _ray_flag(p)
    _register_flag(p)
    _data_flags(p)
    _tracking_flags(p)

    p = sub.add_parser("ui", formatter_class=Formatter, help="browse the runs in the MLflow UI",
                       description="Start the MLflow UI on the project's store, bound to 127.0.0.1; Ctrl-C stops it.")
    p.add_argument("--port", type=int, default=5000, help="port; 0 picks a free one")
    _tracking_flags(p)

    p = sub.add_parser("cluster", formatter_class=Formatter,
                       help="start/stop a PostgreSQL and an MLflow server for several machines",
                       description="Start (in the background), stop or show a local PostgreSQL (Optuna's studies, "
                                   "MLflow's runs) and an authenticated MLflow tracking server serving artifacts; "
                                   "data, logs and state under ROOT/cluster/, the URIs and credentials in "
                                   "ROOT/cluster.env (mode 0600). Starting again reuses the data.")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--root", default="mlruns", help="folder holding cluster/ and cluster.env")
    p.add_argument("--host", default="127.0.0.1", help="address both services bind to; 0.0.0.0 serves other machines")
    p.add_argument("--port", type=int, default=None, help="MLflow server port (default: last time's, else a free one)")
    p.add_argument("--pg-port", type=int, default=None, help="PostgreSQL port (default: last time's, else a free one)")
    p.add_argument("--advertise", default=None,
                   help="host name other machines use in the URIs (default: --host, or this machine's name)")
    p.add_argument("--network", default=None,
                   help="who may log in to PostgreSQL, as a pg_hba address (default: 127.0.0.1/32 on loopback, "
                        "samenet with --host 0.0.0.0)")

    p = sub.add_parser("ray", formatter_class=Formatter, help="start/stop a local Ray cluster for --ray",
                       description="Start (in the background), stop or show a local Ray cluster: a head and one "
                                   "worker node, dashboard and usage statistics off, a capped object store; "
                                   "RAY_ADDRESS and its token in ROOT/ray.env (mode 0600).")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--root", default="mlruns", help="folder holding ray/ and ray.env")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address in ray.env; 0.0.0.0: this machine's, for other machines to join")
    p.add_argument("--port", type=int, default=None, help="the head's port (default: last time's, else a free one)")
    p.add_argument("--cpus", type=int, default=None,
                   help="CPUs of the two nodes together, half to each (default: this machine's cores)")

    p = sub.add_parser("data", formatter_class=Formatter, help="fetch and verify a dataset",
                       description="Put the verified dataset files into --data-dir.")
    p.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist, digits or an .npz file (checked)")
    _data_flags(p)
    return parser


def _progress(total_hint: list[int]):
    """A tqdm bar on a terminal, plain lines otherwise."""
    bar = None
    tty = sys.stderr.isatty()

    def say(msg: str, result) -> None:
        nonlocal bar
        if result is None:
            print(msg, file=sys.stderr, flush=True)
            if tty and "training" in msg:
                from tqdm import tqdm
                n = int(msg.rsplit("training", 1)[1])
                bar = tqdm(total=n, unit="run", file=sys.stderr)
            return
        line = (f"{msg}: {result.accuracy:.2f}% in {result.seconds:.1f}s" if result.error is None
                else f"{msg}: FAILED ({result.error.splitlines()[0]})")
        if bar is not None:
            bar.set_postfix_str(line)
            bar.update(1)
            if bar.n >= bar.total:
                bar.close()
        else:
            print(line, file=sys.stderr, flush=True)
    return say


def _fmt(values: list[float], spec: str = ".2f") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{statistics.mean(values):{spec}} +/- {statistics.stdev(values):{spec}}"


def print_table(rows, cfg) -> None:
    print(f"\n{'model':<6} {'spec':<24} {'runs':>5} {'final test acc (%)':>20} {'mean s':>8}  failed")
    for m in cfg.models:
        mine = [r for r in rows if r.model == m]
        ok = [r for r in mine if r.status == "FINISHED"]
        acc = [r.accuracy for r in ok if not math.isnan(r.accuracy)]
        secs = [r.seconds for r in ok]
        failed = [r for r in mine if r.status != "FINISHED"]
        fail_txt = "; ".join(f"seed {r.seed}: {r.status} {r.failure}".strip() for r in failed)
        print(f"{m:<6} {cfg.spec(m).describe():<24} {len(ok):>5} {_fmt(acc):>20} "
              f"{(statistics.mean(secs) if secs else float('nan')):>8.2f}  {fail_txt}")


def cmd_compare(args) -> int:
    from .config import build_compare_config, read_toml

    file_values = read_toml(args.config) if (args.config != DEFAULT_CONFIG or Path(args.config).exists()) else {}
    overrides = {"models": args.models, "seeds": args.seeds, "iters": args.iters, "eval_every": args.eval_every,
                 "lr": args.lr, "batch_size": args.batch_size, "device": args.device, "dataset": args.dataset,
                 "experiment": args.experiment, "workers": args.workers, "stack_size": args.stack_size,
                 "divergence_threshold": args.divergence_threshold, "divergence_window": args.divergence_window}
    cfg = build_compare_config(file_values, overrides)
    with build_context(cfg.dataset, cfg.device, args) as ctx:
        cfg = ctx.bind(cfg)  # specs sized to the data's inputs and classes
        rows, cfg = _train_comparison(cfg, ctx, args)
    print_table(rows, cfg)
    print(f"\nruns in MLflow: experiment {cfg.experiment!r} at {ctx.tracker.uri}  (make ui to browse)")
    if args.register:
        register_best(cfg.experiment, ctx.tracker, rows)
    if not args.no_report:
        report_after(cfg.experiment, ctx.tracker.uri)
    return exit_status(rows)


def _train_comparison(cfg, ctx, args):
    """Train (in rounds with --until-decided). The training processes start first, so that they load torch
    and the data while this process imports MLflow and opens the store."""
    from .train.jobs import run_stack
    ctx.engine(run_stack, ctx.worker_count(cfg.workers, len(cfg.models) * cfg.seeds))
    if args.until_decided:
        from .report import Design
        from .until_decided import until_decided
        res = until_decided(cfg, Design(margin=args.margin, round=args.round, max_seeds=args.max_seeds), ctx,
                            _progress([]), lambda msg: print(msg, file=sys.stderr, flush=True))
        per = ", ".join(f"{m} {n}" for m, n in res.seeds_per_model().items())
        print(f"\n--until-decided: {res.runs} runs ({per} seeds); the {res.family} family is "
              f"{'decided' if res.decided else f'not decided at --max-seeds {args.max_seeds}'}")
        return res.rows, replace(cfg, seeds=res.seeds)
    from .compare import compare
    rows, _ = compare(cfg, ctx, _progress([]))
    return rows, cfg


def exit_status(rows) -> int:
    """0 when no requested run ended FAILED, else 1 (after saying how many)."""
    failed = [r for r in rows if r.status == "FAILED"]
    if failed:
        print(f"\n{len(failed)} of {len(rows)} runs FAILED (see the table): exit status 1", file=sys.stderr)
    return 1 if failed else 0


def register_best(experiment: str, tracker: Tracker, rows: list[RunRow]) -> None:
    """Each model's best FINISHED seed, by final test accuracy, as ``models:/<experiment>-<model>@best``."""
    from .tracking import BEST_ALIAS, registry_name

    best: dict[str, RunRow] = {}
    for r in rows:
        if r.status == "FINISHED" and r.run_id and not math.isnan(r.accuracy) and \
                (r.model not in best or r.accuracy > best[r.model].accuracy):
            best[r.model] = r
    for model, r in best.items():
        name = registry_name(experiment, model)
        version = tracker.register_model(
            name, r.run_id, description=f"{model} seed {r.seed} of experiment {experiment!r}: the best final "
                                        f"test accuracy ({r.accuracy:.2f}%) among its seeds, so an optimistic one")
        print(f"registered {model} seed {r.seed} ({r.accuracy:.2f}%): models:/{name}@{BEST_ALIAS} (version {version})")


def build_context(dataset: str, device: str, args):
    """The one context a command works on: data verified, tracker opened, device resolved."""
    from .context import Context
    return Context.build(dataset, args.data_dir, args.data_source, device, args.tracking_uri,
                         getattr(args, "ray", None))


def cmd_data(args) -> int:
    from . import datasets
    _, where, shape = datasets.resolve(args.dataset, args.data_dir, args.data_source)
    print(f"{args.dataset}: verified files in {where} ({shape.n_train} train, {shape.n_test} test examples of "
          f"{shape.n_features} features, {shape.n_classes} classes)")
    return 0


def print_report(report) -> None:
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


def report_after(experiment: str, tracking_uri: str) -> None:
    """The report at the end of a command that trained: a problem with it does not fail the command."""
    from .report import ReportConfig, make_report
    try:
        print_report(make_report(ReportConfig(experiments=(experiment,)), tracking_uri))
    except UserError as e:
        print(f"report skipped: {e}", file=sys.stderr)


def cmd_report(args) -> int:
    from .report import build_report_config, make_report
    cfg = build_report_config(args.experiment, args.models, args.out, args.formats, args.margin)
    print_report(make_report(cfg, args.tracking_uri))
    return 0


def print_tune(res, cfg) -> None:
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
        print(f"best params and plots: {first.out.parent}/<study>/best_params.json, plots.html")
        print(f"trials in Optuna: optuna trials --study-name {first.name} --storage {res.storage}  "
              f"(make dashboard to browse)")
    print(f"runs in MLflow: experiment {cfg.experiment!r} at {res.tracking_uri}, one parent run per study")


def cmd_tune(args) -> int:
    from .config import build_tune_config, read_toml
    from .tune import tune

    overrides = {"models": args.model, "n_trials": args.n_trials, "timeout": args.timeout,
                 "storage": args.storage or os.environ.get("FFNN_OPTUNA_STORAGE"), "study_name": args.study_name,
                 "workers": args.workers, "sampler_seed": args.sampler_seed, "trial_seeds": args.trial_seeds,
                 "trial_batch": args.trial_batch,
                 "sampler": args.sampler, "pruner": args.pruner, "experiment": args.experiment,
                 "device": args.device, "iters": args.iters, "final": args.final or None, "seeds": args.seeds,
                 "dataset": args.dataset}
    cfg = build_tune_config(read_toml(args.config), overrides)
    if args.register and not cfg.final:
        raise UserError("--register registers the models that --final retrains; pass --final too")
    with build_context(cfg.dataset, cfg.device, args) as ctx:
        res = tune(cfg, ctx, lambda msg: print(msg, file=sys.stderr, flush=True), _progress([]))
    print_tune(res, cfg)
    if res.final:
        print(f"\n{'model':<6} {'spec':<28} {'runs':>5} {'final test acc (%)':>20}")
        for name, rows in res.final.items():
            acc = [r.accuracy for r in rows if r.status == "FINISHED" and not math.isnan(r.accuracy)]
            spec = next(s.best_spec for s in res.studies if s.model == name.rstrip("*")) if name.endswith("*") \
                else None
            print(f"{name:<6} {(spec.describe() if spec else 'tutorial'):<28} {len(acc):>5} {_fmt(acc):>20}")
        rows = [r for found in res.final.values() for r in found]
        if args.register:
            register_best(cfg.final_experiment, ctx.tracker, rows)
        report_after(cfg.final_experiment, res.tracking_uri)
        return exit_status(rows)
    return 0


def cmd_cluster(args) -> int:
    from .cluster import Cluster

    cluster = Cluster(args.root)
    if args.action == "stop":
        stopped = cluster.stop()
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return 0
    if args.action == "start":
        cluster.start(args.host, args.port, args.pg_port, args.advertise, args.network)
    up = cluster.status()
    env = cluster.env()
    for name, running in up.items():
        print(f"{name}: {'running' if running else 'stopped'}")
    if env:
        print(f"MLFLOW_TRACKING_URI={env['MLFLOW_TRACKING_URI']}")
        print(f"FFNN_OPTUNA_STORAGE={env['FFNN_OPTUNA_STORAGE']}")
        print(f"credentials in {cluster.env_file} (mode 0600); on each machine: "
              f"set -a; . {cluster.env_file}; set +a")
    return 0 if args.action != "status" or all(up.values()) else 1


def cmd_ray(args) -> int:
    from .ray_cluster import RayCluster

    cluster = RayCluster(args.root)
    if args.action == "stop":
        stopped = cluster.stop()
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return 0
    if args.action == "start":
        cluster.start(args.host, args.port, args.cpus)
    up = cluster.status()
    print("\n".join(cluster.summary(up, joining=args.action == "start")))
    return 0 if args.action != "status" or all(up.values()) else 1


def cmd_ui(args) -> int:
    from .tracking import Tracker, runs_link, ui_server

    try:
        with ui_server(args.tracking_uri, args.port) as (url, server):
            print(f"MLflow UI at {url}  (Ctrl-C to stop); choose 'Model training' at the top of its sidebar "
                  f"to open experiments on their runs, or follow a direct link:")
            for exp_id, name in Tracker.open(args.tracking_uri).experiments():
                print(f"  runs of {name}: {runs_link(url, exp_id)}")
            sys.stdout.flush()
            server.wait()
    except (Interrupted, KeyboardInterrupt):
        print("MLflow UI stopped")
    return 0


COMMANDS = {"cluster": cmd_cluster, "compare": cmd_compare, "data": cmd_data, "ray": cmd_ray, "report": cmd_report,
            "tune": cmd_tune, "ui": cmd_ui}


def main(argv: list[str] | None = None) -> int:
    old = install_interrupt_handlers()
    try:
        return _run(build_parser().parse_args(argv))
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


def _run(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"ffnn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Fault as e:  # cleaned up already: its line says what is kept
        if os.environ.get("FFNN_DEBUG") == "1":
            traceback.print_exc()
        print(f"ffnn {args.command}: error: {e} (FFNN_DEBUG=1 shows the traceback)", file=sys.stderr)
        return e.code
    except Interrupted as e:
        print(f"\nffnn {args.command}: interrupted by {e}; finished runs are kept, "
              f"run the same command again to resume", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"\nffnn {args.command}: interrupted; finished runs are kept, "
              f"run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # anything unplanned: one line (FFNN_DEBUG=1 adds the traceback), exit 1
        if os.environ.get("FFNN_DEBUG") == "1":
            traceback.print_exc()
        print(f"ffnn {args.command}: error: {fault_line(e, places=_places(args))}; finished runs are kept, "
              f"run the same command again "
              f"to train what is missing (FFNN_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


def _places(args: argparse.Namespace) -> list[str]:
    """The files a command writes into (its stores and output folder), to name a full disk."""
    uris = [os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns/mlflow.db"), getattr(args, "storage", None)]
    if getattr(args, "tracking_uri", None):
        uris[0] = args.tracking_uri
    places = [u.removeprefix("sqlite:///") for u in uris if u and (u.startswith("sqlite:///") or "://" not in u)]
    return places + ([args.out] if getattr(args, "out", None) else [])


def main_exit() -> None:
    """The console script (and ``python -m ffnn``): ``main``, then a quick exit.

    Python's own teardown of the modules a command has imported (torch, MLflow, pandas, matplotlib) took
    1.1-1.35 s here and does nothing for the user. So once ``main`` is done and no other thread is left,
    the exit handlers run (logging, multiprocessing, MLflow's), the output is flushed and the process ends.
    """
    code = main()
    if threading.active_count() == 1:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
