"""`ffnn cluster start|stop|status`: a PostgreSQL and an MLflow server for several machines.

Everything lives under ``<root>/cluster/`` (default ``mlruns/cluster/``): the
PostgreSQL data folder, the artifacts the tracking server serves, logs and a
state file with pids and ports (no secret). The credentials are generated once
and kept in ``<root>/cluster.env`` (mode 0600), which is also what other
machines source::

    MLFLOW_TRACKING_URI=http://host:port       MLFLOW_TRACKING_USERNAME / _PASSWORD
    FFNN_OPTUNA_STORAGE=postgresql+psycopg://ffnn@host:pgport/optuna    PGPASSWORD

PostgreSQL authenticates with scram-sha-256 (pg_hba admits only the given
network); the tracking server runs MLflow's ``basic-auth`` app. Neither
password is ever put on a command line, in a log or in a run. PostgreSQL
refuses to run as root, so as root it runs as the ``postgres`` system user.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError
from .tracking.server import WILDCARDS, free_port, kill_group, port_in_use, spawn, wait_until_up

PG_BIN = Path(os.environ.get("FFNN_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_HOME = Path("/var/lib/postgresql/ffnn")  # as root, for folders the postgres user cannot reach
USER = "ffnn"  # PostgreSQL role and MLflow user (the auth app's admin)
DATABASES = ("mlflow", "optuna", "mlflow_auth")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
START_TIMEOUT = 180  # seconds for the tracking server to answer (migrations on a first start)


class ClusterError(UserError):
    """The services cannot be started or stopped."""


@dataclass
class State:
    """What ``start`` chose, kept in ``cluster/state.json`` so that a restart reuses it."""

    host: str  # bind address
    advertise: str  # the name other machines use
    network: str  # pg_hba address field: a CIDR or "samenet"
    port: int  # MLflow server
    pg_port: int
    mlflow_pid: int = 0  # process group leader of `mlflow server`


class Cluster:
    """The two services of one ``root`` folder."""

    def __init__(self, root: str | Path = "mlruns"):
        self.root = Path(root).resolve()
        self.dir = self.root / "cluster"
        self.pgdata = self.dir / "pg"
        self.pgrun = self.dir / "pg-run"  # socket and server log, owned by whoever runs postgres
        if self._elsewhere().exists():  # an earlier start found this folder out of the postgres user's reach
            self.pgdata, self.pgrun = self._elsewhere() / "pg", self._elsewhere() / "pg-run"
        self.artifacts = self.dir / "artifacts"
        self.env_file = self.root / "cluster.env"
        self.state_file = self.dir / "state.json"
        self.mlflow_log = self.dir / "mlflow.log"
        self.auth_ini = self.dir / "basic_auth.ini"

    # ------------------------------------------------------------ files
    def state(self) -> State | None:
        if not self.state_file.exists():
            return None
        return State(**json.loads(self.state_file.read_text()))

    def _save(self, st: State) -> None:
        self.state_file.write_text(json.dumps(asdict(st), indent=2) + "\n")

    def env(self) -> dict[str, str]:
        """The variables of ``cluster.env``; empty when there is none."""
        if not self.env_file.exists():
            return {}
        out = {}
        for line in self.env_file.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, _, v = line.partition("=")
                out[k.strip()] = v.strip()
        return out

    def _write_env(self, st: State, pg_password: str, mlflow_password: str) -> None:
        lines = [
            "# ffnn cluster: source it (set -a; . mlruns/cluster.env; set +a) on every machine; keep it private",
            f"MLFLOW_TRACKING_URI=http://{_url_host(st.advertise)}:{st.port}",
            f"MLFLOW_TRACKING_USERNAME={USER}",
            f"MLFLOW_TRACKING_PASSWORD={mlflow_password}",
            f"FFNN_OPTUNA_STORAGE=postgresql+psycopg://{USER}@{_url_host(st.advertise)}:{st.pg_port}/optuna",
            f"PGPASSWORD={pg_password}",
        ]
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.env_file, 0o600)

    # ------------------------------------------------------------ postgres
    def _pg_user(self) -> str | None:
        """The user postgres runs as: None for the current one, ``postgres`` when we are root."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ClusterError("PostgreSQL refuses to run as root and there is no 'postgres' user "
                               "(apt-get install postgresql creates it), or run as an ordinary user") from None
        return "postgres"

    def _as_pg(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        user = self._pg_user()
        cmd = (["runuser", "-u", user, "--"] if user else []) + argv
        return subprocess.run(cmd, capture_output=True, text=True, **kw)

    def _give_to_pg(self, *folders: Path) -> None:
        user = self._pg_user()
        for d in folders:
            d.mkdir(parents=True, exist_ok=True)
            if user:
                shutil.chown(d, user, user)
            os.chmod(d, 0o700)
        if user and self._as_pg(["test", "-w", str(folders[-1])]).returncode != 0:
            if self.pgdata != self.dir / "pg":
                raise ClusterError(f"user postgres cannot reach {folders[-1]} (PostgreSQL refuses to run as root)")
            # e.g. a checkout under /root: the data go to the postgres user's home, keyed by this folder,
            # with a link where they would be
            home = self._elsewhere()
            home.mkdir(parents=True, exist_ok=True)
            shutil.chown(home, user, user)
            self.pgdata, self.pgrun = home / "pg", home / "pg-run"
            for link, target in ((self.dir / "pg", self.pgdata), (self.dir / "pg-run", self.pgrun)):
                if link.is_dir() and not link.is_symlink():
                    link.rmdir()
                if not link.exists():
                    link.symlink_to(target)
            self._give_to_pg(*[self.pgdata if d == self.dir / "pg" else self.pgrun for d in folders])

    def _elsewhere(self) -> Path:
        """Where the PostgreSQL data of this folder live when the postgres user cannot reach it."""
        return PG_HOME / hashlib.sha256(str(self.root).encode()).hexdigest()[:16]

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess:
        return self._as_pg([str(PG_BIN / "pg_ctl"), "-D", str(self.pgdata), *args])

    def _pg_running(self) -> bool:
        return self.pgdata.exists() and self._pg_ctl("status").returncode == 0

    def _init_pg(self, password: str, network: str) -> None:
        self._give_to_pg(self.pgdata, self.pgrun)
        pwfile = self.pgrun / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        if user := self._pg_user():
            shutil.chown(pwfile, user, user)
        try:
            out = self._as_pg([str(PG_BIN / "initdb"), "-D", str(self.pgdata), "-U", USER, "-E", "UTF8",
                               "--locale=C", "--auth=scram-sha-256", f"--pwfile={pwfile}"])
        finally:
            pwfile.unlink(missing_ok=True)
        if out.returncode != 0:
            raise ClusterError(f"initdb failed: {(out.stderr or out.stdout).strip().splitlines()[-1]}")

    def _write_hba(self, network: str) -> None:
        """Only password logins (scram-sha-256), only from this machine and ``network``."""
        rules = ["local all all scram-sha-256", "host all all 127.0.0.1/32 scram-sha-256"]
        if network not in ("127.0.0.1/32",):
            rules.append(f"host all all {network} scram-sha-256")
        hba = self.pgdata / "pg_hba.conf"
        text = "# written by ffnn cluster start\n" + "\n".join(rules) + "\n"
        out = self._as_pg(["tee", str(hba)], input=text)
        if out.returncode != 0:
            raise ClusterError(f"cannot write {hba}: {out.stderr.strip()}")

    def _start_pg(self, st: State) -> None:
        self._give_to_pg(self.pgrun)
        self._write_hba(st.network)
        listen = "*" if st.host in WILDCARDS else st.host
        opts = f"-c listen_addresses='{listen}' -p {st.pg_port} -c unix_socket_directories='{self.pgrun}'"
        out = self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.pgrun / "postgresql.log"), "-o", opts)
        if out.returncode != 0:
            raise ClusterError(f"PostgreSQL did not start: {(out.stderr or out.stdout).strip().splitlines()[-1]}"
                               f"; see {self.pgrun / 'postgresql.log'}")

    def _create_databases(self, st: State, password: str) -> None:
        import psycopg
        with psycopg.connect(host="127.0.0.1", port=st.pg_port, user=USER, password=password, dbname="postgres",
                             autocommit=True, connect_timeout=10) as conn:
            have = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
            for db in DATABASES:
                if db not in have:
                    conn.execute(f'CREATE DATABASE "{db}"')

    # ------------------------------------------------------------ mlflow
    def _start_mlflow(self, st: State, pg_password: str, mlflow_password: str) -> int:
        db = f"postgresql+psycopg://{USER}@127.0.0.1:{st.pg_port}"
        self.auth_ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {db}/mlflow_auth\n"
                                 f"admin_username = {USER}\n"
                                 "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                                 # without it every request re-hashes the password (PBKDF2): ~0.3 s each
                                 "auth_cache_ttl_seconds = 300\n")
        self.artifacts.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
               "--backend-store-uri", f"{db}/mlflow", "--serve-artifacts",
               "--artifacts-destination", str(self.artifacts), "--host", st.host, "--port", str(st.port),
               "--workers", "2"]
        if st.host not in LOOPBACK:
            names = [st.advertise, "localhost", "127.0.0.1"]
            cmd += ["--allowed-hosts", ",".join(f"{n},{n}:*" for n in names)]
        # the passwords go through the environment: never on a command line (ps) or in the ini file
        env = {**os.environ, "PGPASSWORD": pg_password, "MLFLOW_AUTH_CONFIG_PATH": str(self.auth_ini),
               "MLFLOW_AUTH_ADMIN_USERNAME": USER, "MLFLOW_AUTH_ADMIN_PASSWORD": mlflow_password,
               # signs the UI's CSRF tokens; a new one per start only logs browsers out
               "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32)}
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(k, None)
        proc = spawn(cmd, self.mlflow_log, env)
        url = f"http://127.0.0.1:{st.port}" if st.host in WILDCARDS else f"http://{_url_host(st.host)}:{st.port}"
        wait_until_up(proc, lambda: request(url, "/api/2.0/mlflow/experiments/search?max_results=1", USER,
                                            mlflow_password) == 200,
                      url, START_TIMEOUT, self.mlflow_log, ClusterError)
        return proc.pid

    def _mlflow_running(self, st: State | None) -> bool:
        return bool(st and st.mlflow_pid and _is_mlflow(st.mlflow_pid))

    # ------------------------------------------------------------ commands
    def start(self, host: str = "127.0.0.1", port: int | None = None, pg_port: int | None = None,
              advertise: str | None = None, network: str | None = None) -> State:
        """Start both services (a no-op for one already up); the same data, ports and passwords as last time."""
        if not (PG_BIN / "pg_ctl").exists():
            raise ClusterError(f"PostgreSQL 15 is not installed ({PG_BIN}/pg_ctl missing): "
                               f"apt-get install postgresql")
        old = self.state()
        env = self.env()
        if self.pgdata.exists() and not env.get("PGPASSWORD"):
            raise ClusterError(f"{self.pgdata} exists but {self.env_file} with its password does not; "
                               f"restore it, or remove {self.dir} to start afresh")
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o711)
        if self._pg_running() and not old:
            raise ClusterError(f"PostgreSQL runs on {self.pgdata} but {self.state_file} is missing; "
                               f"stop it with pg_ctl -D {self.pgdata} stop")
        if old and (self._mlflow_running(old) or self._pg_running()) \
                and (host, port or old.port, pg_port or old.pg_port) != (old.host, old.port, old.pg_port):
            raise ClusterError("the cluster is running with other settings; ffnn cluster stop first")
        advertise = advertise or (socket.getfqdn() if host in WILDCARDS else host)
        if network is None:
            network = "127.0.0.1/32" if host in LOOPBACK else ("samenet" if host in WILDCARDS else f"{host}/32")
        st = State(host, advertise, network, port or (old.port if old else 0), pg_port or (old.pg_port if old else 0),
                   old.mlflow_pid if old else 0)
        pg_password = env.get("PGPASSWORD") or secrets.token_urlsafe(24)
        mlflow_password = env.get("MLFLOW_TRACKING_PASSWORD") or secrets.token_urlsafe(24)

        if not self._pg_running():
            if not st.pg_port or port_in_use(host, st.pg_port):
                st.pg_port = free_port(host) if not pg_port else _busy(pg_port, "PGPORT")
            if not self.pgdata.exists():
                self._init_pg(pg_password, network)
            self._write_env(st, pg_password, mlflow_password)  # before anything runs: a failure keeps them
            self._start_pg(st)
            self._save(st)
        self._create_databases(st, pg_password)
        if not self._mlflow_running(st):
            if not st.port or port_in_use(host, st.port):
                st.port = free_port(host) if not port else _busy(port, "PORT")
            self._write_env(st, pg_password, mlflow_password)
            st.mlflow_pid = self._start_mlflow(st, pg_password, mlflow_password)
        self._write_env(st, pg_password, mlflow_password)
        self._save(st)
        return st

    def stop(self) -> list[str]:
        """Stop both; return what was stopped."""
        st = self.state()
        stopped = []
        if st is not None and self._mlflow_running(st):
            kill_group(st.mlflow_pid)
            stopped.append("mlflow server")
        if self._pg_running():
            out = self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
            if out.returncode != 0:
                raise ClusterError(f"pg_ctl stop failed: {(out.stderr or out.stdout).strip()}")
            stopped.append("PostgreSQL")
        if st and st.mlflow_pid:
            st.mlflow_pid = 0
            self._save(st)
        return stopped

    def status(self) -> dict[str, bool]:
        st = self.state()
        return {"PostgreSQL": self._pg_running(), "mlflow server": self._mlflow_running(st)}


# ---------------------------------------------------------------- helpers
def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _busy(port: int, name: str) -> int:
    raise ClusterError(f"port {port} ({name}) is in use; pick another or leave it out for a free one")


def request(base: str, path: str, user: str | None = None, password: str | None = None) -> int:
    """HTTP status of a GET, with basic auth when given; 0 when nothing answers."""
    req = urllib.request.Request(base.rstrip("/") + path)
    if user is not None:
        req.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _is_mlflow(pid: int) -> bool:
    """Whether ``pid`` is a live `mlflow server` (and not a reused pid)."""
    try:
        return b"mlflow" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
