"""Fixtures: the real gateway in front of the real MLServer (``model_server``), once on SQLite, once on
PostgreSQL, and one whose model server is down. The helpers live in ``gateway_harness``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gateway_harness import (  # re-exported for modules that import them from here
    Nowhere,
    RunningGateway,
    free_port,
    gateway_settings,
    make_records,
    sqlite_gateway,
    start_gateway,
)
from testsupport import fresh_postgres_database

_free_port = free_port
__all__ = ["RunningGateway", "_free_port", "gateway_settings", "make_records", "start_gateway"]



@pytest.fixture(scope="session")
def gateway_postgres_url() -> Iterator[str]:
    """An empty database of the gateway's own on the local PostgreSQL, dropped at the end."""
    with fresh_postgres_database("lm_gateway") as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            model_server: Any) -> Iterator[RunningGateway]:
    """The gateway in front of the real model server, on each database backend."""
    home = tmp_path_factory.mktemp(f"gateway-{request.param}")
    url = f"sqlite:///{home / 'lm.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "gateway_postgres_url")
    running = start_gateway(gateway_settings(home, url, model_server), getattr(model_server, "spec", None))
    yield running
    running.stop()


@pytest.fixture
def unchanged(gateway: RunningGateway) -> Iterator[None]:
    """Asserts that the test stored nothing (row counts of every table before and after)."""
    before = gateway.counts()
    yield
    assert gateway.counts() == before


@pytest.fixture(scope="session")
def gateway_without_model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """The gateway whose model server is down (nothing listens on its port)."""
    with sqlite_gateway(tmp_path_factory.mktemp("gateway-down"), Nowhere(f"http://127.0.0.1:{free_port()}")) as gw:
        yield gw
