"""The gateway app: :func:`create_app` builds it from one :class:`Settings`."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from learning_machine.clients.v2 import ModelServerClient
from learning_machine.data.sources import spec_for
from learning_machine.gateway import admin_routes, monitor_routes, problems, service
from learning_machine.gateway.auth import TokenCache
from learning_machine.gateway.edge import EdgeMiddleware, Metrics
from learning_machine.gateway.routes import router
from learning_machine.gateway.service import GatewayContext
from learning_machine.settings import Settings
from learning_machine.store.db import Database

DESCRIPTION = """The public API of the Learning Machine: predictions with explanations on patient records,
outcomes that arrive later, and the history the monitor and the dashboard read.

Every route under `/v1` needs `Authorization: Bearer <token>`; a token carries one role
(`clinician`, `data-scientist`, `admin`; create one with `lm tokens create --role ROLE`). Errors are
[problem details](https://www.rfc-editor.org/rfc/rfc9457) (`application/problem+json`)."""


def build_context(settings: Settings) -> GatewayContext:
    """The app's long-lived parts. Nothing connects yet: the database is migrated at start-up."""
    # On SQLite, WAL checkpoints run in a thread of their own, not inside a request's commit.
    db = Database(settings.database_uri(), background_checkpoints=True)
    return GatewayContext(
        settings=settings,
        db=db,
        model_server=ModelServerClient.from_settings(settings),
        spec=spec_for(settings.dataset, settings.dataset_spec),
        metrics=Metrics(),
        tokens=TokenCache(db, settings.token_cache_s),
    )


def create_app(settings: Settings, *, context: GatewayContext | None = None) -> FastAPI:
    """The gateway as an ASGI app. It migrates its database when it starts."""
    ctx = context or build_context(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(ctx.db.upgrade)
        # Everything imported and built so far lives as long as the process: out of the collector's sight,
        # so that a full collection under load walks only what requests allocate (shorter pauses, a lower p99).
        gc.collect()
        gc.freeze()
        yield
        await run_in_threadpool(ctx.predictions.close)  # answer what is queued before the connections go
        ctx.model_server.close()
        ctx.db.dispose()

    app = FastAPI(title="Learning Machine API", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.ctx = ctx
    problems.install(app)
    app.include_router(router)
    app.include_router(monitor_routes.router)
    app.include_router(admin_routes.router)  # whoami, model card, promote / roll back / retrain
    app.add_middleware(EdgeMiddleware, metrics=ctx.metrics, max_body_bytes=settings.max_request_bytes)

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Database reachable and model served (else 503)")
    def readyz() -> dict[str, Any]:
        return service.readiness(ctx)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", include_in_schema=False)
    async def metrics(_: Request) -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.openapi = partial(typed_openapi, app, ctx)  # type: ignore[method-assign]
    return app


def typed_openapi(app: FastAPI, ctx: GatewayContext) -> dict[str, Any]:
    """The OpenAPI document with the records typed by the dataset spec this gateway serves (every feature's
    type, range or categories, the id rule), not a bare object: what client generators and fuzzers read.
    The routes still check records against the spec themselves, listing every problem at once."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    from learning_machine.gateway.schemas import ExplanationIn, OutcomeIn

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    spec = ctx.spec
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Record"] = spec.record_schema()
    record = {"$ref": "#/components/schemas/Record"}
    batch = {"type": "object", "title": "A batch of records", "additionalProperties": False, "required": ["records"],
             "properties": {"records": {"type": "array", "items": record, "minItems": 1,
                                        "maxItems": ctx.settings.max_batch_rows}}}
    paths = schema["paths"]
    content = paths["/v1/predictions"]["post"]["requestBody"]["content"]["application/json"]
    content["schema"] = {"oneOf": [record, batch]}
    rid = spec.record_id.name
    for path, model in (("/v1/explanations", ExplanationIn), ("/v1/outcomes", OutcomeIn)):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        if "record" in body["properties"]:
            body["properties"]["record"] = {"anyOf": [record, {"type": "null"}],
                                            "description": "A full record to explain (it is stored too)."}
        if "outcome" in body["properties"]:
            body["properties"]["outcome"] = {"enum": [0, 1, True, False, "0", "1"],
                                             "description": "The ground truth: 0 or 1 (also true/false, \"0\"/\"1\")."}
        if rid != "record_id":  # the dataset's own id field, accepted for record_id (one of the two)
            body["properties"][rid] = {**body["properties"]["record_id"]}
            body.pop("required", None)
        components[model.__name__] = body
        paths[path]["post"]["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
    app.openapi_schema = schema
    return schema
