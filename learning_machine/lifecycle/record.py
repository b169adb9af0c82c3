"""The change record of a model version: what changed, on which data, by which code, how it compared with the
champion, what was decided under which plan, and what happened to it afterwards.

It has two parts, kept apart so that the stored record never changes:

- the **immutable part** (:func:`build_record`), written once when the version is registered (the pipelines'
  ``register`` step, or :func:`learning_machine.lifecycle.training.train_and_register` for `lm up`'s first model)
  as an artifact of that registration's MLflow run (``change-record/record.json``), with its location and sha256
  as version tags (``lm.change_record``, ``lm.change_record_sha256``). Reading it back (:func:`read_record`)
  checks the digest: a record whose bytes no longer match is reported (:class:`RecordIntegrityError`), never served;
- the **later part** (:func:`rollout`): the approval, the shadow evaluation, when the version began and stopped
  serving, its rollbacks, derived each time from the gateway's append-only events for that version.

The code commit is the git HEAD of the checkout the code runs from, else ``LM_CODE_COMMIT`` (an image built from
a commit); the image is ``LM_IMAGE``. Neither may carry a secret: they are stored as given."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learning_machine.errors import ModelNotFoundError, RecordIntegrityError

if TYPE_CHECKING:
    from learning_machine.registry.tracker import Tracker, VersionInfo
    from learning_machine.settings import Settings

SCHEMA = "learning-machine/change-record@1"
ARTIFACT = "change-record/record.json"
LOCATION_TAG = "lm.change_record"
"""Where the version's record is: ``runs:/<run id>/change-record/record.json``."""
DIGEST_TAG = "lm.change_record_sha256"
"""The sha256 of the record's bytes as written."""
SECTIONS = ("plan", "data", "training", "evaluation", "decision")
"""The immutable record's sections, each present in every record (``None`` inside where a fact does not apply,
e.g. the champion of a first version)."""
# Events that concern a version although they are stored under another (the champion it replaced or rolled back to,
# the champion a shadow challenger ran beside).
LIFECYCLE_KINDS = ("promoted", "rolled-back", "refused", "shadow-ended", "shadow-failed")


# -- the immutable part ------------------------------------------------------------------------------------
def code_provenance(settings: Settings) -> dict[str, Any]:
    """The code commit (git HEAD of the checkout this package runs from, with whether it had uncommitted
    changes; else ``LM_CODE_COMMIT``) and the image (``LM_IMAGE``)."""
    root = Path(__file__).resolve().parents[2]
    commit, dirty, source = "", None, None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False)
        lines = head.stdout.split()
        # Only the checkout this package is: an installed copy may sit inside someone else's repository (a venv).
        if head.returncode == 0 and len(lines) == 2 and Path(lines[0]).resolve() == root:
            commit, source = lines[1], "git"
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10, check=False)
            dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass  # no git here (an installed image): the setting says which commit it was built from
    if not commit and settings.code_commit:
        commit, source = settings.code_commit, "LM_CODE_COMMIT"
    return {"commit": commit or None, "uncommitted_changes": dirty, "source": source, "image": settings.image or None}


def build_record(*, settings: Settings, version: VersionInfo, summary: Mapping[str, Any],
                 candidate_tags: Mapping[str, str], candidate_params: Mapping[str, str],
                 register_run_id: str, manifest: Mapping[str, Any] | None, plan_in_force: Mapping[str, Any] | None,
                 code: Mapping[str, Any]) -> dict[str, Any]:
    """The immutable change record of ``version`` from the evaluate step's summary (``comparison.json``: the gate,
    the paired evidence, both evaluations, and where there was a champion the plan's verdict), the candidate run's
    tags and parameters, its data manifest and the code that ran."""
    gate = dict(summary.get("gate") or {})
    verdict = summary.get("plan") or None
    change = str(summary.get("change") or candidate_tags.get("lm.change") or
                 ("retrain" if candidate_tags.get("lm.step") == "retrain" or candidate_tags.get("lm.continued_from")
                  else "train"))
    candidate = summary.get("candidate") or {}
    champion = summary.get("champion")
    champion_version = str(summary.get("champion_version") or "") or None
    # The plan's verdict where there was a champion to judge against; else what the gate (or `if-first`) decided.
    outcome = str(verdict.get("decision")) if verdict else ("promote" if gate.get("promote") else "keep-champion")
    return {
        "schema": SCHEMA,
        "model": version.name,
        "version": version.version,
        "registered_at": _iso(version.created_at),
        "change": change,
        "plan": {"in_force": dict(plan_in_force) if plan_in_force else None,
                 # The plan the candidate was judged by (none when there was no champion to judge it against).
                 "applied": dict(verdict["plan"]) if verdict and verdict.get("plan") else None},
        "data": {
            "dataset": candidate_params.get("dataset") or candidate_tags.get("lm.dataset"),
            "digest": candidate_params.get("dataset_digest"),
            "source": candidate_params.get("dataset_source"),
            "train_rows": _int(candidate_params.get("train_rows")),
            "test_rows": _int(candidate_params.get("test_rows")),
            "held_out_rows": _int(summary.get("held_out_rows")),
            "manifest": dict(manifest) if manifest else None,
        },
        "training": {
            "run_id": version.run_id, "model_id": version.model_id,
            "kind": candidate_params.get("model_kind") or candidate_tags.get("lm.kind"),
            "mode": candidate_params.get("training_mode") or candidate_tags.get("lm.mode"),
            "params": {k[len("model."):]: v for k, v in sorted(candidate_params.items()) if k.startswith("model.")},
            "data_params": {k[len("data."):]: v for k, v in sorted(candidate_params.items()) if k.startswith("data.")},
            "seed": settings.seed,
            "continued_from": candidate_tags.get("lm.continued_from"),
            "retrain_mode": candidate_tags.get("lm.retrain_mode"),
            "candidates": _json(candidate_tags.get("lm.candidates")),
            "pipeline_run": summary.get("pipeline_run_id") or None,
            "register_run": register_run_id,
            "code": dict(code),
        },
        "evaluation": {
            "held_out_rows": _int(summary.get("held_out_rows")),
            "candidate": {"metrics": candidate.get("metrics") or {}, "subgroups": candidate.get("subgroups") or {},
                          "calibration": candidate.get("calibration") or []},
            "champion": ({"version": champion_version, "metrics": champion.get("metrics") or {},
                          "subgroups": champion.get("subgroups") or {}} if champion else None),
            "evidence": summary.get("evidence") or None,
        },
        "decision": {
            "outcome": outcome,
            "reason": (verdict or {}).get("reason") or gate.get("reason"),
            "gate": {k: gate.get(k) for k in ("policy", "rule", "metric", "margin", "promote", "reason", "clauses",
                                              "noninferiority", "z", "proven_worse") if k in gate},
            "plan": ({k: verdict.get(k) for k in ("decision", "reason", "clauses")} if verdict else None),
            "approval_required": outcome == "awaiting-approval",
        },
    }


def encode(record: Mapping[str, Any]) -> bytes:
    """The record's stored bytes (sorted keys: the same record always gives the same bytes and digest)."""
    return (json.dumps(record, indent=2, sort_keys=True, allow_nan=False, default=str) + "\n").encode()


def write_record(tracker: Tracker, model_name: str, version: str, run_id: str,
                 record: Mapping[str, Any]) -> dict[str, str]:
    """Store the record as an artifact of ``run_id`` and name it, with its digest, in the version's tags.
    A version that already has a record keeps it (:class:`RecordIntegrityError` otherwise: a record is written once)."""
    existing = tracker.version(model_name, version).tags
    if existing.get(LOCATION_TAG):
        raise RecordIntegrityError(f"v{version} of {model_name} already has a change record "
                                   f"({existing[LOCATION_TAG]}); a record is written once")
    data = encode(record)
    tracker.log_bytes(run_id, data, ARTIFACT)
    tags = {LOCATION_TAG: f"runs:/{run_id}/{ARTIFACT}", DIGEST_TAG: hashlib.sha256(data).hexdigest()}
    tracker.tag_version(model_name, version, tags)
    return tags


def record_version(settings: Settings, tracker: Tracker, version: VersionInfo, summary: Mapping[str, Any], *,
                   candidate_run_id: str, register_run_id: str) -> dict[str, str]:
    """Build and write the change record of a version just registered (see :func:`build_record`)."""
    tags, params = tracker.run_tags_and_params(candidate_run_id)
    if not summary.get("candidate"):  # registered without an evaluate step: the candidate's own evaluation
        summary = {**summary, "candidate": tracker.run_json(candidate_run_id, "evaluation/evaluation.json") or {}}
    manifest = summary.get("manifest") or tracker.run_json(candidate_run_id, "data/manifest.json")
    record = build_record(settings=settings, version=version, summary=summary, candidate_tags=tags,
                          candidate_params=params, register_run_id=register_run_id, manifest=manifest,
                          plan_in_force=_plan_in_force(settings, summary,
                                                       params.get("dataset") or tags.get("lm.dataset")),
                          code=code_provenance(settings))
    return write_record(tracker, settings.model_name, version.version, register_run_id, record)


def _plan_in_force(settings: Settings, summary: Mapping[str, Any], dataset: str | None) -> dict[str, str]:
    """The change-control plan in force when the version was registered (name, version, digest): the one the
    evaluate step applied (``plan_applied``) or the caller resolved (``plan_in_force``), else the one the
    settings name now (an evaluation from before plans were applied)."""
    from learning_machine.lifecycle.plan import plan_named

    found = summary.get("plan_in_force") or summary.get("plan_applied")
    if found:
        return {k: str(v) for k, v in dict(found).items()}
    return plan_named(settings, str(dataset or settings.dataset)).identity()


def read_record(tracker: Tracker, model_name: str, ref: str) -> dict[str, Any]:
    """The immutable record of a version (number or alias) with where it is and its verified digest. Raises
    :class:`ModelNotFoundError` for a version without a record (registered before records) and
    :class:`RecordIntegrityError` when the stored bytes do not match the digest recorded when it was written."""
    info = tracker.version(model_name, ref)
    location, digest = info.tags.get(LOCATION_TAG), info.tags.get(DIGEST_TAG)
    if not location or not digest:
        raise ModelNotFoundError(f"v{info.version} of {model_name} has no change record (registered before "
                                 "change records were kept)")
    run_id, _, path = location[len("runs:/"):].partition("/")
    data = tracker.run_bytes(run_id, path)
    if data is None:
        raise RecordIntegrityError(f"the change record of v{info.version} of {model_name} is missing from "
                                   f"{location}", detail={"location": location, "sha256": digest})
    found = hashlib.sha256(data).hexdigest()
    if found != digest:
        raise RecordIntegrityError(
            f"the change record of v{info.version} of {model_name} has changed since it was written: its sha256 is "
            f"{found}, the version records {digest}", detail={"location": location, "sha256": digest, "found": found})
    return {"version": info, "record": json.loads(data), "sha256": digest, "location": location}


# -- the later part, from the events -----------------------------------------------------------------------
def concerns(event: Mapping[str, Any], version: str) -> bool:
    """Whether an event is about ``version``: stored under it, or naming it as the champion replaced, the
    version rolled back, or the challenger of a shadow."""
    detail = event.get("detail") or {}
    return (str(event.get("model_version")) == version or str(detail.get("from")) == version
            or str(detail.get("challenger")) == version)


def rollout(version: VersionInfo, events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What happened to ``version`` after it was registered, from the gateway's events (oldest first): the approval
    (``awaiting-approval``, ``approved``, ``rejected``), the shadow evaluation, each period it served (from a
    promotion or a rollback to it, until another version replaced it or it was rolled back), the rollbacks, and
    the plan's rollback rule (its verdict, tag ``lm.rollout``; ``rollback-recommended`` events)."""
    v = version.version
    mine = [e for e in sorted(events, key=lambda e: int(e.get("id") or 0)) if concerns(e, v)]
    approval: dict[str, Any] = {"state": version.tags.get("lm.approval") or None, "by": None, "why": None, "at": None}
    shadow: dict[str, Any] | None = None
    serving: list[dict[str, Any]] = []
    rollbacks: list[dict[str, Any]] = []
    refusals: list[dict[str, Any]] = []
    recommended: list[dict[str, Any]] = []
    for e in mine:
        kind, detail, at = str(e.get("kind")), dict(e.get("detail") or {}), e.get("created_at")
        if kind in ("awaiting-approval", "approved", "rejected") and str(e.get("model_version")) == v:
            state = {"awaiting-approval": "awaiting"}.get(kind, kind)
            approval = {"state": state, "by": detail.get("by"), "why": detail.get("why") or detail.get("reason"),
                        "at": at}
        elif kind == "rollback-recommended" and str(e.get("model_version")) == v:
            recommended.append({"at": at, "why": detail.get("why")})
        elif kind == "shadow-started" and str(e.get("model_version")) == v:
            shadow = {"started_at": at, "champion": detail.get("champion"), "looks": [], "ended": None}
        elif kind == "shadow-look" and str(e.get("model_version")) == v:
            shadow = shadow or {"started_at": None, "champion": None, "looks": [], "ended": None}
            shadow["looks"].append({"at": at, **{k: detail.get(k) for k in
                                                 ("look", "rows", "promote", "reason", "evidence", "clauses")}})
        elif kind in ("refused", "shadow-ended", "shadow-failed") and str(detail.get("challenger")) == v:
            ended = {"kind": kind, "at": at, "why": detail.get("why"), "by": detail.get("by")}
            if shadow is not None:
                shadow["ended"] = ended
            if kind == "refused":
                refusals.append(ended)
        elif kind in ("promoted", "rolled-back"):
            if str(detail.get("to")) == v and str(e.get("model_version")) == v:
                _close(serving, at, "replaced")
                serving.append({"from": at, "until": None, "how": "promoted" if kind == "promoted" else "rolled back to",
                                "by": detail.get("by"), "reason": detail.get("reason"), "replaced": detail.get("from"),
                                "ended_by": None})
                if kind == "promoted" and shadow is not None and shadow.get("ended") is None:
                    shadow["ended"] = {"kind": "promoted", "at": at, "why": detail.get("reason"),
                                       "by": detail.get("by")}
            elif str(detail.get("from")) == v:
                how = "rolled back" if kind == "rolled-back" else f"replaced by v{detail.get('to')}"
                if not serving:  # it served before the events began (e.g. `lm up`'s first model)
                    serving.append({"from": _promoted_at(version), "until": None, "how": "promoted",
                                    "by": None, "reason": version.tags.get("lm.promotion_reason"),
                                    "replaced": version.tags.get("lm.previous_champion"), "ended_by": None})
                _close(serving, at, how)
                if kind == "rolled-back":
                    rollbacks.append({"at": at, "to": detail.get("to"), "by": detail.get("by"),
                                      "reason": detail.get("reason")})
    if not serving and version.tags.get("lm.promoted_at"):
        # Promoted where no gateway recorded it (`lm up`'s first model, `lm train --promote`): the registry says when.
        serving.append({"from": _promoted_at(version), "until": None, "how": "promoted", "by": None,
                        "reason": version.tags.get("lm.promotion_reason"),
                        "replaced": version.tags.get("lm.previous_champion"), "ended_by": None})
    return {"serving_now": "champion" in version.aliases, "aliases": list(version.aliases),
            "approval": approval, "shadow": shadow, "serving": serving, "rollbacks": rollbacks, "refused": refusals,
            # The plan's rollback rule, judged once on the version's first labelled predictions (lm.rollout).
            "rollout_check": version.tags.get("lm.rollout") or None, "rollback_recommended": recommended,
            "events": [int(e["id"]) for e in mine if e.get("id") is not None]}


def _close(serving: list[dict[str, Any]], at: Any, how: str) -> None:
    if serving and serving[-1]["until"] is None:
        serving[-1]["until"], serving[-1]["ended_by"] = at, how


def _promoted_at(version: VersionInfo) -> str | None:
    raw = version.tags.get("lm.promoted_at")
    try:
        return _iso(float(raw)) if raw else None
    except ValueError:
        return None


def missing(record: Mapping[str, Any]) -> list[str]:
    """The facts a complete record has and this one lacks (a record of a first version has no champion, no
    paired evidence and no plan verdict: those are not missing)."""
    out = [s for s in SECTIONS if not isinstance(record.get(s), Mapping)]
    data, training = record.get("data") or {}, record.get("training") or {}
    evaluation, decision = record.get("evaluation") or {}, record.get("decision") or {}
    checks = {"data.digest": data.get("digest"), "data.train_rows": data.get("train_rows"),
              "data.manifest": data.get("manifest"), "training.run_id": training.get("run_id"),
              "training.code.commit": (training.get("code") or {}).get("commit"),
              "training.seed": training.get("seed"), "evaluation.candidate.metrics":
              (evaluation.get("candidate") or {}).get("metrics"), "decision.outcome": decision.get("outcome"),
              "plan.in_force": (record.get("plan") or {}).get("in_force")}
    if (evaluation.get("champion") or None) is not None:
        checks.update({"evaluation.evidence": evaluation.get("evidence"), "decision.plan": decision.get("plan")})
    return out + [k for k, v in checks.items() if v in (None, "", {}, [])]


def _iso(seconds: float | None) -> str | None:
    return datetime.fromtimestamp(seconds, UTC).isoformat() if seconds else None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _json(value: str | None) -> Any:
    try:
        return json.loads(value) if value else None
    except ValueError:
        return value
