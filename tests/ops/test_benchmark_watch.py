"""The benchmarks' watch on their neighbours (benchmarks/_host.py): Redis's longest answer during
the rounds, and the note naming the kernel's session autogrouping when it is on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from benchmarks import _host


def test_the_watch_pings_redis_and_reports_its_longest_answer() -> None:
    with _host.RedisWatch("redis://127.0.0.1:6379/0", every=0.01) as watch:
        time.sleep(0.3)
    assert watch.pings > 5 and watch.failed == 0
    assert 0 < watch.longest_ms < 60_000
    assert watch.summary().startswith("Redis's longest answer to a PING every 10 ms")


def test_a_watch_on_no_redis_counts_failures_and_stops() -> None:
    with _host.RedisWatch("redis://127.0.0.1:1/0", every=0.01) as watch:
        time.sleep(0.1)
    assert watch.pings == 0 and watch.failed > 0
    assert "failed" in watch.summary()


@pytest.mark.parametrize(("content", "noted"), [("1\n", True), ("0\n", False), (None, False)])
def test_the_note_names_session_autogrouping_only_when_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, noted: bool
) -> None:
    setting = tmp_path / "sched_autogroup_enabled"
    if content is not None:
        setting.write_text(content)
    monkeypatch.setattr(_host, "AUTOGROUP", setting)
    note = _host.scheduler_note()
    assert (note is not None) is noted
    if note is not None:
        assert "kernel.sched_autogroup_enabled = 1" in note
