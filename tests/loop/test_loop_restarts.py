"""The monitor loses nothing and does nothing twice: its state is saved in the platform database through
the gateway with each step's results (one transaction), a failed step is rolled back and counted once when
it is retried, a restart (state file gone, a fresh LoopService) resumes where the last step ended, and a
requested retraining fires once even when the saved state itself is lost. Real gateway, real model server
(drift detector), real MLflow (sequential test reference)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateway"))  # gateway_harness

from gateway_harness import RunningGateway, gateway_settings, start_gateway

from learning_machine.clients.gateway import LearningMachineClient
from learning_machine.errors import ServiceUnavailableError
from learning_machine.loop.service import LoopService
from learning_machine.loop.stream import StreamPlan, generated_records, run_stream
from learning_machine.registry.tracker import Tracker

WINDOW = 50


@dataclass
class Env:
    gateway: RunningGateway
    model_version: str
    clients: list[LearningMachineClient]

    def client(self, role: str) -> LearningMachineClient:
        client = LearningMachineClient(self.gateway.url, self.gateway.tokens[role], timeout_s=60)
        self.clients.append(client)
        return client

    def stream(self, rows: int, seed: int) -> None:
        report = run_stream(self.client("clinician"), generated_records(rows, seed=seed, scenario="none", drift_start=0,
                                                                        id_prefix=f"r{seed}-"),
                            StreamPlan(rows=rows, batch_size=25, outcome_delay_rows=10, drain_outcomes=False))
        assert report.predicted == rows, report.summary()

    def service(self, *, calls: list[Any] | None = None, **kwargs: Any) -> LoopService:
        settings = self.gateway.settings
        service = LoopService(settings, self.client("monitor"), tracker=Tracker(settings.tracking_uri), **kwargs)
        if calls is not None:
            service.monitor.trigger = lambda decision: calls.append(decision) or {"state": "SUCCEEDED"}
        return service

    def events(self, kind: str) -> list[dict[str, Any]]:
        return list(self.client("data-scientist").page("/v1/events", kind=kind, limit=500)["items"])

    def windows_stored(self) -> list[int]:
        """The window id of every stored window-level drift result (one per assessed window)."""
        items = self.client("data-scientist").page("/v1/monitoring", kind="drift", limit=500)["items"]
        return sorted(r["details"]["window_id"] for r in items if r["metric"] == "is_drift")


@pytest.fixture
def env(tmp_path, model_server) -> Iterator[Env]:
    settings = gateway_settings(tmp_path, f"sqlite:///{tmp_path / 'lm.db'}", model_server,
                                monitor_window_rows=WINDOW, monitor_performance_rows=100, policy_drift_windows=3,
                                policy_cooldown_s=3600.0, policy_auc_floor=None)
    running = start_gateway(settings, getattr(model_server, "spec", None))
    env = Env(running, model_server.version, [])
    yield env
    for client in env.clients:
        client.close()
    running.stop()


def _rows_seen(service: LoopService, version: str) -> int:
    detector = service._detectors.get(version)
    return 0 if detector is None else int(detector.rows_seen)


def test_a_restart_without_the_state_file_fires_nothing_twice_and_counts_no_row_twice(env: Env):
    env.stream(130, seed=1)  # two full windows, 30 rows waiting for the third
    calls: list[Any] = []
    first = env.service(calls=calls)
    admin = env.client("admin")
    request = admin.request_retraining("restart test")
    decision = first.step()
    first.wait_retraining(timeout_s=30)
    assert decision is not None and decision.rules == ("requested",) and len(calls) == 1
    first.step()
    assert env.windows_stored() == [1, 2] and len(first.monitor.pending) == 30
    fired = env.events("retrain-fired")
    assert len(fired) == 1 and fired[0]["detail"]["request_event_id"] == request["id"]
    assert not first.legacy_state_path.exists()  # the state lives in the database, not on the pod's disk

    # A restart: a new process (a fresh LoopService), no state file (the emptyDir of a rescheduled pod).
    first.legacy_state_path.unlink(missing_ok=True)
    again: list[Any] = []
    second = env.service(calls=again)
    for _ in range(2):
        assert second.step() is None
    assert again == [] and len(env.events("retrain-fired")) == 1  # the request is not fired again
    assert env.windows_stored() == [1, 2]  # no window assessed again
    assert (second.cursor, second.read_cursor) == (first.cursor, first.read_cursor)
    assert second.monitor.last_retrain_at == pytest.approx(first.monitor.last_retrain_at)  # the cooldown survives
    assert [w.window_id for w in second.monitor.windows] == [1, 2]  # the policy's history survives
    # The 30 rows of the partial window were not saved (no raw rows in the state): they are read again, once.
    assert len(second.monitor.pending) == 30
    env.stream(20, seed=2)
    second.step()
    assert env.windows_stored() == [1, 2, 3] and second.monitor.pending == []

    # The saved state itself lost (a new state row): the request handled is derived from the event log.
    third_calls: list[Any] = []
    third = env.service(calls=third_calls, state_name="lost")
    third.step()
    assert third.last_request_id == request["id"] and third_calls == []
    assert len(env.events("retrain-fired")) == 1
    assert third.monitor.last_retrain_at == pytest.approx(first.monitor.last_retrain_at, abs=5)


def _failing(real: Callable[..., Any], failures: list[str]) -> Callable[..., Any]:
    """``real``, except that it fails as ``failures`` says, one entry per call: "before" (nothing sent),
    "after" (sent and done, the answer lost), "boom" (a non-platform error), "ok"."""

    def call(*args: Any, **kwargs: Any) -> Any:
        how = failures.pop(0) if failures else "ok"
        if how == "before":
            raise ServiceUnavailableError("test: the gateway went away before the save")
        if how == "boom":
            raise RuntimeError("test: an unexpected error")
        result = real(*args, **kwargs)
        if how == "after":
            raise ServiceUnavailableError("test: the answer of the save was lost")
        return result

    return call


def test_a_failed_step_is_rolled_back_and_each_row_counted_once(env: Env):
    service = env.service(calls=[])
    service.step()  # state loaded, nothing to read yet
    env.stream(120, seed=3)
    # 1. The save fails before it reaches the gateway: nothing stored, nothing counted.
    service.client.save_monitor_state = _failing(service.client.save_monitor_state, ["before"])  # type: ignore[method-assign]
    with pytest.raises(ServiceUnavailableError):
        service.step()
    assert env.windows_stored() == [] and service.monitor.pending == [] and service.cursor == 0
    assert _rows_seen(service, env.model_version) == 0  # the sequential test's evidence is rolled back too
    service.step()
    assert env.windows_stored() == [1, 2] and len(service.monitor.pending) == 20
    assert _rows_seen(service, env.model_version) == 120

    # 2. The save commits but its answer is lost: recognised by its commit id, not stored again.
    env.stream(40, seed=4)
    service.client.save_monitor_state = _failing(service.client.save_monitor_state, ["after"])  # type: ignore[method-assign]
    service.step()
    assert env.windows_stored() == [1, 2, 3] and len(service.monitor.pending) == 10
    assert _rows_seen(service, env.model_version) == 160

    # 3. The drift detector fails half-way (a non-platform error, on the second of two windows).
    env.stream(90, seed=5)
    real_drift = service.monitor.drift
    service.monitor.drift = _failing(real_drift, ["ok", "boom"])
    with pytest.raises(RuntimeError):
        service.step()
    assert env.windows_stored() == [1, 2, 3] and len(service.monitor.pending) == 10
    assert _rows_seen(service, env.model_version) == 160 and service.monitor.next_window_id == 4
    service.step()
    assert env.windows_stored() == [1, 2, 3, 4, 5] and service.monitor.pending == []
    assert _rows_seen(service, env.model_version) == 250


def test_the_monitor_loop_survives_any_error_and_reports_it(env: Env):
    said: list[str] = []
    service = env.service(calls=[], progress=said.append)
    env.stream(60, seed=6)
    service.monitor.drift = _failing(service.monitor.drift, ["boom", "boom"])
    stop = threading.Event()
    health: list[dict[str, Any]] = []
    thread = threading.Thread(target=service.run, args=(0.05, stop), kwargs={"max_backoff_s": 0.2}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and service.steps < 1:
        health.append(service.health())
        time.sleep(0.01)
    stop.set()
    thread.join(timeout=30)
    assert service.steps >= 1 and service.health()["status"] == "ok", service.health()
    degraded = [h for h in health if h["status"] == "degraded"]
    assert degraded and degraded[-1]["last_error"] == "RuntimeError: test: an unexpected error"
    assert max(h["failures_in_a_row"] for h in degraded) == 2 and degraded[-1]["retry_in_s"] == 0.1
    assert sum("monitor step failed: RuntimeError" in s for s in said) == 2
    assert env.windows_stored() == [1] and len(service.monitor.pending) == 10


def test_a_shadow_in_progress_and_the_last_attempt_survive_a_restart(env: Env):
    """The shadow's progress (what it scored, its next look) and the retry rule's last attempt are saved with
    the step and resumed by a new monitor, which scores the records after them and stores none twice."""
    settings = env.gateway.settings
    champion = Tracker(settings.tracking_uri).alias_version(settings.model_name, "champion").version
    env.stream(60, seed=4)
    first = env.service(calls=[])
    first.step()
    cut = first.read_cursor
    first.trigger.last_attempt = {"since": None, "champion": champion, "outcome_cursor": 0, "cut_id": cut,
                                  "rows": 60, "result": "refused", "at": 1.0}
    # The challenger here is the serving version itself: what is tested is the state, not the evidence.
    first.start_shadow(champion, champion, cut_id=cut)
    env.stream(40, seed=5)
    first.step()  # scores the 40 new records in the shadow and saves the step
    scored = env.client("data-scientist").shadow(champion, after_prediction_id=cut)
    assert len(scored) == 40 and first.shadow is not None and first.shadow.scored_up_to == first.read_cursor

    second = env.service(calls=[])
    second.load_state()
    assert second.shadow is not None and second.shadow.as_state() == first.shadow.as_state()
    assert second.trigger.last_attempt == {**first.trigger.last_attempt, "result": "shadow"}
    env.stream(20, seed=6)
    second.step()
    assert len(env.client("data-scientist").shadow(champion, after_prediction_id=cut)) == 60  # each once
    assert len(env.events("shadow-started")) >= 1


def test_a_challenger_leading_in_the_shadow_is_replaced_only_by_one_on_twice_its_rows(env: Env):
    """The champion has lost performance while the challenger of the last attempt is in the shadow. While that
    challenger leads the champion on the paired rows so far, the change is retried only once as many new
    outcomes have arrived as it learnt from (a new challenger on twice the rows); when it does not lead, after
    ``LM_LOOP_RETRY_OUTCOMES`` as before. (The pipeline runner records the start instead of running it: what
    is tested is whether the retraining starts.)"""
    from learning_machine.errors import LearningMachineError
    from learning_machine.loop.policy import Decision

    started: list[dict[str, Any]] = []

    class Recording:
        def run(self, pipeline: str, params: dict[str, Any], **_: Any) -> Any:
            started.append(params)
            raise LearningMachineError("test: the retraining is recorded, not run")

    settings = env.gateway.settings
    champion = Tracker(settings.tracking_uri).alias_version(settings.model_name, "champion").version
    env.stream(60, seed=7)
    service = env.service(runner=Recording())
    service.step()
    cursor = max(int(i["outcome_id"]) for i in service.client.labelled(limit=500))
    service.start_shadow(champion, champion, cut_id=service.read_cursor)  # the state is tested, not the evidence
    assert service.shadow is not None
    service.shadow.next_look = 10**9  # its own looks (challenger = champion: never ahead) are not this test's
    service.trigger.last_attempt = {"since": None, "champion": champion, "outcome_cursor": cursor, "rows": 400,
                                    "cut_id": service.read_cursor, "result": "shadow", "at": 1.0}
    env.stream(300, seed=8)  # ~290 new outcomes: more than LM_LOOP_RETRY_OUTCOMES (200), fewer than 400
    service.shadow.looks.append({"look": 1, "rows": 120, "promote": False, "ahead": True})
    service.step()  # the loop tells the trigger whether the shadow's challenger leads
    assert service.trigger.shadow_leads is True
    lost = Decision(True, ("the champion's log-loss alarmed",), ("sequential",))
    held = service.trigger(lost)
    assert held["state"] == "DEFERRED" and held["needed"] == 400 and 200 <= held["new_outcomes"] < 400, held
    assert held["shadow_leads"] and "twice the rows" in held["error"] and started == []
    service.shadow.looks.append({"look": 2, "rows": 240, "promote": False, "ahead": False})
    service.step()
    assert service.trigger.shadow_leads is False
    retried = service.trigger(lost)
    assert retried["state"] == "FAILED" and len(started) == 1  # started: the runner was asked to run it

    # In the loop: the champion's log-loss alarmed but it still ranks (no AUC floor here). While the
    # challenger leads, the shadow's evidence alone decides (a prevalence shift: a retraining would churn).
    from learning_machine.model.sequential import Alarm

    alarm = Alarm("outcomes", 900, 1.2, ["log-loss up"], 700)
    service.shadow.looks.append({"look": 3, "rows": 480, "promote": False, "ahead": True})
    service.monitor.alarms = [alarm]
    env.stream(60, seed=10)
    assert service.step() is None and len(started) == 1
    assert "leads the champion, which still ranks" in env.events("retrain-held")[-1]["detail"]["why"]


def test_a_recalibration_the_plan_does_not_allow_is_asked_as_a_retraining(env: Env, tmp_path):
    """The loop makes only the changes its change-control plan pre-authorises: a plan that allows retraining
    alone turns the policy's recalibration into a retraining (the pipeline is asked for `retrain`, and the
    started event says so). (The runner records the run instead of running it: what is tested is what the
    pipeline is asked for.)"""
    import yaml

    from learning_machine.errors import LearningMachineError
    from learning_machine.lifecycle.plan import PLANS
    from learning_machine.loop.policy import Decision

    asked: list[dict[str, Any]] = []

    class Recording:
        def run(self, pipeline: str, params: dict[str, Any], **_: Any) -> Any:
            asked.append(params)
            raise LearningMachineError("test: the retraining is recorded, not run")

    plan = yaml.safe_load((PLANS / "synthetic-cohort.yaml").read_text())
    plan["changes"] = ["retrain"]
    (tmp_path / "retrain-only.yaml").write_text(yaml.safe_dump(plan))
    env.stream(250, seed=21)
    recalibrate = Decision(True, ("calibration drifted, ranking held",), ("calibration",), change="recalibrate")
    strict = env.gateway.settings.model_copy(update={"change_plan": tmp_path / "retrain-only.yaml"})
    service = LoopService(strict, env.client("monitor"), tracker=Tracker(strict.tracking_uri), runner=Recording())
    assert service.trigger(recalibrate)["state"] == "FAILED"
    assert [p["change"] for p in asked] == ["retrain"]
    assert env.events("retrain-started")[0]["detail"]["change"] == "retrain"
    shipped = env.service(runner=Recording())  # the shipped plan allows both
    assert shipped.trigger.allowed_changes == ("retrain", "recalibrate")
    assert shipped.trigger(recalibrate)["state"] == "FAILED"
    assert [p["change"] for p in asked] == ["retrain", "recalibrate"]


def test_no_second_retraining_of_a_change_while_its_version_awaits_approval(env: Env, tmp_path):
    """The change-control plan held the version a retraining made for an admin: however many outcomes arrive
    meanwhile, the loop does not retrain the same change again (it says why, once); once the admin rejects
    that version, the next trigger retrains. (The held version is set up through the registry's tags and the
    trigger's last attempt, as the pipeline and the trigger leave them; the runner records the retraining
    instead of running it: what is tested is whether the loop asks for one.)"""
    import uuid

    from learning_machine.data.sources import load_dataset
    from learning_machine.errors import LearningMachineError
    from learning_machine.lifecycle.promotion import decide_approval
    from learning_machine.lifecycle.training import train_and_register
    from learning_machine.loop.policy import Decision
    from learning_machine.registry.names import APPROVAL_TAG

    asked: list[dict[str, Any]] = []

    class Recording:
        def run(self, pipeline: str, params: dict[str, Any], **_: Any) -> Any:
            asked.append(params)
            raise LearningMachineError("test: the retraining is recorded, not run")

    settings = env.gateway.settings.model_copy(update={"model_name": f"waits-{uuid.uuid4().hex[:8]}",
                                                       "home": tmp_path, "deployer": "none"})
    tracker = Tracker(settings.tracking_uri)
    train_and_register(settings, tracker, load_dataset("synthetic-cohort", n_rows=600, seed=1), promote="if-first")
    train_and_register(settings, tracker, load_dataset("synthetic-cohort", n_rows=600, seed=2), promote="never")
    tracker.tag_version(settings.model_name, "2", {APPROVAL_TAG: "awaiting"})
    env.stream(20, seed=41)
    service = LoopService(settings, env.client("monitor"), tracker=tracker, runner=Recording())
    cursor = max(int(i["outcome_id"]) for i in service.client.labelled(limit=500))
    service.trigger.last_attempt = {"since": None, "champion": "1", "outcome_cursor": cursor, "rows": 400,
                                    "cut_id": 0, "result": "awaiting-approval", "at": 1.0, "change": "retrain"}
    env.stream(300, seed=42)  # more new outcomes than LM_LOOP_RETRY_OUTCOMES (200)
    lost = Decision(True, ("the champion's log-loss alarmed",), ("sequential",))
    for _ in range(2):
        waits = service.trigger(lost)
        assert waits["state"] == "DEFERRED" and waits["awaiting_approval"] == "2", waits
        assert "awaits an admin's approval" in waits["error"] and asked == []
    said = [e for e in env.events("retrain-deferred") if e["detail"].get("awaiting_approval") == "2"
            and e["detail"]["change"] == "retrain"]
    assert len(said) == 1  # said once, not at every step
    decide_approval(settings, tracker, version="2", approve=False, by="admin", why="test: not this one")
    assert service.trigger(lost)["state"] == "FAILED" and len(asked) == 1  # retrained: the recording refused it


@pytest.mark.slow
def test_a_retraining_held_by_the_plan_is_recorded_as_awaiting_approval_not_shadowed(env: Env, tmp_path):
    """The loop's trigger runs the real retraining pipeline (kfp.local) with its plan; the candidate is better
    than the champion but below the plan's floor, so the pipeline holds it and the loop records
    `awaiting-approval` (with the plan and the champion it was judged against) instead of a refusal and a
    shadow evaluation."""
    import uuid

    import yaml

    from learning_machine.data.sources import load_dataset
    from learning_machine.lifecycle.plan import PLANS
    from learning_machine.lifecycle.training import train_and_register
    from learning_machine.loop.policy import Decision

    plan = yaml.safe_load((PLANS / "synthetic-cohort.yaml").read_text())
    plan["version"] = "1.0.0-strict-floor"
    plan["acceptance"]["subgroups"]["floors"] = {"sex": {"*": 0.99}}  # no model reaches it
    (tmp_path / "strict.yaml").write_text(yaml.safe_dump(plan))
    settings = env.gateway.settings.model_copy(update={
        "model_name": f"held-{uuid.uuid4().hex[:8]}", "change_plan": tmp_path / "strict.yaml", "home": tmp_path,
        "pipeline_runner": "local", "deployer": "none", "loop_retrain_rows": 2400, "loop_reference_rows": 0})
    tracker = Tracker(settings.tracking_uri)
    train_and_register(settings, tracker, load_dataset("synthetic-cohort", n_rows=800, seed=1), promote="if-first")
    # After a concept change: a model retrained on these rows is better than the first one.
    report = run_stream(env.client("clinician"), generated_records(2400, seed=31, scenario="concept-drift",
                                                                   drift_start=0, id_prefix="held-"),
                        StreamPlan(rows=2400, batch_size=100, outcome_delay_rows=0))
    assert report.predicted == 2400, report.summary()
    service = LoopService(settings, env.client("monitor"), tracker=tracker)
    outcome = service.trigger(Decision(True, ("test: the champion lost performance",), ("performance",)))
    assert outcome["state"] == "SUCCEEDED", outcome
    assert outcome.get("awaiting_approval") == "2" and "promoted" not in outcome and "refused" not in outcome
    assert service.trigger.last_attempt["result"] == "awaiting-approval"
    held = [e for e in env.events("awaiting-approval") if e["model_version"] == "2"]
    assert len(held) == 1 and held[0]["detail"]["champion"] == "1"
    assert held[0]["detail"]["plan"] == "synthetic-cohort-ccp 1.0.0-strict-floor"
    assert "subgroup floor: sex=" in held[0]["detail"]["reason"]
    assert not [e for e in env.events("gate-undecided") + env.events("refused") if e["model_version"] == "1"
                and (e["detail"].get("challenger") == "2")]
    assert tracker.version(settings.model_name, "champion").version == "1"
    assert tracker.version(settings.model_name, "2").tags["lm.approval"] == "awaiting"
