"""Trust at the gateway, against the real gateway, MLServer and database (SQLite and PostgreSQL): no bad input
reaches a 500 (numbers, ids, text no database can hold, query parameters), every error document can be encoded,
roles hold, concurrent identical outcomes agree, expired tokens are refused, and the OpenAPI document describes
the records the gateway really accepts. Each rejected request is checked to have stored nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gateway_harness import RunningGateway, make_records, problem, sqlite_gateway

from learning_machine.data.spec import RecordIdSpec
from learning_machine.store.tokens import create_token, revoke_token


def raw_post(gateway: RunningGateway, path: str, body: bytes | str, role: str = "data-scientist",
             params: dict[str, Any] | None = None) -> httpx.Response:
    """Post bytes exactly as given (Python's JSON literals Infinity/NaN, huge numbers, lone surrogates)."""
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    return gateway.client(role).post(path, content=data, params=params,
                                     headers={"Content-Type": "application/json"})


def record_json(**change: str) -> str:
    """One valid record as JSON text, with some values replaced by raw JSON text."""
    record = make_records(1, seed=41)[0]
    text = json.dumps(record)
    for key, raw in change.items():
        text = text.replace(f'"{key}": {json.dumps(record[key])}', f'"{key}": {raw}')
        assert raw in text
    return text


@pytest.mark.parametrize(("raw", "field", "rule"), [
    (record_json(age="Infinity"), "age", "type"),
    (record_json(age="1e999"), "age", "type"),
    (record_json(age="-Infinity"), "age", "type"),
    (record_json(age="1" * 400), "age", "range"),
    (record_json(record_id="Infinity"), "record_id", "type"),
    (record_json(record_id="1" * 400), "record_id", "range"),
    (record_json(record_id='"' + "x" * 5000 + '"'), "record_id", "length"),
    (record_json(record_id='""'), "record_id", "length"),
    (record_json(record_id='"  padded "'), "record_id", "characters"),
    (record_json(record_id='"tab\\there"'), "record_id", "characters"),
    (record_json(sex='"\\u00e9\\u2028"'), "sex", "category"),
], ids=["inf", "1e999", "-inf", "400-digits", "inf-id", "400-digit-id", "5000-char-id", "empty-id", "padded-id",
        "control-char-id", "odd-category"])
def test_bad_numbers_and_ids_are_422_naming_field_value_and_rule(gateway: RunningGateway, unchanged: None,
                                                                 raw: str, field: str, rule: str) -> None:
    body = problem(raw_post(gateway, "/v1/predictions", raw, "clinician"), 422)
    assert [(e["field"], e["rule"]) for e in body["errors"]] == [(field, rule)]
    echoed = body["errors"][0]["value"]
    assert echoed is None or len(json.dumps(echoed)) < 300  # the value comes back, cut to a readable size


@pytest.mark.parametrize("raw", [
    record_json(record_id='"\\ud800"'),  # a lone surrogate, escaped
    record_json(record_id='"a\\u0000b"'),  # NUL: PostgreSQL text cannot hold it
    record_json(sex='"male\\u0000"'),
    '{"records": [' + record_json(record_id='"\\udfff-low"') + "]}",
], ids=["surrogate-id", "nul-id", "nul-category", "surrogate-in-batch"])
def test_text_no_database_can_hold_is_refused_before_any_route(gateway: RunningGateway, unchanged: None,
                                                               raw: str) -> None:
    body = problem(raw_post(gateway, "/v1/predictions", raw, "clinician"), 422)
    assert "surrogate" in body["detail"] or "NUL" in body["detail"]


def test_raw_utf8_surrogates_are_refused(gateway: RunningGateway, unchanged: None) -> None:
    raw = record_json(record_id='"X"').encode().replace(b'"X"', b'"\xed\xa0\x80"')
    problem(raw_post(gateway, "/v1/predictions", raw, "clinician"), 422)


@pytest.mark.parametrize(("path", "raw"), [
    ("/v1/outcomes", '{"record_id": "r-1", "outcome": NaN}'),
    ("/v1/outcomes", '{"record_id": Infinity, "outcome": 1}'),
    ("/v1/outcomes", '{"record_id": "' + "y" * 300 + '", "outcome": 1}'),
    ("/v1/outcomes", '{"record_id": "r-1", "outcome": 1e999}'),
    ("/v1/explanations", '{"record_id": 1e999}'),
    ("/v1/explanations", '{"record_id": "\\ud800"}'),
    ("/v1/explanations", '{"record": {"age": Infinity}}'),
    ("/v1/predictions", "[1, 2, 3]"),
    ("/v1/predictions", '{"records": [NaN]}'),
    ("/v1/predictions", "not json"),
], ids=["outcome-nan", "outcome-inf-id", "outcome-long-id", "outcome-1e999", "explain-1e999", "explain-surrogate",
        "explain-inf-feature", "list-body", "nan-record", "not-json"])
def test_every_route_answers_bad_bodies_with_422(gateway: RunningGateway, unchanged: None, path: str,
                                                 raw: str) -> None:
    problem(raw_post(gateway, path, raw), 422)


@pytest.mark.parametrize(("role", "path", "raw"), [
    ("monitor", "/v1/events", '{"kind": "drift-seen", "detail": {"p": NaN}}'),
    ("monitor", "/v1/events", '{"kind": "drift-seen", "detail": {"p": 1e999}}'),
    ("monitor", "/v1/events", '{"kind": "drift-seen", "detail": {"note": "a\\u0000"}}'),
    ("monitor", "/v1/events", '{"kind": "drift-seen", "detail": {"n": ' + "9" * 30 + "}}"),
    ("monitor", "/v1/monitoring", '{"results": [{"kind": "drift", "metric": "p", "value": Infinity}]}'),
    ("admin", "/v1/models/promote", '{"version": "1\\u0000"}'),
    ("admin", "/v1/models/promote", '{"version": "../../etc"}'),
], ids=["event-nan", "event-inf", "event-nul", "event-huge-int", "result-inf", "promote-nul", "promote-path"])
def test_free_form_objects_are_bounded_too(gateway: RunningGateway, unchanged: None, role: str, path: str,
                                           raw: str) -> None:
    problem(raw_post(gateway, path, raw, role), 422)


@pytest.mark.parametrize(("path", "params"), [
    ("/v1/patients", {"offset": "1e20"}),
    ("/v1/patients", {"offset": str(10**20)}),
    ("/v1/patients", {"limit": "-1"}),
    ("/v1/patients", {"search": "a\x00b"}),
    ("/v1/predictions", {"model_version": "x" * 100}),
    ("/v1/events", {"kind": "a\x00"}),
    ("/v1/feed/predictions", {"after_id": str(10**30)}),
    ("/v1/predictions", {"since": "yesterday"}),
], ids=["offset-float", "offset-huge", "limit-negative", "search-nul", "version-long", "kind-nul", "cursor-huge",
        "since-garbage"])
def test_query_parameters_are_bounded_by_their_schema(gateway: RunningGateway, path: str,
                                                      params: dict[str, str]) -> None:
    problem(gateway.client("admin").get(path, params=params), 422)


def test_path_ids_are_bounded(gateway: RunningGateway) -> None:
    problem(gateway.client("clinician").get("/v1/patients/" + "z" * 300), 422)
    problem(gateway.client("clinician").get("/v1/patients/a%00b"), 422)
    problem(gateway.client("clinician").get("/v1/patients/unknown-but-fine"), 404)


def test_sixteen_clients_posting_the_same_outcome_all_succeed(gateway: RunningGateway) -> None:
    record = make_records(1, seed=43, prefix="race-" + gateway.url[-5:])[0]
    assert gateway.client("clinician").post("/v1/predictions", json=record).status_code == 200
    statuses: list[int] = []
    barrier = threading.Barrier(16)

    def post() -> None:
        with httpx.Client(base_url=gateway.url, timeout=60,
                          headers={"Authorization": f"Bearer {gateway.tokens['clinician']}"}) as client:
            barrier.wait()
            statuses.append(client.post("/v1/outcomes", json={"record_id": record["record_id"],
                                                              "outcome": 1}).status_code)

    threads = [threading.Thread(target=post) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 15 + [201]
    stored = gateway.client("clinician").get(f"/v1/patients/{record['record_id']}").json()["outcome"]
    assert stored["outcome"] == 1 and stored["recorded_by"] == "test clinician"


def test_an_expired_token_is_refused_saying_so(gateway: RunningGateway) -> None:
    # The gateway remembers valid tokens (LM_TOKEN_CACHE_S) but checks their expiry on every request: a token
    # that expires while remembered is refused at once.
    lifetime_s = 1.5
    token, _ = create_token(gateway.db, "clinician", "short-lived", ttl_days=lifetime_s / 86400)
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {token}"}) as client:
        assert client.get("/v1/whoami").status_code == 200
        time.sleep(lifetime_s + 0.1)
        body = problem(client.get("/v1/whoami"), 401)
    assert "expired" in body["detail"] and token not in json.dumps(body)


def test_a_revoked_token_is_refused_within_the_token_cache_time(gateway: RunningGateway) -> None:
    token, principal = create_token(gateway.db, "clinician", "revoked soon")
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {token}"}) as client:
        assert client.get("/v1/whoami").status_code == 200
        revoke_token(gateway.db, principal.token_id)
        time.sleep(gateway.settings.token_cache_s + 0.1)
        body = problem(client.get("/v1/whoami"), 401)
    assert "revoked" in body["detail"]


def test_the_openapi_document_types_the_records_by_the_dataset_spec(gateway: RunningGateway) -> None:
    schema = httpx.get(gateway.url + "/openapi.json").json()
    record = schema["components"]["schemas"]["Record"]
    assert record["additionalProperties"] is False
    assert set(record["required"]) == {"record_id", *gateway.spec.feature_names}
    age = record["properties"]["age"]
    assert age["minimum"] == gateway.spec.feature("age").range[0]
    assert record["properties"]["sex"]["enum"] == list(gateway.spec.feature("sex").categories)
    body = schema["paths"]["/v1/predictions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"][0] == {"$ref": "#/components/schemas/Record"}
    assert body["oneOf"][1]["properties"]["records"]["maxItems"] == gateway.settings.max_batch_rows


@pytest.fixture(scope="module")
def patient_id_gateway(tmp_path_factory: pytest.TempPathFactory, model_server: Any) -> Iterator[RunningGateway]:
    """A gateway for a bring-your-own dataset whose records are named by `patient_id`."""
    spec = getattr(model_server, "spec", None)
    assert spec is not None
    renamed = spec.model_copy(update={"record_id": RecordIdSpec(name="patient_id", description="Patient number")})
    with sqlite_gateway(tmp_path_factory.mktemp("gateway-patient-id"), model_server, renamed) as gw:
        yield gw


def test_every_route_takes_the_datasets_own_record_id(patient_id_gateway: RunningGateway) -> None:
    gw = patient_id_gateway
    record = make_records(1, seed=47)[0]
    record["patient_id"] = record.pop("record_id")
    predicted = gw.client("clinician").post("/v1/predictions", json=record)
    assert predicted.status_code == 200, predicted.text
    explained = gw.client("clinician").post("/v1/explanations", json={"patient_id": record["patient_id"]})
    assert explained.status_code == 200, explained.text
    assert explained.json()["record_id"] == record["patient_id"]
    outcome = gw.client("clinician").post("/v1/outcomes", json={"patient_id": record["patient_id"], "outcome": 0})
    assert outcome.status_code == 201, outcome.text
    both = gw.client("clinician").post("/v1/outcomes", json={"patient_id": "a", "record_id": "a", "outcome": 0})
    assert "not both" in problem(both, 422)["detail"]
    schema = httpx.get(gw.url + "/openapi.json").json()["components"]["schemas"]
    assert "patient_id" in schema["Record"]["required"] and "patient_id" in schema["ExplanationIn"]["properties"]
