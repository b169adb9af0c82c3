"""The retraining policy: when it fires, why, and when the cooldown holds it back."""

from __future__ import annotations

from dataclasses import replace

import pytest

from learning_machine.loop.policy import Decision, RetrainPolicy, WindowSummary, decide

POLICY = RetrainPolicy(drift_windows=2, auc_floor=0.7, min_outcomes=50, cooldown_s=600)


def w(i: int, *, drift: bool | None = False, auc: float | None = None, outcomes: int = 0, p: float = 0.5,
      features: tuple[str, ...] = ()) -> WindowSummary:
    return WindowSummary(i, 1000.0 + i, 200, drift=drift, drift_p_value=p, drifted_features=features, auc=auc,
                         n_outcomes=outcomes)


def test_quiet_windows_do_not_retrain():
    decision = decide([w(1), w(2), w(3, auc=0.78, outcomes=200)], POLICY, now=2000, last_retrain_at=None)
    assert not decision.retrain and decision.reasons == ()


def test_one_drifted_window_is_not_enough_but_k_in_a_row_are():
    assert not decide([w(1), w(2, drift=True)], POLICY, now=2000, last_retrain_at=None).retrain
    assert not decide([w(1, drift=True), w(2), w(3, drift=True)], POLICY, now=2000, last_retrain_at=None).retrain
    decision = decide([w(1), w(2, drift=True, p=0.001, features=("age",)), w(3, drift=True, p=0.004,
                                                                          features=("age", "egfr"))],
                      POLICY, now=2000, last_retrain_at=None)
    assert decision.retrain and decision.rules == ("drift",)
    assert decision.reasons[0] == ("drift confirmed in 2 consecutive window(s) (features: age, egfr), "
                                   "largest p-value 0.004")
    assert decision.evidence["drift_windows"] == [2, 3]


def test_performance_below_the_floor_needs_enough_outcomes():
    assert not decide([w(1, auc=0.55, outcomes=20)], POLICY, now=2000, last_retrain_at=None).retrain
    decision = decide([w(1, auc=0.8, outcomes=300), w(2, auc=0.62, outcomes=80)], POLICY, now=2000,
                      last_retrain_at=None)
    assert decision.retrain and decision.rules == ("performance",)
    assert "realised AUC 0.620 on 80 outcomes is below the floor 0.70" in decision.reasons[0]


def test_a_noisy_dip_under_the_floor_is_not_enough_with_the_event_count_known():
    # 0.68 on 119 outcomes (24 events): its 95 % upper bound is well above 0.70 (seen firing on clean data).
    noisy = WindowSummary(1, 1000.0, 200, auc=0.68, n_outcomes=119, n_events=24)
    assert not decide([noisy], POLICY, now=2000, last_retrain_at=None).retrain
    # A real fall: 0.58 on 300 outcomes (60 events) is under the floor with confidence.
    fallen = WindowSummary(2, 1001.0, 200, auc=0.58, n_outcomes=300, n_events=60)
    decision = decide([noisy, fallen], POLICY, now=2000, last_retrain_at=None)
    assert decision.retrain and decision.rules == ("performance",) and "95 % upper bound" in decision.reasons[0]


def test_cooldown_suppresses_and_says_how_long():
    windows = [w(1, drift=True), w(2, drift=True)]
    held = decide(windows, POLICY, now=2000, last_retrain_at=1800)
    assert not held.retrain and held.rules == ("drift",)
    assert held.suppressed == "cooldown: 400 s left of 600 s"
    assert decide(windows, POLICY, now=2500, last_retrain_at=1800).retrain


def test_schedule_fires_after_its_period():
    policy = RetrainPolicy(schedule_s=3600, cooldown_s=0)
    assert decide([], policy, now=10_000, last_retrain_at=None).rules == ("schedule",)
    assert not decide([], policy, now=10_000, last_retrain_at=9_000).retrain
    assert decide([], policy, now=13_000, last_retrain_at=9_000).retrain


def test_invalid_policies_are_refused():
    with pytest.raises(ValueError, match="drift_windows"):
        RetrainPolicy(drift_windows=0)
    with pytest.raises(ValueError, match="min_outcomes"):
        RetrainPolicy(min_outcomes=3)


def test_every_rule_says_where_the_change_began():
    def at(i: int, **kw: object) -> WindowSummary:
        return WindowSummary(i, 1000.0 + i, 200, start_time=f"2026-12-06T10:0{i}:00", **kw)  # type: ignore[arg-type]

    # The drift rule: the first window of the drifted run, however long the run is.
    windows = [at(1, drift=False), at(2, drift=True), at(3, drift=True), at(4, drift=True)]
    decision = decide(windows, POLICY, now=2000, last_retrain_at=None)
    assert decision.rules == ("drift",) and decision.evidence["drift_since"] == "2026-12-06T10:02:00"
    # The performance rule: where the loss rose among the outcomes the AUC was measured on.
    windows = [at(1, auc=0.55, n_outcomes=300, n_events=60, performance_since="2026-12-06T09:58:00")]
    decision = decide(windows, POLICY, now=2000, last_retrain_at=None)
    assert decision.rules == ("performance",) and decision.evidence["performance_since"] == "2026-12-06T09:58:00"


def test_the_retraining_learns_from_the_most_precise_change_point():
    from learning_machine.loop.service import change_point

    evidence = {"sequential_alarms": [{"since": "2026-12-06T10:05:00"}, {"since": "2026-12-06T10:04:00"}],
                "performance_since": "2026-12-06T10:01:00", "drift_since": "2026-12-06T10:00:00"}
    assert change_point(Decision(True, ("x",), ("sequential", "performance"), None, evidence)) == "2026-12-06T10:04:00"
    assert change_point(Decision(True, ("x",), ("performance", "drift"), None, evidence)) == "2026-12-06T10:01:00"
    assert change_point(Decision(True, ("x",), ("drift",), None, evidence)) == "2026-12-06T10:00:00"
    assert change_point(Decision(True, ("x",), ("schedule",), None, evidence)) is None  # the most recent rows


def test_the_floor_does_not_chase_a_version_at_its_own_validated_level():
    low = [WindowSummary(1, 1000.0, 200, auc=0.62, n_outcomes=400, n_events=80)]
    # The first champion, validated at 0.76, now at 0.62: lost, retrain.
    assert decide(low, POLICY, now=2000, last_retrain_at=None, expected_auc=0.76).rules == ("performance",)
    # A version promoted on the new population at 0.64 (no model reaches the floor there): at its own level.
    assert not decide(low, POLICY, now=2000, last_retrain_at=None, expected_auc=0.64).retrain
    assert decide(low, POLICY, now=2000, last_retrain_at=None).rules == ("performance",)  # unknown: the floor alone


def test_the_estimate_fires_before_any_outcome_when_its_upper_bound_is_under_the_limit():
    def est(i: int, auc: float, high: float) -> WindowSummary:
        return WindowSummary(i, 1000.0 + i, 200, estimated_auc=auc, estimated_auc_high=high,
                             start_time=f"2026-12-06T10:0{i}:00")

    policy = RetrainPolicy(auc_floor=0.7, estimated_windows=2)
    # One window under the limit is not enough; a wide interval reaching the limit is not either.
    assert not decide([est(1, 0.78, 0.86), est(2, 0.55, 0.64)], policy, now=2000, last_retrain_at=None).retrain
    assert not decide([est(1, 0.60, 0.71), est(2, 0.55, 0.64)], policy, now=2000, last_retrain_at=None).retrain
    windows = [est(1, 0.78, 0.86), est(2, 0.58, 0.66), est(3, 0.56, 0.65), est(4, 0.55, 0.64)]
    decision = decide(windows, policy, now=2000, last_retrain_at=None)
    assert decision.retrain and decision.rules == ("estimated",) and decision.evidence["estimated_windows"] == [3, 4]
    assert decision.evidence["estimated_since"] == "2026-12-06T10:02:00"  # the first window of the run below
    assert "estimated AUC 0.560, 0.550 in the last 2 window(s), before their outcomes" in decision.reasons[0]
    # The same limit as the realised rule: a version validated at 0.62 is not chased at its own level.
    assert not decide(windows, policy, now=2000, last_retrain_at=None, expected_auc=0.62).retrain
    # Off, or without a floor: shown only.
    assert not decide(windows, RetrainPolicy(estimated_windows=0), now=2000, last_retrain_at=None).retrain
    assert not decide(windows, RetrainPolicy(auc_floor=None), now=2000, last_retrain_at=None).retrain
    from learning_machine.loop.service import change_point

    assert change_point(decision) == "2026-12-06T10:02:00"
    with pytest.raises(ValueError, match="estimated_windows"):
        RetrainPolicy(estimated_windows=-1)


def cal(i: int, *, intercept: float, slope: float = 1.0, auc: float = 0.76, outcomes: int = 300, events: int = 90,
        se: float = 0.13) -> WindowSummary:
    """A window whose outcomes measured the serving model's calibration (intercept and slope with a standard error)."""
    return WindowSummary(i, 1000.0 + i, 200, auc=auc, n_outcomes=outcomes, n_events=events,
                         performance_since="2026-12-06T10:05:00", calibration_intercept=intercept,
                         calibration_intercept_se=se, calibration_slope=slope, calibration_slope_se=se)


def test_calibration_drift_with_discrimination_held_asks_for_a_recalibration():
    policy = RetrainPolicy(auc_floor=0.7, min_outcomes=100)
    # Risks too low on average (more events than predicted, as after a prevalence shift), ranking as validated.
    decision = decide([cal(1, intercept=0.0), cal(2, intercept=0.9)], policy, now=2000, last_retrain_at=None,
                      expected_auc=0.77)
    assert decision.retrain and decision.rules == ("calibration",) and decision.change == "recalibrate"
    assert decision.reasons[0].startswith("calibration drifted on 300 outcomes: calibration-in-the-large +0.900")
    assert "discrimination held (realised AUC 0.760" in decision.reasons[0]
    assert decision.evidence["calibration"]["intercept"] == 0.9 and decision.evidence["calibration_window"] == 2
    assert decision.as_dict()["change"] == "recalibrate"  # what the retrain-fired event carries
    from learning_machine.loop.service import change_point

    assert change_point(decision) == "2026-12-06T10:05:00"  # where the loss rose among the outcomes
    # Too extreme (slope well below 1) is a calibration drift too; too low on average by a negative offset as well.
    assert decide([cal(1, intercept=0.0, slope=0.5)], policy, now=2000, last_retrain_at=None).change == "recalibrate"
    assert decide([cal(1, intercept=-0.7)], policy, now=2000, last_retrain_at=None).rules == ("calibration",)


def test_calibration_within_its_noise_or_with_ranking_lost_is_not_a_recalibration():
    policy = RetrainPolicy(auc_floor=0.7, min_outcomes=100)
    # The interval reaches the bound: no evidence (0.4 - 1.96 * 0.13 < 0.2).
    assert not decide([cal(1, intercept=0.4)], policy, now=2000, last_retrain_at=None).retrain
    assert not decide([cal(1, intercept=0.0, slope=0.8)], policy, now=2000, last_retrain_at=None).retrain
    # Too few outcomes for the window to count.
    assert not decide([cal(1, intercept=0.9, outcomes=80, events=20)], policy, now=2000, last_retrain_at=None).retrain
    # The model no longer ranks as it was validated (0.66 on 300 outcomes: upper bound under 0.77): not the
    # calibration rule; the performance rule fires (the floor and 0.05 below 0.77) and asks for a retraining.
    lost = decide([cal(1, intercept=0.9, auc=0.62)], policy, now=2000, last_retrain_at=None, expected_auc=0.77)
    assert lost.rules == ("performance",) and lost.change == "retrain"
    # Off by setting.
    off = RetrainPolicy(auc_floor=0.7, min_outcomes=100, recalibrate=False)
    assert not decide([cal(1, intercept=0.9)], off, now=2000, last_retrain_at=None).retrain


def test_the_change_follows_the_rules_that_fired():
    from learning_machine.loop.policy import change_for

    assert change_for(("sequential", "drift", "calibration")) == "recalibrate"  # a prevalence shift, seen early
    assert change_for(("calibration", "estimated")) == "retrain"
    assert change_for(("sequential",)) == "retrain" and change_for(()) == "retrain"
    drifted = replace(cal(2, intercept=0.9), drift=True, drifted_features=("age",))
    decision = decide([drifted], RetrainPolicy(drift_windows=1, auc_floor=0.7, min_outcomes=100), now=2000,
                      last_retrain_at=None)
    assert decision.rules == ("drift", "calibration") and decision.change == "recalibrate"
    with pytest.raises(ValueError, match="calibration bounds"):
        RetrainPolicy(calibration_slope=(1.1, 1.3))
