"""Managed processes whose main process dies: a server that serves from a child (as `mlserver start`
does) leaves the child holding the port. `lm status` reports it as an orphan with its pid, `lm down`
stops it, and `lm up` (ProcessManager.start) leaves what runs alone and brings back what died."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testsupport import free_port

from learning_machine.embedded.processes import ProcessManager, ServiceSpec
from learning_machine.errors import ServiceStartError

LM = [sys.executable, "-m", "learning_machine"]

# The main process starts a child HTTP server on the port and waits; the child answers the health path.
SERVER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-m", "http.server", sys.argv[1], "--bind", "127.0.0.1", "--directory", sys.argv[2]],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(100000)
"""


def _spec(tmp_path: Path, port: int, name: str = "model-server") -> ServiceSpec:
    root = tmp_path / "www"
    (root / "v2" / "health").mkdir(parents=True, exist_ok=True)
    (root / "v2" / "health" / "live").write_text("ok")
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    return ServiceSpec(name, [sys.executable, str(script), str(port), str(root)], f"http://127.0.0.1:{port}",
                       "/v2/health/live")


def _dead(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_an_orphan_is_reported_stopped_and_replaced(tmp_path: Path):
    port = free_port()
    spec = _spec(tmp_path, port)
    manager = ProcessManager(tmp_path / "run")
    try:
        assert manager.start(spec, timeout_s=30)
        main = manager.pid(spec.name)
        assert main is not None
        assert not manager.start(spec, timeout_s=30) and manager.pid(spec.name) == main  # what runs is left alone

        os.kill(main, signal.SIGKILL)  # only the main process dies: its child keeps serving on the port
        assert _dead(main)
        status = manager.status(spec)
        assert status.healthy and not status.running and not status.ok
        assert len(status.orphans) == 1 and status.pid == status.orphans[0] != main
        assert f"its process {main} died and left pid(s) {status.orphans[0]} running" in status.detail
        orphan = status.orphans[0]

        assert manager.stop(spec.name)  # the pid file was kept for this: the whole group is stopped
        assert _dead(orphan) and _port_free(port)
        assert manager.status(spec).pid is None and not manager.stop(spec.name)

        # `lm up` again brings back a service that died, and replaces one that left an orphan behind.
        assert manager.start(spec, timeout_s=30)
        main = manager.pid(spec.name) or 0
        os.kill(main, signal.SIGKILL)
        assert _dead(main) and manager.orphans(spec.name)
        assert manager.start(spec, timeout_s=30)
        assert manager.status(spec).ok and not manager.orphans(spec.name)
    finally:
        manager.stop(spec.name)
    assert _port_free(port)


def test_lm_status_reports_the_orphan_and_lm_down_stops_it(tmp_path: Path):
    home = tmp_path / ".lm"
    port = free_port()
    env = {**os.environ, "LM_HOME": str(home), "LM_MLFLOW_PORT": str(free_port()),
           "LM_MODEL_SERVER_PORT": str(port), "LM_GATEWAY_PORT": str(free_port()),
           "LM_MONITOR_PORT": str(free_port()), "LM_DASHBOARD_PORT": str(free_port())}
    manager = ProcessManager(home / "run")  # where `lm up` keeps its pid files
    spec = _spec(tmp_path, port)
    try:
        manager.start(spec, timeout_s=30)
        main = manager.pid(spec.name)
        assert main is not None
        os.kill(main, signal.SIGKILL)
        assert _dead(main)

        status = subprocess.run([*LM, "status", "--json"], capture_output=True, text=True, env=env, timeout=120)
        assert status.returncode == 3, status.stderr
        served = {s["name"]: s for s in json.loads(status.stdout)}["model-server"]
        assert served["healthy"] and not served["running"] and served["orphans"] == [served["pid"]]
        assert served["pid"] != main and "orphan" in served["detail"]
        assert served["metrics"] == "http://127.0.0.1:8082/metrics"  # MLServer's own Prometheus endpoint
        table = subprocess.run([*LM, "status"], capture_output=True, text=True, env=env, timeout=120)
        assert "orphan" in table.stdout and str(served["pid"]) in table.stdout

        down = subprocess.run([*LM, "down"], capture_output=True, text=True, env=env, timeout=120)
        assert down.returncode == 0 and "stopped: model-server" in down.stderr + down.stdout
        assert _dead(served["pid"]) and _port_free(port)
    finally:
        manager.stop(spec.name)


def test_a_stranger_on_the_port_is_named_not_killed(tmp_path: Path):
    port = free_port()
    root = tmp_path / "www"
    (root / "v2" / "health").mkdir(parents=True)
    (root / "v2" / "health" / "live").write_text("ok")
    stranger = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                 "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manager = ProcessManager(tmp_path / "run")
    spec = _spec(tmp_path, port)
    try:
        deadline = time.monotonic() + 20
        while _port_free(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        status = manager.status(spec)
        assert status.healthy and status.pid == stranger.pid and not status.orphans
        assert f"not started by lm up: pid {stranger.pid} answers" in status.detail
        with pytest.raises(ServiceStartError, match=f"something else already answers .* \\(pid {stranger.pid}\\)"):
            manager.start(spec, timeout_s=5)
        assert not manager.stop(spec.name) and stranger.poll() is None  # not ours: left alone
    finally:
        stranger.kill()
        stranger.wait(timeout=10)
