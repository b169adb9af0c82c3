"""The gateway test harness: start the real gateway (uvicorn on a free port, in a thread of the test
process so tests can count rows in its database) and make valid records. Import it as
``from gateway_harness import ...`` (a unique module name; ``conftest`` is ambiguous across folders)."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from learning_machine.data.spec import DatasetSpec
from learning_machine.gateway.app import build_context, create_app
from learning_machine.settings import Settings
from learning_machine.store import Database, repository
from learning_machine.store.tokens import ROLES, create_token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningGateway:
    url: str
    settings: Settings
    db: Database
    spec: DatasetSpec
    tokens: dict[str, str]
    server: uvicorn.Server
    thread: threading.Thread
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    def client(self, role: str | None = "clinician") -> httpx.Client:
        """An HTTP client holding a token of ``role`` (None: no token)."""
        key = role or "-"
        if key not in self.clients:
            headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
            self.clients[key] = httpx.Client(base_url=self.url, headers=headers, timeout=60)
        return self.clients[key]

    def counts(self) -> dict[str, int]:
        return repository.counts(self.db)

    def stored_predictions(self, prefix: str) -> int:
        """Predictions in the database for record ids starting with ``prefix`` (counted, not asked over HTTP)."""
        from sqlalchemy import func, select

        from learning_machine.store.models import Prediction

        with self.db.read() as session:
            return int(session.scalar(select(func.count()).select_from(Prediction)
                                      .where(Prediction.record_id.startswith(prefix))) or 0)

    def stop(self) -> None:
        for c in self.clients.values():
            c.close()
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.db.dispose()


def start_gateway(settings: Settings, spec: DatasetSpec | None = None) -> RunningGateway:
    """Start the gateway app under uvicorn on ``settings.gateway_port``; tokens for every role."""
    ctx = build_context(settings)
    if spec is not None:
        ctx.spec = spec
    app = create_app(settings, context=ctx)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.gateway_port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start (see the log above)")
        time.sleep(0.05)
    db = Database(settings.database_uri())
    tokens = {role: create_token(db, role, f"test {role}")[0] for role in ROLES}
    return RunningGateway(settings.gateway_url, settings, db, ctx.spec, tokens, server, thread)


@contextmanager
def sqlite_gateway(home: Path, model_server: Any, spec: DatasetSpec | None = None,
                   **overrides: Any) -> Iterator[RunningGateway]:
    """A gateway with its own SQLite database in ``home`` in front of ``model_server`` (whose dataset spec it
    serves unless ``spec`` is given), stopped at the end."""
    settings = gateway_settings(home, f"sqlite:///{home / 'lm.db'}", model_server, **overrides)
    running = start_gateway(settings, spec if spec is not None else getattr(model_server, "spec", None))
    try:
        yield running
    finally:
        running.stop()


PROBLEM = "application/problem+json"


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The RFC 9457 problem document of an error response, checked: the status, the media type, strict
    UTF-8 JSON with a detail, and no stack trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = json.loads(response.content)
    assert body["status"] == status and body["detail"] and "Traceback" not in response.text
    response.content.decode("utf-8")  # valid UTF-8, always
    return body


def gateway_settings(home: Path, database_url: str, model_server: Any, **overrides: Any) -> Settings:
    return Settings(**{"home": home, "gateway_port": free_port(), "database_url": database_url,
                       "model_server_url": model_server.url, "model_name": model_server.model_name,
                       "mlflow_tracking_uri": model_server.tracking_uri, "max_request_bytes": 200_000,
                       "max_batch_rows": 100, **overrides})


@dataclass
class Nowhere:
    """A model server address where nothing listens."""

    url: str
    model_name: str = "clinical-risk"
    tracking_uri: str = "http://127.0.0.1:9"


def make_records(n: int, *, seed: int = 0, prefix: str | None = None, with_outcome: bool = False,
                 ) -> list[dict[str, Any]]:
    """``n`` valid synthetic-cohort records with fresh ids (missing values as null)."""
    from learning_machine.data.synthetic import generate_cohort

    frame = generate_cohort(n, seed=seed).frame
    prefix = prefix or f"t-{uuid.uuid4().hex[:8]}"
    out = []
    for i, row in enumerate(frame.to_dict("records")):
        record = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        record = {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()}
        record["record_id"] = f"{prefix}-{i}"
        if not with_outcome:
            record.pop("outcome", None)
        out.append(record)
    return out


@dataclass
class TwoVersions:
    """A model of its own with a first version (promoted: no champion) and a retrained second one."""

    settings: Settings
    first: str
    retrained: str
    comparison: dict[str, Any]
    retrain_run: str
    spec: DatasetSpec


@contextmanager
def two_versions_gateway(mlflow: Settings, home: Path, name: str) -> Iterator[tuple[RunningGateway, TwoVersions]]:
    """:func:`train_two_versions` of a model of its own (``name``-<random>) on the tracking server of ``mlflow``,
    and a gateway over that model with no model server (promotions only move the alias); stopped at the end."""
    settings = mlflow.model_copy(update={"model_name": f"{name}-{uuid.uuid4().hex[:8]}", "home": home,
                                         "deployer": "none"})
    two = train_two_versions(settings, home)
    with sqlite_gateway(home / "gw", Nowhere(f"http://127.0.0.1:{free_port()}", settings.model_name,
                                             settings.tracking_uri), two.spec, deployer="none") as gateway:
        yield gateway, two


def train_two_versions(settings: Settings, home: Path) -> TwoVersions:
    """v1 trained and registered as `lm up` trains its first model (promoted: there is no champion), then v2 from
    the retraining pipeline's own retrain, evaluate and register steps on rows after a concept drift, compared
    with v1 (a few seconds: 1,500 rows each)."""
    from learning_machine.components import release, steps
    from learning_machine.data.sources import load_dataset
    from learning_machine.data.synthetic import generate_cohort
    from learning_machine.lifecycle.training import train_and_register
    from learning_machine.registry.tracker import Tracker

    data = load_dataset("synthetic-cohort", n_rows=1500, seed=21)
    first = train_and_register(settings, Tracker(settings.tracking_uri), data, promote="if-first").version.version
    new = generate_cohort(1500, seed=22, scenario="concept-drift", drift_start=0, id_prefix="N")
    steps.write_dataset(home / "new", new.frame, data.spec, {"source_uri": "generated:concept-drift",
                                                              "params": {"seed": 22}})
    run_id, _ = steps.retrain(settings, home / "new", home / "test")
    steps.evaluate(settings, run_id, home / "test", home / "comparison.json", policy="gate")
    retrained = release.register(settings, run_id, home / "comparison.json")
    return TwoVersions(settings, first, retrained, json.loads((home / "comparison.json").read_text()), run_id,
                       data.spec)

