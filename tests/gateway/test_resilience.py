"""Nothing stored twice, nothing lost: a prediction request retried with its X-Request-ID is answered from
what was stored; `lm stream` resends a batch after a 502 or a lost answer without duplicating it; the
monitor's state is saved with optimistic concurrency (a stale version is refused) together with its step's
results and events. Real gateway, real model server."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from gateway_harness import RunningGateway, make_records, sqlite_gateway
from testsupport import FlakyProxy

from learning_machine.clients.gateway import GatewayError, LearningMachineClient
from learning_machine.logs import JsonFormatter
from learning_machine.loop.stream import StreamPlan, generated_records, run_stream


@pytest.fixture(scope="module")
def gw(tmp_path_factory, model_server) -> Iterator[RunningGateway]:
    with sqlite_gateway(tmp_path_factory.mktemp("resilience-gateway"), model_server) as running:
        yield running


def test_an_unexpected_failure_in_a_prediction_stage_fails_that_request_not_the_gateway(gw, monkeypatch, caplog):
    """Fault injection into the real gateway (it runs in this process): the store step raises something no
    handler expects, once. That request gets a 500 problem with nothing stored, and the error is logged with
    that request's id as the log record's own field (the worker thread is outside the request's context); the
    worker threads that group requests keep running, so the next request is predicted and stored."""
    from learning_machine.gateway import service

    real = service.store_answers
    calls = {"n": 0}

    def fails_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "store_answers", fails_once)
    client = gw.client("clinician")
    with caplog.at_level(logging.ERROR, logger="learning_machine.gateway"):
        broken = client.post("/v1/predictions", json=make_records(1, prefix="bug-a")[0])
    assert broken.status_code == 500 and "injected" not in broken.text and broken.json()["request_id"]
    logged = [r for r in caplog.records if r.getMessage().startswith("prediction request")]
    assert [getattr(r, "request_id", None) for r in logged] == [broken.json()["request_id"]]
    group = [r.getMessage() for r in caplog.records if r.getMessage().startswith("the store stage failed")]
    assert group == [f"the store stage failed a group of 1 request(s): {broken.json()['request_id']}"]
    assert "injected" in json.loads(JsonFormatter().format(logged[0]))["exc_info"]
    assert gw.stored_predictions("bug-a") == 0
    assert client.post("/v1/predictions", json=make_records(1, prefix="bug-b")[0]).status_code == 200
    assert gw.stored_predictions("bug-b") == 1


def test_a_prediction_request_sent_again_with_its_request_id_is_answered_from_what_was_stored(gw):
    records = make_records(3, prefix="ida")
    client = gw.client("clinician")
    first = client.post("/v1/predictions", json={"records": records}, headers={"X-Request-ID": "batch-idem-1"})
    again = client.post("/v1/predictions", json={"records": records}, headers={"X-Request-ID": "batch-idem-1"})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()  # the same answer as the first time
    assert gw.stored_predictions("ida") == 3  # stored once
    single = make_records(1, prefix="idb")[0]
    one = client.post("/v1/predictions", json=single, headers={"X-Request-ID": "one-idem"}).json()
    assert client.post("/v1/predictions", json=single, headers={"X-Request-ID": "one-idem"}).json() == one
    assert gw.stored_predictions("idb") == 1
    # The same id for other records is the caller's mistake, not a retry.
    reused = client.post("/v1/predictions", json={"records": make_records(2, prefix="idc")},
                         headers={"X-Request-ID": "batch-idem-1"})
    assert reused.status_code == 409 and "already used for other records" in reused.json()["detail"]
    assert gw.stored_predictions("idc") == 0
    # Without a caller's id every request is a new one (the same record predicted again is a new prediction).
    client.post("/v1/predictions", json={"records": records})
    assert gw.stored_predictions("ida") == 6


def test_the_stream_resends_after_a_502_and_a_lost_answer_and_stores_each_row_once(gw):
    # The proxy answers the 2nd batch with 502 (not forwarded), then forwards its resend but loses the
    # answer (the gateway stored it): the third send of that batch must be recognised, not stored again.
    proxy = FlakyProxy(gw.url, path="/v1/predictions", faults=["ok", "502", "lose", "ok", "lose"])
    said: list[str] = []
    try:
        with LearningMachineClient(proxy.url, gw.tokens["data-scientist"], timeout_s=30) as client:
            report = run_stream(client, generated_records(50, seed=11, scenario="none", drift_start=0,
                                                          id_prefix="rs1-"),
                                StreamPlan(rows=50, batch_size=10, outcome_delay_rows=0, backoff_s=0.01),
                                progress=said.append)
    finally:
        proxy.close()
    assert report.stopped_by_error is None, report.summary()
    assert (report.sent, report.predicted, report.resent) == (50, 50, 3)
    assert gw.stored_predictions("rs1-") == 50  # acknowledged == stored, no duplicate
    # Each resend carried the batch's request id: 5 batches, 8 sends, 5 distinct ids.
    assert len(proxy.seen) == 8 and len(set(proxy.seen)) == 5 and proxy.seen[1] == proxy.seen[2] == proxy.seen[3]
    assert any("sending the batch of 10 row(s) rs1-" in s for s in said), said


def test_the_stream_gives_up_after_its_attempts_and_names_what_was_not_stored(gw):
    proxy = FlakyProxy(gw.url, path="/v1/predictions", faults=["ok"] + ["502"] * 3)
    try:
        with LearningMachineClient(proxy.url, gw.tokens["data-scientist"], timeout_s=30) as client:
            report = run_stream(client, generated_records(20, seed=12, scenario="none", drift_start=0,
                                                          id_prefix="rs2-"),
                                StreamPlan(rows=20, batch_size=10, max_attempts=3, backoff_s=0.01))
    finally:
        proxy.close()
    assert report.predicted == 10 and report.not_stored == [f"rs2-{i:07d}" for i in range(10, 20)]
    assert report.stopped_by_error is not None
    assert "gave up after 3 attempt(s): the batch of 10 row(s) rs2-0000010 .. rs2-0000019 not stored" \
        in report.stopped_by_error
    assert gw.stored_predictions("rs2-") == 10


def test_the_monitor_state_is_saved_with_optimistic_concurrency(gw):
    with LearningMachineClient(gw.url, gw.tokens["monitor"]) as monitor:
        assert monitor.monitor_state("resilience") == {"name": "resilience", "state": None, "version": None,
                                                       "updated_at": None}
        first = monitor.save_monitor_state({"cursor": 10}, None, name="resilience")
        assert first["version"] == 1
        second = monitor.save_monitor_state(
            {"cursor": 20}, 1, name="resilience",
            results=[{"kind": "drift", "metric": "is_drift", "value": 0.0, "details": {"window_id": 1}}],
            events=[{"kind": "retrain-fired", "detail": {"reasons": ["test"]}}])
        assert second["version"] == 2
        for stale in (1, None):  # a writer that read version 1 (or nothing) before the save above
            with pytest.raises(GatewayError) as conflict:
                monitor.save_monitor_state({"cursor": 15}, stale, name="resilience",
                                           results=[{"kind": "drift", "metric": "is_drift", "value": 1.0}])
            assert conflict.value.status == 409 and "version 2" in conflict.value.message
        saved = monitor.monitor_state("resilience")
        assert saved["state"] == {"cursor": 20} and saved["version"] == 2
        # The refused save stored none of its results; the accepted one stored its results and event.
        drift = monitor.page("/v1/monitoring", kind="drift", limit=500)["items"]
        assert [r["value"] for r in drift if r["details"].get("window_id") == 1] == [0.0]
        assert not [r for r in drift if r["value"] == 1.0]
        fired = monitor.page("/v1/events", kind="retrain-fired")["items"][0]
        assert fired["detail"]["recorded_by"] == "test monitor"
        # Control events are not the loop's to make, here either.
        with pytest.raises(GatewayError) as forged:
            monitor.save_monitor_state({"cursor": 30}, 2, name="resilience",
                                       events=[{"kind": "retrain-requested", "detail": {}}])
        assert forged.value.status == 403
    with LearningMachineClient(gw.url, gw.tokens["clinician"]) as clinician, pytest.raises(GatewayError) as denied:
        clinician.monitor_state("resilience")
    assert denied.value.status == 403


def test_records_are_written_while_the_model_server_works_and_seen_only_with_their_predictions(gw, monkeypatch):
    """The real gateway's store stage writes a request's records while the model server answers: during the
    model call they are written (in a transaction of their own) but nobody else sees them; the answer comes
    once records and predictions are committed together."""
    from learning_machine.gateway import service
    from learning_machine.store import repository

    real_predict, real_write = service.predict_records, repository.begin_store
    seen: dict[str, object] = {}

    def write(*args, **kwargs):
        seen["ahead"] = real_write(*args, **kwargs)
        return seen["ahead"]

    def predict(ctx, records):
        import time

        deadline = time.monotonic() + 5
        while "ahead" not in seen and time.monotonic() < deadline:  # the store stage works meanwhile
            time.sleep(0.01)
        seen["visible during the model call"] = stored_records(gw, "ahead-")
        return real_predict(ctx, records)

    monkeypatch.setattr(repository, "begin_store", write)
    monkeypatch.setattr(service, "predict_records", predict)
    records = make_records(60, prefix="ahead-")  # SQLite writes groups of 50 rows or more ahead
    response = gw.client("clinician").post("/v1/predictions", json={"records": records})
    assert response.status_code == 200, response.text
    assert isinstance(seen["ahead"], repository.StoreAhead)
    assert seen["visible during the model call"] == 0
    assert gw.stored_predictions("ahead-") == 60 and stored_records(gw, "ahead-") == 60
    seen.clear()
    monkeypatch.setattr(service, "predict_records", real_predict)
    assert gw.client("clinician").post("/v1/predictions", json=make_records(1, prefix="alone-")[0]).status_code == 200
    assert "ahead" not in seen and gw.stored_predictions("alone-") == 1  # one row on SQLite: not worth it


def test_a_slow_model_server_does_not_hold_the_database_and_a_failed_call_stores_nothing(gw, monkeypatch):
    """Past WRITE_AHEAD_S of model call the records written ahead are rolled back, so another writer (here an
    outcome for a stored record, through the API) is not held up by a slow model server; the request is
    stored when the answer comes. A model call that fails leaves no record behind either."""
    import threading
    import time

    from learning_machine.errors import ServiceUnavailableError
    from learning_machine.gateway import batching, service

    client = gw.client("clinician")
    stored = make_records(1, prefix="slow-known-")[0]
    assert client.post("/v1/predictions", json=stored).status_code == 200
    real_predict = service.predict_records
    release = threading.Event()

    def slow(ctx, records):
        release.wait(10)
        return real_predict(ctx, records)

    monkeypatch.setattr(batching, "WRITE_AHEAD_S", 0.05)
    monkeypatch.setattr(service, "predict_records", slow)
    answer: dict[str, int] = {}
    sender = threading.Thread(target=lambda: answer.update(status=gw.client("data-scientist").post(
        "/v1/predictions", json={"records": make_records(60, prefix="slow-new-")}).status_code))
    sender.start()
    time.sleep(0.3)  # the model call is pending, the head start given up
    started = time.perf_counter()
    outcome = client.post("/v1/outcomes", json={"record_id": stored["record_id"], "outcome": 1})
    waited = time.perf_counter() - started
    release.set()
    sender.join(30)
    assert outcome.status_code in (200, 201), outcome.text
    assert waited < 2, f"the outcome waited {waited:.2f} s for the database"
    assert answer["status"] == 200 and gw.stored_predictions("slow-new-") == 60

    def down(ctx, records):
        time.sleep(0.1)  # long enough for the records to be written ahead
        raise ServiceUnavailableError("the model server is down (injected)")

    monkeypatch.setattr(batching, "WRITE_AHEAD_S", 5)
    monkeypatch.setattr(service, "predict_records", down)
    failed = client.post("/v1/predictions", json={"records": make_records(60, prefix="slow-down-")})
    assert failed.status_code == 503
    assert gw.stored_predictions("slow-down-") == 0 and stored_records(gw, "slow-down-") == 0
    monkeypatch.setattr(service, "predict_records", real_predict)
    assert client.post("/v1/predictions", json=make_records(1, prefix="slow-after-")[0]).status_code == 200


def stored_records(gw: RunningGateway, prefix: str) -> int:
    """Records in the gateway's database whose id starts with ``prefix`` (another connection's view)."""
    from sqlalchemy import func, select

    from learning_machine.store.models import Record

    with gw.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Record)
                                  .where(Record.record_id.startswith(prefix))) or 0)


def test_postgresql_going_away_is_a_503_storing_nothing_and_its_return_needs_no_restart(model_server, tmp_path,
                                                                                        monkeypatch):
    """The gateway's PostgreSQL stops taking connections (and its sessions are ended) between two requests:
    the next prediction is a 503 naming the database, with nothing stored, and once the database is back the
    gateway predicts and stores again without a restart. A 60-row request: its records are written ahead, and
    the database found unreachable there is the answer (it is not asked a second time the ordinary way). The
    model call (the real one) waits until the store stage has begun, as it does whenever the machine is not too
    busy for the store stage to wake first."""
    import time

    import psycopg
    from gateway_harness import gateway_settings, start_gateway
    from testsupport import PG_ADMIN_URL, fresh_postgres_database

    from learning_machine.gateway import service
    from learning_machine.store import repository

    ordinary, real_store = [], repository.store_prediction_requests
    begun, real_begin = [], repository.begin_store
    real_predict = service.predict_records

    def predict(ctx, records):
        deadline = time.monotonic() + 5
        while not begun and time.monotonic() < deadline:  # the store stage begins meanwhile
            time.sleep(0.01)
        return real_predict(ctx, records)

    def store(*args, **kwargs):
        ordinary.append(kwargs.get("ahead"))
        return real_store(*args, **kwargs)

    def begin(*args, **kwargs):
        begun.append(True)
        return real_begin(*args, **kwargs)

    monkeypatch.setattr(repository, "store_prediction_requests", store)
    monkeypatch.setattr(repository, "begin_store", begin)
    monkeypatch.setattr(service, "predict_records", predict)

    with fresh_postgres_database("lm_away") as url:
        running = start_gateway(gateway_settings(tmp_path, url, model_server), getattr(model_server, "spec", None))
        name = url.rsplit("/", 1)[1]
        try:
            client = running.client("clinician")
            assert client.post("/v1/predictions", json={"records": make_records(60, prefix="up-")}).status_code == 200
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                deadline = time.monotonic() + 10  # a terminated session ends a moment later, not at once
                while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                    (name,)).fetchone()[0] and time.monotonic() < deadline:
                    time.sleep(0.05)
                ordinary.clear()
                begun.clear()
                down = client.post("/v1/predictions", json={"records": make_records(60, prefix="away-")})
                assert down.status_code == 503, down.text
                assert "database" in down.json()["detail"]
                assert begun == [True] and ordinary == []  # the write ahead's failure is the answer, asked once
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            back = client.post("/v1/predictions", json={"records": make_records(60, prefix="back-")})
            assert back.status_code == 200, back.text
            assert running.stored_predictions("away-") == 0 and stored_records(running, "away-") == 0
            assert running.stored_predictions("back-") == 60 and running.stored_predictions("up-") == 60
        finally:
            running.stop()
