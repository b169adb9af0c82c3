"""`lm gateway`, `lm tokens ...` and `lm db ...`: the gateway and its database from the command line.
Registered on the main app by :func:`register`; heavy imports stay inside the commands."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from learning_machine.cli.common import console, out, progress_for, settings_of
from learning_machine.errors import ConfigurationError
from learning_machine.settings import Settings

if TYPE_CHECKING:
    from learning_machine.store import Database

tokens_app = typer.Typer(help="API tokens of the gateway: create, list, revoke.", no_args_is_help=True)
db_app = typer.Typer(help="The platform database: apply migrations, show the schema version.",
                     no_args_is_help=True)


def _database(settings: Settings, *, migrate: bool = True) -> Database:
    from learning_machine.store import Database

    db = Database(settings.database_uri())
    if migrate:
        db.upgrade()
    return db


def gateway(ctx: typer.Context,
            host: Annotated[str | None, typer.Option(help="Interface to bind (default: LM_GATEWAY_HOST).")] = None,
            port: Annotated[int | None, typer.Option(help="Port (default: LM_GATEWAY_PORT).")] = None,
            log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info") -> None:
    """Run the gateway (the public REST API) in the foreground; API docs at /docs."""
    import uvicorn

    from learning_machine.gateway import create_app
    from learning_machine.logs import configure_logging

    settings = settings_of(ctx)
    updates = {k: v for k, v in {"gateway_host": host, "gateway_port": port}.items() if v is not None}
    settings = settings.model_copy(update=updates)
    # Our own log lines (one per refused or failed request) and uvicorn's, in one format (LM_LOG_FORMAT), each
    # with the id of the request it belongs to.
    configure_logging(settings.log_format, log_level)
    from learning_machine.store.db import safe_url

    progress_for(settings, "learning_machine.gateway")(
        f"gateway on {settings.gateway_url} (docs {settings.gateway_url}/docs), database "
        f"{safe_url(settings.database_uri())}, model server {settings.model_server_base_url()}")
    uvicorn.run(create_app(settings), host=settings.gateway_host, port=settings.gateway_port, log_level=log_level,
                access_log=False, server_header=False, log_config=None)  # None: keep the handler set above


@tokens_app.command("create")
def tokens_create(ctx: typer.Context,
                  role: Annotated[str, typer.Option(help="clinician, data-scientist, admin or monitor.")],
                  name: Annotated[str, typer.Option(help="Who or what uses it (shown in `lm tokens list`).")] = "",
                  ttl_days: Annotated[float | None, typer.Option(
                      help="Days until it expires (default LM_TOKEN_TTL_DAYS, 90); 0: never.")] = None,
                  ) -> None:
    """Create a token and print it once (only its hash is stored)."""
    from learning_machine.store.tokens import check_role, create_token

    check_role(role)
    settings = settings_of(ctx)
    days = settings.token_ttl_days if ttl_days is None else ttl_days
    token, principal = create_token(_database(settings), role, name, days)
    console.print(f"token {principal.token_id} ({principal.role}, {principal.name!r}, "
                  f"{f'valid for {days:g} days' if days else 'no expiry'}); it is shown only now:")
    out.print(token, soft_wrap=True, highlight=False)


@tokens_app.command("show")
def tokens_show(ctx: typer.Context,
                role: Annotated[str, typer.Option(help="Whose token `lm up` wrote.")] = "data-scientist") -> None:
    """Print the token `lm up` wrote for ROLE (from its tokens file, readable only by you), e.g. for curl:
    `curl -H "Authorization: Bearer $(lm tokens show)" ...`."""
    from learning_machine.store.tokens import check_role

    check_role(role)
    settings = settings_of(ctx)
    path = settings.tokens_path()
    try:
        token = str(json.loads(path.read_text())[role])
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise ConfigurationError(f"no {role} token in {path}: run `lm up` first, or create one with "
                                 f"`lm tokens create --role {role}`") from exc
    out.print(token, soft_wrap=True, highlight=False)


@tokens_app.command("list")
def tokens_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every token's id, name, role and whether it is revoked (never the token)."""
    from learning_machine.store.tokens import list_tokens

    rows = list_tokens(_database(settings_of(ctx)))
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("id", "name", "role", "created", "expires", "revoked")
    for r in rows:
        table.add_row(str(r["id"]), r["name"], r["role"], r["created_at"][:19], (r["expires_at"] or "never")[:19],
                      "yes" if r["revoked"] else "")
    out.print(table)


@tokens_app.command("revoke")
def tokens_revoke(ctx: typer.Context, token_id: Annotated[int, typer.Argument(help="Id from `lm tokens list`.")],
                  ) -> None:
    """Revoke a token: a running gateway refuses it within LM_TOKEN_CACHE_S (1 s by default)."""
    from learning_machine.store.tokens import revoke_token

    revoke_token(_database(settings_of(ctx)), token_id)
    console.print(f"token {token_id} revoked")


@tokens_app.command("import")
def tokens_import(ctx: typer.Context) -> None:
    """Register the tokens in LM_TOKENS_FILE (JSON, role -> token) that the database does not know yet
    (the Helm chart's monitor token); harmless to run again."""
    import json

    from learning_machine.store.tokens import register_tokens

    settings = settings_of(ctx)
    tokens = json.loads(settings.tokens_path().read_text())
    added = register_tokens(_database(settings), {str(k): str(v) for k, v in tokens.items()}, "imported")
    console.print(f"registered tokens for {', '.join(added)}" if added else "every token was already registered")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Apply every migration to the database (LM_DATABASE_URL, default SQLite under LM_HOME)."""
    from learning_machine.store.db import current_revision, safe_url

    settings = settings_of(ctx)
    db = _database(settings)
    console.print(f"{safe_url(settings.database_uri())} is at revision {current_revision(db.engine)}")


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """The database's schema revision (none when it was never migrated)."""
    from learning_machine.store.db import current_revision

    out.print(str(current_revision(_database(settings_of(ctx), migrate=False).engine)))


def register(app: typer.Typer) -> None:
    """Add the gateway commands to the `lm` app."""
    app.command("gateway")(gateway)
    app.add_typer(tokens_app, name="tokens")
    app.add_typer(db_app, name="db")
