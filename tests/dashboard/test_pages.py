"""Every page of the dashboard under Streamlit's AppTest, against the real gateway and model server:
it renders the gateway's data, its buttons do what they say, and errors are shown, not raised."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from gateway_harness import RunningGateway
from streamlit.testing.v1 import AppTest
from testsupport import free_port

from learning_machine.clients.gateway import LearningMachineClient

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


def _app(monkeypatch: pytest.MonkeyPatch, url: str, token: str, page: str = "patients") -> AppTest:
    monkeypatch.setenv("LM_DASHBOARD_GATEWAY_URL", url)
    monkeypatch.setenv("LM_TOKEN", token)
    monkeypatch.setenv("LM_DASHBOARD_MLFLOW_URL", "http://mlflow.example:5000")
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    if page != "patients":
        at.sidebar.radio(key="page").set_value(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _chart_data(chart: Any, name: str) -> pd.DataFrame:
    """The rows behind one named dataset of a chart (Streamlit sends them as Arrow)."""
    import pyarrow as pa

    data = next(d.data.data for d in chart.proto.datasets if d.name == name)
    return pa.ipc.open_stream(data).read_pandas()


def _texts(at: AppTest) -> str:
    parts = [m.value for m in (*at.markdown, *at.caption, *at.info, *at.warning, *at.success, *at.error)]
    parts += [m.value for m in at.sidebar.success] + [m.value for m in at.sidebar.error]
    return "\n".join(str(p) for p in parts)


# -- patients ------------------------------------------------------------------------------------------
def test_patients_page_lists_records_with_predictions_and_outcomes(monkeypatch, history_gateway: RunningGateway):
    at = _app(monkeypatch, history_gateway.url, history_gateway.tokens["data-scientist"])
    assert "Signed in as **data-scientist**" in _texts(at)
    table = at.dataframe[0].value
    assert len(table) == 100 and list(table.columns)[:3] == ["record_id", "arrived", "risk"]
    assert table["risk"].between(0, 1).all() and table["outcome"].notna().any()
    assert "500 records" in _texts(at)
    at.text_input(key="patient_search").input("shift-").run()
    assert set(at.dataframe[0].value["record_id"].str[:6]) == {"shift-"}


def test_send_one_and_send_n_store_new_predictions(monkeypatch, history_gateway: RunningGateway):
    at = _app(monkeypatch, history_gateway.url, history_gateway.tokens["clinician"])
    before = history_gateway.counts()["predictions"]
    at.button(key="send_one").click().run()
    assert any("risk" in s.value for s in at.success), _texts(at)
    at.number_input(key="send_n_rows").set_value(30).run()
    at.button(key="send_n").click().run()
    assert any("30 records predicted" in s.value for s in at.success), _texts(at)
    assert history_gateway.counts()["predictions"] - before == 31
    assert not at.exception


def test_the_simulation_starts_sends_and_stops(monkeypatch, history_gateway: RunningGateway):
    at = _app(monkeypatch, history_gateway.url, history_gateway.tokens["data-scientist"])
    before = history_gateway.counts()
    at.selectbox(key="sim_scenario").set_value("covariate-shift")
    at.slider(key="sim_rate").set_value(40)
    at.button(key="sim_start").click().run()
    sim: Any = at.session_state["simulation"]
    deadline = time.monotonic() + 30
    # Outcomes follow 50 rows behind their predictions: wait until some are due before stopping.
    while sim.sent < 75 and time.monotonic() < deadline:
        time.sleep(0.2)
    at.run()
    assert "Simulation running" in _texts(at)
    at.button(key="sim_stop").click().run()
    assert not sim.running and "Simulation finished" in _texts(at), _texts(at)
    sent = history_gateway.counts()["predictions"] - before["predictions"]
    assert 75 <= sent < 1000 and sim.report.predicted == sent
    assert sim.report.outcomes_sent > 0  # a data-scientist token sends the delayed outcomes too


# -- clinician -----------------------------------------------------------------------------------------
def test_clinician_sees_risk_explanation_rule_reference_and_model_facts(monkeypatch, history_gateway: RunningGateway):
    at = _app(monkeypatch, history_gateway.url, history_gateway.tokens["clinician"], "clinician")
    assert not at.error, _texts(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Predicted risk"].endswith("%") and metrics["Model version"].startswith("v")
    assert metrics["Observed in similar patients"].endswith("%")  # from the version's calibration
    assert at.get("vega_lite_chart"), "the contributions chart"
    reference = next(d.value for d in at.dataframe if "feature" in d.value.columns)  # after the label's tables
    assert {"age", "egfr"} <= set(reference["feature"]) and reference["reference population (5th–95th pct)"].str.contains("median").any()
    facts = _texts(at)  # the serving version's model-facts label, Sendak's sections
    for section in ("Summary", "Mechanism of risk score calculation", "Validation and performance",
                    "Uses and directions", "Warnings", "Subgroup performance", "Other information"):
        assert section in facts, section
    assert "intended use" in facts and "training data" in facts and "change record sha256" in facts
    # The anchor rule on demand, in plain words with precision and coverage.
    at.button(key="clin_anchor").click().run()
    assert "precision" in _texts(at) and "coverage" in _texts(at), _texts(at)


def test_a_clinician_records_the_real_outcome(monkeypatch, history_gateway: RunningGateway):
    import uuid

    from gateway_harness import make_records

    prefix = f"outcome-{uuid.uuid4().hex[:8]}-"  # a record of its own, predicted and with no outcome yet
    sent = history_gateway.client("clinician").post("/v1/predictions", json=make_records(1, prefix=prefix)[0])
    assert sent.status_code == 200, sent.text
    at = _app(monkeypatch, history_gateway.url, history_gateway.tokens["clinician"], "clinician")
    at.text_input(key="clin_search").input(prefix).run()
    record_id = at.selectbox(key="clin_patient").value
    assert record_id == sent.json()["record_id"]
    at.radio(key="clin_outcome").set_value(1)
    at.button(key="clin_record").click().run()
    assert any(f"Outcome 1 for {record_id}: created" in s.value for s in at.success), _texts(at)
    assert history_gateway.client("data-scientist").get(f"/v1/patients/{record_id}").json()["outcome"]["outcome"] == 1


def test_data_scientist_reads_each_versions_label_what_changed_and_its_record(monkeypatch, record_gateway):
    gateway, two = record_gateway
    at = _app(monkeypatch, gateway.url, gateway.tokens["data-scientist"], "data-scientist")
    assert not at.error, _texts(at)
    assert at.selectbox(key="label_version").value == two.retrained  # the champion, by default
    texts = _texts(at)
    assert f"What changed from v{two.first} to v{two.retrained}" in texts and "verified" in texts
    record = gateway.client("data-scientist").get(f"/v1/models/{two.retrained}/record").json()
    assert record["sha256"][:16] in texts
    frames = [d.value for d in at.dataframe]
    change = next(f for f in frames if list(f.columns) == ["metric", "old", "new", "change"])
    auc = change[change["metric"] == "auc"].iloc[0]
    assert auc["new"] == round(record["record"]["evaluation"]["candidate"]["metrics"]["auc"], 4)
    assert auc["change"] == round(auc["new"] - auc["old"], 4)
    assert len(at.get("download_button")) == 2  # Markdown and HTML
    at.selectbox(key="label_version").set_value(two.first).run()
    texts = _texts(at)
    assert "no earlier label to compare with" in texts and "there was no champion to compare it with" in texts


def test_a_serving_version_without_a_change_record_is_said_not_an_error(monkeypatch, record_gateway, tmp_path):
    """A version registered before change records were kept serves: the clinician is told it has no label, and
    the rest of the page works."""
    import uuid

    from gateway_harness import Nowhere, free_port, sqlite_gateway

    from learning_machine.registry.tracker import Tracker

    gateway, two = record_gateway
    tracker = Tracker(gateway.settings.tracking_uri)
    name = f"risk-old-{uuid.uuid4().hex[:8]}"
    old = tracker.register(name, two.retrain_run, metrics={"auc": 0.7})  # no change record, as before records
    tracker.promote(name, old.version)
    with sqlite_gateway(tmp_path, Nowhere(f"http://127.0.0.1:{free_port()}", name, gateway.settings.tracking_uri),
                        two.spec, deployer="none") as older:
        at = _app(monkeypatch, older.url, older.tokens["clinician"], "clinician")
        assert not at.error, _texts(at)
        assert f"No model-facts label for the version that answers now: v{old.version} of {name} has no change " \
               "record" in _texts(at)
        assert "No patients yet" in _texts(at)  # the rest of the page


# -- data scientist ------------------------------------------------------------------------------------
def test_data_scientist_page_shows_timelines_events_and_versions(monkeypatch, history_gateway: RunningGateway):
    # A shadow look as the learning loop records it (the end-to-end loop test makes real ones).
    evidence = "candidate - champion on 412 paired rows: auc +0.1123 [+0.0581, +0.1665] p=4.9e-05"
    with LearningMachineClient(history_gateway.url, history_gateway.tokens["monitor"]) as monitor:
        monitor.post_event("shadow-look", {"look": 1, "rows": 412, "promote": True, "evidence": evidence,
                                           "reason": "candidate - champion auc +0.1123 [+0.0451, +0.1795] (99.0 %)",
                                           "clauses": "better: auc: pass (low +0.0451 > +0)"}, "7")
    at = _app(monkeypatch, history_gateway.url, history_gateway.tokens["data-scientist"], "data-scientist")
    assert not at.error, _texts(at)
    assert len(at.get("vega_lite_chart")) >= 3  # performance, drift, quality
    frames = [d.value for d in at.dataframe]
    events = next(f for f in frames if "kind" in f.columns)
    assert "retrain-fired" in set(events["kind"]) and events["reason"].str.len().gt(0).all()
    # Realised AUC and the AUC estimated from the scores (CBPE), one chart, told apart by line style.
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    line = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "line")
    assert line["encoding"]["strokeDash"]["scale"]["domain"] == ["realised from outcomes", "estimated from scores (CBPE)"]
    shown = _chart_data(at.get("vega_lite_chart")[0], line["data"]["name"])
    overall = shown[shown["subgroup"] == "overall"]
    assert set(overall["source"]) == {"realised from outcomes", "estimated from scores (CBPE)"}
    estimated = overall[overall["source"] == "estimated from scores (CBPE)"]
    assert len(estimated) == 5 and estimated["value"].between(0.5, 1).all()  # one per window, none waits for outcomes
    assert (estimated["low"] < estimated["value"]).all() and (estimated["value"] < estimated["high"]).all()
    text = _texts(at)
    assert "estimated from scores (CBPE)" in text and "realised from outcomes" in text
    assert "Latest reconciliation on 300 labelled predictions: realised AUC" in text
    gate = next(f for f in frames if "clauses" in f.columns)  # the gate's evidence, with its intervals
    assert gate.iloc[0]["evidence"] == evidence and "[+0.0451, +0.1795]" in gate.iloc[0]["decision"]
    models = next(f for f in frames if "MLflow run" in f.columns)
    assert "champion" in set(models["role"])
    assert models["MLflow run"].str.startswith("http://mlflow.example:5000/#/runs/").all()
    assert models["dataset digest"].str.len().gt(0).all()
    assert "Retraining, promotion and rollback need an admin token." in _texts(at)


def test_admin_requests_retraining_and_promotes(monkeypatch, history_gateway: RunningGateway, model_server):
    at = _app(monkeypatch, history_gateway.url, history_gateway.tokens["admin"], "data-scientist")
    at.button(key="admin_retrain").click().run()
    assert any("Retraining requested" in s.value for s in at.success), _texts(at)
    kinds = [e["kind"] for e in history_gateway.client("admin").get("/v1/events").json()["items"]]
    assert kinds[0] == "retrain-requested"
    at.selectbox(key="admin_version").set_value(model_server.version)
    at.button(key="admin_promote").click().run()
    assert any(f"v{model_server.version} is the champion" in s.value for s in at.success), _texts(at)
    # Rolling back a champion that replaced nothing is refused, and the page says why.
    at.button(key="admin_rollback").click().run()
    assert any("Could not roll back" in e.value for e in at.error) and not at.exception


def test_a_version_held_by_the_change_control_plan_is_listed_and_an_admin_decides_with_a_reason(
        monkeypatch, history_gateway: RunningGateway, model_server):
    from learning_machine.data.sources import load_dataset
    from learning_machine.lifecycle.promotion import hold_for_approval
    from learning_machine.lifecycle.training import train_and_register
    from learning_machine.registry.tracker import Tracker

    tracker = Tracker(model_server.tracking_uri)
    held = train_and_register(model_server.settings, tracker, load_dataset("synthetic-cohort", n_rows=600, seed=9),
                              promote="never").version.version
    champion = tracker.version(model_server.model_name, "champion").version
    hold_for_approval(tracker, model_server.model_name, held, judged_against=champion, verdict={
        "decision": "awaiting-approval",
        "reason": "better than the champion but outside plan p 1: subgroup floor: sex=female",
        "clauses": [{"clause": "subgroup floor: sex=female", "passed": False}],
        "plan": {"plan": "p", "version": "1", "digest": "d"}})

    scientist = _app(monkeypatch, history_gateway.url, history_gateway.tokens["data-scientist"], "data-scientist")
    listed = next(d.value for d in scientist.dataframe if "why it waits" in d.value.columns)
    assert list(listed["version"]) == [held] and listed["judged against"].iloc[0] == champion
    assert "subgroup floor: sex=female" in listed["why it waits"].iloc[0]
    assert "An admin approves or rejects these versions." in _texts(scientist)
    assert not {b.key for b in scientist.button} & {"approval_approve", "approval_reject"}

    admin = _app(monkeypatch, history_gateway.url, history_gateway.tokens["admin"], "data-scientist")
    admin.selectbox(key="approval_version").set_value(held)
    admin.button(key="approval_reject").click().run()  # no reason yet: refused on the page, nothing recorded
    assert any("Say why" in e.value for e in admin.error), _texts(admin)
    assert tracker.version(model_server.model_name, held).tags["lm.approval"] == "awaiting"
    admin.text_input(key="approval_reason").set_value("trained on too few women")
    admin.button(key="approval_reject").click().run()
    assert any(f"v{held} rejected" in s.value for s in admin.success), _texts(admin)
    tags = tracker.version(model_server.model_name, held).tags
    assert tags["lm.approval"] == "rejected" and tags["lm.approval_by"] == "test admin"
    assert tags["lm.approval_reason"] == "trained on too few women"
    event = history_gateway.client("admin").get("/v1/events", params={"kind": "rejected"}).json()["items"][0]
    assert event["model_version"] == held and event["detail"]["why"] == "trained on too few women"
    assert tracker.version(model_server.model_name, "champion").version == champion


def test_a_clinician_token_sees_no_data_science_or_admin_actions(monkeypatch, history_gateway: RunningGateway):
    at = _app(monkeypatch, history_gateway.url, history_gateway.tokens["clinician"], "data-scientist")
    assert "needs a data-scientist or admin token; yours is clinician" in _texts(at)
    keys = {b.key for b in at.button}
    assert not keys & {"admin_retrain", "admin_promote", "admin_rollback"}


# -- empty states and errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("page", ["patients", "clinician", "data-scientist"])
def test_first_time_empty_states(monkeypatch, empty_gateway: RunningGateway, page: str):
    at = _app(monkeypatch, empty_gateway.url, empty_gateway.tokens["admin"], page)
    assert not at.error, _texts(at)
    text = _texts(at)
    expected = {"patients": "No patients yet", "clinician": "No patients yet",
                "data-scientist": "No outcomes yet"}[page]
    assert expected in text, text
    if page == "data-scientist":
        assert "No drift results yet" in text and "No events yet" in text


@pytest.mark.parametrize("page", ["patients", "clinician", "data-scientist"])
def test_a_gateway_that_is_down_is_shown_not_raised(monkeypatch, page: str):
    url = f"http://127.0.0.1:{free_port()}"
    at = _app(monkeypatch, url, "lm_whatever", page)
    assert "unreachable" in _texts(at), _texts(at)


def test_a_bad_token_is_shown_not_raised(monkeypatch, history_gateway: RunningGateway):
    at = _app(monkeypatch, history_gateway.url, "lm_not-a-real-token")
    assert "does not accept this token" in _texts(at)
    assert any("Could not read the patients" in e.value for e in at.error)


# -- signing in ------------------------------------------------------------------------------------------
def test_the_dashboard_hands_no_token_to_whoever_opens_it(monkeypatch, history_gateway: RunningGateway, tmp_path):
    """`lm up`'s tokens file is beside it, yet a visitor is not signed in: the page asks for a token."""
    import json

    (tmp_path / "tokens.json").write_text(json.dumps({"data-scientist": history_gateway.tokens["data-scientist"]}))
    monkeypatch.setenv("LM_HOME", str(tmp_path))
    monkeypatch.setenv("LM_TOKENS_FILE", str(tmp_path / "tokens.json"))
    monkeypatch.setenv("LM_DASHBOARD_GATEWAY_URL", history_gateway.url)
    monkeypatch.delenv("LM_TOKEN", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.sidebar.text_input(key="token").value == ""
    assert "No token" in "\n".join(str(w.value) for w in at.sidebar.warning)
    assert "Sign in with your API token" in _texts(at) and not at.error and not at.dataframe
    # LM_TOKEN prefills only a dashboard bound to loopback; on another interface it is ignored.
    monkeypatch.setenv("LM_TOKEN", history_gateway.tokens["admin"])
    monkeypatch.setenv("LM_DASHBOARD_HOST", "0.0.0.0")
    exposed = AppTest.from_file(str(APP), default_timeout=120)
    exposed.run()
    assert exposed.sidebar.text_input(key="token").value == ""


def test_a_sign_in_link_signs_in_and_leaves_the_address_bar(monkeypatch, history_gateway: RunningGateway):
    monkeypatch.setenv("LM_DASHBOARD_GATEWAY_URL", history_gateway.url)
    monkeypatch.delenv("LM_TOKEN", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.query_params["token"] = history_gateway.tokens["clinician"]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Signed in as **clinician**" in _texts(at)
    assert "token" not in at.query_params
