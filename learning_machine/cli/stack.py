"""`lm up`, `lm down`, `lm status`, `lm doctor`: the embedded stack of local processes."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from learning_machine.cli.common import console, out, say, settings_of
from learning_machine.errors import ConfigurationError
from learning_machine.registry.tracker import tracker_for
from learning_machine.settings import Settings


def up(ctx: typer.Context,
       train: Annotated[bool, typer.Option(help="Train and register a first model when none is registered.")] = True,
       ) -> None:
    """Start every service in the background and make sure a champion model is registered."""
    from learning_machine.cli.serving import ensure_serving
    from learning_machine.embedded.stack import start_all

    settings = settings_of(ctx)
    start_all(settings, progress=say)
    if train:
        _ensure_champion(settings)
        ensure_serving(settings)  # the model server could not load a model that did not exist yet
    from learning_machine.embedded.stack import statuses

    _print_status(statuses(settings))  # after the models loaded: the gateway is ready now
    console.print(f"Dashboard sign-in link: lm dashboard-link   API tokens: {settings.tokens_path().resolve()}")
    console.print(f"State and logs: {settings.home.resolve()}   Stop everything with: lm down")


def dashboard_link(ctx: typer.Context,
                   role: Annotated[str, typer.Option(help="Whose token `lm up` wrote to sign in with.")]
                   = "data-scientist") -> None:
    """Print the dashboard's sign-in link with a token `lm up` wrote (readable only by you). The dashboard
    takes the token from the link into the browser session and drops it from the address bar."""
    settings = settings_of(ctx)
    path = settings.tokens_path()
    try:
        token = json.loads(path.read_text())[role]
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise ConfigurationError(f"no {role} token in {path}: run `lm up` first, or create one with "
                                 f"`lm tokens create --role {role}` and paste it in the dashboard") from exc
    out.print(f"{settings.dashboard_url}/?token={token}", soft_wrap=True, highlight=False)


def _ensure_champion(settings: Settings) -> None:
    from learning_machine.lifecycle.training import dataset_from_settings, train_and_register
    from learning_machine.registry.names import CHAMPION

    tracker = tracker_for(settings)
    tracker.health()
    current = tracker.alias_version(settings.model_name, CHAMPION)
    if current is not None:
        say(f"model {settings.model_name} v{current.version} is the champion")
        return
    say(f"no champion for {settings.model_name}: training a first model on {settings.dataset}")
    dataset = dataset_from_settings(settings)
    outcome = train_and_register(settings, tracker, dataset, promote="if-first", progress=say)
    say(f"champion: {settings.model_name} v{outcome.version.version} "
         f"(AUC {outcome.result.evaluation.metrics.get('auc', float('nan')):.3f})")


def down(ctx: typer.Context) -> None:
    """Stop every process `lm up` started."""
    from learning_machine.embedded.stack import stop_all

    stopped = stop_all(settings_of(ctx))
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def status(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False,
           ) -> None:
    """Each service, its URL and its health."""
    from learning_machine.embedded.stack import statuses

    result = statuses(settings_of(ctx))
    if as_json:
        out.print_json(json.dumps([s.as_dict() for s in result]))
    else:
        _print_status(result)
    if not all(s.ok for s in result):
        raise typer.Exit(3)


def _print_status(result: list[Any]) -> None:
    table = Table("service", "url", "state", "pid", "metrics")
    for s in result:
        if s.orphans:
            state = "[red]orphan[/red]"
        else:
            state = "[green]healthy[/green]" if s.healthy else ("[yellow]starting/unhealthy[/yellow]" if s.running
                                                               else "[red]down[/red]")
        table.add_row(s.name, s.url, state + (f" ({s.detail})" if s.detail else ""), str(s.pid or "-"),
                      s.metrics or "-")
    out.print(table)


def doctor(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False,
           ) -> None:
    """Check every configured service and log a smoke run, so you know the stack works."""
    from learning_machine.embedded.doctor import run_checks

    checks = run_checks(settings_of(ctx))
    if as_json:
        out.print_json(json.dumps([{"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks]))
        if not all(c.ok for c in checks):
            raise typer.Exit(1)
        return
    table = Table("check", "result", "detail")
    for check in checks:
        table.add_row(check.name, "[green]ok[/green]" if check.ok else "[red]FAILED[/red]", check.detail)
    out.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the stack commands to the `lm` app."""
    for command in (up, down, status, doctor):
        app.command()(command)
    app.command("dashboard-link")(dashboard_link)
