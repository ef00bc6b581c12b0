"""OpenTelemetry context propagation across HTTP, the outbox, brokers and consumers."""

__all__: list[str] = []
