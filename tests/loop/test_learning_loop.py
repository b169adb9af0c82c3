"""The learning loop end to end on real parts: MLflow, MLServer (swapped by the local deployer), the
gateway as its own process, the retraining pipeline under kfp.local, and the monitor stepping over the
gateway's feed. Small enough for CI: a few thousand rows."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import yaml
from loop_harness import Stack, loop_stack
from sklearn.metrics import roc_auc_score
from testsupport import CuttableProxy

from learning_machine.clients.gateway import GatewayError, LearningMachineClient
from learning_machine.data.sources import load_dataset
from learning_machine.lifecycle.plan import PLANS
from learning_machine.lifecycle.training import train_and_register
from learning_machine.loop.policy import Decision
from learning_machine.loop.service import RetrainViaPipeline
from learning_machine.loop.stream import generated_records
from learning_machine.registry.names import CHAMPION
from learning_machine.registry.tracker import Tracker
from learning_machine.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(mlflow_sqlite: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("loop")
    # The shipped change-control plan asks for 500 rows after the change; this test's stream is a tenth of a
    # clinic's, so its plan (otherwise the shipped one) asks for 200.
    plan = yaml.safe_load((PLANS / "synthetic-cohort.yaml").read_text())
    plan["version"] = "1.0.0-test-stream"
    plan["acceptance"]["min_post_change_rows"] = 200
    (home / "plan.yaml").write_text(yaml.safe_dump(plan))
    with loop_stack(mlflow_sqlite, home, "risk-loop", change_plan=home / "plan.yaml") as running:
        yield running


def _auc_by_version(stack: Stack, prefix: str) -> dict[str, float]:
    """Realised AUC of each model version on the records whose id starts with ``prefix``."""
    items = [i for i in stack.client.labelled(limit=20000) if i["record_id"].startswith(prefix)]
    out = {}
    for version in {i["model_version"] for i in items}:
        rows = [i for i in items if i["model_version"] == version]
        y = np.array([i["outcome"] for i in rows])
        if len(rows) >= 100 and len(set(y)) == 2:
            out[version] = float(roc_auc_score(y, [i["probability"] for i in rows]))
    return out


def test_the_loop_stays_quiet_on_clean_data_then_heals_itself_after_drift(stack: Stack):
    # 1. No drift: windows are assessed and stored, nothing fires.
    stack.stream(400, seed=101)
    assert stack.service.step() is not None
    assert not any(k.startswith("retrain") for k in stack.kinds())
    monitoring = stack.client.page("/v1/monitoring", limit=500)["items"]
    assert {m["kind"] for m in monitoring} >= {"drift", "quality", "performance"}

    # 2. Concept drift: the realised AUC falls below the floor, the policy fires, the retraining pipeline
    # runs, gates, registers and promotes, and the model server swaps to the new version.
    stack.stream(600, seed=102, scenario="concept-drift")
    decision = stack.service.step()
    assert decision is not None and decision.retrain, decision
    assert {"performance", "sequential"} & set(decision.rules), decision.rules
    # The retraining runs beside the monitor, which stays live: new predictions are read and assessed, and
    # their window stored, while the pipeline runs (the window's results are stored between the run's
    # start and end events).
    assert stack.service.job is not None, "the retraining runs in its own thread"
    windows = stack.service.monitor.next_window_id
    stack.stream(200, seed=106, scenario="concept-drift")
    assert stack.service.step() is None  # nothing else starts while the change is being handled
    assert stack.service.monitor.next_window_id == windows + 1
    assessed_at = max(r["created_at"] for r in stack.client.page("/v1/monitoring", kind="drift", limit=500)["items"]
                      if r["details"].get("window_id") == windows)
    outcome = stack.service.wait_retraining(timeout_s=600)
    assert outcome is not None and outcome["state"] == "SUCCEEDED", outcome
    stack.service.step()  # collects the finished retraining
    assert stack.service.job is None
    times = {e["kind"]: e["created_at"] for e in stack.events()}
    assert times["retrain-started"] < assessed_at < times["retrain-finished"], (times, assessed_at)
    stack.stream_until_promoted(range(110, 116), "concept-drift")
    kinds = stack.kinds()
    for kind in ("retrain-fired", "retrain-started", "retrain-finished", "promoted"):
        assert kind in kinds, kinds
    assert kinds.count("retrain-started") == 1, kinds  # one retraining for one change
    champion = stack.tracker.version(stack.settings.model_name, CHAMPION)
    assert champion.version != stack.first_version
    assert stack.service.shadow is None and stack.service.health()["last_attempt"]["result"] == "promoted"
    promoted = next(e for e in stack.events() if e["kind"] == "promoted")
    assert promoted["detail"]["to"] == champion.version
    # The gate's evidence, with its intervals: in the event (pipeline gate) or the reason (shadow's look).
    assert "paired rows" in json.dumps(promoted["detail"]), promoted

    # 3. After the swap, clinicians get the new version, and it predicts the post-drift outcomes better.
    stack.stream(500, seed=103, scenario="concept-drift")
    answers = stack.client.labelled(limit=50)
    assert {a["model_version"] for a in answers} == {champion.version}
    before = _auc_by_version(stack, "conc102-")[stack.first_version]
    after = _auc_by_version(stack, "conc103-")[champion.version]
    assert after > before + 0.03, (before, after)

    # The monitoring run in MLflow holds the window metrics over time.
    run_id = stack.service.monitor_run_id
    history = stack.tracker.client.get_metric_history(run_id, "drift.min_p_value")
    assert len(history) >= 4


def test_mlflow_going_down_mid_run_leaves_the_champion_serving_and_the_failure_recorded(stack: Stack):
    champion = stack.tracker.version(stack.settings.model_name, CHAMPION).version
    stack.stream(250, seed=107)  # enough labelled records to retrain on, whichever tests ran before
    # The retraining pipeline and the trigger reach MLflow through a proxy that goes down after the
    # pipeline's parent run and its first two steps (ingest, validate) have opened their MLflow runs:
    # the next step finds the tracking server gone, as when it dies mid-run.
    upstream = httpx.URL(stack.settings.tracking_uri)
    proxy = CuttableProxy(upstream.host, upstream.port or 80, pattern=b"/runs/create", cut_after=3)
    flaky = stack.settings.model_copy(update={"mlflow_tracking_uri": proxy.url})
    trigger = RetrainViaPipeline(flaky, stack.client, stack.service.sink, Tracker(proxy.url, timeout_s=10),
                                 stack.service.spec)
    result = trigger(Decision(True, ("test: tracking server dies mid-run",), ("manual",)))
    assert proxy.down.is_set() and proxy.seen > 3, ("MLflow went down during the run, not before it", proxy.seen,
                                                    result)
    assert result["state"] in ("FAILED", "ERROR"), result
    failed = [e for e in stack.events() if e["kind"] == "retrain-failed"]
    assert failed and failed[-1]["detail"].get("error") and failed[-1]["model_version"] == champion
    assert "promoted" not in result
    # Nothing changed for clinicians: the same champion, still serving.
    assert stack.tracker.version(stack.settings.model_name, CHAMPION).version == champion
    stack.stream(30, seed=104)
    assert {a["model_version"] for a in stack.client.labelled(limit=5)} == {champion}
    # The half-finished pipeline run is visible in MLflow: its steps that ran are recorded.
    runs = stack.tracker.client.search_runs(
        [stack.tracker.client.get_experiment_by_name(stack.settings.experiment_name).experiment_id],
        order_by=["attributes.start_time DESC"], max_results=10)
    assert any(r.data.tags.get("mlflow.runName", "").startswith("ingest") for r in runs), \
        [r.data.tags.get("mlflow.runName") for r in runs]


def test_a_challenger_that_does_not_beat_the_champion_is_refused(stack: Stack, monkeypatch):
    champion = stack.tracker.version(stack.settings.model_name, CHAMPION).version
    # No model beats another by 0.5 AUC; without the shadow, the gate's verdict is final.
    strict = stack.settings.model_copy(update={"loop_gate_margin": 0.5, "loop_shadow": False})
    monkeypatch.setattr(stack.service, "settings", strict)
    default_trigger = stack.service.trigger
    detector_before = stack.service._detectors.get(champion)
    stack.service.trigger = RetrainViaPipeline(strict, stack.client, stack.service.sink, stack.tracker,
                                               stack.service.spec)
    stack.stream(250, seed=108)  # labelled rows to retrain on
    decision = Decision(True, ("test: strict gate",), ("manual",))
    try:
        result = stack.service._retrain(decision)
        # The same change again at once: not retrained before enough new evidence (outcomes) has arrived.
        again = stack.service.trigger(Decision(True, ("test: strict gate, again",), ("manual",)))
        assert again["state"] == "DEFERRED" and again["needed"] == stack.settings.loop_retry_outcomes, again
        assert again["new_outcomes"] < stack.settings.loop_retry_outcomes
        assert again["last_attempt"]["result"] == "refused" and again["last_attempt"]["champion"] == champion
        deferred = [e for e in stack.events() if e["kind"] == "retrain-deferred"]
        assert deferred and "retrying once" in deferred[-1]["detail"]["error"]
        stack.stream(stack.settings.loop_retry_outcomes + 60, seed=109)  # the outcomes arrive 50 rows late
        retried = stack.service.trigger(Decision(True, ("test: strict gate, with more evidence",), ("manual",)))
        assert retried["state"] == "SUCCEEDED" and "refused" in retried, retried
    finally:
        stack.service.trigger = default_trigger
    assert result["state"] == "SUCCEEDED" and "promoted" not in result
    refused = [e for e in stack.events() if e["kind"] == "refused"]
    assert refused and refused[-1]["detail"]["challenger"] not in (None, champion)
    assert "paired rows: auc" in refused[-1]["detail"]["evidence"] and refused[-1]["detail"]["gate"]
    assert stack.tracker.version(stack.settings.model_name, CHAMPION).version == champion
    # The champion stays, and the population it was retrained on becomes the sequential test's new normal.
    rebaselined = [e for e in stack.events() if e["kind"] == "monitor-rebaselined"]
    assert rebaselined and rebaselined[-1]["model_version"] == champion and rebaselined[-1]["detail"]["rows"] >= 50
    rebaselined_detector = stack.service._detectors[champion]
    assert rebaselined_detector is not None and rebaselined_detector is not detector_before
    if detector_before is not None and detector_before.outcome_threshold is not None:
        # A new normal for the features, never for the performance: the outcome stream keeps its burn-in.
        assert np.array_equal(rebaselined_detector.outcome_threshold, detector_before.outcome_threshold)
        assert rebaselined_detector.outcome_center == detector_before.outcome_center


def test_rollback_is_one_command_that_serves_the_previous_version_again(stack: Stack):
    import os
    import subprocess
    import sys

    from learning_machine.settings import settings_env

    champion = stack.tracker.version(stack.settings.model_name, CHAMPION)
    previous = champion.tags.get("lm.previous_champion")
    assert previous, "the healing test promoted a version that replaced the first champion"
    env = {**os.environ, **settings_env(stack.settings),
           "LM_DATABASE_URL": stack.settings.database_uri(), "LM_MODEL_SERVER_URL": stack.settings.model_server_base_url()}
    proc = subprocess.run([sys.executable, "-m", "learning_machine", "models", "rollback"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"rolled back from v{champion.version} to v{previous}" in proc.stderr
    assert stack.tracker.version(stack.settings.model_name, CHAMPION).version == previous
    stack.stream(30, seed=105)
    assert {a["model_version"] for a in stack.client.labelled(limit=5)} == {previous}  # served again at once
    rolled = [e for e in stack.events() if e["kind"] == "rolled-back"]
    assert rolled and rolled[-1]["detail"]["to"] == previous and rolled[-1]["detail"]["deployed"]["changed"]


def test_a_requested_retraining_fires_once(stack: Stack, monkeypatch):
    calls: list[Decision] = []
    monkeypatch.setattr(stack.service.monitor, "trigger", lambda decision: calls.append(decision) or {})
    token = json.loads(stack.settings.tokens_path().read_text())["admin"]
    with LearningMachineClient(stack.settings.gateway_url, token) as admin:
        admin.request_retraining("new guideline")  # what the dashboard's button does
    decision = stack.service.step()
    assert decision is not None and decision.rules == ("requested",)
    assert "new guideline" in decision.reasons[0]
    stack.service.wait_retraining(timeout_s=60)
    assert len(calls) == 1
    fired = [e for e in stack.events() if e["kind"] == "retrain-fired"][-1]
    assert fired["detail"]["rules"] == ["requested"]
    stack.service.step()  # (the policy may fire on its own here: the rolled-back model serves drifted data)
    stack.service.wait_retraining(timeout_s=60)
    assert [c.rules for c in calls].count(("requested",)) == 1  # a request is acted on once


def test_a_shadow_challenger_is_never_seen_by_clinicians_never_fails_a_prediction_and_is_promoted_on_evidence(
        stack: Stack, monkeypatch):
    tokens = json.loads(stack.settings.tokens_path().read_text())
    clinician = LearningMachineClient(stack.settings.gateway_url, tokens["clinician"], timeout_s=60)
    stack.service.step()
    stack.service.wait_retraining(timeout_s=600)
    stack.service.step()
    if stack.service.shadow is not None:  # the policy's own retraining after the rollback test: not this test's
        stack.service._end_shadow("ended", "test: a shadow of its own")
    monkeypatch.setattr(stack.service.monitor, "trigger", None)  # no retraining of the policy's in this test
    champion = stack.tracker.version(stack.settings.model_name, CHAMPION).version
    assert stack.service.job is None and stack.service.shadow is None

    # A shadow whose model cannot be loaded (no such version): it ends with an event; clinicians' predictions
    # are answered by the champion as before (the shadow is never on their path).
    stack.service.start_shadow("9999", champion, cut_id=0)
    stack.stream(60, seed=120)
    stack.service.step()
    assert stack.service.shadow is None
    failed = [e for e in stack.events() if e["kind"] == "shadow-failed"]
    assert failed and "9999" in failed[-1]["detail"]["challenger"] and "could not score" in failed[-1]["detail"]["why"], \
        [(e["kind"], e["detail"]) for e in stack.events()[-4:]]

    # A real challenger, trained on the new concept, registered but not serving.
    better = train_and_register(stack.settings, stack.tracker, load_dataset(
        "synthetic-cohort", n_rows=2000, seed=77, scenario="concept-drift", drift_start=0), promote="never")
    version = better.version.version
    last_id = max(int(i["id"]) for i in stack.client.labelled(limit=1))
    keys = set(clinician.predict([next(iter(generated_records(1, seed=119, scenario="none", drift_start=0, id_prefix="before-")))[0]])[0])
    stack.service.start_shadow(version, champion, cut_id=last_id)
    # The serving backend was asked to start the shadow: the local deployer has none (the monitor scores it).
    started = [e for e in stack.events() if e["kind"] == "shadow-started"][-1]["detail"]
    assert started["deployment"]["deployer"] == "local" and started["deployment"]["changed"] is False
    assert "the monitor scores v" + version in started["deployment"]["detail"]
    promoted = None
    for seed in range(121, 131):
        records = list(generated_records(100, seed=seed, scenario="concept-drift", drift_start=0,
                                         id_prefix=f"sh{seed}-"))
        answers = clinician.predict([r for r, _ in records])
        assert {a["model_version"] for a in answers} == {champion}  # clinicians get the champion only
        assert all(set(a) == keys for a in answers)  # and nothing is added to their answers
        for record, y in records:
            clinician.outcome(record["record_id"], int(y))
        stack.service.step()
        promoted = stack.tracker.version(stack.settings.model_name, CHAMPION).version
        if promoted == version:
            break
    stored = stack.client.shadow(version, after_prediction_id=last_id)
    assert len(stored) >= 100 and {s["model_version"] for s in stored} == {version}
    with pytest.raises(GatewayError) as denied:  # a clinician cannot read the shadow's scores
        clinician.shadow(version)
    assert denied.value.status == 403
    with pytest.raises(GatewayError) as denied:  # nor write any
        clinician.post_shadow(stack.settings.model_name, version, [(stored[0]["prediction_id"], 0.5)])
    assert denied.value.status == 403
    with pytest.raises(GatewayError) as unknown:  # a score of no prediction stores nothing
        stack.service.client.post_shadow(stack.settings.model_name, version, [(stored[0]["prediction_id"], 0.5),
                                                                               (10**12, 0.5)])
    assert unknown.value.status == 404
    assert stack.service.client.post_shadow(stack.settings.model_name, version,
                                            [(stored[0]["prediction_id"], 0.5)]) == 0  # stored once, kept
    assert stack.client.shadow(version, after_prediction_id=last_id)[0]["probability"] == stored[0]["probability"]
    looks = [e for e in stack.events() if e["kind"] == "shadow-look"]
    assert looks and looks[0]["detail"]["rows"] >= stack.settings.loop_shadow_first_look
    assert all("[" in look["detail"]["reason"] for look in looks)  # each look states its interval
    assert promoted == version, [look["detail"]["reason"] for look in looks]
    event = [e for e in stack.events() if e["kind"] == "promoted"][-1]
    assert event["detail"]["by"] == "learning loop (shadow)" and "live records" in event["detail"]["reason"]
    # From now on clinicians get the promoted challenger.
    record, _ = next(iter(generated_records(1, seed=140, scenario="concept-drift", drift_start=0, id_prefix="after-")))
    assert clinician.predict([record])[0]["model_version"] == version
    clinician.close()


def test_a_champion_whose_first_outcomes_are_below_the_plans_floor_is_rolled_back(stack: Stack, monkeypatch):
    """The change-control plan's rollback rule: a new champion's first `window_rows` labelled predictions
    must not show its AUC below `auc_floor`; here they do (its outcomes are the opposite of what it predicts),
    and the loop puts the champion it replaced back, serving it, with the event and the version's tag."""
    from learning_machine.lifecycle.promotion import change_champion

    monkeypatch.setattr(stack.service.monitor, "trigger", None)  # the policy fires too: not this test's subject
    model = stack.settings.model_name
    before = stack.tracker.version(model, CHAMPION).version
    fresh = train_and_register(stack.settings, stack.tracker, load_dataset("synthetic-cohort", n_rows=1500, seed=77),
                               promote="never").version.version
    change_champion(stack.settings, stack.tracker, action="promote", version=fresh, reason="test: a new champion",
                    by="test")
    rule = stack.service.plan.rollback
    assert rule.automatic and rule.window_rows == 500 and rule.auc_floor == 0.65
    stack.stream(300, seed=150, flip_outcomes=True)
    stack.service.step()
    assert stack.tracker.version(model, CHAMPION).version == fresh  # 250 labelled rows: too few to judge
    stack.stream(300, seed=151, flip_outcomes=True)
    stack.service.step()
    assert stack.tracker.version(model, CHAMPION).version == before
    rolled = [e for e in stack.events() if e["kind"] == "rolled-back"][-1]
    assert rolled["detail"]["from"] == fresh and rolled["detail"]["to"] == before
    assert rolled["detail"]["by"] == "learning loop (change-control plan)"
    assert f"first 500 labelled predictions of v{fresh}" in rolled["detail"]["reason"]
    assert "rollback floor 0.65" in rolled["detail"]["reason"] and rolled["detail"]["deployed"]["changed"]
    assert stack.tracker.version(model, fresh).tags["lm.rollout"].startswith("rolled-back: AUC 0.")
    stack.stream(30, seed=152)
    assert {a["model_version"] for a in stack.client.labelled(limit=5)} == {before}  # served again
    rolled_back = [e for e in stack.events() if e["kind"] == "rolled-back"]
    stack.service.step()  # the version put back was judged on its own predictions, which were right: it stays
    assert stack.tracker.version(model, CHAMPION).version == before
    assert [e for e in stack.events() if e["kind"] == "rolled-back"] == rolled_back
