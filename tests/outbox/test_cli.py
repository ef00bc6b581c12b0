"""``resilience outbox status | dead | requeue | purge | ddl | relay``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from resilience.messaging import Message
from resilience.outbox import Outbox
from resilience.outbox._cli import parse_duration

from .conftest import RecordingPublisher, make_relay
from .relay_main import main

pytestmark = pytest.mark.integration  # runs the CLI as subprocesses

HERE = Path(__file__).parent


@pytest.fixture
def sqlite_outbox(sqlite_url: str) -> tuple[str, Outbox, sa.Engine]:
    engine = sa.create_engine(sqlite_url)
    outbox = Outbox(sa.MetaData())  # the default table name, as the CLI assumes
    outbox.create_tables(engine)
    return sqlite_url, outbox, engine


def test_status_reports_pending_and_dead(sqlite_outbox, capsys: pytest.CaptureFixture[str]) -> None:
    url, outbox, engine = sqlite_outbox
    with engine.begin() as conn:
        outbox.add_many(conn, [Message("e") for _ in range(3)])
    assert main(["outbox", "status", "--url", url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["pending"], data["dead"]) == (3, 0)
    assert data["oldest_pending_age_seconds"] >= 0
    assert main(["outbox", "status", "--url", url]) == 0
    assert "pending:             3" in capsys.readouterr().out


def test_dead_and_requeue_round_trip(sqlite_outbox, capsys: pytest.CaptureFixture[str]) -> None:
    url, outbox, engine = sqlite_outbox
    poison = Message("poison", key="k")
    with engine.begin() as conn:
        outbox.add(conn, poison)
    relay = make_relay(engine, outbox, RecordingPublisher(lambda m: "too big"), max_attempts=1)
    assert relay.run_once().dead == 1
    assert main(["outbox", "dead", "--url", url, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["message_id"], row["last_error"], row["attempts"]) == (poison.id, "too big", 1)
    assert main(["outbox", "requeue", "--url", url, poison.id]) == 0
    assert "requeued 1 of 1" in capsys.readouterr().out
    assert main(["outbox", "requeue", "--url", url, "no-such-id"]) == 1
    assert main(["outbox", "dead", "--url", url]) == 0
    assert "no dead-lettered events" in capsys.readouterr().out


def test_purge_deletes_old_sent_rows(sqlite_outbox, capsys: pytest.CaptureFixture[str]) -> None:
    url, outbox, engine = sqlite_outbox
    with engine.begin() as conn:
        outbox.add_many(conn, [Message("e") for _ in range(4)])
    make_relay(engine, outbox, RecordingPublisher(), on_sent="mark").run_once()
    assert main(["outbox", "purge", "--url", url, "--older-than", "1h"]) == 0
    assert "deleted 0 row(s)" in capsys.readouterr().out
    assert main(["outbox", "purge", "--url", url, "--older-than", "0s"]) == 0
    assert "deleted 4 row(s)" in capsys.readouterr().out


def test_ddl_by_dialect_or_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["outbox", "ddl", "--dialect", "postgresql", "--table", "events_outbox"]) == 0
    out = capsys.readouterr().out
    assert "CREATE TABLE events_outbox" in out
    assert main(["outbox", "ddl", "--url", "sqlite:///x.db"]) == 0
    assert "CREATE TABLE resilience_outbox" in capsys.readouterr().out


def test_bad_input_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["outbox", "purge", "--url", "sqlite://", "--older-than", "soon"])
    assert "is not like 7d" in capsys.readouterr().err
    missing = tmp_path / "nope" / "db.sqlite"
    assert main(["outbox", "status", "--url", f"sqlite:///{missing}"]) == 1
    assert "database error" in capsys.readouterr().err
    assert main(["outbox", "status", "--url", "not a url"]) == 1


@pytest.mark.parametrize("command", ["status", "dead", "requeue", "purge", "ddl", "relay"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    out = subprocess.run(
        [sys.executable, str(HERE / "relay_main.py"), "outbox", command, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "example:" in out
    assert f"resilience outbox {command}" in out


def test_parse_duration() -> None:
    assert parse_duration("7d").total_seconds() == 7 * 86400
    assert parse_duration("250ms").total_seconds() == 0.25
    assert parse_duration("90").total_seconds() == 90


def test_relay_process_publishes_to_redis_streams_and_stops_on_sigterm(
    sqlite_outbox, redis_client, redis_url: str, redis_prefix: str
) -> None:
    import os
    import signal
    import time

    url, outbox, engine = sqlite_outbox
    with engine.begin() as conn:
        outbox.add_many(conn, [Message("order.created", {"seq": i}, key="o1") for i in range(20)])
    stream = f"{redis_prefix}order"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent.parent / "src")}
    process = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "relay_main.py"),
            "outbox",
            "relay",
            "--url",
            url,
            "--redis",
            redis_url,
            "--topic",
            redis_prefix + "{type_prefix}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while redis_client.xlen(stream) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)
    assert process.returncode == 0, err.decode()[-2000:]
    entries = redis_client.xrange(stream)
    assert len(entries) == 20
    with engine.connect() as conn:
        assert outbox.stats(conn).pending == 0
