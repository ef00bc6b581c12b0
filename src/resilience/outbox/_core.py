"""The relay's I/O-free decisions: option validation, backoff, and publish ordering.

Kept apart from SQL and brokers so the rules that make per-key ordering hold
can be read (and tested) on their own.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, TypeVar

from resilience._errors import ConfigurationError

__all__ = ["Backoff", "ClaimedRow", "RelayOptions", "plan_waves"]

OnSent = Literal["delete", "mark"]
Ordering = Literal["strict", "pipelined"]
_ORDERINGS: Final = ("strict", "pipelined")
ClaimMode = Literal["auto", "skip_locked", "lease"]
_ON_SENT: Final = ("delete", "mark")
_CLAIM_MODES: Final = ("auto", "skip_locked", "lease")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter, used between attempts to publish one row.

    The delay before attempt ``n + 1`` is ``min(maximum, initial * multiplier**(n-1))``,
    then jittered: a random value in ``[delay * (1 - jitter), delay]``. Jitter spreads
    retries of rows that failed together (a broker outage) so they do not all come
    back at the same instant.
    """

    initial: float = 0.5
    maximum: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not self.initial >= 0:
            raise ConfigurationError("initial", f"must be >= 0, got {self.initial!r}")
        if not self.maximum >= self.initial:
            raise ConfigurationError("maximum", f"must be >= initial, got {self.maximum!r}")
        if not self.multiplier >= 1:
            raise ConfigurationError("multiplier", f"must be >= 1, got {self.multiplier!r}")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("jitter", f"must be between 0 and 1, got {self.jitter!r}")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after the *attempt*-th failure (1-based)."""
        exponent = max(attempt - 1, 0)
        # Cap the exponent so huge attempt counts cannot overflow a float.
        base = min(self.maximum, self.initial * self.multiplier ** min(exponent, 64))
        return base * (1 - self.jitter * rand())


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """Everything that tunes a `Relay`; validated when the relay is built.

    Attributes:
        name: used in telemetry and as the lease holder prefix.
        batch_size: rows claimed per transaction.
        max_attempts: failed publishes of one row before it is dead-lettered.
        backoff: per-row delay between attempts (``available_at`` in the table).
        on_sent: ``"delete"`` rows once acknowledged (smallest table) or ``"mark"``
            them (``sent_at`` set; keep an audit trail, purge later).
        dead_letter_blocks_key: if True (the default), a dead-lettered row holds
            back every later row of its key until an operator requeues or purges
            it, so per-key order holds even across a long broker outage; if False,
            later rows of the key are published after it (order given up for
            liveness).
        claim_mode: ``"skip_locked"`` (several relays: PostgreSQL, MySQL 8 /
            MariaDB 10.6+), ``"lease"`` (one active relay, e.g. SQLite), or
            ``"auto"`` to choose by dialect. Other databases are refused: the
            outbox cannot make them commit a key's events in position order.
        lease_ttl: seconds a lease lasts without renewal (lease mode).
        idle_min / idle_max: the wait after an empty claim starts at ``idle_min``
            and doubles up to ``idle_max`` while idle; a NOTIFY ends it early.
        listen: use PostgreSQL LISTEN/NOTIFY to wake as soon as an event commits.
        failure_backoff: relay-level pause after a failed batch, a failed claim
            (database down) or an open circuit.
        ordering: ``"strict"`` (default) publishes a batch in waves and waits for
            the broker to acknowledge a key's earlier row before sending its next
            one, so a failed row never lets a later row of its key through.
            ``"pipelined"`` sends the whole batch in one call and relies on the
            publisher's own per-key ordering (Kafka's idempotent producer keeps
            order per partition): fewer round trips when keys repeat within a
            batch, but a record the broker rejects permanently can be overtaken
            by a later record of its key.
        tracing: open a PRODUCER span per message (``resilience.tracing``).
    """

    name: str = "outbox-relay"
    batch_size: int = 500
    max_attempts: int = 10
    backoff: Backoff = field(default_factory=Backoff)
    on_sent: OnSent = "delete"
    dead_letter_blocks_key: bool = True
    claim_mode: ClaimMode = "auto"
    lease_ttl: float = 30.0
    idle_min: float = 0.05
    idle_max: float = 2.0
    listen: bool = True
    failure_backoff: Backoff = field(
        default_factory=lambda: Backoff(initial=0.1, maximum=5.0, jitter=0.5)
    )
    ordering: Ordering = "strict"
    tracing: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError("name", "must be a non-empty string")
        if not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= 10_000:
            raise ConfigurationError(
                "batch_size", f"must be an int in 1..10000, got {self.batch_size!r}"
            )
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigurationError(
                "max_attempts", f"must be an int >= 1, got {self.max_attempts!r}"
            )
        if self.on_sent not in _ON_SENT:
            raise ConfigurationError("on_sent", f"must be one of {_ON_SENT}, got {self.on_sent!r}")
        if self.ordering not in _ORDERINGS:
            raise ConfigurationError(
                "ordering", f"must be one of {_ORDERINGS}, got {self.ordering!r}"
            )
        if self.claim_mode not in _CLAIM_MODES:
            raise ConfigurationError(
                "claim_mode", f"must be one of {_CLAIM_MODES}, got {self.claim_mode!r}"
            )
        if not self.lease_ttl > 0:
            raise ConfigurationError("lease_ttl", f"must be > 0, got {self.lease_ttl!r}")
        if not 0 < self.idle_min <= self.idle_max:
            raise ConfigurationError(
                "idle_min",
                f"must be > 0 and <= idle_max, got {self.idle_min!r} / {self.idle_max!r}",
            )
        if not isinstance(self.backoff, Backoff):
            raise ConfigurationError("backoff", "must be a resilience.outbox.Backoff")
        if not isinstance(self.failure_backoff, Backoff):
            raise ConfigurationError("failure_backoff", "must be a resilience.outbox.Backoff")


class ClaimedRow(Protocol):
    """What `plan_waves` needs to know about a claimed row."""

    @property
    def position(self) -> int: ...

    @property
    def key(self) -> str | None: ...

    @property
    def prev(self) -> int | None:
        """Position of the row's nearest earlier unsent row of the same key, if any."""


R = TypeVar("R", bound=ClaimedRow)


def plan_waves(rows: Sequence[R]) -> list[list[R]]:
    """Split a claimed batch into publish waves that keep per-key order.

    *rows* come in position order, each with ``prev``: the position of the nearest
    earlier row of the same key that was still unsent when the batch was claimed.
    A row may be published only when that predecessor is published first, so:

    - a row whose ``prev`` is None (first of its key, or keyless) goes in wave 0;
    - a row whose ``prev`` is in this batch goes one wave after its predecessor;
    - a row whose ``prev`` is *not* in this batch (held by another relay, backing
      off, or dead-lettered with ``dead_letter_blocks_key``) is left out: it waits.

    Wave ``n + 1`` is published only after every message of wave ``n`` is
    acknowledged, and a failure stops the batch, so a key's later row is never
    published before its earlier one is acknowledged.
    """
    if all(row.prev is None for row in rows):  # the usual backlog: one wave, as claimed
        return [list(rows)] if rows else []
    wave_of: dict[int, int] = {}
    waves: list[list[R]] = []
    for row in rows:
        if row.prev is None:
            wave = 0
        else:
            before = wave_of.get(row.prev)
            if before is None:
                continue  # its predecessor is not ours to publish: wait
            wave = before + 1
        wave_of[row.position] = wave
        if wave == len(waves):
            waves.append([])
        waves[wave].append(row)
    return waves
