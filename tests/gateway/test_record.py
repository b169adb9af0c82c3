"""Each version's change record and model-facts label through the real gateway, against a real MLflow server:
the first version (trained and registered as `lm up` does, no champion) and a retrained one (the retraining
pipeline's own retrain, evaluate and register steps), complete, byte-identical after a later promotion and a
rollback that the rollout part shows, the label in JSON, Markdown and HTML, and a tampered record reported."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import (
    RunningGateway,
    problem,
    two_versions_gateway,
)

from learning_machine.data.sources import load_dataset
from learning_machine.lifecycle.label import SECTIONS, diff, label, to_html, to_markdown
from learning_machine.lifecycle.record import ARTIFACT, DIGEST_TAG, LOCATION_TAG, SCHEMA, code_provenance
from learning_machine.lifecycle.training import train_and_register
from learning_machine.registry.tracker import Tracker
from learning_machine.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Versions:
    settings: Settings
    tracker: Tracker
    gateway: RunningGateway
    first: str
    retrained: str
    comparison: dict[str, Any]
    retrain_run: str


def _head() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def versions(mlflow_sqlite: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Versions]:
    """A first version and a retrained one (:func:`gateway_harness.train_two_versions`) of a model of their own,
    and a gateway over that model (no model server: promotions only move the alias)."""
    with two_versions_gateway(mlflow_sqlite, tmp_path_factory.mktemp("record"), "risk-record") as (gateway, two):
        yield Versions(two.settings, Tracker(two.settings.tracking_uri), gateway, two.first, two.retrained,
                       two.comparison, two.retrain_run)


def _record(v: Versions, version: str, role: str = "clinician") -> dict[str, Any]:
    response = v.gateway.client(role).get(f"/v1/models/{version}/record")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _stored_bytes(v: Versions, version: str) -> bytes:
    location = v.tracker.version(v.settings.model_name, version).tags[LOCATION_TAG]
    run_id, _, path = location[len("runs:/"):].partition("/")
    data = v.tracker.run_bytes(run_id, path)
    assert data is not None
    return data


def _manifest_expectation(v: Versions, run_id: str, found: dict[str, Any]) -> None:
    """The data manifest is the candidate run's ``data/manifest.json`` (written by the train and retrain steps):
    the record carries it as logged; where a run has none, the record says it is missing."""
    logged = v.tracker.run_json(run_id, "data/manifest.json")
    if logged is not None:
        assert found["record"]["data"]["manifest"] == logged
        assert "data.manifest" not in found["missing"]
    else:
        assert found["record"]["data"]["manifest"] is None
        assert "data.manifest" in found["missing"]


def test_the_first_versions_record_is_complete(versions: Versions):
    v = versions
    found = _record(v, v.first)
    record = found["record"]
    info = v.tracker.version(v.settings.model_name, v.first)
    assert found["sha256"] == info.tags[DIGEST_TAG] == hashlib.sha256(_stored_bytes(v, v.first)).hexdigest()
    assert found["verified"] is True and found["location"].endswith(ARTIFACT)
    assert record["schema"] == SCHEMA and record["version"] == v.first and record["change"] == "train"
    assert set(record) >= {"plan", "data", "training", "evaluation", "decision"}
    # The plan in force (none was applied: there was no champion to compare with).
    assert record["plan"]["in_force"]["plan"] and len(record["plan"]["in_force"]["digest"]) == 64
    assert record["plan"]["applied"] is None
    # Data: the rows it was trained and tested on, and their digest.
    data = record["data"]
    assert data["dataset"] == "synthetic-cohort" and len(data["digest"]) >= 12
    assert data["train_rows"] + data["test_rows"] == 1500 and data["held_out_rows"] == data["test_rows"]
    _manifest_expectation(v, info.run_id, found)
    # Training: run, code commit of this checkout, seed, parameters.
    training = record["training"]
    assert training["run_id"] == info.run_id and training["model_id"] == info.model_id
    assert training["code"]["commit"] == _head() and training["code"]["source"] == "git"
    assert training["seed"] == v.settings.seed and training["kind"] == "xgboost" and training["params"]
    # Evaluation: the candidate's own, overall and per subgroup; no champion.
    evaluation = record["evaluation"]
    assert 0.5 < evaluation["candidate"]["metrics"]["auc"] <= 1
    assert evaluation["candidate"]["subgroups"] and evaluation["champion"] is None and evaluation["evidence"] is None
    # Decision: promoted because there was no champion.
    assert record["decision"]["outcome"] == "promote" and "no champion" in record["decision"]["reason"]
    assert record["decision"]["plan"] is None and record["decision"]["approval_required"] is False
    assert set(found["missing"]) <= {"data.manifest"}  # exactly what the manifest check above says
    # Rollout: it serves since it was promoted at training (no gateway saw that: the registry says when).
    rollout = found["rollout"]
    assert rollout["serving_now"] is True and len(rollout["serving"]) == 1
    assert rollout["serving"][0]["until"] is None and rollout["serving"][0]["reason"] == "first model"


def test_the_retrained_versions_record_has_the_comparison_and_the_decision(versions: Versions):
    v = versions
    found = _record(v, v.retrained)
    record = found["record"]
    assert record["change"] == v.comparison.get("change", "retrain") == "retrain"
    assert record["training"]["run_id"] == v.retrain_run and record["training"]["retrain_mode"]
    assert record["training"]["candidates"] and record["training"]["params"]
    evaluation = record["evaluation"]
    assert evaluation["champion"]["version"] == v.first
    assert evaluation["candidate"]["metrics"] == v.comparison["candidate"]["metrics"]
    assert evaluation["champion"]["subgroups"] == v.comparison["champion"]["subgroups"]
    auc = evaluation["evidence"]["auc"]
    assert auc["ci_low"] <= auc["diff"] <= auc["ci_high"] and evaluation["evidence"]["subgroups"]
    gate = record["decision"]["gate"]
    assert gate["rule"] == "evidence" and gate["clauses"] == v.comparison["gate"]["clauses"]
    assert all(c["passed"] in (True, False, None) for c in gate["clauses"])
    assert record["decision"]["outcome"] == ("promote" if v.comparison["gate"]["promote"] else "keep-champion") \
        if not v.comparison.get("plan") else v.comparison["plan"]["decision"]
    if v.comparison.get("plan"):  # the plan's verdict, clause by clause, from the evaluate step
        assert record["decision"]["plan"]["clauses"] == v.comparison["plan"]["clauses"]
        assert record["plan"]["applied"] == v.comparison["plan"]["plan"]
    else:
        assert record["decision"]["plan"] is None and "decision.plan" in found["missing"]
    _manifest_expectation(v, v.retrain_run, found)
    assert set(found["missing"]) <= {"data.manifest", "decision.plan"}  # each as the checks above say
    assert found["rollout"]["serving_now"] is False and found["rollout"]["serving"] == []


def test_records_are_unchanged_by_promotion_and_rollback_which_the_rollout_shows(versions: Versions):
    v = versions
    before = {n: (_stored_bytes(v, n), _record(v, n)) for n in (v.first, v.retrained)}
    admin, monitor = v.gateway.client("admin"), v.gateway.client("monitor")
    for kind, detail in (("shadow-started", {"challenger": v.retrained, "champion": v.first, "after_prediction": 0}),
                         ("shadow-look", {"look": 1, "rows": 100, "promote": True, "reason": "better on AUC",
                                          "evidence": "auc +0.04 [+0.01, +0.07]", "clauses": "auc better: pass"}),
                         ("approved", {"by": "test admin", "why": "reviewed the subgroup results"})):
        assert monitor.post("/v1/events", json={"kind": kind, "detail": detail,
                                                "model_version": v.retrained}).status_code == 201
    promoted = admin.post("/v1/models/promote", json={"version": v.retrained, "reason": "shadow evidence"})
    assert promoted.status_code == 200, promoted.text
    # The plan's rollback rule judged it, as the learning loop records it: a tag on the version and an event.
    v.tracker.tag_version(v.settings.model_name, v.retrained, {"lm.rollout": "rollback-recommended"})
    assert monitor.post("/v1/events", json={"kind": "rollback-recommended", "detail": {"why": "AUC 0.61 < 0.70"},
                                            "model_version": v.retrained}).status_code == 201
    rolled = admin.post("/v1/models/rollback", json={})
    assert rolled.status_code == 200, rolled.text
    for n, (data, found) in before.items():
        after = _record(v, n)
        assert _stored_bytes(v, n) == data
        assert after["sha256"] == found["sha256"] == hashlib.sha256(data).hexdigest()
        assert after["record"] == found["record"]
    second = _record(v, v.retrained)["rollout"]
    assert second["approval"]["state"] == "approved" and second["approval"]["by"] == "test admin"
    assert second["shadow"]["looks"][0]["rows"] == 100 and second["shadow"]["ended"]["kind"] == "promoted"
    [period] = second["serving"]
    assert period["from"] == promoted.json()["created_at"] and period["until"] == rolled.json()["created_at"]
    assert period["ended_by"] == "rolled back" and period["replaced"] == v.first
    assert second["rollbacks"] == [{"at": rolled.json()["created_at"], "to": v.first, "by": "test admin",
                                    "reason": "rollback"}]
    assert second["serving_now"] is False and second["rollout_check"] == "rollback-recommended"
    assert [r["why"] for r in second["rollback_recommended"]] == ["AUC 0.61 < 0.70"]
    first = _record(v, v.first)["rollout"]
    assert [p["ended_by"] for p in first["serving"]] == [f"replaced by v{v.retrained}", None]
    assert first["serving"][1]["how"] == "rolled back to" and first["serving_now"] is True


def test_the_label_in_json_markdown_and_html(versions: Versions):
    v = versions
    client = v.gateway.client("clinician")
    facts = client.get(f"/v1/models/{v.retrained}/label").json()
    record = _record(v, v.retrained)
    assert all(facts[s] is not None for s in SECTIONS)
    overall = facts["validation"]["overall"]
    assert overall["auc"] == round(record["record"]["evaluation"]["candidate"]["metrics"]["auc"], 4)
    assert overall["auc_low"] < overall["auc"] < overall["auc_high"]
    versus = facts["validation"]["against champion"]
    assert versus["champion"] == v.first and versus["auc"]["low"] <= versus["auc"]["diff"] <= versus["auc"]["high"]
    assert {(r["subgroup"], r["group"]) for r in facts["subgroups"]} == {
        (g, str(name)) for g, labels in record["record"]["evaluation"]["candidate"]["subgroups"].items()
        for name in labels}
    assert facts["record_sha256"] == record["sha256"] and facts["mechanism"]["code commit"] == _head()
    first = client.get("/v1/models/champion/label").json()  # an alias: the champion (v1 after the rollback)
    assert first["version"] == v.first and first["validation"]["against champion"] is None
    markdown = client.get(f"/v1/models/{v.retrained}/label", params={"format": "markdown"})
    assert markdown.status_code == 200 and markdown.headers["content-type"].startswith("text/markdown")
    for title in ("## Summary", "## Mechanism of risk score calculation", "## Validation and performance",
                  "## Uses and directions", "## Warnings", "## Subgroup performance"):
        assert title in markdown.text
    page = client.get(f"/v1/models/{v.retrained}/label", params={"format": "html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    sections = _sections(page.text)
    assert sections == list(SECTIONS)
    # The diff against the version it was compared with.
    changes = client.get(f"/v1/models/{v.retrained}/label/diff").json()
    assert changes["from"] == v.first and changes["to"] == v.retrained
    assert changes["overall"]["auc"]["delta"] == round(overall["auc"] - first["validation"]["overall"]["auc"], 4)
    assert changes["subgroups"] and "summary.change" in changes["changed"]
    assert problem(client.get(f"/v1/models/{v.first}/label/diff"), 404)["detail"].endswith(
        "nothing to compare its label with")


def _sections(page: str) -> list[str]:
    class Sections(HTMLParser):
        found: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "section":
                self.found.append(dict(attrs)["id"] or "")

    parser = Sections()
    parser.found = []
    parser.feed(page)
    return parser.found


def test_the_label_escapes_what_it_shows(versions: Versions):
    """Text from the dataset spec or a record (a feature's description, a reason) cannot inject markup."""
    v = versions
    found = _record(v, v.retrained)
    hostile = "<script>alert(1)</script> **bold** [link](http://x)"
    facts = label(found["record"], {"intended_use": hostile, "target": {"name": "outcome", "description": hostile},
                                    "features": [{"name": hostile}]}, found["rollout"], sha256=found["sha256"])
    page = to_html(facts)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    markdown = to_markdown(facts)
    assert "<script>" not in markdown and "**bold**" not in markdown and "[link](" not in markdown
    assert diff(facts, facts)["changed"] == {}


def test_a_recalibrations_record_and_label_name_the_change(versions: Versions, tmp_path):
    """A recalibration (the plan's second kind of change: the champion's scores with a new map) is recorded as
    such, with the map among its parameters, judged against the champion it recalibrates."""
    from learning_machine.components import release, steps
    from learning_machine.data.synthetic import generate_cohort

    v = versions
    champion = v.tracker.alias_version(v.settings.model_name, "champion")
    shifted = generate_cohort(1500, seed=25, scenario="prevalence-shift", drift_start=0, id_prefix="R")
    steps.write_dataset(tmp_path / "new", shifted.frame, v.gateway.spec, {"source_uri": "generated:prevalence-shift",
                                                                          "params": {"seed": 25}})
    run_id, _ = steps.retrain(v.settings, tmp_path / "new", tmp_path / "test", change="recalibrate")
    steps.evaluate(v.settings, run_id, tmp_path / "test", tmp_path / "comparison.json", policy="gate")
    version = release.register(v.settings, run_id, tmp_path / "comparison.json")
    found = _record(v, version)
    record = found["record"]
    assert record["change"] == "recalibrate" == json.loads((tmp_path / "comparison.json").read_text())["change"]
    assert record["evaluation"]["champion"]["version"] == champion.version
    assert any(k.startswith("recalibration") for k in record["training"]["params"]), record["training"]["params"]
    facts = v.gateway.client("clinician").get(f"/v1/models/{version}/label").json()
    assert facts["summary"]["change"] == "recalibrate"


def test_a_tampered_record_is_reported_not_served(versions: Versions):
    v = versions
    third = train_and_register(v.settings, v.tracker, load_dataset("synthetic-cohort", n_rows=600, seed=23),
                               kind="logistic-regression", promote="never").version.version
    assert _record(v, third)["record"]["decision"]["outcome"] == "keep-champion"
    location = v.tracker.version(v.settings.model_name, third).tags[LOCATION_TAG]
    run_id, _, path = location[len("runs:/"):].partition("/")
    stored = json.loads(_stored_bytes(v, third))
    stored["evaluation"]["candidate"]["metrics"]["auc"] = 0.99  # a better-looking model than was measured
    v.tracker.log_bytes(run_id, json.dumps(stored, indent=2, sort_keys=True).encode() + b"\n", path)
    for route in (f"/v1/models/{third}/record", f"/v1/models/{third}/label"):
        body = problem(v.gateway.client("clinician").get(route), 409)
        assert body["type"].endswith("/change-record-tampered") and "has changed since it was written" in body["detail"]
    # Only that version: the others still read.
    assert _record(v, v.first)["verified"] is True


def test_a_version_whose_record_cannot_be_written_is_not_registered(versions: Versions, monkeypatch):
    """The record is part of the registration: when it cannot be stored, no version is left without one."""
    from learning_machine.errors import TrackingUnavailableError

    v = versions
    tracker = Tracker(v.settings.tracking_uri)
    before = [x.version for x in tracker.list_versions(v.settings.model_name)]

    def broken(*args: Any, **kwargs: Any) -> None:
        raise TrackingUnavailableError("uploading change-record/record.json: the artifact store went away")

    monkeypatch.setattr(tracker, "log_bytes", broken)
    with pytest.raises(TrackingUnavailableError, match="artifact store went away"):
        train_and_register(v.settings, tracker, load_dataset("synthetic-cohort", n_rows=600, seed=24),
                           kind="logistic-regression", promote="never")
    assert [x.version for x in tracker.list_versions(v.settings.model_name)] == before


def test_unknown_versions_roles_and_mlflow_down(versions: Versions, gateway_without_model_server: RunningGateway):
    v = versions
    assert problem(v.gateway.client("clinician").get("/v1/models/999/record"), 404)["detail"]
    assert problem(v.gateway.client("clinician").get("/v1/models/999/label"), 404)["detail"]
    assert problem(v.gateway.client(None).get(f"/v1/models/{v.first}/record"), 401)
    assert v.gateway.client("data-scientist").get(f"/v1/models/{v.first}/label").status_code == 200
    bad = v.gateway.client("clinician").get(f"/v1/models/{v.first}/label", params={"format": "pdf"})
    assert bad.status_code == 422
    # MLflow unreachable (this gateway's tracking server is nowhere): 503, as every registry read.
    assert problem(gateway_without_model_server.client("clinician").get("/v1/models/1/record"), 503)["detail"]


def test_the_code_commit_falls_back_to_the_setting_outside_git(versions: Versions, monkeypatch, tmp_path):
    """An installed image has no git checkout: the commit comes from LM_CODE_COMMIT, the image from LM_IMAGE."""
    import learning_machine.lifecycle.record as record_module

    assert code_provenance(versions.settings)["commit"] == _head()  # a checkout's own HEAD
    monkeypatch.setattr(record_module, "__file__", str(tmp_path / "a" / "b" / "c" / "record.py"))
    settings = versions.settings.model_copy(update={"code_commit": "abc1234", "image": "registry/lm@sha256:0f"})
    assert code_provenance(settings) == {"commit": "abc1234", "uncommitted_changes": None,
                                         "source": "LM_CODE_COMMIT", "image": "registry/lm@sha256:0f"}
    # An installed copy inside another repository (a virtual environment in a project's checkout) does not take
    # that repository's commit for its own.
    repo = tmp_path / "project"
    (repo / "venv" / "site" / "learning_machine" / "lifecycle").mkdir(parents=True)
    for args in (["init", "-q"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    monkeypatch.setattr(record_module, "__file__", str(repo / "venv" / "site" / "learning_machine" / "lifecycle" / "r.py"))
    assert code_provenance(settings)["commit"] == "abc1234"


def test_lm_models_record_and_label(versions: Versions, monkeypatch, tmp_path):
    """`lm models record` prints the verified record; `lm models label` the label in each format, or writes it."""
    from typer.testing import CliRunner

    from learning_machine.cli.app import app

    v = versions
    for key, value in {"LM_MLFLOW_TRACKING_URI": v.settings.tracking_uri, "LM_MODEL_NAME": v.settings.model_name,
                       "LM_HOME": str(tmp_path), "LM_GATEWAY_PORT": str(v.gateway.settings.gateway_port),
                       "LM_TOKEN": v.gateway.tokens["data-scientist"]}.items():
        monkeypatch.setenv(key, value)
    shown = CliRunner().invoke(app, ["models", "record", v.retrained])
    assert shown.exit_code == 0, shown.output
    found = json.loads(shown.output)
    assert found["sha256"] == v.tracker.version(v.settings.model_name, v.retrained).tags[DIGEST_TAG]
    assert found["record"]["evaluation"]["champion"]["version"] == v.first
    markdown = CliRunner().invoke(app, ["models", "label", v.first])
    assert markdown.exit_code == 0 and f"# Model facts: {v.settings.model_name} v{v.first}\n" in markdown.output, \
        markdown.output
    written = CliRunner().invoke(app, ["models", "label", v.retrained, "--format", "html", "-o", str(tmp_path / "l.html")])
    assert written.exit_code == 0, written.output
    assert _sections((tmp_path / "l.html").read_text()) == list(SECTIONS)
    missing = CliRunner().invoke(app, ["models", "record", "999"])
    assert missing.exit_code != 0 and "no version '999'" in str(missing.exception)

