"""The gateway as `lm up` runs it (a real `lm gateway` process) and the `lm tokens` / `lm db` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from gateway_harness import free_port, make_records

from learning_machine.embedded.processes import ProcessManager
from learning_machine.embedded.stack import gateway_service, statuses
from learning_machine.settings import Settings
from learning_machine.store import Database, repository
from learning_machine.store.db import current_revision
from learning_machine.store.tokens import authenticate, prepare_for_gateway

LM = str(Path(sys.executable).parent / "lm")


@pytest.mark.slow  # four `lm` processes: mostly import time
def test_lm_db_upgrade_and_tokens_create(tmp_path: Path) -> None:
    env = {**os.environ, "LM_HOME": str(tmp_path / ".lm")}
    upgrade = subprocess.run([LM, "db", "upgrade"], capture_output=True, text=True, env=env, timeout=120)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "revision 0003" in upgrade.stderr
    created = subprocess.run([LM, "tokens", "create", "--role", "data-scientist", "--name", "notebook"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    db = Database(Settings(home=tmp_path / ".lm").database_uri())
    assert authenticate(db, token).role == "data-scientist"
    listed = subprocess.run([LM, "tokens", "list", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert json.loads(listed.stdout)[0]["name"] == "notebook" and token not in listed.stdout
    bad = subprocess.run([LM, "tokens", "create", "--role", "nurse"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode == 1 and "valid roles are: admin, clinician, data-scientist" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_embedded_gateway_process_with_its_tokens_and_status(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / ".lm", gateway_port=free_port(),
                        model_server_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
                        mlflow_tracking_uri="http://127.0.0.1:9")
    said: list[str] = []
    assert prepare_for_gateway(settings, said.append) is True
    tokens = json.loads(settings.tokens_path().read_text())
    assert oct(settings.tokens_path().stat().st_mode & 0o777) == "0o600"
    assert any(str(settings.tokens_path().resolve()) in line for line in said)
    assert prepare_for_gateway(settings) is False  # `lm up` again: the same tokens
    manager = ProcessManager(settings.run_dir)
    manager.start(gateway_service(settings), timeout_s=90)
    try:
        [status] = [s for s in statuses(settings) if s.name == "gateway"]
        assert status.url == settings.gateway_url and status.healthy and status.pid
        assert status.detail.startswith("not ready:") and settings.model_server_base_url() in status.detail
        response = httpx.post(settings.gateway_url + "/v1/predictions", json=make_records(1)[0],
                              headers={"Authorization": f"Bearer {tokens['clinician']}"}, timeout=30)
        assert response.status_code == 503 and "unreachable" in response.json()["detail"]
        db = Database(settings.database_uri())
        assert current_revision(db.engine) == "0003"
        assert repository.counts(db)["predictions"] == 0
    finally:
        assert manager.stop("gateway")
    assert not next(s for s in statuses(settings) if s.name == "gateway").healthy


def test_the_gateway_process_logs_one_json_object_per_line_with_the_request_id(tmp_path: Path) -> None:
    """LM_LOG_FORMAT=json (the chart's default): what `lm gateway` writes while answering a request carries that
    request's X-Request-ID, so a log collector joins the lines of one request across services."""
    settings = Settings(home=tmp_path / ".lm", gateway_port=free_port(), log_format="json",
                        model_server_url=f"http://127.0.0.1:{free_port()}",  # nothing listens: a logged 503
                        mlflow_tracking_uri="http://127.0.0.1:9")
    prepare_for_gateway(settings)
    tokens = json.loads(settings.tokens_path().read_text())
    manager = ProcessManager(settings.run_dir)
    service = gateway_service(settings)
    assert service.env["LM_LOG_FORMAT"] == "json"  # `lm up` passes the format to every service it starts
    manager.start(service, timeout_s=90)
    try:
        response = httpx.post(settings.gateway_url + "/v1/predictions", json=make_records(1)[0], timeout=30,
                              headers={"Authorization": f"Bearer {tokens['clinician']}", "X-Request-ID": "trace-7f3a"})
        assert response.status_code == 503 and response.headers["x-request-id"] == "trace-7f3a"
        unnamed = httpx.post(settings.gateway_url + "/v1/predictions", json=make_records(1)[0], timeout=30,
                             headers={"Authorization": f"Bearer {tokens['clinician']}"})
        generated = unnamed.headers["x-request-id"]  # none given: the gateway's own id, in the answer and the log
    finally:
        assert manager.stop("gateway")
    text = manager.log_path("gateway").read_text()
    # Every line the process wrote is one JSON object (`lm up`'s process manager marks each start with "--- ").
    lines = [json.loads(line) for line in text.splitlines() if line.strip() and not line.startswith("--- ")]
    mine = [line for line in lines if line["request_id"] == "trace-7f3a"]
    assert mine, text
    assert mine[0]["level"] == "WARNING" and mine[0]["logger"] == "learning_machine.gateway"
    assert "/v1/predictions" in mine[0]["message"] and mine[0]["time"].endswith("Z")
    assert all({"time", "level", "logger", "message", "request_id"} <= line.keys() for line in lines)
    assert [line["request_id"] for line in lines if "/v1/predictions" in line["message"]] == ["trace-7f3a", generated]
