"""The data source (`lm stream`) against a real gateway and a real model server: rows and delayed
outcomes arrive, the rate is kept, Ctrl-C and a gateway outage stop cleanly with a count."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from gateway_harness import RunningGateway, sqlite_gateway
from testsupport import free_port as _free_port

from learning_machine.clients.gateway import GatewayError, LearningMachineClient
from learning_machine.loop.stream import StreamPlan, generated_records, run_stream


@pytest.fixture(scope="module")
def stream_gateway(tmp_path_factory, model_server) -> Iterator[RunningGateway]:
    with sqlite_gateway(tmp_path_factory.mktemp("stream-gateway"), model_server) as running:
        yield running


def _client(gw: RunningGateway) -> LearningMachineClient:
    return LearningMachineClient(gw.url, gw.tokens["data-scientist"])


def test_rows_and_delayed_outcomes_arrive(stream_gateway: RunningGateway):
    before = stream_gateway.counts()
    source = generated_records(60, seed=3, scenario="none", drift_start=0, id_prefix="st1-")
    with _client(stream_gateway) as client:
        report = run_stream(client, source, StreamPlan(rows=60, batch_size=10, outcome_delay_rows=20,
                                                       drain_outcomes=False))
    assert (report.sent, report.predicted, report.rejected) == (60, 60, 0)
    # Outcomes come 20 rows after their record: the last 20 are not due yet when the stream ends.
    assert report.outcomes_sent == 40 and report.outcomes_pending == 20
    after = stream_gateway.counts()
    assert after["predictions"] - before["predictions"] == 60
    assert after["outcomes"] - before["outcomes"] == 40
    assert sum(report.model_versions.values()) == 60


def test_drained_outcomes_all_arrive_and_the_rate_is_kept(stream_gateway: RunningGateway):
    before = stream_gateway.counts()
    source = generated_records(20, seed=4, scenario="none", drift_start=0, id_prefix="st2-")
    started = time.monotonic()
    with _client(stream_gateway) as client:
        report = run_stream(client, source, StreamPlan(rows=20, rate=40.0, outcome_delay_rows=5))
    assert time.monotonic() - started >= 19 / 40  # 20 rows at 40 rows/s: the last leaves after 0.475 s
    assert report.outcomes_sent == 20 and report.outcomes_pending == 0
    assert stream_gateway.counts()["outcomes"] - before["outcomes"] == 20


def test_ctrl_c_stops_cleanly_and_counts(stream_gateway: RunningGateway):
    def interrupted_source() -> Iterator[tuple[dict[str, Any], int | None]]:
        for i, item in enumerate(generated_records(50, seed=5, scenario="none", drift_start=0, id_prefix="st3-")):
            if i == 15:
                raise KeyboardInterrupt
            yield item

    with _client(stream_gateway) as client:
        report = run_stream(client, interrupted_source(), StreamPlan(rows=50, batch_size=5))
    assert report.interrupted and report.sent == 15
    assert report.summary().startswith("interrupted: sent 15 rows")


def test_a_gateway_that_is_down_stops_the_stream_with_a_clear_message():
    url = f"http://127.0.0.1:{_free_port()}"
    source = generated_records(10, seed=6, scenario="none", drift_start=0)
    with LearningMachineClient(url, "token") as client:
        report = run_stream(client, source, StreamPlan(rows=10), sleep=lambda _: None)
    assert report.sent == 0
    assert report.stopped_by_error.startswith(f"the gateway at {url} is unreachable (ConnectError); gave up after 6 "
                                              "attempt(s): the batch of 1 row(s) ")
    assert report.stopped_by_error.endswith("not stored") and len(report.not_stored) == 1


def test_the_monitor_feeds_and_result_endpoints(stream_gateway: RunningGateway):
    with _client(stream_gateway) as client:
        start = client.feed(after_id=0, limit=5000)["next_after_id"]
        report = run_stream(client, generated_records(30, seed=7, scenario="none", drift_start=0, id_prefix="st5-"),
                            StreamPlan(rows=30, batch_size=10, outcome_delay_rows=10, drain_outcomes=False))
        assert report.outcomes_sent == 20
        feed = client.feed(after_id=start, limit=25)
        assert len(feed["items"]) == 25 and feed["next_after_id"] == feed["items"][-1]["id"]
        first = feed["items"][0]
        assert first["record_id"] == "st5-0000000" and set(first["features"]) >= {"age", "sex", "egfr"}
        assert first["outcome"] in (0, 1) and feed["items"][-1]["outcome"] is None  # not due yet
        rest = client.feed(after_id=feed["next_after_id"])
        assert len(rest["items"]) == 5
        labelled = client.labelled(limit=1000)
        assert all(item["outcome"] in (0, 1) for item in labelled)
        assert labelled[0]["id"] > labelled[-1]["id"]  # newest first
    # Results and loop events are the monitor's (or an admin's) to write.
    with LearningMachineClient(stream_gateway.url, stream_gateway.tokens["monitor"]) as client:
        assert client.post_results([{"kind": "drift", "metric": "p_value", "feature": "age", "value": 0.001,
                                     "threshold": 0.005, "alert": True, "window_rows": 200}]) == 1
        event = client.post_event("retrain-fired", {"reasons": ["drift confirmed"]}, model_version="1")
        assert event["kind"] == "retrain-fired"
        assert client.page("/v1/events", kind="retrain-fired")["items"][0]["detail"] == {
            "reasons": ["drift confirmed"], "recorded_by": "test monitor"}
        assert client.page("/v1/monitoring", kind="drift")["items"][0]["feature"] == "age"
    with LearningMachineClient(stream_gateway.url, stream_gateway.tokens["clinician"]) as clinician:
        with pytest.raises(GatewayError) as denied:
            clinician.post_event("retrain-fired", {})
        assert denied.value.status == 403
    with LearningMachineClient(stream_gateway.url, stream_gateway.tokens["monitor"]) as client, \
            pytest.raises(GatewayError) as bad:
        client.post_results([{"kind": "vibes", "metric": "x"}])
    assert bad.value.status == 422
