"""``ffnn cluster``, ``ffnn ray`` and ``ffnn ui``: the services a command starts, stops or shows, and what it
prints about them."""

from __future__ import annotations

import sys

from .errors import Interrupted


def cluster(args) -> int:
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


def ray(args) -> int:
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
