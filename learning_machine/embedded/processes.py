"""Managed background processes for the embedded (one machine) setup: start, wait until healthy, report,
stop. Each process has a pid file (JSON) and a log under ``<home>/run``; nothing else is global."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from learning_machine.errors import ServiceStartError


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one service and how to tell that it is healthy."""

    name: str
    command: list[str]
    url: str
    health_path: str = "/health"
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    # Folders the process needs, created when it starts (never when the description is built: the chart
    # renderer builds the same descriptions).
    folders: tuple[Path, ...] = ()

    @property
    def health_url(self) -> str:
        return self.url.rstrip("/") + self.health_path


@dataclass
class ServiceStatus:
    """What ``lm status`` shows for one service."""

    name: str
    url: str
    pid: int | None
    running: bool
    healthy: bool
    managed: bool = True
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "url": self.url, "pid": self.pid, "running": self.running,
                "healthy": self.healthy, "managed": self.managed, "detail": self.detail}


def venv_tool(name: str) -> str:
    """A console script of this environment (next to the running interpreter), else from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


class ProcessManager:
    """Starts and stops the embedded services; their pid files and logs live in ``run_dir``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def log_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"

    def _record(self, name: str) -> dict[str, object] | None:
        try:
            return dict(json.loads(self._pidfile(name).read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def pid(self, name: str) -> int | None:
        """The pid of a live process we started, or None (stale pid files are removed)."""
        record = self._record(name)
        if record is None:
            return None
        pid = int(str(record["pid"]))
        if _alive(pid) and _same_process(pid, float(str(record.get("started_at", 0)))):
            return pid
        self._pidfile(name).unlink(missing_ok=True)
        return None

    def start(self, spec: ServiceSpec, *, timeout_s: float, progress: Callable[[str], None] | None = None) -> bool:
        """Start ``spec`` unless it already runs; wait until healthy. Returns True when it was started now."""
        if self.pid(spec.name) is not None and is_healthy(spec.health_url):
            return False
        if is_healthy(spec.health_url):
            raise ServiceStartError(
                f"something else already answers at {spec.url}; stop it or choose another port for {spec.name}")
        self.stop(spec.name)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for folder in spec.folders:
            folder.mkdir(parents=True, exist_ok=True)
        log = self.log_path(spec.name)
        with open(log, "ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {spec.name}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                spec.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=spec.cwd, env={**os.environ, **spec.env}, start_new_session=True)
        started_at = _start_time(proc.pid)
        self._pidfile(spec.name).write_text(json.dumps({
            "pid": proc.pid, "url": spec.url, "started_at": started_at, "command": spec.command}))
        deadline = time.monotonic() + timeout_s
        begun = time.monotonic()
        last_said = 0.0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._pidfile(spec.name).unlink(missing_ok=True)
                raise ServiceStartError(f"{spec.name} exited with code {proc.returncode} while starting; "
                                        f"last lines of {log}:\n{tail(log)}")
            if is_healthy(spec.health_url):
                if progress:
                    progress(f"{spec.name} is up at {spec.url} ({time.monotonic() - begun:.0f} s)")
                return True
            if progress and time.monotonic() - last_said >= 5:
                progress(f"waiting for {spec.name} at {spec.url} ({time.monotonic() - begun:.0f} s)")
                last_said = time.monotonic()
            time.sleep(0.5)
        self.stop(spec.name)
        raise ServiceStartError(f"{spec.name} did not become healthy at {spec.health_url} within {timeout_s:.0f} s; "
                                f"last lines of {log}:\n{tail(log)}")

    def stop(self, name: str, timeout_s: float = 20.0) -> bool:
        """Stop the process group of ``name`` (TERM, then KILL). Returns True when something was stopped."""
        pid = self.pid(name)
        if pid is None:
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._pidfile(name).unlink(missing_ok=True)
        return True

    def status(self, spec: ServiceSpec) -> ServiceStatus:
        pid = self.pid(spec.name)
        return ServiceStatus(spec.name, spec.url, pid, pid is not None, is_healthy(spec.health_url))

    def managed_names(self) -> list[str]:
        """Names of every service with a pid file, live or stale."""
        if not self.run_dir.exists():
            return []
        return sorted(p.stem for p in self.run_dir.glob("*.json"))


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not alive for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, IndexError):
        return True


def _start_time(pid: int) -> float:
    """The process start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return float(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, IndexError, ValueError):
        return 0.0


def _same_process(pid: int, started_at: float) -> bool:
    return not started_at or _start_time(pid) in (0.0, started_at)
