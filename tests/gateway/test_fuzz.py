"""A property-based fuzz of the gateway's own OpenAPI document (schemathesis): over every operation, requests
that fit the schema (typed records from the dataset spec, bounded query parameters) and requests that break it
(negative mode: wrong types, missing fields, out-of-range values), sent to the real gateway in front of the real
MLServer and MLflow, on PostgreSQL (whose types refuse more than SQLite's; every class of bad input is also
tested on both databases in test_trust.py). No answer may be a server error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from gateway_harness import RunningGateway
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from learning_machine.registry.names import CHAMPION
from learning_machine.registry.tracker import Tracker

EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 25}
SLOW = {"/v1/explanations": 0.4}  # anchors take ~0.1 s each: fewer examples there


@pytest.fixture
def champion_restored(gateway: RunningGateway, model_server: Any) -> Iterator[None]:
    """The fuzz may promote and roll back (admin routes): put the session's champion back afterwards. The
    gateway's deployer is `none` here, so only the alias moves; what MLServer serves never changes."""
    tracker = Tracker(model_server.tracking_uri)
    yield
    champion = tracker.alias_version(model_server.model_name, CHAMPION)
    if champion is None or champion.version != str(model_server.version):
        tracker.promote(model_server.model_name, str(model_server.version), reason="fuzz test restores it")


@pytest.mark.slow
@pytest.mark.parametrize("gateway", ["postgresql"], indirect=True)  # the stricter database; the class tests
def test_no_generated_request_gets_a_server_error(gateway: RunningGateway, champion_restored: None) -> None:
    document = httpx.get(gateway.url + "/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{o.method.upper()} {o.path}" for o in operations} >= {
        "POST /v1/predictions", "POST /v1/explanations", "POST /v1/outcomes", "GET /v1/patients/{record_id}",
        "POST /v1/events", "POST /v1/monitoring", "POST /v1/models/promote", "GET /v1/feed/predictions"}
    sent: dict[str, int] = {}
    failures: list[str] = []
    auth = {"Authorization": f"Bearer {gateway.tokens['admin']}"}  # admin may use every route
    with httpx.Client(base_url=gateway.url, timeout=60) as client:

        def fuzz(operation: Any, mode: GenerationMode, examples: int) -> None:
            name = f"{operation.method.upper()} {operation.path}"

            @settings(max_examples=examples, database=None, deadline=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def probe(case: Any) -> None:
                kwargs = case.as_transport_kwargs(base_url=gateway.url, headers=auth)
                response = client.request(kwargs["method"], kwargs["url"], params=kwargs.get("params"),
                                          headers=kwargs.get("headers"), json=kwargs.get("json"),
                                          content=kwargs.get("data") if "json" not in kwargs else None)
                sent[name] = sent.get(name, 0) + 1
                if response.status_code >= 500:
                    failures.append(f"{name} -> {response.status_code}: {response.text[:300]} "
                                    f"(query {kwargs.get('params')}, body {str(kwargs.get('json'))[:300]})")

            try:
                probe()
            except Unsatisfiable:  # e.g. no negative case exists for an operation without inputs
                assert mode is GenerationMode.NEGATIVE, name

        for operation in operations:
            for mode, examples in EXAMPLES.items():
                fuzz(operation, mode, max(5, int(examples * SLOW.get(operation.path, 1))))
    total = sum(sent.values())
    print(f"fuzz: {total} requests over {len(sent)} operations, {len(failures)} server errors")
    assert not failures, "\n".join(failures[:20])
    assert total >= 1000 and len(sent) == len(operations), sent
