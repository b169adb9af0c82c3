"""The model server killed mid-stream (SIGKILL to its whole process group, a real MLServer behind the real
gateway): the gateway answers 503 naming the model server, the stream resends what was refused, and once
the model server is started again predictions succeed without restarting the gateway; at the end the
stored predictions are exactly the acknowledged ones. Then the orphan case with the real MLServer: only
its main process (`lm serve`) dies, `mlserver` keeps serving from a child; status names the orphan and
stop frees the port."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_harness import RunningGateway, make_records, sqlite_gateway
from testsupport import free_port

from learning_machine.clients.gateway import LearningMachineClient
from learning_machine.embedded.model_server import model_server_service, served_names, wait_models_ready
from learning_machine.embedded.processes import ProcessManager, ServiceSpec
from learning_machine.loop.stream import StreamPlan, StreamReport, generated_records, run_stream

pytestmark = pytest.mark.slow


class Served:
    def __init__(self, manager: ProcessManager, service: ServiceSpec, names: list[str]) -> None:
        self.manager, self.service, self.names = manager, service, names
        self.url, self.model_name = service.url, names[0]

    def start(self) -> float:
        started = time.monotonic()
        self.manager.start(self.service, timeout_s=300)
        wait_models_ready(self.service.url, self.names, timeout_s=300)
        return time.monotonic() - started


@pytest.fixture(scope="module")
def served(model_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A model server of this module's own (the session's one stays up for the other tests), serving the
    session's registered champion."""
    settings = model_server.settings.model_copy(update={
        "home": tmp_path_factory.mktemp("kill-model-server"), "model_server_port": free_port(),
        "model_server_grpc_port": free_port(), "model_server_metrics_port": free_port()})
    result = Served(ProcessManager(settings.run_dir), model_server_service(settings), served_names(settings.model_name))
    result.tracking_uri, result.spec = model_server.tracking_uri, model_server.spec  # type: ignore[attr-defined]
    result.start()
    yield result
    result.manager.stop("model-server")


@pytest.fixture(scope="module")
def gw(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with sqlite_gateway(tmp_path_factory.mktemp("kill-gateway"), served) as running:
        yield running


def _port_free(url: str) -> bool:
    parsed = httpx.URL(url)
    with socket.socket() as s:
        return s.connect_ex((parsed.host, parsed.port or 80)) != 0


def test_the_model_server_killed_mid_stream_comes_back_without_a_gateway_restart(gw: RunningGateway, served: Served):
    rows = 400
    report: dict[str, StreamReport] = {}
    said: list[str] = []

    def stream() -> None:
        with LearningMachineClient(gw.url, gw.tokens["clinician"], timeout_s=30) as client:
            # Patient enough to outlast a model server restart: resends every 2 s at most, for minutes.
            report["r"] = run_stream(client, generated_records(rows, seed=31, scenario="none", drift_start=0,
                                                               id_prefix="kill-"),
                                     StreamPlan(rows=rows, batch_size=5, rate=40.0, send_outcomes=False,
                                                max_attempts=200, backoff_s=0.2, max_backoff_s=2.0),
                                     progress=said.append)

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while gw.stored_predictions("kill-") < 50 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gw.stored_predictions("kill-") >= 50, said

    record = served.manager._record("model-server") or {}
    os.killpg(int(str(record["pgid"])), signal.SIGKILL)  # the model server dies, children and all
    time.sleep(0.5)
    probe = gw.client("clinician").post("/v1/predictions", json=make_records(1, prefix="probe")[0])
    assert probe.status_code == 503, probe.text
    assert f"model server at {served.url}" in probe.json()["detail"]
    ready = gw.client(None).get("/readyz")
    assert ready.status_code == 503 and "model server" in ready.json()["detail"]
    stored_while_down = gw.stored_predictions("kill-")

    restart_s = served.start()  # started again; the gateway is not touched
    thread.join(timeout=300)
    assert not thread.is_alive()
    result = report["r"]
    assert result.stopped_by_error is None, result.summary()
    assert result.rejected == 0, [s for s in said if "refused" in s][:3]
    assert result.resent > 0 and any("model server" in s for s in said), said  # batches met the outage
    assert result.predicted == rows and result.rejected == 0
    assert gw.stored_predictions("kill-") == result.predicted == rows  # acknowledged == stored: nothing lost or doubled
    assert stored_while_down < rows
    after = gw.client("clinician").post("/v1/predictions", json=make_records(1, prefix="after")[0])
    assert after.status_code == 200 and gw.client(None).get("/readyz").status_code == 200
    print(f"model server restart took {restart_s:.1f} s")


def test_an_orphaned_mlserver_is_reported_and_stopped(served: Served):
    main = served.manager.pid("model-server")
    assert main is not None
    os.kill(main, signal.SIGKILL)  # `lm serve` dies; the `mlserver start` it ran keeps serving
    deadline = time.monotonic() + 10
    while served.manager.pid("model-server") is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    status = served.manager.status(served.service)
    assert status.healthy and not status.running and status.orphans and status.pid == status.orphans[0]
    assert "orphan" in status.detail and str(main) in status.detail
    assert served.manager.stop("model-server")
    assert _port_free(served.url) and not served.manager.orphans("model-server")
    assert not any(Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]
                   for p in status.orphans)
