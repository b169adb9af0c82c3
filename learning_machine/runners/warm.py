"""Warm interpreters for the steps of local pipeline runs.

``kfp.local.SubprocessRunner`` starts every task as ``python3 -m kfp.dsl.executor_main ...`` in a fresh
interpreter, and most of a task's time here was its imports (pandas, scikit-learn, MLflow: seconds per
task, paid again by every task). :func:`warm_steps` keeps warm interpreters that have imported what the
steps import (:data:`PRELOAD`, stage by stage in the order the pipelines first need it) and points
kfp.local's interpreter (``sys.executable``, which ``use_venv=False`` runs) at a small launcher. The
launcher hands the task's command line, environment, working directory and standard streams to the warm
interpreter that has imported the most so far, which forks: the task runs in its own process, exactly the
command kfp.local built, with its own environment and streams and its own exit status, but without paying
the imports again. Anything else started through ``sys.executable`` meanwhile, or any task when the warm
interpreter is not answering, runs the real interpreter unchanged.

The local runner keeps its warm interpreters from one run to the next (:func:`kept_interpreters`): the
imports cost about 7 s of CPU here, which a process that runs pipelines again and again (the learning
loop's monitor retrains through the ``retraining`` pipeline) would otherwise pay again every run, while the
same steps called directly pay them once per process.

Kubeflow on a cluster is untouched: there each task is a pod running the compiled command.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
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
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXECUTOR = "kfp.dsl.executor_main"
# What the steps import, in stages in the order a pipeline first needs them: each stage is served as soon
# as it is imported, so the first (light) task does not wait for MLflow. A task that needs a module not
# imported yet imports it itself, as a fresh interpreter would.
# Besides the package's own modules, what the steps' first calls import lazily, measured in the tasks of
# both training pipelines (each task paid them again): httpx's transport (every step's first MLflow
# call), pandas' CSV writer and the generator (ingest), scikit-learn's dataframe layer (narwhals, from
# preprocess on), matplotlib's pyplot and the PIL image plugins it loads to save a PNG (train, retrain).
# "module:function" also calls the function once imported (work cached per process: MLflow's map of
# installed packages, the TLS context).
PRELOAD: tuple[tuple[str, ...], ...] = (
    (EXECUTOR, "learning_machine.components", "learning_machine.registry.runs", "httpcore",
     "learning_machine.registry.rest:tls_context"),
    ("learning_machine.components.steps", "learning_machine.components.release", "pandas.io.formats.csvs",
     "learning_machine.data.synthetic"),
    ("learning_machine.model.training", "xgboost", "narwhals._pandas_like.namespace",
     "narwhals._interchange.dataframe", "narwhals.stable.v2._namespace"),
    ("learning_machine.registry.preload:warm", "matplotlib.figure", "matplotlib.backends.backend_agg",
     "matplotlib.pyplot", "PIL.BmpImagePlugin", "PIL.GifImagePlugin", "PIL.JpegImagePlugin",
     "PIL.PpmImagePlugin"),
)
# The stage each component's function needs (its index in PRELOAD): its launcher waits for that stage
# rather than importing the same modules again beside the interpreter importing them (two cores here).
# A function not named here goes to the interpreter that has imported the most so far.
NEEDS: dict[str, int] = {"open_pipeline_run": 0, "close_pipeline_run": 0, "ingest": 1, "validate": 1,
                         "register": 1, "promote": 1, "deploy": 1, "preprocess": 2, "train": 3, "retrain": 3,
                         "evaluate": 3, "batch_infer": 3}
_HEADER = struct.Struct("!Q")
_STATUS = struct.Struct("!i")
_STARTED = b"S"

# The launcher kfp.local runs instead of the interpreter: stdlib only, no site (-I -S), so it starts in
# milliseconds. It passes its three standard streams to a warm interpreter with the request (waiting, up
# to a minute, for the stage the step needs) and waits for the task's exit status; anything it cannot hand
# over runs the real interpreter instead.
_LAUNCHER = r'''
import json, os, socket, struct, sys, time

REAL, SOCKETS, EXECUTOR, NEEDS = {real!r}, {sockets!r}, {executor!r}, {needs!r}
args = sys.argv[1:]
function = args[args.index("--function_to_execute") + 1] if "--function_to_execute" in args[:-1] else ""
need = min(NEEDS.get(function, 0), len(SOCKETS) - 1)


def real():
    os.execv(REAL, [REAL, *args])


if args[:2] != ["-m", EXECUTOR]:
    real()


def connect():
    for path in reversed(SOCKETS[need:]):  # the one that has imported the most
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(path)
            return conn
        except OSError:
            conn.close()
    return None


conn, waited = connect(), 0.0
while conn is None and waited < 60 and os.path.exists(os.path.dirname(SOCKETS[0])):
    time.sleep(0.02)  # the stage this step needs is still being imported
    waited += 0.02
    conn = connect()
if conn is None:
    real()
try:
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


class WarmInterpreters:
    """A chain of warm interpreters (one per stage of :data:`PRELOAD`) started with ``env``, what the tasks'
    environment will be (they import with it, as a fresh interpreter would). It serves the tasks of any
    number of runs, one :meth:`serving` block each, until :meth:`stop`."""

    def __init__(self, env: dict[str, str], *, log: Path | None = None) -> None:
        self.real = sys.executable
        self.key = import_environment(env)
        # A short private folder: a Unix socket path is limited to about 100 characters.
        self.private = Path(tempfile.mkdtemp(prefix="lm-warm-"))
        self.sockets = [str(self.private / f"stage{i}.sock") for i in range(len(PRELOAD))]
        self._out: Any = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed by stop()
        self.server = subprocess.Popen(
            [self.real, "-c", "from learning_machine.runners.warm import main; main()", *self.sockets],
            stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT, env={**env, "_KFP_RUNTIME": "true"})

    def running(self) -> bool:
        return self.server.poll() is None

    @contextlib.contextmanager
    def serving(self, folder: Path) -> Iterator[None]:
        """For the ``with`` block, kfp.local's tasks (started through ``sys.executable``) run forked from
        these interpreters; ``folder`` holds the launcher. Restores ``sys.executable`` on the way out."""
        folder.mkdir(parents=True, exist_ok=True)
        launcher = folder / "python-warm"
        script = folder / "python-warm.py"
        script.write_text(_LAUNCHER.format(real=self.real, sockets=self.sockets, executor=EXECUTOR, needs=NEEDS))
        launcher.write_text(f'#!/bin/sh\nexec "{self.real}" -I -S "{script}" "$@"\n')
        launcher.chmod(0o755)
        sys.executable = str(launcher)
        try:
            yield
        finally:
            if sys.executable == str(launcher):
                sys.executable = self.real

    def stop(self) -> None:
        """Stop the interpreters (and any task still running from them)."""
        self.server.terminate()
        try:
            self.server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        if self._out is not subprocess.DEVNULL:
            self._out.close()
        for path in self.sockets:
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            self.private.rmdir()


def import_environment(env: dict[str, str]) -> dict[str, str]:
    """What of an environment can change what an import does: all of it but the platform's own ``LM_*``
    variables, which no module of the package reads at import time (settings are built at the entry
    point) and which every task receives anyway with the rest of its own environment."""
    return {key: value for key, value in env.items() if not key.startswith("LM_")}


_kept: WarmInterpreters | None = None
_kept_lock = threading.Lock()


def kept_interpreters(env: dict[str, str], *, log: Path | None = None) -> WarmInterpreters:
    """This process's warm interpreters, kept from one run to the next: started on first use, and again
    when they have died or ``env`` differs from theirs in anything an import could read
    (:func:`import_environment`). They stop when this process exits (and on their own if it dies)."""
    global _kept
    with _kept_lock:
        if _kept is not None and _kept.running() and _kept.key == import_environment(env):
            return _kept
        if _kept is None:
            atexit.register(stop_kept)
        else:
            _kept.stop()
        _kept = WarmInterpreters(env, log=log)
        return _kept


def stop_kept() -> None:
    """Stop this process's kept warm interpreters, if any."""
    global _kept
    with _kept_lock:
        if _kept is not None:
            _kept.stop()
            _kept = None


@contextlib.contextmanager
def warm_steps(folder: Path, env: dict[str, str], *, log: Path | None = None, keep: bool = False) -> Iterator[None]:
    """For the ``with`` block, kfp.local's tasks (started through ``sys.executable``) run in processes
    forked from warm interpreters started with ``env`` (:class:`WarmInterpreters`); ``folder`` holds the
    launcher. With ``keep`` they are this process's kept ones (:func:`kept_interpreters`: a later run
    finds them warm); otherwise they are started now and stopped on the way out."""
    if keep:
        with kept_interpreters(env, log=log).serving(folder):
            yield
        return
    interpreters = WarmInterpreters(env, log=log)
    try:
        with interpreters.serving(folder):
            yield
    finally:
        interpreters.stop()


# -- the warm interpreter --------------------------------------------------------------------------
def main() -> None:
    """The warm interpreter: ``python -c "...main()" SOCKET...`` (one socket per stage of :data:`PRELOAD`).
    Serves until terminated or orphaned."""
    serve(sys.argv[1:], PRELOAD)


def serve(sockets: list[str], stages: tuple[tuple[str, ...], ...]) -> None:
    """Import the first stage and serve tasks on the first socket, forking one process per task; a forked
    copy imports the next stage meanwhile (on another core) and serves on the next socket, and so on: the
    launcher asks the interpreter that has imported the most, and no task waits for imports it does not
    need. Each interpreter is single-threaded on purpose: a fork copies only the thread that calls it, so
    no other thread may be half-way through an import at that moment. A task reports its own exit status
    to its launcher."""
    tasks: set[int] = set()
    child = 0

    def stop(*_: Any) -> None:  # at once, even half-way through an import; the next stage's copy goes too
        for pid in (*tasks, child):
            with contextlib.suppress(ProcessLookupError, ValueError):
                if pid:
                    os.kill(pid, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    parent = os.getppid()
    gc.disable()  # no collections (and no freed holes in shared pages) between the imports and the forks
    for level, stage in enumerate(stages):
        for entry in stage:
            module, _, function = entry.partition(":")
            try:
                imported = importlib.import_module(module)
                if function:
                    getattr(imported, function)()
            except Exception as exc:  # noqa: BLE001 - the task that needs it will fail with the real error
                print(f"warm interpreter: could not preload {entry}: {exc}", flush=True)
        # What is imported stays for good: a task's garbage collections skip it. Otherwise each full
        # collection in a task walks the ~300,000 preloaded objects and, writing to their headers, copies
        # the pages it shares with this interpreter (measured: twice the page faults per task).
        gc.freeze()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sockets[level] + ".new")
        listener.listen(8)
        os.rename(sockets[level] + ".new", sockets[level])  # launchers see it only once it listens
        if level + 1 < len(stages):
            sys.stdout.flush()
            child = os.fork()
            if child == 0:  # the next stage's interpreter
                listener.close()
                parent = os.getppid()
                continue
        break
    while os.getppid() == parent:
        if select.select([listener], [], [], 0.2)[0]:
            pid = _accept(listener)
            if pid:
                tasks.add(pid)
        _reap(tasks)
    stop()  # orphaned: the runner (or the previous stage) is gone, the tasks go too


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
    """Collect the tasks that ended (their launchers already have their status), and the next stage's
    interpreter if it died."""
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

    gc.enable()  # as in a fresh interpreter; what the warm interpreter imported is frozen (see serve)
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
        # Through sys.excepthook, as the interpreter does: the step's own hook records why it failed
        # (learning_machine.components.report_errors) before the traceback is printed.
        kind, error, trace = sys.exc_info()
        try:
            sys.excepthook(kind, error, trace)  # type: ignore[arg-type]
        except BaseException:  # noqa: BLE001 - a broken hook must not hide the step's own failure
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
