"""Prometheus sees what the monitor and the gateway see: a drift stream through the real gateway (in front of
the real MLServer with its drift detector), the real monitor stepping over its feed and serving /metrics as
`lm monitor` does; both /metrics parsed with prometheus_client's own parser. The values must be the ones the
monitor stored (compared with the gateway's /v1/monitoring rows), with feature and subgroup labels."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateway"))  # gateway_harness

from gateway_harness import RunningGateway, free_port, gateway_settings, start_gateway

from learning_machine.clients.gateway import LearningMachineClient
from learning_machine.loop.service import LoopService, serve_health
from learning_machine.loop.stream import StreamPlan, generated_records, run_stream
from learning_machine.registry.tracker import Tracker

WINDOW = 200
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of a /metrics page, by name and sorted labels, parsed by prometheus_client."""
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} missing; have {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for (n, labels) in samples if n == name and label in dict(labels)}


@pytest.fixture
def gateway(tmp_path: Path, model_server: Any) -> Iterator[RunningGateway]:
    # A retraining needs more labelled rows than this test sends: the policy fires, the loop records it and
    # defers or skips it (the real trigger runs), and no pipeline changes the shared model server's champion.
    settings = gateway_settings(tmp_path, f"sqlite:///{tmp_path / 'lm.db'}", model_server,
                                monitor_window_rows=WINDOW, monitor_performance_rows=300, policy_drift_windows=2,
                                policy_min_outcomes=100, loop_min_retrain_rows=100_000,
                                monitor_host="127.0.0.1", monitor_port=free_port())
    running = start_gateway(settings, getattr(model_server, "spec", None))
    yield running
    running.stop()


def _stream(client: LearningMachineClient, rows: int, *, seed: int, scenario: str) -> None:
    source = generated_records(rows, seed=seed, scenario=scenario, drift_start=0, id_prefix=f"m{seed}-")
    report = run_stream(client, source, StreamPlan(rows=rows, batch_size=50, outcome_delay_rows=20))
    assert report.predicted == rows and report.stopped_by_error is None, report.summary()


def test_a_drift_stream_shows_in_the_monitor_and_gateway_metrics(gateway: RunningGateway):
    settings = gateway.settings
    clinician = LearningMachineClient(gateway.url, gateway.tokens["clinician"], timeout_s=60)
    reader = LearningMachineClient(gateway.url, gateway.tokens["data-scientist"], timeout_s=60)
    monitor = LearningMachineClient(gateway.url, gateway.tokens["monitor"], timeout_s=60)
    service = LoopService(settings, monitor, tracker=Tracker(settings.tracking_uri))
    server = serve_health(service, settings.monitor_host, settings.monitor_port)
    metrics_url = f"{settings.monitor_health_url}/metrics"
    try:
        # One clean window, then two of a recalibrated lab (HbA1c reads higher, eGFR lower; age and sex as before).
        _stream(clinician, WINDOW, seed=31, scenario="none")
        service.step()
        _stream(clinician, 2 * WINDOW, seed=32, scenario="measurement-shift")
        decision = service.step()
        service.wait_retraining(timeout_s=120)
        service.step()  # collects what the trigger did with it
        assert decision is not None and "drift" in decision.rules, decision

        samples = scrape(metrics_url)
        stored = reader.page("/v1/monitoring", limit=500)["items"]
        last = max(int(r["details"].get("window_id") or 0) for r in stored)
        latest = {(r["kind"], r["metric"], r["feature"]): r for r in stored if r["details"].get("window_id") == last}

        # Drift per feature: the latest window's p-values, the threshold, and which features drifted.
        # (the detector tests each feature and the missing-value indicators of those that can be missing)
        features = {f for (kind, metric, f) in latest if kind == "drift" and metric == "p_value"}
        assert set(gateway.spec.feature_names) <= features
        assert label_values(samples, "lm_monitor_drift_p_value", "feature") == features
        threshold = value(samples, "lm_monitor_drift_threshold")
        assert 0 < threshold <= settings.drift_p_val
        for feature in features:
            row = latest[("drift", "p_value", feature)]
            assert value(samples, "lm_monitor_drift_p_value", feature=feature) == pytest.approx(row["value"])
            assert value(samples, "lm_monitor_drift_alert", feature=feature) == float(row["alert"])
            assert value(samples, "lm_monitor_drift_statistic", feature=feature) == pytest.approx(
                row["details"]["distance"])
        for drifted in ("hba1c", "egfr"):  # the shifted lab values: far below the threshold
            assert value(samples, "lm_monitor_drift_p_value", feature=drifted) < threshold / 100
            assert value(samples, "lm_monitor_drift_alert", feature=drifted) == 1
        assert value(samples, "lm_monitor_drift_p_value", feature="age") > threshold
        assert value(samples, "lm_monitor_drift_alert", feature="age") == 0
        assert value(samples, "lm_monitor_window_drift") == 1
        assert value(samples, "lm_monitor_windows_total") == 3

        # The sequential test: every stream's CUSUM statistic over its threshold (the detector's own figures).
        streams = label_values(samples, "lm_monitor_cusum_ratio", "stream")
        assert {"age", "hba1c", "egfr", "outcomes"} <= streams
        detector = service._detectors[service.monitor.serving_version]
        for stream, ratio in detector.statistics().items():
            assert value(samples, "lm_monitor_cusum_ratio", stream=stream) == pytest.approx(ratio)
        cusum_rows = [r for r in stored if r["metric"] == "cusum"]
        assert value(samples, "lm_monitor_cusum_alarms_total", stream="features") == len(
            [r for r in cusum_rows if r["feature"] == "features"]) >= 1

        # Performance per subgroup, realised (outcomes arrived 20 rows after each record) and estimated.
        subgroups = {r["feature"] for r in stored if r["kind"] == "performance" and r["metric"] == "auc" and r["feature"]}
        assert subgroups and all("=" in s for s in subgroups)
        assert label_values(samples, "lm_monitor_auc", "subgroup") >= {"all", *subgroups}
        realised = value(samples, "lm_monitor_auc", subgroup="all", source="realised")
        assert realised == pytest.approx(latest[("performance", "auc", None)]["value"]) and 0.55 < realised <= 1
        assert value(samples, "lm_monitor_auc", subgroup="all", source="estimated") == pytest.approx(
            latest[("performance", "estimated_auc", None)]["value"])
        for subgroup in subgroups:
            for metric, name in (("auc", "lm_monitor_auc"), ("ece", "lm_monitor_calibration_error")):
                assert value(samples, name, subgroup=subgroup, source="realised") == pytest.approx(
                    latest[("performance", metric, subgroup)]["value"])
        estimated = {r["feature"] for r in latest.values() if r["metric"] == "estimated_ece" and r["feature"]}
        assert estimated & subgroups  # a subgroup too small in one window has no estimate there
        for subgroup in estimated:
            assert value(samples, "lm_monitor_calibration_error", subgroup=subgroup, source="estimated") == \
                pytest.approx(latest[("performance", "estimated_ece", subgroup)]["value"])
        assert value(samples, "lm_monitor_performance_rows", subgroup="all", source="realised") >= 100
        # Calibration slope and calibration-in-the-large over time, per subgroup, with their standard errors.
        calibrated = {r["feature"] or "all" for r in latest.values() if r["metric"] == "calibration_slope"}
        assert {"all", *subgroups} <= calibrated
        assert label_values(samples, "lm_monitor_calibration_slope", "subgroup") == calibrated
        for subgroup in calibrated:
            feature = None if subgroup == "all" else subgroup
            for measure in ("slope", "intercept"):
                row = latest[("performance", f"calibration_{measure}", feature)]
                assert value(samples, f"lm_monitor_calibration_{measure}", subgroup=subgroup) == pytest.approx(
                    row["value"])
                assert value(samples, "lm_monitor_calibration_standard_error", subgroup=subgroup,
                             measure=measure) == pytest.approx(row["details"]["se"])
        slope = latest[("performance", "calibration_slope", None)]["details"]
        assert slope["low"] < latest[("performance", "calibration_slope", None)]["value"] < slope["high"]
        assert value(samples, "lm_monitor_auc_floor") == settings.policy_auc_floor

        # The policy said drift confirmed; every stored event is counted by kind.
        assert value(samples, "lm_monitor_policy_rule", rule="drift") == 1
        # A lab shift moves the features: the change it asks for is a retraining.
        assert value(samples, "lm_monitor_policy_change", change="retrain") == 1
        assert value(samples, "lm_monitor_policy_change", change="recalibrate") == 0
        events = reader.page("/v1/events", limit=500)["items"]
        kinds = {e["kind"] for e in events}
        assert "retrain-fired" in kinds
        for kind in kinds:
            assert value(samples, "lm_monitor_events_total", kind=kind) == sum(e["kind"] == kind for e in events)

        # A retraining someone asks for runs through the real trigger: too few labelled rows, so it ends skipped.
        LearningMachineClient(gateway.url, gateway.tokens["admin"], timeout_s=60).request_retraining("metrics test")
        assert service.step() is not None
        outcome = service.wait_retraining(timeout_s=120)
        assert outcome is not None and outcome["state"] == "SKIPPED", outcome
        service.step()
        service.wait_retraining(timeout_s=120)  # the drift decision, tried again (deferred), ends before the gateway
        samples = scrape(metrics_url)
        assert value(samples, "lm_monitor_retraining_seconds_count", result="skipped") == 1
        assert value(samples, "lm_monitor_events_total", kind="retrain-failed") >= 1
        assert value(samples, "lm_monitor_policy_rule", rule="requested") == 1
        assert value(samples, "lm_monitor_step_failures") == 0 and value(samples, "lm_monitor_steps") == 5

        # The gateway: latency by route and outcome, and the rows it stored.
        bad = gateway.client("clinician").post("/v1/predictions", json={"records": [{"record_id": "x", "age": -1}]})
        assert bad.status_code == 422
        gw = scrape(f"{gateway.url}/metrics")
        route = {"method": "POST", "route": "/v1/predictions"}
        assert value(gw, "lm_gateway_request_seconds_count", **route, outcome="success") == 3 * WINDOW / 50
        assert value(gw, "lm_gateway_request_seconds_count", **route, outcome="client_error") == 1
        counts = gateway.counts()
        assert value(gw, "lm_gateway_stored_rows_total", kind="prediction") == counts["predictions"] == 3 * WINDOW
        assert value(gw, "lm_gateway_stored_rows_total", kind="outcome") == counts["outcomes"] == 3 * WINDOW
    finally:
        server.shutdown()
        for client in (clinician, reader, monitor):
            client.close()
