"""A warm interpreter for the steps of a local pipeline run.

``kfp.local.SubprocessRunner`` starts every task as ``python3 -m kfp.dsl.executor_main ...`` in a fresh
interpreter, and most of a task's time here was its imports (pandas, scikit-learn, MLflow: seconds per
task, paid again by every task). For the length of one run, :func:`warm_steps` keeps one interpreter that
has imported what the steps import (:data:`PRELOAD`, in the order the pipelines first need it) and points
kfp.local's interpreter (``sys.executable``, which ``use_venv=False`` runs) at a small launcher. The
launcher hands the task's command line, environment, working directory and standard streams to the warm
interpreter, which forks: the task runs in its own process, exactly the command kfp.local built, with its
own environment and streams and its own exit status, but without paying the imports again. Anything else
started through ``sys.executable`` meanwhile, or any task when the warm interpreter is not answering, runs
the real interpreter unchanged.

Kubeflow on a cluster is untouched: there each task is a pod running the compiled command.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXECUTOR = "kfp.dsl.executor_main"
# What the steps import, in stages in the order a pipeline first needs them: the warm interpreter forks
# tasks between stages, so the first (light) task does not wait for MLflow. A task that needs a module
# not imported yet imports it itself, as a fresh interpreter would.
PRELOAD: tuple[tuple[str, ...], ...] = (
    (EXECUTOR, "learning_machine.components", "learning_machine.registry.runs"),
    ("learning_machine.components.steps", "learning_machine.components.release"),
    ("learning_machine.model.training", "xgboost"),
    ("learning_machine.registry.preload", "matplotlib.figure", "matplotlib.backends.backend_agg"),
)
_HEADER = struct.Struct("!Q")
_STATUS = struct.Struct("!i")
_STARTED = b"S"

# The launcher kfp.local runs instead of the interpreter: stdlib only, no site (-I -S), so it starts in
# milliseconds. It passes its three standard streams to the warm interpreter with the request and waits
# for the task's exit status; anything it cannot hand over runs the real interpreter instead.
_LAUNCHER = r'''
import json, os, socket, struct, sys

REAL, SOCKET, EXECUTOR = {real!r}, {socket!r}, {executor!r}
args = sys.argv[1:]


def real():
    os.execv(REAL, [REAL, *args])


if args[:2] != ["-m", EXECUTOR]:
    real()
try:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(SOCKET)
    request = json.dumps({{"argv": args[2:], "env": dict(os.environ), "cwd": os.getcwd()}}).encode()
    socket.send_fds(conn, [struct.pack("!Q", len(request))], [0, 1, 2])
    conn.sendall(request)
    started = conn.recv(1)
except OSError:
    started = b""
if started != b"S":  # nothing ran: the warm interpreter is gone or refused
    real()
status = b""
while len(status) < 4:
    chunk = conn.recv(4 - len(status))
    if not chunk:
        sys.stderr.write("the step's process ended without an exit status (killed)\n")
        sys.exit(1)
    status += chunk
code = struct.unpack("!i", status)[0]
sys.exit(code if code >= 0 else 128 - code)
'''


@contextlib.contextmanager
def warm_steps(folder: Path, env: dict[str, str], *, log: Path | None = None) -> Iterator[None]:
    """For the ``with`` block, kfp.local's tasks (started through ``sys.executable``) run in processes
    forked from one warm interpreter started now with ``env`` (what the tasks' environment will be: the
    warm interpreter imports with it, as a fresh interpreter would); ``folder`` holds the launcher.
    Restores ``sys.executable`` and stops the interpreter on the way out."""
    folder.mkdir(parents=True, exist_ok=True)
    real = sys.executable
    # A short private folder: a Unix socket path is limited to about 100 characters.
    private = Path(tempfile.mkdtemp(prefix="lm-warm-"))
    path = private / "warm.sock"
    launcher = folder / "python-warm"
    script = folder / "python-warm.py"
    script.write_text(_LAUNCHER.format(real=real, socket=str(path), executor=EXECUTOR))
    launcher.write_text(f'#!/bin/sh\nexec "{real}" -I -S "{script}" "$@"\n')
    launcher.chmod(0o755)
    out: Any = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    server = subprocess.Popen([real, "-c", "from learning_machine.runners.warm import main; main()", str(path)],
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              env={**env, "_KFP_RUNTIME": "true"})
    sys.executable = str(launcher)
    try:
        yield
    finally:
        if sys.executable == str(launcher):
            sys.executable = real
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if log:
            out.close()
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            private.rmdir()


# -- the warm interpreter --------------------------------------------------------------------------
def main() -> None:
    """The warm interpreter: ``python -c "...main()" SOCKET``. Serves until terminated or orphaned."""
    serve(sys.argv[1], PRELOAD)


def serve(path: str, stages: tuple[tuple[str, ...], ...]) -> None:
    """Accept tasks on the Unix socket ``path`` and fork one process per task; import the next stage of
    ``stages`` whenever no task is waiting. Single-threaded on purpose: a fork copies only the thread
    that calls it, so no other thread may be half-way through an import at that moment. A task reports
    its own exit status to its launcher, so a task never waits for a stage being imported to end."""
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    pending = [module for stage in stages for module in (*stage, "")]  # "" marks the end of a stage
    tasks: set[int] = set()

    def stop(*_: Any) -> None:  # at once, even half-way through an import
        for pid in tasks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    while os.getppid() == parent:
        ready, _, _ = select.select([listener], [], [], 0 if pending else 0.2)
        if ready:
            pid = _accept(listener)
            if pid:
                tasks.add(pid)
        _reap(tasks)
        if not ready:
            while pending:
                module = pending.pop(0)
                if not module:
                    break
                try:
                    importlib.import_module(module)
                except Exception as exc:  # noqa: BLE001 - the task that needs it will fail with the real error
                    print(f"warm interpreter: could not preload {module}: {exc}", flush=True)
    stop()  # orphaned: the runner is gone, its tasks go too


def _accept(listener: socket.socket) -> int:
    """Receive one task (its launcher's streams, command line, environment, working directory) and fork
    it; the task's process answers the launcher from then on. Returns its pid (0 if nothing ran)."""
    conn, _ = listener.accept()
    conn.settimeout(10)
    try:
        header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        request = json.loads(_read(conn, _HEADER.unpack(header)[0]))
    except (OSError, ValueError, struct.error):
        conn.close()
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the task
        code = 1
        try:
            listener.close()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            conn.settimeout(None)
            conn.sendall(_STARTED)
            code = _run_task(request, fds)
            conn.sendall(_STATUS.pack(code))
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    conn.close()
    return pid


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ValueError("request cut short")
        data += chunk
    return data


def _reap(tasks: set[int]) -> None:
    """Collect the tasks that ended (their launchers already have their status)."""
    while tasks:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            tasks.clear()
            return
        if pid == 0:
            return
        tasks.discard(pid)


def _run_task(request: dict[str, Any], fds: list[int]) -> int:
    """In the forked process: become ``python -m kfp.dsl.executor_main ARGS`` with the launcher's
    streams, environment and working directory, run it as the interpreter would (exit handlers
    included); returns its exit status."""
    import atexit
    import runpy
    import traceback

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [EXECUTOR, *request["argv"]]
    sys.path[0] = os.getcwd()  # as `python -m` puts it
    if "numpy" in sys.modules:  # a fresh interpreter seeds numpy's global generator afresh
        sys.modules["numpy"].random.seed()
    code = 0
    try:
        runpy.run_module(EXECUTOR, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # noqa: BLE001 - reported as the interpreter reports an uncaught exception
        traceback.print_exc()
        code = 1
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1
