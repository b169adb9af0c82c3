"""What every request passes through before a route: a request id, the body-size limit, text no store can
hold (NUL characters, unpaired surrogates: refused before any route runs) and the Prometheus metrics. One
plain ASGI middleware (no BaseHTTPMiddleware), so the hot path stays cheap. The request id is also set in
:data:`learning_machine.logs.REQUEST_ID` for the whole request, so every log line written meanwhile carries it."""

from __future__ import annotations

import re
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from learning_machine.errors import BadRequestError, PayloadTooLargeError
from learning_machine.gateway.problems import problem_response
from learning_machine.logs import REQUEST_ID

REQUEST_ID_HEADER = b"x-request-id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# The stages of lm_gateway_prediction_stage_seconds; the model-server call is lm_gateway_model_server_seconds.
PREDICTION_STAGES = ("validate", "wait", "store_ahead", "store")


class Metrics:
    """The gateway's Prometheus metrics, in a registry of its own (one per app, so tests can run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("lm_gateway_requests_total", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("lm_gateway_request_seconds",
                                 "HTTP request latency by route and outcome (success, client_error, server_error)",
                                 ["method", "route", "outcome"], registry=self.registry,
                                 buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.predictions = Counter("lm_gateway_predictions_total",
                                   "Predictions stored (committed with their records) by model version",
                                   ["model_version"], registry=self.registry)
        self.stored_rows = Counter("lm_gateway_stored_rows_total",
                                   "Rows the gateway committed to the platform database, by kind (prediction, "
                                   "outcome, explanation)", ["kind"], registry=self.registry)
        for kind in ("prediction", "outcome", "explanation"):  # at 0 from the start: "none for N minutes" alerts
            self.stored_rows.labels(kind)
        self.model_server_seconds = Histogram("lm_gateway_model_server_seconds", "Model-server call latency",
                                              ["call"], registry=self.registry,
                                              buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.prediction_stage_seconds = Histogram(
            "lm_gateway_prediction_stage_seconds",
            "Where a prediction request's time goes, by stage: validate (parsing and checking one request's records, "
            "on the event loop), wait (a group's first request queued before its model-server call began), "
            "store_ahead (the store begun while the model server works: overlaps the call), store (from the "
            "model's answers to the commit: what the client waits for after the answer); per request for validate, "
            "per group (one model-server call, one commit) for the others",
            ["stage"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        for stage in PREDICTION_STAGES:
            self.prediction_stage_seconds.labels(stage)
        self.group_requests = Histogram("lm_gateway_prediction_group_requests",
                                        "Prediction requests sharing one model-server call and one commit",
                                        registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id, given = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"], state["request_id_given"] = request_id, given
        context = REQUEST_ID.set(request_id)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_limited(scope, receive)
                if body is None:
                    too_big = PayloadTooLargeError(
                        f"the request body is larger than the limit of {self.max_body_bytes:,} bytes "
                        "(LM_MAX_REQUEST_BYTES); send smaller batches")
                    await problem_response(too_big, request_id, scope.get("path"))(scope, receive, send_with_id)
                    return
                receive = _replay(body, receive)
                why = unstorable_text(body)
                if why is not None:
                    bad = BadRequestError(f"the request body {why}; no record or field may carry it", detail=[
                        {"field": "<body>", "rule": "characters", "message": why}])
                    await problem_response(bad, request_id, scope.get("path"))(scope, receive, send_with_id)
                    return
            if b"%00" in scope.get("query_string", b"") or "\x00" in scope.get("path", ""):
                bad = BadRequestError("the URL contains a NUL character (%00), which no id or filter may carry")
                await problem_response(bad, request_id, scope.get("path"))(scope, receive, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            # The route template, not the raw path: one series per route, whatever the record ids.
            label = getattr(route, "path", None) or "<unmatched>"
            method = scope["method"]
            self.metrics.requests.labels(method, label, str(status)).inc()
            self.metrics.latency.labels(method, label, outcome(status)).observe(time.perf_counter() - started)
            REQUEST_ID.reset(context)

    async def _read_limited(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it (or its declared Content-Length) passes the limit."""
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        return None
                except ValueError:
                    pass
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def outcome(status: int) -> str:
    """The outcome label of a response status: ``success`` (below 400), ``client_error`` (4xx) or
    ``server_error`` (5xx, and a request that ended without a response)."""
    return "success" if status < 400 else "client_error" if status < 500 else "server_error"


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_RAW_SURROGATE = re.compile(rb"\xed[\xa0-\xbf]")


def unstorable_text(body: bytes) -> str | None:
    """Why a JSON body carries text that neither database can store nor UTF-8 encode (a NUL character, an
    unpaired UTF-16 surrogate), or None. Two byte scans on the common path; the body is parsed only when
    it holds a surrogate escape at all (emoji are written as pairs)."""
    if b"\\u0000" in body:
        return "contains a NUL character (\\u0000)"
    if _RAW_SURROGATE.search(body) is not None:  # Python's JSON parser would let these through
        return "contains an unpaired UTF-16 surrogate encoded as UTF-8 (not valid UTF-8)"
    if _SURROGATE_ESCAPE.search(body) is None:
        return None
    import json

    try:
        json.dumps(json.loads(body), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired UTF-16 surrogate (text that is not valid Unicode)"
    except ValueError:
        return None  # not JSON: the route's parser says so
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _request_id(scope: Scope) -> tuple[str, bool]:
    """The caller's X-Request-ID when it is a sane token (so logs join across services, and a retried
    prediction request is recognised), else a new one; and whether the caller gave it."""
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER:
            candidate = value.decode("latin-1")
            if _SAFE_ID.match(candidate):
                return candidate, True
            break
    return uuid.uuid4().hex, False


