"""`carnet interfaces` as an operator runs it: register (bad input: status 2, nothing
registered), list, serve a real listener process, send to it, read the message log."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from carnet.runtime import build_runtime
from carnet.settings import Environment, Settings
from tests.factories import make_facility
from tests.interfaces.helpers import Person, adt, msa, send

CARNET = str(Path(sys.executable).with_name("carnet"))


def _env(var: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARNET_")}
    env.update({"CARNET_VAR_DIR": str(var), "CARNET_ENV": "test", "COLUMNS": "250"})
    return env


def _run(var: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CARNET, *args], env=_env(var), capture_output=True, text=True, timeout=300, check=False
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_register_serve_send_and_read_the_log(tmp_path: Path) -> None:
    var = tmp_path / "var"
    assert _run(var, "keys", "init").returncode == 0
    assert _run(var, "db", "upgrade").returncode == 0
    runtime = build_runtime(Settings(env=Environment.TEST, var_dir=var))
    try:
        facility = str(make_facility(runtime))
    finally:
        runtime.close()
    base = ["interfaces", "register", "--name", "ADT", "--sending-facility", "HOSP", "--facility", facility]
    for bad in (
        [*base, "--type", "ADT^A99", "--source", "127.0.0.1"],  # unsupported type
        [*base, "--type", "ADT^A04"],  # neither address nor certificate
        [*base, "--type", "ADT^A04", "--source", "not-an-address"],
        [*base[:-1], "not-a-uuid", "--type", "ADT^A04", "--source", "127.0.0.1"],
    ):
        result = _run(var, *bad)
        assert result.returncode == 2 and "error" in result.stderr and "Traceback" not in result.stderr
    assert "ADT" not in _run(var, "interfaces", "list").stdout
    registered = _run(var, *base, "--type", "ADT^A04", "--type", "ADT^A08", "--source", "127.0.0.1")
    assert registered.returncode == 0, registered.stderr
    listed = _run(var, "interfaces", "list")
    assert "ADT^A04 ADT^A08" in listed.stdout and "127.0.0.1/32" in listed.stdout

    port = _free_port()
    server = subprocess.Popen(
        [CARNET, "interfaces", "serve", "--port", str(port)], env=_env(var), stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the listener did not start"
                time.sleep(0.2)
        [answer] = send(port, adt("A04", "CLI-1", Person(ipp="C1"), klass="O", location=None))
        assert msa(answer)[1] == "AA", msa(answer)
    finally:
        server.terminate()
        server.communicate(timeout=30)
    logged = _run(var, "interfaces", "log", "ADT", "--control-id", "CLI-1")
    assert logged.returncode == 0, logged.stderr
    assert "CLI-1" in logged.stdout and "accepted" in logged.stdout and "MARTIN" not in logged.stdout
    assert _run(var, "interfaces", "log", "NOPE").returncode == 2


def test_several_processes_need_redis_for_the_shared_budget(tmp_path: Path) -> None:
    """Without Redis each process would count an interface's volume alone: refused, saying why."""
    var = tmp_path / "var"
    done = _run(var, "interfaces", "serve", "--port", str(_free_port()), "--processes", "2")
    assert done.returncode != 0
    assert "--processes above 1 needs Redis" in done.stderr + done.stdout
