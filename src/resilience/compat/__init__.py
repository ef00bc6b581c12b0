"""Drop-in facades for other circuit breaker libraries, running on resilience's engine.

- `resilience.compat.pybreaker`: pybreaker's API (``CircuitBreaker``,
  ``CircuitBreakerListener``, ``CircuitBreakerError``, storages), plus
  `as_policy` to use an existing pybreaker breaker as a pipeline stage.

Import the submodule you need; this package imports nothing on its own.
"""

__all__: list[str] = []
