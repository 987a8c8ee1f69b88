"""`ffnn ray start|stop|status` (`make ray`, `make ray-stop`): a local Ray cluster, a head and one worker node.

Both nodes are started with Ray's own CLI (``ray start``), the dashboard off, usage statistics off and a
capped object store (a small ``/dev/shm`` breaks an uncapped one). The worker node gets no GPU: both
nodes share this machine, and one GPU must not be counted twice. ``<root>/ray.env`` (mode 0600) is what
a shell or another machine sources (``. mlruns/ray.env``)::

    export RAY_ADDRESS=127.0.0.1:PORT     export RAY_AUTH_MODE=token     export RAY_AUTH_TOKEN=...

Ray's servers listen on every interface whatever address it is given (it has no loopback-only mode on
Linux, and replaces a loopback node address with the machine's), so the cluster takes Ray's token
authentication: who lacks the token cannot run code on it. ``<root>/ray/state.json`` keeps the port, the
CPUs and Ray's temporary folder (under /tmp: Unix socket paths must stay short), no secret.

Every process of the cluster carries ``FFNN_RAY_ROOT=<root>`` in its environment (a raylet hands its own
to the workers it starts): ``stop`` ends those and no other Ray on the machine, where ``ray stop`` would
end every one.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError

OBJECT_STORE_MB = 200  # per node: enough for the results of stacks in flight, and it fits a small /dev/shm
START_TIMEOUT = 120  # seconds for `ray start`
STOP_GRACE = 5  # seconds between SIGTERM and SIGKILL (gcs_server may not end on SIGTERM)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TAG = "FFNN_RAY_ROOT"  # in the environment of every process of the cluster
NODE_TAG = "FFNN_RAY_NODE"  # head or worker


class RayClusterError(UserError):
    """The local Ray cluster cannot be started or stopped."""


@dataclass
class State:
    host: str  # what --host said: loopback, 0.0.0.0, or this machine's address to use
    port: int  # the head's GCS port
    head_cpus: int
    worker_cpus: int
    object_store_mb: int
    temp_dir: str  # Ray's --temp-dir: sessions, logs, sockets
    address: str = ""  # as ray.env gives it


def _ray_cli() -> list[str]:
    """Ray's own CLI on this interpreter: its nodes then run ffnn's Python, whatever ``ray`` is on the PATH."""
    if importlib.util.find_spec("ray") is None:
        raise RayClusterError("Ray is not installed: pip install 'ffnn[ray]' (make ray installs it)")
    return [sys.executable, "-m", "ray.scripts.scripts"]


class RayCluster:
    """The local cluster of one ``root`` folder."""

    def __init__(self, root: str | Path = "mlruns"):
        self.root = Path(root).resolve()
        self.dir = self.root / "ray"
        self.state_file = self.dir / "state.json"
        self.env_file = self.root / "ray.env"
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:10]
        self.temp_dir = Path("/tmp") / f"ffnn-ray-{digest}"

    # ------------------------------------------------------------ files
    def state(self) -> State | None:
        if not self.state_file.exists():
            return None
        return State(**json.loads(self.state_file.read_text()))

    def _save(self, st: State) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(asdict(st), indent=2) + "\n")

    def env(self) -> dict[str, str]:
        """The variables of ``ray.env``; empty when there is none."""
        if not self.env_file.exists():
            return {}
        out = {}
        for line in self.env_file.read_text().splitlines():
            line = line.strip().removeprefix("export ")
            if "=" in line and not line.startswith("#"):
                k, _, v = line.partition("=")
                out[k.strip()] = v.strip()
        return out

    def _write_env(self, address: str, token: str) -> None:
        lines = ["# ffnn ray: . mlruns/ray.env wherever ffnn --ray runs or a node joins (ray start --address "
                 "$RAY_ADDRESS); keep it private: the token lets its holder run code on the cluster",
                 f"export RAY_ADDRESS={address}", "export RAY_AUTH_MODE=token", f"export RAY_AUTH_TOKEN={token}",
                 "export RAY_USAGE_STATS_ENABLED=0"]
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.env_file, 0o600)

    # ------------------------------------------------------------ processes
    def processes(self, node: str | None = None) -> dict[int, str]:
        """pid -> command line of this cluster's live processes (of ``node``, head or worker, if given): those
        with the tag, and their descendants (a Ray worker's new title may overwrite its environment)."""
        want = f"{TAG}={self.root}".encode()
        nodes: dict[int, str] = {}  # tagged pid -> its node
        parents: dict[int, int] = {}
        cmds: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            try:
                cmd = (entry / "cmdline").read_bytes()
                if not cmd:  # a zombie (or a kernel thread): it counts as gone
                    continue
                parents[pid] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                cmds[pid] = cmd.replace(b"\0", b" ").decode(errors="replace").strip()
                env = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):  # ended meanwhile, or another user's
                continue
            if want in env:
                tag = next((v for v in env if v.startswith(NODE_TAG.encode() + b"=")), b"=")
                nodes[pid] = tag.partition(b"=")[2].decode()
        found = {}
        for pid in cmds:
            up, seen = pid, 0
            while up not in nodes and up in parents and seen < 64:
                up, seen = parents[up], seen + 1
            if up in nodes and (node is None or nodes[up] == node):
                found[pid] = cmds[pid]
        return found

    def raylet(self, node: str) -> int | None:
        """The pid of the ``node``'s raylet (head or worker), if it runs."""
        return next((pid for pid, cmd in self.processes(node).items() if Path(cmd.split(" ")[0]).name == "raylet"),
                    None)

    def status(self) -> dict[str, bool]:
        procs = self.processes()
        head_gcs = any(Path(c.split(" ")[0]).name == "gcs_server" for c in procs.values())
        return {"Ray head": head_gcs and self.raylet("head") is not None,
                "Ray worker node": self.raylet("worker") is not None}

    def _ray_start(self, node: str, token: str, argv: list[str]) -> str:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
               TAG: str(self.root), NODE_TAG: node}
        env.pop("RAY_ADDRESS", None)
        try:
            out = subprocess.run([*_ray_cli(), "start", *argv, "--disable-usage-stats", "--temp-dir",
                                  str(self.temp_dir)], env=env, cwd=self.root, capture_output=True, text=True,
                                 timeout=START_TIMEOUT, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise RayClusterError(f"ray start ({node}) did not finish within {START_TIMEOUT} s; "
                                  f"logs in {self.temp_dir}/session_latest/logs") from None
        if out.returncode != 0:
            tail = " | ".join((out.stderr or out.stdout).strip().splitlines()[-3:])
            raise RayClusterError(f"ray start ({node}) failed: {tail}")
        return out.stdout + out.stderr

    def summary(self, up: dict[str, bool], joining: bool) -> list[str]:
        """What ``ffnn ray start|status`` prints: the nodes, the address, how to use it (and join it)."""
        lines = [f"{name}: {'running' if running else 'stopped'}" for name, running in up.items()]
        st = self.state()
        if st is None or not self.env_file.exists():
            return lines
        lines += [f"RAY_ADDRESS={st.address} ({st.head_cpus} + {st.worker_cpus} CPUs, object store "
                  f"{st.object_store_mb} MB a node); its token in {self.env_file} (mode 0600)",
                  f"here: . {self.env_file}; ffnn compare --ray"]
        if joining:
            lines.append("another machine: start with --host 0.0.0.0 (HOST=0.0.0.0) for an address it can reach, "
                         "copy ray.env there, then: . ray.env; ray start --address $RAY_ADDRESS (ffnn and the "
                         "data at the same paths as here)")
        return lines

    # ------------------------------------------------------------ commands
    def start(self, host: str = "127.0.0.1", port: int | None = None, cpus: int | None = None,
              object_store_mb: int = OBJECT_STORE_MB) -> State:
        """Start the head and the worker node (a no-op for one already up); last time's port and token."""
        old = self.state()
        token = self.env().get("RAY_AUTH_TOKEN") or secrets.token_hex(32)
        up = self.status()
        if up["Ray head"] and old is not None:
            if (port and port != old.port) or host != old.host:
                raise RayClusterError("the Ray cluster is running with other settings; ffnn ray stop first")
            st = old
        else:
            if any(up.values()) or self.processes():
                self.stop()  # what a half-dead cluster left: its node without a head cannot be joined again
            total = cpus or os.cpu_count() or 2
            head = max(1, total // 2)
            st = State(host, port or (old.port if old else 0), head, max(1, total - head), object_store_mb,
                       str(self.temp_dir))
            self.dir.mkdir(parents=True, exist_ok=True)
            argv = ["--head", "--port", str(st.port), "--num-cpus", str(st.head_cpus), "--object-store-memory",
                    str(st.object_store_mb << 20), "--include-dashboard", "false"]
            if host not in LOOPBACK and host not in ("0.0.0.0", "::"):
                argv += ["--node-ip-address", host]
            self._ray_start("head", token, argv)
            gcs = (self.temp_dir / "ray_current_cluster").read_text().strip()  # Ray's own address of the head
            st.port = int(gcs.rpartition(":")[2])
            st.address = f"127.0.0.1:{st.port}" if host in LOOPBACK else gcs
            self._write_env(st.address, token)
            self._save(st)
        if not self.status()["Ray worker node"]:
            self._ray_start("worker", token, ["--address", st.address, "--num-cpus", str(st.worker_cpus),
                                              "--num-gpus", "0", "--object-store-memory",
                                              str(st.object_store_mb << 20)])
        return st

    def stop(self) -> list[str]:
        """End every process of this cluster; return which nodes ran."""
        up = self.status()
        procs = self.processes()
        ended = set(procs)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in procs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.time() + STOP_GRACE
            while procs and time.time() < deadline:
                time.sleep(0.2)
                procs = self.processes()
                ended |= set(procs)
            if not procs:
                break
        if procs:
            raise RayClusterError(f"processes of the Ray cluster survived SIGKILL: {sorted(procs)}")
        # `ray start` left its nodes to init, which reaps them in its own time: wait a little, so that
        # no zombie raylet is in `ps` when this returns
        deadline = time.time() + STOP_GRACE
        while any(Path(f"/proc/{pid}").exists() for pid in ended) and time.time() < deadline:
            time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)  # sessions, sockets, spilled objects
        return [name for name, running in up.items() if running]
