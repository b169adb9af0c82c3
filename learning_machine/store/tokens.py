"""API tokens: random bearer secrets with a role. Only their SHA-256 is stored, so a copy of the
database does not hand out access; the token itself is shown once, when it is created."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from learning_machine.errors import AuthenticationError, ConfigurationError, NotFoundError, UnknownNameError
from learning_machine.settings import Settings
from learning_machine.store.db import Database
from learning_machine.store.models import ApiToken, utcnow

CLINICIAN = "clinician"
DATA_SCIENTIST = "data-scientist"
ADMIN = "admin"
MONITOR = "monitor"  # the learning loop's service account: reads the feeds, writes results, loop events, state
ROLES = (CLINICIAN, DATA_SCIENTIST, ADMIN, MONITOR)
TOKEN_PREFIX = "lm_"  # noqa: S105 - a visible prefix, so leaked tokens are easy to spot


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id, name and role (never the token)."""

    token_id: int
    name: str
    role: str


def hash_token(token: str) -> str:
    # A plain hash is enough: tokens are 256 random bits, not passwords that could be guessed.
    return hashlib.sha256(token.encode()).hexdigest()


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UnknownNameError("role", role, ROLES)
    return role


def create_token(db: Database, role: str, name: str = "", ttl_days: float | None = 90) -> tuple[str, Principal]:
    """A new token with ``role``, valid for ``ttl_days`` (None or 0: no expiry); returns the token (show it
    once) and its principal."""
    check_role(role)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    with db.transaction() as session:
        row = ApiToken(token_hash=hash_token(token), role=role, name=name or role, created_at=now,
                       revoked=False, expires_at=now + timedelta(days=ttl_days) if ttl_days else None)
        session.add(row)
        session.flush()
        return token, Principal(row.id, row.name, row.role)


def authenticate(db: Database, token: str | None) -> Principal:
    """The principal of a valid, unrevoked token; :class:`AuthenticationError` otherwise."""
    principal, expires_at = lookup_token(db, token)
    check_expiry(principal, expires_at)
    return principal


def lookup_token(db: Database, token: str | None) -> tuple[Principal, datetime | None]:
    """The principal of a known, unrevoked token and when it expires (None: never); whether it has expired
    is :func:`check_expiry`'s question (a cache of this answer asks it on every use)."""
    if not token:
        raise AuthenticationError("a bearer token is required: send 'Authorization: Bearer <token>' "
                                  "(create one with `lm tokens create --role ROLE`)")
    with db.read() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked:
        raise AuthenticationError("the bearer token is unknown or revoked")
    return Principal(row.id, row.name, row.role), None if row.expires_at is None else _aware(row.expires_at)


def check_expiry(principal: Principal, expires_at: datetime | None) -> None:
    """Raise :class:`AuthenticationError` when the token expired."""
    if expires_at is not None and expires_at <= utcnow():
        raise AuthenticationError(f"the bearer token {principal.name!r} expired at {expires_at.isoformat()}; "
                                  "ask an admin for a new one (`lm tokens create --role ROLE`)")


def _aware(moment: datetime) -> datetime:
    # SQLite hands timezone-aware columns back naive (in UTC, as they were written).
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def list_tokens(db: Database) -> list[dict[str, Any]]:
    with db.read() as session:
        rows = session.scalars(select(ApiToken).order_by(ApiToken.id))
        return [{"id": r.id, "name": r.name, "role": r.role, "created_at": r.created_at.isoformat(),
                 "expires_at": _aware(r.expires_at).isoformat() if r.expires_at else None,
                 "revoked": r.revoked} for r in rows]


def revoke_token(db: Database, token_id: int) -> None:
    with db.transaction() as session:
        row = session.get(ApiToken, token_id)
        if row is None:
            raise NotFoundError(f"no token with id {token_id}")
        row.revoked = True


def ensure_default_tokens(db: Database, path: Path, progress: Callable[[str], None] | None = None,
                          ttl_days: float | None = 90) -> bool:
    """On a database with no live tokens, create one per role and write them to ``path`` (mode 0600).
    A tokens file of an older release that lacks a role (the monitor's) gets one added. Returns True
    when tokens were created."""
    with db.read() as session:
        live = session.scalar(select(ApiToken.id).where(ApiToken.revoked.is_(False)).limit(1))
    if live is not None:
        known = _read_tokens(path)
        missing = [role for role in ROLES if known is not None and role not in known]
        if known is not None and missing:
            for role in missing:
                known[role] = create_token(db, role, f"default {role}", None if role == MONITOR else ttl_days)[0]
            write_secret_json(path, known)
            if progress:
                progress(f"added a token for {', '.join(missing)} to {path}")
            return True
        if progress:
            progress(f"API tokens exist; the first ones were written to {path}" if path.exists()
                     else "API tokens exist; create more with `lm tokens create --role ROLE`")
        return False
    # The monitor's token is a service account's: it does not expire (revoke it to rotate it).
    tokens = {role: create_token(db, role, f"default {role}", None if role == MONITOR else ttl_days)[0]
              for role in ROLES}
    write_secret_json(path, tokens)
    if progress:
        progress(f"created one API token per role ({', '.join(ROLES)}); they are in {path} (readable only by you)")
    return True


def register_tokens(db: Database, tokens: dict[str, str], name_prefix: str = "imported") -> list[str]:
    """Make the given role -> token pairs valid (only their hashes are stored); tokens the database already
    knows are left alone, so running it again is harmless. Returns the roles newly registered. Used where
    the token is made elsewhere, e.g. by the Helm chart for the monitor."""
    added = []
    with db.transaction() as session:
        for role, token in tokens.items():
            check_role(role)
            if not token.startswith(TOKEN_PREFIX) or len(token) < len(TOKEN_PREFIX) + 32:
                raise ConfigurationError(f"the {role} token must start with {TOKEN_PREFIX!r} and carry at least "
                                          "32 random characters")
            known = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
            if known is None:
                session.add(ApiToken(token_hash=hash_token(token), role=role, name=f"{name_prefix} {role}",
                                     created_at=utcnow(), revoked=False))
                added.append(role)
            elif known.role != role:
                # Skipping it would leave the token with its old role (e.g. a monitor token of an older
                # release registered as data-scientist): the caller must hand out a new token instead.
                raise ConfigurationError(f"the {role} token is already registered with role {known.role!r} "
                                          f"(token id {known.id}): give the {role} a new token")
    return added


def _read_tokens(path: Path) -> dict[str, str] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def write_secret_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` so that no other user can read it at any moment (0600 from creation, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
    os.replace(tmp, path)


def prepare_for_gateway(settings: Settings, progress: Callable[[str], None] | None = None) -> bool:
    """What `lm up` does before it starts the gateway: migrate the database (once, not racing the
    gateway process) and create one token per role on a database with none. True when tokens were made."""
    from learning_machine.store.db import safe_url

    db = Database(settings.database_uri())
    try:
        db.upgrade()
        if progress:
            progress(f"database {safe_url(db.url)} is migrated")
        return ensure_default_tokens(db, settings.tokens_path().resolve(), progress, settings.token_ttl_days)
    finally:
        db.dispose()
