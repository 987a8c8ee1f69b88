"""``ffnn cluster``, ``ffnn ray`` and ``ffnn ui``: the services a command starts, stops or shows, and what it
prints about them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol

from .errors import Interrupted


def cluster(args) -> int:
    from .cluster import Cluster

    cluster = Cluster(args.root)

    def lines(up: dict[str, bool]) -> list[str]:
        out = [f"{name}: {'running' if running else 'stopped'}" for name, running in up.items()]
        if env := cluster.env():
            out += [f"MLFLOW_TRACKING_URI={env['MLFLOW_TRACKING_URI']}",
                    f"FFNN_OPTUNA_STORAGE={env['FFNN_OPTUNA_STORAGE']}",
                    f"credentials in {cluster.env_file} (mode 0600); on each machine: "
                    f"set -a; . {cluster.env_file}; set +a"]
        return out

    return _serve(args.action, cluster,
                  lambda: cluster.start(args.host, args.port, args.pg_port, args.advertise, args.network), lines)


def ray(args) -> int:
    from .ray_cluster import RayCluster

    cluster = RayCluster(args.root)
    return _serve(args.action, cluster, lambda: cluster.start(args.host, args.port, args.cpus),
                  lambda up: cluster.summary(up, joining=args.action == "start"))


class _Service(Protocol):
    def stop(self) -> list[str]: ...

    def status(self) -> dict[str, bool]: ...


def _serve(action: str, service: _Service, start: Callable[[], object],
           lines: Callable[[dict[str, bool]], list[str]]) -> int:
    """``start``, ``stop`` or ``status`` of a service: what stopped, or each part's state and how to use it;
    status exits 1 when a part is down."""
    if action == "stop":
        stopped = service.stop()
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return 0
    if action == "start":
        start()
    up = service.status()
    if text := lines(up):
        print("\n".join(text))
    return 0 if action != "status" or all(up.values()) else 1


def ui(args) -> int:
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
