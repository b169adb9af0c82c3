"""Reads and writes of the platform database as plain functions of a :class:`Database`.

Writes that belong together happen in one transaction: a prediction is stored with its input record or
not at all, and any error (a conflict, the database going away) rolls the whole request back.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, func, insert, or_, select
from sqlalchemy.exc import DisconnectionError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from learning_machine.errors import ConflictError, LearningMachineError, NotFoundError, ServiceUnavailableError
from learning_machine.store.bulk import COPY_ROWS, Insert, insert_all, one_statement
from learning_machine.store.db import Database
from learning_machine.store.models import (
    ApiToken,
    Base,
    Event,
    Explanation,
    MonitoringResult,
    MonitorState,
    Outcome,
    Prediction,
    Record,
    ShadowPrediction,
    utcnow,
)

TABLES: dict[str, type[Base]] = {
    "records": Record, "predictions": Prediction, "explanations": Explanation, "outcomes": Outcome,
    "monitoring_results": MonitoringResult, "events": Event, "api_tokens": ApiToken,
    "shadow_predictions": ShadowPrediction,
}


@dataclass(frozen=True)
class NewPrediction:
    """One model answer to store with its input."""

    record_id: str
    features: Mapping[str, Any]
    probability: float
    label: int
    model_version: str
    outcome: int | None = None  # the label, when the client sent it with the record


@dataclass(frozen=True)
class Page:
    limit: int = 50
    offset: int = 0


# -- writes -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PredictionRequest:
    """The predictions of one API request, to store all or none, column by column (one entry per record, in
    request order): the gateway builds these columns once and no per-row object is made on its hot path.
    A request whose model answers are not known yet (``probabilities`` empty) can have its records written
    ahead (:func:`begin_store`)."""

    record_ids: Sequence[str]
    features: Sequence[Mapping[str, Any]]
    outcomes: Sequence[int | None]  # the label, when the client sent it with the record
    request_id: str
    probabilities: Sequence[float] = ()
    labels: Sequence[int] = ()
    model_versions: Sequence[str] = ()
    latency_ms: float = 0.0

    @classmethod
    def of(cls, items: Sequence[NewPrediction], request_id: str, latency_ms: float) -> PredictionRequest:
        """The request of ``items``, one per record."""
        return cls([i.record_id for i in items], [i.features for i in items], [i.outcome for i in items],
                   request_id, [i.probability for i in items], [i.label for i in items],
                   [i.model_version for i in items], latency_ms)

    def answered(self, probabilities: Sequence[float], labels: Sequence[int], model_versions: Sequence[str],
                 latency_ms: float) -> PredictionRequest:
        """This request with its model answers."""
        return replace(self, probabilities=probabilities, labels=labels, model_versions=model_versions,
                       latency_ms=latency_ms)

    def labelled(self) -> list[tuple[str, int]]:
        return [(r, o) for r, o in zip(self.record_ids, self.outcomes, strict=True) if o is not None]


def store_predictions(db: Database, items: Sequence[NewPrediction], *, model_name: str, latency_ms: float,
                      request_id: str, source: str = "api") -> list[dict[str, Any]]:
    """Store every record (new, or identical to the stored one) with its prediction, all in one transaction;
    the stored predictions, or the error (a :class:`ConflictError` when a record or outcome is stored with
    other values) with nothing stored."""
    result = store_prediction_requests(db, [PredictionRequest.of(items, request_id, latency_ms)],
                                       model_name=model_name, source=source)[0]
    if isinstance(result, LearningMachineError):
        raise result
    return result


class StoreAhead:
    """The store of a group of prediction requests, begun before the model has answered, on a connection held
    until then (:func:`begin_store`): the records (and outcomes) inserted in an open transaction, or,
    for a group too small for that to pay (:data:`WRITE_AHEAD_MIN_ROWS`) on a database where checking out a
    connection is a round trip, only the connection, checked out. :func:`store_prediction_requests` with
    ``ahead=`` then adds the predictions and commits, or stores the group in one statement on that connection.
    Nothing is visible to anyone until then; :meth:`abandon` rolls back and gives the connection back."""

    def __init__(self, connection: Connection, requests: Sequence[PredictionRequest], now: datetime, *,
                 records: bool = True) -> None:
        self.connection = connection
        self.records_written = records
        """Whether the records are written (in :attr:`transaction`); else nothing is, and ``connection`` commits
        each statement by itself (:meth:`Database.connect` with ``autocommit``)."""
        self.transaction = connection.begin() if records else None
        self.requests = requests
        self.now = now
        self.open = True

    def covers(self, requests: Sequence[PredictionRequest]) -> bool:
        """Whether ``requests`` begins with the requests written here (the same records, answered since)."""
        return len(requests) >= len(self.requests) and all(
            a.request_id == b.request_id and a.record_ids is b.record_ids and a.features is b.features
            and a.outcomes is b.outcomes for a, b in zip(self.requests, requests, strict=False))

    def commit(self) -> None:
        """Commit and give the connection back (raises SQLAlchemy's error when the commit fails)."""
        self.open = False
        try:
            if self.transaction is not None:
                self.transaction.commit()
        finally:
            self.connection.close()

    def abandon(self) -> None:
        """Roll back and give the connection back (the requests are then stored the ordinary way); nothing
        when it was committed or abandoned already."""
        if not self.open:
            return
        self.open = False
        try:
            if self.transaction is not None:
                self.transaction.rollback()
        except Exception:  # noqa: BLE001 - the connection is gone; nothing of this transaction was committed
            pass
        finally:
            self.connection.close()


# Groups smaller than this do not have their records written ahead, by database backend (1 where missing).
# SQLite inserts a few rows in tens of microseconds, so a head start saves nothing there and its second
# transaction step cost ~0.1 ms of CPU per single-row request (lm bench --profile: 1.12 -> 1.25 ms).
# PostgreSQL stores a group of fewer than COPY_ROWS rows in one statement that commits by itself, one round
# trip after the answer (bulk.one_statement), where writing ahead took two after it (the predictions, COMMIT).
WRITE_AHEAD_MIN_ROWS = {"sqlite": 50, "postgresql": COPY_ROWS}
# Databases whose connection checkout is a round trip (SQLAlchemy's pre-ping on PostgreSQL, which finds a
# connection the server dropped before a request uses it): every group's connection is checked out ahead.
CONNECT_AHEAD = frozenset({"postgresql"})


def worth_beginning_ahead(db: Database, rows: int) -> bool:
    """Whether the store of a group of ``rows`` records gains from beginning before the model has answered
    (:func:`begin_store`) on this database."""
    dialect = db.engine.dialect.name
    return dialect in CONNECT_AHEAD or rows >= WRITE_AHEAD_MIN_ROWS.get(dialect, 1)


def begin_store(db: Database, requests: Sequence[PredictionRequest], *, source: str = "api",
                ) -> StoreAhead | None:
    """Begin storing ``requests`` (answers not needed): insert their records and outcomes as new, in a
    transaction left open; below :data:`WRITE_AHEAD_MIN_ROWS` rows, on a database in :data:`CONNECT_AHEAD`,
    only check out the connection. None when that cannot be done in one go (a record sent twice with other
    values, one stored already, a value the database refuses): those requests are then stored the ordinary
    way, which tells each its error. The database unreachable (or locked past its timeout) raises
    :class:`ServiceUnavailableError` instead: the ordinary way would only wait for it a second time."""
    now = utcnow()
    dialect = db.engine.dialect.name
    if sum(len(request.record_ids) for request in requests) < WRITE_AHEAD_MIN_ROWS.get(dialect, 1):
        if dialect not in CONNECT_AHEAD:
            return None
        with _unavailable_raised(db):
            return StoreAhead(db.connect(autocommit=True), requests, now, records=False)
    records: dict[str, Mapping[str, Any]] = {}
    outcomes: dict[str, int] = {}
    try:
        for request in requests:
            _new_columns(records, outcomes, request)
    except ConflictError:
        return None
    with _unavailable_raised(db):
        ahead = StoreAhead(db.connect(), requests, now)
    try:
        with _unavailable_raised(db):
            insert_all(ahead.connection, _record_inserts(records, outcomes, source, now))
    except ServiceUnavailableError:
        ahead.abandon()
        raise
    except SQLAlchemyError:
        ahead.abandon()
        return None
    return ahead


@contextmanager
def _unavailable_raised(db: Database) -> Iterator[None]:
    """The database's "unreachable" errors as :class:`ServiceUnavailableError`; every other error as it is."""
    try:
        yield
    except (OperationalError, DisconnectionError):
        with db.errors():
            raise


def store_prediction_requests(db: Database, requests: Sequence[PredictionRequest], *, model_name: str,
                              source: str = "api", ahead: StoreAhead | None = None,
                              ) -> list[list[dict[str, Any]] | LearningMachineError]:
    """Store several requests' predictions in one transaction (group commit: the gateway groups concurrent
    requests, and one commit costs the same for one row or many). Each request is still all or nothing and
    gets its own result, in order: its stored predictions, or the error that refused it with nothing of it
    stored. A request whose record contradicts a stored one (or an earlier request of the group) is refused
    alone; when the database itself refuses the group (a value it cannot hold), each request is stored on its
    own so that only the offending one fails. Concurrent writers of the same new record (other processes)
    are both stored: the one that loses the race to insert it reads the winner's row and goes on.

    ``ahead``: the store of the first requests (the same ones, in order, now with their answers), begun by
    :func:`begin_store`: their records inserted already, committed with the predictions (or, with no records
    written, the group stored in one statement on its connection); else rolled back and the whole group stored
    the ordinary way (but a database gone meanwhile is every request's 503 at once)."""
    if ahead is not None and not ahead.records_written:
        try:
            with _unavailable_raised(db):  # gone since the connection was checked out: not asked a second time
                stored = _store_in_one_statement(ahead, requests, model_name=model_name, source=source)
        except ServiceUnavailableError as exc:
            return [exc] * len(requests)
        if stored is not None:
            return stored
    elif ahead is not None:
        try:
            with _unavailable_raised(db):  # gone since the records were written: not asked a second time
                finished = _finish(ahead, requests, model_name=model_name, source=source)
        except ServiceUnavailableError as exc:
            return [exc] * len(requests)
        if finished is not None:
            try:
                with db.errors():  # a failed commit is answered as the error it is, not stored again
                    ahead.commit()
            except LearningMachineError as exc:
                return [exc] * len(requests)
            return finished
    try:
        return _with_retries(db, requests, model_name=model_name, source=source)
    except ServiceUnavailableError as exc:
        return [exc] * len(requests)
    except LearningMachineError as exc:
        if len(requests) == 1:
            return [exc]
    results: list[list[dict[str, Any]] | LearningMachineError] = []
    for request in requests:
        results += store_prediction_requests(db, [request], model_name=model_name, source=source)
    return results


def _store_in_one_statement(ahead: StoreAhead, requests: Sequence[PredictionRequest], *, model_name: str,
                            source: str) -> list[list[dict[str, Any]] | LearningMachineError] | None:
    """Store ``requests`` (all new, as :func:`_with_retries` first assumes) in one statement that commits by
    itself, on the connection ``ahead`` holds, then give it back; None when they need more than one statement
    or the database refuses them (a record stored already): they are stored the ordinary way then. The
    database gone raises SQLAlchemy's error."""
    try:
        inserts, results = _inserts(requests, {}, {}, model_name=model_name, source=source, now=utcnow())
        if not one_statement(ahead.connection.dialect.name, inserts):
            return None
        insert_all(ahead.connection, inserts)
        return results
    except (OperationalError, DisconnectionError):
        raise
    except SQLAlchemyError:
        return None
    finally:
        ahead.abandon()  # nothing is open: this gives the connection back


def _finish(ahead: StoreAhead, requests: Sequence[PredictionRequest], *, model_name: str, source: str,
            ) -> list[list[dict[str, Any]] | LearningMachineError] | None:
    """Add the predictions (and the records of requests that joined the group after those of ``ahead``) to its
    transaction, uncommitted; None, with the transaction rolled back, when that cannot be done (the requests
    are not the ones begun ahead, one contradicts another, the database refuses a value). The database gone
    raises SQLAlchemy's error, the transaction rolled back."""
    if not ahead.covers(requests):
        ahead.abandon()
        return None
    later = requests[len(ahead.requests):]
    try:
        inserts: list[Insert] = []
        if later:
            records: dict[str, Mapping[str, Any]] = {r: f for q in ahead.requests
                                                     for r, f in zip(q.record_ids, q.features, strict=True)}
            outcomes: dict[str, int] = {r: o for q in ahead.requests for r, o in q.labelled()}
            known = (len(records), len(outcomes))
            for request in later:
                _new_columns(records, outcomes, request)
            inserts += _record_inserts(dict(itertools.islice(records.items(), known[0], None)),
                                       dict(itertools.islice(outcomes.items(), known[1], None)), source, ahead.now)
        insert_all(ahead.connection, [*inserts, _prediction_insert(requests, model_name, ahead.now)])
        return [*_stored_predictions(requests, model_name, ahead.now)]
    except (OperationalError, DisconnectionError):
        ahead.abandon()
        raise
    except (ConflictError, SQLAlchemyError):
        ahead.abandon()
        return None


def _with_retries(db: Database, requests: Sequence[PredictionRequest], *, model_name: str, source: str,
                  ) -> list[list[dict[str, Any]] | LearningMachineError]:
    try:
        # The common case, new records: insert without reading first (no round trip, no 1,000-id lookup).
        # A record or outcome stored already makes the insert fail and roll back whole; then the careful way.
        return _store_requests_once(db, requests, model_name=model_name, source=source, optimistic=True)
    except IntegrityError:
        pass
    for attempt in range(3):
        try:
            return _store_requests_once(db, requests, model_name=model_name, source=source, optimistic=False)
        except IntegrityError as exc:
            # Another process stored one of these records between our read and our insert: read it again
            # (the whole transaction was rolled back, nothing of this attempt is stored).
            if attempt == 2:
                raise ConflictError("a record in this request was stored concurrently by another request; "
                                    "send it again") from exc
    raise AssertionError("unreachable")


def _store_requests_once(db: Database, requests: Sequence[PredictionRequest], *, model_name: str, source: str,
                         optimistic: bool) -> list[list[dict[str, Any]] | LearningMachineError]:
    """One transaction for the group. ``optimistic``: assume every record and outcome is new (the database's
    unique constraints refuse the transaction when one is not): nothing is read first, so on PostgreSQL a
    small group is one statement that commits by itself (:func:`~learning_machine.store.bulk.one_statement`).
    Else read which exist first, and refuse the requests that contradict them."""
    now = utcnow()
    if optimistic:
        inserts, results = _inserts(requests, {}, {}, model_name=model_name, source=source, now=now)
        with db.autocommit() if one_statement(db.engine.dialect.name, inserts) else db.connection() as connection:
            insert_all(connection, inserts)
        return results
    with db.connection() as session:  # Core: no ORM session on the hot path
        # One read for the whole group: which records (and outcomes) exist already.
        stored = _stored_features(session, [i for r in requests for i in r.record_ids])
        known_outcomes: dict[str, int] = {}
        labelled = {i for r in requests for i, _ in r.labelled()}
        if labelled:
            known_outcomes.update(session.execute(select(Outcome.record_id, Outcome.outcome).where(
                Outcome.record_id.in_(labelled))).tuples().all())
        inserts, results = _inserts(requests, stored, known_outcomes, model_name=model_name, source=source, now=now)
        insert_all(session, inserts)
    return results


def _inserts(requests: Sequence[PredictionRequest], stored: Mapping[str, Mapping[str, Any]],
             known_outcomes: Mapping[str, int], *, model_name: str, source: str, now: datetime,
             ) -> tuple[list[Insert], list[list[dict[str, Any]] | LearningMachineError]]:
    """What storing ``requests`` inserts, given the records and outcomes ``stored`` already (records first:
    the predictions reference them), and per request its stored predictions or the conflict that refuses it
    alone (its record contradicts a stored one, or an earlier request's)."""
    records = dict(stored)
    outcomes = dict(known_outcomes)
    accepted: list[PredictionRequest] = []
    refused: dict[int, LearningMachineError] = {}
    for index, request in enumerate(requests):
        try:
            _new_columns(records, outcomes, request)
        except ConflictError as exc:
            refused[index] = exc
            continue
        accepted.append(request)
    inserts = [*_record_inserts({r: f for r, f in records.items() if r not in stored},
                                {r: o for r, o in outcomes.items() if r not in known_outcomes}, source, now),
               _prediction_insert(accepted, model_name, now)]
    rows = iter(_stored_predictions(accepted, model_name, now))
    return inserts, [refused[index] if index in refused else next(rows) for index in range(len(requests))]


def _new_columns(records: dict[str, Mapping[str, Any]], outcomes: dict[str, int], request: PredictionRequest) -> None:
    """Add the request's records and outcomes to ``records`` / ``outcomes`` (what is stored or will be, by record
    id), or raise :class:`ConflictError` leaving both unchanged when one contradicts what is there. A record
    id names one encounter: sending it again is fine, with other values it is a conflict."""
    new_records: dict[str, Mapping[str, Any]] = {}
    for record_id, features in zip(request.record_ids, request.features, strict=True):
        known = records.get(record_id, new_records.get(record_id))
        if known is None:
            new_records[record_id] = features
        elif known is not features and not same_features(known, features):
            changed = sorted(k for k in {*known, *features} if not _same_value(known.get(k), features.get(k)))
            raise ConflictError(f"record {record_id!r} is already stored with other values for "
                                f"{', '.join(changed)}; use a new record id",
                                detail={"record_id": record_id, "fields": changed})
    new_outcomes: dict[str, int] = {}
    for record_id, outcome in request.labelled():
        known_outcome = outcomes.get(record_id, new_outcomes.get(record_id))
        if known_outcome is None:
            new_outcomes[record_id] = outcome
        elif known_outcome != outcome:
            raise ConflictError(f"record {record_id!r} already has outcome {known_outcome}, not {outcome}",
                                detail={"record_id": record_id, "stored": known_outcome, "sent": outcome})
    records.update(new_records)
    outcomes.update(new_outcomes)


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def _record_inserts(records: Mapping[str, Mapping[str, Any]], outcomes: Mapping[str, int], source: str,
                    now: datetime) -> list[Insert]:
    """New records, then their outcomes (which reference them), column by column."""
    constants = {"source": source, "received_at": now}
    return [Insert(_table(Record), {"record_id": list(records), "features": list(records.values())}, constants),
            Insert(_table(Outcome), {"record_id": list(outcomes), "outcome": list(outcomes.values())}, constants)]


def _prediction_insert(requests: Sequence[PredictionRequest], model_name: str, now: datetime) -> Insert:
    """Every request's predictions (their records stored first), column by column."""
    columns: dict[str, list[Any]] = {"record_id": [], "model_version": [], "probability": [], "label": [],
                                     "latency_ms": [], "request_id": []}
    for request in requests:
        n = len(request.record_ids)
        if len(request.probabilities) != n or len(request.labels) != n or len(request.model_versions) != n:
            raise ValueError(f"request {request.request_id!r} has {n} records but not as many answers")
        columns["record_id"] += request.record_ids
        columns["model_version"] += request.model_versions
        columns["probability"] += request.probabilities
        columns["label"] += request.labels
        columns["latency_ms"] += [float(request.latency_ms)] * n
        columns["request_id"] += [request.request_id] * n
    return Insert(_table(Prediction), columns, {"model_name": model_name, "created_at": now})


def _stored_predictions(requests: Sequence[PredictionRequest], model_name: str, now: datetime,
                        ) -> list[list[dict[str, Any]]]:
    """Per request, its predictions as :func:`_prediction_insert` stores them."""
    created = _iso(now)
    return [[{"record_id": r, "model_name": model_name, "model_version": v, "probability": p, "label": label,
              "latency_ms": float(request.latency_ms), "request_id": request.request_id, "created_at": created}
             for r, v, p, label in zip(request.record_ids, request.model_versions, request.probabilities,
                                       request.labels, strict=True)]
            for request in requests]


def store_explanation(db: Database, *, record_id: str, features: Mapping[str, Any] | None, model_name: str,
                      model_version: str | None, method: str, explanation: dict[str, Any], request_id: str,
                      source: str = "api") -> dict[str, Any]:
    """Store an explanation (and its record when it is new) in one transaction."""
    now = utcnow()
    try:
        with db.transaction() as session:
            stored = _stored_features(session, [record_id])
            if features is None and record_id not in stored:
                raise NotFoundError(f"no stored record with id {record_id!r}")
            if features is not None:
                new_records = _new_records(stored, [(record_id, features)], source, now)
                if new_records:
                    session.execute(insert(Record), new_records)
            row = Explanation(record_id=record_id, model_name=model_name, model_version=model_version,
                              method=method, explanation=explanation, request_id=request_id, created_at=now)
            session.add(row)
            session.flush()
            return explanation_dict(row)
    except IntegrityError as exc:
        raise ConflictError(f"record {record_id!r} was stored concurrently by another request; "
                            "send it again") from exc


def store_outcome(db: Database, record_id: str, outcome: int, *, overwrite: bool = False, source: str = "api",
                  by: str | None = None) -> tuple[dict[str, Any], str]:
    """Record the ground truth of a stored record, with who recorded it. Idempotent: the same outcome again
    changes nothing, also when several clients send it at once (the loser of the race reads the winner's
    row instead of failing). A different outcome needs ``overwrite`` and is kept as an ``outcome-corrected``
    event (who, when, the previous value) in the same transaction. Returns the outcome and what happened:
    ``created``, ``unchanged`` or ``overwritten``."""
    for attempt in range(3):
        try:
            return _store_outcome_once(db, record_id, outcome, overwrite=overwrite, source=source, by=by)
        except IntegrityError as exc:
            # Another request inserted this record's outcome between our read and our insert: read it again.
            if attempt == 2:
                raise ConflictError(f"an outcome for {record_id!r} was stored concurrently; send it again") from exc
    raise AssertionError("unreachable")


def _store_outcome_once(db: Database, record_id: str, outcome: int, *, overwrite: bool, source: str,
                        by: str | None) -> tuple[dict[str, Any], str]:
    with db.transaction() as session:
        if session.scalar(select(Record.id).where(Record.record_id == record_id)) is None:
            raise NotFoundError(f"no stored record with id {record_id!r}: predict on it first")
        row = session.scalar(select(Outcome).where(Outcome.record_id == record_id))
        now = utcnow()
        if row is None:
            row = Outcome(record_id=record_id, outcome=outcome, source=source, received_at=now, recorded_by=by)
            session.add(row)
            session.flush()
            return outcome_dict(row), "created"
        if row.outcome == outcome:
            return outcome_dict(row), "unchanged"
        if not overwrite:
            raise ConflictError(
                f"record {record_id!r} already has outcome {row.outcome}; send ?overwrite=true to replace it",
                detail={"record_id": record_id, "stored": row.outcome, "sent": outcome})
        previous = outcome_dict(row)
        row.outcome, row.received_at, row.source, row.recorded_by = outcome, now, source, by
        session.add(_event_row("outcome-corrected", {
            "record_id": record_id, "previous": previous["outcome"], "previous_recorded_by": previous["recorded_by"],
            "previous_received_at": previous["received_at"], "outcome": outcome, "by": by}, None, now))
        session.flush()
        return outcome_dict(row), "overwritten"


def add_event(db: Database, kind: str, detail: dict[str, Any] | None = None,
              model_version: str | None = None) -> dict[str, Any]:
    """Append a pipeline or lifecycle event."""
    with db.transaction() as session:
        row = _event_row(kind, detail, model_version, utcnow())
        session.add(row)
        session.flush()
        return event_dict(row)


def add_monitoring_results(db: Database, results: Sequence[Mapping[str, Any]]) -> int:
    """Append the monitor's results of one run (all or none)."""
    with db.transaction() as session:
        session.add_all(_result_rows(results, utcnow()))
    return len(results)


def add_shadow_predictions(db: Database, model_name: str, model_version: str,
                           items: Sequence[tuple[int, float]]) -> int:
    """Store a challenger's scores (``(prediction_id, probability)``) in one transaction; a score already stored
    for the same prediction and version is kept (a retried call stores nothing twice). Returns how many
    were new; an unknown prediction id fails the whole call."""
    ids = [int(i) for i, _ in items]
    with db.transaction() as session:
        known = set(session.scalars(select(Prediction.id).where(Prediction.id.in_(ids))))
        missing = sorted(set(ids) - known)
        if missing:
            raise NotFoundError(f"no prediction with id {missing[0]}" + (f" (and {len(missing) - 1} more)"
                                                                         if len(missing) > 1 else ""),
                                detail={"unknown_prediction_ids": missing[:20]})
        stored = set(session.scalars(select(ShadowPrediction.prediction_id).where(
            ShadowPrediction.model_version == model_version, ShadowPrediction.prediction_id.in_(ids))))
        now = utcnow()
        fresh = {i: float(p) for i, p in items if int(i) not in stored}
        session.add_all([ShadowPrediction(prediction_id=i, model_name=model_name, model_version=model_version,
                                          probability=p, created_at=now) for i, p in fresh.items()])
    return len(fresh)


def shadow_predictions(db: Database, model_version: str, *, after_prediction_id: int = 0,
                       limit: int = 5000) -> list[dict[str, Any]]:
    """A challenger's stored scores in prediction order, after ``after_prediction_id``."""
    query = (select(ShadowPrediction).where(ShadowPrediction.model_version == model_version,
                                            ShadowPrediction.prediction_id > after_prediction_id)
             .order_by(ShadowPrediction.prediction_id).limit(limit))
    with db.read() as session:
        return [{"prediction_id": r.prediction_id, "model_name": r.model_name, "model_version": r.model_version,
                 "probability": r.probability, "created_at": r.created_at.isoformat()}
                for r in session.scalars(query)]


def _event_row(kind: str, detail: Mapping[str, Any] | None, model_version: str | None, now: datetime) -> Event:
    return Event(kind=kind, detail=dict(detail or {}), model_version=model_version, created_at=now)


def _result_rows(results: Sequence[Mapping[str, Any]], now: datetime) -> list[MonitoringResult]:
    return [MonitoringResult(**{"created_at": now, "details": {}, **r}) for r in results]


def predictions_for_request(db: Database, request_id: str) -> list[dict[str, Any]]:
    """The predictions stored by the request with this id, each with its record's stored ``features``, in
    the order stored (one query on the indexed ``request_id``)."""
    with db.read() as session:
        rows = session.execute(select(Prediction, Record.features)
                               .join(Record, Record.record_id == Prediction.record_id)
                               .where(Prediction.request_id == request_id).order_by(Prediction.id))
        return [{**prediction_dict(p), "features": dict(features)} for p, features in rows]


# -- the monitor's durable state ---------------------------------------------------------------------------
def monitor_state(db: Database, name: str) -> dict[str, Any] | None:
    """The monitor's saved state with its version, or None when it never saved one."""
    with db.read() as session:
        row = session.get(MonitorState, name)
        return None if row is None else monitor_state_dict(row)


def save_monitor_state(db: Database, name: str, state: Mapping[str, Any], *, version: int | None,
                       results: Sequence[Mapping[str, Any]] = (),
                       events: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Replace the monitor's state if it is still at ``version`` (None: no state saved yet), and store the
    step's monitoring results and events with it, all in one transaction: a step's outputs and the cursor
    that says they were produced commit together or not at all. A stale version (another writer, or this
    writer's earlier save whose answer was lost) is a :class:`ConflictError` and changes nothing."""
    now = utcnow()
    try:
        with db.transaction() as session:
            row = session.get(MonitorState, name, with_for_update=True)
            current = None if row is None else row.version
            if current != version:
                raise ConflictError(f"the monitor state {name!r} is at version {current}, not {version}: another "
                                    "writer saved it since it was read; read it again",
                                    detail={"name": name, "version": current, "sent": version})
            if row is None:
                row = MonitorState(name=name, state=dict(state), version=1, updated_at=now)
                session.add(row)
            else:
                row.state, row.version, row.updated_at = dict(state), row.version + 1, now
            session.add_all(_result_rows(results, now))
            session.add_all([_event_row(e["kind"], e.get("detail"), e.get("model_version"), now) for e in events])
            session.flush()
            return monitor_state_dict(row)
    except IntegrityError as exc:  # two first saves at once: the loser's version (None) is stale
        raise ConflictError(f"the monitor state {name!r} was created concurrently; read it again") from exc


def _stored_features(session: Session | Connection, record_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not record_ids:
        return {}
    rows = session.execute(select(Record.record_id, Record.features).where(Record.record_id.in_(set(record_ids))))
    return {rid: dict(features) for rid, features in rows}


def _outcomes_by_id(session: Session, record_ids: Sequence[str]) -> dict[str, Outcome]:
    if not record_ids:
        return {}
    rows = session.scalars(select(Outcome).where(Outcome.record_id.in_(set(record_ids))))
    return {r.record_id: r for r in rows}


def _new_records(stored: Mapping[str, Mapping[str, Any]], records: Sequence[tuple[str, Mapping[str, Any]]],
                 source: str, now: datetime) -> list[dict[str, Any]]:
    """Rows to insert for records not stored yet (``stored`` is left as it is). A record id names one
    encounter: sending it again is fine, with other values it is a conflict (and the whole request is refused)."""
    new: dict[str, dict[str, Any]] = {}
    for record_id, features in records:
        known = stored.get(record_id)
        if known is None and record_id in new:
            known = new[record_id]["features"]
        if known is None:
            new[record_id] = {"record_id": record_id, "features": dict(features), "received_at": now,
                              "source": source}
        elif not same_features(known, features):
            changed = sorted(k for k in {*known, *features} if not _same_value(known.get(k), features.get(k)))
            raise ConflictError(f"record {record_id!r} is already stored with other values for "
                                f"{', '.join(changed)}; use a new record id",
                                detail={"record_id": record_id, "fields": changed})
    return list(new.values())


def same_features(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal after a JSON round trip (70 and 70.0 are the same age)."""
    return set(a) == set(b) and all(_same_value(a[k], b[k]) for k in a)


def _same_value(x: Any, y: Any) -> bool:
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool) \
            and not isinstance(y, bool):
        return math.isclose(float(x), float(y), rel_tol=0, abs_tol=1e-12) or (x != x and y != y)
    return bool(x == y)


# -- reads --------------------------------------------------------------------------------------------
def counts(db: Database) -> dict[str, int]:
    """Rows per table (for status pages and tests)."""
    with db.read() as session:
        return {name: int(session.scalar(select(func.count()).select_from(model)) or 0)
                for name, model in TABLES.items()}


def list_patients(db: Database, page: Page, search: str | None = None) -> dict[str, Any]:
    """Records, newest first, each with its latest prediction and its outcome."""
    with db.read() as session:
        query = select(Record)
        if search:
            query = query.where(Record.record_id.contains(search, autoescape=True))
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = list(session.scalars(query.order_by(Record.received_at.desc(), Record.id.desc())
                                    .limit(page.limit).offset(page.offset)))
        ids = [r.record_id for r in rows]
        latest = _latest_predictions(session, ids)
        outcomes = _outcomes_by_id(session, ids)
        items = [{**record_dict(r), "latest_prediction": prediction_dict(latest[r.record_id])
                  if r.record_id in latest else None,
                  "outcome": outcome_dict(outcomes[r.record_id]) if r.record_id in outcomes else None}
                 for r in rows]
    return {"items": items, "total": total, "limit": page.limit, "offset": page.offset}


def _latest_predictions(session: Session, record_ids: Sequence[str]) -> dict[str, Prediction]:
    if not record_ids:
        return {}
    newest = (select(func.max(Prediction.id)).where(Prediction.record_id.in_(record_ids))
              .group_by(Prediction.record_id).scalar_subquery())
    return {p.record_id: p for p in session.scalars(select(Prediction).where(Prediction.id.in_(newest)))}


def patient(db: Database, record_id: str) -> dict[str, Any]:
    """One record with every prediction and explanation made on it and its outcome."""
    with db.read() as session:
        row = session.scalar(select(Record).where(Record.record_id == record_id))
        if row is None:
            raise NotFoundError(f"no stored record with id {record_id!r}")
        predictions = session.scalars(select(Prediction).where(Prediction.record_id == record_id)
                                      .order_by(Prediction.id.desc()))
        explanations = session.scalars(select(Explanation).where(Explanation.record_id == record_id)
                                       .order_by(Explanation.id.desc()))
        outcome = session.scalar(select(Outcome).where(Outcome.record_id == record_id))
        return {**record_dict(row), "predictions": [prediction_dict(p) for p in predictions],
                "explanations": [explanation_dict(e) for e in explanations],
                "outcome": outcome_dict(outcome) if outcome else None}


def record_features(db: Database, record_id: str) -> dict[str, Any]:
    """The stored features of a record."""
    with db.read() as session:
        features = session.scalar(select(Record.features).where(Record.record_id == record_id))
    if features is None:
        raise NotFoundError(f"no stored record with id {record_id!r}")
    return dict(features)


def list_predictions(db: Database, page: Page, *, since: datetime | None = None,
                     model_version: str | None = None) -> dict[str, Any]:
    """Predictions, newest first."""
    query = select(Prediction)
    if since is not None:
        query = query.where(Prediction.created_at >= _utc(since))
    if model_version is not None:
        query = query.where(Prediction.model_version == model_version)
    return _paged(db, query, Prediction.id.desc(), page, prediction_dict)


def list_monitoring(db: Database, page: Page, *, since: datetime | None = None,
                    kind: str | None = None) -> dict[str, Any]:
    """Monitoring results, newest first."""
    query = select(MonitoringResult)
    if since is not None:
        query = query.where(MonitoringResult.created_at >= _utc(since))
    if kind is not None:
        query = query.where(MonitoringResult.kind == kind)
    return _paged(db, query, MonitoringResult.id.desc(), page, monitoring_dict)


def list_events(db: Database, page: Page, *, since: datetime | None = None,
                kind: str | None = None) -> dict[str, Any]:
    """Pipeline and lifecycle events, newest first."""
    query = select(Event)
    if since is not None:
        query = query.where(Event.created_at >= _utc(since))
    if kind is not None:
        query = query.where(Event.kind == kind)
    return _paged(db, query, Event.id.desc(), page, event_dict)


def version_events(db: Database, model_version: str, also_kinds: Sequence[str] = (),
                   limit: int = 10_000) -> list[dict[str, Any]]:
    """The events stored under ``model_version`` and every event of ``also_kinds`` (which may name it in their
    detail), oldest first: the raw material of a version's rollout history."""
    query = select(Event).where(or_(Event.model_version == model_version, Event.kind.in_(list(also_kinds))))
    with db.read() as session:
        return [event_dict(e) for e in session.scalars(query.order_by(Event.id.asc()).limit(limit))]


def _paged(db: Database, query: Any, order: Any, page: Page, as_dict: Any) -> dict[str, Any]:
    with db.read() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(query.order_by(order).limit(page.limit).offset(page.offset))
        return {"items": [as_dict(r) for r in rows], "total": total, "limit": page.limit, "offset": page.offset}


# -- rows as JSON ---------------------------------------------------------------------------------------
def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time we store is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return _utc(value).isoformat() if value is not None else None


def record_dict(r: Record) -> dict[str, Any]:
    return {"record_id": r.record_id, "features": r.features, "received_at": _iso(r.received_at),
            "source": r.source}


def prediction_dict(p: Prediction) -> dict[str, Any]:
    return {"id": p.id, "record_id": p.record_id, "model_name": p.model_name, "model_version": p.model_version,
            "probability": p.probability, "label": p.label, "latency_ms": p.latency_ms,
            "request_id": p.request_id, "created_at": _iso(p.created_at)}


def explanation_dict(e: Explanation) -> dict[str, Any]:
    return {"id": e.id, "record_id": e.record_id, "model_name": e.model_name, "model_version": e.model_version,
            "method": e.method, "explanation": e.explanation, "request_id": e.request_id,
            "created_at": _iso(e.created_at)}


def outcome_dict(o: Outcome) -> dict[str, Any]:
    return {"record_id": o.record_id, "outcome": o.outcome, "received_at": _iso(o.received_at), "source": o.source,
            "recorded_by": o.recorded_by}


def monitoring_dict(m: MonitoringResult) -> dict[str, Any]:
    return {"id": m.id, "created_at": _iso(m.created_at), "window_start": _iso(m.window_start),
            "window_end": _iso(m.window_end), "window_rows": m.window_rows, "kind": m.kind, "metric": m.metric,
            "value": m.value, "threshold": m.threshold, "alert": m.alert, "feature": m.feature,
            "model_version": m.model_version, "details": m.details}


def monitor_state_dict(m: MonitorState) -> dict[str, Any]:
    return {"name": m.name, "state": m.state, "version": m.version, "updated_at": _iso(m.updated_at)}


def event_dict(e: Event) -> dict[str, Any]:
    return {"id": e.id, "created_at": _iso(e.created_at), "kind": e.kind, "model_version": e.model_version,
            "detail": e.detail}
