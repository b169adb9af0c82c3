"""Promotion swaps the served version through MLServer's repository API while requests keep flowing."""

from __future__ import annotations

import threading
import time

import pytest

from learning_machine.clients.v2 import ModelServerClient
from learning_machine.data.sources import load_dataset
from learning_machine.deployers import get_deployer
from learning_machine.lifecycle.training import train_and_register
from learning_machine.registry.tracker import Tracker


@pytest.mark.slow
def test_promotion_swaps_versions_with_zero_failed_requests(model_server):
    settings = model_server.settings.model_copy(update={"deployer": "local"})
    tracker = Tracker(settings.tracking_uri)
    data = load_dataset("synthetic-cohort", n_rows=1500, seed=4)
    second = train_and_register(settings, tracker, data, kind="logistic-regression", promote="never").version.version
    first = model_server.version
    assert second != first

    record = {k: v for k, v in data.frame.iloc[0].to_dict().items() if k != "outcome"}
    record = {k: (None if isinstance(v, float) and v != v else v) for k, v in record.items()}
    seen: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with ModelServerClient(model_server.url, timeout_s=30) as client:
            while not stop.is_set():
                try:
                    [p] = client.predict(model_server.model_name, model_server.spec, [record])
                    seen[p.model_version] = seen.get(p.model_version, 0) + 1
                except Exception as exc:  # count every failure, whatever it is
                    failures.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        tracker.promote(settings.model_name, second, reason="hot swap test")
        result = get_deployer(settings).deploy(settings.model_name, second)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    total = sum(seen.values())
    print(f"hot swap: {total} requests, {len(failures)} failures, by version {seen}")
    assert failures == []
    assert result.changed and result.version == second
    assert seen.get(first, 0) > 0 and seen.get(second, 0) > 0
    with ModelServerClient(model_server.url) as client:
        assert client.metadata(model_server.model_name)["versions"] == [second]
        explanation = client.explain(model_server.model_name, model_server.spec, record, "exact")
        assert explanation["data"]["model_version"] == second  # the explainer moved too
        # Deploying what already serves is a no-op.
        assert not get_deployer(settings).deploy(settings.model_name, second).changed

    # Put the session's server back on the first version for the tests that follow.
    tracker.rollback(settings.model_name, first)
    get_deployer(settings).deploy(settings.model_name, first)


@pytest.mark.slow
def test_a_server_started_before_the_first_model_serves_it_once_deployed(model_server, tmp_path):
    """`lm up` starts the model server before training the first champion: it must start empty (MLServer
    exits when a model fails to load at startup) and load the models when the version is deployed."""
    import socket
    import uuid

    from learning_machine.embedded.model_server import model_server_service, served_names
    from learning_machine.embedded.processes import ProcessManager

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    settings = model_server.settings.model_copy(update={
        "home": tmp_path, "model_name": f"risk-late-{uuid.uuid4().hex[:6]}", "deployer": "local",
        "model_server_port": port(), "model_server_grpc_port": port(), "model_server_metrics_port": port()})
    service = model_server_service(settings)
    manager = ProcessManager(settings.run_dir)
    manager.start(service, timeout_s=300)
    try:
        with ModelServerClient(service.url) as client:
            assert client.ready() and not client.model_ready(settings.model_name)
            data = load_dataset("synthetic-cohort", n_rows=600, seed=8)
            outcome = train_and_register(settings, Tracker(settings.tracking_uri), data,
                                         kind="logistic-regression", promote="if-first")
            result = get_deployer(settings).deploy(settings.model_name, outcome.version.version)
            assert result.changed
            assert all(client.model_ready(name) for name in served_names(settings.model_name))
            record = {k: v for k, v in data.frame.dropna().iloc[0].to_dict().items() if k != "outcome"}
            [prediction] = client.predict(settings.model_name, data.spec, [record])
            assert prediction.model_version == outcome.version.version
    finally:
        manager.stop("model-server")
