"""Change control end to end (issue 16): the retraining pipeline's steps (called in one process, the same
functions kfp.local runs) judge every candidate by the change-control plan against a real `mlflow server`;
a change inside the plan is promoted with every clause recorded, one outside it waits for an admin, who
approves or rejects it through the real gateway (other roles cannot)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from testsupport import free_port

from learning_machine.data.sources import load_dataset
from learning_machine.lifecycle.plan import PLANS
from learning_machine.registry.names import CHAMPION
from learning_machine.registry.tracker import Tracker
from learning_machine.runners.inline import retrain_inline, train_inline
from learning_machine.settings import Settings
from tests.gateway.gateway_harness import Nowhere, sqlite_gateway

SPEC = Path(__file__).resolve().parents[2] / "learning_machine" / "data" / "specs" / "synthetic-cohort.yaml"
SHIPPED = PLANS / "synthetic-cohort.yaml"


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """New rows after a concept change: a model retrained on them is better than the first one."""
    path = tmp_path_factory.mktemp("drifted") / "drifted.csv"
    load_dataset("synthetic-cohort", n_rows=2400, seed=2, scenario="concept-drift", drift_start=0).frame.to_csv(
        path, index=False)
    return path


def _model(mlflow_sqlite: Settings, tmp_path: Path, **overrides: Any) -> Settings:
    """A model of its own, whose first version (trained from scratch) is the champion."""
    settings = mlflow_sqlite.model_copy(update={"model_name": f"ccp-{uuid.uuid4().hex[:8]}", "home": tmp_path,
                                                "deployer": "none", **overrides})
    first = train_inline(settings, source="synthetic-cohort", rows=800, seed=1)
    assert first["promoted"] and first["version"] == "1"
    return settings


def _retrain(settings: Settings, drifted: Path, seed: int = 2) -> dict[str, Any]:
    return retrain_inline(settings, source=str(drifted), spec_path=str(SPEC), seed=seed,
                          reference_source="synthetic-cohort", reference_rows=500, reference_seed=1)


def _comparison(tracker: Tracker, settings: Settings, parent: str) -> dict[str, Any]:
    runs = tracker.search_runs(settings.experiment_name, f"tags.`mlflow.parentRunId` = '{parent}' and "
                                                         "tags.`lm.step` = 'evaluate'")
    assert len(runs) == 1
    return dict(tracker.run_json(runs[0], "evaluation/comparison.json"))


def test_a_change_inside_the_plan_is_promoted_with_every_clause_recorded(mlflow_sqlite, tmp_path, drifted):
    settings = _model(mlflow_sqlite, tmp_path)
    tracker = Tracker(settings.tracking_uri)
    again = _retrain(settings, drifted)
    assert again["promoted"], again["reason"]
    assert tracker.version(settings.model_name, CHAMPION).version == again["version"] == "2"

    summary = _comparison(tracker, settings, again["parent_run_id"])
    verdict = summary["plan"]
    assert verdict["decision"] == "promote" and summary["change"] == "retrain"
    digest = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert verdict["plan"] == {"plan": "synthetic-cohort-ccp", "version": "1.0.0", "digest": digest}
    clauses = {c["clause"]: c for c in verdict["clauses"]}
    # Every clause of the plan, each with its verdict; none failed.
    for name in ("better: auc or log_loss", "auc not worse", "calibration not worse: log_loss",
                 "rows after the change", "change allowed: retrain", "test rows independent of training",
                 "calibration slope", "calibration intercept", "subgroup floor: sex=female", "subgroup floor: sex=male"):
        assert name in clauses, sorted(clauses)
    assert sum(name.startswith("subgroup floor: age_band=") for name in clauses) == 4
    assert clauses["better: auc or log_loss"]["passed"] is True
    assert all(c["passed"] is not False for c in verdict["clauses"]), verdict["clauses"]
    assert clauses["rows after the change"]["value"] == summary["held_out_rows"] == 600
    slope = clauses["calibration slope"]
    assert slope["judged_on"] == "interval" and slope["interval"][0] < slope["value"] < slope["interval"][1]
    # The data manifest the independence clause was judged on: no test row among the training rows.
    manifest = summary["manifest"]
    assert manifest["independent"] is True and manifest["overlap_rows"] == 0 and manifest["overlap_by"] == "record id"
    version = tracker.version(settings.model_name, "2")
    reference = 500 if version.tags["lm.retrain_mode"] == "warm-start" else 0  # a continued model saw the old rows
    assert manifest["test"]["rows"] == 600 and manifest["train"]["rows"] == 1800 + reference
    assert version.tags["lm.plan"] == "synthetic-cohort-ccp 1.0.0" and version.tags["lm.plan_digest"] == digest
    assert version.tags["lm.plan_decision"] == "promote" and version.tags["lm.change"] == "retrain"
    assert "lm.approval" not in version.tags


def test_a_change_outside_the_plan_waits_for_an_admin_who_alone_approves_or_rejects_it(
        mlflow_sqlite, tmp_path, drifted):
    plan = yaml.safe_load(SHIPPED.read_text())
    plan["version"] = "1.1.0-strict"
    plan["acceptance"]["subgroups"]["floors"] = {"sex": {"*": 0.99}}  # no model reaches it
    path = tmp_path / "strict.yaml"
    path.write_text(yaml.safe_dump(plan))
    settings = _model(mlflow_sqlite, tmp_path, change_plan=path)
    tracker = Tracker(settings.tracking_uri)
    held = _retrain(settings, drifted)
    assert not held["promoted"] and held["version"] == "2"
    assert "outside plan synthetic-cohort-ccp 1.1.0-strict: subgroup floor: sex=female" in held["reason"]
    verdict = _comparison(tracker, settings, held["parent_run_id"])["plan"]
    assert verdict["decision"] == "awaiting-approval"
    assert verdict["plan"]["digest"] == hashlib.sha256(path.read_bytes()).hexdigest()
    floors = [c for c in verdict["clauses"] if c["clause"].startswith("subgroup floor: sex=")]
    assert len(floors) == 2 and all(c["passed"] is False and c["must_be_at_least"] == 0.99 for c in floors)
    assert tracker.version(settings.model_name, CHAMPION).version == "1"
    assert tracker.version(settings.model_name, "2").tags["lm.approval"] == "awaiting"
    assert "subgroup floor: sex=female" in tracker.version(settings.model_name, "2").tags["lm.plan_reason"]
    third = _retrain(settings, drifted, seed=3)
    assert not third["promoted"] and third["version"] == "3"

    gateway_home = tmp_path / "gateway"
    gateway_home.mkdir()
    # No model server is needed to approve (the deployer is `none`); the gateway reads the real registry.
    nowhere = Nowhere(f"http://127.0.0.1:{free_port()}", settings.model_name, settings.tracking_uri)
    with sqlite_gateway(gateway_home, nowhere, deployer="none") as gw:
        listed = gw.client("data-scientist").get("/v1/models/awaiting-approval")
        assert listed.status_code == 200
        assert [v["version"] for v in listed.json()] == ["3", "2"]
        assert gw.client("clinician").get("/v1/models/awaiting-approval").status_code == 403
        body = {"decision": "approve", "reason": "reviewed the subgroup results with the clinical lead"}
        for role in ("clinician", "data-scientist", "monitor"):
            refused = gw.client(role).post("/v1/models/2/approval", json=body)
            assert refused.status_code == 403, (role, refused.text)
        assert gw.client(None).post("/v1/models/2/approval", json=body).status_code == 401
        assert gw.client("admin").post("/v1/models/2/approval", json={"decision": "approve",
                                                                       "reason": ""}).status_code == 422
        assert tracker.version(settings.model_name, CHAMPION).version == "1"
        assert tracker.version(settings.model_name, "2").tags["lm.approval"] == "awaiting"

        rejected = gw.client("admin").post("/v1/models/3/approval",
                                           json={"decision": "reject", "reason": "second look not needed"})
        assert rejected.status_code == 200, rejected.text
        assert rejected.json()["decision"] == "rejected"
        approved = gw.client("admin").post("/v1/models/2/approval", json=body)
        assert approved.status_code == 200, approved.text
        assert approved.json()["decision"] == "approved" and approved.json()["promoted"]["detail"]["to"] == "2"
        assert tracker.version(settings.model_name, CHAMPION).version == "2"

        for version, decision in (("2", "approve"), ("3", "approve"), ("1", "reject")):
            again = gw.client("admin").post(f"/v1/models/{version}/approval",
                                            json={"decision": decision, "reason": "once more"})
            assert again.status_code == 409, (version, again.text)
            assert "is not awaiting approval" in again.json()["detail"]
        events = gw.client("admin").get("/v1/events", params={"limit": 50}).json()["items"]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_kind.setdefault(event["kind"], []).append(event)
    assert [e["model_version"] for e in by_kind["approved"]] == ["2"]
    assert by_kind["approved"][0]["detail"]["by"] == "test admin"
    assert by_kind["approved"][0]["detail"]["why"] == body["reason"]
    assert [e["model_version"] for e in by_kind["rejected"]] == ["3"]
    assert by_kind["rejected"][0]["detail"]["why"] == "second look not needed"
    promoted = by_kind["promoted"][0]["detail"]
    assert promoted["from"] == "1" and promoted["to"] == "2" and promoted["by"] == "test admin"
    assert "approved outside the change-control plan" in promoted["reason"]
    tags2 = tracker.version(settings.model_name, "2").tags
    assert tags2["lm.approval"] == "approved" and tags2["lm.approval_by"] == "test admin"
    assert tags2["lm.approval_reason"] == body["reason"]
    assert tracker.version(settings.model_name, "3").tags["lm.approval"] == "rejected"
