"""The monitor's Prometheus metrics (``GET /metrics`` beside ``/health``), in a registry of its own.

Every value is one the monitor already computed and stored: the monitoring rows and events of a step, as
they were saved through the gateway (read here after the save succeeded, so a step that is rolled back and
retried is counted once), the policy's decision, the sequential test's own statistics, and how a retraining
ended. Nothing is recomputed here. Labels stay low-cardinality: features, streams and subgroups come from the
dataset spec, event kinds and policy rules from the code; no record, window or model version is a label."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from learning_machine.loop.policy import change_for

OVERALL = "all"
"""The ``feature`` / ``subgroup`` label of a value over every row (the monitoring rows' feature None)."""
RULES = ("drift", "performance", "estimated", "sequential", "calibration", "schedule", "requested")
"""The policy's rules (:mod:`learning_machine.loop.policy`) and a retraining someone asked for."""
REALISED, ESTIMATED = "realised", "estimated"
# Monitoring row metric -> (gauge attribute, source) for performance rows.
_PERFORMANCE = {
    "auc": ("auc", REALISED), "ece": ("calibration_error", REALISED), "brier": ("brier", REALISED),
    "prevalence": ("prevalence", REALISED),
    "estimated_auc": ("auc", ESTIMATED), "estimated_ece": ("calibration_error", ESTIMATED),
    "estimated_brier": ("brier", ESTIMATED), "estimated_prevalence": ("prevalence", ESTIMATED),
}


class MonitorMetrics:
    """The gauges, counters and histogram of one monitor, and how its results and events set them."""

    def __init__(self, *, auc_floor: float | None = None) -> None:
        r = self.registry = CollectorRegistry()
        self.drift_p_value = Gauge("lm_monitor_drift_p_value", "p-value of the windowed drift test per feature "
                                   "(latest window); drift when below lm_monitor_drift_threshold", ["feature"], registry=r)
        self.drift_statistic = Gauge("lm_monitor_drift_statistic", "The drift detector's distance per feature "
                                     "(latest window; K-S or chi-squared statistic)", ["feature"], registry=r)
        self.drift_threshold = Gauge("lm_monitor_drift_threshold", "The p-value under which a feature drifts "
                                     "(the detector's threshold, Bonferroni-corrected over features)", registry=r)
        self.drift_alert = Gauge("lm_monitor_drift_alert", "1 when the feature drifted in the latest window",
                                 ["feature"], registry=r)
        self.window_drift = Gauge("lm_monitor_window_drift", "1 when the latest window drifted (any feature)",
                                  registry=r)
        self.cusum_ratio = Gauge("lm_monitor_cusum_ratio", "The sequential test's CUSUM statistic over its threshold "
                                 "per stream (a feature, or `outcomes` for the model's log-loss); alarm above 1",
                                 ["stream"], registry=r)
        self.cusum_alarms = Counter("lm_monitor_cusum_alarms_total", "Alarms of the sequential test by stream group "
                                    "(features, outcomes)", ["stream"], registry=r)
        self.missing_fraction = Gauge("lm_monitor_missing_fraction", "Missing values per feature in the latest "
                                      "window (`all`: every cell)", ["feature"], registry=r)
        self.invalid_fraction = Gauge("lm_monitor_invalid_fraction", "Values that break the dataset spec per feature "
                                      "in the latest window", ["feature"], registry=r)
        labels = ["subgroup", "source"]
        self.auc = Gauge("lm_monitor_auc", "AUC per subgroup: realised on the recent outcomes, or estimated from the "
                         "latest window's scores before outcomes (CBPE)", labels, registry=r)
        self.calibration_error = Gauge("lm_monitor_calibration_error", "Expected calibration error per subgroup "
                                       "(realised; estimated: the calibrated noise floor)", labels, registry=r)
        self.brier = Gauge("lm_monitor_brier_score", "Brier score per subgroup", labels, registry=r)
        self.prevalence = Gauge("lm_monitor_prevalence", "Share of events per subgroup", labels, registry=r)
        self.rows = Gauge("lm_monitor_performance_rows", "Rows behind the latest performance value per subgroup",
                          labels, registry=r)
        self.calibration_slope = Gauge("lm_monitor_calibration_slope", "Realised calibration slope per subgroup on "
                                       "the recent outcomes (1 ideal; below 1 the risks are too extreme)",
                                       ["subgroup"], registry=r)
        self.calibration_intercept = Gauge("lm_monitor_calibration_intercept", "Realised calibration-in-the-large per "
                                           "subgroup on the recent outcomes (logit scale; 0 ideal, above 0 the risks "
                                           "are too low)", ["subgroup"], registry=r)
        self.calibration_se = Gauge("lm_monitor_calibration_standard_error", "Standard error of the realised "
                                    "calibration slope or intercept per subgroup (the calibration rule asks for "
                                    "its 95 % interval beyond the bounds)", ["subgroup", "measure"], registry=r)
        self.estimated_auc_high = Gauge("lm_monitor_estimated_auc_upper", "Upper end of the 95 % interval of the "
                                        "estimated AUC (the estimate rule fires when it is under the floor)",
                                        ["subgroup"], registry=r)
        self.estimate_error = Gauge("lm_monitor_estimate_error", "Realised minus estimated on the same labelled rows "
                                    "(the scores' calibration holds when lm_monitor_estimate_outside is 0)",
                                    ["metric"], registry=r)
        self.estimate_outside = Gauge("lm_monitor_estimate_outside", "1 when the realised value left the estimate's "
                                      "95 % interval", ["metric"], registry=r)
        self.auc_floor = Gauge("lm_monitor_auc_floor", "The policy's AUC floor (LM_POLICY_AUC_FLOOR)", registry=r)
        if auc_floor is not None:
            self.auc_floor.set(auc_floor)
        self.rule = Gauge("lm_monitor_policy_rule", "1 when the rule held at the policy's latest decision (drift: "
                          "drift confirmed; performance: realised AUC below the floor; ...)", ["rule"], registry=r)
        self.retrain_decision = Gauge("lm_monitor_policy_retrain", "1 when the policy's latest decision was to "
                                      "retrain", registry=r)
        self.change = Gauge("lm_monitor_policy_change", "1 for the change the policy's latest firing rules ask for "
                            "(retrain, recalibrate), 0 for the other", ["change"], registry=r)
        self.events = Counter("lm_monitor_events_total", "Loop events the monitor stored, by kind (retrain-fired, "
                              "retrain-failed, promoted, refused, ...)", ["kind"], registry=r)
        self.windows = Counter("lm_monitor_windows_total", "Windows of predictions assessed", registry=r)
        self.retraining_seconds = Histogram("lm_monitor_retraining_seconds", "Wall time of a retraining the monitor "
                                            "ran, by how it ended", ["result"], registry=r,
                                            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 2400, 3600))
        self.retraining_running = Gauge("lm_monitor_retraining_running", "1 while a retraining runs", registry=r)
        self.steps = Gauge("lm_monitor_steps", "Steps since the monitor started", registry=r)
        self.last_step = Gauge("lm_monitor_last_step_timestamp_seconds", "When the last step succeeded (Unix time)",
                               registry=r)
        self.failures = Gauge("lm_monitor_step_failures", "Steps that failed in a row (0: healthy)", registry=r)
        self.pending_rows = Gauge("lm_monitor_pending_rows", "Predictions read that wait for a full window", registry=r)
        self.shadow = Gauge("lm_monitor_shadow_active", "1 while a challenger scores live traffic in the shadow",
                            registry=r)
        for rule in RULES:
            self.rule.labels(rule).set(0)
        # Series the alert rules read exist from the start at 0, so that the first failure is an increase.
        for kind in ("retrain-fired", "retrain-failed", "promoted", "refused"):
            self.events.labels(kind)
        for result in ("succeeded", "failed"):
            self.retraining_seconds.labels(result)

    # -- what a saved step produced -------------------------------------------------------------------
    def stored(self, results: Iterable[Mapping[str, Any]] = (), events: Iterable[Mapping[str, Any]] = ()) -> None:
        """Monitoring rows and events that were stored (the rows of ``POST /v1/monitoring`` / the state save)."""
        windows: set[Any] = set()
        for row in results:
            self._result(row)
            window = (row.get("details") or {}).get("window_id")
            if window is not None:
                windows.add(window)
        if windows:
            self.windows.inc(len(windows))
        for event in events:
            self.events.labels(str(event["kind"])).inc()

    def _result(self, row: Mapping[str, Any]) -> None:
        kind, metric, value = row.get("kind"), row.get("metric"), row.get("value")
        feature = row.get("feature") or OVERALL
        details = row.get("details") or {}
        if value is None:
            return
        value = float(value)
        if kind == "drift" and metric == "p_value":
            self.drift_p_value.labels(feature).set(value)
            self.drift_alert.labels(feature).set(float(bool(row.get("alert"))))
            if details.get("distance") is not None:
                self.drift_statistic.labels(feature).set(float(details["distance"]))
            if row.get("threshold") is not None:
                self.drift_threshold.set(float(row["threshold"]))
        elif kind == "drift" and metric == "is_drift":
            self.window_drift.set(value)
        elif kind == "drift" and metric == "cusum":
            self.cusum_alarms.labels(feature).inc()
        elif kind == "quality" and metric == "missing_fraction":
            self.missing_fraction.labels(feature).set(value)
        elif kind == "quality" and metric == "invalid_fraction":
            self.invalid_fraction.labels(feature).set(value)
        elif kind == "performance" and metric in _PERFORMANCE:
            name, source = _PERFORMANCE[str(metric)]
            getattr(self, name).labels(feature, source).set(value)
            if details.get("n") is not None:
                self.rows.labels(feature, source).set(float(details["n"]))
            if metric == "estimated_auc" and details.get("high") is not None:
                self.estimated_auc_high.labels(feature).set(float(details["high"]))
        elif kind == "performance" and metric in ("calibration_slope", "calibration_intercept"):
            measure = str(metric).removeprefix("calibration_")
            getattr(self, str(metric)).labels(feature).set(value)
            if details.get("se") is not None:
                self.calibration_se.labels(feature, measure).set(float(details["se"]))
        elif kind == "performance" and str(metric).startswith("estimate_error_"):
            name = str(metric).removeprefix("estimate_error_")
            self.estimate_error.labels(name).set(value)
            self.estimate_outside.labels(name).set(float(bool(row.get("alert"))))

    def decision(self, rules: Iterable[str], retrain: bool) -> None:
        """The policy's latest decision: which rules held, and whether it said retrain."""
        held = set(rules)
        for rule in RULES:
            self.rule.labels(rule).set(float(rule in held))
        self.retrain_decision.set(float(retrain))
        if held:
            asked = change_for(sorted(held))
            for change in ("retrain", "recalibrate"):
                self.change.labels(change).set(float(change == asked))

    def sequential(self, statistics: Mapping[str, float]) -> None:
        """The serving version's sequential test, stream by stream (:meth:`SequentialDetector.statistics`)."""
        for stream, ratio in statistics.items():
            self.cusum_ratio.labels(stream).set(float(ratio))

    def retraining(self, result: str, seconds: float) -> None:
        """A retraining that ended (``succeeded``, ``failed``, ``skipped``, ``error``...) after ``seconds``."""
        self.retraining_seconds.labels(result).observe(max(seconds, 0.0))

    def health(self, health: Mapping[str, Any]) -> None:
        """The monitor's own state, from :meth:`LoopService.health` (read when Prometheus scrapes)."""
        self.steps.set(float(health.get("steps") or 0))
        if health.get("last_step_at"):
            self.last_step.set(float(health["last_step_at"]))
        self.failures.set(float(health.get("failures_in_a_row") or 0))
        self.pending_rows.set(float(health.get("pending_rows") or 0))
        retraining = health.get("retraining")
        self.retraining_running.set(float(bool(retraining and retraining.get("running"))))
        self.shadow.set(float(health.get("shadow") is not None))
