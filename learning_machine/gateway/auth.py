"""Bearer tokens with roles. Each route declares the roles it admits with :func:`require`."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from learning_machine.errors import PermissionDeniedError
from learning_machine.store.tokens import ADMIN, CLINICIAN, DATA_SCIENTIST, MONITOR, Principal, authenticate

# Who may do what. Admin can do everything; the monitor (the learning loop's service account) only what the
# loop needs, and nobody but an admin (or the loop acting on its policy) causes a retraining or a promotion.
CLINICAL = frozenset({CLINICIAN, DATA_SCIENTIST, ADMIN})  # predict, explain, read patients, record outcomes
SCIENCE = frozenset({DATA_SCIENTIST, ADMIN})  # correct outcomes, monitoring, models, events, prediction history
FEEDS = frozenset({DATA_SCIENTIST, ADMIN, MONITOR})  # the prediction feeds and the event log, read-only
LOOP = frozenset({MONITOR, ADMIN})  # write monitoring results, learning-loop events and the monitor's state
ADMINISTRATION = frozenset({ADMIN})

_bearer = HTTPBearer(auto_error=False, description="An API token: `lm tokens create --role ROLE`.")


def require(roles: frozenset[str]) -> Callable[..., Principal]:
    """A dependency that admits a valid token whose role is in ``roles`` (401 without one, 403 otherwise)."""

    def check(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
        principal = authenticate(request.app.state.ctx.db, credentials.credentials if credentials else None)
        if principal.role not in roles:
            raise PermissionDeniedError(
                f"role {principal.role!r} may not use this route; it needs one of: {', '.join(sorted(roles))}",
                detail={"role": principal.role, "allowed": sorted(roles)})
        request.state.principal = principal
        return principal

    return check
