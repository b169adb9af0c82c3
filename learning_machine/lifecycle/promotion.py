"""What serves, decided and changed in one place: the promotion rule (:func:`decide`), serving a version
through the configured deployer (:func:`serve`), and a change of champion (:func:`change_champion`:
move the alias, serve, record the event) that the CLI, the gateway's admin routes and the pipelines'
promote and deploy steps all go through. The learning loop records a pipeline's promotion with
:func:`champion_event`, the same event document."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from learning_machine.deployers import get_deployer
from learning_machine.embedded.processes import is_healthy
from learning_machine.errors import (
    BadRequestError,
    ConflictError,
    LearningMachineError,
    ServiceUnavailableError,
    UnknownNameError,
)
from learning_machine.registry.names import (
    APPROVAL_AT_TAG,
    APPROVAL_BY_TAG,
    APPROVAL_REASON_TAG,
    APPROVAL_TAG,
    CHAMPION,
    GATE_CHAMPION_TAG,
    PLAN_DECISION_TAG,
    PLAN_DIGEST_TAG,
    PLAN_REASON_TAG,
    PLAN_TAG,
)
from learning_machine.registry.tracker import Tracker, VersionInfo
from learning_machine.settings import Settings

# Metrics the gate may compare, and whether higher is better.
GATE_METRICS: dict[str, bool] = {"auc": True, "accuracy": True, "f1": True, "brier": False, "log_loss": False,
                                 "ece": False}
# gate: compare with the champion on the same held-out rows; if-first: only when there is no champion.
PROMOTE_POLICIES = ("gate", "always", "never", "if-first")
# How the gate compares: on paired evidence (intervals, non-inferiority per subgroup) or on point estimates.
GATE_RULES = ("evidence", "point")

# The differences the paired comparison gives (learning_machine.model.evaluation.paired_comparison), each
# with a 95 % interval, candidate minus champion.
PAIRED_METRICS: tuple[str, ...] = ("auc", "log_loss", "brier")

# Records one event (kind, detail, model version): the gateway's event log, a pipeline step's log, ...
Recorder = Callable[[str, dict[str, Any], str | None], Any]


@dataclass(frozen=True)
class PromotionDecision:
    """The rule's verdict on a candidate: promote it or not, and why."""

    promote: bool
    reason: str
    metric: str = ""
    candidate_value: float | None = None
    champion_value: float | None = None
    clauses: tuple[dict[str, Any], ...] = field(default=())
    """The evidence rule's clauses, each with the interval bound it tested and its verdict."""


@dataclass(frozen=True)
class EvidenceRule:
    """The gate on paired evidence (settings ``LM_GATE_*``): the candidate must be better than the champion
    with 95 % confidence on the gate metric (by more than ``margin``), and no worse than the champion by more
    than a non-inferiority margin on discrimination (AUC, overall and on every subgroup with enough rows) and
    on calibration (log-loss), each judged on its interval's worst end."""

    margin: float = 0.0
    noninferiority_auc: float = 0.03
    noninferiority_log_loss: float = 0.02
    noninferiority_subgroup_auc: float = 0.10
    """Subgroups are a fraction of the rows: their intervals are wider, so their margin is too."""
    min_subgroup_events: int = 30
    """A subgroup's AUC is tested only with at least this many rows of each outcome; below, it is reported
    as not assessable (an AUC on a handful of events has an interval wider than any sensible margin)."""
    underpowered_subgroups: str = "no-harm"
    """A tested subgroup whose interval is wider than its margin (half-width >= margin) cannot show
    non-inferiority even when the candidate is exactly as good there: ``no-harm`` then tests only that it is
    not worse beyond doubt (the interval's upper end not below 0), and says so in the clause; ``hold`` keeps
    the non-inferiority test (the candidate waits for more rows)."""
    also_better_on: tuple[str, ...] = ("log_loss",)
    """Besides the gate metric, a candidate may prove itself better on these (a recalibrated model after a
    prevalence shift ranks the same but predicts better); the error budget is split between them."""
    z: float = 1.959963984540054
    """The interval's width in standard errors: 1.96 for one look at the evidence (95 %); larger when the same
    evidence is looked at several times as it grows (a shadow challenger's looks share the error budget)."""

    def __post_init__(self) -> None:
        if min(self.noninferiority_auc, self.noninferiority_log_loss, self.noninferiority_subgroup_auc) < 0:
            raise ValueError("non-inferiority margins cannot be negative")
        if self.z <= 0:
            raise ValueError("z must be positive")
        if self.underpowered_subgroups not in ("no-harm", "hold"):
            raise UnknownNameError("underpowered subgroup rule", self.underpowered_subgroups, ["no-harm", "hold"])

    @classmethod
    def from_settings(cls, settings: Settings, *, margin: float | None = None, looks: int = 1) -> EvidenceRule:
        """The rule the settings configure; ``looks``: how many times the evidence will be looked at (the
        95 % budget is shared between them, Bonferroni)."""
        return cls(settings.gate_margin if margin is None else margin, settings.gate_noninferiority_auc,
                   settings.gate_noninferiority_log_loss, settings.gate_noninferiority_subgroup_auc,
                   settings.gate_min_subgroup_events, settings.gate_underpowered_subgroups, z=interval_z(looks))


def interval_z(looks: int = 1) -> float:
    """The intervals' width in standard errors when the evidence is looked at ``looks`` times as it grows: the
    two-sided 95 % budget shared between the looks (Bonferroni); 1.96 for one look."""
    from scipy.stats import norm

    return float(norm.ppf(1 - 0.025 / max(1, looks)))


def check_policy(policy: str, metric: str = "auc") -> None:
    """Fail with the valid names for an unknown promotion policy or gate metric."""
    if policy not in PROMOTE_POLICIES:
        raise UnknownNameError("promotion policy", policy, list(PROMOTE_POLICIES))
    if metric not in GATE_METRICS:
        raise UnknownNameError("gate metric", metric, list(GATE_METRICS))


def decide(policy: str, *, has_champion: bool, metric: str = "auc", margin: float = 0.0,
           candidate: float | None = None, champion: float | None = None,
           evidence: Mapping[str, Any] | None = None, rule: EvidenceRule | None = None) -> PromotionDecision:
    """The one promotion rule. ``always``/``never`` say it all; with no champion the candidate becomes the
    first; ``if-first`` keeps an existing champion; ``gate`` promotes only a candidate better than the
    champion by more than ``margin`` in ``metric``, both scored on the same held-out rows: with ``rule`` and
    the paired ``evidence`` (:func:`learning_machine.model.evaluation.paired_comparison`) on the intervals
    (:func:`decide_on_evidence`), else on the point estimates."""
    check_policy(policy, metric)
    if policy == "always":
        return PromotionDecision(True, "promotion policy 'always'", metric, candidate, champion)
    if policy == "never":
        return PromotionDecision(False, "promotion policy 'never'", metric, candidate, champion)
    if not has_champion:
        value = f" ({metric} {candidate:.4f})" if candidate is not None else ""
        return PromotionDecision(True, f"no champion yet: the candidate{value} becomes the first", metric,
                                 candidate, champion)
    if policy == "if-first":
        return PromotionDecision(False, "promotion policy 'if-first' and a champion exists", metric, candidate,
                                 champion)
    if rule is not None and evidence is not None and metric in PAIRED_METRICS and evidence.get(metric):
        return decide_on_evidence(evidence, rule, metric=metric, candidate=candidate, champion=champion)
    if candidate is None or champion is None:
        raise ValueError("the gate compares the candidate with the champion: both scores are needed")
    gain = (candidate - champion) if GATE_METRICS[metric] else (champion - candidate)
    verdict = gain > margin
    return PromotionDecision(verdict, f"candidate {metric} {candidate:.4f} vs champion {champion:.4f}: "
                             f"{'better' if verdict else 'not better'} by more than {margin:g}"
                             + ("" if verdict else " - champion kept"), metric, candidate, champion)


def decide_on_evidence(evidence: Mapping[str, Any], rule: EvidenceRule, *, metric: str = "auc",
                       candidate: float | None = None, champion: float | None = None) -> PromotionDecision:
    """Promote only when every clause holds, each judged on the worst end of its interval (``rule.z``
    standard errors; differences are candidate minus champion, on the same rows):

    - **better** on ``metric`` or on one of ``rule.also_better_on`` (the one-sided error budget split between
      them, Bonferroni): the interval's better end beyond ``rule.margin``;
    - **AUC not worse** overall: the lower end above ``-rule.noninferiority_auc``;
    - **calibration not worse**: the log-loss difference's upper end below ``rule.noninferiority_log_loss``;
    - **AUC not worse on every subgroup** with ``rule.min_subgroup_events`` rows of each outcome: the lower
      end above ``-rule.noninferiority_subgroup_auc`` (smaller subgroups are reported, not tested); where the
      interval is wider than that margin, by ``rule.underpowered_subgroups``: not worse beyond doubt, or held.

    Every clause is returned with its bound and verdict, so the decision can be shown and audited."""
    from scipy.stats import norm

    rows = int(evidence.get("rows", 0))
    better_on = [metric, *(m for m in rule.also_better_on if m != metric and evidence.get(m))]
    z_better = float(norm.isf(norm.sf(rule.z) / len(better_on)))
    tried = [_clause(f"better: {m}", evidence.get(m), z_better, rows, lower=rule.margin if GATE_METRICS[m] else None,
                     upper=None if GATE_METRICS[m] else -rule.margin) for m in better_on]
    best = next((c for c in tried if c["passed"]), tried[0])
    clauses = [{**best, "clause": "better: " + " or ".join(better_on), **({"tried": tried} if len(tried) > 1 else {})},
               _clause("auc not worse", evidence.get("auc"), rule.z, rows, lower=-rule.noninferiority_auc),
               _clause("calibration not worse: log_loss", evidence.get("log_loss"), rule.z, rows,
                       upper=rule.noninferiority_log_loss)]
    clauses += [_clause(f"auc not worse: {group}={label}", found.get("auc"), rule.z, rows,
                        lower=-rule.noninferiority_subgroup_auc, min_events=rule.min_subgroup_events,
                        no_harm_when_underpowered=rule.underpowered_subgroups == "no-harm")
                for group, by_label in sorted((evidence.get("subgroups") or {}).items())
                for label, found in sorted(by_label.items())]
    failed = [c["clause"] for c in clauses if c["passed"] is False]
    verdict = not failed and clauses[0]["passed"] is True
    level = 100 * (1 - 2 * float(norm.sf(z_better)))
    shown = []
    for name in better_on:
        found = evidence.get(name) or {}
        diff, se = float(found.get("diff", float("nan"))), float(found.get("se", float("nan")))
        shown.append(f"{name} {diff:+.4f} [{diff - z_better * se:+.4f}, {diff + z_better * se:+.4f}]")
    summary = f"candidate - champion {'; '.join(shown)} ({level:.1f} %) on {rows} paired rows"
    if verdict:
        tested = sum(c["passed"] is True for c in clauses) - 1
        reason = (f"{summary}: better on {best['clause'].removeprefix('better: ')} with {level:.1f} % confidence "
                  f"and not worse on {tested} other clause(s)")
    else:
        reason = f"{summary}: failed {', '.join(failed) or 'better: ' + metric + ' (not assessable)'} - champion kept"
    return PromotionDecision(verdict, reason, metric, candidate, champion, tuple(clauses))


def _clause(name: str, found: Mapping[str, Any] | None, z: float, rows: int, *, lower: float | None = None,
            upper: float | None = None, min_events: int = 0, no_harm_when_underpowered: bool = False
            ) -> dict[str, Any]:
    """One clause of the evidence rule: the difference's interval (``z`` standard errors) must end above
    ``lower`` or below ``upper``; not assessable without evidence, not tested with too few events. With
    ``no_harm_when_underpowered``, an interval wider than the margin ``-lower`` (which could not end above it
    even at a difference of 0) need only not lie wholly below 0."""
    if not found:
        return {"clause": name, "passed": None, "note": "not assessable on these rows"}
    n = int(found.get("n", rows))
    diff, se = float(found["diff"]), float(found["se"])
    if min_events and "events" in found and min(found["events"], n - found["events"]) < min_events:
        return {"clause": name, "passed": None, "diff": round(diff, 5), "n": n,
                "note": f"not tested: fewer than {min_events} rows of an outcome ({int(found['events'])} events in {n})"}
    if lower is not None and no_harm_when_underpowered and lower < 0 and z * se >= -lower:
        high = diff + z * se
        return {"clause": name, "passed": bool(high >= 0), "diff": round(diff, 5), "ci_low": round(diff - z * se, 5),
                "ci_high": round(high, 5), "must_not_be_below": 0.0, "n": n, "test": "no proven harm",
                "note": f"too few rows to show non-inferiority (half-width {z * se:.3f} >= margin {-lower:g}): "
                        "tested for harm only"}
    if lower is not None:
        low = diff - z * se
        return {"clause": name, "passed": bool(low > lower), "diff": round(diff, 5), "ci_low": round(low, 5),
                "must_exceed": lower, "n": n}
    assert upper is not None
    high = diff + z * se
    return {"clause": name, "passed": bool(high < upper), "diff": round(diff, 5), "ci_high": round(high, 5),
            "must_be_below": upper, "n": n}


def proven_worse(evidence: Mapping[str, Any], rule: EvidenceRule, metric: str = "auc") -> bool:
    """The candidate is worse than the champion on ``metric`` beyond doubt (the interval's better end is on
    the champion's side): more evidence cannot make it better, so an evaluation can stop."""
    found = evidence.get(metric)
    if not found:
        return False
    diff, se = float(found["diff"]), float(found["se"])
    return diff + rule.z * se < 0 if GATE_METRICS[metric] else diff - rule.z * se > 0


def leads(evidence: Mapping[str, Any], rule: EvidenceRule, metric: str = "auc") -> bool:
    """The candidate is ahead of the champion on the point estimate of a metric it may prove itself better on
    (``metric`` or one of ``rule.also_better_on``), proven or not."""
    return any(float((evidence.get(m) or {}).get("diff", 0.0)) * (1 if GATE_METRICS[m] else -1) > 0
               for m in dict.fromkeys((metric, *rule.also_better_on)))


def evidence_metrics(evidence: dict[str, Any] | None) -> dict[str, float]:
    """The paired evidence as MLflow metrics: ``gate.auc_diff`` and its ``_ci_low``/``_ci_high``/``_p``, the
    same for log loss and Brier (candidate minus champion)."""
    out: dict[str, float] = {}
    for metric in PAIRED_METRICS:
        found = (evidence or {}).get(metric)
        if found:
            out.update({f"gate.{metric}_diff": found["diff"], f"gate.{metric}_diff_ci_low": found["ci_low"],
                        f"gate.{metric}_diff_ci_high": found["ci_high"], f"gate.{metric}_diff_p": found["p_value"]})
    return out


def evidence_summary(evidence: dict[str, Any] | None) -> str:
    """One line for a version's tag and an event: each difference with its 95 % interval."""
    parts = []
    for metric in PAIRED_METRICS:
        found = (evidence or {}).get(metric)
        if found:
            parts.append(f"{metric} {found['diff']:+.4f} [{found['ci_low']:+.4f}, {found['ci_high']:+.4f}] "
                         f"p={found['p_value']:.3g}")
    return (f"candidate - champion on {evidence['rows']} paired rows: " + "; ".join(parts)) if parts and evidence \
        else ""


def clauses_summary(clauses: list[dict[str, Any]]) -> str:
    """The evidence rule's clauses in one line: each with its verdict and the interval end it tested."""
    def one(c: dict[str, Any]) -> str:
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[c.get("passed")]
        if "must_not_be_below" in c:
            return f"{c['clause']}: {verdict} (no proven harm: high {c['ci_high']:+.4f} >= {c['must_not_be_below']:+g})"
        if "ci_low" in c:
            return f"{c['clause']}: {verdict} (low {c['ci_low']:+.4f} > {c['must_exceed']:+g})"
        if "ci_high" in c:
            return f"{c['clause']}: {verdict} (high {c['ci_high']:+.4f} < {c['must_be_below']:+g})"
        return f"{c['clause']}: {verdict}"
    return "; ".join(one(c) for c in clauses)


def paired_metric(metric: str) -> str:
    """The gate metric the paired evidence can judge: ``metric`` itself, else the AUC."""
    return metric if metric in PAIRED_METRICS else "auc"


def serve(settings: Settings, version: str, *, deployer: str | None = None, strict: bool = False) -> dict[str, Any]:
    """Serve ``version`` with ``deployer`` (default: the settings' ``serving_deployer()``). A local model server that
    is not running serves the champion when it next starts, so that is not an error (``deferred``). Other failures
    raise when ``strict`` (a change of champion, a pipeline's deploy step), else come back as ``deployed: false``."""
    name = deployer or settings.serving_deployer()
    if name == "local" and not is_healthy(f"{settings.model_server_base_url()}/v2/health/live"):
        return {"backend": name, "model_name": settings.model_name, "version": version, "deployed": False,
                "deferred": True, "changed": False,
                "detail": "the local model server is not running; it serves the champion when it next starts"}
    try:
        result = get_deployer(settings, name).deploy(settings.model_name, version)
    except LearningMachineError as exc:
        if strict:
            raise
        return {"backend": name, "model_name": settings.model_name, "version": version, "deployed": False,
                "changed": False, "detail": f"not deployed: {exc.message}"}
    return {**result.as_dict(), "deployed": True}


def champion_event(before: VersionInfo | None, after: VersionInfo, **detail: Any) -> dict[str, Any]:
    """The event document of a change of champion: from which version to which, and what else is known."""
    return {"from": before.version if before else None, "to": after.version, **detail}


def change_champion(settings: Settings, tracker: Tracker, *, action: Literal["promote", "rollback"],
                    version: str | None, reason: str, by: str, record: Recorder | None = None,
                    deployer: str | None = None, deploy: bool = True) -> Any:
    """Promote ``version`` (a number or an alias) to champion, or roll the champion back (to ``version``
    or to the one it replaced), atomically: the new champion is served first and the alias moves only
    once it serves; if serving fails the alias stays where it was (a ``promotion-failed`` event records
    why, and the error is raised); if moving the alias fails, the previous champion is served again.
    Records the event (``promoted`` or ``rolled-back``, with who, why and what serving did) and returns
    what ``record`` returned (the stored event), else the event's detail. ``deploy=False``: the caller
    serves it itself (a pipeline's deploy step, which moves the alias back when it cannot)."""
    tracker.health()
    model = settings.model_name
    if action == "promote":
        if not version:
            raise ValueError("a promotion names the version to promote")
        before = tracker.alias_version(model, CHAMPION)
        target = tracker.version(model, version)
    else:
        before, target = tracker.rollback_target(model, version)
    kind = "promoted" if action == "promote" else "rolled-back"
    served: dict[str, Any] | None = None
    if deploy:
        try:
            served = serve(settings, target.version, deployer=deployer, strict=True)
        except LearningMachineError as exc:
            failed = {**champion_event(before, target, reason=reason, by=by), "action": action,
                      "error": exc.message, "champion_kept": before.version if before else None}
            if record is not None:
                record("promotion-failed", failed, target.version)
            raise ServiceUnavailableError(
                f"v{target.version} of {model} could not be served ({exc.message}); the champion stays "
                f"{'v' + before.version if before else 'unset'}", detail=failed) from exc
    try:
        after = (tracker.promote(model, target.version, reason=reason) if action == "promote"
                 else tracker.rollback(model, target.version)[1])
    except LearningMachineError:
        if served is not None and served.get("changed") and before is not None:
            serve(settings, before.version, deployer=deployer)  # what serves goes back with the alias
        raise
    detail = champion_event(before, after, reason=reason, by=by)
    if served is not None:
        detail["deployed"] = served
    return record(kind, detail, after.version) if record is not None else detail


# -- approval of a change outside the plan ------------------------------------------------------------------
def awaiting_approval(tracker: Tracker, model: str) -> list[VersionInfo]:
    """The versions held by the change-control plan for a person's decision, newest first."""
    return [v for v in tracker.list_versions(model) if v.tags.get(APPROVAL_TAG) == "awaiting"]


def plan_tags(verdict: Mapping[str, Any] | None, applied: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The version tags of a change-control verdict (:meth:`~learning_machine.lifecycle.plan.PlanVerdict.as_dict`):
    the plan (``applied`` when there was no verdict: a first version), its decision and reason, and
    ``lm.approval=awaiting`` when it holds the version for an admin."""
    verdict = verdict or {}
    plan = verdict.get("plan") or applied or {}
    tags = {PLAN_TAG: f"{plan.get('plan')} {plan.get('version')}", PLAN_DIGEST_TAG: str(plan.get("digest", ""))} \
        if plan else {}
    if verdict:
        tags.update({PLAN_DECISION_TAG: str(verdict.get("decision")), PLAN_REASON_TAG: str(verdict.get("reason"))[:500]})
        if verdict.get("decision") == "awaiting-approval":
            tags[APPROVAL_TAG] = "awaiting"  # an admin approves or rejects it (decide_approval)
    return tags


def hold_for_approval(tracker: Tracker, model: str, version: str, *, verdict: Mapping[str, Any],
                      judged_against: str | None, record: Recorder | None = None) -> dict[str, Any]:
    """Mark ``version`` as waiting for an admin (``lm.approval=awaiting``, with the plan's decision) and
    record an ``awaiting-approval`` event naming the clauses outside the plan."""
    if verdict.get("decision") != "awaiting-approval":
        raise ValueError(f"the plan's decision is {verdict.get('decision')!r}: nothing to hold")
    plan = verdict.get("plan") or {}
    tracker.tag_version(model, version, {**plan_tags(verdict), GATE_CHAMPION_TAG: judged_against or ""})
    outside = [c for c in verdict.get("clauses", []) if c.get("passed") is False]
    detail = {"version": version, "champion": judged_against, "reason": verdict.get("reason"),
              "outside_plan": [c.get("clause") for c in outside], "plan": plan,
              "next": "an admin approves or rejects it (dashboard, POST /v1/models/{version}/approval)"}
    return record("awaiting-approval", detail, version) if record is not None else detail


def decide_approval(settings: Settings, tracker: Tracker, *, version: str, approve: bool, by: str, why: str,
                    record: Recorder | None = None, deployer: str | None = None) -> Any:
    """An admin's decision on a version outside the change-control plan. Approved: it becomes the champion
    through :func:`change_champion` (served first, the event recorded), refused (:class:`ConflictError`) when
    another version became champion after it was judged (it was never compared with the one that serves
    now). Rejected: it stays a registered version that never serves. Either way the version is tagged with
    the decision, who made it and why, and an ``approved`` / ``rejected`` event is recorded."""
    if not why.strip():
        raise BadRequestError("an approval or rejection says why (a reason is required)")
    tracker.health()
    model = settings.model_name
    info = tracker.version(model, version)
    state = info.tags.get(APPROVAL_TAG)
    if state != "awaiting":
        raise ConflictError(f"v{info.version} of {model} is not awaiting approval "
                            f"({'it was ' + state if state else 'the change-control plan did not hold it'})",
                            detail={"version": info.version, "approval": state})
    judged_against = info.tags.get(GATE_CHAMPION_TAG) or None
    current = tracker.alias_version(model, CHAMPION)
    serving = current.version if current else None
    if approve and judged_against != serving:
        against = f"v{judged_against}" if judged_against else "no champion"
        raise ConflictError(f"v{info.version} was judged against {against}, but "
                            f"{'v' + serving if serving else 'no version'} is champion now: it cannot be approved "
                            "(reject it; a new retraining compares with the version that serves)",
                            detail={"version": info.version, "judged_against": judged_against, "champion": serving})
    decision = {"version": info.version, "by": by, "why": why, "champion": serving,
                "plan": info.tags.get(PLAN_TAG), "plan_decision": info.tags.get(PLAN_DECISION_TAG)}
    promoted = None
    if approve:
        promoted = change_champion(settings, tracker, action="promote", version=info.version,
                                   reason=f"approved outside the change-control plan by {by}: {why}", by=by,
                                   record=record, deployer=deployer)
    tracker.tag_version(model, info.version, {APPROVAL_TAG: "approved" if approve else "rejected",
                                              APPROVAL_BY_TAG: by, APPROVAL_REASON_TAG: why[:500],
                                              APPROVAL_AT_TAG: f"{time.time():.0f}"})
    kind = "approved" if approve else "rejected"
    event = record(kind, decision, info.version) if record is not None else decision
    return {"decision": kind, "event": event, **({"promoted": promoted} if promoted is not None else {})}
