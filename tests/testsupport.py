"""Helpers shared by the test folders (import as `testsupport`; never `from conftest import`, since every
folder's conftest module is called `conftest` and they would shadow each other)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


PG_ADMIN_URL = os.environ.get("LM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def postgres_objects(create: list[str], drop: list[str]) -> Iterator[None]:
    """Run ``create`` (SQL statements) as the local PostgreSQL server's admin, then ``drop`` at the end, even
    when the test fails; the test fails at once, saying so, when the server is not reachable."""
    import psycopg
    import pytest

    try:
        conn = psycopg.connect(PG_ADMIN_URL, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (start it; .ci/run does): {exc}")
    try:
        with conn.cursor() as cur:
            for statement in create:
                cur.execute(statement)
        yield
    finally:
        with conn.cursor() as cur:
            for statement in drop:
                cur.execute(statement)
        conn.close()


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """An empty database of its own on the local PostgreSQL server (URL yielded), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with postgres_objects([f'CREATE DATABASE "{name}"'], [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)']):
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


class CuttableProxy:
    """A TCP forwarder in front of a real server that can go down on cue: after ``cut_after`` client
    requests containing ``pattern`` have passed, the next one is dropped and every later connection is
    refused, as when the server dies mid-run. (The server behind it keeps running for the other tests.)"""

    def __init__(self, upstream_host: str, upstream_port: int, *, pattern: bytes, cut_after: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.pattern, self.cut_after, self.seen = pattern, cut_after, 0
        self.down = threading.Event()
        self._lock = threading.RLock()
        self._sockets: list[Any] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, name="cuttable-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self.down.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                return
            try:
                server = socket.create_connection(self.upstream, timeout=30)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: Any, target: Any, from_client: bool) -> None:
        try:
            while not self.down.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if from_client and self.pattern in data:
                    with self._lock:
                        self.seen += 1
                        if self.seen > self.cut_after:
                            self.cut()
                            return
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.close()

    def cut(self) -> None:
        """The server 'goes down': no more connections, open ones closed."""
        self.down.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()


class FlakyProxy:
    """An HTTP forwarder in front of a real server that misbehaves on cue for requests whose path starts
    with ``path``: ``faults`` is consumed one per such request, each ``"502"`` (answer 502 without
    forwarding), ``"lose"`` (forward, so the server acts, then close the connection without an answer, as
    when a response is lost) or ``"ok"``. Every other request is forwarded untouched. ``seen`` keeps the
    X-Request-ID of every matching request."""

    def __init__(self, upstream: str, *, path: str, faults: list[str]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.upstream, self.path, self.faults = upstream.rstrip("/"), path, list(faults)
        self.seen: list[str | None] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = "ok"
                if self.path.startswith(proxy.path):
                    with proxy._lock:
                        proxy.seen.append(self.headers.get("X-Request-ID"))
                        fault = proxy.faults.pop(0) if proxy.faults else "ok"
                if fault == "502":
                    payload = b'{"detail": "bad gateway (test proxy)"}'
                    self.send_response(502)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = httpx.request(self.command, proxy.upstream + self.path, content=body, headers=headers,
                                       timeout=60)
                if fault == "lose":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="flaky-proxy", daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Sink:
    """An in-memory result sink for a monitor tested in process (the loop stores through the gateway)."""

    def __init__(self) -> None:
        self.rows: list[Mapping[str, Any]] = []
        self.events: list[tuple[str, Mapping[str, Any]]] = []

    def results(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.rows.extend(rows)

    def event(self, kind: str, detail: Mapping[str, Any], model_version: str | None = None) -> None:
        self.events.append((kind, detail))


def placeholder_rows(scenario: str, n: int, seed: int) -> list[dict[str, Any]]:
    """Generated records as the monitor reads them, each with one placeholder score (0.2) from version 1."""
    from learning_machine.data.sources import load_dataset

    data = load_dataset("synthetic-cohort", n_rows=n, seed=seed, scenario=scenario, drift_start=0)
    frame = data.frame.drop(columns=["outcome"]).astype(object).where(data.frame.notna(), None)
    return [{**r, "probability": 0.2, "model_version": "1"} for r in frame.to_dict("records")]
