"""Session fixtures: real servers on free ports (MLflow with SQLite, MLflow with PostgreSQL, an
S3-compatible moto server), each started once and stopped at the end."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from testsupport import free_port, fresh_postgres_database, wait_http

from learning_machine.data.spec import DatasetSpec
from learning_machine.embedded.processes import ProcessManager
from learning_machine.embedded.stack import mlflow_service
from learning_machine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

# Fail fast against a server that is down instead of MLflow's minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")




def _start_mlflow(home: Path, **overrides: object) -> tuple[Settings, ProcessManager]:
    settings = Settings(home=home, mlflow_port=free_port(), mlflow_workers=1, **overrides)  # type: ignore[arg-type]
    manager = ProcessManager(settings.run_dir)
    manager.start(mlflow_service(settings), timeout_s=240)
    return settings, manager


@pytest.fixture(scope="session")
def mlflow_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A real `mlflow server` with a SQLite backend and proxied artifacts on disk."""
    settings, manager = _start_mlflow(tmp_path_factory.mktemp("mlflow-sqlite"))
    yield settings
    manager.stop("mlflow")


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server, dropped at the end."""
    with fresh_postgres_database("lm_test") as url:
        yield url


@pytest.fixture(scope="session")
def mlflow_postgres(tmp_path_factory: pytest.TempPathFactory, postgres_database: str) -> Iterator[Settings]:
    """A real `mlflow server` with its backend store in the local PostgreSQL."""
    settings, manager = _start_mlflow(tmp_path_factory.mktemp("mlflow-pg"),
                                      mlflow_backend_store_uri=postgres_database)
    yield settings
    manager.stop("mlflow")


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def tracking_server(request: pytest.FixtureRequest) -> Settings:
    """The tracking server, once with each backend store."""
    return request.getfixturevalue("mlflow_sqlite" if request.param == "sqlite" else "mlflow_postgres")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3-compatible server in its own process (no MinIO binary can be installed here)."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/moto-api/", 60)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="session")
def s3_env(s3_server: str) -> dict[str, str]:
    """The environment an MLflow server and client need for an S3 artifact store (dummy credentials)."""
    return {"MLFLOW_S3_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class ModelServer:
    """A running MLServer with the project's three runtimes (model, explainer, drift detector)."""

    url: str
    model_name: str
    version: str
    tracking_uri: str
    spec: DatasetSpec
    settings: Settings
    repository: Path
    run_id: str


@pytest.fixture(scope="session")
def model_server(mlflow_sqlite: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    """A real `mlserver start` on free ports serving a small model (1,500 synthetic rows) trained into the
    `mlflow_sqlite` server under a name of its own, with its explainer and drift detector."""
    from learning_machine.data.sources import load_dataset
    from learning_machine.embedded.model_server import model_server_service, served_names, wait_models_ready
    from learning_machine.lifecycle.training import train_and_register
    from learning_machine.registry.tracker import Tracker

    home = tmp_path_factory.mktemp("model-server")
    settings = mlflow_sqlite.model_copy(update={
        "home": home, "model_name": f"risk-serve-{uuid.uuid4().hex[:8]}", "train_rows": 1500,
        "model_server_port": free_port(), "model_server_grpc_port": free_port(),
        "model_server_metrics_port": free_port(), "model_ref": "champion"})
    data = load_dataset("synthetic-cohort", n_rows=1500, seed=3)
    outcome = train_and_register(settings, Tracker(settings.tracking_uri), data, promote="if-first")
    service = model_server_service(settings)
    manager = ProcessManager(settings.run_dir)
    manager.start(service, timeout_s=300)
    try:
        wait_models_ready(service.url, served_names(settings.model_name), timeout_s=300)
        yield ModelServer(service.url, settings.model_name, outcome.version.version, settings.tracking_uri,
                          data.spec, settings, home / "model-server", outcome.run_id)
    finally:
        manager.stop("model-server")
