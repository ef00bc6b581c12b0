"""Policy events as OpenTelemetry metrics and span events.

Run it: ``python docs/tracing/policy_metrics.py``.
"""

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from resilience import CircuitOpenError
from resilience.policies import CircuitBreaker, CircuitBreakerConfig
from resilience.tracing import OpenTelemetryTelemetry

reader = InMemoryMetricReader()  # in production: a PeriodicExportingMetricReader + OTLP
telemetry = OpenTelemetryTelemetry(meter_provider=MeterProvider(metric_readers=[reader]))

breaker = CircuitBreaker(
    "acquirer", CircuitBreakerConfig(consecutive_failures=2), telemetry=telemetry
)


def charge() -> None:
    raise ConnectionError("acquirer down")


for _ in range(3):
    try:
        breaker.call(charge)
    except (ConnectionError, CircuitOpenError) as exc:
        print(type(exc).__name__)

data = reader.get_metrics_data()
assert data is not None
for metric in data.resource_metrics[0].scope_metrics[0].metrics:
    for point in metric.data.data_points:
        print(metric.name, dict(point.attributes or {}), getattr(point, "value", None))
