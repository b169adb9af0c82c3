"""The /v1 routes: thin adapters from HTTP to :mod:`learning_machine.gateway.service` and the store."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse
from pydantic import BaseModel, ValidationError

from learning_machine.errors import BadRequestError, PermissionDeniedError
from learning_machine.gateway import service
from learning_machine.gateway.auth import CLINICAL, FEEDS, LOOP, SCIENCE, require
from learning_machine.gateway.schemas import (
    PREDICTION_EXAMPLES,
    BatchPredictionOut,
    ExplanationIn,
    ExplanationOut,
    OutcomeIn,
    OutcomeOut,
    PageOut,
    PredictionOut,
    with_record_id,
)
from learning_machine.gateway.service import GatewayContext
from learning_machine.store import repository
from learning_machine.store.tokens import Principal

router = APIRouter(prefix="/v1")

Clinical = Annotated[Principal, Depends(require(CLINICAL))]
Science = Annotated[Principal, Depends(require(SCIENCE))]
Feeds = Annotated[Principal, Depends(require(FEEDS))]
Loop = Annotated[Principal, Depends(require(LOOP))]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000, description="Rows to skip.")]
Since = Annotated[datetime | None, Query(description="Only rows at or after this time (ISO 8601).")]
Name = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
StoredId = Annotated[str, Path(min_length=1, max_length=200, description="A stored record's id.")]
M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], payload: Any, c: GatewayContext) -> M:
    """A JSON body as ``model``, the dataset's own id field accepted for ``record_id``; a body that does not
    fit is a 422 listing every problem, like any other."""
    try:
        return model.model_validate(with_record_id(payload, c.spec.record_id.name))
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc
    except ValueError as exc:
        raise BadRequestError(str(exc)) from exc


async def ctx(request: Request) -> GatewayContext:
    # async: no I/O here, and a sync dependency would cost a thread-pool hop on every request.
    context: GatewayContext = request.app.state.ctx
    return context


Ctx = Annotated[GatewayContext, Depends(ctx)]


@router.post("/predictions", response_model=PredictionOut | BatchPredictionOut, tags=["predictions"],
             summary="Predict on one record or a batch",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"type": "object"}, "examples": PREDICTION_EXAMPLES}}}})
async def post_predictions(request: Request, c: Ctx, _: Clinical) -> Any:
    """One record (a JSON object with the record id and every feature) or `{"records": [...]}`.
    Every record is checked against the dataset spec first: one bad record rejects the whole request
    (422, every problem listed) and nothing is stored. A request sent again with the same `X-Request-ID`
    for the same records (a retry after a lost answer) gets the first answer back; nothing is stored twice.
    The answer comes once the predictions are committed; concurrent requests share one model-server call
    and one commit (:mod:`learning_machine.gateway.batching`)."""
    # Async end to end: the body parsed with orjson, the records checked on the event loop, the model call
    # and the commit in the batcher's two worker threads; the answer serialised as it is (orjson), not
    # validated again against the response model (that cost ~5 ms per 1,000 rows, profiled).
    body = await request.body()
    started = time.perf_counter()
    records, batch = service.prepare(c, parse_json(body))
    c.metrics.prediction_stage_seconds.labels("validate").observe(time.perf_counter() - started)
    request_id = request.state.request_id
    stored = await c.predictions.submit(records, request_id,
                                        retry=getattr(request.state, "request_id_given", False))
    return ORJSONResponse(service.answer(stored, request_id, batch))


def parse_json(body: bytes) -> Any:
    """A request body as JSON: orjson, falling back to Python's parser for what only it reads (the NaN
    literal, which is a missing value; integers beyond 64 bits, refused later by the checks); anything
    neither reads is a 422 like every other malformed body."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except ValueError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", getattr(exc, "pos", 0)),
                                       "msg": "JSON decode error", "input": {},
                                       "ctx": {"error": getattr(exc, "msg", str(exc))}}]) from exc


@router.get("/predictions", response_model=PageOut, tags=["predictions"], summary="Prediction history")
def get_predictions(c: Ctx, _: Science, limit: Limit = 50, offset: Offset = 0, since: Since = None,
                    model_version: Annotated[Name, Query(description="Only this model version.")] = None,
                    ) -> Any:
    return repository.list_predictions(c.db, repository.Page(limit, offset), since=since,
                                       model_version=model_version)


@router.post("/explanations", response_model=ExplanationOut, tags=["predictions"],
             summary="Explain a stored record's prediction, or a full record")
def post_explanations(request: Request, c: Ctx, _: Clinical, payload: Annotated[dict[str, Any], Body()]) -> Any:
    body = parse_body(ExplanationIn, payload, c)
    return service.explain(c, record_id=body.record_id, record=body.record, method=body.method,
                           request_id=request.state.request_id)


@router.post("/outcomes", response_model=OutcomeOut, tags=["outcomes"], status_code=201,
             responses={200: {"description": "The same outcome was already stored (nothing changed)"},
                        409: {"description": "Another outcome is stored; send ?overwrite=true to replace it"}},
             summary="Record the ground truth of a stored record")
def post_outcomes(response: Response, c: Ctx, who: Clinical,
                  payload: Annotated[dict[str, Any], Body()],
                  overwrite: Annotated[bool, Query(description="Replace a different stored outcome (a correction: "
                                                   "data-scientist or admin tokens only, recorded with who and "
                                                   "the previous value).")] = False,
                  ) -> Any:
    """Anyone who may predict may record an outcome once; correcting a stored one is a data scientist's or
    an admin's right, and every correction is kept as an `outcome-corrected` event."""
    body = parse_body(OutcomeIn, payload, c)
    if overwrite and who.role not in SCIENCE:
        raise PermissionDeniedError(f"role {who.role!r} may record an outcome but not correct one; correcting needs "
                                    f"one of: {', '.join(sorted(SCIENCE))}",
                                    detail={"role": who.role, "allowed": sorted(SCIENCE)})
    stored, status = service.record_outcome(c, body.record_id, body.outcome, overwrite=overwrite, by=who.name)
    if status != "created":
        response.status_code = 200
    return {**stored, "status": status}


@router.get("/patients", response_model=PageOut, tags=["patients"],
            summary="Records with their latest prediction and outcome")
def get_patients(c: Ctx, _: Clinical, limit: Limit = 50, offset: Offset = 0,
                 search: Annotated[str | None, Query(max_length=200, description="Part of a record id.")] = None,
                 ) -> Any:
    return repository.list_patients(c.db, repository.Page(limit, offset), search)


@router.get("/patients/{record_id}", tags=["patients"], summary="One record with its history")
def get_patient(c: Ctx, _: Clinical, record_id: StoredId) -> Any:
    return repository.patient(c.db, record_id)


@router.get("/monitoring", response_model=PageOut, tags=["monitoring"], summary="Monitoring results")
def get_monitoring(c: Ctx, _: Feeds, limit: Limit = 50, offset: Offset = 0, since: Since = None,
                   kind: Annotated[Name, Query(description="drift, quality or performance.")] = None,
                   ) -> Any:
    return repository.list_monitoring(c.db, repository.Page(limit, offset), since=since, kind=kind)


@router.get("/events", response_model=PageOut, tags=["monitoring"], summary="Pipeline and lifecycle events")
def get_events(c: Ctx, _: Feeds, limit: Limit = 50, offset: Offset = 0, since: Since = None,
               kind: Annotated[Name, Query(description="Only events of this kind.")] = None) -> Any:
    return repository.list_events(c.db, repository.Page(limit, offset), since=since, kind=kind)


@router.get("/models", tags=["models"], summary="Registered versions of the served model")
def get_models(c: Ctx, _: Feeds) -> Any:
    return {"model": c.model_name, "versions": service.models(c)}
