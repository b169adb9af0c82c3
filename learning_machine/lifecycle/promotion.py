"""What serves, decided and changed in one place: the promotion rule (:func:`decide`), serving a version
through the configured deployer (:func:`serve`), and a change of champion (:func:`change_champion`:
move the alias, serve, record the event) that the CLI, the gateway's admin routes and the pipelines'
promote and deploy steps all go through. The learning loop records a pipeline's promotion with
:func:`champion_event`, the same event document."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from learning_machine.deployers import get_deployer
from learning_machine.embedded.processes import is_healthy
from learning_machine.errors import LearningMachineError, ServiceUnavailableError, UnknownNameError
from learning_machine.registry.names import CHAMPION
from learning_machine.registry.tracker import Tracker, VersionInfo
from learning_machine.settings import Settings

# Metrics the gate may compare, and whether higher is better.
GATE_METRICS: dict[str, bool] = {"auc": True, "accuracy": True, "f1": True, "brier": False, "log_loss": False,
                                 "ece": False}
# gate: compare with the champion on the same held-out rows; if-first: only when there is no champion.
PROMOTE_POLICIES = ("gate", "always", "never", "if-first")

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


def check_policy(policy: str, metric: str = "auc") -> None:
    """Fail with the valid names for an unknown promotion policy or gate metric."""
    if policy not in PROMOTE_POLICIES:
        raise UnknownNameError("promotion policy", policy, list(PROMOTE_POLICIES))
    if metric not in GATE_METRICS:
        raise UnknownNameError("gate metric", metric, list(GATE_METRICS))


def decide(policy: str, *, has_champion: bool, metric: str = "auc", margin: float = 0.0,
           candidate: float | None = None, champion: float | None = None) -> PromotionDecision:
    """The one promotion rule. ``always``/``never`` say it all; with no champion the candidate becomes the
    first; ``if-first`` keeps an existing champion; ``gate`` promotes only a candidate better than the
    champion by more than ``margin`` in ``metric``, both scored on the same held-out rows."""
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
    if candidate is None or champion is None:
        raise ValueError("the gate compares the candidate with the champion: both scores are needed")
    gain = (candidate - champion) if GATE_METRICS[metric] else (champion - candidate)
    verdict = gain > margin
    return PromotionDecision(verdict, f"candidate {metric} {candidate:.4f} vs champion {champion:.4f}: "
                             f"{'better' if verdict else 'not better'} by more than {margin:g}"
                             + ("" if verdict else " - champion kept"), metric, candidate, champion)


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
