"""The release steps of the training pipelines as plain functions: register the candidate, promote it
(through the lifecycle's change of champion) and deploy it. Kept apart from the data and model steps
(:mod:`.steps`) so that their tasks start without pandas, scikit-learn or XGBoost: each pipeline task
is a fresh interpreter, and imports are most of its cost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from learning_machine.errors import ConflictError, LearningMachineError
from learning_machine.lifecycle.promotion import (
    change_champion,
    clauses_summary,
    evidence_summary,
    plan_tags,
    serve,
)
from learning_machine.lifecycle.training import register_candidate
from learning_machine.registry.names import (
    CHAMPION,
    CHANGE_TAG,
    GATE_CHAMPION_TAG,
    PREVIOUS_TAG,
    RECALIBRATION_TAG,
)
from learning_machine.registry.runs import step_run
from learning_machine.registry.tracker import tracker_for
from learning_machine.settings import Settings

PROVEN_WORSE_TAG = "lm.gate_proven_worse"
"""``true`` when the gate's paired evidence shows the candidate worse than the champion beyond doubt."""


def register(settings: Settings, candidate_run_id: str, metrics_path: str | Path | None = None, *,
             parent_run_id: str = "") -> str:
    """Register the candidate's model as a new version (alias ``challenger``) tagged with its held-out
    metrics and the gate's verdict; returns the version number."""
    tracker = tracker_for(settings)
    with step_run(settings, tracker, "register", parent_run_id) as run_id:
        summary = json.loads(Path(metrics_path).read_text()) if metrics_path else {}
        metrics = (summary.get("candidate") or {}).get("metrics") or {}
        gate = summary.get("gate") or {}
        tags = {"lm.pipeline_run": parent_run_id} if parent_run_id else {}
        if gate:
            tags["lm.gate"] = str(gate.get("reason", ""))[:500]
        if summary.get("evidence"):
            tags["lm.gate_evidence"] = evidence_summary(summary["evidence"])[:500]
        if gate.get("clauses"):
            tags["lm.gate_clauses"] = clauses_summary(gate["clauses"])[:4000]
        if "proven_worse" in gate:
            tags[PROVEN_WORSE_TAG] = "true" if gate["proven_worse"] else "false"  # the loop does not shadow it
        if "champion_version" in summary:
            tags[GATE_CHAMPION_TAG] = str(summary["champion_version"] or "")  # the promote step checks it still serves
        tags.update(plan_tags(summary.get("plan"), summary.get("plan_applied")))
        run_tags, run_params = tracker.run_tags_and_params(candidate_run_id)
        for key in ("lm.dataset", "lm.kind", "lm.mode", "lm.continued_from", "lm.retrain_mode", "lm.candidates",
                    CHANGE_TAG, RECALIBRATION_TAG, "lm.recalibrated_from"):
            if key in run_tags:
                tags[key] = run_tags[key]
        if "dataset_digest" in run_params:
            tags["lm.dataset_digest"] = run_params["dataset_digest"]
        # With its change record, written once, in this step's run (lm.change_record, lm.change_record_sha256).
        info = register_candidate(settings, tracker, candidate_run_id, metrics, tags,
                                  summary={**summary, "pipeline_run_id": parent_run_id or None}, register_run_id=run_id)
        tracker.log_params(run_id, {"model_name": settings.model_name, "version": info.version,
                                    "candidate_run_id": candidate_run_id})
    print(f"registered {settings.model_name} v{info.version} as challenger")
    return info.version


def promote(settings: Settings, version: str, *, parent_run_id: str = "", reason: str = "") -> str:
    """Make ``version`` the champion (the gate passed), through the lifecycle's change of champion; the
    event is recorded on the step's run (``promotion/event.json``) and the pipeline's deploy step serves it.
    Refused (:class:`ConflictError`) when another version became champion after the gate judged this one
    against the champion of that moment (a shadow challenger promoted meanwhile): it was never compared with
    the version that serves now."""
    tracker = tracker_for(settings)
    judged_against = tracker.version(settings.model_name, version).tags.get(GATE_CHAMPION_TAG)
    current = tracker.alias_version(settings.model_name, CHAMPION)
    if judged_against is not None and (current.version if current else "") != judged_against:
        raise ConflictError(f"v{version} of {settings.model_name} was judged against "
                            f"{'v' + judged_against if judged_against else 'no champion'}, but "
                            f"{'v' + current.version if current else 'no version'} is champion now: not promoted "
                            "(a new retraining compares with the version that serves)")
    with step_run(settings, tracker, "promote", parent_run_id) as run_id:
        def record(kind: str, detail: dict[str, Any], at: str | None) -> dict[str, Any]:
            tracker.log_params(run_id, {"model_name": settings.model_name, "version": at,
                                        "previous_champion": detail["from"] or ""})
            tracker.log_text(run_id, json.dumps({"kind": kind, **detail}, indent=2), "promotion/event.json")
            return detail

        detail = change_champion(settings, tracker, action="promote", version=version, deploy=False,
                                 reason=reason or "passed the pipeline gate", by="pipeline", record=record)
    print(f"promoted {settings.model_name} v{detail['to']} to champion")
    return str(detail["to"])


def deploy(settings: Settings, version: str, *, parent_run_id: str = "") -> dict[str, Any]:
    """Serve ``version`` with the serving deployer (``LM_DEPLOYER``, or the local model server `lm up` manages;
    ``none`` logs and does nothing). A failed deployment fails the step and, when the promote step had made
    ``version`` the champion, moves the alias back: what the registry calls the champion is what serves."""
    tracker = tracker_for(settings)
    with step_run(settings, tracker, "deploy", parent_run_id) as run_id:
        try:
            result = serve(settings, version, strict=True)
        except LearningMachineError:
            champion = tracker.alias_version(settings.model_name, CHAMPION)
            if champion is not None and champion.version == version and champion.tags.get(PREVIOUS_TAG):
                tracker.rollback(settings.model_name)
                print(f"deploy failed: champion moved back to v{champion.tags[PREVIOUS_TAG]}")
            raise
        tracker.log_params(run_id, {"deployer": result["backend"], "model_name": result["model_name"],
                                    "version": result["version"], "changed": result["changed"],
                                    "detail": str(result["detail"])[:500]})
    print(f"deploy ({result['backend']}): {result['detail'] or 'done'}")
    return result
