"""Bearer tokens with roles. Each route declares the roles it admits with :func:`require`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from learning_machine.errors import PermissionDeniedError
from learning_machine.store.db import Database
from learning_machine.store.tokens import (
    ADMIN,
    CLINICIAN,
    DATA_SCIENTIST,
    MONITOR,
    Principal,
    check_expiry,
    hash_token,
    lookup_token,
)

# Who may do what. Admin can do everything; the monitor (the learning loop's service account) only what the
# loop needs, and nobody but an admin (or the loop acting on its policy) causes a retraining or a promotion.
CLINICAL = frozenset({CLINICIAN, DATA_SCIENTIST, ADMIN})  # predict, explain, read patients, record outcomes
SCIENCE = frozenset({DATA_SCIENTIST, ADMIN})  # correct outcomes, monitoring, models, events, prediction history
FEEDS = frozenset({DATA_SCIENTIST, ADMIN, MONITOR})  # the prediction feeds and the event log, read-only
LOOP = frozenset({MONITOR, ADMIN})  # write monitoring results, learning-loop events and the monitor's state
ADMINISTRATION = frozenset({ADMIN})

_bearer = HTTPBearer(auto_error=False, description="An API token: `lm tokens create --role ROLE`.")


class TokenCache:
    """Valid tokens remembered for ``ttl_s`` seconds (LM_TOKEN_CACHE_S), so that a client sending requests
    back to back costs one token query per interval, not one per request (it was a tenth of a prediction's
    cost, profiled). The trade-off is stated where tokens are revoked: a revoked token is refused by a
    running gateway within ``ttl_s``. Expiry is checked on every use; unknown or revoked tokens are never
    remembered (each try asks the database). ``ttl_s`` 0 asks the database on every request."""

    MAX_ENTRIES = 10_000

    def __init__(self, db: Database, ttl_s: float) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self._valid: dict[str, tuple[float, Principal, datetime | None]] = {}
        self._lock = threading.Lock()

    async def principal(self, token: str | None) -> Principal:
        """The token's principal; :class:`AuthenticationError` for no, an unknown, a revoked or an expired token."""
        key = hash_token(token) if token else ""
        hit = self._valid.get(key) if key and self.ttl_s > 0 else None
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            principal, expires_at = hit[1], hit[2]
        else:
            principal, expires_at = await run_in_threadpool(lookup_token, self.db, token)
            if self.ttl_s > 0:
                with self._lock:
                    if len(self._valid) >= self.MAX_ENTRIES:
                        self._valid.clear()
                    self._valid[key] = (time.monotonic(), principal, expires_at)
        check_expiry(principal, expires_at)
        return principal


def require(roles: frozenset[str]) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that admits a valid token whose role is in ``roles`` (401 without one, 403 otherwise).
    Async: a cached token costs no thread-pool hop."""

    async def check(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
                    ) -> Principal:
        principal = await request.app.state.ctx.tokens.principal(credentials.credentials if credentials else None)
        if principal.role not in roles:
            raise PermissionDeniedError(
                f"role {principal.role!r} may not use this route; it needs one of: {', '.join(sorted(roles))}",
                detail={"role": principal.role, "allowed": sorted(roles)})
        request.state.principal = principal
        return principal

    return check
