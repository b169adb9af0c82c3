"""Routes the dashboard needs beyond the history: who am I (`GET /v1/whoami`), the serving version's
model facts (`GET /v1/model-card`), each version's change record and model-facts label
(`GET /v1/models/{version}/record`, `/label`, `/label/diff`), and the admin's lifecycle actions (promote, roll back, request a
retraining). Thin adapters: a change of champion is :func:`learning_machine.lifecycle.promotion.change_champion`
(move the alias, serve, record the event), the same function `lm models promote/rollback` calls."""

from __future__ import annotations

import threading
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse
from pydantic import Field

from learning_machine.errors import NotFoundError, ServiceUnavailableError
from learning_machine.gateway.auth import ADMINISTRATION, CLINICAL, SCIENCE, require
from learning_machine.gateway.routes import Ctx
from learning_machine.gateway.schemas import In
from learning_machine.gateway.service import GatewayContext
from learning_machine.lifecycle.label import diff, label, to_html, to_markdown
from learning_machine.lifecycle.promotion import awaiting_approval, change_champion, decide_approval
from learning_machine.lifecycle.record import LIFECYCLE_KINDS, missing, read_record, rollout
from learning_machine.store import repository
from learning_machine.store.tokens import Principal

router = APIRouter(prefix="/v1")
VERSION = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # a version number or an alias (MLflow's own rule for aliases)
TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"  # free text: any printable text, no control characters

Clinical = Annotated[Principal, Depends(require(CLINICAL))]
Admin = Annotated[Principal, Depends(require(ADMINISTRATION))]
Science = Annotated[Principal, Depends(require(SCIENCE))]

# Model facts per version: a registered version never changes, so its card is read from MLflow once.
_cards: dict[tuple[str, str, str], dict[str, Any]] = {}
_cards_lock = threading.Lock()


class PromoteIn(In):
    version: str = Field(min_length=1, max_length=64, pattern=VERSION,
                         description="Version number or alias (challenger).")
    reason: str = Field("manual (dashboard)", max_length=500, pattern=TEXT)


class RollbackIn(In):
    to_version: str | None = Field(None, max_length=64, pattern=VERSION,
                                   description="Default: the version the champion replaced.")


class ApprovalIn(In):
    decision: Literal["approve", "reject"] = Field(description="approve: the version becomes the champion and "
                                                   "serves; reject: it never serves.")
    reason: str = Field(min_length=3, max_length=500, pattern=TEXT,
                        description="Why (recorded on the version with the caller's name).")


class RetrainIn(In):
    reason: str = Field("manual (dashboard)", max_length=500, pattern=TEXT)


@router.get("/whoami", tags=["operations"], summary="The calling token's name and role")
def whoami(request: Request, _: Clinical) -> Any:
    principal: Principal = request.state.principal
    return {"name": principal.name, "role": principal.role}


@router.get("/model-card", tags=["models"], summary="Model facts of a version (default: the champion)")
def model_card(c: Ctx, _: Clinical,
               version: Annotated[str, Query(max_length=64, pattern=VERSION, description="Number or alias.")]
               = "champion") -> Any:
    tracker = c.tracker()
    tracker.health()
    info = tracker.version(c.model_name, version)
    current = tracker.version(c.model_name, info.version)  # aliases move; the rest of the card does not
    return {**_card(c, info), "aliases": current.aliases}


def _card(c: GatewayContext, info: Any) -> dict[str, Any]:
    key = (c.settings.tracking_uri, c.model_name, info.version)
    with _cards_lock:
        cached = _cards.get(key)
    if cached is None:
        cached = _build_card(c, info)
        with _cards_lock:
            _cards[key] = cached
    return cached


# -- the change record and the model-facts label of a version ----------------------------------------------
Ref = Annotated[str, Path(max_length=64, pattern=VERSION, description="Version number or alias (champion).")]
LabelFormat = Literal["json", "markdown", "html"]


def _record(c: GatewayContext, version: str) -> dict[str, Any]:
    """The version's verified immutable record and, from the events, what happened to it since."""
    tracker = c.tracker()
    tracker.health()
    found = read_record(tracker, c.model_name, version)
    info = found["version"]
    events = repository.version_events(c.db, info.version, LIFECYCLE_KINDS)
    return {"model": c.model_name, "version": info.version, "location": found["location"],
            "sha256": found["sha256"], "verified": True, "missing": missing(found["record"]),
            "record": found["record"], "rollout": rollout(info, events), "_info": info}


def _label(c: GatewayContext, version: str) -> dict[str, Any]:
    found = _record(c, version)
    return label(found["record"], _card(c, found["_info"]), found["rollout"], sha256=found["sha256"])


@router.get("/models/{version}/record", tags=["models"],
            summary="A version's change record: the immutable part (digest verified) and its rollout since")
def change_record(c: Ctx, _: Clinical, version: Ref) -> Any:
    found = _record(c, version)
    found.pop("_info")
    return found


@router.get("/models/{version}/label", tags=["models"], summary="A version's model-facts label (JSON, Markdown, HTML)",
            responses={200: {"content": {"text/markdown": {}, "text/html": {}}}})
def model_label(c: Ctx, _: Clinical, version: Ref, format: LabelFormat = "json") -> Any:
    facts = _label(c, version)
    if format == "markdown":
        return PlainTextResponse(to_markdown(facts), media_type="text/markdown; charset=utf-8")
    if format == "html":
        return HTMLResponse(to_html(facts))
    return facts


@router.get("/models/{version}/label/diff", tags=["models"],
            summary="What changed in the label from another version (default: the one it was compared with, "
                    "else the version before it)")
def label_diff(c: Ctx, _: Clinical, version: Ref,
               against: Annotated[str | None, Query(max_length=64, pattern=VERSION)] = None) -> Any:
    new = _label(c, version)
    previous = against or _previous(c, new)
    if previous is None:
        raise NotFoundError(f"v{new['version']} of {c.model_name} is the first version: there is nothing to compare "
                            "its label with")
    old = _label(c, previous)
    return {**diff(old, new), "old": old, "new": new}


def _previous(c: GatewayContext, facts: dict[str, Any]) -> str | None:
    """The champion a version was compared with, else the newest version registered before it."""
    versus = (facts.get("validation") or {}).get("against champion") or {}
    if versus.get("champion"):
        return str(versus["champion"])
    number = int(facts["version"])
    older = [int(v.version) for v in c.tracker().list_versions(c.model_name) if int(v.version) < number]
    return str(max(older)) if older else None


def _build_card(c: GatewayContext, info: Any) -> dict[str, Any]:
    """The facts of one version: its run's parameters and evaluation (overall and per subgroup), the
    dataset spec (intended use, features) and the training reference's ranges per feature."""
    from learning_machine.model.drift import REFERENCE_FILE

    tracker = c.tracker()
    params = tracker.run_tags_and_params(info.run_id)[1] if info.run_id else {}
    evaluation: dict[str, Any] = (tracker.run_json(info.run_id, "evaluation/evaluation.json") or {}
                                  if info.run_id else {})  # a version logged without an evaluation still has a card
    frame = tracker.version_frame(info, REFERENCE_FILE)  # older versions have no reference: the card says so
    reference = _reference_ranges(c, frame) if frame is not None else {}
    spec = c.spec
    return {
        "model": c.model_name, "version": info.version, "run_id": info.run_id, "created_at": info.created_at,
        "source": info.source, "tags": info.tags, "kind": params.get("model_kind", info.tags.get("lm.kind")),
        "dataset": {"name": params.get("dataset", info.tags.get("lm.dataset")), "digest": params.get("dataset_digest"),
                    "source": params.get("dataset_source"), "train_rows": params.get("train_rows"),
                    "test_rows": params.get("test_rows"), "mode": params.get("training_mode")},
        "metrics": evaluation.get("metrics") or info.metrics,
        "subgroups": evaluation.get("subgroups", {}),
        "calibration": evaluation.get("calibration", []),
        "intended_use": spec.intended_use or spec.description,
        "target": {"name": spec.target.name, "description": spec.target.description},
        "features": [{"name": f.name, "description": f.description, "unit": f.unit, "type": str(f.type),
                      "range": list(f.range) if f.range else None,
                      "categories": list(f.categories) if f.categories else None,
                      "reference": reference.get(f.name)} for f in spec.features],
        "tracking_uri": c.settings.tracking_uri,
    }


def _reference_ranges(c: GatewayContext, frame: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in c.spec.feature_names:
        if name not in frame:
            continue
        column = frame[name]
        if name in c.spec.numeric_features:
            q = column.astype(float).quantile([0.05, 0.25, 0.5, 0.75, 0.95])
            out[name] = {"p5": float(q[0.05]), "p25": float(q[0.25]), "median": float(q[0.5]),
                         "p75": float(q[0.75]), "p95": float(q[0.95]), "n": int(column.notna().sum())}
        else:
            shares = column.dropna().astype(str).value_counts(normalize=True)
            out[name] = {"shares": {str(k): float(v) for k, v in shares.items()}, "n": int(column.notna().sum())}
    return out


@router.post("/models/promote", tags=["models"], summary="Make a version the champion and serve it (admin)")
def promote(request: Request, c: Ctx, _: Admin, body: PromoteIn) -> Any:
    return change_champion(c.settings, c.tracker(), action="promote", version=body.version, reason=body.reason,
                           by=request.state.principal.name, record=partial(repository.add_event, c.db))


@router.post("/models/rollback", tags=["models"], summary="Put the previous champion back and serve it (admin)")
def rollback(request: Request, c: Ctx, _: Admin, body: RollbackIn) -> Any:
    return change_champion(c.settings, c.tracker(), action="rollback", version=body.to_version,
                           reason="rollback", by=request.state.principal.name, record=partial(repository.add_event, c.db))


@router.get("/models/awaiting-approval", tags=["models"],
            summary="Versions the change-control plan held for an admin's decision")
def awaiting(c: Ctx, _: Science) -> Any:
    return [v.as_dict() for v in awaiting_approval(c.tracker(), c.model_name)]


@router.post("/models/{version}/approval", tags=["models"],
             summary="Approve or reject a version held by the change-control plan (admin)")
def approval(request: Request, c: Ctx, _: Admin, body: ApprovalIn,
             version: Annotated[str, Path(max_length=64, pattern=r"^[0-9]+$", description="Version number.")]) -> Any:
    """Approve: the version becomes the champion through the same change of champion as a promotion (served
    first, the `promoted` event recorded), then an `approved` event with who and why. Reject: a `rejected`
    event. 409 when the version is not awaiting approval, or when another version became champion after it
    was judged."""
    return decide_approval(c.settings, c.tracker(), version=version, approve=body.decision == "approve",
                           by=request.state.principal.name, why=body.reason, record=partial(repository.add_event, c.db))


@router.post("/retrain", tags=["models"], status_code=202, summary="Ask the learning loop for a retraining (admin)")
def retrain(request: Request, c: Ctx, _: Admin, body: RetrainIn) -> Any:
    """Records a `retrain-requested` event. The gateway does not train: the monitor owns retraining
    (its policy, cooldown and pipeline runner) and acts on the request."""
    try:
        champion = c.tracker().alias_version(c.model_name, "champion")
    except ServiceUnavailableError:
        champion = None
    return repository.add_event(c.db, "retrain-requested", {"reason": body.reason, "by": request.state.principal.name},
                                champion.version if champion else None)
