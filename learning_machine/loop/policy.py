"""The retraining policy: a small rule, documented and configurable, that decides from the monitor's
recent windows whether to retrain, and says why.

A retraining fires when any of these holds (unless an optional cooldown since the last retraining has not
passed; then the decision records that it was suppressed and by how long):

1. **drift confirmed**: the last ``drift_windows`` windows all show drift (one noisy window is not
   enough, which bounds false alarms);
2. **performance below the floor**: the latest window with at least ``min_outcomes`` outcomes has a
   realised AUC below ``auc_floor`` with 95 % confidence (its one-sided upper bound, from the Hanley-McNeil
   standard error, is under the floor): an AUC on a few hundred outcomes varies by several points, and a
   plain comparison fired on clean data;
3. **schedule**: ``schedule_s`` seconds have passed since the last retraining (off by default);
4. **estimated performance below the floor**: before any outcome arrives, the last ``estimated_windows``
   windows all have an AUC estimated from the serving model's own scores (CBPE,
   :mod:`learning_machine.model.estimation`) whose 95 % upper bound is below the same limit as rule 2. The
   early signal of a population where the model cannot rank as it did (its scores crowd together); blind to
   a change in the risk function itself, which only the outcomes show (rules 2 and 5);
5. **sequential**: the monitor's sequential test (CUSUM on every feature, and on the model's log-loss once
   outcomes arrive; :mod:`learning_machine.model.sequential`) crossed its threshold, which is calibrated to a
   configured false-alarm budget (``LM_MONITOR_FALSE_ALARMS_PER_10K``). It reacts within tens of rows to
   a shift a windowed test sees only at the end of its windows;
6. **calibration**: on the latest window with at least ``min_outcomes`` outcomes, the serving model's
   calibration drifted with 95 % confidence (the interval of its calibration-in-the-large lies beyond
   ``calibration_intercept`` either way, or the interval of its calibration slope lies outside
   ``calibration_slope``) while its discrimination held (the one-sided 95 % upper bound of its realised AUC is
   not below the AUC it was validated with, or the floor when that is unknown): the scores still rank, only
   the map from score to probability is off (a prevalence shift, a new case mix of the same disease).

Every decision names the **change** it asks for: ``recalibrate`` (refit only that map on the champion,
:mod:`learning_machine.model.recalibration`) when the calibration rule holds and no rule that says the model
no longer ranks (performance, estimated) fired; ``retrain`` otherwise, as before. A sequential or drift alarm
that comes with the calibration rule is the same change seen earlier (a prevalence shift moves the features
and the log-loss too), so it is recalibrated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from learning_machine.model.evaluation import auc_standard_error

if TYPE_CHECKING:
    from learning_machine.model.sequential import Alarm


@dataclass(frozen=True)
class WindowSummary:
    """What the monitor concluded about one window of recent predictions."""

    window_id: int
    end_time: float
    n_rows: int
    drift: bool | None = None
    drift_p_value: float | None = None
    drifted_features: tuple[str, ...] = ()
    missing_fraction: float | None = None
    invalid_fraction: float | None = None
    auc: float | None = None
    n_outcomes: int = 0
    n_events: int | None = None
    """Outcomes that were events (1), for the AUC's standard error; None: compare the AUC itself."""
    start_time: str | None = None
    """When the window's first prediction was made (where a drift that starts with this window began)."""
    performance_since: str | None = None
    """Where the serving model's loss most likely rose, among the outcomes its realised AUC was measured on
    (:func:`learning_machine.model.sequential.loss_change_point`), else the oldest of them (the change lies
    before them all)."""
    estimated_auc: float | None = None
    """AUC estimated from the window's scores before outcomes arrive (CBPE; assumes a calibrated model)."""
    estimated_auc_high: float | None = None
    """The upper end of the 95 % interval of the window's realised AUC, from the estimate (rule 4 reads it)."""
    calibration_intercept: float | None = None
    """Calibration-in-the-large of the serving model on the outcomes its realised AUC was measured on (rule 6)."""
    calibration_intercept_se: float | None = None
    calibration_slope: float | None = None
    """Calibration slope on those outcomes (rule 6)."""
    calibration_slope_se: float | None = None


@dataclass(frozen=True)
class RetrainPolicy:
    """The knobs of the rule (settings ``LM_POLICY_*``)."""

    drift_windows: int = 2
    auc_floor: float | None = 0.70
    min_outcomes: int = 100
    schedule_s: float | None = None
    auc_drop: float = 0.05
    """The performance rule also needs the realised AUC this far below the AUC the serving version was
    validated with (when known)."""
    estimated_windows: int = 2
    """Consecutive windows whose estimated AUC must all be below the limit (0: the estimate is only shown)."""
    cooldown_s: float = 0.0
    """A minimum gap between two retrainings (off by default: the learning loop retries a refused change when
    enough new outcomes have arrived, and runs one retraining at a time)."""
    recalibrate: bool = True
    """Rule 6 on: calibration drift with discrimination held asks for a ``recalibrate`` change."""
    calibration_intercept: float = 0.2
    """Rule 6: calibration-in-the-large beyond plus or minus this (logit scale), with 95 % confidence."""
    calibration_slope: tuple[float, float] = (0.8, 1.2)
    """Rule 6: a calibration slope outside these bounds, with 95 % confidence."""

    def __post_init__(self) -> None:
        if self.drift_windows < 1:
            raise ValueError("drift_windows must be at least 1")
        if self.min_outcomes < 10:
            raise ValueError("min_outcomes must be at least 10: an AUC on fewer outcomes is noise")
        if self.estimated_windows < 0:
            raise ValueError("estimated_windows cannot be negative (0 turns the estimate rule off)")
        if self.cooldown_s < 0:
            raise ValueError("cooldown_s cannot be negative")
        if self.calibration_intercept <= 0 or not 0 < self.calibration_slope[0] <= 1 <= self.calibration_slope[1]:
            raise ValueError("calibration bounds must hold the ideal: intercept bound above 0, slope low <= 1 <= high")


@dataclass(frozen=True)
class Decision:
    """Whether to retrain now, every rule that fired, and what held it back."""

    retrain: bool
    reasons: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    suppressed: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    change: str = "retrain"
    """The change asked for: ``retrain`` or ``recalibrate`` (a change kind of the change-control plan)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(windows: Sequence[WindowSummary], policy: RetrainPolicy, *, now: float,
           last_retrain_at: float | None, alarms: Sequence[Alarm] = (),
           accepted: frozenset[str] = frozenset(), expected_auc: float | None = None) -> Decision:
    """Apply the policy to the windows (oldest first) and the sequential test's alarms at time ``now``.
    ``accepted``: features whose drift was accepted as the new normal (a retraining on it was refused): a
    window that drifts only in those does not count as drifting. ``expected_auc``: the AUC the serving
    version was registered with (its held-out AUC), when known."""
    reasons: list[str] = []
    if accepted:
        windows = [w if not w.drift or set(w.drifted_features) - accepted else
                   WindowSummary(**{**asdict(w), "drift": False}) for w in windows]
    rules: list[str] = []
    evidence: dict[str, Any] = {}

    if alarms:
        rules.append("sequential")
        reasons.append(alarms[0].reason())
        evidence["sequential_alarms"] = [asdict(a) for a in alarms[:5]]

    recent = list(windows)[-policy.drift_windows:]
    if len(recent) == policy.drift_windows and all(w.drift for w in recent):
        run = list(recent)
        for w in reversed(list(windows)[:-policy.drift_windows]):  # back to the first window of the drifted run
            if not w.drift:
                break
            run.insert(0, w)
        if run[0].start_time:
            evidence["drift_since"] = run[0].start_time
        features = sorted({f for w in recent for f in w.drifted_features})
        p_values = [w.drift_p_value for w in recent if w.drift_p_value is not None]
        rules.append("drift")
        reasons.append(f"drift confirmed in {policy.drift_windows} consecutive window(s)"
                       + (f" (features: {', '.join(features)})" if features else "")
                       + (f", largest p-value {max(p_values):.2g}" if p_values else ""))
        evidence["drift_windows"] = [w.window_id for w in recent]

    scored = [w for w in windows if w.auc is not None and w.n_outcomes >= policy.min_outcomes]
    latest = scored[-1] if scored else None
    # Below the floor, and below what the serving version was shown to reach (by more than auc_drop): a
    # version promoted on a population where no model reaches the floor is not "lost" at its own level.
    limit = None if policy.auc_floor is None else (
        policy.auc_floor if expected_auc is None else min(policy.auc_floor, expected_auc - policy.auc_drop))
    if limit is not None and latest is not None and latest.auc is not None:
        upper = latest.auc + 1.645 * auc_standard_error(latest.auc, latest.n_events, latest.n_outcomes)
        if upper < limit:
            rules.append("performance")
            reasons.append(f"realised AUC {latest.auc:.3f} on {latest.n_outcomes} outcomes is below the floor "
                           f"{policy.auc_floor:.2f}" + (f" (95 % upper bound {upper:.3f})" if upper > latest.auc else "")
                           + (f" and {policy.auc_drop:g} below the {expected_auc:.3f} the serving version was "
                              "validated with" if expected_auc is not None else ""))
            evidence["performance_window"] = latest.window_id
            if latest.performance_since:
                evidence["performance_since"] = latest.performance_since

    estimated = list(windows)[-policy.estimated_windows:] if policy.estimated_windows else []
    if (limit is not None and estimated and len(estimated) == policy.estimated_windows
            and all(w.estimated_auc_high is not None and w.estimated_auc_high < limit for w in estimated)):
        run = list(estimated)
        for w in reversed(list(windows)[:-policy.estimated_windows]):  # back to the first window below the limit
            if w.estimated_auc_high is None or w.estimated_auc_high >= limit:
                break
            run.insert(0, w)
        rules.append("estimated")
        reasons.append(f"estimated AUC {', '.join(f'{w.estimated_auc:.3f}' for w in estimated)} in the last "
                       f"{len(estimated)} window(s), before their outcomes: every 95 % upper bound "
                       f"(up to {max(w.estimated_auc_high or 0.0 for w in estimated):.3f}) is below {limit:.3f}")
        evidence["estimated_windows"] = [w.window_id for w in estimated]
        if run[0].start_time:
            evidence["estimated_since"] = run[0].start_time

    drifted = calibration_drift(latest, policy, expected_auc)
    if drifted is not None:
        rules.append("calibration")
        reasons.append(drifted[0])
        evidence["calibration"] = drifted[1]
        evidence["calibration_window"] = latest.window_id if latest is not None else None
        if latest is not None and latest.performance_since:
            evidence["calibration_since"] = latest.performance_since

    if policy.schedule_s is not None and (last_retrain_at is None or now - last_retrain_at >= policy.schedule_s):
        rules.append("schedule")
        reasons.append(f"scheduled: no retraining for {policy.schedule_s:.0f} s")

    if not reasons:
        return Decision(False, evidence=evidence)
    change = change_for(rules)
    if last_retrain_at is not None and now - last_retrain_at < policy.cooldown_s:
        wait = policy.cooldown_s - (now - last_retrain_at)
        return Decision(False, tuple(reasons), tuple(rules), f"cooldown: {wait:.0f} s left of {policy.cooldown_s:.0f} s",
                        evidence, change)
    return Decision(True, tuple(reasons), tuple(rules), None, evidence, change)


def change_for(rules: Sequence[str]) -> str:
    """The change a set of firing rules asks for: ``recalibrate`` when the calibration rule holds and no rule
    says the model no longer ranks, else ``retrain``."""
    return "recalibrate" if "calibration" in rules and not {"performance", "estimated"} & set(rules) else "retrain"


def calibration_drift(window: WindowSummary | None, policy: RetrainPolicy,
                      expected_auc: float | None) -> tuple[str, dict[str, Any]] | None:
    """Rule 6 on one window (the latest with enough outcomes): (the reason, the evidence) when its calibration
    drifted with 95 % confidence and its discrimination held; else None."""
    if (not policy.recalibrate or window is None or window.auc is None or window.calibration_intercept is None
            or window.calibration_slope is None):
        return None
    z = 1.959963984540054
    outside: list[str] = []
    a, a_se = window.calibration_intercept, window.calibration_intercept_se or 0.0
    if a - z * a_se > policy.calibration_intercept or a + z * a_se < -policy.calibration_intercept:
        outside.append(f"calibration-in-the-large {a:+.3f} (95 % interval {a - z * a_se:+.3f} to {a + z * a_se:+.3f}) "
                       f"beyond ±{policy.calibration_intercept:g}")
    b, b_se = window.calibration_slope, window.calibration_slope_se or 0.0
    low, high = policy.calibration_slope
    if b - z * b_se > high or b + z * b_se < low:
        outside.append(f"calibration slope {b:.3f} (95 % interval {b - z * b_se:.3f} to {b + z * b_se:.3f}) outside "
                       f"{low:g}-{high:g}")
    if not outside:
        return None
    # Discrimination held: the realised AUC is not below the AUC the version was validated with beyond its
    # noise (one-sided 95 %), or, without that AUC, not below the floor.
    reference = expected_auc if expected_auc is not None else policy.auc_floor
    upper = window.auc + 1.645 * auc_standard_error(window.auc, window.n_events, window.n_outcomes)
    if reference is not None and upper < reference:
        return None
    evidence = {"intercept": a, "intercept_se": a_se, "slope": b, "slope_se": b_se, "auc": window.auc,
                "auc_upper": upper, "validated_auc": expected_auc, "outcomes": window.n_outcomes}
    return (f"calibration drifted on {window.n_outcomes} outcomes: {'; '.join(outside)}; discrimination held "
            f"(realised AUC {window.auc:.3f}, 95 % upper bound {upper:.3f}"
            + (f", validated {expected_auc:.3f})" if expected_auc is not None else ")"), evidence)
