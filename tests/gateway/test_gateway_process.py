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
