"""The learning loop as a service: read new predictions from the gateway, let the monitor assess each
window (drift through the model server's detector, data quality, realised performance), store the
results through the gateway and in an MLflow monitoring run, and, when the policy fires, retrain through
the `retraining` pipeline and record every event (fired, started, finished or failed, promoted or
refused). It talks to the other blocks through their APIs only."""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from learning_machine.clients.gateway import GatewayError, LearningMachineClient
from learning_machine.data.sources import write_window
from learning_machine.data.spec import DatasetSpec
from learning_machine.errors import ConflictError, LearningMachineError, ServiceUnavailableError
from learning_machine.lifecycle.plan import judge, plan_for_settings
from learning_machine.lifecycle.promotion import (
    champion_event,
    change_champion,
    clauses_summary,
    evidence_summary,
    hold_for_approval,
    interval_z,
    leads,
    proven_worse,
)
from learning_machine.loop.metrics import MonitorMetrics
from learning_machine.loop.monitor import Monitor, MonitorConfig
from learning_machine.loop.policy import Decision, RetrainPolicy
from learning_machine.loop.shadow import (
    Shadow,
    ShadowPlan,
    challenger_results,
    evidence_of,
    first_look_at,
    paired_rows,
)
from learning_machine.loop.shadow import score as shadow_score
from learning_machine.registry.names import (
    APPROVAL_TAG,
    CHAMPION,
    CHANGE_TAG,
    PLAN_REASON_TAG,
    PLAN_TAG,
    PREVIOUS_TAG,
    PROMOTED_AT_TAG,
    ROLLOUT_TAG,
)
from learning_machine.registry.tracker import Tracker, tracker_for
from learning_machine.settings import Settings

Progress = Callable[[str], None]
MONITOR_RUN = "monitor"
STATE_NAME = "monitor"
STATE_FORMAT = 1
MAX_BACKOFF_S = 300.0
log = logging.getLogger(__name__)


@dataclass
class StepOutputs:
    """What one monitor step produced, held back until the step is saved with its cursor."""

    results: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


class GatewaySink:
    """Monitoring results and loop events, stored through the gateway's API: at once, or (inside
    :meth:`buffered`) collected and stored with the monitor's state in one transaction."""

    def __init__(self, client: LearningMachineClient, metrics: MonitorMetrics | None = None) -> None:
        self.client = client
        self.metrics = metrics
        """Told what was stored at once (what is buffered is told by the loop once its step is saved)."""
        self._local = threading.local()  # buffering is the step's thread's: a retraining beside it posts at once

    @property
    def _buffer(self) -> StepOutputs | None:
        return getattr(self._local, "buffer", None)

    @_buffer.setter
    def _buffer(self, value: StepOutputs | None) -> None:
        self._local.buffer = value

    def results(self, rows: Sequence[Mapping[str, Any]]) -> None:
        jsonable = [_jsonable_row(r) for r in rows]
        if self._buffer is not None:
            self._buffer.results.extend(jsonable)
        elif jsonable:
            self.client.post_results(jsonable)
            if self.metrics is not None:
                self.metrics.stored(results=jsonable)

    def event(self, kind: str, detail: Mapping[str, Any], model_version: str | None = None) -> None:
        detail = json.loads(json.dumps(detail, default=str))
        if self._buffer is not None:
            self._buffer.events.append({"kind": kind, "detail": detail, "model_version": model_version})
        else:
            self.client.post_event(kind, detail, model_version)
            if self.metrics is not None:
                self.metrics.stored(events=[{"kind": kind}])

    @contextmanager
    def buffered(self) -> Iterator[StepOutputs]:
        """Collect instead of posting until the block ends (the caller stores what was collected)."""
        self._buffer = outputs = StepOutputs()
        try:
            yield outputs
        finally:
            self._buffer = None


def _jsonable_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(dict(row), default=str))
    value = out.get("value")
    if isinstance(value, float) and value != value:  # NaN has no JSON form
        out["value"] = None
    return out


def change_point(decision: Decision) -> str | None:
    """When the change began, by the most precise rule that fired and said so: the sequential test's change
    point (row by row), else the performance rule's (where the loss rose among the outcomes), else the
    drift rule's or the estimate rule's (the first window of the run that fired). None: retrain on the most
    recent outcomes."""
    evidence = decision.evidence
    alarms = (evidence.get("sequential_alarms") or []) if "sequential" in decision.rules else []
    found = [a.get("since") for a in alarms if a.get("since")]
    if found:
        return str(min(found))
    if "performance" in decision.rules and evidence.get("performance_since"):
        return str(evidence["performance_since"])
    if "calibration" in decision.rules and evidence.get("calibration_since"):
        return str(evidence["calibration_since"])  # where the loss rose among the outcomes, as for performance
    windowed = [str(evidence[f"{rule}_since"]) for rule in ("drift", "estimated")
                if rule in decision.rules and evidence.get(f"{rule}_since")]
    return min(windowed) if windowed else None


def builtin_spec_path(name: str) -> Path:
    return Path(str(resources.files("learning_machine.data").joinpath("specs", f"{name}.yaml")))


@dataclass
class RetrainViaPipeline:
    """The retraining trigger: export recent labelled records, run the `retraining` pipeline (which gates,
    registers, promotes and deploys), and record how it ended."""

    settings: Settings
    client: LearningMachineClient
    sink: GatewaySink
    tracker: Tracker
    spec: DatasetSpec
    runner: Any = None
    progress: Progress | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    _deferred: str | None = None
    last_attempt: dict[str, Any] | None = None
    """The change the last retraining handled and how it ended (saved with the monitor's state): while the
    same champion serves, the same change is retried only once ``loop_retry_outcomes`` new outcomes of
    predictions made since it began have arrived (the evidence, not a clock, decides)."""
    shadow_leads: bool = False
    """Set by the loop: the challenger of the last attempt leads the champion in the shadow. A retry then
    needs as many new outcomes as that challenger learnt from (twice its rows, or it would not be better)."""
    plan_text: str = ""
    """Set by the loop: its change-control plan's file text, given to the pipeline (``change_plan``), so that its
    evaluate step, in a pod or a kfp.local subprocess without the monitor's file, judges by the same plan."""
    allowed_changes: tuple[str, ...] = ("retrain", "recalibrate")
    """Set by the loop from the change-control plan: the changes it may make without a person. A recalibration
    the plan does not pre-authorise is made a retraining (which the plan does), and the events say so."""

    def __call__(self, decision: Decision) -> Mapping[str, Any]:
        from learning_machine.runners.base import get_runner

        model = self.settings.model_name
        change = decision.change  # retrain or recalibrate: every event of this retraining names it
        if change not in self.allowed_changes and "retrain" in self.allowed_changes:
            log.info("the policy asks for a %s, which the change-control plan does not pre-authorise: retraining",
                     change)
            change = "retrain"
        since = change_point(decision)
        before = self.tracker.alias_version(model, CHAMPION)
        retry = None if "requested" in decision.rules else self._same_change(before.version if before else None,
                                                                              decision)
        if retry is not None:
            since = retry.get("since") or since  # the change already being handled, from where it began
        if retry is not None and retry.get("result") == "awaiting-approval" and (
                held := self._held_for_approval(before)) is not None:
            # A person decides on the version this change produced; another one would only queue behind it.
            detail = {"error": f"v{held['version']}, retrained for this change, awaits an admin's approval; the "
                               "loop retrains again only once it is approved or rejected",
                      "awaiting_approval": held["version"], "since": retry.get("since"),
                      "reasons": list(decision.reasons), "change": change}
            return self._defer(decision, detail)
        items = self._labelled_since(since)
        if retry is not None:
            fresh = sum(1 for i in items if int(i.get("outcome_id") or 0) > int(retry.get("outcome_cursor") or 0))
            needed = self.settings.loop_retry_outcomes
            leads = self.shadow_leads and retry.get("result") == "shadow"
            if leads:
                needed = max(needed, int(retry.get("rows") or 0))
            if fresh < needed:
                detail = {"error": f"the change since {retry.get('since') or 'the last retraining'} was already "
                                   f"retrained on {retry.get('rows')} rows ({retry.get('result')}); retrying once "
                                   f"{needed} new outcomes have arrived ({fresh} so far)"
                                   + ("; its challenger leads the champion in the shadow, so a new one must learn "
                                      "from twice the rows" if leads else ""),
                          "since": retry.get("since"), "new_outcomes": fresh,
                          "needed": needed, "last_attempt": retry, "shadow_leads": leads,
                          "reasons": list(decision.reasons), "change": change}
                return self._defer(decision, detail)
        data = self.export_recent(since, items)
        if data is None and since is not None:
            # Fast detection is no use if the new model learns from rows before the change: wait for
            # enough outcomes of predictions made since the change point (and say so once).
            detail = {"error": f"waiting for {self.settings.loop_min_retrain_rows} outcomes of predictions made "
                               f"since the change at {since}", "since": since, "reasons": list(decision.reasons),
                      "change": change}
            return self._defer(decision, detail)
        attempt = {"since": since, "champion": before.version if before else None,
                   "outcome_cursor": max((int(i.get("outcome_id") or 0) for i in items), default=0),
                   "cut_id": max((int(i["id"]) for i in items), default=0),
                   "rows": len(items), "result": "running", "at": time.time(), "change": change}
        self.last_attempt = attempt
        self.sink.event("retrain-started", {"reasons": list(decision.reasons), "rules": list(decision.rules),
                                            "change": change, **({"since": since} if since else {})},
                        before.version if before else None)
        if data is None:
            detail = {"error": f"fewer than {self.settings.loop_min_retrain_rows} labelled records to retrain on",
                      "change": change}
            self.sink.event("retrain-failed", detail, before.version if before else None)
            return {"state": "SKIPPED", **detail}
        runner = self.runner or get_runner(self.settings)
        params = {"source": str(data), "spec_path": str(self._spec_path()), "model_name": model,
                  "tracking_uri": self.settings.tracking_uri, "deployer": self.settings.deployer,
                  "gate_margin": self.settings.loop_gate_margin, "reference_rows": self.settings.loop_reference_rows,
                  "reference_seed": self.settings.seed, "change": change, "change_plan": self.plan_text}
        if self.settings.loop_reference_rows == 0 or self.spec.name != "synthetic-cohort" or change == "recalibrate":
            # (a recalibration refits only the champion's score map, on the new rows: no old rows needed)
            params["reference_source"] = ""  # only the generator can regenerate the original training rows
        attempt["result"] = "failed"  # until it says otherwise
        try:
            run = runner.run("retraining", params, progress=self.progress)
        except LearningMachineError as exc:
            self.sink.event("retrain-failed", {"error": exc.message, "change": change}, before.version if before else None)
            return {"state": "FAILED", "error": exc.message, "change": change}
        summary = {"state": run.state, "run_key": run.run_key, "mlflow_url": run.mlflow_url,
                   "seconds": round(run.seconds, 1), "data": str(data), "cut_id": attempt["cut_id"], "change": change}
        self.runs.append(summary)
        if not run.succeeded:
            self.sink.event("retrain-failed", {**summary, "error": run.error, "log": run.log_path},
                            before.version if before else None)
            return summary
        after = self._champion_after_run()
        self.sink.event("retrain-finished", summary, after.version if after else None)
        if after is not None and (before is None or after.version != before.version):
            self.sink.event("promoted", {**champion_event(before, after, metrics=after.metrics, by="learning loop",
                                                       reason="retraining passed the gate",
                                                       evidence=after.tags.get("lm.gate_evidence"),
                                                       clauses=after.tags.get("lm.gate_clauses")),
                                         "change": change}, after.version)
            summary["promoted"] = after.version
            attempt["result"] = "promoted"
        elif (held := self._held_for_approval(before)) is not None:
            attempt["result"] = "awaiting-approval"
            self.sink.event("awaiting-approval", held, held["version"])
            summary["awaiting_approval"] = held["version"]
        else:
            attempt["result"] = "refused"
            challenger = self.tracker.alias_version(model, "challenger")
            # Not proven better on the held-out rows: with the shadow on, that is not the last word, unless
            # it was proven worse there.
            worse = challenger is not None and challenger.tags.get("lm.gate_proven_worse") == "true"
            # A recalibration whose closed test found no update needed is the champion itself: nothing to judge.
            same = challenger is not None and challenger.tags.get("lm.retrain_mode") == "recalibrate-none"
            shadowed = self.settings.loop_shadow and challenger is not None and before is not None and not worse \
                and not same
            self.sink.event("gate-undecided" if shadowed else "refused", {
                                        "champion": before.version if before else None,
                                        "challenger": challenger.version if challenger else None,
                                        "challenger_metrics": challenger.metrics if challenger else {},
                                        "gate": challenger.tags.get("lm.gate") if challenger else None,
                                        "evidence": challenger.tags.get("lm.gate_evidence") if challenger else None,
                                        "clauses": challenger.tags.get("lm.gate_clauses") if challenger else None,
                                        "change": change,
                                        **({"next": "shadow evaluation on live traffic"} if shadowed else {}),
                                        **({"why": "proven worse than the champion on the held-out rows: not "
                                                   "judged in the shadow"} if worse else {}),
                                        **({"why": "the closed test found no recalibration needed: the challenger "
                                                   "is the champion"} if same else {})},
                            before.version if before else None)
            summary["refused"] = challenger.version if challenger else None
            summary["shadow"] = shadowed
            if before is not None:
                summary["champion"] = before.version
        return summary

    def _held_for_approval(self, before: Any) -> dict[str, Any] | None:
        """The event of a challenger the pipeline's change-control plan held for an admin (better than the
        champion but outside the plan), or None."""
        challenger = self.tracker.alias_version(self.settings.model_name, "challenger")
        if challenger is None or challenger.tags.get(APPROVAL_TAG) != "awaiting":
            return None
        return {"version": challenger.version, "champion": before.version if before else None,
                "reason": challenger.tags.get(PLAN_REASON_TAG), "clauses": challenger.tags.get("lm.gate_clauses"),
                "evidence": challenger.tags.get("lm.gate_evidence"), "plan": challenger.tags.get(PLAN_TAG),
                "next": "an admin approves or rejects it (dashboard, POST /v1/models/{version}/approval)"}

    def _defer(self, decision: Decision, detail: dict[str, Any]) -> dict[str, Any]:
        """Not yet: say so once per decision (a restored one too), and come back at the next step."""
        key = json.dumps(decision.as_dict(), sort_keys=True, default=str)
        if self._deferred != key:
            self._deferred = key
            self.sink.event("retrain-deferred", detail)
        return {"state": "DEFERRED", **detail}

    def _same_change(self, champion: str | None, decision: Decision) -> dict[str, Any] | None:
        """The last attempt, when this decision is about the change it handled: it did not promote and the
        same champion still serves (a new champion is a new start: its own reference, its own evidence)."""
        last = self.last_attempt
        if last is None or last.get("result") == "promoted" or last.get("champion") != champion:
            return None
        return last

    def _labelled_since(self, since: str | None) -> list[dict[str, Any]]:
        items = self.client.labelled(limit=self.settings.loop_retrain_rows)
        if since is not None:
            start = pd.Timestamp(since)
            items = [i for i in items if pd.Timestamp(i["created_at"]) >= start]
        return items

    def _champion_after_run(self) -> Any:
        return self.tracker.alias_version(self.settings.model_name, CHAMPION)

    def _spec_path(self) -> Path:
        if self.settings.dataset_spec is not None:
            return self.settings.dataset_spec
        return builtin_spec_path(self.spec.name)

    def export_recent(self, since: str | None = None, items: list[dict[str, Any]] | None = None) -> Path | None:
        """The most recent labelled records (predicted at or after ``since``, when given) as a CSV in the
        dataset's columns; None when there are too few."""
        if items is None:
            items = self._labelled_since(since)
        if len(items) < self.settings.loop_min_retrain_rows:
            return None
        rid, target = self.spec.record_id.name, self.spec.target.name
        frame = pd.DataFrame([{rid: i["record_id"], **i["features"], target: i["outcome"]} for i in items])
        frame = frame.drop_duplicates(subset=[rid], keep="first")[self.spec.columns]
        folder = self.settings.home / "loop"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"retrain-{time.strftime('%Y%m%d-%H%M%S')}.csv"
        frame.to_csv(path, index=False)
        times = sorted(str(i["created_at"]) for i in items)
        write_window(path, {"first_at": times[0], "last_at": times[-1], "since": since or "",
                            "cut_id": max(int(i["id"]) for i in items)})
        return path.resolve()


class LoopService:
    """One monitor over the gateway's prediction feed; :meth:`step` does one pass, :meth:`run` loops.

    A step is all or nothing: it reads the feed, computes on the in-memory state, and saves its results,
    its events and the new cursor in one call (``PUT /v1/monitor/state``, one database transaction). When
    anything fails, the in-memory state is rolled back to what it was before the step, so the retried
    step counts every row once. The state lives in the platform database (through the gateway), not on
    the pod's disk: a restarted or rescheduled monitor resumes where the last saved step ended, and a
    retraining is started only after the step that fired it is saved, so it never fires twice."""

    def __init__(self, settings: Settings, client: LearningMachineClient, *, model_server: Any = None,
                 tracker: Tracker | None = None, runner: Any = None, progress: Progress | None = None,
                 state_name: str = STATE_NAME) -> None:
        from learning_machine.clients.v2 import ModelServerClient
        from learning_machine.data.sources import spec_for

        self.settings = settings
        self.client = client
        self.model_server = model_server or ModelServerClient.from_settings(
            settings, timeout_s=settings.request_timeout_s * 3)
        self.tracker = tracker or tracker_for(settings)
        self.spec = spec_for(settings.dataset, settings.dataset_spec)
        self.metrics = MonitorMetrics(auc_floor=settings.policy_auc_floor)
        """Prometheus metrics of what the monitor stored and decided (served at /metrics)."""
        self.sink = GatewaySink(client, self.metrics)
        self.progress = progress
        self.state_name = state_name
        self.legacy_state_path = settings.home / "loop" / "state.json"  # releases before the state moved to the database
        self.trigger = RetrainViaPipeline(settings, client, self.sink, self.tracker, self.spec, runner, progress)
        self.monitor = Monitor(
            self.spec, MonitorConfig(window_rows=settings.monitor_window_rows,
                                     performance_rows=settings.monitor_performance_rows),
            RetrainPolicy(drift_windows=settings.policy_drift_windows, auc_floor=settings.policy_auc_floor,
                          auc_drop=settings.policy_auc_drop, estimated_windows=settings.policy_estimated_windows,
                          min_outcomes=settings.policy_min_outcomes, schedule_s=settings.policy_schedule_s,
                          cooldown_s=settings.policy_cooldown_s, recalibrate=settings.policy_recalibrate,
                          calibration_intercept=settings.policy_calibration_intercept,
                          calibration_slope=(settings.policy_calibration_slope_low,
                                             settings.policy_calibration_slope_high)),
            drift=lambda records: self.model_server.drift(settings.model_name, self.spec, list(records)),
            sink=self.sink, trigger=self.trigger, metrics_logger=self._log_metrics, labelled=self._labelled,
            sequential=self._sequential_detector if settings.monitor_sequential else None, progress=progress)
        self.monitor.trigger = lambda decision: self.trigger(decision)  # run beside the monitor (_start_retraining)
        self.job: RetrainJob | None = None
        self.shadow: Shadow | None = None
        self.shadow_plan = ShadowPlan(settings.loop_shadow_first_look, settings.loop_shadow_max_rows)
        self.plan = plan_for_settings(settings, self.spec)
        self.trigger.allowed_changes = tuple(self.plan.changes)
        self.trigger.plan_text = self.plan.text
        self._rollout_judged: set[str] = set()
        """The change-control plan every promotion the loop makes is judged by (the pipeline's evaluate step
        loads the same one)."""
        self._shadow_model: tuple[str, Any] | None = None
        self._detectors: dict[str, Any] = {}
        self._metrics: list[tuple[dict[str, float], int]] = []
        # Where the feed was assessed up to (saved), where it was read up to (rows in a partial window lie
        # between the two: after a restart they are read again), and the newest outcome fed to the test.
        self.cursor = 0
        self.read_cursor = 0
        self.outcome_cursor = 0
        self.last_request_id = 0
        self.monitor_run_id: str | None = None
        self.state_version: int | None = None
        self._state_loaded = False
        self._runner_prepared = False
        self.steps = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.retry_in_s: float | None = None
        self.last_step_at: float | None = None

    # -- state that survives a restart, in the platform database through the gateway -----------------
    def durable_state(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "cursor": self.cursor, "outcome_cursor": self.outcome_cursor,
                "last_request_id": self.last_request_id, "monitor_run_id": self.monitor_run_id,
                "model_name": self.settings.model_name, "last_attempt": self.trigger.last_attempt,
                "retraining": self.job.state() if self.job is not None else None,
                "shadow": self.shadow.as_state() if self.shadow is not None else None, **self.monitor.durable_state()}

    def load_state(self) -> None:
        """Resume from the saved state; without one (a first start, or a lost row), from the legacy state
        file if an older release left one, and from the event log: the last retraining request handled
        and the last retraining fired (the cooldown) are derived from the ``retrain-fired`` events."""
        saved = self.client.monitor_state(self.state_name)
        state = saved.get("state")
        self.state_version = saved.get("version")
        if state is None:
            state = self._legacy_state()
            derived = self._derive_from_events()
            state["last_request_id"] = max(int(state.get("last_request_id") or 0), derived["last_request_id"])
            state.setdefault("last_retrain_at", derived["last_retrain_at"])
        self.cursor = self.read_cursor = int(state.get("cursor") or 0)
        self.outcome_cursor = int(state.get("outcome_cursor") or 0)
        self.last_request_id = int(state.get("last_request_id") or 0)
        self.monitor_run_id = state.get("monitor_run_id") or self.monitor_run_id
        self.monitor.restore(state)
        self.monitor.pending = []
        self.trigger.last_attempt = state.get("last_attempt")
        self.shadow = Shadow.from_state(state["shadow"]) if state.get("shadow") else None
        interrupted = state.get("retraining")
        if interrupted and self.job is None:
            # The monitor stopped while a retraining ran beside it: that run never reported back. Say so, and
            # count it as an attempt at its change (retried when the evidence allows, not at once).
            self.sink.event("retrain-failed", {"error": "the monitor stopped while this retraining ran; its "
                                               "outcome was not recorded", **interrupted})
            if self.trigger.last_attempt and self.trigger.last_attempt.get("result") == "running":
                self.trigger.last_attempt["result"] = "interrupted"
        self._detectors.clear()  # a fresh sequential test: it sees the rows after the cursor again
        self._state_loaded = True
        if self.progress and saved.get("state") is not None:
            self.progress(f"monitor resumes after prediction {self.cursor} (window {self.monitor.next_window_id}, "
                          f"state version {self.state_version})")

    def _legacy_state(self) -> dict[str, Any]:
        try:
            legacy = json.loads(self.legacy_state_path.read_text())
            return {k: legacy[k] for k in ("cursor", "monitor_run_id", "last_request_id") if k in legacy}
        except (FileNotFoundError, ValueError, TypeError):
            return {}

    def _derive_from_events(self) -> dict[str, Any]:
        fired = self.client.page("/v1/events", kind="retrain-fired", limit=200)["items"]  # newest first
        handled = [int(e["detail"]["request_event_id"]) for e in fired
                   if isinstance(e.get("detail"), dict) and e["detail"].get("request_event_id") is not None]
        last_at = None
        if fired and fired[0].get("created_at"):
            last_at = pd.Timestamp(fired[0]["created_at"]).timestamp()
        return {"last_request_id": max(handled, default=0), "last_retrain_at": last_at}

    def _commit(self, outputs: StepOutputs | None = None) -> None:
        """Save the state with the step's results and events, all or nothing. A save whose answer was lost
        is recognised by its commit id; a save refused because another writer moved the state on is a
        :class:`ConflictError`."""
        state = {**self.durable_state(), "commit": uuid.uuid4().hex}
        results, events = (outputs.results, outputs.events) if outputs is not None else ([], [])
        try:
            saved = self.client.save_monitor_state(state, self.state_version, name=self.state_name,
                                                   results=results, events=events)
        except (ServiceUnavailableError, GatewayError) as exc:
            if isinstance(exc, GatewayError) and exc.status not in (409,) and exc.status < 500:
                raise
            current = self.client.monitor_state(self.state_name)  # did it commit before the answer was lost?
            if (current.get("state") or {}).get("commit") != state["commit"]:
                if isinstance(exc, GatewayError) and exc.status == 409:
                    raise ConflictError(f"another writer saved the monitor state {self.state_name!r} (now "
                                        f"version {current.get('version')}): is a second monitor running? This "
                                        "one resumes from the saved state") from exc
                raise
            saved = current
        self.state_version = int(saved["version"])
        self.legacy_state_path.unlink(missing_ok=True)
        if outputs is not None:
            self.metrics.stored(outputs.results, outputs.events)

    def _snapshot(self) -> dict[str, Any]:
        # The detectors' statistics are copied; their fitted encodings (the dataset spec) are shared.
        detectors = {v: None if d is None else copy.deepcopy(d, {id(d.encoding): d.encoding})
                     for v, d in self._detectors.items()}
        return {"monitor": self.monitor.snapshot(), "detectors": detectors, "cursor": self.cursor,
                "read_cursor": self.read_cursor, "outcome_cursor": self.outcome_cursor,
                "last_request_id": self.last_request_id, "metrics": len(self._metrics), "job": self.job,
                "shadow": copy.deepcopy(self.shadow),
                "last_attempt": copy.deepcopy(self.trigger.last_attempt)}

    def _rollback(self, snapshot: Mapping[str, Any]) -> None:
        self.monitor.rollback(snapshot["monitor"])
        self._detectors = dict(snapshot["detectors"])  # a detector fitted in the failed step is fitted again
        self.cursor, self.read_cursor = snapshot["cursor"], snapshot["read_cursor"]
        self.outcome_cursor, self.last_request_id = snapshot["outcome_cursor"], snapshot["last_request_id"]
        del self._metrics[snapshot["metrics"]:]
        self.job = snapshot["job"]  # a finished retraining is collected again by the retried step
        self.shadow = snapshot["shadow"]
        if self.job is not None and self.job.done.is_set():
            self.trigger.last_attempt = snapshot["last_attempt"]

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._metrics.append((metrics, step))  # logged to MLflow once the step is saved

    def _flush_metrics(self) -> None:
        """The saved windows' metrics to the MLflow monitoring run (best effort: the results are stored)."""
        try:
            while self._metrics:
                metrics, step = self._metrics[0]
                if self.monitor_run_id is None:
                    self.monitor_run_id = self.tracker.start_run(self.settings.monitor_experiment, MONITOR_RUN,
                                                                 tags={"lm.purpose": "monitoring"})
                self.tracker.log_metrics(self.monitor_run_id, metrics, step=step)
                self._metrics.pop(0)
        except LearningMachineError as exc:
            log.warning("window metrics not logged to MLflow yet (%s); they are kept for the next step", exc.message)
        del self._metrics[:-500]  # bounded while MLflow is away

    def _labelled(self) -> pd.DataFrame:
        """Realised performance of the model that serves now: its recent predictions with outcomes."""
        champion = self.tracker.alias_version(self.settings.model_name, CHAMPION)
        # The champion is looked up here anyway: the AUC it was validated with goes to the policy with it.
        found = champion.metrics.get("auc") if champion is not None else None
        self.monitor.expected_auc = float(found) if found is not None else None
        items = self.client.labelled(limit=self.settings.monitor_performance_rows,
                                     model_version=champion.version if champion else None)
        return pd.DataFrame([{**i["features"], "probability": i["probability"], "outcome": i["outcome"],
                              "created_at": i["created_at"]} for i in items])

    def _sequential_detector(self, version: str) -> Any:
        """The sequential detector of ``version``, fitted once on the training reference saved with it (read
        through MLflow's API) and calibrated to the configured false-alarm budget."""
        if version not in self._detectors:
            from learning_machine.model.sequential import fit_sequential
            from learning_machine.registry.bundle import load_version
            from learning_machine.registry.names import model_uri

            served = load_version(self.settings.tracking_uri, model_uri(self.settings.model_name, version),
                                  timeout_s=self.settings.request_timeout_s)
            self._detectors[version] = None if served.reference is None else fit_sequential(
                served.spec, served.reference, false_alarms_per_10k=self.settings.monitor_false_alarms_per_10k)
            if self.progress:
                self.progress(f"sequential test for v{version}: "
                              + ("no training reference saved, off" if served.reference is None else
                                 f"calibrated to {self.settings.monitor_false_alarms_per_10k:g} false alarm(s) "
                                 "per 10,000 predictions"))
            while len(self._detectors) > 3:  # bounded: the serving version and the last few
                self._detectors.pop(next(iter(self._detectors)))
        return self._detectors[version]

    def _retrain(self, decision: Decision) -> Mapping[str, Any]:
        """Retrain now, in this thread (what a retraining beside the monitor does, then :meth:`_after`)."""
        outcome = self.trigger(decision)
        self._after(outcome)
        return outcome

    def _after(self, outcome: Mapping[str, Any]) -> None:
        """What a finished retraining means for the monitor (in the step's thread). A retraining's alarms
        are handled: they are cleared. When the challenger is refused the champion stays and the changed
        feature population is its new normal: the sequential test's feature streams are refitted on the rows
        it was retrained on (or they would alarm on the same change again and again), while its outcome
        stream keeps the champion's own burn-in, so a loss of performance keeps alarming until something
        better serves."""
        if outcome.get("state") == "DEFERRED":
            return
        self.monitor.alarms.clear()
        if outcome.get("promoted"):
            self._new_champion()
            return
        champion, data = outcome.get("champion"), outcome.get("data")
        if outcome.get("refused") and champion and self.settings.loop_shadow and outcome.get("shadow", True):
            self.start_shadow(str(outcome["refused"]), str(champion), int(outcome.get("cut_id") or 0), data)
            return
        self._rebaseline(champion, data)

    def _new_champion(self) -> None:
        """Another version serves: the policy's window history (the old version's performance) no longer
        says anything about it; a shadow of the old champion ends at its next step."""
        self.monitor.windows.clear()
        self.monitor.alarms.clear()
        self.monitor.accepted_drift.clear()

    def _rebaseline(self, champion: Any, data: Any) -> None:
        # The windowed drift test's reference is the training data: the features drifting now are accepted.
        self.monitor.accepted_drift |= {f for w in self.monitor.windows if w.drift for f in w.drifted_features}
        if champion and data and self.settings.monitor_sequential:
            from learning_machine.model.sequential import fit_sequential, rebaselined

            frame = pd.read_csv(data)
            if len(frame) >= 50:
                fresh = fit_sequential(self.spec, frame[self.spec.feature_names],
                                       false_alarms_per_10k=self.settings.monitor_false_alarms_per_10k)
                old = self._detectors.get(str(champion))
                self._detectors[str(champion)] = rebaselined(old, fresh) if old is not None else fresh
                self.sink.event("monitor-rebaselined", {"rows": len(frame), "reason": "challenger retired: the "
                                                        "champion stays and the recent features are its new normal; "
                                                        "its performance is still judged against its own burn-in"},
                                str(champion))

    def new_outcomes(self) -> pd.DataFrame:
        """Outcomes that arrived since the last step (in arrival order), for the sequential test's outcome
        stream; the outcome cursor (saved with the state) makes sure none is fed twice."""
        items = [i for i in self.client.labelled(limit=5000)
                 if i.get("outcome_id") is not None and int(i["outcome_id"]) > self.outcome_cursor]
        items.sort(key=lambda i: (int(i["outcome_id"]), int(i["id"])))
        if items:
            self.outcome_cursor = int(items[-1]["outcome_id"])
        fresh = [{"outcome": i["outcome"], "probability": i["probability"], "model_version": i["model_version"],
                  "created_at": i["created_at"]} for i in items]
        return pd.DataFrame(fresh, columns=["outcome", "probability", "model_version", "created_at"])

    def requested(self) -> Decision | None:
        """A retraining someone asked for (`POST /v1/retrain`, the dashboard's button): fired once per request,
        without waiting for the policy, and recorded like any other; the ``retrain-fired`` event names the
        request it handled (``request_event_id``), so even a monitor that lost its state fires it once."""
        items = self.client.page("/v1/events", kind="retrain-requested", limit=50)["items"]
        new = sorted((e for e in items if int(e["id"]) > self.last_request_id), key=lambda e: int(e["id"]))
        if not new:
            return None
        self.last_request_id = int(new[-1]["id"])
        detail = new[-1].get("detail") or {}
        decision = Decision(True, (f"requested by {detail.get('by') or 'an admin'}: {detail.get('reason', '')}",),
                            ("requested",), evidence={"request_event_id": self.last_request_id})
        self.sink.event("retrain-fired", {**decision.as_dict(), "request_event_id": self.last_request_id,
                                          "request_event_ids": [int(e["id"]) for e in new]})
        self.monitor.last_retrain_at = self.monitor.clock()
        return decision

    def _compute(self) -> Decision | None:
        """One pass on the in-memory state (its outputs go to the sink's buffer). While a retraining runs
        beside it the monitor keeps reading, assessing and alarming, but starts nothing: a request waits for
        it, and a policy that would fire is recorded once as held (the change is being handled)."""
        running = self.job is not None
        requested = None if running else self.requested()
        if requested is not None:
            return requested
        feed = self.client.feed(after_id=self.read_cursor, limit=5000)
        rows = [{self.spec.record_id.name: i["record_id"], **i["features"], "probability": i["probability"],
                 "model_version": i["model_version"], "created_at": i["created_at"], "feed_id": int(i["id"])}
                for i in feed["items"]]
        windows = self.monitor.add(rows)
        if self.monitor.sequential is not None:
            self.monitor.add_outcomes(self.new_outcomes())
        self.read_cursor = int(feed["next_after_id"])
        # Saved: up to the last row assessed in a full window; the partial window's rows are read again
        # after a restart (they are never stored in the state).
        pending = self.monitor.pending
        self.cursor = int(pending[0]["feed_id"]) - 1 if pending else self.read_cursor
        if self.shadow is not None:
            self._shadow_step()
        if running:
            self._held(windows)
            return None
        self.trigger.shadow_leads = self._shadow_ahead()
        if self.shadow is not None and not self.monitor.waiting and self._shadow_decides():
            # A challenger is being judged on live traffic: another retraining would only churn (and restart
            # the evidence). Let the shadow's evidence decide.
            self._held(windows)
            return None
        if windows or self.monitor.alarms or self.monitor.waiting:
            return self.monitor.decide(start=False)
        return None

    def _shadow_ahead(self) -> bool:
        """The challenger in the shadow leads the champion on the paired rows so far (the point estimate of a
        metric it may prove itself better on), or has not been looked at yet."""
        shadow = self.shadow
        return shadow is not None and (not shadow.looks or bool(shadow.looks[-1].get("ahead", True)))

    def _shadow_decides(self) -> bool:
        """Whether the shadow's evidence alone decides this change: yes while the champion has not lost
        performance (only the features moved), and while the challenger leads and the champion still ranks
        (its log-loss alarmed, e.g. a prevalence shift, but its realised AUC is not under the floor). A newer
        challenger on more post-change rows may replace it when the champion's performance is lost and the
        challenger does not lead (after ``LM_LOOP_RETRY_OUTCOMES`` new outcomes), or when the champion's
        discrimination is lost (then, while the challenger leads, on twice its rows)."""
        return not self._performance_lost() or (self._shadow_ahead() and not self._discrimination_lost())

    def _discrimination_lost(self) -> bool:
        """The serving model no longer ranks: its realised AUC is under the floor (the policy's rule)."""
        return "performance" in self.monitor.policy_decision(alarms=False, cooldown=False).rules

    def _performance_lost(self) -> bool:
        """The serving model is worse than it was: the outcome stream alarmed, or it no longer ranks."""
        return any(a.stream == "outcomes" for a in self.monitor.alarms) or self._discrimination_lost()

    def _held(self, windows: Sequence[Any]) -> None:
        """While a retraining runs or the shadow decides: what the policy would decide, recorded once per
        retraining or shadow."""
        busy: Any = self.job if self.job is not None else self.shadow
        if busy is None or getattr(busy, "held", False) or not (windows or self.monitor.alarms):
            return
        would = self.monitor.policy_decision(cooldown=False)
        if would.retrain:
            busy.held = True
            what = "a retraining for this change is running" if self.job is not None else \
                (f"challenger v{self.shadow.version if self.shadow else '?'} is judged in the shadow and "
                 + ("the champion's performance has not fallen" if not self._performance_lost() else
                    "leads the champion, which still ranks (realised AUC not under the floor)"))
            self.sink.event("retrain-held", {**would.as_dict(), "why": f"{what}; the monitor keeps watching"})

    # -- the shadow: a challenger scoring live traffic beside the champion --------------------------
    def start_shadow(self, version: str, champion: str, cut_id: int, data: Any = None) -> Shadow:
        """Evaluate challenger ``version`` on the records the champion answers after ``cut_id`` (a newer
        challenger, retrained on more post-change rows, supersedes one still in the shadow)."""
        if self.shadow is not None:
            self._end_shadow("superseded", f"challenger v{version}, retrained on more rows since the change, "
                                           "takes its place")
        self.shadow = Shadow(version, champion, cut_id, time.time(), str(data) if data else None,
                             scored_up_to=cut_id, next_look=self.shadow_plan.first_look)
        self._shadow_model = None
        if self.trigger.last_attempt and self.trigger.last_attempt.get("result") == "refused":
            self.trigger.last_attempt["result"] = "shadow"
        self.sink.event("shadow-started", {"challenger": version, "champion": champion, "after_prediction": cut_id,
                                           "deployment": self._shadow_deployment(champion, version),
                                           "looks_at_rows": self.shadow_plan.look_sizes(),
                                           "confidence_per_look": round(
                                               100 * (1 - 0.05 / self.shadow_plan.looks), 2)}, version)
        if self.progress:
            self.progress(f"challenger v{version} scores live traffic in the shadow of v{champion}")
        return self.shadow

    def _shadow_step(self) -> None:
        """Score what the champion answered since the last step, store it apart, and look at the paired
        evidence when it has doubled. Any failure ends the shadow with an event; predictions never depend
        on it (they are answered by the champion alone)."""
        shadow = self.shadow
        assert shadow is not None
        champion = self.tracker.alias_version(self.settings.model_name, CHAMPION)
        if champion is None or champion.version != shadow.champion:
            self._end_shadow("ended", f"the champion changed (now v{champion.version if champion else None})")
            return
        try:
            model = self._challenger_model(shadow.version)
            while shadow.scored_up_to < self.read_cursor:
                page = self.client.feed(after_id=shadow.scored_up_to, limit=2000)
                items = [i for i in page["items"] if int(i["id"]) <= self.read_cursor]
                answered = [i for i in items if str(i["model_version"]) == shadow.champion]
                if answered:
                    self.client.post_shadow(self.settings.model_name, shadow.version,
                                            shadow_score(model, self.spec, answered))
                if not items:
                    break
                shadow.scored_up_to = int(items[-1]["id"])
        except (LearningMachineError, GatewayError, ValueError, KeyError) as exc:
            self._end_shadow("failed", f"the shadow could not score: {_describe(exc)}")
            return
        labelled = [i for i in self.client.labelled(limit=min(20_000, 4 * self.shadow_plan.max_rows),
                                                    model_version=shadow.champion) if int(i["id"]) > shadow.cut_id]
        if len(labelled) < shadow.next_look:
            return  # not enough outcomes yet for the next look
        scores = {int(i["prediction_id"]): float(i["probability"])
                  for i in self.client.shadow(shadow.version, after_prediction_id=shadow.cut_id)}
        paired = paired_rows(self.spec, labelled, scores, cut_id=shadow.cut_id, champion=shadow.champion)
        if len(paired) < shadow.next_look:
            return
        self._shadow_look(shadow, paired)

    def _shadow_look(self, shadow: Shadow, paired: pd.DataFrame) -> None:
        """Judge the challenger on the paired live rows by the change-control plan, with the error budget
        shared between the shadow's looks: inside the plan it is promoted; better but outside the plan it waits
        for an admin; otherwise the shadow goes on to its next look (or ends, when it is proven worse or the
        last look has passed). Live rows after the cut were never training rows: they are independent."""
        evidence = evidence_of(self.spec, paired)
        looks = self.shadow_plan.looks
        rule = self.plan.evidence_rule(looks, self.settings.loop_gate_margin)
        metric = self.plan.acceptance.discrimination.metric
        change = str(self.tracker.version(self.settings.model_name, shadow.version).tags.get(CHANGE_TAG, "retrain"))
        verdict = judge(self.plan, change="recalibrate" if change == "recalibrate" else "retrain", evidence=evidence,
                        candidate=challenger_results(self.spec, paired), independent_test_rows=True, looks=looks,
                        margin=self.settings.loop_gate_margin)
        look = {"look": len(shadow.looks) + 1, "rows": len(paired), "promote": verdict.decision == "promote",
                "decision": verdict.decision, "ahead": leads(evidence, rule, metric),
                "reason": verdict.reason, "evidence": evidence_summary(evidence),
                "clauses": clauses_summary(list(verdict.clauses)), "plan": verdict.plan}
        shadow.looks.append({k: look[k] for k in ("look", "rows", "promote", "ahead")})
        shadow.next_look = first_look_at(self.shadow_plan, len(paired) + 1)
        self.sink.event("shadow-look", look, shadow.version)
        if self.progress:
            self.progress(f"shadow look {look['look']} at v{shadow.version}: {verdict.reason}")
        if verdict.decision == "promote":
            change_champion(self.settings, self.tracker, action="promote", version=shadow.version,
                            reason=f"shadow evaluation on {len(paired)} live records: {verdict.reason}",
                            by="learning loop (shadow)", record=self._record_event)
            self.trigger.last_attempt = {**(self.trigger.last_attempt or {}), "result": "promoted"}
            self.shadow = None
            self._new_champion()
            return
        if verdict.decision == "awaiting-approval":
            hold_for_approval(self.tracker, self.settings.model_name, shadow.version, verdict=verdict.as_dict(),
                              judged_against=shadow.champion, record=self._record_event)
            self._end_shadow("awaiting-approval", f"better than the champion on {len(paired)} live records but "
                                                  f"outside the change-control plan: {verdict.reason}", evidence=look)
            return
        worse = proven_worse(evidence, rule, metric)
        if worse or shadow.next_look > self.shadow_plan.max_rows:
            self._end_shadow("refused", ("proven worse than the champion" if worse else
                                         f"not proven better on {len(paired)} live records (the plan's last look)"),
                             evidence=look)

    def _end_shadow(self, how: str, why: str, *, evidence: Mapping[str, Any] | None = None) -> None:
        """The shadow ends without a promotion: the challenger is retired (``refused``), or the shadow stopped
        (``failed``, ``ended``). A retired challenger's population becomes the monitor's new normal."""
        shadow, self.shadow = self.shadow, None
        assert shadow is not None
        kind = {"refused": "refused", "failed": "shadow-failed", "ended": "shadow-ended",
                "superseded": "shadow-ended", "awaiting-approval": "shadow-ended"}[how]
        self.sink.event(kind, {"challenger": shadow.version, "champion": shadow.champion, "by": "shadow evaluation",
                               "why": why, "looks": shadow.looks, **(dict(evidence) if evidence else {}),
                               "deployment": self._shadow_deployment(shadow.champion)},
                        shadow.champion)
        if self.trigger.last_attempt and self.trigger.last_attempt.get("result") == "shadow":
            self.trigger.last_attempt["result"] = "refused" if how == "refused" else how
        if how == "refused":
            self.monitor.alarms.clear()  # what they said was judged: the challenger was not better
            self._rebaseline(shadow.champion, shadow.data)

    def _shadow_deployment(self, champion: str, challenger: str | None = None) -> dict[str, Any]:
        """Start (with ``challenger``) or end the shadow in the serving backend: on Seldon a shadow predictor
        mirrors live traffic to the challenger; the embedded deployers deploy nothing (the monitor scores it).
        The paired evidence is the monitor's either way, so a refusal is recorded and the evaluation goes on."""
        from learning_machine.deployers import get_deployer

        try:
            deployer = get_deployer(self.settings)
            result = (deployer.start_shadow(self.settings.model_name, champion, challenger) if challenger else
                      deployer.end_shadow(self.settings.model_name, champion))
        except LearningMachineError as exc:
            return {"deployer": self.settings.deployer, "error": _describe(exc)}
        return {"deployer": result.backend, "changed": result.changed, "detail": result.detail}

    def _challenger_model(self, version: str) -> Any:
        if self._shadow_model is None or self._shadow_model[0] != version:
            model, _ = self.tracker.load_pipeline(self.settings.model_name, version)
            self._shadow_model = (version, model)
        return self._shadow_model[1]

    def _record_event(self, kind: str, detail: dict[str, Any], version: str | None) -> dict[str, Any]:
        self.sink.event(kind, detail, version)
        return {"kind": kind, "detail": detail, "model_version": version}

    def step(self) -> Decision | None:
        """Act on a requested retraining, or read the feed once, assess every full window and apply the policy
        after new windows; save it all with the cursor; then start a retraining that fired."""
        if not self._state_loaded:
            self.load_state()
        finished = self.job is not None and self.job.done.is_set()
        collected = self.job if finished else None
        snapshot = self._snapshot()
        try:
            with self.sink.buffered() as outputs:
                if finished:
                    self._collect()
                decision = self._compute()
            self._commit(outputs)
        except BaseException as exc:
            self._rollback(snapshot)
            if isinstance(exc, ConflictError):
                self._state_loaded = False  # another writer moved the state on: resume from it
            raise
        self._flush_metrics()
        self._check_rollout()
        self._observe(decision, collected)
        self.steps += 1
        self.last_step_at = time.time()
        if decision is not None and decision.retrain and self.monitor.trigger is not None and self.job is None:
            self.prepare_retraining()  # while it waits for outcomes after the change, the runner gets ready
            self._start_retraining(decision)
        return decision

    def _check_rollout(self) -> None:
        """The change-control plan's rollback rule, once per champion that replaced another: on the first
        ``window_rows`` labelled predictions it made, its realised AUC must not be shown below ``auc_floor``
        (the 95 % interval's upper end, Hanley-McNeil). Below: rolled back to the champion it replaced
        (``rolled-back`` by the learning loop), or, when the plan does not roll back without a person, a
        ``rollback-recommended`` event. The outcome is tagged on the version (``lm.rollout``), so it is
        judged once, across restarts. A failure to check is logged and retried at the next step."""
        from sklearn.metrics import roc_auc_score

        from learning_machine.model.evaluation import auc_standard_error

        rule = self.plan.rollback
        model = self.settings.model_name
        try:
            champion = self.tracker.alias_version(model, CHAMPION)
            if champion is None or champion.version in self._rollout_judged:
                return
            if ROLLOUT_TAG in champion.tags or not champion.tags.get(PREVIOUS_TAG):
                self._rollout_judged.add(champion.version)  # judged before, or replaced nothing: not watched
                return
            promoted_at = float(champion.tags.get(PROMOTED_AT_TAG) or 0)
            items = [i for i in self.client.labelled(limit=20_000, model_version=champion.version)
                     if pd.Timestamp(i["created_at"]).timestamp() >= promoted_at - 1]
        except (LearningMachineError, GatewayError) as exc:
            log.warning("the rollback rule could not be checked: %s", _describe(exc))
            return
        if len(items) < rule.window_rows:
            return
        first = sorted(items, key=lambda i: int(i["id"]))[:rule.window_rows]
        y = [int(i["outcome"]) for i in first]
        events = sum(y)
        if events in (0, len(y)):
            return  # one outcome only: no AUC yet; judged when both have arrived
        auc = float(roc_auc_score(y, [float(i["probability"]) for i in first]))
        upper = auc + interval_z() * auc_standard_error(auc, events, len(y))
        previous = champion.tags[PREVIOUS_TAG]
        detail = {"version": champion.version, "previous": previous, "rows": len(y), "auc": round(auc, 4),
                  "upper_95": round(upper, 4), "auc_floor": rule.auc_floor, "plan": self.plan.identity()}
        self._rollout_judged.add(champion.version)
        if upper >= rule.auc_floor:
            self.tracker.tag_version(model, champion.version, {ROLLOUT_TAG: f"confirmed: AUC {auc:.3f} on {len(y)}"})
            self.sink.event("rollout-confirmed", detail, champion.version)
            return
        why = (f"realised AUC {auc:.3f} (95 % upper end {upper:.3f}) on the first {len(y)} labelled predictions of "
               f"v{champion.version} is below the change-control plan's rollback floor {rule.auc_floor:g}")
        if not rule.automatic:
            self.tracker.tag_version(model, champion.version, {ROLLOUT_TAG: "rollback-recommended"})
            self.sink.event("rollback-recommended", {**detail, "why": why}, champion.version)
            return
        change_champion(self.settings, self.tracker, action="rollback", version=previous, reason=why,
                        by="learning loop (change-control plan)", record=self._record_event)
        self.tracker.tag_version(model, champion.version, {ROLLOUT_TAG: f"rolled-back: AUC {auc:.3f} on {len(y)}"})
        if self.shadow is not None:
            self._end_shadow("ended", f"v{champion.version} was rolled back")
        self._new_champion()

    def _observe(self, decision: Decision | None, collected: RetrainJob | None) -> None:
        """A saved step's decision, the serving version's sequential statistics and a retraining it collected,
        to the Prometheus metrics."""
        if decision is not None:
            self.metrics.decision(decision.rules, decision.retrain)
        detector = self._detectors.get(self.monitor.serving_version or "")
        if detector is not None:
            self.metrics.sequential(detector.statistics())
        if collected is not None:
            state = "error" if collected.error is not None else str((collected.outcome or {}).get("state") or "ended")
            if state != "DEFERRED":  # it waited for outcomes: no retraining ran
                self.metrics.retraining(state.lower(), (collected.ended_at or time.time()) - collected.started_at)

    def prepare_retraining(self) -> None:
        """Let the pipeline runner get ready for a retraining (the local runner starts its warm interpreters,
        ~7 s of imports the first run of a process would otherwise wait for); once per service, never fatal."""
        if self._runner_prepared:
            return
        self._runner_prepared = True
        from learning_machine.runners.base import get_runner

        try:
            (self.trigger.runner or get_runner(self.settings)).prepare()
        except (LearningMachineError, OSError) as exc:  # an optimisation: the retraining reports what is wrong
            log.warning("the pipeline runner could not get ready: %s", _describe(exc))

    def _start_retraining(self, decision: Decision) -> None:
        """Start the trigger for a saved ``retrain-fired`` decision (once: the decision is saved before) in a
        thread beside the monitor, which keeps stepping; the next step after it ends collects its outcome. A
        retraining that must wait for outcomes is kept (saved) and tried again at the next steps."""
        assert self.monitor.trigger is not None
        self.monitor.waiting = None
        self.job = RetrainJob(decision, self.monitor.trigger)
        self._commit()  # saved as running: a monitor that restarts meanwhile knows a run was under way
        self.job.start()

    def _collect(self) -> None:
        """A retraining that ended: how, in the step's outputs (saved with the step); a deferred one waits."""
        job, self.job = self.job, None
        assert job is not None
        if job.error is not None:
            self.sink.event("retrain-failed", {"error": _describe(job.error), "reasons": list(job.decision.reasons),
                                               "change": job.decision.change})
            if self.trigger.last_attempt and self.trigger.last_attempt.get("result") == "running":
                self.trigger.last_attempt["result"] = "failed"
            self.monitor.alarms.clear()
            return
        outcome = job.outcome or {}
        if self.progress and outcome.get("state") != "DEFERRED":  # a deferral is said once, as an event
            self.progress(f"retraining: {outcome.get('state', 'ended')}"
                          + (f" ({outcome['error']})" if outcome.get("error") else "")
                          + (f", v{outcome['promoted']} promoted" if outcome.get("promoted") else ""))
        if outcome.get("state") == "DEFERRED":
            self.monitor.waiting = job.decision
        self._after(outcome)

    def wait_retraining(self, timeout_s: float | None = None) -> Mapping[str, Any] | None:
        """Block until the running retraining ends (tests, the benchmark, `lm monitor --once`); its outcome, or
        None when none ran. The next :meth:`step` records it."""
        job = self.job
        if job is None:
            return None
        if not job.done.wait(timeout_s):
            raise TimeoutError(f"the retraining did not end within {timeout_s} s")
        if job.error is not None:
            return {"state": "ERROR", "error": _describe(job.error)}
        return job.outcome

    def run(self, interval_s: float, stop: threading.Event, *, max_backoff_s: float = MAX_BACKOFF_S) -> None:
        """Step every ``interval_s`` until ``stop`` is set. A failing step, whatever the error, is logged with
        its traceback, reported by :meth:`health` (degraded) and retried after a delay that doubles with each
        failure in a row, up to ``max_backoff_s``: one bad step never ends the monitor. The pipeline runner is
        readied first, so the first retraining does not wait for it."""
        if self.monitor.trigger is not None:
            self.prepare_retraining()
        while not stop.is_set():
            delay = interval_s
            try:
                self.step()
                self.failures, self.last_error, self.retry_in_s = 0, None, None
            except Exception as exc:  # the loop's boundary: anything a step raises is reported, never fatal
                self.failures += 1
                delay = min(interval_s * 2 ** (self.failures - 1), max(max_backoff_s, interval_s))
                self.last_error, self.last_error_at, self.retry_in_s = _describe(exc), time.time(), delay
                log.error("monitor step failed (%d in a row), retrying in %.0f s", self.failures, delay,
                          exc_info=not isinstance(exc, LearningMachineError))
                if self.progress:
                    self.progress(f"monitor step failed: {self.last_error} (retrying in {delay:.0f} s)")
            stop.wait(delay)
        if self.job is not None and not self.job.done.is_set():
            log.warning("stopping while a retraining runs: it is abandoned, and recorded as interrupted when the "
                        "monitor next starts")

    def health(self) -> dict[str, Any]:
        return {"status": "ok" if self.last_error is None else "degraded", "steps": self.steps,
                "cursor": self.cursor, "read_cursor": self.read_cursor, "windows": self.monitor.next_window_id - 1,
                "state_version": self.state_version, "last_step_at": self.last_step_at,
                "last_error": self.last_error, "last_error_at": self.last_error_at,
                "failures_in_a_row": self.failures, "retry_in_s": self.retry_in_s,
                "pending_rows": len(self.monitor.pending),
                "retraining": self.job.state() if self.job is not None else None,
                "last_attempt": self.trigger.last_attempt,
                "shadow": self.shadow.as_state() if self.shadow is not None else None}


class RetrainJob:
    """One retraining, run in a thread beside the monitor; its outcome (or error) is collected by a step."""

    def __init__(self, decision: Decision, trigger: Callable[[Decision], Mapping[str, Any]]) -> None:
        self.decision = decision
        self.trigger = trigger
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.outcome: Mapping[str, Any] | None = None
        self.error: Exception | None = None
        self.held = False
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retraining", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self.outcome = self.trigger(self.decision)
        except Exception as exc:  # the thread's boundary: reported by the step that collects the job
            self.error = exc
            log.error("the retraining failed", exc_info=not isinstance(exc, LearningMachineError))
        finally:
            self.ended_at = time.time()
            self.done.set()

    def state(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "rules": list(self.decision.rules), "change": self.decision.change,
                "reasons": list(self.decision.reasons)[:3], "running": not self.done.is_set()}


def _describe(exc: BaseException) -> str:
    """A one-line account of an error for /health and events (the platform's message, else type and text)."""
    if isinstance(exc, LearningMachineError):
        return exc.message
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def serve_health(service: LoopService, host: str, port: int) -> ThreadingHTTPServer:
    """A tiny HTTP server in a background thread: ``/health`` (JSON, for `lm status` and a Kubernetes probe)
    and ``/metrics`` (Prometheus text: :class:`learning_machine.loop.metrics.MonitorMetrics`)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in ("/health", ""):
                body, content_type = json.dumps(service.health()).encode(), "application/json"
            elif path == "/metrics":
                service.metrics.health(service.health())
                body, content_type = generate_latest(service.metrics.registry), CONTENT_TYPE_LATEST
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="monitor-health", daemon=True).start()
    return server
