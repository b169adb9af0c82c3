"""Fixtures of the dashboard tests: the real gateway (SQLite) in front of the real model server, once with
a history (predictions, outcomes, monitoring windows from the real monitor, events) and once empty."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateway"))  # gateway_harness

from gateway_harness import (
    RunningGateway,
    TwoVersions,
    gateway_settings,
    sqlite_gateway,
    start_gateway,
    two_versions_gateway,
)

from learning_machine.clients.gateway import LearningMachineClient
from learning_machine.loop.stream import StreamPlan, generated_records, run_stream


def _stream(client: LearningMachineClient, rows: int, *, seed: int, scenario: str, prefix: str) -> None:
    source = generated_records(rows, seed=seed, scenario=scenario, drift_start=0, id_prefix=prefix)
    report = run_stream(client, source, StreamPlan(rows=rows, batch_size=50, outcome_delay_rows=20))
    assert report.predicted == rows, report.summary()


@pytest.fixture(scope="session")
def history_gateway(tmp_path_factory: pytest.TempPathFactory, model_server: Any) -> Iterator[RunningGateway]:
    """A gateway with 500 predictions (outcomes for most), monitoring results of five windows written by
    the real monitor (drift through the model server's detector), and the events the policy recorded."""
    from learning_machine.loop.service import LoopService

    home = tmp_path_factory.mktemp("dashboard-gateway")
    settings = gateway_settings(home, f"sqlite:///{home / 'lm.db'}", model_server, monitor_window_rows=100,
                                monitor_performance_rows=300, policy_drift_windows=1, policy_min_outcomes=50,
                                policy_cooldown_s=0.0)
    running = start_gateway(settings, getattr(model_server, "spec", None))
    with LearningMachineClient(running.url, running.tokens["data-scientist"], timeout_s=120) as client, \
            LearningMachineClient(running.url, running.tokens["monitor"], timeout_s=120) as monitor:
        loop = LoopService(settings, monitor)
        loop.monitor.trigger = None  # the policy decides and records; no retraining pipeline in these tests
        _stream(client, 300, seed=11, scenario="none", prefix="base-")
        loop.step()
        _stream(client, 200, seed=12, scenario="covariate-shift", prefix="shift-")
        loop.step()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def empty_gateway(tmp_path_factory: pytest.TempPathFactory, model_server: Any) -> Iterator[RunningGateway]:
    """A gateway with a model but no records, results or events yet (a first-time user's view)."""
    with sqlite_gateway(tmp_path_factory.mktemp("dashboard-empty"), model_server) as running:
        yield running


@pytest.fixture(scope="session")
def record_gateway(mlflow_sqlite: Any, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[RunningGateway, TwoVersions]]:
    """A gateway over a model of its own with a first version and a retrained one, promoted by an admin after
    its shadow evaluation: the labels and change records of both (no model server: no patients either)."""
    with two_versions_gateway(mlflow_sqlite, tmp_path_factory.mktemp("dashboard-record"), "risk-label") as (
            running, two):
        monitor = running.client("monitor")
        for kind, detail in (("shadow-started", {"challenger": two.retrained, "champion": two.first}),
                             ("shadow-look", {"look": 1, "rows": 200, "promote": True, "reason": "better on AUC"})):
            assert monitor.post("/v1/events", json={"kind": kind, "detail": detail,
                                                    "model_version": two.retrained}).status_code == 201
        promoted = running.client("admin").post("/v1/models/promote", json={"version": two.retrained,
                                                                             "reason": "shadow evidence"})
        assert promoted.status_code == 200, promoted.text
        yield running, two

