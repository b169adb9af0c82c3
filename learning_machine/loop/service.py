"""The learning loop as a service: read new predictions from the gateway, let the monitor assess each
window (drift through the model server's detector, data quality, realised performance), store the
results through the gateway and in an MLflow monitoring run, and, when the policy fires, retrain through
the `retraining` pipeline and record every event (fired, started, finished or failed, promoted or
refused). It talks to the other blocks through their APIs only."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from learning_machine.clients.gateway import LearningMachineClient
from learning_machine.data.spec import DatasetSpec
from learning_machine.errors import LearningMachineError
from learning_machine.lifecycle.promotion import champion_event
from learning_machine.loop.monitor import Monitor, MonitorConfig
from learning_machine.loop.policy import Decision, RetrainPolicy
from learning_machine.registry.names import CHAMPION
from learning_machine.registry.tracker import Tracker, tracker_for
from learning_machine.settings import Settings

Progress = Callable[[str], None]
MONITOR_RUN = "monitor"


class GatewaySink:
    """Monitoring results and loop events, stored through the gateway's API."""

    def __init__(self, client: LearningMachineClient) -> None:
        self.client = client

    def results(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.client.post_results([_jsonable_row(r) for r in rows])

    def event(self, kind: str, detail: Mapping[str, Any], model_version: str | None = None) -> None:
        self.client.post_event(kind, json.loads(json.dumps(detail, default=str)), model_version)


def _jsonable_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(dict(row), default=str))
    value = out.get("value")
    if isinstance(value, float) and value != value:  # NaN has no JSON form
        out["value"] = None
    return out


def change_point(decision: Decision) -> str | None:
    """When the change began, for a decision fired by the sequential test (None for the other rules: they
    retrain on the most recent outcomes, as before)."""
    if "sequential" not in decision.rules:
        return None
    alarms = decision.evidence.get("sequential_alarms") or []
    found = [a.get("since") for a in alarms if a.get("since")]
    return min(found) if found else None


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
    _deferred: int | None = None

    def __call__(self, decision: Decision) -> Mapping[str, Any]:
        from learning_machine.runners.base import get_runner

        model = self.settings.model_name
        since = change_point(decision)
        data = self.export_recent(since)
        if data is None and since is not None:
            # Fast detection is no use if the new model learns from rows before the change: wait for
            # enough outcomes of predictions made since the change point (and say so once).
            detail = {"error": f"waiting for {self.settings.loop_min_retrain_rows} outcomes of predictions made "
                               f"since the change at {since}", "since": since, "reasons": list(decision.reasons)}
            if self._deferred != id(decision):
                self._deferred = id(decision)
                self.sink.event("retrain-deferred", detail)
            return {"state": "DEFERRED", **detail}
        before = self.tracker.alias_version(model, CHAMPION)
        self.sink.event("retrain-started", {"reasons": list(decision.reasons), "rules": list(decision.rules),
                                            **({"since": since} if since else {})},
                        before.version if before else None)
        if data is None:
            detail = {"error": f"fewer than {self.settings.loop_min_retrain_rows} labelled records to retrain on"}
            self.sink.event("retrain-failed", detail, before.version if before else None)
            return {"state": "SKIPPED", **detail}
        runner = self.runner or get_runner(self.settings)
        params = {"source": str(data), "spec_path": str(self._spec_path()), "model_name": model,
                  "tracking_uri": self.settings.tracking_uri, "deployer": self.settings.deployer,
                  "gate_margin": self.settings.loop_gate_margin, "reference_rows": self.settings.loop_reference_rows,
                  "reference_seed": self.settings.seed}
        if self.settings.loop_reference_rows == 0 or self.spec.name != "synthetic-cohort":
            params["reference_source"] = ""  # only the generator can regenerate the original training rows
        try:
            run = runner.run("retraining", params, progress=self.progress)
        except LearningMachineError as exc:
            self.sink.event("retrain-failed", {"error": exc.message}, before.version if before else None)
            return {"state": "FAILED", "error": exc.message}
        summary = {"state": run.state, "run_key": run.run_key, "mlflow_url": run.mlflow_url,
                   "seconds": round(run.seconds, 1), "data": str(data)}
        self.runs.append(summary)
        if not run.succeeded:
            self.sink.event("retrain-failed", {**summary, "error": run.error, "log": run.log_path},
                            before.version if before else None)
            return summary
        after = self._champion_after_run()
        self.sink.event("retrain-finished", summary, after.version if after else None)
        if after is not None and (before is None or after.version != before.version):
            self.sink.event("promoted", champion_event(before, after, metrics=after.metrics, by="learning loop",
                                                       reason="retraining passed the gate"), after.version)
            summary["promoted"] = after.version
        else:
            challenger = self.tracker.alias_version(model, "challenger")
            self.sink.event("refused", {"champion": before.version if before else None,
                                        "challenger": challenger.version if challenger else None,
                                        "challenger_metrics": challenger.metrics if challenger else {}},
                            before.version if before else None)
            summary["refused"] = challenger.version if challenger else None
            if before is not None:
                summary["champion"] = before.version
        return summary

    def _champion_after_run(self) -> Any:
        return self.tracker.alias_version(self.settings.model_name, CHAMPION)

    def _spec_path(self) -> Path:
        if self.settings.dataset_spec is not None:
            return self.settings.dataset_spec
        return builtin_spec_path(self.spec.name)

    def export_recent(self, since: str | None = None) -> Path | None:
        """The most recent labelled records (predicted at or after ``since``, when given) as a CSV in the
        dataset's columns; None when there are too few."""
        items = self.client.labelled(limit=self.settings.loop_retrain_rows)
        if since is not None:
            start = pd.Timestamp(since)
            items = [i for i in items if pd.Timestamp(i["created_at"]) >= start]
        if len(items) < self.settings.loop_min_retrain_rows:
            return None
        rid, target = self.spec.record_id.name, self.spec.target.name
        frame = pd.DataFrame([{rid: i["record_id"], **i["features"], target: i["outcome"]} for i in items])
        frame = frame.drop_duplicates(subset=[rid], keep="first")[self.spec.columns]
        folder = self.settings.home / "loop"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"retrain-{time.strftime('%Y%m%d-%H%M%S')}.csv"
        frame.to_csv(path, index=False)
        return path.resolve()


class LoopService:
    """One monitor over the gateway's prediction feed; :meth:`step` does one pass, :meth:`run` loops."""

    def __init__(self, settings: Settings, client: LearningMachineClient, *, model_server: Any = None,
                 tracker: Tracker | None = None, runner: Any = None, progress: Progress | None = None) -> None:
        from learning_machine.clients.v2 import ModelServerClient
        from learning_machine.data.sources import spec_for

        self.settings = settings
        self.client = client
        self.model_server = model_server or ModelServerClient.from_settings(
            settings, timeout_s=settings.request_timeout_s * 3)
        self.tracker = tracker or tracker_for(settings)
        self.spec = spec_for(settings.dataset, settings.dataset_spec)
        self.sink = GatewaySink(client)
        self.progress = progress
        self.state_path = settings.home / "loop" / "state.json"
        self.cursor, self.monitor_run_id, self.last_request_id = self._load_state()
        self.trigger = RetrainViaPipeline(settings, client, self.sink, self.tracker, self.spec, runner, progress)
        self.monitor = Monitor(
            self.spec, MonitorConfig(window_rows=settings.monitor_window_rows,
                                     performance_rows=settings.monitor_performance_rows),
            RetrainPolicy(drift_windows=settings.policy_drift_windows, auc_floor=settings.policy_auc_floor,
                          min_outcomes=settings.policy_min_outcomes, schedule_s=settings.policy_schedule_s,
                          cooldown_s=settings.policy_cooldown_s),
            drift=lambda records: self.model_server.drift(settings.model_name, self.spec, list(records)),
            sink=self.sink, trigger=self.trigger, metrics_logger=self._log_metrics, labelled=self._labelled,
            sequential=self._sequential_detector if settings.monitor_sequential else None, progress=progress)
        self.monitor.trigger = self._retrain
        self._detectors: dict[str, Any] = {}
        self._outcomes_seen: deque[tuple[str, str]] = deque(maxlen=20_000)
        self._outcomes_seen_set: set[tuple[str, str]] = set()
        self.steps = 0
        self.last_error: str | None = None
        self.last_step_at: float | None = None

    # -- state that survives a restart: where the feed was read up to, and the MLflow run -------------
    def _load_state(self) -> tuple[int, str | None, int]:
        try:
            state = json.loads(self.state_path.read_text())
            return int(state.get("cursor", 0)), state.get("monitor_run_id"), int(state.get("last_request_id", 0))
        except (FileNotFoundError, ValueError):
            return 0, None, 0

    def _save_state(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps({"cursor": self.cursor, "monitor_run_id": self.monitor_run_id,
                                               "last_request_id": self.last_request_id}))

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.monitor_run_id is None:
            self.monitor_run_id = self.tracker.start_run(self.settings.monitor_experiment, MONITOR_RUN,
                                                         tags={"lm.purpose": "monitoring"})
        self.tracker.log_metrics(self.monitor_run_id, metrics, step=step)

    def _labelled(self) -> pd.DataFrame:
        """Realised performance of the model that serves now: its recent predictions with outcomes."""
        champion = self.tracker.alias_version(self.settings.model_name, CHAMPION)
        items = self.client.labelled(limit=self.settings.monitor_performance_rows,
                                     model_version=champion.version if champion else None)
        return pd.DataFrame([{**i["features"], "probability": i["probability"], "outcome": i["outcome"]}
                             for i in items])

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
        """Retrain; when the challenger is refused, the champion stays and the changed population is its
        new normal: the sequential test is refitted on the rows it was retrained on, or it would alarm on
        the same change again and again."""
        outcome = self.trigger(decision)
        champion, data = outcome.get("champion"), outcome.get("data")
        if "refused" in outcome and champion and data and self.settings.monitor_sequential:
            from learning_machine.model.sequential import fit_sequential

            frame = pd.read_csv(data)
            if len(frame) >= 50:
                self._detectors[str(champion)] = fit_sequential(
                    self.spec, frame[self.spec.feature_names],
                    false_alarms_per_10k=self.settings.monitor_false_alarms_per_10k)
                self.sink.event("monitor-rebaselined", {"rows": len(frame), "reason": "challenger refused: the "
                                                        "champion stays and the recent population is its new normal"},
                                str(champion))
        return outcome

    def new_outcomes(self) -> pd.DataFrame:
        """Outcomes that arrived since the last step (oldest first), for the sequential test's outcome stream."""
        items = self.client.labelled(limit=5000)
        fresh = []
        for item in reversed(items):  # the feed is newest first
            key = (str(item["record_id"]), str(item["model_version"]))
            if key in self._outcomes_seen_set:
                continue
            if len(self._outcomes_seen) == self._outcomes_seen.maxlen:
                self._outcomes_seen_set.discard(self._outcomes_seen[0])
            self._outcomes_seen.append(key)
            self._outcomes_seen_set.add(key)
            fresh.append({"outcome": item["outcome"], "probability": item["probability"],
                          "model_version": item["model_version"], "created_at": item["created_at"]})
        return pd.DataFrame(fresh, columns=["outcome", "probability", "model_version", "created_at"])

    def requested(self) -> Decision | None:
        """A retraining someone asked for (`POST /v1/retrain`, the dashboard's button): fired once per request,
        without waiting for the policy, and recorded like any other."""
        items = self.client.page("/v1/events", kind="retrain-requested", limit=50)["items"]
        new = sorted((e for e in items if int(e["id"]) > self.last_request_id), key=lambda e: int(e["id"]))
        if not new:
            return None
        self.last_request_id = int(new[-1]["id"])
        self._save_state()
        detail = new[-1].get("detail") or {}
        decision = Decision(True, (f"requested by {detail.get('by') or 'an admin'}: {detail.get('reason', '')}",),
                            ("requested",))
        self.sink.event("retrain-fired", decision.as_dict())
        self.monitor.last_retrain_at = time.time()
        if self.monitor.trigger is not None:
            self.monitor.trigger(decision)
        return decision

    def step(self) -> Decision | None:
        """Act on a requested retraining, read the feed once, assess every full window, and apply the policy
        after new windows."""
        requested = self.requested()
        if requested is not None:
            return requested
        feed = self.client.feed(after_id=self.cursor, limit=5000)
        rows = [{self.spec.record_id.name: i["record_id"], **i["features"], "probability": i["probability"],
                 "model_version": i["model_version"], "created_at": i["created_at"]} for i in feed["items"]]
        windows = self.monitor.add(rows)
        if self.monitor.sequential is not None:
            self.monitor.add_outcomes(self.new_outcomes())
        self.cursor = int(feed["next_after_id"])
        self._save_state()
        self.steps += 1
        self.last_step_at = time.time()
        return self.monitor.decide() if windows or self.monitor.alarms or self.monitor.waiting else None

    def run(self, interval_s: float, stop: threading.Event) -> None:
        """Step every ``interval_s`` until ``stop`` is set; a failing step is reported and retried."""
        while not stop.is_set():
            try:
                self.step()
                self.last_error = None
            except LearningMachineError as exc:
                self.last_error = exc.message
                if self.progress:
                    self.progress(f"monitor step failed: {exc.message} (retrying in {interval_s:.0f} s)")
            stop.wait(interval_s)

    def health(self) -> dict[str, Any]:
        return {"status": "ok" if self.last_error is None else "degraded", "steps": self.steps,
                "cursor": self.cursor, "windows": self.monitor.next_window_id - 1,
                "last_step_at": self.last_step_at, "last_error": self.last_error,
                "pending_rows": len(self.monitor.pending)}


def serve_health(service: LoopService, host: str, port: int) -> ThreadingHTTPServer:
    """A tiny /health endpoint (for `lm status` and a Kubernetes probe), in a background thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.rstrip("/") not in ("/health", ""):
                self.send_error(404)
                return
            body = json.dumps(service.health()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="monitor-health", daemon=True).start()
    return server
