"""Small helpers shared by the policies: option validation and the default telemetry sink."""

from __future__ import annotations

import importlib.util
import logging
import math
from typing import Final

from resilience._errors import ConfigurationError
from resilience._telemetry import Event, LoggingTelemetry, Telemetry

__all__ = [
    "DEFAULT_TELEMETRY",
    "check_name",
    "check_non_negative",
    "check_positive",
    "check_positive_int",
    "emit",
]


class _DefaultTelemetry:
    """Logs on the ``resilience`` logger at DEBUG, and also feeds OpenTelemetry
    metrics and span events when ``opentelemetry-api`` is installed.

    The check happens on the first event, not at import, so ``import resilience``
    never imports OpenTelemetry; events are only built on failure paths.
    """

    __slots__ = ("_sinks",)

    def __init__(self) -> None:
        self._sinks: tuple[Telemetry, ...] | None = None

    def _resolve(self) -> tuple[Telemetry, ...]:
        sinks: list[Telemetry] = [LoggingTelemetry(level=logging.DEBUG)]
        if importlib.util.find_spec("opentelemetry") is not None:
            from resilience.tracing import OpenTelemetryTelemetry

            sinks.append(OpenTelemetryTelemetry())
        return tuple(sinks)

    @property
    def sinks(self) -> tuple[Telemetry, ...]:
        if self._sinks is None:
            self._sinks = self._resolve()
        return self._sinks

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink.emit(event)

    def __repr__(self) -> str:
        return "DefaultTelemetry()"


DEFAULT_TELEMETRY: Final[Telemetry] = _DefaultTelemetry()
"""Where policies send events unless given a sink: the ``resilience`` logger at
DEBUG, plus OpenTelemetry when it is installed (see `_DefaultTelemetry`).

Events are only built on failure paths (a retry, a rejection, a timeout), so
this costs nothing on the success path.
"""


def emit(telemetry: Telemetry, component: str, name: str, kind: str, **attributes: object) -> None:
    """Send one event; a failing sink must never break the protected call."""
    try:
        telemetry.emit(Event(component, name, kind, attributes))
    except Exception:  # telemetry must never take the service down
        logging.getLogger("resilience").exception("telemetry sink %r failed", telemetry)


def check_name(value: object, field: str = "name") -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(field, f"must be a non-empty string, got {value!r}")
    return value


def _number(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(field, f"must be a number, got {value!r}")
    if math.isnan(value):
        raise ConfigurationError(field, "must not be NaN")
    return float(value)


def check_positive(field: str, value: object, *, allow_inf: bool = False) -> float:
    number = _number(field, value)
    if number <= 0 or (math.isinf(number) and not allow_inf):
        raise ConfigurationError(field, f"must be a positive finite number, got {value!r}")
    return number


def check_non_negative(field: str, value: object, *, allow_inf: bool = False) -> float:
    number = _number(field, value)
    if number < 0 or (math.isinf(number) and not allow_inf):
        raise ConfigurationError(field, f"must be a finite number >= 0, got {value!r}")
    return number


def check_positive_int(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(field, f"must be an integer >= 1, got {value!r}")
    return value
