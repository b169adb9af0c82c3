"""The gateway end to end: real uvicorn, real MLServer with a real trained model, SQLite and PostgreSQL.
Every rejected request is checked to have stored nothing (row counts before and after)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_harness import RunningGateway, make_records, problem, sqlite_gateway


# -- the happy paths -----------------------------------------------------------------------------------
def test_predict_one_record(gateway: RunningGateway, model_server: Any) -> None:
    record = make_records(1)[0]
    before = gateway.counts()
    response = gateway.client("clinician").post("/v1/predictions", json=record)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["record_id"] == record["record_id"] and body["label"] in (0, 1)
    assert 0.0 <= body["probability"] <= 1.0
    assert body["model_version"] == str(model_server.version)
    assert body["request_id"] == response.headers["x-request-id"]
    after = gateway.counts()
    assert after["records"] == before["records"] + 1 and after["predictions"] == before["predictions"] + 1
    stored = gateway.client("clinician").get(f"/v1/patients/{record['record_id']}").json()
    assert stored["features"]["age"] == record["age"] and "record_id" not in stored["features"]
    assert stored["predictions"][0]["probability"] == body["probability"]
    assert stored["predictions"][0]["request_id"] == body["request_id"]
    assert stored["predictions"][0]["latency_ms"] > 0


def test_predict_a_batch_in_one_transaction(gateway: RunningGateway) -> None:
    records = make_records(25, seed=3)
    before = gateway.counts()
    response = gateway.client("clinician").post("/v1/predictions", json={"records": records},
                                                headers={"X-Request-ID": "batch-test-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == "batch-test-1"
    assert [p["record_id"] for p in body["predictions"]] == [r["record_id"] for r in records]
    assert len({round(p["probability"], 6) for p in body["predictions"]}) > 1
    after = gateway.counts()
    assert after["records"] == before["records"] + 25 and after["predictions"] == before["predictions"] + 25
    # The same records again: new predictions, no new records.
    assert gateway.client("clinician").post("/v1/predictions", json={"records": records}).status_code == 200
    assert gateway.counts()["records"] == after["records"]
    # The answer is serialised without the response model's validation: it must still be exactly what the
    # OpenAPI document promises (no field missing, none added, the right types).
    from learning_machine.gateway.schemas import BatchPredictionOut, PredictionOut

    assert BatchPredictionOut.model_validate(body).model_dump() == body
    one = gateway.client("clinician").post("/v1/predictions", json=make_records(1, seed=31)[0]).json()
    assert PredictionOut.model_validate(one).model_dump() == one
    assert set(one) == set(PredictionOut.model_fields) and set(body) == set(BatchPredictionOut.model_fields)


def test_concurrent_requests_share_model_calls_and_commits_and_each_stands_alone(gateway: RunningGateway) -> None:
    """Group commit: 24 clients at once, one request per record plus a few batches; one request contradicts a
    stored record. Every other request is answered with its own predictions, and stored exactly once; the
    contradicting one alone is refused with nothing of it stored; and the gateway's metrics show requests
    that shared a model call."""
    import re
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    prefix = f"group-{uuid.uuid4().hex[:6]}"
    taken = make_records(1, seed=41, prefix=f"{prefix}-taken")[0]
    assert gateway.client("clinician").post("/v1/predictions", json=taken).status_code == 200
    singles = make_records(96, seed=42, prefix=f"{prefix}-one")
    batches = [make_records(10, seed=43 + i, prefix=f"{prefix}-batch{i}") for i in range(4)]
    contradicting = {"records": [*make_records(2, seed=50, prefix=f"{prefix}-bad"),
                                 {**taken, "age": taken["age"] + 1}]}
    bodies: list[Any] = [*singles, *({"records": b} for b in batches), contradicting]
    before = gateway.counts()
    local = threading.local()

    def send(body: Any) -> httpx.Response:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=gateway.url, timeout=60,
                                        headers={"Authorization": f"Bearer {gateway.tokens['clinician']}"})
        return local.client.post("/v1/predictions", json=body)

    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(send, bodies))
    *fine, refused = responses
    assert [r.status_code for r in fine] == [200] * (len(bodies) - 1)
    assert refused.status_code == 409 and "age" in refused.json()["detail"]
    for body, response in zip(bodies, fine, strict=False):
        sent = [r["record_id"] for r in body.get("records", [body])]
        got = response.json()
        assert [p["record_id"] for p in got.get("predictions", [got])] == sent
    after = gateway.counts()
    assert after["predictions"] - before["predictions"] == 96 + 40
    assert gateway.stored_predictions(f"{prefix}-bad") == 0 and gateway.stored_predictions(f"{prefix}-one") == 96
    metrics = gateway.client(None).get("/metrics").text
    count = float(re.search(r"^lm_gateway_prediction_group_requests_count (\S+)$", metrics, re.M).group(1))
    total = float(re.search(r"^lm_gateway_prediction_group_requests_sum (\S+)$", metrics, re.M).group(1))
    assert total > count, "no two requests shared a model call"


def test_metrics_say_where_a_prediction_requests_time_goes(gateway: RunningGateway,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """/metrics splits a prediction request's time into its stages (an operator sees whether the database, the
    model server or the gateway itself is slow), read by the bench's own parser: a 60-record batch then a single
    record, each sent alone, are two requests, two groups and two commits; the store begun while the model
    works is there for every group that begins it (the batch on both databases, the single record on
    PostgreSQL); and no stage takes longer than the requests it is part of. The real model call waits until
    the store stage has begun when it begins, as it does whenever the machine is not too busy for the store
    stage to wake first."""
    import time

    from learning_machine.bench.serving import stage_totals
    from learning_machine.gateway import service
    from learning_machine.store import repository

    begun: list[int] = []
    real_begin, real_predict = repository.begin_store, service.predict_records

    def begin(db: Any, requests: Any, **kwargs: Any) -> Any:
        begun.append(sum(len(r.record_ids) for r in requests))
        return real_begin(db, requests, **kwargs)

    def predict(ctx: Any, records: Any) -> Any:
        deadline = time.monotonic() + 5
        while service.begins_ahead(ctx, len(records)) and not begun and time.monotonic() < deadline:
            time.sleep(0.01)
        begun.clear()
        return real_predict(ctx, records)

    monkeypatch.setattr(repository, "begin_store", begin)
    monkeypatch.setattr(service, "predict_records", predict)

    def totals() -> dict[str, tuple[float, float]]:
        return stage_totals(gateway.client(None).get("/metrics").text)

    before = totals()
    client = gateway.client("clinician")
    assert client.post("/v1/predictions", json={"records": make_records(60, seed=61)}).status_code == 200
    assert client.post("/v1/predictions", json=make_records(1, seed=62)[0]).status_code == 200
    after = totals()
    seconds = {key: after[key][0] - before.get(key, (0.0, 0.0))[0] for key in after}
    counts = {key: int(after[key][1] - before.get(key, (0.0, 0.0))[1]) for key in after}
    assert counts["request"] == counts["validate"] == counts["wait"] == counts["store"] == counts["model"] == 2
    assert counts["store_ahead"] == (2 if gateway.db.engine.dialect.name == "postgresql" else 1)
    requests = seconds["request"]
    for stage in ("validate", "wait", "model", "store", "store_ahead"):
        assert 0 < seconds[stage] < requests, stage
    # Validation, the model call and the store after its answers are one after the other in each request.
    assert seconds["validate"] + seconds["model"] + seconds["store"] < requests


def test_explain_a_stored_record_and_a_full_record(gateway: RunningGateway) -> None:
    stored, fresh = make_records(2, seed=5)
    client = gateway.client("clinician")
    assert client.post("/v1/predictions", json=stored).status_code == 200
    before = gateway.counts()
    response = client.post("/v1/explanations", json={"record_id": stored["record_id"], "method": "exact"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["record_id"] == stored["record_id"] and body["method"] == "exact"
    assert body["explanation"] and body["model_version"]
    response = client.post("/v1/explanations", json={"record": fresh})
    assert response.status_code == 200, response.text
    after = gateway.counts()
    assert after["explanations"] == before["explanations"] + 2
    assert after["records"] == before["records"] + 1  # the full record is stored with its explanation
    history = client.get(f"/v1/patients/{stored['record_id']}").json()
    assert history["explanations"][0]["method"] == "exact"


@pytest.mark.slow
def test_explain_with_anchors(gateway: RunningGateway) -> None:
    record = make_records(1, seed=9)[0]
    response = gateway.client("clinician").post("/v1/explanations", json={"record": record, "method": "anchors"})
    assert response.status_code == 200, response.text
    assert response.json()["method"] == "anchors" and response.json()["explanation"]


def test_outcomes_are_idempotent(gateway: RunningGateway) -> None:
    record = make_records(1, seed=11)[0]
    rid = record["record_id"]
    assert gateway.client("clinician").post("/v1/predictions", json=record).status_code == 200
    science = gateway.client("data-scientist")
    first = science.post("/v1/outcomes", json={"record_id": rid, "outcome": 1})
    assert first.status_code == 201 and first.json()["status"] == "created"
    before = gateway.counts()
    again = science.post("/v1/outcomes", json={"record_id": rid, "outcome": True})
    assert again.status_code == 200 and again.json()["status"] == "unchanged"
    conflict = problem(science.post("/v1/outcomes", json={"record_id": rid, "outcome": 0}), 409)
    assert "overwrite" in conflict["detail"]
    assert gateway.counts() == before
    # A clinician may record an outcome but not correct one; a data scientist may, and it is recorded.
    problem(gateway.client("clinician").post("/v1/outcomes", params={"overwrite": "true"},
                                             json={"record_id": rid, "outcome": 0}), 403)
    replaced = science.post("/v1/outcomes", params={"overwrite": "true"}, json={"record_id": rid, "outcome": 0})
    assert replaced.status_code == 200 and replaced.json()["status"] == "overwritten"
    assert replaced.json()["recorded_by"] == "test data-scientist"
    assert gateway.counts() == {**before, "events": before["events"] + 1}
    corrected = science.get("/v1/events", params={"kind": "outcome-corrected"}).json()["items"]
    assert [(e["detail"]["record_id"], e["detail"]["previous"], e["detail"]["outcome"], e["detail"]["by"])
            for e in corrected if e["detail"]["record_id"] == rid] == [(rid, 1, 0, "test data-scientist")]
    assert gateway.client("clinician").get(f"/v1/patients/{rid}").json()["outcome"]["outcome"] == 0
    problem(science.post("/v1/outcomes", json={"record_id": "never-seen", "outcome": 1}), 404)
    bad = problem(science.post("/v1/outcomes", json={"record_id": rid, "outcome": "maybe"}), 422)
    assert bad["errors"][0]["field"] == "outcome"


def test_history_patients_predictions_models(gateway: RunningGateway, model_server: Any) -> None:
    records = make_records(6, seed=13, prefix="hist-" + gateway.url[-5:])
    assert gateway.client("clinician").post("/v1/predictions", json={"records": records}).status_code == 200
    clinician, science = gateway.client("clinician"), gateway.client("data-scientist")
    page = clinician.get("/v1/patients", params={"search": records[0]["record_id"][:-2], "limit": 4}).json()
    assert page["total"] == 6 and len(page["items"]) == 4
    assert all(item["latest_prediction"]["model_version"] == str(model_server.version) for item in page["items"])
    one = clinician.get("/v1/patients", params={"search": records[5]["record_id"]}).json()
    assert [i["record_id"] for i in one["items"]] == [records[5]["record_id"]]
    problem(clinician.get("/v1/patients/no-such-record"), 404)
    predictions = science.get("/v1/predictions", params={"model_version": str(model_server.version), "limit": 3})
    assert predictions.status_code == 200 and len(predictions.json()["items"]) == 3
    assert science.get("/v1/predictions", params={"since": "2999-01-01T00:00:00Z"}).json()["total"] == 0
    monitoring = science.get("/v1/monitoring").json()  # other tests' monitors may have written results here
    assert set(monitoring) == {"items", "total", "limit", "offset"} and monitoring["limit"] == 50
    events = science.get("/v1/events", params={"kind": "promoted"}).json()  # the session's gateway is shared:
    assert events["total"] == len(events["items"]) and all(e["kind"] == "promoted" for e in events["items"])
    models = science.get("/v1/models")
    assert models.status_code == 200, models.text
    champions = [v for v in models.json()["versions"] if v["champion"]]
    assert [v["version"] for v in champions] == [str(model_server.version)]


# -- every class of bad input: the right status, nothing stored ----------------------------------------
def _one(**change: Any) -> dict[str, Any]:
    record = make_records(1, seed=17)[0]
    for key, value in change.items():
        if value is ...:
            record.pop(key)
        else:
            record[key] = value
    return record


@pytest.mark.parametrize(("record", "field", "rule"), [
    (_one(age="old"), "age", "type"),
    (_one(age=300), "age", "range"),
    (_one(sex="unknown"), "sex", "category"),
    (_one(age=...), "age", "required"),
    (_one(record_id=...), "record_id", "required"),
    (_one(favourite_colour="blue"), "favourite_colour", "unknown-field"),
], ids=["wrong-type", "out-of-range", "unknown-category", "missing-field", "missing-id", "unknown-field"])
def test_invalid_record_is_422_and_stores_nothing(gateway: RunningGateway, unchanged: None, record: dict[str, Any],
                                                  field: str, rule: str) -> None:
    body = problem(gateway.client("clinician").post("/v1/predictions", json=record), 422)
    assert [(e["field"], e["rule"]) for e in body["errors"]] == [(field, rule)]


def test_every_problem_of_every_record_is_listed(gateway: RunningGateway, unchanged: None) -> None:
    good = make_records(3, seed=19)
    bad = dict(good[1], age=-4, sex=7, bmi="fat", colour="red")
    del bad["hba1c"]
    body = problem(gateway.client("clinician").post("/v1/predictions", json={"records": [good[0], bad, good[2]]}),
                   422)
    assert {(e["index"], e["field"], e["rule"]) for e in body["errors"]} == {
        (1, "age", "range"), (1, "sex", "type"), (1, "bmi", "type"), (1, "colour", "unknown-field"),
        (1, "hba1c", "required")}
    duplicate = problem(gateway.client("clinician").post("/v1/predictions", json={"records": [good[0], good[0]]}),
                        422)
    assert duplicate["errors"][0]["rule"] == "unique"


def test_malformed_requests_are_422(gateway: RunningGateway, unchanged: None) -> None:
    client = gateway.client("clinician")
    problem(client.post("/v1/predictions", content=b"{not json", headers={"content-type": "application/json"}), 422)
    problem(client.post("/v1/predictions", json=[1, 2]), 422)
    problem(client.post("/v1/predictions", json={"records": []}), 422)
    problem(client.post("/v1/predictions", json={"records": "all"}), 422)
    problem(client.post("/v1/explanations", json={"method": "exact"}), 422)
    problem(client.post("/v1/explanations", json={"record_id": "x", "method": "shap"}), 422)


def test_nan_is_a_missing_value(gateway: RunningGateway) -> None:
    record = make_records(1, seed=23)[0]
    body = json.dumps(dict(record, bmi=float("nan")))  # Python's json writes (and reads) the NaN literal
    response = gateway.client("clinician").post("/v1/predictions", content=body,
                                                headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert gateway.client("clinician").get(f"/v1/patients/{record['record_id']}").json()["features"]["bmi"] is None
    problem(gateway.client("clinician").post("/v1/predictions", content=json.dumps(dict(record, age=float("nan"))),
                                             headers={"content-type": "application/json"}), 422)


def test_huge_bodies_and_batches_are_413(gateway: RunningGateway, unchanged: None) -> None:
    client = gateway.client("clinician")
    limit = gateway.settings.max_request_bytes
    huge = {"records": make_records(1)[0:1] * 1, "padding": "x" * (limit + 1)}
    body = problem(client.post("/v1/predictions", json=huge), 413)
    assert f"{limit:,}" in body["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is what counts
        yield b'{"records": ['
        for _ in range(limit // 1000 + 2):
            yield b'"' + b"y" * 1000 + b'",'
        yield b"1]}"

    problem(client.post("/v1/predictions", content=chunks(), headers={"content-type": "application/json"}), 413)
    many = make_records(gateway.settings.max_batch_rows + 1)
    body = problem(client.post("/v1/predictions", json={"records": many}), 413)
    assert "LM_MAX_BATCH_ROWS" in body["detail"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer lm_wrong"}, {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer"}], ids=["none", "unknown", "not-bearer", "empty"])
def test_missing_or_bad_token_is_401(gateway: RunningGateway, unchanged: None, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=gateway.url, headers=headers) as client:
        body = problem(client.post("/v1/predictions", json=make_records(1)[0]), 401)
        assert "Bearer" in client.get("/v1/patients").headers["www-authenticate"]
    assert "lm_wrong" not in str(body)


@pytest.mark.parametrize(("role", "method", "path", "payload", "needed"), [
    ("clinician", "POST", "/v1/events", {"kind": "retrain-fired"}, "monitor"),
    ("clinician", "GET", "/v1/predictions", None, "data-scientist"),
    ("clinician", "GET", "/v1/monitoring", None, "data-scientist"),
    ("clinician", "GET", "/v1/models", None, "data-scientist"),
    ("clinician", "GET", "/v1/events", None, "data-scientist"),
    # A data scientist reads the loop's record but cannot write it, nor ask for a retraining.
    ("data-scientist", "POST", "/v1/events", {"kind": "retrain-fired"}, "monitor"),
    ("data-scientist", "POST", "/v1/events", {"kind": "promoted", "detail": {"to": "99"}}, "monitor"),
    ("data-scientist", "POST", "/v1/retrain", {"reason": "because"}, "admin"),
    ("data-scientist", "POST", "/v1/models/promote", {"version": "1"}, "admin"),
    ("data-scientist", "POST", "/v1/monitoring", {"results": [{"kind": "drift", "metric": "p", "alert": True}]},
     "monitor"),
    # The monitor's service token reads feeds and writes results, but predicts on nobody and promotes nothing.
    ("monitor", "POST", "/v1/predictions", {"records": []}, "clinician"),
    ("monitor", "POST", "/v1/retrain", {"reason": "because"}, "admin"),
    ("monitor", "GET", "/v1/patients", None, "clinician"),
])
def test_wrong_role_is_403(gateway: RunningGateway, unchanged: None, role: str, method: str, path: str,
                           payload: Any, needed: str) -> None:
    body = problem(gateway.client(role).request(method, path, json=payload), 403)
    assert needed in body["detail"]


@pytest.mark.parametrize("role", ["monitor", "admin"])
def test_nobody_forges_a_retraining_request_through_the_event_log(gateway: RunningGateway, unchanged: None,
                                                                 role: str) -> None:
    """Only POST /v1/retrain (admin) makes a retrain-requested event, which the monitor acts on at once."""
    for kind in ("retrain-requested", "outcome-corrected"):
        body = problem(gateway.client(role).post("/v1/events", json={"kind": kind, "detail": {"by": "x"}}), 403)
        assert kind in body["detail"]


def test_admin_may_do_everything(gateway: RunningGateway) -> None:
    admin = gateway.client("admin")
    assert admin.post("/v1/predictions", json=make_records(1)[0]).status_code == 200
    for path in ("/v1/patients", "/v1/predictions", "/v1/monitoring", "/v1/events"):
        assert admin.get(path).status_code == 200


# -- operations ------------------------------------------------------------------------------------------
def test_health_readiness_metrics_and_docs(gateway: RunningGateway, model_server: Any) -> None:
    anonymous = httpx.Client(base_url=gateway.url)
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_server"] == model_server.url.rstrip("/")
    gateway.client("clinician").post("/v1/predictions", json=make_records(1)[0])
    metrics = anonymous.get("/metrics").text
    assert 'lm_gateway_requests_total{method="POST",route="/v1/predictions",status="200"}' in metrics
    assert f'lm_gateway_predictions_total{{model_version="{model_server.version}"}}' in metrics
    assert "lm_gateway_request_seconds_bucket" in metrics
    assert anonymous.get("/docs").status_code == 200
    spec = anonymous.get("/openapi.json").json()
    assert {"/v1/predictions", "/v1/explanations", "/v1/outcomes", "/v1/patients", "/v1/models"} <= set(spec["paths"])
    problem(anonymous.get("/no/such/route"), 404)


def test_model_server_down_is_503_and_stores_nothing(gateway_without_model_server: RunningGateway) -> None:
    gw = gateway_without_model_server
    before = gw.counts()
    body = problem(gw.client("clinician").post("/v1/predictions", json=make_records(1)[0]), 503)
    assert gw.settings.model_server_base_url() in body["detail"] and "unreachable" in body["detail"]
    problem(gw.client("clinician").post("/v1/predictions", json={"records": make_records(3)}), 503)
    problem(gw.client("clinician").post("/v1/explanations", json={"record": make_records(1)[0]}), 503)
    assert gw.counts() == before
    ready = problem(httpx.get(gw.url + "/readyz"), 503)
    assert gw.settings.model_server_base_url() in ready["detail"]
    # The registry being down is a 503 too, naming the tracking server.
    models = problem(gw.client("data-scientist").get("/v1/models"), 503)
    assert gw.settings.tracking_uri in models["detail"]


def test_a_model_the_server_does_not_serve_is_503(model_server: Any, tmp_path: Path) -> None:
    with sqlite_gateway(tmp_path, model_server, model_name="no-such-model") as gw:
        body = problem(gw.client("clinician").post("/v1/predictions", json=make_records(1)[0]), 503)
        assert "no-such-model" in body["detail"] and model_server.url.rstrip("/") in body["detail"]
        assert problem(httpx.get(gw.url + "/readyz"), 503)["detail"].endswith("does not serve model 'no-such-model' (yet)")
        assert gw.counts()["predictions"] == 0 and gw.counts()["records"] == 0
