"""``resilience idempotency purge`` end to end against SQLite."""

from __future__ import annotations

import argparse
import time
from typing import Any

import pytest

from resilience.idempotency import InProgress
from resilience.idempotency._cli import register


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="resilience")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_purge_deletes_only_expired_records(
    sqlite_url: str, make_sql_store: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    store = make_sql_store(sqlite_url)
    for i in range(5):
        store.claim(f"old{i}", "f" * 64, "t", 0.05, 0.05)
    store.claim("live", "f" * 64, "t", 30, 60)
    time.sleep(0.15)
    code = run(
        [
            "idempotency",
            "purge",
            "--url",
            sqlite_url,
            "--table",
            store.table.name,
            "--batch-size",
            "2",
        ]
    )
    assert code == 0
    assert "purged 5 " in capsys.readouterr().out
    assert isinstance(store.claim("live", "f" * 64, "t2", 30, 60), InProgress)


def test_bad_batch_size_is_a_configuration_error(sqlite_url: str, make_sql_store: Any) -> None:
    from resilience import ConfigurationError

    store = make_sql_store(sqlite_url)
    with pytest.raises(ConfigurationError):
        run(
            [
                "idempotency",
                "purge",
                "--url",
                sqlite_url,
                "--table",
                store.table.name,
                "--batch-size",
                "0",
            ]
        )
