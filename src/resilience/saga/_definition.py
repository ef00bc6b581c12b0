"""`SagaDefinition`: the saga's state machine, validated up front, with no I/O.

The owning service (Orders) declares which event moves the saga from which
state to which. Everything that reads or writes the database (`SagaStore`)
asks `SagaDefinition.decide` what an event means; nothing else decides.
"""

from __future__ import annotations

import types
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from resilience._errors import ConfigurationError

__all__ = ["DEFAULT_TIMEOUT_EVENT", "Decision", "Outcome", "SagaDefinition"]

DEFAULT_TIMEOUT_EVENT: Final = "saga.timeout"
"""The event type a saga's deadline timer fires (`SagaParticipant.start`)."""

_MAX_NAME: Final = 100

Outcome = Literal["accepted", "rejected", "ignored", "duplicate", "skipped", "aborted"]
"""What happened to one event, as written to the saga log.

- ``accepted``: applied (a transition, a step run or a compensation run).
- ``rejected``: an illegal transition; nothing changed.
- ``ignored``: a timer that fired after the saga had ended.
- ``duplicate``: the inbox had already processed this message id.
- ``skipped``: a participant's step that was already compensated or done.
- ``aborted``: a compensation that arrived before its step: the step will not run.
"""


@dataclass(frozen=True, slots=True)
class Decision:
    """What one event does to a saga in a given state (from `SagaDefinition.decide`)."""

    outcome: Literal["accepted", "rejected", "ignored"]
    from_state: str
    to_state: str

    @property
    def entered(self) -> bool:
        """True when the saga moves to a different state (entry hooks run)."""
        return self.outcome == "accepted" and self.from_state != self.to_state


def _name(value: object, field_name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME:
        raise ConfigurationError(
            field_name, f"must be non-empty strings of at most {_MAX_NAME} characters: {value!r}"
        )
    return value


@dataclass(frozen=True, slots=True, eq=False)
class SagaDefinition:
    """The states of a saga and the events that move it, checked at construction.

    Declaring transitions up front is what lets the library refuse an event that
    makes no sense (``payment.declined`` on a confirmed order) instead of
    silently corrupting the order: an undeclared ``(state, event)`` pair is an
    `IllegalTransitionError`, recorded in the saga log.

    A *terminal* state may only have self-loops: they accept **late** events
    (``stock.reserved`` reaching an order already cancelled) without moving the
    saga, so the facts are logged and the participants' compensations (which
    they run on ``order.cancelled``) stay the single place where undo happens.
    A timer firing for a saga in a terminal state is ignored.

    Args:
        name: identifies the definition in the saga table (several sagas may share it).
        states: every state.
        initial: the state a saga starts in (the semantic lock, e.g. ``"pending"``).
        transitions: ``{(state, event_type): next_state}``.
        terminal: states in which the saga is over (``"confirmed"``, ``"cancelled"``).
        timeout_event: event type of the deadline timer set by ``start(timeout=...)``.

    Raises:
        ConfigurationError: unknown states, a terminal state that cannot be
            reached from *initial*, a non-terminal state from which no terminal
            state can be reached (a saga could get stuck there), or a transition
            leaving a terminal state.
    """

    name: str
    states: frozenset[str]
    initial: str
    transitions: Mapping[tuple[str, str], str]
    terminal: frozenset[str]
    timeout_event: str = DEFAULT_TIMEOUT_EVENT
    events: frozenset[str] = field(init=False)

    def __init__(
        self,
        name: str,
        *,
        states: Iterable[str],
        initial: str,
        transitions: Mapping[tuple[str, str], str],
        terminal: Iterable[str],
        timeout_event: str = DEFAULT_TIMEOUT_EVENT,
    ) -> None:
        _name(name, "name")
        _name(timeout_event, "timeout_event")
        if isinstance(states, str) or isinstance(terminal, str):
            raise ConfigurationError("states", "states and terminal must be collections of names")
        state_set = frozenset(_name(s, "states") for s in states)
        if not state_set:
            raise ConfigurationError("states", "must not be empty")
        if initial not in state_set:
            raise ConfigurationError("initial", f"{initial!r} is not one of the states")
        terminal_set = frozenset(terminal)
        if not terminal_set:
            raise ConfigurationError("terminal", "at least one terminal state is needed")
        unknown = sorted(terminal_set - state_set)
        if unknown:
            raise ConfigurationError("terminal", f"unknown states {unknown}")
        if not isinstance(transitions, Mapping) or not transitions:
            raise ConfigurationError("transitions", "must be a non-empty {(state, event): state}")
        table: dict[tuple[str, str], str] = {}
        for key, target in transitions.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ConfigurationError("transitions", f"keys are (state, event), got {key!r}")
            source, event = key
            for state in (source, target):
                if state not in state_set:
                    raise ConfigurationError(
                        "transitions", f"{key!r} -> {target!r} uses unknown state {state!r}"
                    )
            _name(event, "transitions")
            if source in terminal_set and target != source:
                raise ConfigurationError(
                    "transitions",
                    f"{key!r} -> {target!r} leaves terminal state {source!r} "
                    "(terminal states may only accept late events as self-loops)",
                )
            table[(source, event)] = target
        reachable = _reachable(table, {initial})
        unreachable_terminal = sorted(terminal_set - reachable)
        if unreachable_terminal:
            raise ConfigurationError(
                "terminal", f"{unreachable_terminal} cannot be reached from {initial!r}"
            )
        unreachable = sorted(state_set - reachable)
        if unreachable:
            raise ConfigurationError("states", f"{unreachable} cannot be reached from {initial!r}")
        for state in sorted(state_set - terminal_set):
            if not _reachable(table, {state}) & terminal_set:
                raise ConfigurationError(
                    "transitions", f"no terminal state can be reached from {state!r}"
                )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "states", state_set)
        object.__setattr__(self, "initial", initial)
        object.__setattr__(self, "transitions", types.MappingProxyType(table))
        object.__setattr__(self, "terminal", terminal_set)
        object.__setattr__(self, "timeout_event", timeout_event)
        object.__setattr__(self, "events", frozenset(event for _, event in table) | {timeout_event})

    def decide(self, state: str, event: str, *, timer: bool = False) -> Decision:
        """What *event* does in *state*: a declared transition is ``accepted``; a
        timer in a terminal state is ``ignored``; anything else is ``rejected``."""
        target = self.transitions.get((state, event))
        if target is not None:
            return Decision("accepted", state, target)
        if timer and state in self.terminal:
            return Decision("ignored", state, state)
        return Decision("rejected", state, state)

    def is_terminal(self, state: str) -> bool:
        """Whether a saga in *state* is over."""
        return state in self.terminal

    def __repr__(self) -> str:
        return (
            f"SagaDefinition({self.name!r}, states={sorted(self.states)}, "
            f"initial={self.initial!r}, terminal={sorted(self.terminal)})"
        )


def _reachable(table: Mapping[tuple[str, str], str], start: set[str]) -> set[str]:
    seen = set(start)
    queue = deque(start)
    while queue:
        state = queue.popleft()
        for (source, _), target in table.items():
            if source == state and target not in seen:
                seen.add(target)
                queue.append(target)
    return seen
