"""Managed background processes for the embedded (one machine) setup: start, wait until healthy, report,
stop. Each process has a pid file (JSON) and a log under ``<home>/run``; nothing else is global.

Every service starts in a session (and process group) of its own, recorded with its pid. Some servers
serve from a child process (``mlserver start`` does): when the recorded process dies, its children may
go on serving on the port. The process group finds them: ``lm status`` reports them as orphans and
``lm down`` (or the next ``lm up``, which replaces them) stops the whole group."""

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
    metrics_url: str | None = None
    """Where Prometheus scrapes the service (None: it serves no metrics)."""

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
    orphans: list[int] = field(default_factory=list)
    """Processes of the service's group still running after the recorded process died (``lm down`` stops them)."""
    metrics: str | None = None
    """Its Prometheus metrics endpoint, if it serves one."""

    @property
    def ok(self) -> bool:
        return self.healthy and not self.orphans

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "url": self.url, "pid": self.pid, "running": self.running,
                "healthy": self.healthy, "managed": self.managed, "detail": self.detail, "orphans": self.orphans,
                "metrics": self.metrics}


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
        """The pid of a live process we started, or None. A pid file is removed once nothing of its process
        group runs any more (not while orphans of it do: :meth:`stop` still needs it to stop them)."""
        record = self._record(name)
        if record is None:
            return None
        pid = int(str(record["pid"]))
        if _alive(pid) and _same_process(pid, float(str(record.get("started_at", 0)))):
            return pid
        if not _group_members(record):
            self._pidfile(name).unlink(missing_ok=True)
        return None

    def orphans(self, name: str) -> list[int]:
        """Processes of ``name``'s group that still run although the recorded process is gone (the port's
        listener first)."""
        record = self._record(name)
        if record is None or self.pid(name) is not None:
            return []
        members = _group_members(record)
        port = _port_of(str(record.get("url") or ""))
        listening = [p for p in _listeners(port) if p in members]
        return [*listening, *(p for p in members if p not in listening)]

    def start(self, spec: ServiceSpec, *, timeout_s: float, progress: Callable[[str], None] | None = None) -> bool:
        """Start ``spec`` unless it already runs; wait until healthy. Returns True when it was started now.
        A service that runs is left alone (one still starting is given ``timeout_s`` to become healthy); one
        that died is started again, after stopping what its group left behind (orphans on its port)."""
        pid = self.pid(spec.name)
        if pid is not None:
            if self._wait_healthy(spec, pid, timeout_s, progress):
                return False
            if progress:
                progress(f"{spec.name} (pid {pid}) runs but is not healthy at {spec.health_url}: restarting it")
        elif orphans := self.orphans(spec.name):
            if progress:
                progress(f"{spec.name}: its process died and left pid(s) {', '.join(map(str, orphans))} running: "
                         "stopping them and starting it again")
        elif is_healthy(spec.health_url):
            holders = _listeners(_port_of(spec.url))
            raise ServiceStartError(
                f"something else already answers at {spec.url}"
                + (f" (pid {', '.join(map(str, holders))})" if holders else "")
                + f"; stop it or choose another port for {spec.name}")
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
        # start_new_session: the service leads a process group of its own; its children inherit it.
        self._pidfile(spec.name).write_text(json.dumps({
            "pid": proc.pid, "pgid": proc.pid, "url": spec.url, "started_at": started_at, "command": spec.command}))
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

    def _wait_healthy(self, spec: ServiceSpec, pid: int, timeout_s: float,
                      progress: Callable[[str], None] | None) -> bool:
        deadline = time.monotonic() + timeout_s
        said = False
        while _alive(pid):
            if is_healthy(spec.health_url):
                return True
            if time.monotonic() >= deadline:
                return False
            if progress and not said:
                progress(f"{spec.name} (pid {pid}) is running but not healthy yet: waiting for it")
                said = True
            time.sleep(0.5)
        return False

    def stop(self, name: str, timeout_s: float = 20.0) -> bool:
        """Stop the whole process group of ``name`` (TERM, then KILL): the recorded process and whatever it
        left running, also when it died itself. Returns True when something was stopped."""
        record = self._record(name)
        if record is None:
            return False
        members = _group_members(record)
        if not members:
            self._pidfile(name).unlink(missing_ok=True)
            return False
        pgid = int(str(record.get("pgid") or record["pid"]))
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _group_members(record):
            time.sleep(0.2)
        if _group_members(record):
            _signal_group(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _group_members(record):
                time.sleep(0.1)
        self._pidfile(name).unlink(missing_ok=True)
        return True

    def status(self, spec: ServiceSpec) -> ServiceStatus:
        pid = self.pid(spec.name)
        healthy = is_healthy(spec.health_url)
        if pid is not None:
            return ServiceStatus(spec.name, spec.url, pid, True, healthy)
        orphans = self.orphans(spec.name)
        if orphans:
            record = self._record(spec.name) or {}
            return ServiceStatus(spec.name, spec.url, orphans[0], False, healthy, orphans=orphans,
                                 detail=f"orphan: its process {record.get('pid')} died and left pid(s) "
                                        f"{', '.join(map(str, orphans))} running"
                                        + (f", answering at {spec.url}" if healthy else "")
                                        + "; `lm down` stops them, `lm up` replaces them")
        if healthy:
            holders = _listeners(_port_of(spec.url))
            return ServiceStatus(spec.name, spec.url, holders[0] if holders else None, False, True,
                                 detail="not started by lm up: "
                                        + (f"pid {', '.join(map(str, holders))} answers" if holders
                                           else "something else answers") + f" at {spec.url}")
        return ServiceStatus(spec.name, spec.url, None, False, False)

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


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, session, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return None


def _group_members(record: dict[str, object]) -> list[int]:
    """Live processes of a recorded service's process group (the recorded process included while it runs).
    A pid that leads a group cannot be reused while the group has members; once it is gone and the pid is
    reused, the newcomer (started later than the record) is not taken for ours."""
    pgid = int(str(record.get("pgid") or record["pid"]))
    started_at = float(str(record.get("started_at", 0)) or 0)
    if not Path("/proc").is_dir():  # no procfs (macOS): the recorded process is all we can see
        pid = int(str(record["pid"]))
        return [pid] if _alive(pid) else []
    leader = _stat_fields(pgid)
    if leader is not None and leader[0] != "Z" and not _same_process(pgid, started_at):
        return []  # the pid now names another process: the recorded group is gone
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None or fields[0] == "Z" or fields[2] != str(pgid):
            continue
        if started_at and float(fields[19]) < started_at:
            continue
        members.append(int(entry.name))
    return sorted(members)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _port_of(url: str) -> int | None:
    try:
        return httpx.URL(url).port
    except (httpx.InvalidURL, TypeError):
        return None


def _listeners(port: int | None) -> list[int]:
    """Pids (of this user) listening on TCP ``port``, from /proc/net/tcp{,6} and the processes' sockets."""
    if not port:
        return []
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{parts[9]}]")
    if not inodes:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    pids.append(int(entry.name))
                    break
            except OSError:
                continue
    return sorted(pids)
