"""`lm train` and `lm models ...`: train through the pipeline, list versions, promote, roll back."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from learning_machine.cli.common import console, out, say, settings_of, token_for
from learning_machine.errors import LearningMachineError
from learning_machine.registry.tracker import tracker_for
from learning_machine.settings import Settings

models_app = typer.Typer(help="Registered model versions: list, promote, roll back.", no_args_is_help=True)

def train(
    ctx: typer.Context,
    dataset: Annotated[str | None, typer.Option(help="Built-in dataset or CSV path (default: LM_DATASET).")] = None,
    spec: Annotated[Path | None, typer.Option(help="Spec file for a CSV dataset.")] = None,
    rows: Annotated[int | None, typer.Option(min=100, help="Rows to generate (synthetic data).")] = None,
    kind: Annotated[str | None, typer.Option(help="Model kind: xgboost, logistic-regression.")] = None,
    continue_from: Annotated[str | None, typer.Option(help="Continue training a version or alias (warm start).")]
    = None,
    promote: Annotated[str, typer.Option(help="always | never | if-first (when no champion yet) | gate (when "
                                          "better than the champion on the same held-out rows).")] = "if-first",
    scenario: Annotated[str, typer.Option(help="Drift scenario for generated data.")] = "none",
    drift_start: Annotated[int, typer.Option(min=0, help="First drifted row for generated data.")] = 0,
) -> None:
    """Train (or continue training) a model: the training pipeline (retraining for --continue-from) run
    locally with kfp.local; it logs to MLflow, registers the model, and promotes it as --promote says."""
    from learning_machine.cli.pipelines import train_via_pipeline

    summary = train_via_pipeline(settings_of(ctx), dataset=dataset, spec=spec, rows=rows, kind=kind,
                                 continue_from=continue_from, promote=promote, scenario=scenario,
                                 drift_start=drift_start)
    typer.echo(json.dumps(summary, indent=2))  # plain: rich would wrap long lines inside strings


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every version of the model with its aliases and metrics."""
    settings = settings_of(ctx)
    versions = tracker_for(settings).list_versions(settings.model_name)
    if as_json:
        out.print_json(json.dumps([v.as_dict() for v in versions]))
        return
    table = Table("version", "aliases", "auc", "brier", "dataset", "created")
    for v in versions:
        table.add_row(v.version, ", ".join(v.aliases), f"{v.metrics.get('auc', float('nan')):.3f}",
                      f"{v.metrics.get('brier', float('nan')):.4f}", v.tags.get("lm.dataset", ""),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created_at)))
    out.print(table)


@models_app.command("promote")
def models_promote(ctx: typer.Context, version: Annotated[str, typer.Argument(help="Version number or alias.")],
                   reason: Annotated[str, typer.Option(help="Why (recorded on the version).")] = "manual") -> None:
    """Make a version the champion (the one that serves), serve it, and record the event."""
    _change(settings_of(ctx), "promote", version, reason)


@models_app.command("rollback")
def models_rollback(ctx: typer.Context, to: Annotated[str | None, typer.Option(
        "--to", help="Version to roll back to (default: the champion's predecessor).")] = None) -> None:
    """Undo a promotion: the champion goes back to the version it replaced (or to --to), and serves."""
    _change(settings_of(ctx), "rollback", to, "rollback")


@models_app.command("awaiting")
def models_awaiting(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Versions the change-control plan held for a person's decision (better than the champion, outside the
    plan), with the plan's reason."""
    from learning_machine.lifecycle.promotion import awaiting_approval
    from learning_machine.registry.names import GATE_CHAMPION_TAG, PLAN_REASON_TAG, PLAN_TAG

    settings = settings_of(ctx)
    versions = awaiting_approval(tracker_for(settings), settings.model_name)
    if as_json:
        out.print_json(json.dumps([v.as_dict() for v in versions]))
        return
    if not versions:
        say("no version is awaiting approval")
        return
    table = Table("version", "plan", "judged against", "why it waits")
    for v in versions:
        table.add_row(v.version, v.tags.get(PLAN_TAG, ""), v.tags.get(GATE_CHAMPION_TAG, ""),
                      v.tags.get(PLAN_REASON_TAG, ""))
    out.print(table)


@models_app.command("approve")
def models_approve(ctx: typer.Context, version: Annotated[str, typer.Argument(help="Version number.")],
                   reason: Annotated[str, typer.Option(help="Why it may serve although outside the plan "
                                                            "(recorded with your name).")],
                   by: Annotated[str, typer.Option(help="Who approves (recorded).")] = "lm") -> None:
    """Approve a version the change-control plan held: it becomes the champion and serves."""
    _decide(settings_of(ctx), version, True, by, reason)


@models_app.command("reject")
def models_reject(ctx: typer.Context, version: Annotated[str, typer.Argument(help="Version number.")],
                  reason: Annotated[str, typer.Option(help="Why it must not serve (recorded).")],
                  by: Annotated[str, typer.Option(help="Who rejects (recorded).")] = "lm") -> None:
    """Reject a version the change-control plan held: it never serves."""
    _decide(settings_of(ctx), version, False, by, reason)


def _decide(settings: Settings, version: str, approve: bool, by: str, why: str) -> None:
    from learning_machine.lifecycle.promotion import decide_approval

    result = decide_approval(settings, tracker_for(settings), version=version, approve=approve, by=by, why=why,
                             record=lambda kind, event, at: _record(settings, kind, event, at))
    console.print(f"{settings.model_name} v{version} {result['decision']}"
                  + (" and now the champion" if approve else ""))


def _change(settings: Settings, action: Literal["promote", "rollback"], version: str | None, reason: str) -> None:
    """The lifecycle's change of champion (served first, then the alias moves; a failed deployment leaves the
    champion where it was and exits non-zero), recorded in the gateway's event log when the gateway is up."""
    from learning_machine.lifecycle.promotion import change_champion

    detail = change_champion(settings, tracker_for(settings), action=action, version=version, reason=reason,
                             by="lm", record=lambda kind, event, at: _record(settings, kind, event, at))
    console.print(f"{settings.model_name} v{detail['to']} is now the champion" if action == "promote" else
                  f"{settings.model_name}: champion rolled back from v{detail['from']} to v{detail['to']}")
    deployed = detail["deployed"]
    say(deployed.get("detail") or f"served by {deployed.get('backend')}")


def _record(settings: Settings, kind: str, detail: dict[str, Any], version: str | None) -> dict[str, Any]:
    from learning_machine.clients.gateway import LearningMachineClient

    token = token_for(settings, None, role="admin") or token_for(settings, None)
    try:
        with LearningMachineClient(settings.gateway_url, token, timeout_s=settings.request_timeout_s) as client:
            client.post_event(kind, detail, version)
    except LearningMachineError as exc:
        say(f"[yellow]event not recorded[/yellow] ({exc.message})")
    return detail


@models_app.command("record")
def models_record(ctx: typer.Context, version: Annotated[str, typer.Argument(help="Version number or alias.")]
                  = "champion", token: Annotated[str | None, typer.Option(help="Gateway token (default: LM_TOKEN, "
                                                                             "else lm up's).")] = None) -> None:
    """A version's change record as JSON, from the gateway: the immutable part (its sha256 checked against the
    version's tag) and its rollout since (approval, shadow, serving, rollbacks)."""
    settings = settings_of(ctx)
    with _gateway(settings, token) as client:
        typer.echo(json.dumps(client.change_record(version), indent=2))


@models_app.command("label")
def models_label(ctx: typer.Context, version: Annotated[str, typer.Argument(help="Version number or alias.")]
                 = "champion", format: Annotated[Literal["json", "markdown", "html"], typer.Option(
                     "--format", help="json, markdown or html.")] = "markdown",
                 output: Annotated[Path | None, typer.Option("-o", "--output", help="Write it to this file.")] = None,
                 token: Annotated[str | None, typer.Option(help="Gateway token (default: LM_TOKEN, else lm up's).")]
                 = None) -> None:
    """A version's model-facts label (Sendak et al. 2020), from its change record, through the gateway."""
    settings = settings_of(ctx)
    with _gateway(settings, token) as client:
        found = client.label(version, format)
    text = json.dumps(found, indent=2) if format == "json" else str(found)
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text)
        say(f"wrote the label of {settings.model_name} {version} to {output}")


def _gateway(settings: Settings, token: str | None) -> Any:
    from learning_machine.clients.gateway import LearningMachineClient

    return LearningMachineClient(settings.gateway_url, token_for(settings, token), timeout_s=settings.request_timeout_s)


def register(app: typer.Typer) -> None:
    """Add `lm train` and `lm models` to the `lm` app."""
    app.command()(train)
    app.add_typer(models_app, name="models")
