"""What the gateway does, as plain functions of a :class:`GatewayContext`: validate records against the
dataset spec, ask the model server, store the answer. Routes only translate HTTP to these calls.

The order is fixed so that a failure leaves nothing behind: validate everything (422 lists every
problem), then call the model server (503 when it is down), then store records and predictions in one
transaction."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from learning_machine.clients.v2 import Answers, ModelServerClient
from learning_machine.data.spec import DatasetSpec, RecordCheck, parse_label
from learning_machine.errors import (
    BadRequestError,
    ConflictError,
    LearningMachineError,
    ModelNotFoundError,
    PayloadTooLargeError,
    Problem,
    RecordValidationError,
    ServiceUnavailableError,
    encodable,
)
from learning_machine.gateway.auth import TokenCache
from learning_machine.gateway.edge import Metrics
from learning_machine.settings import Settings
from learning_machine.store import repository
from learning_machine.store.db import Database

if TYPE_CHECKING:
    from learning_machine.gateway.batching import PredictionBatcher


@dataclass
class GatewayContext:
    """Everything a request needs, built once per app."""

    settings: Settings
    db: Database
    model_server: ModelServerClient
    spec: DatasetSpec
    metrics: Metrics
    tokens: TokenCache
    _tracker: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def model_name(self) -> str:
        return self.settings.model_name

    @cached_property
    def record_check(self) -> RecordCheck:
        return self.spec.record_check()

    @cached_property
    def predictions(self) -> PredictionBatcher:
        """Groups concurrent prediction requests into one model call and one transaction (group commit)."""
        from learning_machine.gateway.batching import PredictionBatcher

        return PredictionBatcher(self, max_rows=self.settings.max_batch_rows)

    def tracker(self) -> Any:
        """The registry client, made on first use."""
        with self._lock:
            if self._tracker is None:
                from learning_machine.registry.tracker import tracker_for

                self._tracker = tracker_for(self.settings)
            return self._tracker


# -- predictions -------------------------------------------------------------------------------------
def split_payload(payload: Mapping[str, Any], max_rows: int) -> tuple[list[Any], bool]:
    """The records of a request body and whether it was a batch (``{"records": [...]}``)."""
    if "records" not in payload:
        return [dict(payload)], False
    extra = sorted(k for k in payload if k != "records")
    if extra:
        raise BadRequestError(f"a batch is {{\"records\": [...]}} and nothing else; unexpected: {', '.join(extra)}")
    records = payload["records"]
    if not isinstance(records, list) or not records:
        raise BadRequestError("'records' must be a non-empty list of records")
    if len(records) > max_rows:
        raise PayloadTooLargeError(f"a batch may hold at most {max_rows:,} records (LM_MAX_BATCH_ROWS); "
                                   f"this one has {len(records):,}: split it",
                                   detail={"records": len(records), "max_batch_rows": max_rows})
    return records, True


def validate_records(spec: DatasetSpec, records: list[Any], *, batch: bool,
                     check: RecordCheck | None = None) -> list[Mapping[str, Any]]:
    """The records, unchanged, when every one is valid; else :class:`RecordValidationError` listing
    every problem of every record (with its index in the batch). ``check``: the spec's compiled fast check
    (:meth:`DatasetSpec.record_check`); a batch it passes whole is not checked field by field again."""
    if check is not None:
        ids = {str(r[check.id_field]) for r in records if check.valid(r)}
        if len(ids) == len(records):  # all valid, no id twice
            return records
    problems: list[tuple[int, Problem]] = []
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        found = spec.validate_record(record)
        problems.extend((index, p) for p in found)
        if isinstance(record, Mapping) and not found:
            rid = str(record[spec.record_id.name])
            if rid in seen:
                problems.append((index, Problem(spec.record_id.name, rid, "unique",
                                                f"record id {rid!r} appears twice in this batch "
                                                f"(records {seen[rid]} and {index})", rid)))
            seen.setdefault(rid, index)
    if problems:
        error = RecordValidationError([p for _, p in problems])
        if batch:
            error.detail = [{"index": i, **p.as_dict()} for i, p in problems]
        raise error
    return [dict(r) for r in records]


def features_of(spec: DatasetSpec, record: Mapping[str, Any], names: Sequence[str] | None = None) -> dict[str, Any]:
    """What we store as the record's input: the features only (not the id, not the outcome). A NaN
    (Python's JSON parser accepts the literal) is a missing value: stored as null, valid JSON everywhere.
    NaN is the one value not equal to itself: one comparison per field, on the gateway's hot path.
    ``names``: the spec's feature names, when the caller has them (a batch makes that list once)."""
    return {name: None if (value := record.get(name)) != value else value
            for name in (spec.feature_names if names is None else names)}


def prepare(ctx: GatewayContext, payload: Any) -> tuple[list[Mapping[str, Any]], bool]:
    """The records of a prediction request body, validated, and whether it was a batch. Nothing is asked or
    stored yet: a request refused here (400, 413, 422 listing every problem) leaves no trace."""
    if not isinstance(payload, Mapping):
        raise RecordValidationError([Problem("<body>", encodable(payload), "type",
                                             "the body must be a JSON object: one record, or {\"records\": [...]}")])
    raw, batch = split_payload(payload, ctx.settings.max_batch_rows)
    return validate_records(ctx.spec, raw, batch=batch, check=ctx.record_check), batch


def predict_records(ctx: GatewayContext, records: Sequence[Mapping[str, Any]]) -> Answers:
    """The model server's answers for ``records`` (of one request or of several grouped), in order."""
    started = time.perf_counter()
    try:
        return ctx.model_server.answers(ctx.model_name, ctx.spec, records)
    except ModelNotFoundError as exc:
        raise _not_served(ctx, exc) from exc
    finally:
        ctx.metrics.model_server_seconds.labels("predict").observe(time.perf_counter() - started)


def prediction_request(ctx: GatewayContext, records: Sequence[Mapping[str, Any]], request_id: str,
                       ) -> repository.PredictionRequest:
    """What is stored of a request's (validated) records, column by column, before the model answers: record
    ids, features and the outcomes sent with them."""
    rid, target, spec, names = ctx.spec.record_id.name, ctx.spec.target.name, ctx.spec, ctx.spec.feature_names
    return repository.PredictionRequest(
        [str(record[rid]) for record in records], [features_of(spec, record, names) for record in records],
        [None if (value := record.get(target)) is None else parse_label(value) for record in records], request_id)


def answered(request: repository.PredictionRequest, answers: Answers, latency_ms: float,
             ) -> repository.PredictionRequest:
    """``request`` with the model server's answers (in record order) and the model call's latency."""
    return request.answered(answers.probabilities, answers.labels, [answers.model_version] * len(answers),
                            latency_ms)


def begins_ahead(ctx: GatewayContext, rows: int) -> bool:
    """Whether the store of a group of ``rows`` records begins while the model server works
    (:func:`begin_store`; the store says what pays on its database)."""
    return repository.worth_beginning_ahead(ctx.db, rows)


def begin_store(ctx: GatewayContext, requests: Sequence[repository.PredictionRequest],
                ) -> repository.StoreAhead | None:
    """Begin storing these requests while the model server works on them (their records inserted, or on
    PostgreSQL for a small group its connection checked out), for :func:`store_answers` to complete (or None:
    they are stored the ordinary way then, as a group with nothing to gain always is)."""
    if not begins_ahead(ctx, sum(len(r.record_ids) for r in requests)):
        return None
    return repository.begin_store(ctx.db, requests)


def store_answers(ctx: GatewayContext, requests: Sequence[repository.PredictionRequest], *,
                  ahead: repository.StoreAhead | None = None,
                  ) -> list[list[dict[str, Any]] | LearningMachineError]:
    """Store each answered request's records and predictions, all in one transaction (with ``ahead``: the store
    begun while the model worked); per request its stored predictions or the error that refused it alone."""
    results = repository.store_prediction_requests(ctx.db, requests, model_name=ctx.model_name, ahead=ahead)
    versions = Counter(row["model_version"] for result in results if not isinstance(result, Exception)
                       for row in result)
    for version, count in versions.items():
        ctx.metrics.predictions.labels(version).inc(count)
    ctx.metrics.stored_rows.labels("prediction").inc(sum(versions.values()))
    return results


def stored_answer(ctx: GatewayContext, records: Sequence[Mapping[str, Any]], request_id: str,
                  ) -> list[dict[str, Any]] | None:
    """For a caller-chosen request id (a retry after a lost answer): the predictions stored by the first
    request with this id, in the order of ``records``, or None when nothing is stored under it (one indexed
    lookup). A request id reused for other records is a :class:`ConflictError`."""
    stored = repository.predictions_for_request(ctx.db, request_id)
    return _replayed(ctx, records, stored, request_id) if stored else None


def answer(stored: list[dict[str, Any]], request_id: str, batch: bool) -> dict[str, Any]:
    """The response body: one prediction, or the batch's in request order."""
    out = [{"record_id": r["record_id"], "probability": r["probability"], "label": r["label"],
            "model_version": r["model_version"], "request_id": request_id} for r in stored]
    if not batch:
        return out[0]
    return {"request_id": request_id, "predictions": out}


def _replayed(ctx: GatewayContext, records: Sequence[Mapping[str, Any]], stored: list[dict[str, Any]],
              request_id: str) -> list[dict[str, Any]]:
    """The stored predictions of a retried request, in the order of its records; a request id reused for
    other records is a conflict (the caller must use a fresh id per batch)."""
    rid = ctx.spec.record_id.name
    wanted = [str(r[rid]) for r in records]
    by_id = {p["record_id"]: p for p in stored}
    if len(stored) != len(wanted) or set(by_id) != set(wanted):
        raise ConflictError(f"request id {request_id!r} was already used for other records; send each batch "
                            "with a fresh X-Request-ID (and the same one only to retry that batch)",
                            detail={"request_id": request_id, "stored_records": len(stored)})
    changed = [r for r, record in zip(wanted, records, strict=True)
               if not repository.same_features(by_id[r]["features"], features_of(ctx.spec, record))]
    if changed:
        raise ConflictError(f"request id {request_id!r} was already used for these record ids with other "
                            f"values ({', '.join(changed[:5])}); send each batch with a fresh X-Request-ID",
                            detail={"request_id": request_id, "records": changed[:20]})
    return [by_id[r] for r in wanted]


def _not_served(ctx: GatewayContext, exc: ModelNotFoundError, url: str | None = None) -> ServiceUnavailableError:
    # The client asked nothing wrong: the deployment is (still) missing the model, so 503, not 404.
    return ServiceUnavailableError(f"the model server at {url or ctx.model_server.url} does not serve model "
                                   f"{ctx.model_name!r} (yet): {exc.message}")


# -- explanations ------------------------------------------------------------------------------------
def explain(ctx: GatewayContext, *, record_id: str | int | None, record: Mapping[str, Any] | None, method: str,
            request_id: str) -> dict[str, Any]:
    """Explain a stored record (by id) or a full record (stored with its explanation)."""
    if (record_id is None) == (record is None):
        raise BadRequestError("send either 'record_id' (of a stored record) or 'record' (a full record)")
    if record is not None:
        full = validate_records(ctx.spec, [record], batch=False)[0]
        rid = str(full[ctx.spec.record_id.name])
        features: dict[str, Any] | None = features_of(ctx.spec, full)
    else:
        rid = str(record_id)
        features = None
        full = {ctx.spec.record_id.name: rid, **repository.record_features(ctx.db, rid)}
    started = time.perf_counter()
    try:
        explanation = ctx.model_server.explain(ctx.model_name, ctx.spec, full, method)
    except ModelNotFoundError as exc:
        raise _not_served(ctx, exc, ctx.model_server.explainer_url) from exc
    finally:
        ctx.metrics.model_server_seconds.labels("explain").observe(time.perf_counter() - started)
    version = explanation.get("model_version")
    stored = repository.store_explanation(
        ctx.db, record_id=rid, features=features, model_name=ctx.model_name,
        model_version=None if version is None else str(version), method=method, explanation=explanation,
        request_id=request_id)
    ctx.metrics.stored_rows.labels("explanation").inc()
    return {"record_id": rid, "method": method, "model_version": stored["model_version"],
            "explanation": explanation, "request_id": request_id, "created_at": stored["created_at"]}


# -- outcomes ----------------------------------------------------------------------------------------
def record_outcome(ctx: GatewayContext, record_id: str | int, outcome: Any, *, overwrite: bool,
                   by: str | None = None) -> tuple[dict[str, Any], str]:
    label = parse_label(outcome)
    if label is None:
        target = ctx.spec.target
        raise RecordValidationError([Problem(target.name, outcome if isinstance(outcome, (str, int, float, bool))
                                             else repr(outcome)[:200], "category",
                                             f"the outcome must be 0 or 1 ({target.negative_label} or "
                                             f"{target.positive_label})", str(record_id))])
    stored, status = repository.store_outcome(ctx.db, str(record_id), label, overwrite=overwrite, by=by)
    if status != "unchanged":
        ctx.metrics.stored_rows.labels("outcome").inc()
    return stored, status


# -- models and readiness ------------------------------------------------------------------------------
def models(ctx: GatewayContext) -> list[dict[str, Any]]:
    """The registry's versions of the served model, newest first, the champion marked."""
    from learning_machine.registry.names import CHALLENGER, CHAMPION

    tracker = ctx.tracker()
    # Tracker.list_versions reports an unreachable server as "no registered model" (404): ask first.
    tracker.health()
    versions = tracker.list_versions(ctx.model_name)
    return [{**v.as_dict(), "champion": CHAMPION in v.aliases, "challenger": CHALLENGER in v.aliases}
            for v in versions]


def readiness(ctx: GatewayContext) -> dict[str, Any]:
    """Ready when the database answers and the model server serves the model; else 503 saying which."""
    ctx.db.ping()
    url = ctx.model_server.url
    if not ctx.model_server.ready():
        raise ServiceUnavailableError(f"the model server at {url} is not ready")
    if not ctx.model_server.model_ready(ctx.model_name):
        raise ServiceUnavailableError(f"the model server at {url} does not serve model {ctx.model_name!r} (yet)")
    return {"status": "ready", "database": "ok", "model_server": url, "model": ctx.model_name}
