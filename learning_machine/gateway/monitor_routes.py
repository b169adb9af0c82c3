"""The monitor's side of the API: feeds of predictions to assess, where it writes its results and the
learning loop's events, and its own durable state (feed cursor, handled requests, cooldown), so a
restarted or rescheduled monitor resumes where it stopped. Feeds: data-scientist, admin or monitor tokens;
writes: monitor or admin tokens."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from learning_machine.errors import PayloadTooLargeError, PermissionDeniedError
from learning_machine.gateway.routes import Ctx, Feeds, Loop
from learning_machine.gateway.schemas import In, JsonObject
from learning_machine.store import feeds, repository
from learning_machine.store.tokens import Principal

router = APIRouter(prefix="/v1", tags=["monitoring"])


class MonitoringResultIn(In):
    kind: Literal["drift", "quality", "performance"]
    metric: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    value: float | None = None
    threshold: float | None = None
    alert: bool = False
    feature: str | None = Field(None, max_length=200, pattern=r"^[^\x00-\x1f]*$")
    window_rows: int | None = Field(None, ge=0, le=10**9)
    window_start: datetime | None = None
    window_end: datetime | None = None
    model_version: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    details: JsonObject = Field(default_factory=dict)


class MonitoringBatchIn(In):
    results: list[MonitoringResultIn] = Field(min_length=1, max_length=2000)


class EventIn(In):
    kind: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9-]*$")
    detail: JsonObject = Field(default_factory=dict)
    model_version: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")


@router.get("/feed/predictions", summary="Predictions in arrival order with inputs and outcomes (for the monitor)")
def feed_predictions(c: Ctx, _: Feeds, after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
                     limit: Annotated[int, Query(ge=1, le=5000)] = 1000) -> Any:
    return feeds.predictions_after(c.db, after_id, limit)


@router.get("/feed/labelled", summary="The most recent predictions whose outcome has arrived")
def feed_labelled(c: Ctx, _: Feeds, limit: Annotated[int, Query(ge=1, le=20000)] = 500,
                  model_version: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")] = None,
                  ) -> Any:
    return feeds.labelled_predictions(c.db, limit, model_version)


@router.post("/monitoring", status_code=201, summary="Store the monitor's results of one window")
def post_monitoring(c: Ctx, _: Loop, body: MonitoringBatchIn) -> Any:
    stored = repository.add_monitoring_results(c.db, [r.model_dump() for r in body.results])
    return {"stored": stored}


class ShadowScoreIn(In):
    prediction_id: int = Field(ge=1, le=2**62)
    probability: float = Field(ge=0, le=1)


class ShadowBatchIn(In):
    model_name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
    model_version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    items: list[ShadowScoreIn] = Field(min_length=1, max_length=5000)


@router.post("/shadow/predictions", status_code=201,
             summary="Store a shadow challenger's scores of answered records (never shown to clinicians)")
def post_shadow(c: Ctx, _: Loop, body: ShadowBatchIn) -> Any:
    """The learning loop's shadow evaluation: a registered challenger scores every record the champion
    answered; its scores are kept here, apart from the predictions, and paired with outcomes as they arrive.
    Idempotent per prediction and version. Monitor or admin tokens only."""
    stored = repository.add_shadow_predictions(c.db, body.model_name, body.model_version,
                                               [(i.prediction_id, i.probability) for i in body.items])
    return {"stored": stored, "received": len(body.items)}


@router.get("/shadow/predictions", summary="A shadow challenger's scores (data scientists, admins, the monitor)")
def get_shadow(c: Ctx, _: Feeds,
               model_version: Annotated[str, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")],
               after_prediction_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
               limit: Annotated[int, Query(ge=1, le=5000)] = 1000) -> Any:
    items = repository.shadow_predictions(c.db, model_version, after_prediction_id=after_prediction_id,
                                          limit=limit)
    return {"items": items, "next_after_prediction_id": items[-1]["prediction_id"] if items else after_prediction_id}


# Events only their own routes create, with the caller recorded: a retraining request (POST /v1/retrain,
# admin) and an outcome correction (POST /v1/outcomes?overwrite=true). Nobody may forge them here.
ROUTE_ONLY_EVENTS = {"retrain-requested": "POST /v1/retrain", "outcome-corrected": "POST /v1/outcomes?overwrite=true"}


def _loop_event(body: EventIn, who: Principal) -> dict[str, Any]:
    """An event the loop may record, with who recorded it; control events only their own routes make."""
    if body.kind in ROUTE_ONLY_EVENTS:
        raise PermissionDeniedError(f"a {body.kind!r} event is made only by {ROUTE_ONLY_EVENTS[body.kind]}, "
                                    "which records who asked", detail={"kind": body.kind, "role": who.role})
    return {"kind": body.kind, "detail": {**body.detail, "recorded_by": who.name}, "model_version": body.model_version}


@router.post("/events", status_code=201, summary="Record a learning-loop event (fired, started, promoted...)")
def post_event(c: Ctx, who: Loop, body: EventIn) -> Any:
    """The learning loop's (and `lm models`') record of what it did. Monitor or admin tokens only."""
    event = _loop_event(body, who)
    return repository.add_event(c.db, event["kind"], event["detail"], event["model_version"])


# The state is a cursor and a few summaries, never raw rows: a bound keeps it that way.
MAX_STATE_BYTES = 256_000
StateName = Annotated[str, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$",
                                 description="Which monitor (one row per monitor).")]


class MonitorStateIn(In):
    version: int | None = Field(ge=0, le=2**62, description="The version this state was derived from (as read); null when "
                                            "none was saved yet. A stale version is refused with 409.")
    state: JsonObject
    results: list[MonitoringResultIn] = Field(default_factory=list, max_length=20_000,
                                              description="The step's monitoring results, stored with the state.")
    events: list[EventIn] = Field(default_factory=list, max_length=200,
                                  description="The step's loop events, stored with the state.")


@router.get("/monitor/state", summary="The monitor's saved state (cursor, handled requests, cooldown)")
def get_monitor_state(c: Ctx, _: Loop, name: StateName = "monitor") -> Any:
    """The state and its version; ``{"state": null, "version": null}`` when none was saved yet."""
    found = repository.monitor_state(c.db, name)
    return found or {"name": name, "state": None, "version": None, "updated_at": None}


@router.put("/monitor/state", summary="Save the monitor's state with the step's results and events (atomic)")
def put_monitor_state(c: Ctx, who: Loop, body: MonitorStateIn, name: StateName = "monitor") -> Any:
    """Optimistic concurrency: the save succeeds only if the stored version is still ``version``, and the
    results and events are stored in the same transaction (a step's outputs commit with its cursor)."""
    size = len(json.dumps(body.state, default=str))
    if size > MAX_STATE_BYTES:
        raise PayloadTooLargeError(f"the monitor state is {size:,} bytes; at most {MAX_STATE_BYTES:,} "
                                   "(it holds cursors and summaries, not rows)")
    events = [_loop_event(e, who) for e in body.events]
    return repository.save_monitor_state(c.db, name, body.state, version=body.version,
                                         results=[r.model_dump() for r in body.results], events=events)
