"""The sequential test (CUSUM per feature and on the model's log-loss): calibrated to the false-alarm
budget on clean data, fast on a shift, silent on features when only the risk relationship changes, and
wired into the monitor and the policy (alarms stored as results, retraining fired once, evidence cleared
when another version serves)."""

from __future__ import annotations

import numpy as np
import pytest
from testsupport import Sink
from testsupport import placeholder_rows as _rows

from learning_machine.data.sources import load_dataset
from learning_machine.loop.monitor import Monitor, MonitorConfig
from learning_machine.loop.policy import RetrainPolicy, decide
from learning_machine.model.sequential import fit_sequential, loss_change_point, rebaselined
from learning_machine.model.training import predict_proba, train_model


@pytest.fixture(scope="module")
def reference():
    return load_dataset("synthetic-cohort", n_rows=3000, seed=42)


@pytest.fixture(scope="module")
def model(reference):
    return train_model(reference, seed=1).pipeline


@pytest.fixture(scope="module")
def detector(reference):
    return fit_sequential(reference.spec, reference.frame, false_alarms_per_10k=1.0, seed=1)


def _stream(scenario: str, rows: int, seed: int, drift_start: int):
    return load_dataset("synthetic-cohort", n_rows=rows, seed=seed, scenario=scenario, drift_start=drift_start)


def _fresh(detector):
    detector.reset()
    detector.rows_seen = detector.outcomes_seen = 0
    detector.outcome_threshold = None
    detector._recent_loss.clear()
    return detector


def _per_version(detector):
    """What LoopService does: one detector per serving version, fitted once (here: the same one, reset)."""
    loaded: dict[str, object] = {}

    def sequential(version):
        if version not in loaded:
            loaded[version] = _fresh(detector)
        return loaded[version]

    sequential.loaded = loaded  # type: ignore[attr-defined]
    return sequential


def test_clean_data_stays_within_the_false_alarm_budget(detector, model):
    # 30,000 clean rows at 1 alarm per 10,000 on features and outcomes together: 3 expected; more than 9
    # has a probability under 0.5 % if the calibration holds.
    alarms = 0
    for seed in (101, 102, 103):
        data = _stream("none", 10_000, seed, 0)
        d = _fresh(detector)
        alarms += len(d.update(data.frame))
        alarms += len(d.update_outcomes(data.frame["outcome"].to_numpy(), predict_proba(model, data.spec, data.frame)))
    assert alarms <= 9


@pytest.mark.parametrize(("scenario", "stream", "within"), [("covariate-shift", "age", 100),
                                                           ("missingness-spike", "__missing", 60),
                                                           ("measurement-shift", "hba1c", 100)])
def test_a_shift_in_the_features_is_found_within_tens_of_rows(detector, scenario, stream, within):
    data = _stream(scenario, 1500, 7, 1000)
    alarms = _fresh(detector).update(data.frame)
    first = alarms[0]
    assert 1000 < first.row <= 1000 + within, first
    assert any(stream in s for s in first.streams) and first.ratio > 1
    assert "sequential test (CUSUM)" in first.reason() and "features" in first.reason()


def test_concept_drift_is_invisible_in_the_features_but_found_in_the_outcomes(detector, model):
    data = _stream("concept-drift", 4000, 8, 1000)
    d = _fresh(detector)
    assert not [a for a in d.update(data.frame) if a.row > 1000]  # features do not change
    alarms = d.update_outcomes(data.frame["outcome"].to_numpy(), predict_proba(model, data.spec, data.frame))
    after = [a for a in alarms if a.row > 1000]
    assert after and after[0].stream == "outcomes" and after[0].row < 2500
    assert d.outcome_threshold is not None  # the first outcomes calibrated the stream


def test_thresholds_follow_the_budget(reference):
    strict = fit_sequential(reference.spec, reference.frame, false_alarms_per_10k=0.1, seed=1)
    loose = fit_sequential(reference.spec, reference.frame, false_alarms_per_10k=10, seed=1)
    assert np.all(strict.threshold > loose.threshold)
    with pytest.raises(ValueError, match="positive"):
        fit_sequential(reference.spec, reference.frame, false_alarms_per_10k=0)
    with pytest.raises(ValueError, match="at least 50 rows"):
        fit_sequential(reference.spec, reference.frame.head(10))


def test_the_monitor_stores_alarms_and_the_policy_fires_once(reference, detector):
    sink = Sink()
    clock = [1000.0]
    fired = []
    sequential = _per_version(detector)
    monitor = Monitor(reference.spec, MonitorConfig(window_rows=200), RetrainPolicy(cooldown_s=600),
                      drift=lambda records: {"is_drift": False, "p_val": [], "feature_names": []}, sink=sink,
                      trigger=lambda decision: fired.append(decision) or {"state": "SUCCEEDED"},
                      sequential=sequential, clock=lambda: clock[0])
    monitor.add(_rows("none", 150, 31))
    assert not monitor.alarms and not monitor.decide().retrain
    monitor.add(_rows("covariate-shift", 150, 32))  # drift from the first of these rows
    assert monitor.alarms, "a shifted age distribution raises a sequential alarm before a window closes"
    stored = [r for r in sink.rows if r["metric"] == "cusum"]
    assert stored and stored[0]["alert"] and stored[0]["feature"] == "features" and stored[0]["model_version"] == "1"
    decision = monitor.decide()
    assert decision.retrain and "sequential" in decision.rules and "CUSUM" in decision.reasons[0]
    assert fired and not monitor.alarms
    clock[0] += 10
    monitor.add(_rows("covariate-shift", 200, 33))
    again = monitor.decide()
    assert not again.retrain and again.suppressed and again.suppressed.startswith("cooldown")
    # Another version serves: the old version's evidence is dropped.
    rows = _rows("none", 10, 34)
    for r in rows:
        r["model_version"] = "2"
    monitor.add(rows)
    assert monitor.serving_version == "2" and not monitor.alarms and set(sequential.loaded) == {"1", "2"}


def test_the_policy_names_the_sequential_rule(detector):
    data = _stream("missingness-spike", 1200, 9, 1000)
    alarms = _fresh(detector).update(data.frame)
    decision = decide([], RetrainPolicy(), now=0.0, last_retrain_at=None, alarms=alarms)
    assert decision.retrain and decision.rules == ("sequential",)
    assert decision.evidence["sequential_alarms"][0]["stream"] == "features"


def test_an_alarm_estimates_where_the_change_began(detector, model):
    data = _stream("covariate-shift", 1400, 10, 1000)
    first = _fresh(detector).update(data.frame)[0]
    assert 950 <= first.change_row <= 1010 < first.row, first


def test_an_outcome_alarm_places_the_change_near_where_the_loss_rose(detector, model):
    """The risk function changes at outcome 600 (after a burn-in of 500): the alarm's change point is the
    single-shift estimate over the recent outcomes, near 600, not the start of the crossing chart's last
    excursion (which lagged by up to 230 rows, so the retraining waited for outcomes it already had)."""
    found = []
    for seed in range(10, 18):
        data = _stream("concept-drift", 2500, seed, 600)
        d = _fresh(detector)
        proba = predict_proba(model, data.spec, data.frame)
        alarms = d.update_outcomes(data.frame["outcome"].to_numpy(), proba)
        if alarms:
            assert alarms[0].change_row <= alarms[0].row
            found.append(alarms[0].change_row)
    assert len(found) >= 6, found
    # The crossing chart's excursion start gave a median of 864 on these streams (alarms at rows 812-1,164).
    assert 540 <= float(np.median(found)) <= 720, found


def test_a_retraining_waits_for_outcomes_after_the_change_then_starts(reference, detector):
    # The trigger answers DEFERRED while too few outcomes of post-change predictions exist (what
    # RetrainViaPipeline does); the monitor keeps the fired decision and tries again at each step.
    sink = Sink()
    answers = iter([{"state": "DEFERRED", "error": "waiting"}, {"state": "DEFERRED"}, {"state": "SUCCEEDED"}])
    calls = []

    def trigger(decision):
        calls.append(decision)
        return next(answers)

    rows = _rows("covariate-shift", 300, 35)
    for i, r in enumerate(rows):
        r["created_at"] = f"2026-11-22T10:{i // 60:02d}:{i % 60:02d}"
    monitor = Monitor(reference.spec, MonitorConfig(window_rows=200), RetrainPolicy(cooldown_s=600),
                      drift=lambda records: {"is_drift": False}, sink=sink, trigger=trigger,
                      sequential=_per_version(detector))
    monitor.add(rows)
    fired = monitor.decide()
    assert fired.retrain and monitor.waiting is fired and len(calls) == 1
    since = fired.evidence["sequential_alarms"][0]["since"]
    assert since is not None and since <= rows[60]["created_at"], "the change point is near the first shifted rows"
    assert monitor.decide() is fired and monitor.waiting is fired  # still waiting
    assert monitor.decide() is fired and monitor.waiting is None and len(calls) == 3
    assert [kind for kind, _ in sink.events] == ["retrain-fired"]  # fired once, however long it waited


def test_the_performance_rule_estimates_where_the_loss_rose(model):
    # Outcomes of the same model before and after concept drift at row 300 of 600: the estimate lands near it.
    data = _stream("concept-drift", 600, 41, 300)
    proba = predict_proba(model, data.spec, data.frame)
    found = loss_change_point(data.frame["outcome"].to_numpy(), proba)
    assert found is not None and 240 <= found <= 360, found
    # The change is before all the rows (all of them are post-change): no cut in their middle.
    after = _stream("concept-drift", 400, 43, 0)
    found = loss_change_point(after.frame["outcome"].to_numpy(), predict_proba(model, after.spec, after.frame))
    assert found is None, found


def test_a_rebaselined_detector_keeps_judging_performance_against_the_old_burn_in(reference, detector, model):
    old = _fresh(detector)
    burn = _stream("none", 600, 44, 0)
    old.update_outcomes(burn.frame["outcome"].to_numpy(), predict_proba(model, burn.spec, burn.frame))
    assert old.outcome_threshold is not None
    shifted = _stream("covariate-shift", 600, 45, 0).frame
    fresh = rebaselined(old, fit_sequential(reference.spec, shifted, false_alarms_per_10k=1.0))
    assert np.array_equal(fresh.outcome_threshold, old.outcome_threshold)
    assert (fresh.outcome_center, fresh.outcome_scale) == (old.outcome_center, old.outcome_scale)
    assert not fresh.update(shifted.iloc[:300])  # the changed features are the new normal
    worse = _stream("concept-drift", 800, 46, 0)  # but a model that got worse is still flagged
    alarms = fresh.update_outcomes(worse.frame["outcome"].to_numpy(), predict_proba(model, worse.spec, worse.frame))
    assert alarms and alarms[0].stream == "outcomes"
