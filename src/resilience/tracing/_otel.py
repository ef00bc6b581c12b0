"""Lazy, cached access to the OpenTelemetry API.

Every public function in `resilience.tracing` starts by asking `api()` for the
OpenTelemetry modules. The first call tries the import once and remembers the
answer, so when ``opentelemetry-api`` is not installed each later call costs
one global read and returns a no-op result. Nothing here imports
OpenTelemetry at module import time: ``import resilience.tracing`` stays free.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from resilience._version import __version__

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider

__all__ = ["INSTRUMENTATION_NAME", "OtelApi", "api", "reset_detection", "tracer"]

INSTRUMENTATION_NAME: Final = "resilience"


@dataclass(frozen=True, slots=True)
class OtelApi:
    """The OpenTelemetry API modules we use, imported together once."""

    trace: ModuleType
    context: ModuleType
    propagate: ModuleType
    baggage: ModuleType
    metrics: ModuleType


_detected = False
_api: OtelApi | None = None
_MAX_CACHED_TRACERS: Final = 32
# (instrumentation name, id(provider) or 0 for the global one) -> (provider, tracer).
# The provider is kept in the value so its id cannot be reused while cached.
_tracers: dict[tuple[str, int], tuple[Any, Tracer]] = {}
_tracers_lock = threading.Lock()


def _load() -> OtelApi | None:
    try:
        return OtelApi(
            trace=importlib.import_module("opentelemetry.trace"),
            context=importlib.import_module("opentelemetry.context"),
            propagate=importlib.import_module("opentelemetry.propagate"),
            baggage=importlib.import_module("opentelemetry.baggage"),
            metrics=importlib.import_module("opentelemetry.metrics"),
        )
    except ImportError:
        return None


def api() -> OtelApi | None:
    """The OpenTelemetry API, or None when ``opentelemetry-api`` is not installed."""
    global _detected, _api  # noqa: PLW0603 - detected once per process, on first use
    if not _detected:
        _api = _load()
        _detected = True
    return _api


def tracer(
    otel: OtelApi, provider: TracerProvider | None, name: str = INSTRUMENTATION_NAME
) -> Tracer:
    """A tracer from *provider* (the global one if None), cached.

    ``get_tracer`` costs more than starting a span in the SDK (it builds an
    instrumentation scope each time), so tracers are made once per provider.
    The global provider's tracer is OpenTelemetry's proxy when no provider is
    set yet, which follows the provider once the application sets it.
    """
    key = (name, 0 if provider is None else id(provider))
    cached = _tracers.get(key)
    if cached is not None:
        return cached[1]
    made: Tracer = otel.trace.get_tracer(name, __version__, tracer_provider=provider)
    with _tracers_lock:
        if len(_tracers) >= _MAX_CACHED_TRACERS:
            _tracers.clear()  # many short-lived providers (tests): start over
        _tracers[key] = (provider, made)
    return made


def reset_detection() -> None:
    """Forget the cached detection and tracers, so the next `api()` call imports again."""
    global _detected, _api  # noqa: PLW0603
    _detected = False
    _api = None
    with _tracers_lock:
        _tracers.clear()
