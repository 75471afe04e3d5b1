"""A PostgreSQL pair managed by Patroni, with etcd as its store, on loopback ports of one
machine: for the failover test and for demos (`make ha`). Production runs the same pieces on
three hosts (docs/OPERATIONS.md); nothing here is for production.

Everything runs as the `postgres` user (PostgreSQL refuses root) in a directory of its own;
the processes' own ids are kept so a test can kill exactly the leader's Patroni and postmaster.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

PG_BIN = Path("/usr/lib/postgresql/15/bin")
TOOLS = ("patroni", "etcd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None] + (
        [] if (PG_BIN / "postgres").exists() else [str(PG_BIN / "postgres")]
    )


@dataclass
class Node:
    name: str
    pg_port: int
    rest_port: int
    data_dir: Path
    config: Path
    process: subprocess.Popen[bytes] | None = None

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None


@dataclass
class LocalCluster:
    """etcd + two Patroni nodes (a leader and a synchronous standby) under `base`."""

    base: Path
    scope: str = "carnet"
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)
    etcd: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, base: Path | None = None) -> LocalCluster:
        base = base or Path(tempfile.mkdtemp(prefix="carnet-ha-"))
        base.mkdir(parents=True, exist_ok=True)
        cluster = cls(base=base)
        for index in (1, 2):
            name = f"node{index}"
            cluster.nodes.append(
                Node(
                    name=name,
                    pg_port=free_port(),
                    rest_port=free_port(),
                    data_dir=base / name,
                    config=base / f"{name}.yml",
                )
            )
        return cluster

    # -- addresses -------------------------------------------------------------------------

    def hosts(self) -> str:
        return ",".join(f"127.0.0.1:{n.pg_port}" for n in self.nodes)

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL that follows the leader (libpq multi-host, read-write session)."""
        hosts = "&".join(f"host=127.0.0.1:{n.pg_port}" for n in self.nodes)
        return (
            f"postgresql+psycopg://postgres@/{database}?{hosts}"
            "&target_session_attrs=read-write&connect_timeout=2"
        )

    def node_url(self, node: Node, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{node.pg_port}/{database}?connect_timeout=2"

    # -- life cycle ------------------------------------------------------------------------

    def _as_postgres(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            # user= makes the child itself the postgres process (no su/bash wrapper whose pid
            # a kill would hit instead); its own session so signals reach nothing else.
            environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
            return subprocess.Popen(  # noqa: S603 (our own argument lists, no shell)
                args, cwd=self.base, stdout=out, stderr=subprocess.STDOUT, user="postgres",
                start_new_session=True, env=environment,
            )  # fmt: skip

    def start(self, timeout: float = 120) -> None:
        missing = missing_tools()
        if missing:
            raise RuntimeError(f"missing: {', '.join(missing)} (apt-get install patroni etcd-server)")
        shutil.chown(self.base, "postgres", "postgres")
        os.chmod(self.base, 0o700)
        self.etcd = self._as_postgres(
            [
                "etcd", "--name", "e1", "--data-dir", str(self.base / "etcd"),
                "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                "--listen-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
                "--initial-cluster", f"e1=http://127.0.0.1:{self.etcd_peer_port}",
            ],
            self.base / "etcd.log",
        )  # fmt: skip
        for node in self.nodes:
            node.config.write_text(json.dumps(self._patroni_config(node), indent=1))
            shutil.chown(node.config, "postgres", "postgres")
            node.process = self._as_postgres(["patroni", str(node.config)], self.base / f"{node.name}.log")
            if node is self.nodes[0]:
                self.wait_for(lambda: self.leader() is not None, timeout, "a leader")
        self.wait_for(lambda: self.sync_standby() is not None, timeout, "a synchronous standby")

    def _patroni_config(self, node: Node) -> dict[str, object]:
        # JSON is YAML: Patroni reads this file as it is.
        return {
            "scope": self.scope,
            "name": node.name,
            "restapi": {
                "listen": f"127.0.0.1:{node.rest_port}",
                "connect_address": f"127.0.0.1:{node.rest_port}",
            },
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd_port}"},
            "bootstrap": {
                "dcs": {
                    "ttl": 10,
                    "loop_wait": 2,
                    "retry_timeout": 5,
                    "synchronous_mode": True,
                    "postgresql": {"use_pg_rewind": False, "parameters": {"max_connections": 200}},
                },
                "initdb": [{"encoding": "UTF8"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}",
                "connect_address": f"127.0.0.1:{node.pg_port}",
                "data_dir": str(node.data_dir),
                "bin_dir": str(PG_BIN),
                "pgpass": str(self.base / f"{node.name}.pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                },
                # tests only: trust on loopback, replication included
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
                "parameters": {"unix_socket_directories": str(self.base), "max_connections": 200},
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }

    def members(self) -> list[dict[str, object]]:
        for node in self.nodes:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{node.rest_port}/cluster", timeout=1
                ) as answer:
                    members: list[dict[str, object]] = json.load(answer).get("members", [])
                    return members
            except OSError:
                continue
        return []

    def _with_role(self, *roles: str) -> Node | None:
        for member in self.members():
            if member.get("role") in roles and member.get("state") in ("running", "streaming"):
                return next((n for n in self.nodes if n.name == member.get("name")), None)
        return None

    def leader(self) -> Node | None:
        return self._with_role("leader")

    def sync_standby(self) -> Node | None:
        return self._with_role("sync_standby")

    @staticmethod
    def wait_for(condition: object, timeout: float, what: str) -> None:
        assert callable(condition)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Patroni cluster has no {what} after {timeout:.0f}s")

    def kill_node(self, node: Node) -> None:
        """A node lost: its Patroni and its postmaster, SIGKILL, no goodbye to etcd."""
        postmaster = node.postmaster_pid()
        if node.process is not None and node.process.poll() is None:
            os.kill(node.process.pid, signal.SIGKILL)
            node.process.wait(timeout=10)
        if postmaster is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGKILL)

    def stop(self) -> None:
        """Kill every process this cluster started and remove its directory."""
        for node in self.nodes:
            self.kill_node(node)
        for node in self.nodes:  # postmasters whose Patroni had restarted them
            pid = node.postmaster_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.kill()
            self.etcd.wait(timeout=10)
        shutil.rmtree(self.base, ignore_errors=True)


ha_app = typer.Typer(help="A Patroni pair on loopback ports, for demos and tests (not production).")


@ha_app.command("up")
def up(
    directory: Annotated[Path, typer.Option(help="Where the cluster lives (removed on exit).")] = Path(
        "var/ha"
    ),
) -> None:
    """Start etcd and two Patroni nodes; print the URL; stop everything on Ctrl-C."""
    cluster = LocalCluster.create(directory.resolve())
    try:
        cluster.start()
        leader, standby = cluster.leader(), cluster.sync_standby()
        for node, role in ((leader, "leader"), (standby, "synchronous standby")):
            if node is not None:
                typer.echo(f"{role}: {node.name} on 127.0.0.1:{node.pg_port} (REST {node.rest_port})")
        typer.echo(f"CARNET_DATABASE_URL={cluster.url('carnet')}")
        typer.echo(f"patronictl -c {cluster.nodes[0].config} list")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    ha_app()
