"""The learning loop's stack for the end-to-end loop tests, imported as ``from loop_harness import ...`` (a
unique module name): MLflow (the session's server), a first model, MLServer swapped by the local deployer,
the gateway as its own process, the retraining pipeline under kfp.local, and a monitor stepping over the
gateway's feed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testsupport import free_port

from learning_machine.clients.gateway import LearningMachineClient
from learning_machine.data.sources import load_dataset
from learning_machine.embedded.processes import ProcessManager
from learning_machine.embedded.stack import start_serving
from learning_machine.lifecycle.training import train_and_register
from learning_machine.loop.service import LoopService
from learning_machine.loop.stream import StreamPlan, generated_records, run_stream
from learning_machine.registry.names import CHAMPION
from learning_machine.registry.tracker import Tracker
from learning_machine.settings import Settings


@dataclass
class Stack:
    settings: Settings
    tracker: Tracker
    client: LearningMachineClient
    service: LoopService
    first_version: str

    def events(self) -> list[dict[str, Any]]:
        return list(reversed(self.client.page("/v1/events", limit=500)["items"]))

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events()]

    def stream(self, rows: int, *, seed: int, scenario: str = "none", flip_outcomes: bool = False) -> None:
        source = generated_records(rows, seed=seed, scenario=scenario, drift_start=0,
                                   id_prefix=f"{scenario[:4]}{seed}-")
        if flip_outcomes:
            source = ((record, None if y is None else 1 - y) for record, y in source)
        report = run_stream(self.client, source, StreamPlan(rows=rows, batch_size=25, outcome_delay_rows=50))
        assert report.predicted == rows and report.stopped_by_error is None, report.summary()

    def stream_until_promoted(self, seeds: range, scenario: str) -> None:
        """After a retraining was collected: the new version is promoted by the gate on its held-out rows, or,
        when those could not prove it better, by the shadow evaluation on the live records that follow (200
        rows per seed, paired with their outcomes as they arrive). Returns once the champion changed; fails when
        no shadow evaluation runs meanwhile."""
        for seed in seeds:
            if self.tracker.version(self.settings.model_name, CHAMPION).version != self.first_version:
                return
            assert self.service.shadow is not None, self.kinds()[-5:]
            self.stream(200, seed=seed, scenario=scenario)
            self.service.step()


@contextmanager
def loop_stack(mlflow: Settings, home: Path, name: str, **overrides: Any) -> Iterator[Stack]:
    """A first model (2,000 rows) of a model of its own (``name``-<random>) served and behind the gateway, and a
    loop service over it, with small windows and retraining sizes for a stream of a few thousand rows
    (``overrides`` change any setting); stopped at the end."""
    settings = mlflow.model_copy(update={
        "home": home, "model_name": f"{name}-{uuid.uuid4().hex[:8]}", "train_rows": 2000, "seed": 42,
        "model_server_port": free_port(), "model_server_grpc_port": free_port(),
        "model_server_metrics_port": free_port(), "model_ref": CHAMPION, "gateway_port": free_port(),
        "database_url": f"sqlite:///{home / 'lm.db'}", "deployer": "local", "pipeline_runner": "local",
        "monitor_window_rows": 200, "monitor_performance_rows": 300, "policy_drift_windows": 2,
        "policy_auc_floor": 0.68, "policy_min_outcomes": 100, "policy_cooldown_s": 0.0,
        "loop_retrain_rows": 600, "loop_min_retrain_rows": 200, "loop_reference_rows": 1000, **overrides})
    tracker = Tracker(settings.tracking_uri)
    first = train_and_register(settings, tracker, load_dataset("synthetic-cohort", n_rows=2000, seed=42),
                               promote="if-first")
    manager = ProcessManager(settings.run_dir)
    try:
        tokens = start_serving(settings, manager, timeout_s=300)
        with LearningMachineClient(settings.gateway_url, tokens["data-scientist"], timeout_s=120) as client, \
                LearningMachineClient(settings.gateway_url, tokens["monitor"], timeout_s=120) as monitor:
            yield Stack(settings, tracker, client, LoopService(settings, monitor, tracker=tracker),
                        first.version.version)
    finally:
        manager.stop("gateway")
        manager.stop("model-server")
