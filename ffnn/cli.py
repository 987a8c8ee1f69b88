"""ffnn: does a bigger feed-forward net actually do better? Train, track, tune, report.

Argument parsing, progress and printing only; the work lives in the modules.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

DEFAULT_CONFIG = "experiments/compare.toml"


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default="data", help="where the dataset files live (torchvision layout)")
    p.add_argument("--data-source", default=None,
                   help="folder with the four .gz IDX files to copy from (env FFNN_DATA_SOURCE)")


def _tracking_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (env MLFLOW_TRACKING_URI; default sqlite:///mlruns/mlflow.db)")


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
    p.add_argument("--dataset", default=None, help="mnist or fashion-mnist (default: the file's, mnist)")
    p.add_argument("--experiment", default=None, help="MLflow experiment name (default: the file's)")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
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
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///mlruns/optuna.db)")
    p.add_argument("--study-name", default=None, help="study name (default: tune-<model>)")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing one study")
    p.add_argument("--sampler", choices=["tpe", "random"], default=None, help="Optuna sampler (default tpe)")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default=None,
                   help="Optuna pruner (default median)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the file's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="training device")
    p.add_argument("--iters", type=int, default=None, help="optimizer steps per trial (default 3000)")
    p.add_argument("--final", action="store_true",
                   help="retrain each study's best configuration on the full training set over --seeds seeds "
                        "and log them as comparison runs (model name e.g. C*)")
    p.add_argument("--seeds", type=int, default=5, help="seeds for --final")
    _data_flags(p)
    _tracking_flags(p)

    p = sub.add_parser("data", formatter_class=Formatter, help="fetch and verify a dataset",
                       description="Put the verified dataset files into --data-dir.")
    p.add_argument("--dataset", default="mnist", help="mnist or fashion-mnist")
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
    from .compare import compare
    from .config import build_compare_config, read_toml

    file_values = read_toml(args.config) if (args.config != DEFAULT_CONFIG or Path(args.config).exists()) else {}
    overrides = {"models": args.models, "seeds": args.seeds, "iters": args.iters, "eval_every": args.eval_every,
                 "lr": args.lr, "batch_size": args.batch_size, "device": args.device, "dataset": args.dataset,
                 "experiment": args.experiment, "workers": args.workers}
    cfg = build_compare_config(file_values, overrides)
    rows, tracker, exp_id = compare(cfg, args.data_dir, args.data_source, args.tracking_uri, _progress([]))
    print_table(rows, cfg)
    print(f"\nruns in MLflow: experiment {cfg.experiment!r} at {tracker.uri}  (make ui to browse)")
    return 0


def cmd_data(args) -> int:
    from . import data
    folder = data.prepare(data.get_spec(args.dataset), args.data_dir, args.data_source)
    print(f"{args.dataset}: verified files in {folder}")
    return 0


def cmd_report(args) -> int:
    raise NotImplementedError("report: being built")


def cmd_tune(args) -> int:
    raise NotImplementedError("tune: being built")


COMMANDS = {"compare": cmd_compare, "data": cmd_data, "report": cmd_report, "tune": cmd_tune}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import Interrupted, UserError
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"ffnn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"\nffnn {args.command}: interrupted by {e}; finished runs are kept, "
              f"run the same command again to resume", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"\nffnn {args.command}: interrupted; finished runs are kept, "
              f"run the same command again to resume", file=sys.stderr)
        return 130


def main_exit() -> None:
    sys.exit(main())
