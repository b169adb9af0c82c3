"""The platform database on SQLite and PostgreSQL: migrations, all-or-nothing writes, idempotent
outcomes, hashed tokens. (Fixtures live here, not in a conftest.py: test modules elsewhere import
``conftest`` by name, and a second one would shadow theirs.)"""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import SQLAlchemyError
from testsupport import fresh_postgres_database

from learning_machine.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    ServiceUnavailableError,
    UnknownNameError,
)
from learning_machine.settings import Settings, load_settings
from learning_machine.store import Database, repository
from learning_machine.store.db import current_revision, normalise_url
from learning_machine.store.models import ApiToken
from learning_machine.store.tokens import ROLES, authenticate, create_token, ensure_default_tokens, revoke_token


@pytest.fixture(scope="module")
def fresh_postgres_url() -> Iterator[str]:
    """An empty database of its own (not the session one MLflow's tests share), dropped at the end."""
    with fresh_postgres_database("lm_store") as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A migrated, empty platform database on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{Path(tmp_path_factory.mktemp('store')) / 'lm.db'}"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    database = Database(url)
    database.upgrade()
    yield database
    database.dispose()


TABLES = {"records", "predictions", "explanations", "outcomes", "monitoring_results", "events", "api_tokens",
          "monitor_state"}


def rid() -> str:
    return f"r-{uuid.uuid4().hex[:8]}"


def pred(record_id: str, age: float = 50, version: str = "1", outcome: int | None = None) -> repository.NewPrediction:
    return repository.NewPrediction(record_id, {"age": age, "sex": "male"}, 0.25, 0, version, outcome)


def test_migrations_create_every_table_on_an_empty_database(db: Database) -> None:
    tables = set(inspect(db.engine).get_table_names())
    assert tables >= TABLES
    # Our own version table, so the database can be shared with MLflow's Alembic history.
    assert "lm_alembic_version" in tables and "alembic_version" not in tables
    assert current_revision(db.engine) == "0003"
    db.upgrade()  # a current schema is left alone
    assert current_revision(db.engine) == "0003"


def test_a_database_of_the_first_release_is_upgraded_with_its_rows(tmp_path: Path) -> None:
    """0001 -> 0003 keeps every stored outcome and token; the new columns and tables start empty."""
    from learning_machine.store.db import upgrade

    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(database.engine, "0001")
    with database.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO records (record_id, features, received_at, source) "
                             "VALUES ('r1', '{}', '2026-01-01', 'api')")
        conn.exec_driver_sql("INSERT INTO outcomes (record_id, outcome, received_at, source) "
                             "VALUES ('r1', 1, '2026-01-01', 'api')")
    database.upgrade()
    assert current_revision(database.engine) == "0003"
    with database.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT record_id, outcome, recorded_by FROM outcomes").all() == [("r1", 1, None)]
        assert conn.exec_driver_sql("SELECT count(*) FROM shadow_predictions").scalar() == 0
    database.dispose()


def test_a_prediction_is_stored_with_its_record(db: Database) -> None:
    before = repository.counts(db)
    r = rid()
    stored = repository.store_predictions(db, [pred(r)], model_name="m", latency_ms=4.5, request_id="req-1")
    assert stored[0]["record_id"] == r and stored[0]["latency_ms"] == 4.5
    after = repository.counts(db)
    assert after["records"] == before["records"] + 1 and after["predictions"] == before["predictions"] + 1
    # The same record again (70 == 70.0 after JSON) adds a prediction, not a record.
    repository.store_predictions(db, [pred(r, age=50.0, version="2")], model_name="m", latency_ms=1,
                                 request_id="req-2")
    again = repository.counts(db)
    assert again["records"] == after["records"] and again["predictions"] == after["predictions"] + 1
    history = repository.patient(db, r)
    assert [p["model_version"] for p in history["predictions"]] == ["2", "1"]


def test_concurrent_requests_with_the_same_new_record_are_all_stored(db: Database) -> None:
    """Eight requests carrying the same new record at once (a client retrying, two clinics sending the
    same patient): before, the losers of the race to insert the record got a 409; now every prediction is
    stored against the one record. Different features for it still conflict."""
    import threading

    for _ in range(5):  # several rounds: the race is not hit every time
        r, barrier, errors = rid(), threading.Barrier(8), []
        before = repository.counts(db)

        def send(i: int, record: str, barrier: threading.Barrier, errors: list[Exception]) -> None:
            barrier.wait()
            try:
                repository.store_predictions(db, [pred(record)], model_name="m", latency_ms=1,
                                             request_id=f"race-{i}")
            except Exception as exc:  # every failure is the finding
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(i, r, barrier, errors)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        after = repository.counts(db)
        assert after["records"] == before["records"] + 1 and after["predictions"] == before["predictions"] + 8
    with pytest.raises(ConflictError, match="age"):
        repository.store_predictions(db, [pred(r, age=51)], model_name="m", latency_ms=1, request_id="other")


def test_a_batch_with_one_conflicting_record_stores_nothing(db: Database) -> None:
    r = rid()
    repository.store_predictions(db, [pred(r)], model_name="m", latency_ms=1, request_id="a")
    before = repository.counts(db)
    with pytest.raises(ConflictError, match="age"):
        repository.store_predictions(db, [pred(rid()), pred(rid(), outcome=1), pred(r, age=51)], model_name="m",
                                     latency_ms=1, request_id="b")
    assert repository.counts(db) == before


def test_a_group_of_requests_commits_once_and_each_request_stands_alone(db: Database) -> None:
    """Group commit (the gateway's concurrent requests in one transaction): every request is still all or
    nothing. A request contradicting a stored record, or an earlier request of the same group, is refused
    alone; the same new record in two requests with the same values is stored once, predicted twice; a batch
    with an outcome and more rows than COPY_ROWS goes the bulk way on PostgreSQL; the others are stored."""
    from learning_machine.store.bulk import COPY_ROWS

    stored, shared, fresh = rid(), rid(), rid()
    repository.store_predictions(db, [pred(stored)], model_name="m", latency_ms=1, request_id="first")
    before = repository.counts(db)
    big = [pred(rid(), outcome=i % 2) for i in range(COPY_ROWS + 5)]
    requests = [
        repository.PredictionRequest.of([pred(shared), pred(rid())], "g-1", 2.0),
        repository.PredictionRequest.of([pred(rid()), pred(stored, age=70)], "g-2", 2.0),  # contradicts a stored one
        repository.PredictionRequest.of([pred(shared)], "g-3", 2.0),  # the same new record again: fine
        repository.PredictionRequest.of([pred(shared, age=33)], "g-4", 2.0),  # contradicts g-1's new record
        repository.PredictionRequest.of([pred(fresh, outcome=1)], "g-5", 2.0),
        repository.PredictionRequest.of([pred(fresh, outcome=0)], "g-6", 2.0),  # contradicts g-5's outcome
        repository.PredictionRequest.of(big, "g-7", 2.0),
    ]
    results = repository.store_prediction_requests(db, requests, model_name="m")
    refused = {request.request_id: str(result) for request, result in zip(requests, results, strict=True)
               if isinstance(result, ConflictError)}
    assert set(refused) == {"g-2", "g-4", "g-6"} and "age" in refused["g-2"] and "age" in refused["g-4"]
    assert "outcome" in refused["g-6"]
    assert [len(r) for r in results if not isinstance(r, ConflictError)] == [2, 1, 1, COPY_ROWS + 5]
    after = repository.counts(db)
    assert after["predictions"] - before["predictions"] == 2 + 1 + 1 + COPY_ROWS + 5
    assert after["records"] - before["records"] == 2 + 1 + COPY_ROWS + 5  # shared stored once
    assert after["outcomes"] - before["outcomes"] == 1 + COPY_ROWS + 5
    assert [p["record_id"] for p in repository.predictions_for_request(db, "g-7")] == [i.record_id for i in big]
    assert repository.patient(db, fresh)["outcome"]["outcome"] == 1
    # The rows written straight through the driver read back as SQLAlchemy wrote them before.
    history = repository.patient(db, shared)
    assert history["features"] == {"age": 50, "sex": "male"} and len(history["predictions"]) == 2


def answered(request: repository.PredictionRequest, probability: float = 0.25) -> repository.PredictionRequest:
    n = len(request.record_ids)
    return request.answered([probability] * n, [0] * n, ["1"] * n, 3.0)


def unanswered(*record_ids: str, age: float = 50) -> repository.PredictionRequest:
    return repository.PredictionRequest(list(record_ids), [{"age": age, "sex": "male"} for _ in record_ids],
                                        [None] * len(record_ids), f"q-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def small_groups_written_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records written ahead from one row on, so that the write-ahead tests can use a few rows on both backends
    (the gateway does it from ``WRITE_AHEAD_MIN_ROWS`` rows: below that a head start gains nothing)."""
    monkeypatch.setattr(repository, "WRITE_AHEAD_MIN_ROWS", {})


def stored_records(db: Database, record_ids: list[str]) -> int:
    """Counted on a connection of its own (another writer's view), not the one writing."""
    from learning_machine.store.models import Record

    with db.read() as session:
        return len(session.scalars(select(Record.record_id).where(Record.record_id.in_(record_ids))).all())


def test_records_written_ahead_are_invisible_until_committed_with_their_predictions(db: Database) -> None:
    """The gateway writes a group's records while the model server works, then adds the predictions and
    commits once: before that commit nobody sees the records; after it, the rows are the ones the ordinary
    way writes (features, times, the model's probability to the last bit)."""
    import random

    ids = [rid() for _ in range(60)]  # above COPY_ROWS: PostgreSQL's COPY path
    request = unanswered(*ids)
    ahead = repository.begin_store(db, [request])
    assert ahead is not None
    assert stored_records(db, ids) == 0  # uncommitted
    probabilities = [random.random() for _ in ids]
    done = request.answered(probabilities, [int(p > 0.5) for p in probabilities], ["7"] * len(ids), 2.5)
    results = repository.store_prediction_requests(db, [done], model_name="m", ahead=ahead)
    assert not isinstance(results[0], Exception) and len(results[0]) == len(ids)
    assert stored_records(db, ids) == len(ids)
    plain_id = rid()
    repository.store_predictions(db, [pred(plain_id)], model_name="m", latency_ms=2.5, request_id="plain")
    ahead, plain = repository.patient(db, ids[0]), repository.patient(db, plain_id)
    assert ahead["features"] == plain["features"] == {"age": 50, "sex": "male"}
    assert ahead["source"] == plain["source"] == "api"
    stored = repository.predictions_for_request(db, request.request_id)
    assert [p["record_id"] for p in stored] == ids
    assert [p["probability"] for p in stored] == probabilities  # exact: no rounding on the way
    assert {p["model_version"] for p in stored} == {"7"} and {p["latency_ms"] for p in stored} == {2.5}
    assert stored[0]["created_at"] == results[0][0]["created_at"]


def test_records_written_ahead_are_rolled_back_when_the_group_is_not_the_one_written(db: Database, small_groups_written_ahead: None) -> None:
    """A request of the group got no answer (its model call failed), or the model server was slow and the
    gateway gave up the head start: the records written ahead are rolled back, the lock is released at once
    (the next write does not wait), and the answered requests are stored the ordinary way."""
    first, second = unanswered(rid()), unanswered(rid(), rid())
    ahead = repository.begin_store(db, [first, second])
    assert ahead is not None
    results = repository.store_prediction_requests(db, [answered(second)], model_name="m", ahead=ahead)
    assert not isinstance(results[0], Exception)
    assert stored_records(db, list(first.record_ids)) == 0
    assert stored_records(db, list(second.record_ids)) == 2
    abandoned = unanswered(rid())
    ahead = repository.begin_store(db, [abandoned])
    assert ahead is not None
    ahead.abandon()
    ahead.abandon()  # twice is harmless
    assert stored_records(db, list(abandoned.record_ids)) == 0
    repository.store_predictions(db, [pred(rid())], model_name="m", latency_ms=1, request_id="after")


def test_a_group_written_ahead_takes_in_the_groups_answered_meanwhile(db: Database, small_groups_written_ahead: None) -> None:
    """Group commit: requests answered while the first group's records were being written join its
    transaction. One contradicting another sends the whole group the ordinary way, where it alone fails."""
    head, joined = unanswered(rid()), unanswered(rid())
    ahead = repository.begin_store(db, [head])
    assert ahead is not None
    results = repository.store_prediction_requests(db, [answered(head), answered(joined)], model_name="m",
                                                   ahead=ahead)
    assert [len(r) for r in results if not isinstance(r, Exception)] == [1, 1]
    assert stored_records(db, [*head.record_ids, *joined.record_ids]) == 2
    shared = rid()
    head = unanswered(shared)
    ahead = repository.begin_store(db, [head])
    assert ahead is not None
    clash = unanswered(shared, age=99)  # the same new record with other values
    results = repository.store_prediction_requests(db, [answered(head), answered(clash)], model_name="m",
                                                   ahead=ahead)
    assert not isinstance(results[0], Exception) and isinstance(results[1], ConflictError)
    assert repository.patient(db, shared)["features"]["age"] == 50


def test_a_record_stored_already_is_not_written_ahead(db: Database, small_groups_written_ahead: None) -> None:
    """Written ahead means new: a record sent again (a retry, a second prediction) goes the ordinary way,
    which reads what is stored first, and nothing is left locked."""
    known = rid()
    repository.store_predictions(db, [pred(known)], model_name="m", latency_ms=1, request_id="known")
    again = unanswered(known, rid())
    assert repository.begin_store(db, [again]) is None
    results = repository.store_prediction_requests(db, [answered(again)], model_name="m")
    assert not isinstance(results[0], Exception) and len(results[0]) == 2
    twice = unanswered(known, age=51)  # contradicts the stored record: refused, as before
    assert repository.begin_store(db, [twice]) is None
    assert isinstance(repository.store_prediction_requests(db, [answered(twice)], model_name="m")[0], ConflictError)


def test_a_small_group_on_postgresql_is_stored_in_one_statement_on_a_connection_checked_out_ahead(
        db: Database) -> None:
    """Below WRITE_AHEAD_MIN_ROWS, PostgreSQL writes nothing ahead: the connection is checked out (its ping)
    while the model server works, and once answered the group is one statement that commits by itself, the
    rows the ordinary way writes. A request contradicting an earlier one of the group is refused alone; a
    record stored already sends the group the ordinary way, where it is stored; nothing is left open. SQLite
    begins nothing ahead for a small group: its connections cost no round trip."""
    from learning_machine.store.bulk import COPY_ROWS

    head = unanswered(rid(), rid())
    ahead = repository.begin_store(db, [head])
    if db.engine.dialect.name == "sqlite":
        assert ahead is None
        return
    assert ahead is not None and not ahead.records_written
    clash = unanswered(head.record_ids[0], age=99)
    joined = unanswered(rid())
    results = repository.store_prediction_requests(db, [answered(head), answered(clash), answered(joined)],
                                                   model_name="m", ahead=ahead)
    assert [len(r) for r in results if not isinstance(r, Exception)] == [2, 1]
    assert isinstance(results[1], ConflictError)
    assert not ahead.open
    assert stored_records(db, [*head.record_ids, *joined.record_ids]) == 3
    stored = repository.predictions_for_request(db, head.request_id)
    assert [p["record_id"] for p in stored] == list(head.record_ids)
    assert stored[0]["created_at"] == results[0][0]["created_at"]
    plain_id = rid()
    repository.store_predictions(db, [pred(plain_id)], model_name="m", latency_ms=2.5, request_id="plain-one")
    assert repository.patient(db, head.record_ids[0])["features"] == repository.patient(db, plain_id)["features"]

    again = unanswered(head.record_ids[1], rid())  # one record stored already: the statement is refused
    ahead = repository.begin_store(db, [again])
    assert ahead is not None and not ahead.records_written
    results = repository.store_prediction_requests(db, [answered(again)], model_name="m", ahead=ahead)
    assert not isinstance(results[0], Exception) and len(results[0]) == 2
    assert stored_records(db, list(again.record_ids)) == 2

    small = unanswered(rid())  # answered together with more than one statement takes: the ordinary way
    ahead = repository.begin_store(db, [small])
    assert ahead is not None
    big = unanswered(*[rid() for _ in range(COPY_ROWS)])
    results = repository.store_prediction_requests(db, [answered(small), answered(big)], model_name="m",
                                                   ahead=ahead)
    assert [len(r) for r in results if not isinstance(r, Exception)] == [1, COPY_ROWS]
    assert not ahead.open
    ahead = repository.begin_store(db, [unanswered(rid())])
    assert ahead is not None
    ahead.abandon()  # the model call failed: the connection goes back, nothing was written
    repository.store_predictions(db, [pred(rid())], model_name="m", latency_ms=1, request_id="after-one")
    # Every pooled connection is back to transactions: a later group's records written ahead stay all or nothing.
    held = [db.engine.connect() for _ in range(db.engine.pool.checkedin())]
    try:
        assert held and not any(c.connection.driver_connection.autocommit for c in held)
    finally:
        for connection in held:
            connection.close()


def test_one_statement_stores_a_small_group_on_postgresql_or_nothing(db: Database) -> None:
    """bulk.insert_all on PostgreSQL: fewer than COPY_ROWS rows across tables go as one INSERT with the others
    as WITH parts, committed by itself outside a transaction; a row the database refuses (a prediction of no
    stored record) refuses the whole statement, so nothing of it is stored."""
    from sqlalchemy.exc import IntegrityError

    from learning_machine.store.bulk import Insert, insert_all, one_statement
    from learning_machine.store.models import Prediction, Record

    dialect = db.engine.dialect.name
    now = datetime.now(UTC)
    record, ghost = rid(), rid()
    records = Insert(Record.__table__, {"record_id": [record], "features": [{"age": 1.5}]},
                     {"source": "api", "received_at": now})
    predictions = Insert(Prediction.__table__,
                         {"record_id": [record, ghost], "probability": [0.1, 0.2], "label": [0, 0],
                          "model_version": ["1", "1"], "latency_ms": [1.0, 1.0], "request_id": ["one", "one"]},
                         {"model_name": "m", "created_at": now})
    assert one_statement(dialect, [records, predictions]) == (dialect == "postgresql")
    with pytest.raises(IntegrityError), db.autocommit() if dialect == "postgresql" else db.connection() as connection:
        insert_all(connection, [records, predictions])
    assert stored_records(db, [record]) == 0
    fine = predictions._replace(columns={name: values[:1] for name, values in predictions.columns.items()})
    with db.autocommit() if dialect == "postgresql" else db.connection() as connection:
        insert_all(connection, [records, fine])
    assert stored_records(db, [record]) == 1
    assert [p["record_id"] for p in repository.predictions_for_request(db, "one")] == [record]


def test_bulk_rows_orjson_cannot_write_are_stored_the_exact_way(db: Database) -> None:
    """A feature value beyond 64 bits (JSON allows it; orjson does not write it) is stored as the standard
    library writes it, on both backends; a missing (None) feature is JSON null."""
    big = 2**70
    record = rid()
    repository.store_predictions(db, [repository.NewPrediction(record, {"age": big, "sex": None}, 0.5, 1, "1")],
                                 model_name="m", latency_ms=1, request_id="big")
    assert repository.patient(db, record)["features"] == {"age": big, "sex": None}


def test_the_gateways_sqlite_database_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    """The gateway's SQLite connections never checkpoint inside a commit (wal_autocheckpoint=0); a thread of
    its own copies the WAL into the database file instead, and stops with the database."""
    path = tmp_path / "lm.db"
    db = Database(f"sqlite:///{path}", background_checkpoints=True, checkpoint_interval_s=0.1)
    db.upgrade()
    assert db.checkpointer is not None
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    ids = [rid() for _ in range(3000)]
    results = repository.store_prediction_requests(db, [answered(unanswered(*ids))], model_name="m")
    assert not isinstance(results[0], Exception)
    wal = path.with_name("lm.db-wal")
    size = path.stat().st_size
    assert wal.stat().st_size > 1_000_000  # the commit went to the WAL only
    import time

    deadline = time.monotonic() + 10
    while path.stat().st_size <= size and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.stat().st_size > size + 500_000  # copied into the database file by the checkpointer
    checkpointer = db.checkpointer
    assert checkpointer.running
    db.dispose()
    assert not checkpointer.running
    plain = Database(f"sqlite:///{tmp_path / 'other.db'}")
    assert plain.checkpointer is None
    with plain.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000  # SQLite's default elsewhere
    plain.dispose()


def test_outcomes_are_idempotent_and_conflicts_need_overwrite(db: Database) -> None:
    r = rid()
    repository.store_predictions(db, [pred(r)], model_name="m", latency_ms=1, request_id="a")
    assert repository.store_outcome(db, r, 1)[1] == "created"
    before = repository.counts(db)
    assert repository.store_outcome(db, r, 1)[1] == "unchanged"
    with pytest.raises(ConflictError):
        repository.store_outcome(db, r, 0)
    assert repository.counts(db) == before
    stored, status = repository.store_outcome(db, r, 0, overwrite=True)
    assert (stored["outcome"], status) == (0, "overwritten")
    assert repository.counts(db)["outcomes"] == before["outcomes"]
    with pytest.raises(NotFoundError):
        repository.store_outcome(db, "no-such-record", 1)


def test_history_reads_page_and_filter(db: Database) -> None:
    prefix = f"pg-{uuid.uuid4().hex[:6]}"
    ids = [f"{prefix}-{i}" for i in range(5)]
    repository.store_predictions(db, [pred(i) for i in ids], model_name="m", latency_ms=1, request_id="x")
    repository.store_outcome(db, ids[0], 1)
    page = repository.list_patients(db, repository.Page(limit=2), search=prefix)
    assert page["total"] == 5 and len(page["items"]) == 2
    assert all(item["latest_prediction"]["model_version"] == "1" for item in page["items"])
    one = repository.list_patients(db, repository.Page(), search=ids[0])
    assert one["items"][0]["outcome"]["outcome"] == 1
    assert repository.list_predictions(db, repository.Page(), model_version="no-such")["total"] == 0
    repository.add_event(db, "retraining-triggered", {"reason": "drift"}, model_version="1")
    repository.add_monitoring_results(db, [{"kind": "drift", "metric": "p_value", "value": 0.01, "threshold": 0.05,
                                            "alert": True, "feature": "age"}])
    assert repository.list_events(db, repository.Page(), kind="retraining-triggered")["items"][0]["detail"] == {
        "reason": "drift"}
    assert repository.list_monitoring(db, repository.Page(), kind="drift")["items"][0]["feature"] == "age"


def test_a_failing_statement_does_not_put_its_parameters_in_the_error_or_the_log(
        db: Database, caplog: pytest.LogCaptureFixture) -> None:
    """SQLAlchemy appends a statement's parameters to its errors (and logs them with echo): they are patient
    features. The engines hide them. (The failure is one the database does not echo back itself: an unknown
    column; PostgreSQL's own DETAIL lines can quote a row, see make_engine.)"""
    features = json.dumps({"age": 87, "diagnosis": "SECRET-DIAGNOSIS-4711"})
    caplog.set_level("INFO", logger="sqlalchemy.engine")
    # SQLite reports an unknown column as an OperationalError, which the store wraps as "unavailable".
    with pytest.raises((SQLAlchemyError, ServiceUnavailableError)) as failed, db.transaction() as session:
        session.execute(text("INSERT INTO records (record_id, no_such_column) VALUES (:rid, :features)"),
                        {"rid": "patient-SECRET-ID-0815", "features": features})
    error = failed.value if isinstance(failed.value, SQLAlchemyError) else failed.value.__cause__
    assert isinstance(error, SQLAlchemyError)
    message = f"{error} {failed.value}"
    assert "no_such_column" in message  # the error still says what failed
    assert "hidden" in message.lower()
    for secret in ("SECRET-DIAGNOSIS-4711", "patient-SECRET-ID-0815", "87"):
        assert secret not in message and secret not in caplog.text


def test_tokens_are_stored_hashed_and_checked(db: Database) -> None:
    token, principal = create_token(db, "clinician", "ward 3")
    assert token.startswith("lm_") and len(token) > 40
    with db.read() as session:
        hashes = list(session.scalars(select(ApiToken.token_hash)))
    assert token not in hashes and all(len(h) == 64 for h in hashes)
    assert authenticate(db, token) == principal
    for bad in (None, "", "lm_not-a-token"):
        with pytest.raises(AuthenticationError):
            authenticate(db, bad)
    revoke_token(db, principal.token_id)
    with pytest.raises(AuthenticationError):
        authenticate(db, token)
    with pytest.raises(UnknownNameError, match="admin, clinician, data-scientist"):
        create_token(db, "nurse")


def test_default_tokens_one_per_role_in_a_private_file(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'lm.db'}")
    db.upgrade()
    path = tmp_path / "home" / "tokens.json"
    said: list[str] = []
    assert ensure_default_tokens(db, path, said.append) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    tokens = json.loads(path.read_text())
    assert set(tokens) == set(ROLES)
    assert {authenticate(db, t).role for t in tokens.values()} == set(ROLES)
    assert str(path) in said[0]
    assert ensure_default_tokens(db, path) is False  # a second `lm up` keeps them
    assert json.loads(path.read_text()) == tokens


def test_urls_and_production_settings(tmp_path: Path) -> None:
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert Settings(home=tmp_path).database_uri().startswith("sqlite:///")
    from learning_machine.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="LM_DATABASE_URL"):
        load_settings(environment="production", mlflow_tracking_uri="http://mlflow.lm.svc:5000")
    ok = load_settings(environment="production", mlflow_tracking_uri="http://mlflow.lm.svc:5000",
                       database_url="postgresql://lm@db.lm.svc/lm")
    assert ok.database_uri().startswith("postgresql")
