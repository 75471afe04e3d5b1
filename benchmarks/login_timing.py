"""Login answer times: an unknown user, a wrong password and a wrong code must not be told apart.

Measures carnet.identity's log_in end to end (database, Argon2id, TOTP, audit) on SQLite, for
each failure kind, interleaved, twice: with the failure floor carnet uses, and without it (the
natural cost, which shows why the floor is needed and that it is above the slowest failure).
Ratios are against the wrong-password case of the same run. A successful login is the scale.

    .venv/bin/python -m benchmarks.login_timing [--samples 200]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyotp

from carnet.crypto.keys import FileKeyProvider
from carnet.db import migrate
from carnet.db.engine import make_engine
from carnet.identity import service, totp
from carnet.identity.authenticate import FAILURE_FLOOR_SECONDS, Authenticator, LoginRequest
from carnet.kernel import clock
from carnet.kernel.errors import AuthenticationRequired
from carnet.runtime import build_runtime
from carnet.settings import Environment, Settings, install_movable_clock

PASSWORD = "violet tram escapes quietly"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp)
        FileKeyProvider.create(var / "keys.json")
        settings = Settings(env=Environment.TEST, var_dir=var, database_url=f"sqlite:///{var / 'bench.db'}")
        engine = make_engine(settings.resolved_database_url)
        migrate.upgrade(engine)
        engine.dispose()
        movable = install_movable_clock(settings)
        runtime = build_runtime(settings)
        secret = totp.new_secret()
        with runtime.session_factory.begin() as session:
            service.create_account(
                session,
                username="bench",
                display_name="Bench",
                kind="staff",
                password=PASSWORD,
                totp_secret=secret,
            )
        auth = Authenticator.of(runtime)

        def code(offset: int = 0) -> str:
            return str(pyotp.TOTP(secret).at(clock.now(), counter_offset=offset))

        cases: dict[str, Callable[[], LoginRequest]] = {
            "unknown user": lambda: LoginRequest(username="nobody", password="some password", otp=code()),
            "wrong password": lambda: LoginRequest(username="bench", password="some password", otp=code()),
            "wrong code": lambda: LoginRequest(username="bench", password=PASSWORD, otp=code(5)),
        }

        def run(floor: float) -> dict[str, list[float]]:
            auth.failure_floor = floor
            times: dict[str, list[float]] = {k: [] for k in [*cases, "success"]}
            for _ in range(args.samples):
                for label, make in cases.items():
                    auth.throttle.reset()
                    request = make()
                    started = time.perf_counter()
                    with contextlib.suppress(AuthenticationRequired):
                        auth.log_in(request)
                    times[label].append(time.perf_counter() - started)
                movable.advance(dt.timedelta(seconds=30))
                request = LoginRequest(username="bench", password=PASSWORD, otp=code())
                started = time.perf_counter()
                auth.log_in(request)
                times["success"].append(time.perf_counter() - started)
            return times

        for title, floor in (
            ("without the floor (natural cost)", 0.0),
            ("with the floor", FAILURE_FLOOR_SECONDS),
        ):
            times = run(floor)
            base = statistics.median(times["wrong password"])
            print(f"\n{title}: {args.samples} samples each")
            print(f"{'case':<16} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p50 ratio':>10}")
            for label, values in times.items():
                p50 = statistics.median(values)
                print(
                    f"{label:<16} {p50 * 1000:8.1f} {_percentile(values, 0.99) * 1000:8.1f} "
                    f"{max(values) * 1000:8.1f} {p50 / base:9.3f}x"
                )
        runtime.close()


if __name__ == "__main__":
    main()
