"""The lifecycle's one promotion rule and its one change of champion (alias, serving, event), against a
real `mlflow server`; the same function the CLI and the gateway's admin routes call."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from learning_machine.data.sources import load_dataset
from learning_machine.errors import RegistryError, ServiceUnavailableError, UnknownNameError
from learning_machine.lifecycle.promotion import change_champion, decide
from learning_machine.lifecycle.training import train_and_register
from learning_machine.registry.names import CHAMPION
from learning_machine.registry.tracker import Tracker
from learning_machine.settings import Settings


@pytest.mark.parametrize(("policy", "has_champion", "candidate", "champion", "promote"), [
    ("always", True, 0.6, 0.9, True),
    ("never", False, 0.9, None, False),
    ("if-first", False, None, None, True),
    ("if-first", True, 0.9, 0.6, False),
    ("gate", False, 0.7, None, True),  # no champion yet: the first candidate serves
    ("gate", True, 0.80, 0.79, True),
    ("gate", True, 0.79, 0.79, False),  # equal is not better
])
def test_one_rule_decides_every_promotion(policy, has_champion, candidate, champion, promote):
    decision = decide(policy, has_champion=has_champion, metric="auc", margin=0.0, candidate=candidate,
                      champion=champion)
    assert decision.promote is promote
    assert decision.reason


def test_the_gate_respects_the_margin_and_the_metric_direction():
    assert not decide("gate", has_champion=True, metric="auc", margin=0.02, candidate=0.81, champion=0.80).promote
    assert decide("gate", has_champion=True, metric="brier", candidate=0.10, champion=0.12).promote  # lower wins
    assert "champion kept" in decide("gate", has_champion=True, metric="log_loss", candidate=0.5,
                                     champion=0.4).reason
    with pytest.raises(UnknownNameError, match="valid promotion policys are: always, gate, if-first, never"):
        decide("sometimes", has_champion=True)
    with pytest.raises(UnknownNameError, match="unknown gate metric 'recall'"):
        decide("gate", has_champion=True, metric="recall", candidate=0.1, champion=0.2)


def test_change_champion_moves_the_alias_serves_and_records_who_and_why(mlflow_sqlite: Settings, tmp_path):
    settings = mlflow_sqlite.model_copy(update={"model_name": f"risk-{uuid.uuid4().hex[:8]}", "home": tmp_path,
                                                "deployer": "none", "model_server_url": "http://127.0.0.1:9"})
    tracker = Tracker(settings.tracking_uri)
    data = load_dataset("synthetic-cohort", n_rows=600, seed=5)
    first = train_and_register(settings, tracker, data, kind="logistic-regression", promote="if-first")
    second = train_and_register(settings, tracker, data, kind="logistic-regression", promote="never")
    events: list[tuple[str, dict[str, Any], str | None]] = []

    def record(kind: str, detail: dict[str, Any], version: str | None) -> dict[str, Any]:
        events.append((kind, detail, version))
        return {"kind": kind, "detail": detail}

    stored = change_champion(settings, tracker, action="promote", version=second.version.version, reason="better",
                             by="alice", record=record)
    assert stored["kind"] == "promoted"  # what the recorder returned (the gateway returns the stored event)
    assert tracker.alias_version(settings.model_name, CHAMPION).version == second.version.version
    kind, detail, version = events[-1]
    assert (kind, version) == ("promoted", second.version.version)
    assert detail["from"] == first.version.version and detail["to"] == second.version.version
    assert detail["by"] == "alice" and detail["reason"] == "better"
    # LM_DEPLOYER=none: the version is registered, not served, and the event says so.
    assert detail["deployed"]["backend"] == "none" and detail["deployed"]["changed"] is False

    change_champion(settings, tracker, action="rollback", version=None, reason="rollback", by="bob", record=record)
    kind, detail, version = events[-1]
    assert (kind, version, detail["by"]) == ("rolled-back", first.version.version, "bob")
    assert tracker.alias_version(settings.model_name, CHAMPION).version == first.version.version

    with pytest.raises(RegistryError, match="already the champion"):
        change_champion(settings, tracker, action="rollback", version=first.version.version, reason="x", by="bob",
                        record=record)
    assert len(events) == 2  # a refused change records nothing


def test_a_change_of_champion_whose_deployment_fails_leaves_the_alias(mlflow_sqlite: Settings, model_server: Any,
                                                                      tmp_path):
    """Atomic: the version is served first and the alias moves only once it serves. The deployer is the local
    one, pointed at the session's real MLServer, which does not serve this model name (its repository has no
    such model), so serving fails; the champion stays and the failure is recorded."""
    settings = mlflow_sqlite.model_copy(update={
        "model_name": f"risk-{uuid.uuid4().hex[:8]}", "home": tmp_path, "deployer": "local",
        "model_server_url": model_server.url})
    tracker = Tracker(settings.tracking_uri)
    data = load_dataset("synthetic-cohort", n_rows=600, seed=5)
    first = train_and_register(settings, tracker, data, kind="logistic-regression", promote="if-first")
    second = train_and_register(settings, tracker, data, kind="logistic-regression", promote="never")
    events: list[tuple[str, dict[str, Any], str | None]] = []
    with pytest.raises(ServiceUnavailableError, match=f"champion stays v{first.version.version}"):
        change_champion(settings, tracker, action="promote", version=second.version.version, reason="better",
                        by="alice", record=lambda kind, detail, version: events.append((kind, detail, version)))
    assert tracker.alias_version(settings.model_name, CHAMPION).version == first.version.version
    assert [(k, v, d["champion_kept"], d["by"]) for k, d, v in events] == [
        ("promotion-failed", second.version.version, first.version.version, "alice")]
    assert "does not serve" in events[0][1]["error"]
