"""The serving benchmark (section ``serving`` of `lm bench`): one model, served every way, measured side by
side in one run on this machine. Everything is started on free ports and stopped at the end:

* MLServer with our runtime (``learning_machine.serving.runtimes.ModelRuntime``), called directly (V2);
* MLServer's built-in sklearn runtime (``mlserver_sklearn``) serving the same pipeline saved with joblib;
* ``mlflow models serve --env-manager local`` (pyfunc) on the registered version;
* the gateway (`lm gateway`: validation, database write, then the V2 call to our MLServer) twice, in front
  of the same MLServer: on SQLite (a file, the embedded default) and on PostgreSQL (a fresh database on the
  server of ``LM_BENCH_POSTGRES_URL``, default the local one; skipped with a note when it cannot be reached);
* in-process calls: our fast path, and the scikit-learn pipeline's own ``predict_proba``;
* explanations per method (exact attributions, anchors) through the explainer runtime.

Each path is measured on single rows and on batches of 100 and 1,000 rows (sequential requests: latency
and rows/s; every path in turns, :func:`latencies`, so that a change of the machine's speed during the run
reaches them all alike), and on single rows with 1, 8 and 32 concurrent clients (requests/s). Every request to a
gateway stores new records. Each gateway is then soaked (32 clients, 60 s) and what it acknowledged is
counted in its database; its targets against direct MLServer are judged in the notes (:func:`gateway_checks`).
The gateway's store is also timed alone on each gateway's database (:data:`STORE_ALONE`), the floor under its
1,000-row requests; `--profile` samples each gateway with py-spy (:mod:`learning_machine.bench.profile`).

Clients are Python threads with keep-alive connections on the same 2 cores as the servers, so absolute
throughput is a floor; the ratios within one run are what to compare.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pandas as pd

from learning_machine.bench.profile import PROFILE_ENV, Profile, markdown, sampled, summarise
from learning_machine.bench.report import free_port, require_extra, require_tool

if TYPE_CHECKING:
    from learning_machine.store import Database

Progress = Callable[[str], None]
OURS = "MLServer, our runtime (V2)"
BUILTIN = "MLServer, built-in sklearn runtime (V2)"
PYFUNC = "mlflow models serve (pyfunc)"
GATEWAY = "gateway on SQLite (REST -> MLServer, stored)"
GATEWAY_PG = "gateway on PostgreSQL (REST -> MLServer, stored)"
GATEWAYS = {GATEWAY: "SQLite", GATEWAY_PG: "PostgreSQL"}
# The gateway's store called in-process on its database, 1,000 new records and predictions in one transaction
# (the ordinary way, nothing overlapped): the database's share of a 1,000-row request, the floor under it.
STORE_ALONE = {name: f"store alone on {backend} (in-process, one transaction)" for name, backend in GATEWAYS.items()}
FAST = "in-process, our fast path"
SKLEARN = "in-process, sklearn pipeline.predict_proba"
# The PostgreSQL server the PostgreSQL gateway's database is made on: an admin URL (a user that may create
# databases), the local trust-auth server unless this variable names another one.
POSTGRES_URL_ENV = "LM_BENCH_POSTGRES_URL"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Target:
    """One way of predicting a single row: a callable that raises on failure."""

    name: str
    call: Callable[[], Any]
    note: str = ""


BATCHES = (1, 100, 1000)
CONCURRENCY = (1, 8, 32)
SOAK_CLIENTS = 32

# The gateway's targets (issue 14), each judged against direct MLServer (OURS) in the same run: the single-row
# p50 overhead in ms, the p99 as a multiple of the gateway's own p50, and the share of MLServer's requests/s
# (at these client counts) and rows/s (in batches of this size) the gateway keeps while it stores every row.
OVERHEAD_MS = 1.5
TAIL_RATIO = 3.0
RATE_SHARE = 0.5
TARGET_CLIENTS = (8, 32)
TARGET_BATCH = 1000
# Requests (by rows per request) sampled per gateway by `lm bench --profile`: enough samples to read.
PROFILED_REQUESTS = {1: 2000, TARGET_BATCH: 60}


@dataclass
class Check:
    """One target of a gateway as measured: what, the result, what it was compared with, the target, and
    whether it was met."""

    what: str
    result: str
    versus: str
    target: str
    met: bool

    @property
    def verdict(self) -> str:
        return "met" if self.met else "NOT met"


def gateway_checks(raw: dict[str, Any]) -> dict[str, list[Check]]:
    """Each measured gateway's targets, from the section's raw numbers; a target whose numbers are missing
    (e.g. direct MLServer not measured) is left out rather than guessed."""
    lat, tp, soaks = raw.get("latency", {}), raw.get("throughput", {}), raw.get("soak", {})
    batch = raw.get("batch", {}).get(str(TARGET_BATCH), {})
    ours = lat.get(OURS)
    found: dict[str, list[Check]] = {}
    for name in GATEWAYS:
        checks: list[Check] = []
        gw = lat.get(name)
        if gw and ours:
            overhead = gw["p50"] - ours["p50"]
            checks.append(Check("one row, p50 overhead over MLServer direct", f"{overhead:.2f} ms",
                                f"p50 {gw['p50']:.2f} ms vs {ours['p50']:.2f} ms", f"<= {OVERHEAD_MS:g} ms",
                                overhead <= OVERHEAD_MS))
        if gw:
            tail = gw["p99"] / gw["p50"]
            checks.append(Check("one row, p99 over its own p50", f"{tail:.2f}x",
                                f"p99 {gw['p99']:.2f} ms, p50 {gw['p50']:.2f} ms", f"<= {TAIL_RATIO:g}x",
                                tail <= TAIL_RATIO))
        for clients in TARGET_CLIENTS:
            mine = tp.get(name, {}).get(str(clients), {}).get("rps")
            base = tp.get(OURS, {}).get(str(clients), {}).get("rps")
            if mine is not None and base:
                checks.append(Check(f"requests/s, {clients} clients", f"{mine:,.0f}",
                                    f"{mine / base:.2f}x MLServer direct ({base:,.0f})", f">= {RATE_SHARE:g}x",
                                    mine >= RATE_SHARE * base))
        mine, base = batch.get(name, {}).get("rows_per_s"), batch.get(OURS, {}).get("rows_per_s")
        if mine is not None and base:
            alone = batch.get(STORE_ALONE[name], {}).get("p50")
            floor = (f"; storing alone takes {alone:.1f} ms = {alone / (TARGET_BATCH * 1000 / base):.2f}x the whole "
                     "direct request" if alone else "")
            checks.append(Check(f"rows/s in batches of {TARGET_BATCH:,}", f"{mine:,.0f}",
                                f"{mine / base:.2f}x MLServer direct ({base:,.0f}){floor}", f">= {RATE_SHARE:g}x",
                                mine >= RATE_SHARE * base))
        run = soaks.get(name)
        if run:
            checks.append(Check(
                f"soak, {run['clients']} clients for {run['seconds']:g} s",
                f"{run['acknowledged']:,} acknowledged, {run['failed']:,} failed; stored {run['stored_predictions']:,} "
                f"predictions, {run['stored_records']:,} records",
                f"{run['rps']:,.0f} req/s" + (f", p50 {run['p50']:.2f} ms, p99 {run['p99']:.2f} ms"
                                              if run["p50"] is not None else ""),
                "0 failed, stored = acknowledged",
                run["failed"] == 0 and run["stored_equals_acknowledged"]))
        if checks:
            found[name] = checks
    return found


class RecordIds:
    """New record ids ``<prefix>-0``, ``<prefix>-1``, ...; safe to take from many client threads at once
    (``next`` on ``itertools.count`` is one atomic step)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._count = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}-{next(self._count)}"


def new_records(records: list[dict[str, Any]], id_field: str, new_id: Callable[[], str]
                ) -> Callable[[], dict[str, Any]]:
    """The gateway's request body for ``records`` (one record alone, several as ``{"records": [...]}``),
    built again on every call with a new id for each record: every clinical encounter is a new record, so
    the store path measured is the one claimed (insert the record, then its prediction). A shallow copy of
    each record with its id set costs about a microsecond per row, small beside the request."""
    if len(records) == 1:
        record = records[0]
        return lambda: {**record, id_field: new_id()}
    return lambda: {"records": [{**r, id_field: new_id()} for r in records]}


def encoded_bodies(build: Callable[[], Any], count: int) -> Callable[[], bytes]:
    """Request bodies as bytes, one per call: the first ``count`` made by ``build`` and encoded before any is
    asked for (so a timed call spends nothing on making or encoding its body), then made on the fly. Safe to
    call from many client threads (``deque.popleft`` is one atomic step)."""
    ready = deque(orjson.dumps(build()) for _ in range(count))

    def body() -> bytes:
        try:
            return ready.popleft()
        except IndexError:
            return orjson.dumps(build())
    return body


def latency(call: Callable[[], Any], n: int, warmup: int = 20, warm: Callable[[], Any] | None = None,
            ) -> dict[str, float]:
    """p50/p99/mean/min/max of ``n`` sequential calls (milliseconds), after ``warmup`` calls (then ``warm``)."""
    return latencies({"call": call}, n, warmup, warm=warm)["call"]


def latencies(calls: Mapping[str, Callable[[], Any]], n: int, warmup: int = 20, turn: int = 10,
              warm: Callable[[], Any] | None = None) -> dict[str, dict[str, float]]:
    """:func:`latency` of each of ``calls``, measured in turns: ``turn`` calls of each, then the next, round
    after round, until each has made ``n``. These shared 2-core machines change speed within a minute (a
    one-row call to MLServer took 1.2 ms in one quick run and 2.4 ms in the next), so targets measured one
    after the other carried that drift into their ratios; in turns, every target sees the same machine.
    ``warm``: called once every target has made its ``warmup`` calls, before the measured ones."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    if warm is not None:
        warm()
    times: dict[str, list[float]] = {name: [] for name in calls}
    while any(len(done) < n for done in times.values()):
        for name, call in calls.items():
            done = times[name]
            for _ in range(min(turn, n - len(done))):
                started = time.perf_counter()
                call()
                done.append((time.perf_counter() - started) * 1000)
    out = {}
    for name, done in times.items():
        done.sort()
        out[name] = {"p50": statistics.median(done), "p99": done[min(len(done) - 1, int(len(done) * 0.99))],
                     "mean": statistics.fmean(done), "min": done[0], "max": done[-1], "n": float(n)}
    return out


def throughput(make_call: Callable[[], Callable[[], Any]], clients: int, seconds: float) -> dict[str, float]:
    """Requests per second with ``clients`` concurrent threads (each its own connection) for ``seconds``."""
    counts = [0] * clients
    errors = [0] * clients
    stop = threading.Event()

    def worker(i: int) -> None:
        call = make_call()
        while not stop.is_set():
            try:
                call()
                counts[i] += 1
            except Exception:  # noqa: BLE001 - a benchmark counts failures, whatever they are
                errors[i] += 1

    elapsed = _run_clients(worker, clients, seconds, stop, join_timeout_s=60)
    return {"rps": sum(counts) / elapsed, "requests": float(sum(counts)), "errors": float(sum(errors))}


def _run_clients(worker: Callable[[int], None], clients: int, seconds: float, stop: threading.Event, *,
                 join_timeout_s: float) -> float:
    """Run ``worker(i)`` in ``clients`` threads for ``seconds``, then set ``stop`` and wait for them (each up to
    ``join_timeout_s``: longer than a request may take, so no thread answers after the count); the seconds
    elapsed."""
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=join_timeout_s)
    return time.perf_counter() - started


@dataclass
class _Gateway:
    """A started gateway: its URL, the headers with its token, and its database (to count what it stored)."""

    url: str
    headers: dict[str, str]
    db: Database
    pid: int


def gateway_stages(gateway: _Gateway) -> dict[str, tuple[float, float]]:
    """The gateway's :func:`stage_totals` now (its /metrics, read over HTTP)."""
    response = httpx.get(f"{gateway.url}/metrics", timeout=30)
    response.raise_for_status()
    return stage_totals(response.text)


def soak(url: str, headers: dict[str, str], new_body: Callable[[str], dict[str, Any]], clients: int,
         seconds: float) -> dict[str, Any]:
    """``clients`` threads (each its own keep-alive connection) post one new record each request to ``url``
    for ``seconds``; the record ids are ``soak-<run>-<n>`` with a prefix new to this call, so that what was
    stored can be counted afterwards (:func:`stored_rows`). Acknowledged = HTTP 200; every other answer and
    every exception is a failure, counted by status or exception type. Latency is over the answered
    requests (whatever their status)."""
    prefix = f"soak-{uuid.uuid4().hex[:8]}"
    new_id = RecordIds(prefix)
    acknowledged = [0] * clients
    failures: list[Counter[str]] = [Counter() for _ in range(clients)]
    times: list[list[float]] = [[] for _ in range(clients)]
    stop = threading.Event()
    timeout_s = 60.0

    def worker(i: int) -> None:
        with httpx.Client(timeout=timeout_s, headers=headers) as client:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    response = client.post(url, json=new_body(new_id()))
                except Exception as exc:  # noqa: BLE001 - a benchmark counts failures, whatever they are
                    failures[i][type(exc).__name__] += 1
                    continue
                times[i].append((time.perf_counter() - started) * 1000)
                if response.status_code == 200:
                    acknowledged[i] += 1
                else:
                    failures[i][f"HTTP {response.status_code}"] += 1

    elapsed = _run_clients(worker, clients, seconds, stop, join_timeout_s=timeout_s + 10)
    answered = sorted(t for per in times for t in per)
    failed = sum(failures, Counter())
    return {"prefix": prefix, "clients": clients, "seconds": seconds, "elapsed_s": elapsed,
            "acknowledged": sum(acknowledged), "failed": sum(failed.values()), "failures": dict(failed),
            "rps": sum(acknowledged) / elapsed,
            "p50": statistics.median(answered) if answered else None,
            "p99": answered[min(len(answered) - 1, int(len(answered) * 0.99))] if answered else None}


# Stages that follow each other within a request (store_ahead overlaps the model call: not among them).
SEQUENTIAL_STAGES = ("validate", "wait", "model", "store")


def stage_totals(metrics: str) -> dict[str, tuple[float, float]]:
    """From a gateway's /metrics text: per stage of a prediction request (the gateway's
    ``PREDICTION_STAGES``, ``model`` for its model-server call, ``request`` for the answered (2xx)
    POST /v1/predictions), the seconds and the observations so far (sum, count)."""
    from prometheus_client.parser import text_string_to_metric_families

    from learning_machine.gateway.edge import PREDICTION_STAGES

    # (metric, label name, label value) -> stage
    series = {**{("lm_gateway_prediction_stage_seconds", "stage", stage): stage for stage in PREDICTION_STAGES},
              ("lm_gateway_model_server_seconds", "call", "predict"): "model",
              ("lm_gateway_request_seconds", "route", "/v1/predictions"): "request"}
    totals: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if not sample.name.endswith(("_sum", "_count")):
                continue
            labels = sample.labels
            if labels.get("outcome", "success") != "success" or labels.get("method", "POST") != "POST":
                continue
            stage = next((stage for (metric, key, value), stage in series.items()
                          if sample.name.startswith(metric) and labels.get(key) == value), None)
            if stage is None:
                continue
            seconds, count = totals.get(stage, (0.0, 0.0))
            totals[stage] = (seconds + sample.value, count) if sample.name.endswith("_sum") else (seconds,
                                                                                                  count + sample.value)
    return totals


def stage_breakdown(before: Mapping[str, tuple[float, float]], after: Mapping[str, tuple[float, float]],
                    ) -> dict[str, float]:
    """Milliseconds per answered request of each stage between two :func:`stage_totals` of one gateway
    (``requests``: how many; ``groups``: commits; ``rest``: the request's time outside the sequential stages:
    reading the body, the middleware and the token, the store's columns of the records, answering, thread
    hand-offs). ``model`` includes encoding the V2 request and reading its answer."""
    delta = {stage: (seconds - before.get(stage, (0.0, 0.0))[0], count - before.get(stage, (0.0, 0.0))[1])
             for stage, (seconds, count) in after.items()}
    requests = delta.get("request", (0.0, 0.0))[1]
    if requests <= 0:
        return {}
    out = {stage: seconds * 1000 / requests for stage, (seconds, _) in delta.items()}
    out["rest"] = out.get("request", 0.0) - sum(out.get(stage, 0.0) for stage in SEQUENTIAL_STAGES)
    out["requests"] = requests
    out["groups"] = delta.get("store", (0.0, 0.0))[1]
    return out


def stored_rows(db: Database, prefix: str) -> dict[str, int]:
    """Predictions and records the gateway stored under record ids ``<prefix>-*``, counted in its database."""
    from sqlalchemy import func, select

    from learning_machine.store.models import Prediction, Record

    with db.engine.connect() as conn:
        return {table.__tablename__: int(conn.execute(select(func.count()).select_from(table).where(
                    table.record_id.like(f"{prefix}-%"))).scalar_one())
                for table in (Prediction, Record)}


class _Processes:
    """Processes started by the benchmark, stopped (process group) at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: dict[str, int] = {}
        self.pending: list[tuple[str, subprocess.Popen[bytes], str, float]] = []

    def start(self, name: str, command: list[str], env: dict[str, str], ready_url: str, timeout_s: float = 300,
              *, wait: bool = True) -> None:
        """Start ``name``; wait until ``ready_url`` answers 200 now, or later in :meth:`wait_all`."""
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the process's lifetime
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True)
        self.procs.append(proc)
        self.pids[name] = proc.pid
        self.pending.append((name, proc, ready_url, time.monotonic() + timeout_s))
        if wait:
            self.wait_all()

    def wait_all(self) -> None:
        """Wait for every started process to be ready (they start in parallel: most of a start is imports)."""
        for name, proc, ready_url, deadline in self.pending:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}); see {self.folder / f'{name}.log'}")
                try:
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready at {ready_url} in time; see {self.folder / f'{name}.log'}")
                time.sleep(0.5)
        self.pending = []

    def stop(self) -> None:
        import signal

        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """A new, empty database ``lm_bench_<hex>`` on the PostgreSQL server of ``admin_url`` (its URL yielded),
    dropped at the end even when the run fails; WITH (FORCE) ends any connection the gateway left open.
    Raises SQLAlchemy's ``OperationalError`` when the server cannot be reached."""
    from sqlalchemy import text
    from sqlalchemy.pool import NullPool

    from learning_machine.store.db import make_engine

    name = f"lm_bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin.url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def run(quick: bool, progress: Progress) -> dict[str, Any]:
    """Start everything, measure, stop everything; the raw numbers."""
    require_extra("mlserver_sklearn")
    import joblib
    from sqlalchemy.exc import OperationalError

    from learning_machine.clients.v2 import ModelServerClient, encode_request
    from learning_machine.data.sources import load_dataset
    from learning_machine.embedded.model_server import (
        ServerPorts,
        mlserver_command,
        mlserver_env,
        served_names,
        wait_models_ready,
        write_repository,
    )
    from learning_machine.embedded.processes import ProcessManager, venv_tool
    from learning_machine.embedded.stack import gateway_service, mlflow_service
    from learning_machine.lifecycle.training import train_and_register
    from learning_machine.model.features import feature_frame
    from learning_machine.model.inference import Predictor, request_columns
    from learning_machine.registry.tracker import Tracker
    from learning_machine.settings import Settings
    from learning_machine.store import Database
    from learning_machine.store.tokens import CLINICIAN, create_token

    profile_dir = Path(os.environ[PROFILE_ENV]) if os.environ.get(PROFILE_ENV) else None
    if profile_dir is not None:
        require_tool("py-spy")
    n_latency = 100 if quick else 600
    n_batch = {100: 12 if quick else 60, 1000: 5 if quick else 25}
    seconds = 2.0 if quick else 8.0
    soak_seconds = 10.0 if quick else 60.0
    n_anchor = 5 if quick else 20
    rows = 2000 if quick else 5000
    results: dict[str, Any] = {"latency": {}, "batch": {}, "throughput": {}, "soak": {}, "explain": {},
                               "notes": [], "skipped": {},
                               "settings": {"n_latency": n_latency, "n_batch": n_batch, "seconds": seconds,
                                            "soak_seconds": soak_seconds, "soak_clients": SOAK_CLIENTS,
                                            "batches": list(BATCHES), "concurrency": list(CONCURRENCY)}}
    with tempfile.TemporaryDirectory(prefix="lm-bench-serving-") as tmp, ExitStack() as cleanup:
        home = Path(tmp)
        databases = {GATEWAY: f"sqlite:///{home / 'lm.db'}"}
        # Entered first, so dropped last: after the gateway using it has stopped.
        try:
            databases[GATEWAY_PG] = cleanup.enter_context(fresh_postgres_database(
                os.environ.get(POSTGRES_URL_ENV, POSTGRES_ADMIN_URL)))
        except OperationalError as exc:
            reason = str(exc.orig or exc).strip().splitlines()[0]
            results["skipped"][GATEWAY_PG] = f"PostgreSQL not reachable (set {POSTGRES_URL_ENV}): {reason}"
            progress(f"serving bench: {GATEWAY_PG} skipped: {reason}")
        settings = Settings(home=home, mlflow_port=free_port(), mlflow_workers=1, model_name="bench-risk",
                            train_rows=rows)
        manager = ProcessManager(settings.run_dir)
        procs = _Processes(home)
        try:
            progress("serving bench: starting MLflow")
            manager.start(mlflow_service(settings), timeout_s=300)
            data = load_dataset("synthetic-cohort", n_rows=rows, seed=5)
            progress(f"serving bench: training xgboost on {rows:,} rows")
            outcome = train_and_register(settings, Tracker(settings.tracking_uri), data, promote="always")
            version = outcome.version.version
            spec = data.spec
            pipeline = outcome.result.pipeline

            # One MLServer: our three runtimes + the built-in sklearn runtime on the same pipeline.
            ports = ServerPorts("127.0.0.1", free_port(), free_port(), free_port())
            root = write_repository(home / "repo", model_name=settings.model_name, ref=version,
                                    tracking_uri=settings.tracking_uri, ports=ports)
            builtin = root / "builtin-sklearn"
            builtin.mkdir()
            joblib.dump(pipeline, builtin / "model.joblib")
            (builtin / "model-settings.json").write_text(json.dumps({
                "name": "builtin-sklearn", "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": version}}))
            # MLServer, `mlflow models serve` and the gateways start side by side, then we wait for them all.
            progress("serving bench: starting MLServer (our runtimes + built-in sklearn), `mlflow models serve` "
                     "and the gateways")
            procs.start("mlserver", mlserver_command(root), mlserver_env(settings.tracking_uri),
                        f"{ports.url}/v2/health/live", wait=False)
            pyfunc_port = free_port()
            procs.start("mlflow-serve", [venv_tool("mlflow"), "models", "serve", "-m",
                                         f"models:/{settings.model_name}/{version}", "--env-manager", "local",
                                         "-h", "127.0.0.1", "-p", str(pyfunc_port), "-w", "1"],
                        # `mlflow models serve` execs `uvicorn` by name: this environment's bin first on PATH.
                        {"MLFLOW_TRACKING_URI": settings.tracking_uri,
                         "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
                        f"http://127.0.0.1:{pyfunc_port}/ping",
                        wait=False)

            # Each gateway: its own database (migrated), its own clinician token, the same MLServer.
            gateways: dict[str, _Gateway] = {}
            for name, url in databases.items():
                gw = settings.model_copy(update={"gateway_port": free_port(), "model_server_url": ports.url,
                                                 "database_url": url})
                db = Database(gw.database_uri())
                cleanup.callback(db.dispose)
                db.upgrade()
                token, _ = create_token(db, CLINICIAN, "bench")
                service = gateway_service(gw)
                key = f"gateway-{GATEWAYS[name].lower()}"
                procs.start(key, service.command, service.env, service.health_url, wait=False)
                gateways[name] = _Gateway(gw.gateway_url, {"Authorization": f"Bearer {token}"}, db, procs.pids[key])
            procs.wait_all()
            wait_models_ready(ports.url, [*served_names(settings.model_name), "builtin-sklearn"], timeout_s=300)
            progress("serving bench: all servers ready")

            # Complete rows (no missing values: every server gets exactly the same input), repeated with
            # unique record ids up to the largest batch.
            frame = data.frame.dropna().head(50)
            rid = spec.record_id.name
            complete = [{k: v for k, v in r.items() if k != spec.target.name} for r in frame.to_dict("records")]
            many = [{**complete[i % len(complete)], rid: f"bench-{i}"} for i in range(max(BATCHES))]
            record = complete[0]
            body = encode_request(spec, [record])
            X = feature_frame(spec, frame.head(1))
            predictor = Predictor.build(pipeline, spec, outcome.result.train)
            columns = request_columns(spec, body["inputs"])

            def http_call(url: str, payload: dict[str, Any] | Callable[[], bytes],
                          headers: dict[str, str] | None = None) -> Callable[[], Callable[[], Any]]:
                """A target: each thread's client posts ``payload`` (encoded once), or the next body ``payload``
                hands out (:func:`encoded_bodies`): the client's own JSON encoding is in no target's time."""
                body = payload if callable(payload) else (lambda encoded=orjson.dumps(payload): encoded)
                sent = {**(headers or {}), "Content-Type": "application/json"}

                def make() -> Callable[[], Any]:
                    client = httpx.Client(timeout=60, headers=sent)

                    def call() -> Any:
                        response = client.post(url, content=body())
                        response.raise_for_status()
                        return response
                    return call
                return make

            bench_ids = RecordIds("bench")

            def payloads(n: int, calls: int = 0) -> dict[str, Callable[[], Callable[[], Any]]]:
                """The HTTP targets, each with an n-row request: the same body every time to MLServer and
                `mlflow models serve`, new records every time to the gateways (``calls`` of them made and
                encoded before the first call)."""
                records = many[:n]
                v2 = encode_request(spec, records)
                Xn = feature_frame(spec, pd.DataFrame(records))
                out: dict[str, Callable[[], Callable[[], Any]]] = {
                    OURS: http_call(f"{ports.url}/v2/models/{settings.model_name}/infer", v2),
                    BUILTIN: http_call(f"{ports.url}/v2/models/builtin-sklearn/infer",
                                       {**v2, "outputs": [{"name": "predict_proba"}]}),
                    PYFUNC: http_call(f"http://127.0.0.1:{pyfunc_port}/invocations",
                                      {"dataframe_split": json.loads(Xn.to_json(orient="split", index=False))}),
                }
                clean = [_json_safe(r) for r in records]
                for name, gateway in gateways.items():
                    out[name] = http_call(f"{gateway.url}/v1/predictions",
                                          encoded_bodies(new_records(clean, rid, bench_ids), calls),
                                          gateway.headers)
                return out

            def local(n: int) -> dict[str, Callable[[], Any]]:
                """The in-process calls on n rows (the anchors: no HTTP, no serialisation)."""
                v2 = encode_request(spec, many[:n])
                Xn = feature_frame(spec, pd.DataFrame(many[:n]))
                return {FAST: lambda: predictor.predict(request_columns(spec, v2["inputs"])),
                        SKLEARN: lambda: pipeline.predict_proba(Xn)}

            profiles: list[Profile] = []

            @contextmanager
            def profiler(name: str, load: str, requests: int | None, wanted: bool) -> Iterator[list[int]]:
                """Sample ``name`` (a gateway) with py-spy during the block when profiling is on and ``wanted``;
                the block may append the number of requests it made when ``requests`` is not known before."""
                counted: list[int] = []
                if profile_dir is None or not wanted or name not in gateways:
                    yield counted
                    return
                raw = profile_dir / f"{GATEWAYS[name].lower()}-{load.replace(' ', '-').replace(',', '')}.txt"
                progress(f"serving bench: profiling {name} ({load}) into {raw}")
                started = time.perf_counter()
                with sampled(gateways[name].pid, raw) as used:
                    yield counted
                done = requests if requests is not None else sum(counted)
                profiles.append(summarise(raw, f"{GATEWAYS[name]} gateway, {load}", seconds=time.perf_counter() - started,
                                          requests=done, cpu_s=used[0] if used else None))

            store_ids = RecordIds("alone")

            def store_alone(db: Database, records: list[dict[str, Any]]) -> Callable[[], Any]:
                """The gateway's own store call on ``records`` with new ids (answers made up: the same for all)."""
                from learning_machine.gateway.service import features_of
                from learning_machine.store import repository

                features = [features_of(spec, r) for r in records]

                def call() -> None:
                    request = repository.PredictionRequest(
                        [store_ids() for _ in records], features, [None] * len(records), uuid.uuid4().hex,
                        [0.5] * len(records), [1] * len(records), [version] * len(records), 1.0)
                    result = repository.store_prediction_requests(db, [request], model_name=settings.model_name)[0]
                    if isinstance(result, Exception):
                        raise result
                return call

            targets = payloads(1)
            for n in BATCHES:
                results["batch"][str(n)] = {}
                count, warmup = (n_latency, 20) if n == 1 else (n_batch[n], 3)
                measured: dict[str, dict[str, tuple[float, float]]] = {}  # each gateway's stage totals, warm

                def warm(names: Sequence[str] = tuple(gateways),
                         into: dict[str, dict[str, tuple[float, float]]] = measured) -> None:
                    for name in names:
                        into[name] = gateway_stages(gateways[name])

                if profile_dir is None:  # every target in turns, so that their ratios share one machine
                    progress(f"serving bench: latency of every target in turns, {n:,} row(s) per request")
                    calls = {**{name: make() for name, make in payloads(n, count + warmup).items()}, **local(n)}
                    for name, stats in latencies(calls, count, warmup, turn=10 if n == 1 else 1, warm=warm).items():
                        results["batch"][str(n)][name] = {**stats, "rows_per_s": n * 1000 / stats["p50"]}
                else:  # one target at a time: py-spy samples one gateway alone
                    for name, make in payloads(n, max(count, PROFILED_REQUESTS.get(n, 0)) + warmup).items():
                        progress(f"serving bench: latency of {name}, {n:,} row(s) per request")
                        many_enough = count
                        if name in gateways and n in (1, TARGET_BATCH):
                            many_enough = max(count, PROFILED_REQUESTS[n])  # enough samples to read
                        load = "single rows, one client" if n == 1 else f"batches of {n:,}"
                        with profiler(name, load, many_enough, n in (1, TARGET_BATCH)):
                            stats = latency(make(), many_enough, warmup,
                                            warm=partial(warm, [name]) if name in gateways else None)
                        results["batch"][str(n)][name] = {**stats, "rows_per_s": n * 1000 / stats["p50"]}
                    for name, fn in local(n).items():
                        stats = latency(fn, count, warmup)
                        results["batch"][str(n)][name] = {**stats, "rows_per_s": n * 1000 / stats["p50"]}
                for name, totals in measured.items():  # where each gateway's requests spent their time
                    results.setdefault("stages", {}).setdefault(str(n), {})[name] = stage_breakdown(
                        totals, gateway_stages(gateways[name]))
                if n == TARGET_BATCH:
                    for name, gateway in gateways.items():
                        progress(f"serving bench: {STORE_ALONE[name]}, {n:,} rows per transaction")
                        stats = latency(store_alone(gateway.db, many[:n]), n_batch[n], 3)
                        results["batch"][str(n)][STORE_ALONE[name]] = {**stats, "rows_per_s": n * 1000 / stats["p50"]}
            results["latency"] = results["batch"]["1"]
            for name, make in targets.items():
                results["throughput"][name] = {}
                for clients in CONCURRENCY:
                    progress(f"serving bench: throughput of {name} ({clients} clients, {seconds:.0f} s)")
                    with profiler(name, f"single rows, {clients} clients", None, clients == 8) as counted:
                        rate = throughput(make, clients, seconds)
                        counted.append(int(rate["requests"]))
                    results["throughput"][name][str(clients)] = rate
            clean_record = _json_safe(record)
            for name, gateway in gateways.items():
                progress(f"serving bench: soak of {name} ({SOAK_CLIENTS} clients, {soak_seconds:.0f} s)")
                found = soak(f"{gateway.url}/v1/predictions", gateway.headers,
                             lambda record_id: {**clean_record, rid: record_id}, SOAK_CLIENTS, soak_seconds)
                stored = stored_rows(gateway.db, found["prefix"])
                results["soak"][name] = {
                    **found, "stored_predictions": stored["predictions"], "stored_records": stored["records"],
                    "stored_equals_acknowledged": stored["predictions"] == stored["records"] == found["acknowledged"]}
            if profiles:
                results["profiles"] = [p.as_dict() for p in profiles]
                assert profile_dir is not None
                (profile_dir / "profiles.md").write_text("\n".join(markdown(profiles)))
                results["notes"].append(f"Profiled with py-spy ({PROFILE_ENV}): {profile_dir / 'profiles.md'}; "
                                        "timings of a profiled run are not for comparison.")
            results["check"] = {"fast_path_equals_pipeline": bool(abs(
                float(predictor.proba(columns)[0]) - float(pipeline.predict_proba(X)[0, 1])) < 1e-9)}

            progress("serving bench: explanations")
            with ModelServerClient(ports.url, timeout_s=60) as client:
                records = [{k: v for k, v in r.items() if k != spec.target.name}
                           for r in frame.to_dict("records")]
                results["explain"]["exact (XGBoost TreeSHAP, via MLServer)"] = latency(
                    _cycle(lambda r: client.explain(settings.model_name, spec, r, "exact"), records),
                    n_latency // 2, 5)
                results["explain"]["anchors (AnchorTabular, via MLServer)"] = latency(
                    _cycle(lambda r: client.explain(settings.model_name, spec, r, "anchors"), records),
                    n_anchor, 1)
                from learning_machine.model.explain import Explainer

                explainer = Explainer(pipeline, spec, outcome.result.train, model_version=version)
                cols = [request_columns(spec, encode_request(spec, [r])["inputs"]) for r in records]
                results["explain"]["exact, in-process (the attribution computation)"] = latency(
                    _cycle(explainer.exact, cols), n_latency // 2, 5)
                explainer.anchors(cols[0])  # fit once, as the runtime does at load
                results["explain"]["anchors, in-process"] = latency(_cycle(explainer.anchors, cols), n_anchor, 0)
                results["explain"]["drift, 200-row batch (TabularDrift, via MLServer)"] = latency(
                    lambda: client.drift(settings.model_name, spec, records * 4), 10 if quick else 30, 1)
        finally:
            procs.stop()
            manager.stop("mlflow")
    return results


def _json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with NaN as None (JSON has no NaN; the gateway reads null as missing)."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in record.items()}


def _cycle(fn: Callable[[Any], Any], items: list[Any]) -> Callable[[], Any]:
    state = {"i": 0}

    def call() -> Any:
        item = items[state["i"] % len(items)]
        state["i"] += 1
        return fn(item)
    return call


def to_section(results: dict[str, Any], quick: bool) -> Any:
    """The Markdown section of the results (single rows with concurrency, batches, explanations), with the
    targets checked; ratios against MLServer's built-in sklearn runtime (what a user would deploy instead)."""
    from learning_machine.bench.report import Section, Table

    lat = results["latency"]
    tp = results["throughput"]
    anchor = lat.get(BUILTIN, {}).get("p50")
    section = Section("Serving: latency, throughput and explanations",
                      ["path (one row per request)", "p50 ms", "p99 ms", "min-max ms", "p50 / built-in",
                       *(f"req/s, {c} client{'s' if c > 1 else ''}" for c in CONCURRENCY), "errors"])
    for name, stats in lat.items():
        per = tp.get(name, {})
        section.rows.append([name, stats["p50"], stats["p99"], f"{stats['min']:.2f}-{stats['max']:.2f}",
                             f"{stats['p50'] / anchor:.2f}x" if anchor else "-",
                             *(per[str(c)]["rps"] if str(c) in per else "-" for c in CONCURRENCY),
                             int(sum(v["errors"] for v in per.values())) if per else "-"])
    batches = Table("Batches: sequential requests of 1, 100 and 1,000 rows",
                    ["path", "rows per request", "p50 ms", "p99 ms", "min-max ms", "rows/s (at p50)",
                     "rows/s / built-in"])
    for n, by_path in results.get("batch", {}).items():
        base = by_path.get(BUILTIN, {}).get("rows_per_s")
        for name, stats in by_path.items():
            batches.rows.append([name, f"{int(n):,}", stats["p50"], stats["p99"],
                                 f"{stats['min']:.1f}-{stats['max']:.1f}", stats["rows_per_s"],
                                 f"{stats['rows_per_s'] / base:.2f}x" if base else "-"])
    stages = Table("Where a gateway request's time goes: ms per request, from each gateway's own /metrics",
                   ["gateway", "rows per request", "requests", "request", "validate", "wait", "model-server call",
                    "store after the answers", "rest (body, token, store columns, answer, hand-offs)",
                    "store begun ahead (overlaps the call)"])
    for n, by_gateway in results.get("stages", {}).items():
        for name, ms in by_gateway.items():
            if ms:
                stages.rows.append([name, f"{int(n):,}", int(ms["requests"]), *(
                    round(ms.get(key, 0.0), 2) for key in ("request", "validate", "wait", "model", "store", "rest",
                                                           "store_ahead"))])
    explain = Table("Explanations per method (one row)", ["method", "p50 ms", "p99 ms", "min-max ms", "calls"])
    for name, stats in results["explain"].items():
        explain.rows.append([name, stats["p50"], stats["p99"], f"{stats['min']:.1f}-{stats['max']:.1f}",
                             int(stats["n"])])
    soaks = Table("Soak: one new record per request, every gateway for the same time",
                  ["gateway", "clients", "seconds", "acknowledged (HTTP 200)", "failed", "failures by kind",
                   "stored predictions", "stored records", "stored = acknowledged", "req/s", "p50 ms", "p99 ms"])
    for name, run in results.get("soak", {}).items():
        soaks.rows.append([name, run["clients"], run["seconds"], f"{run['acknowledged']:,}", f"{run['failed']:,}",
                           ", ".join(f"{kind}: {n:,}" for kind, n in run["failures"].items()) or "-",
                           f"{run['stored_predictions']:,}", f"{run['stored_records']:,}",
                           "yes" if run["stored_equals_acknowledged"] else "NO", run["rps"],
                           run["p50"] if run["p50"] is not None else "-",
                           run["p99"] if run["p99"] is not None else "-"])
    section.tables = [batches, *([stages] if stages.rows else []), *([soaks] if soaks.rows else []), explain]
    ours = lat.get(OURS, {}).get("p50")
    exact = next((v["p50"] for k, v in results["explain"].items() if k.startswith("exact")), None)
    exact_compute = next((v["p50"] for k, v in results["explain"].items() if k.startswith("exact, in-process")),
                         None)
    anchors = next((v["p50"] for k, v in results["explain"].items() if k.startswith("anchors")), None)
    if ours and anchor:
        section.notes.append(f"Our runtime vs the built-in sklearn runtime (p50): {ours / anchor:.2f}x "
                             f"(target: no slower, <= 1.0x) -> {'met' if ours <= anchor else 'NOT met'}.")
    checks = gateway_checks(results)
    for name in GATEWAYS:
        if name in checks:
            section.notes.append(f"Targets of the {name}: " + "; ".join(
                f"{c.what}: {c.result} ({c.versus}; target {c.target}) -> {c.verdict}" for c in checks[name]) + ".")
        elif name in results.get("skipped", {}):
            section.notes.append(f"{name} not measured: {results['skipped'][name]}.")
    if exact is not None and exact_compute is not None:
        section.notes.append(f"Exact attributions p50: {exact_compute:.2f} ms to compute (target < 5 ms -> "
                             f"{'met' if exact_compute < 5 else 'NOT met'}), {exact:.2f} ms through MLServer "
                             f"({'under' if exact < 5 else 'over'} 5 ms; MLServer's own round trip is most of it, "
                             f"cf. our model runtime's p50 {ours or float('nan'):.2f} ms).")
    if anchors is not None:
        section.notes.append(f"Anchors p50 {anchors:.0f} ms (target < 1000 ms) -> "
                             f"{'met' if anchors < 1000 else 'NOT met'}.")
    settings = results.get("settings", {})
    section.notes += [
        "Same registered XGBoost pipeline everywhere (200 trees, preprocessing inside); complete rows. Latency = "
        f"sequential requests on one keep-alive connection after a warm-up ({settings.get('n_latency', '?')} "
        f"single-row requests; batches: {settings.get('n_batch', '?')} requests of that size); p99 and min-max "
        "are over those requests.",
        f"Throughput = 1, 8 and 32 client threads for {settings.get('seconds', '?')} s each, on the same 2 cores "
        "as the servers (the Python clients compete for the CPU), so it is a floor and the ratios are what to "
        "compare. In-process rows have no throughput: they are the anchors without HTTP.",
        f"Soak: {settings.get('soak_clients', '?')} client threads post one new record per request "
        f"(ids soak-<run>-<n>) to each gateway in turn for {settings.get('soak_seconds', '?')} s; acknowledged = "
        "HTTP 200, failed = any other status or an exception; stored predictions and records are then counted in "
        "that gateway's database by the run's id prefix. p50/p99 are over the answered requests.",
        "Explanations: exact = per-feature contributions (XGBoost's TreeSHAP, pred_contribs) mapped back to the "
        "input features; anchors = AnchorTabular's rule that locally fixes the prediction (sampling: many model "
        "calls per explanation); drift = TabularDrift (KS / chi-squared) on a 200-row batch. "
        "'via MLServer' is the V2 round trip to the explainer/drift runtime; 'in-process' is the computation alone.",
        "Our runtime skips scikit-learn's per-call overhead with a numpy copy of the fitted preprocessor "
        "(checked equal to the pipeline at load); the built-in runtime decodes to pandas and calls the pipeline; "
        "the gateway validates every record of a batch, calls MLServer once and stores every row. Every request "
        "to a gateway carries new record ids (bench-<n>), as every clinical encounter is a new record: what is "
        "measured is inserting each record and its prediction. Every body is made and encoded before the timed "
        "calls (orjson; the gateways' with new ids each), so no target's time holds the client's JSON encoding: "
        "until 2026-12-07 the client encoded each body inside the timed call (Python's json, ~1,000 record objects "
        "for a gateway's batch against ten columns for MLServer's), which added more to the gateways' batches.",
        "Where a gateway request's time goes: the gateway's lm_gateway_prediction_stage_seconds, "
        "lm_gateway_model_server_seconds and lm_gateway_request_seconds, read before and after the measured "
        "sequential requests of the batches table (warm-up excluded), divided by the requests answered: means, not "
        "medians. validate = parsing and checking the records; wait = queued before the model-server call; "
        "model-server call = encoding the V2 request, the call and reading its answer; store after the answers = "
        "from the answers to the commit; rest = the request's time outside those (reading the body, the "
        "middleware and the token, making the store's columns of the records, answering, thread hand-offs). The "
        "store begun ahead overlaps the model call. What the client measures also holds uvicorn's HTTP handling "
        "before and after the app.",
        f"{'Quick' if quick else 'Full'} run. Fast path equals pipeline: {results.get('check', {})}.",
        *results.get("notes", []),
    ]
    section.raw = results
    return section
