"""The monitor's windows, results and decisions, with the real drift detector (the function the model
server's drift runtime calls) in process. Results go to an in-memory sink here; the end-to-end loop
stores them through the gateway."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd
import pytest
from testsupport import Sink
from testsupport import placeholder_rows as _rows

from learning_machine.data.sources import load_dataset
from learning_machine.loop.monitor import Monitor, MonitorConfig, performance_results
from learning_machine.loop.policy import RetrainPolicy
from learning_machine.model.drift_detector import detect, fit_detector
from learning_machine.model.training import predict_proba, train_model


@pytest.fixture(scope="module")
def reference():
    return load_dataset("synthetic-cohort", n_rows=2000, seed=21)


@pytest.fixture(scope="module")
def detector(reference):
    return fit_detector(reference.spec, reference.frame)


def _monitor(reference, detector, sink, clock, triggered=None, *, estimated_windows: int = 0) -> Monitor:
    """A monitor on real drift detection. ``estimated_windows`` 0 by default: most tests here feed one placeholder
    score (0.2) to every row, a model that cannot rank at all, which the estimate rule would rightly flag."""
    def drift(records):
        return detect(detector, pd.DataFrame(list(records))[reference.spec.feature_names])

    def trigger(decision):
        triggered.append(decision)
        return {"state": "SUCCEEDED"}

    return Monitor(reference.spec, MonitorConfig(window_rows=200), RetrainPolicy(drift_windows=2, cooldown_s=600,
                                                                            estimated_windows=estimated_windows),
                   drift, sink, trigger if triggered is not None else None, clock=lambda: clock[0])


def test_clean_windows_raise_no_retraining(reference, detector):
    sink, clock, fired = Sink(), [1000.0], []
    monitor = _monitor(reference, detector, sink, clock, fired)
    results = monitor.add(_rows("none", 650, seed=22))
    assert len(results) == 3 and len(monitor.pending) == 50  # full windows only; the rest waits
    assert not monitor.decide().retrain and fired == []
    kinds = {(r["kind"], r["metric"]) for r in sink.rows}
    assert {("drift", "p_value"), ("drift", "is_drift"), ("quality", "missing_fraction")} <= kinds
    assert all(r["window_rows"] == 200 and r["model_version"] == "1" for r in sink.rows)


def test_covariate_shift_is_detected_and_retraining_fires_once_per_cooldown(reference, detector):
    sink, clock, fired = Sink(), [1000.0], []
    monitor = _monitor(reference, detector, sink, clock, fired)
    monitor.add(_rows("none", 200, seed=23))
    assert not monitor.decide().retrain
    results = monitor.add(_rows("covariate-shift", 400, seed=24))
    assert all(r.summary.drift for r in results)
    assert "age" in results[0].summary.drifted_features
    decision = monitor.decide()
    assert decision.retrain and decision.rules == ("drift",)
    assert len(fired) == 1 and sink.events[-1][0] == "retrain-fired"
    clock[0] += 60
    monitor.add(_rows("covariate-shift", 400, seed=25))
    held = monitor.decide()
    assert not held.retrain and held.suppressed.startswith("cooldown")
    assert len(fired) == 1 and sink.events[-1][0] == "retrain-suppressed"


def test_a_missingness_spike_shows_in_data_quality(reference, detector):
    sink, clock = Sink(), [0.0]
    monitor = _monitor(reference, detector, sink, clock)
    monitor.add(_rows("missingness-spike", 200, seed=26))
    alerts = {r["feature"] for r in sink.rows if r["kind"] == "quality" and r["alert"]}
    assert {"hdl_cholesterol", "hba1c", "egfr"} <= alerts and "age" not in alerts


def test_realised_performance_drops_under_concept_drift(reference):
    model = train_model(reference, seed=1).pipeline
    before = load_dataset("synthetic-cohort", n_rows=1500, seed=27).frame
    after = load_dataset("synthetic-cohort", n_rows=1500, seed=27, scenario="concept-drift").frame
    aucs = {}
    for name, frame in (("before", before), ("after", after)):
        labelled = frame.assign(probability=predict_proba(model, reference.spec, frame))
        rows, aucs[name] = performance_results(reference.spec, labelled)
        assert any(r["feature"] == "sex=female" for r in rows)
    assert aucs["after"] < aucs["before"] - 0.08


def test_a_window_says_when_it_began_and_where_the_serving_models_loss_rose(reference, detector):
    model = train_model(reference, seed=1).pipeline
    sink, clock = Sink(), [0.0]
    monitor = _monitor(reference, detector, sink, clock)
    # 600 outcomes of the serving model, in arrival order: the concept changed at the 300th.
    frame = load_dataset("synthetic-cohort", n_rows=600, seed=41, scenario="concept-drift", drift_start=300).frame
    times = pd.date_range("2026-12-06T10:00:00", periods=len(frame), freq="s").strftime("%Y-%m-%dT%H:%M:%S")
    labelled = frame.assign(probability=predict_proba(model, reference.spec, frame), created_at=times)
    window = [{**r, "created_at": times[i]} for i, r in enumerate(_rows("none", 200, seed=29))]
    summary = monitor.assess(window, labelled.sample(frac=1.0, random_state=0)).summary  # any order: sorted by time
    assert summary.start_time == times[0]
    assert summary.performance_since is not None
    assert times[240] <= summary.performance_since <= times[360], summary.performance_since


def test_each_window_stores_estimated_performance_and_reconciles_it_with_the_realised(reference, detector):
    """Before outcomes arrive the window's scores give an estimated AUC (CBPE); once outcomes arrive the
    realised AUC is reconciled with the estimate on the same labelled rows."""
    model = train_model(reference, seed=1).pipeline
    sink, clock, logged = Sink(), [0.0], {}
    monitor = _monitor(reference, detector, sink, clock)
    monitor.metrics_logger = lambda metrics, step: logged.update(metrics)
    frame = load_dataset("synthetic-cohort", n_rows=600, seed=28).frame
    scored = frame.assign(probability=predict_proba(model, reference.spec, frame), model_version="1")
    window = scored.iloc[:200].drop(columns=["outcome"]).astype(object).where(scored.iloc[:200].notna(), None)

    before = monitor.assess(window.to_dict("records"), labelled=pd.DataFrame())  # no outcomes yet
    estimated = {(r["metric"], r["feature"]): r for r in sink.rows if r["metric"].startswith("estimated_")}
    overall = estimated[("estimated_auc", None)]
    assert 0.5 < overall["value"] < 1 and overall["details"]["n"] == 200
    assert overall["details"]["low"] < overall["value"] < overall["details"]["high"]
    assert {("estimated_brier", None), ("estimated_prevalence", None), ("estimated_auc", "sex=female"),
            ("estimated_auc", "age_band=45-59")} <= set(estimated)
    assert all(r["details"]["n"] >= 20 and r["details"]["window_id"] == 1 for r in estimated.values())
    assert before.summary.estimated_auc == overall["value"] and before.summary.auc is None
    assert logged["performance.estimated_auc"] == overall["value"] and "performance.estimated_auc.low" in logged
    assert not any(r["metric"].startswith("estimate_error_") for r in sink.rows)

    labelled = scored.iloc[200:]  # outcomes of earlier patients have arrived
    after = monitor.assess(window.to_dict("records"), labelled=labelled)
    errors = {r["metric"]: r for r in after.results if r["metric"].startswith("estimate_error_")}
    assert set(errors) == {"estimate_error_auc", "estimate_error_brier", "estimate_error_prevalence",
                           "estimate_error_ece"}
    auc = errors["estimate_error_auc"]
    realised = next(r["value"] for r in after.results if r["metric"] == "auc" and r["feature"] is None)
    assert auc["details"]["realised"] == realised and auc["details"]["n"] == 400
    assert auc["value"] == pytest.approx(realised - auc["details"]["estimated"])
    assert auc["alert"] == (not auc["details"]["low"] <= realised <= auc["details"]["high"])
    assert after.summary.auc == realised and after.summary.estimated_auc is not None


def test_saved_state_without_the_estimate_restores(reference, detector):
    """Older saved state has no ``estimated_auc`` in its windows: it still restores, as None."""
    monitor = _monitor(reference, detector, Sink(), [0.0])
    monitor.restore({"windows": [{"window_id": 3, "end_time": 1.0, "n_rows": 200, "drift": False, "auc": 0.71,
                                  "n_outcomes": 300, "n_events": 50, "drifted_features": []}], "next_window_id": 4})
    assert monitor.windows[0].estimated_auc is None and monitor.windows[0].auc == 0.71
    again = _monitor(reference, detector, Sink(), [0.0])
    monitor.windows.append(replace(monitor.windows[0], window_id=4, estimated_auc=0.74))
    again.restore(monitor.durable_state())
    assert [w.estimated_auc for w in again.windows] == [None, 0.74]


def test_a_population_the_model_cannot_rank_fires_the_estimate_before_its_outcomes(reference, detector):
    """A referral population of intermediate-risk patients only: the champion's scores crowd together, its
    estimated AUC falls under the floor in two windows and the policy fires before a single outcome
    arrives; the outcomes, when they come, confirm it (the realised AUC there is as low)."""
    model = train_model(reference, seed=1).pipeline
    sink, clock = Sink(), [0.0]
    monitor = _monitor(reference, detector, sink, clock, estimated_windows=2)
    frame = load_dataset("synthetic-cohort", n_rows=6000, seed=29).frame
    scored = frame.assign(probability=predict_proba(model, reference.spec, frame), model_version="1")
    times = pd.date_range("2026-12-06T10:00:00", periods=len(scored), freq="s").astype(str)
    scored = scored.assign(created_at=times)

    def windows(rows: pd.DataFrame) -> list[dict[str, Any]]:
        return rows.drop(columns=["outcome"]).astype(object).where(rows.notna(), None).to_dict("records")

    monitor.add(windows(scored.iloc[:400]))  # the usual population: estimated close to what it was validated at
    assert not monitor.policy_decision().retrain
    assert all(w.estimated_auc_high is not None and w.estimated_auc_high > 0.7 for w in monitor.windows)
    low, high = scored["probability"].quantile([0.4, 0.6])
    referral = scored.iloc[400:][scored["probability"].iloc[400:].between(low, high)].iloc[:400]
    assert len(referral) == 400
    monitor.add(windows(referral))
    decision = monitor.policy_decision()
    assert decision.retrain and "estimated" in decision.rules, decision
    assert decision.evidence["estimated_windows"] == [3, 4]
    assert decision.evidence["estimated_since"] == str(referral["created_at"].iloc[0])
    assert all(w.n_outcomes == 0 and w.auc is None for w in monitor.windows)  # not one outcome read
    from learning_machine.model.evaluation import binary_metrics

    realised = binary_metrics(referral["outcome"].to_numpy(), referral["probability"].to_numpy())["auc"]
    assert realised < 0.7 and all(w.estimated_auc is not None and abs(w.estimated_auc - realised) < 0.1
                                  for w in list(monitor.windows)[-2:])


def test_a_prevalence_shift_is_seen_as_calibration_drift_and_asks_for_a_recalibration(reference, detector):
    """Twice the events, the same patients per outcome: the serving model's calibration-in-the-large moves up
    with confidence while its realised AUC holds; the windows store calibration slope and intercept (overall and
    per subgroup, with their intervals), and the policy asks for a recalibration, not a retraining. A retraining
    the sequential test fired earlier, still waiting for outcomes, becomes that recalibration."""
    from learning_machine.loop.policy import Decision

    result = train_model(reference, seed=1)
    model, validated = result.pipeline, result.evaluation.metrics["auc"]
    sink, clock = Sink(), [0.0]
    monitor = _monitor(reference, detector, sink, clock)
    monitor.expected_auc = validated

    def scored(scenario: str, seed: int) -> pd.DataFrame:
        frame = load_dataset("synthetic-cohort", n_rows=400, seed=seed, scenario=scenario, drift_start=0).frame
        return frame.assign(probability=predict_proba(model, reference.spec, frame), model_version="1")

    def window(rows: pd.DataFrame) -> list[dict[str, Any]]:
        return rows.iloc[:200].drop(columns=["outcome"]).astype(object).where(rows.iloc[:200].notna(),
                                                                                None).to_dict("records")

    clean = scored("none", 51)
    calm = monitor.assess(window(clean), labelled=clean).summary
    assert calm.calibration_intercept is not None and abs(calm.calibration_intercept) < 0.3
    assert "calibration" not in monitor.policy_decision().rules
    monitor.waiting = Decision(True, ("sequential test alarmed",), ("sequential",))  # waits for outcomes

    shifted = scored("prevalence-shift", 52)
    summary = monitor.assess(window(shifted), labelled=shifted).summary
    rows = {(r["metric"], r["feature"]): r for r in sink.rows if r["details"]["window_id"] == 2}
    overall = rows[("calibration_intercept", None)]
    assert overall["value"] == summary.calibration_intercept > 0.5  # risks too low: more events than predicted
    assert overall["details"]["low"] > 0.2 and overall["details"]["se"] == summary.calibration_intercept_se
    assert ("calibration_slope", None) in rows and ("calibration_slope", "sex=female") in rows
    assert summary.auc is not None and summary.auc > validated - 0.06  # it still ranks
    decision = monitor.policy_decision()
    assert decision.retrain and "calibration" in decision.rules and decision.change == "recalibrate", decision
    waited = monitor.decide(start=False)  # the waiting decision, tried again, asks for what the evidence supports
    assert waited.change == "recalibrate" and waited.rules == ("sequential", "calibration")
    assert monitor.waiting == waited
    again = _monitor(reference, detector, Sink(), [0.0])
    again.restore(monitor.durable_state())  # and a restart keeps it
    assert again.waiting == waited and again.windows[-1].calibration_intercept == summary.calibration_intercept
