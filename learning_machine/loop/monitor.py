"""The monitor: over windows of recent predictions it measures drift (through the drift detector the
model server runs), data quality (against the dataset spec) and realised performance once outcomes have
arrived (AUC, calibration, per subgroup), stores each result, and asks the policy whether to retrain.

The computations are plain functions of frames; :class:`Monitor` wires them to its collaborators
(where rows come from, the drift detector, where results go, the retraining trigger), each a small
protocol, so the embedded loop and the tests plug in the real gateway, model server and runner."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd

from learning_machine.data.spec import DatasetSpec
from learning_machine.loop.policy import Decision, RetrainPolicy, WindowSummary, decide
from learning_machine.model.estimation import estimate_group, estimated_performance, reconcile
from learning_machine.model.evaluation import evaluate, subgroup_masks
from learning_machine.model.recalibration import calibration_fit
from learning_machine.model.sequential import Alarm, SequentialDetector, loss_change_point

Progress = Callable[[str], None]


@dataclass(frozen=True)
class MonitorConfig:
    """Window sizes and alert thresholds (settings ``LM_MONITOR_*``)."""

    window_rows: int = 200
    """Predictions per window; drift and data quality are measured on each full window."""
    performance_rows: int = 400
    """Realised performance is measured on the most recent outcomes, up to this many."""
    max_missing_fraction: float = 0.10
    """A window with more missing feature values than this raises a data-quality alert."""
    max_invalid_fraction: float = 0.01
    history: int = 50
    """Windows kept in memory for the policy (state stays bounded however long the monitor runs)."""

    def __post_init__(self) -> None:
        if self.window_rows < 20:
            raise ValueError("window_rows must be at least 20: drift tests on fewer rows are noise")


@dataclass
class WindowResult:
    """The results of one window: rows for the monitoring table and the summary the policy reads."""

    summary: WindowSummary
    results: list[dict[str, Any]] = field(default_factory=list)


def quality_results(spec: DatasetSpec, window: pd.DataFrame, config: MonitorConfig) -> tuple[list[dict[str, Any]],
                                                                                             float, float]:
    """Missing and invalid fractions per feature and overall for one window."""
    report = spec.quality(window)
    rows: list[dict[str, Any]] = []
    n = max(report.n_rows, 1)
    for name in spec.feature_names:
        missing = report.missing.get(name, 0) / n
        rows.append({"kind": "quality", "metric": "missing_fraction", "feature": name, "value": missing,
                     "threshold": config.max_missing_fraction, "alert": missing > config.max_missing_fraction})
        invalid = (report.out_of_range.get(name, 0) + report.wrong_type.get(name, 0)
                   + sum(report.unseen_categories.get(name, {}).values())) / n
        if invalid:
            rows.append({"kind": "quality", "metric": "invalid_fraction", "feature": name, "value": invalid,
                         "threshold": config.max_invalid_fraction, "alert": invalid > config.max_invalid_fraction,
                         "details": {"unseen": report.unseen_categories.get(name, {})}})
    rows.append({"kind": "quality", "metric": "missing_fraction", "feature": None, "value": report.missing_fraction,
                 "threshold": config.max_missing_fraction,
                 "alert": report.missing_fraction > config.max_missing_fraction})
    return rows, report.missing_fraction, report.invalid_fraction


def drift_results(drift: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The drift detector's answer (alibi-detect's ``data`` keys) as monitoring rows: one per feature with
    its p-value, and one for the window (drift when any feature's p-value is under the corrected threshold)."""
    names = list(drift.get("feature_names") or [])
    p_vals = np.atleast_1d(np.asarray(drift.get("p_val", []), dtype=float))
    distances = np.atleast_1d(np.asarray(drift.get("distance", [np.nan] * len(p_vals)), dtype=float))
    threshold = float(drift.get("threshold", 0.05))
    rows = [{"kind": "drift", "metric": "p_value", "feature": name, "value": float(p), "threshold": threshold,
             "alert": bool(p < threshold), "details": {"distance": float(d)}}
            for name, p, d in zip(names, p_vals, distances, strict=False)]
    rows.append({"kind": "drift", "metric": "is_drift", "feature": None, "value": float(bool(drift.get("is_drift"))),
                 "threshold": threshold, "alert": bool(drift.get("is_drift")),
                 "details": {"detector": drift.get("detector_type"),
                             "drifted_features": list(drift.get("drifted_features") or [])}})
    return rows


def performance_results(spec: DatasetSpec, labelled: pd.DataFrame) -> tuple[list[dict[str, Any]], float | None]:
    """Realised AUC, Brier score, calibration error, calibration slope and calibration-in-the-large (with their
    standard errors and 95 % intervals in ``details``) on predictions whose outcome has arrived, overall and per
    subgroup (prevalence overall). ``labelled`` has the features, ``probability`` and ``outcome``."""
    if labelled.empty or labelled["outcome"].nunique() < 2:
        return [], None
    y = labelled["outcome"].astype(int).to_numpy()
    proba = labelled["probability"].to_numpy(dtype=float)
    groups = spec.subgroup_labels(labelled)
    evaluation = evaluate(y, proba, groups)
    calibration = calibration_results(y, proba, None)
    for group, labels in groups.items():
        for label, mask in subgroup_masks(labels):
            calibration += calibration_results(y[mask], proba[mask], f"{group}={label}")
    rows = [{"kind": "performance", "metric": name, "feature": None, "value": value,
             "details": {"n": len(labelled)}}
            for name, value in evaluation.metrics.items() if name in ("auc", "brier", "ece", "prevalence")]
    for group, by_label in evaluation.subgroups.items():
        for label, metrics in by_label.items():
            # Calibration per subgroup too: a model can rank a subgroup well and still misstate its risk.
            for name in ("auc", "ece", "brier"):
                if name in metrics:
                    rows.append({"kind": "performance", "metric": name, "feature": f"{group}={label}",
                                 "value": metrics[name], "details": {"n": int(metrics["n"])}})
    return rows + calibration, evaluation.metrics.get("auc")


def calibration_results(y: Any, proba: Any, feature: str | None) -> list[dict[str, Any]]:
    """``calibration_intercept`` (calibration-in-the-large) and ``calibration_slope`` of one set of labelled
    rows, each with its standard error and 95 % interval (:func:`learning_machine.model.recalibration.
    calibration_fit`); none without both outcomes."""
    fit = calibration_fit(y, proba)
    if fit is None:
        return []
    rows = []
    for name, value, se in (("intercept", fit.intercept, fit.intercept_se), ("slope", fit.slope, fit.slope_se)):
        low, high = fit.interval(name)
        rows.append({"kind": "performance", "metric": f"calibration_{name}", "feature": feature, "value": value,
                     "details": {"n": fit.rows, "se": _finite(se), "low": _finite(low), "high": _finite(high)}})
    return rows


def estimation_results(spec: DatasetSpec, window: pd.DataFrame) -> tuple[list[dict[str, Any]], float | None]:
    """Performance estimated from the window's scores before its outcomes arrive (CBPE,
    :mod:`learning_machine.model.estimation`): ``estimated_auc``, ``estimated_brier``, ``estimated_prevalence``
    and ``estimated_ece`` (the calibrated noise floor) overall and per subgroup, each with the 95 % interval of
    the realised value in ``details``; and the overall estimated AUC."""
    if "probability" not in window:
        return [], None
    proba = pd.to_numeric(window["probability"], errors="coerce").to_numpy(dtype=float)
    estimate = estimated_performance(proba, spec.subgroup_labels(window))
    groups = [(None, estimate.overall)] + [(f"{group}={label}", e) for group, by_label in estimate.subgroups.items()
                                           for label, e in by_label.items()]
    rows = [{"kind": "performance", "metric": f"estimated_{name}", "feature": feature, "value": interval.value,
             "details": {"n": e.n, "method": "cbpe", "low": _finite(interval.low), "high": _finite(interval.high),
                         "se": _finite(interval.se)}}
            for feature, e in groups for name, interval in e.metrics.items() if np.isfinite(interval.value)]
    auc = estimate.overall.metrics.get("auc")
    return rows, (auc.value if auc is not None else None)


def reconciliation_results(labelled: pd.DataFrame, performance: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Realised performance (the overall rows of :func:`performance_results`) against the estimate from the
    same labelled rows' scores: ``estimate_error_<metric>`` = realised minus estimated, an alert when the
    realised value is outside the estimate's interval (the scores are no longer calibrated there: concept
    drift, a population the model extrapolates to, or a 1-in-20 chance)."""
    realised = {r["metric"]: float(r["value"]) for r in performance if r["feature"] is None}
    if not realised:
        return []
    estimate = estimate_group(pd.to_numeric(labelled["probability"], errors="coerce").to_numpy(dtype=float))
    return [{"kind": "performance", "metric": f"estimate_error_{name}", "feature": None, "value": r["difference"],
             "alert": not r["within"], "details": {"n": len(labelled), "method": "cbpe",
                                                   **{k: _finite(v) if isinstance(v, float) else v for k, v in r.items()}}}
            for name, r in reconcile(estimate, realised).items()]


class DriftFn(Protocol):
    def __call__(self, records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]: ...


class ResultSink(Protocol):
    """Where results and events go (the gateway's API, which stores them in the database)."""

    def results(self, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def event(self, kind: str, detail: Mapping[str, Any], model_version: str | None = None) -> None: ...


class RetrainTrigger(Protocol):
    """Starts a retraining (the `retraining` pipeline through the pipeline runner) and says how it ended."""

    def __call__(self, decision: Decision) -> Mapping[str, Any]: ...


@dataclass
class Monitor:
    """Turns a stream of predictions into windows, results and retraining decisions."""

    spec: DatasetSpec
    config: MonitorConfig
    policy: RetrainPolicy
    drift: DriftFn
    sink: ResultSink
    trigger: RetrainTrigger | None = None
    metrics_logger: Callable[[dict[str, float], int], None] | None = None
    labelled: Callable[[], pd.DataFrame] | None = None
    """Recent predictions with their outcomes (features, ``probability``, ``outcome``) for realised performance."""
    sequential: Callable[[str], SequentialDetector | None] | None = None
    """The sequential detector of a model version (fitted on its training reference), or None to skip it."""
    clock: Callable[[], float] = time.time
    progress: Progress | None = None
    windows: deque[WindowSummary] = field(init=False)
    alarms: list[Alarm] = field(default_factory=list)
    """Sequential alarms not yet acted on (cleared when a retraining fires or another version serves)."""
    serving_version: str | None = None
    waiting: Decision | None = None
    """A fired decision whose retraining waits for enough outcomes after the change (the trigger said
    ``DEFERRED``); tried again at every step."""
    _times: deque[Any] = field(default_factory=lambda: deque(maxlen=20_000))
    _outcome_times: deque[Any] = field(default_factory=lambda: deque(maxlen=20_000))
    pending: list[dict[str, Any]] = field(default_factory=list)
    last_retrain_at: float | None = None
    next_window_id: int = 1
    expected_auc: float | None = None
    """The AUC the serving version was validated with (its registered held-out AUC), set by the loop."""
    accepted_drift: set[str] = field(default_factory=set)
    """Features whose drift is the new normal (a challenger retrained on it was refused); cleared when another
    version serves."""

    def __post_init__(self) -> None:
        self.windows = deque(maxlen=self.config.history)

    def add(self, rows: Sequence[Mapping[str, Any]]) -> list[WindowResult]:
        """Add predicted rows (features, ``record_id``, ``probability``, ``model_version``); assess every full
        window. Partial windows wait for more rows."""
        self.pending.extend(dict(r) for r in rows)
        self._sequential(rows)
        done = []
        while len(self.pending) >= self.config.window_rows:
            window, self.pending = self.pending[:self.config.window_rows], self.pending[self.config.window_rows:]
            done.append(self.assess(window))
        return done

    def _detector(self, version: str | None) -> SequentialDetector | None:
        if self.sequential is None or version is None:
            return None
        if version != self.serving_version:  # a new version serves: its own reference, fresh evidence
            self.serving_version = version
            self.alarms.clear()
            self._times.clear()
            self._outcome_times.clear()
        return self.sequential(version)

    def _sequential(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Feed predictions to the sequential test of the version that made them, in arrival order."""
        if self.sequential is None or not rows:
            return
        frame = pd.DataFrame([dict(r) for r in rows])
        versions = frame["model_version"].astype(str) if "model_version" in frame else pd.Series([None] * len(frame))
        start = 0
        for end in [*np.flatnonzero(versions.to_numpy()[1:] != versions.to_numpy()[:-1]) + 1, len(frame)]:
            detector = self._detector(versions.iloc[start])
            if detector is not None:
                part = frame.iloc[start:end]
                self._times.extend(part["created_at"] if "created_at" in part else [None] * len(part))
                self._record(detector.update(part), versions.iloc[start], self._times, detector.rows_seen)
            start = end

    def add_outcomes(self, labelled: pd.DataFrame) -> None:
        """Feed newly arrived outcomes (``outcome``, ``probability``, ``model_version``) to the outcome stream."""
        if self.sequential is None or labelled.empty:
            return
        for version, group in labelled.groupby(labelled["model_version"].astype(str), sort=False):
            if self.serving_version is not None and str(version) != self.serving_version:
                continue  # late outcomes of a version that no longer serves: nothing to act on
            detector = self._detector(str(version))
            if detector is not None:
                self._outcome_times.extend(group["created_at"] if "created_at" in group else [None] * len(group))
                self._record(detector.update_outcomes(group["outcome"].to_numpy(dtype=float),
                                                      group["probability"].to_numpy(dtype=float)), str(version),
                             self._outcome_times, detector.outcomes_seen)

    def _record(self, alarms: list[Alarm], version: str | None, times: deque[Any], last_row: int) -> None:
        if not alarms:
            return
        for alarm in alarms:  # the arrival time of the change-point row, if it is still remembered
            back = last_row - alarm.change_row
            if 0 <= back < len(times) and times[len(times) - 1 - back] is not None:
                alarm.since = str(times[len(times) - 1 - back])
        self.alarms.extend(alarms)
        del self.alarms[:-20]  # bounded: the policy needs the first few
        self.sink.results([{"kind": "drift", "metric": "cusum", "feature": a.stream, "value": a.ratio,
                            "threshold": 1.0, "alert": True, "model_version": version,
                            "details": {"row": a.row, "change_row": a.change_row, "since": a.since,
                                        "streams": a.streams[:10]}} for a in alarms])
        if self.progress:
            self.progress(alarms[0].reason())

    def assess(self, window: list[dict[str, Any]], labelled: pd.DataFrame | None = None) -> WindowResult:
        """Drift and data quality of one window, realised performance on ``labelled`` (recent outcomes)."""
        window_id = self.next_window_id
        self.next_window_id += 1
        frame = pd.DataFrame(window)
        versions = frame["model_version"].astype(str).value_counts() if "model_version" in frame else pd.Series()
        model_version = str(versions.index[0]) if len(versions) else None
        rows, missing, invalid = quality_results(self.spec, frame, self.config)
        records = [{k: r.get(k) for k in (self.spec.record_id.name, *self.spec.feature_names)} for r in window]
        drift = self.drift(records)
        rows += drift_results(drift)
        estimated, estimated_auc = estimation_results(self.spec, frame)
        rows += estimated
        estimated_high = next((r["details"]["high"] for r in estimated
                               if r["metric"] == "estimated_auc" and r["feature"] is None), None)
        auc = None
        n_outcomes = 0
        n_events = None
        if labelled is None and self.labelled is not None:
            labelled = self.labelled()
        performance_since = None
        calibration: dict[str, tuple[float, float | None]] = {}
        if labelled is not None and not labelled.empty:
            perf, auc = performance_results(self.spec, labelled)
            rows += perf
            rows += reconciliation_results(labelled, perf)
            n_outcomes = len(labelled)
            n_events = int(pd.to_numeric(labelled["outcome"], errors="coerce").fillna(0).sum())
            performance_since = loss_change_time(labelled)
            calibration = {r["metric"]: (r["value"], r["details"]["se"]) for r in perf
                           if r["feature"] is None and str(r["metric"]).startswith("calibration_")}
        for row in rows:
            row.setdefault("details", {})
            row.update(window_rows=len(window), model_version=model_version)
            row["details"] = {**row["details"], "window_id": window_id}
        summary = WindowSummary(window_id, self.clock(), len(window), drift=bool(drift.get("is_drift")),
                                drift_p_value=_min_p(drift), drifted_features=tuple(drift.get("drifted_features") or ()),
                                missing_fraction=missing, invalid_fraction=invalid, auc=auc, n_outcomes=n_outcomes,
                                n_events=n_events, start_time=_first_time(frame),
                                performance_since=performance_since, estimated_auc=estimated_auc,
                                estimated_auc_high=estimated_high,
                                calibration_intercept=calibration.get("calibration_intercept", (None, None))[0],
                                calibration_intercept_se=calibration.get("calibration_intercept", (None, None))[1],
                                calibration_slope=calibration.get("calibration_slope", (None, None))[0],
                                calibration_slope_se=calibration.get("calibration_slope", (None, None))[1])
        self.windows.append(summary)
        self.sink.results(rows)
        if self.metrics_logger is not None:
            self.metrics_logger(_window_metrics(summary, rows), window_id)
        if self.progress:
            self.progress(f"window {window_id}: drift={'yes' if summary.drift else 'no'}"
                          + (f" ({', '.join(summary.drifted_features)})" if summary.drifted_features else "")
                          + f", missing {missing:.1%}" + (f", realised AUC {auc:.3f} on {n_outcomes}" if auc else ""))
        return WindowResult(summary, rows)

    # -- state: what a failed step rolls back, and what a restart must not lose -----------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything :meth:`add`, :meth:`add_outcomes` and :meth:`decide` change, copied, so a step that fails
        half-way can be undone with :meth:`rollback` (rows are then counted once, when the step is retried)."""
        return {"pending": list(self.pending), "windows": deque(self.windows, maxlen=self.windows.maxlen),
                "alarms": list(self.alarms), "serving_version": self.serving_version, "waiting": self.waiting,
                "_times": deque(self._times, maxlen=self._times.maxlen),
                "_outcome_times": deque(self._outcome_times, maxlen=self._outcome_times.maxlen),
                "last_retrain_at": self.last_retrain_at, "next_window_id": self.next_window_id,
                "accepted_drift": set(self.accepted_drift)}

    def rollback(self, snapshot: Mapping[str, Any]) -> None:
        for name, value in snapshot.items():
            setattr(self, name, value)

    def durable_state(self) -> dict[str, Any]:
        """What must survive a restart, small and JSON-ready: the policy's window summaries, the cooldown,
        the window counter and a retraining that waits (never raw rows: the feed cursor re-reads those)."""
        return {"windows": [asdict(w) for w in self.windows], "last_retrain_at": self.last_retrain_at,
                "next_window_id": self.next_window_id, "serving_version": self.serving_version,
                "waiting": _decision_state(self.waiting), "accepted_drift": sorted(self.accepted_drift)}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`durable_state` (a fresh monitor; the sequential test starts afresh)."""
        self.windows.clear()
        for w in state.get("windows") or []:
            self.windows.append(WindowSummary(**{**w, "drifted_features": tuple(w.get("drifted_features") or ())}))
        self.last_retrain_at = state.get("last_retrain_at")
        self.next_window_id = int(state.get("next_window_id") or 1)
        self.serving_version = state.get("serving_version")
        self.accepted_drift = set(state.get("accepted_drift") or ())
        waiting = state.get("waiting")
        self.waiting = None if not waiting else Decision(
            bool(waiting["retrain"]), tuple(waiting.get("reasons") or ()), tuple(waiting.get("rules") or ()),
            waiting.get("suppressed"), dict(waiting.get("evidence") or {}), str(waiting.get("change") or "retrain"))

    def policy_decision(self, *, alarms: bool = True, cooldown: bool = True) -> Decision:
        """What the policy says now about the windows (and the sequential alarms, unless ``alarms`` is
        False), with the accepted drift and the serving version's validated AUC; records and starts nothing."""
        return decide(list(self.windows), self.policy, now=self.clock(),
                      last_retrain_at=self.last_retrain_at if cooldown else None,
                      alarms=self.alarms if alarms else (), accepted=frozenset(self.accepted_drift),
                      expected_auc=self.expected_auc)

    def decide(self, *, start: bool = True) -> Decision:
        """Ask the policy; a firing decision is recorded, and retraining started when a trigger is set (and
        ``start``: the learning loop starts it itself, after the step that fired it is saved). A
        retraining that waits for outcomes after the change is tried again first (returned again while
        it waits, when not ``start``)."""
        if self.waiting is not None:
            waiting = self.waiting = self._current_change(self.waiting)
            if start and (self.trigger is None or self._start(waiting)):
                self.waiting = None
            return waiting
        decision = self.policy_decision()
        if decision.suppressed:
            self.sink.event("retrain-suppressed", decision.as_dict())
        if not decision.retrain:
            return decision
        self.sink.event("retrain-fired", decision.as_dict())
        self.last_retrain_at = self.clock()
        self.alarms.clear()
        if start and self.trigger is not None and not self._start(decision):
            self.waiting = decision
        return decision

    def _current_change(self, waiting: Decision) -> Decision:
        """A decision that waits for outcomes asks for the change the evidence supports now: a sequential alarm
        fires within tens of rows, before the outcomes that show whether only the calibration moved (then it
        becomes a ``recalibrate``) or the model no longer ranks (then a ``retrain``)."""
        now = self.policy_decision(alarms=False, cooldown=False)
        if "calibration" in now.rules and now.change != waiting.change:
            return replace(waiting, change=now.change, rules=tuple(dict.fromkeys((*waiting.rules, "calibration"))),
                           reasons=(*waiting.reasons, *(r for r in now.reasons if r.startswith("calibration"))),
                           evidence={**waiting.evidence, **{k: v for k, v in now.evidence.items()
                                                             if k.startswith("calibration")}})
        if {"performance", "estimated"} & set(now.rules) and waiting.change != "retrain":
            return replace(waiting, change="retrain", rules=tuple(dict.fromkeys((*waiting.rules, *now.rules))),
                           reasons=(*waiting.reasons, *now.reasons))
        return waiting

    def _start(self, decision: Decision) -> bool:
        """Start the retraining; False when it must wait for more outcomes after the change."""
        assert self.trigger is not None
        outcome = self.trigger(decision)
        if self.progress:
            self.progress(f"retraining: {outcome.get('state', 'started')}"
                          + (f" ({outcome['error']})" if outcome.get("error") else ""))
        return outcome.get("state") != "DEFERRED"


def loss_change_time(labelled: pd.DataFrame) -> str | None:
    """When the model's loss most likely rose among labelled predictions (``created_at``, ``outcome``,
    ``probability``), as the prediction time of the first row after the change; when no rise within them
    is found, the oldest of them (the performance rule reads this only when their AUC is below the floor:
    then the change lies before them all). None without times."""
    if "created_at" not in labelled or labelled["created_at"].isna().any():
        return None
    ordered = labelled.assign(_t=pd.to_datetime(labelled["created_at"], utc=True, format="mixed")).sort_values(
        "_t", kind="stable")
    outcome = pd.to_numeric(ordered["outcome"], errors="coerce")
    ok = outcome.notna().to_numpy()
    if not ok.any():
        return None
    index = loss_change_point(outcome.to_numpy(dtype=float)[ok], ordered["probability"].to_numpy(dtype=float)[ok])
    return str(ordered["created_at"].to_numpy()[ok][index or 0])


def _first_time(frame: pd.DataFrame) -> str | None:
    if "created_at" not in frame or frame.empty or pd.isna(frame["created_at"].iloc[0]):
        return None
    return str(frame["created_at"].iloc[0])


def _decision_state(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    return dict(json.loads(json.dumps(decision.as_dict(), default=str)))


def _min_p(drift: Mapping[str, Any]) -> float | None:
    p_vals = np.atleast_1d(np.asarray(drift.get("p_val", []), dtype=float))
    return float(p_vals.min()) if p_vals.size else None


def _finite(value: float) -> float | None:
    """A float JSON can carry (NaN and infinities are not JSON)."""
    return float(value) if np.isfinite(value) else None


def _window_metrics(summary: WindowSummary, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """MLflow metrics of one window (step = window id), so the MLflow UI shows them over time."""
    metrics: dict[str, float] = {"drift.is_drift": float(bool(summary.drift))}
    if summary.drift_p_value is not None:
        metrics["drift.min_p_value"] = summary.drift_p_value
    if summary.missing_fraction is not None:
        metrics["quality.missing_fraction"] = summary.missing_fraction
    if summary.estimated_auc is not None:
        metrics["performance.estimated_auc"] = summary.estimated_auc
    for row in rows:
        if row["kind"] == "performance" and row["metric"] == "estimated_auc" and row["feature"] is None:
            metrics.update({f"performance.estimated_auc.{end}": float(row["details"][end]) for end in ("low", "high")
                            if row["details"][end] is not None})
        if row["kind"] == "drift" and row["metric"] == "p_value" and row["feature"]:
            metrics[f"drift.p_value.{row['feature']}"] = float(row["value"])
        if row["kind"] == "performance" and row["feature"] is None:
            metrics[f"performance.{row['metric']}"] = float(row["value"])
    return metrics
