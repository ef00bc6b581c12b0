from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from examples.orders_invoices.embedded import EmbeddedSystem


@pytest.fixture
def system(tmp_path: Path) -> Iterator[EmbeddedSystem]:
    with EmbeddedSystem(tmp_path) as running:
        yield running


@pytest.fixture(scope="module")
def shared_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedSystem]:
    """One system for tests that never change its state (bad input)."""
    with EmbeddedSystem(tmp_path_factory.mktemp("oi")) as running:
        yield running


@pytest.fixture
def shared_gateway(shared_system: EmbeddedSystem) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_system.gateway.url, timeout=10) as client:
        yield client


@pytest.fixture
def gateway(system: EmbeddedSystem) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=system.gateway.url, timeout=10) as client:
        yield client
