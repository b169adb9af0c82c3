"""`lm`: the Learning Machine command line. A thin edge: it builds the settings once, calls the logic,
and turns :class:`LearningMachineError` into a one-line message and a non-zero exit code."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from learning_machine.cli.gateway import register as register_gateway_commands
from learning_machine.cli.pipelines import pipelines_app
from learning_machine.cli.serving import register as register_serving_commands
from learning_machine.errors import LearningMachineError
from learning_machine.registry.config import quiet_mlflow
from learning_machine.settings import Settings, load_settings

app = typer.Typer(help="Learning Machine: a self-monitoring, self-retraining clinical model platform.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Datasets: generate, validate, list scenarios.", no_args_is_help=True)
models_app = typer.Typer(help="Registered model versions: list, promote, roll back.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(pipelines_app, name="pipelines")
register_gateway_commands(app)  # lm gateway, lm tokens, lm db
register_serving_commands(app)  # lm serve, lm deploy, lm manifests

console = Console(stderr=True)
out = Console()


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@app.callback()
def _main(ctx: typer.Context) -> None:
    settings = load_settings()
    quiet_mlflow(settings.request_timeout_s)
    ctx.obj = settings


def _say(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")


def _tracker(settings: Settings) -> Any:
    from learning_machine.registry.tracker import Tracker

    return Tracker(settings.tracking_uri, timeout_s=settings.request_timeout_s)


# -- services ----------------------------------------------------------------------------------------
@app.command()
def up(ctx: typer.Context,
       train: Annotated[bool, typer.Option(help="Train and register a first model when none is registered.")] = True,
       ) -> None:
    """Start every service in the background and make sure a champion model is registered."""
    from learning_machine.cli.serving import ensure_serving
    from learning_machine.embedded.stack import start_all

    settings = _settings(ctx)
    start_all(settings, progress=_say)
    if train:
        _ensure_champion(settings)
        ensure_serving(settings)  # the model server could not load a model that did not exist yet
    from learning_machine.embedded.stack import statuses

    _print_status(statuses(settings))  # after the models loaded: the gateway is ready now
    console.print(f"State and logs: {settings.home.resolve()}   Stop everything with: lm down")


def _ensure_champion(settings: Settings) -> None:
    from learning_machine.lifecycle.service import dataset_from_settings, train_and_register
    from learning_machine.registry.names import CHAMPION

    tracker = _tracker(settings)
    tracker.health()
    current = tracker.alias_version(settings.model_name, CHAMPION)
    if current is not None:
        _say(f"model {settings.model_name} v{current.version} is the champion")
        return
    _say(f"no champion for {settings.model_name}: training a first model on {settings.dataset}")
    dataset = dataset_from_settings(settings)
    outcome = train_and_register(settings, tracker, dataset, promote="if-first", progress=_say)
    _say(f"champion: {settings.model_name} v{outcome.version.version} "
         f"(AUC {outcome.result.evaluation.metrics.get('auc', float('nan')):.3f})")


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop every process `lm up` started."""
    from learning_machine.embedded.stack import stop_all

    stopped = stop_all(_settings(ctx))
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False,
           ) -> None:
    """Each service, its URL and its health."""
    from learning_machine.embedded.stack import statuses

    result = statuses(_settings(ctx))
    if as_json:
        out.print_json(json.dumps([s.as_dict() for s in result]))
    else:
        _print_status(result)
    if not all(s.healthy for s in result):
        raise typer.Exit(3)


def _print_status(result: list[Any]) -> None:
    table = Table("service", "url", "state", "pid")
    for s in result:
        state = "[green]healthy[/green]" if s.healthy else ("[yellow]starting/unhealthy[/yellow]" if s.running
                                                           else "[red]down[/red]")
        table.add_row(s.name, s.url, state + (f" ({s.detail})" if s.detail else ""), str(s.pid or "-"))
    out.print(table)


@app.command()
def doctor(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False,
           ) -> None:
    """Check every configured service and log a smoke run, so you know the stack works."""
    from learning_machine.embedded.doctor import run_checks

    checks = run_checks(_settings(ctx))
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


# -- data --------------------------------------------------------------------------------------------
@data_app.command("generate")
def data_generate(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="CSV file to write.")] = Path("cohort.csv"),
    rows: Annotated[int, typer.Option(min=1, help="Number of records.")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same rows).")] = 0,
    scenario: Annotated[str, typer.Option(help="Drift scenario (see `lm data scenarios`).")] = "none",
    drift_start: Annotated[int, typer.Option(min=0, help="First row the scenario affects.")] = 0,
    severity: Annotated[float, typer.Option(min=0.0, help="Scale of the shift (1 = documented size).")] = 1.0,
    with_truth: Annotated[bool, typer.Option(help="Add true_risk and drifted columns (ground truth).")] = False,
) -> None:
    """Generate synthetic-cohort records, optionally with a drift scenario from a chosen row."""
    from learning_machine.data.synthetic import generate_cohort

    cohort = generate_cohort(rows, seed=seed, scenario=scenario, drift_start=drift_start, severity=severity)
    frame = cohort.frame.copy()
    if with_truth:
        frame["true_risk"] = cohort.true_risk
        frame["drifted"] = cohort.drifted
    out_path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_path, index=False)
    console.print(f"wrote {len(frame):,} records to {out_path} (scenario {scenario} from row {drift_start}, "
                  f"outcome rate {frame['outcome'].mean():.3f})")


@data_app.command("scenarios")
def data_scenarios() -> None:
    """The drift scenarios of the synthetic cohort."""
    from learning_machine.data.synthetic import describe_scenarios

    table = Table("scenario", "what it shifts")
    for name, text in describe_scenarios().items():
        table.add_row(name, text)
    out.print(table)


@data_app.command("validate")
def data_validate(
    path: Annotated[Path, typer.Argument(help="CSV file to check.")],
    spec: Annotated[Path | None, typer.Option(help="Spec file (default: the built-in --dataset's).")] = None,
    dataset: Annotated[str, typer.Option(help="Built-in dataset whose spec to use.")] = "synthetic-cohort",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check a CSV file against a dataset spec and print its data-quality report."""
    import pandas as pd

    from learning_machine.data.sources import spec_for
    from learning_machine.errors import DatasetError

    the_spec = spec_for(dataset, spec)
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"cannot read {str(path)!r}: {exc}") from exc
    report = the_spec.quality(frame)
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
    else:
        out.print(f"{path}: {report.n_rows:,} rows against spec {the_spec.name!r}")
        for key, value in report.as_dict().items():
            if value not in ({}, [], 0, None) and key not in ("dataset", "n_rows"):
                out.print(f"  {key}: {value}")
    if report.missing_columns or report.invalid_cells:
        raise typer.Exit(1)


# -- training and models -----------------------------------------------------------------------------
@app.command()
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

    summary = train_via_pipeline(_settings(ctx), dataset=dataset, spec=spec, rows=rows, kind=kind,
                                 continue_from=continue_from, promote=promote, scenario=scenario,
                                 drift_start=drift_start)
    typer.echo(json.dumps(summary, indent=2))  # plain: rich would wrap long lines inside strings


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every version of the model with its aliases and metrics."""
    settings = _settings(ctx)
    versions = _tracker(settings).list_versions(settings.model_name)
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
    """Make a version the champion (the one that serves)."""
    settings = _settings(ctx)
    tracker = _tracker(settings)
    before = tracker.alias_version(settings.model_name, "champion")
    info = tracker.promote(settings.model_name, version, reason=reason)
    console.print(f"{settings.model_name} v{info.version} is now the champion")
    _serve_and_record(settings, info.version, "promoted", {"from": before.version if before else None,
                                                            "to": info.version, "reason": reason, "by": "lm"})


@models_app.command("rollback")
def models_rollback(ctx: typer.Context, to: Annotated[str | None, typer.Option(
        "--to", help="Version to roll back to (default: the champion's predecessor).")] = None) -> None:
    """Undo a promotion: the champion goes back to the version it replaced (or to --to)."""
    settings = _settings(ctx)
    old, new = _tracker(settings).rollback(settings.model_name, to)
    console.print(f"{settings.model_name}: champion rolled back from v{old.version} to v{new.version}")
    _serve_and_record(settings, new.version, "rolled-back", {"from": old.version, "to": new.version, "by": "lm"})


def _serve_and_record(settings: Settings, version: str, event: str, detail: dict[str, Any]) -> None:
    """After the champion alias moved: serve that version (through the deployer) and record the event in
    the gateway's event log. Either may be unavailable; the registry change stands and we say so."""
    from learning_machine.clients.gateway import LearningMachineClient
    from learning_machine.deployers import get_deployer
    from learning_machine.embedded.processes import is_healthy
    from learning_machine.embedded.stack import effective_deployer

    deployer_name = effective_deployer(settings)
    if deployer_name == "local" and not is_healthy(f"{settings.model_server_base_url()}/v2/health/live"):
        _say("the local model server is not running; it serves the champion when it next starts")
    else:
        result = get_deployer(settings, deployer_name).deploy(settings.model_name, version)
        _say(result.detail)
        detail = {**detail, "deployed": result.as_dict()}
    token = _token(settings, None, role="admin") or _token(settings, None)
    try:
        with LearningMachineClient(settings.gateway_url, token, timeout_s=settings.request_timeout_s) as client:
            client.post_event(event, detail, version)
    except LearningMachineError as exc:
        _say(f"[yellow]event not recorded[/yellow] ({exc.message})")


# -- the data source ---------------------------------------------------------------------------------
def _token(settings: Settings, token: str | None, role: str = "data-scientist") -> str | None:
    """An explicit token, else the one `lm up` wrote for ``role``."""
    if token:
        return token
    try:
        return str(json.loads(settings.tokens_path().read_text())[role])
    except (FileNotFoundError, KeyError, ValueError):
        return None


@app.command()
def stream(
    ctx: typer.Context,
    rows: Annotated[int, typer.Option(min=1, help="Records to send.")] = 100,
    batch: Annotated[int, typer.Option(min=1, help="Records per request (N at once).")] = 1,
    rate: Annotated[float | None, typer.Option(help="Rows per second (simulation); default: as fast as possible.")]
    = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    scenario: Annotated[str, typer.Option(help="Drift scenario (see `lm data scenarios`).")] = "none",
    drift_start: Annotated[int, typer.Option(min=0, help="Row from which the scenario applies.")] = 0,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 1,
    csv: Annotated[Path | None, typer.Option(help="Send the rows of a CSV (with the dataset's columns) instead.")]
    = None,
    outcome_delay_rows: Annotated[int | None, typer.Option(help="Send each outcome this many rows later.")] = None,
    outcome_delay_s: Annotated[float | None, typer.Option(help="... or this many seconds later.")] = None,
    outcomes: Annotated[bool, typer.Option(help="Send outcomes at all.")] = True,
    gateway: Annotated[str | None, typer.Option(help="Gateway URL (default: the embedded one).")] = None,
    token: Annotated[str | None, typer.Option(envvar="LM_TOKEN", help="API token (default: from lm up's tokens).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Send records to the gateway as they would arrive in a clinic, outcomes later. Ctrl-C stops cleanly."""
    import uuid

    import pandas as pd

    from learning_machine.clients.gateway import LearningMachineClient
    from learning_machine.loop.stream import StreamPlan, generated_records, records_from_frame, run_stream

    settings = _settings(ctx)
    if outcome_delay_rows is None and outcome_delay_s is None:
        outcome_delay_rows = 50
    plan = StreamPlan(rows=rows, batch_size=batch, rate=rate, duration_s=duration,
                      outcome_delay_rows=outcome_delay_rows, outcome_delay_s=outcome_delay_s, send_outcomes=outcomes)
    if csv is not None:
        from learning_machine.data.sources import spec_for

        spec = spec_for(settings.dataset, settings.dataset_spec)
        source = records_from_frame(pd.read_csv(csv), spec.record_id.name, spec.target.name)
    else:
        # A fresh id prefix per stream, so a second stream adds patients instead of colliding with the first.
        source = generated_records(rows, seed=seed, scenario=scenario, drift_start=drift_start,
                                   id_prefix=f"S{uuid.uuid4().hex[:6]}-")
    url = gateway or settings.gateway_url
    _say(f"streaming {rows:,} rows to {url} (scenario {scenario} from row {drift_start}, "
         f"{f'{rate:.1f} rows/s' if rate else 'as fast as possible'}, batches of {batch})")
    with LearningMachineClient(url, _token(settings, token), timeout_s=settings.request_timeout_s * 3) as client:
        report = run_stream(client, source, plan, progress=_say)
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
    console.print(report.summary())
    if report.stopped_by_error:
        raise typer.Exit(1)
    if report.interrupted:
        raise typer.Exit(130)


@app.command()
def monitor(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option(help="Read the feed once, assess, decide, and exit.")] = False,
    interval: Annotated[float | None, typer.Option(help="Seconds between reads (default LM_MONITOR_INTERVAL_S).")]
    = None,
    gateway: Annotated[str | None, typer.Option(help="Gateway URL (default: the embedded one).")] = None,
    token: Annotated[str | None, typer.Option(envvar="LM_TOKEN", help="Data-scientist API token.")] = None,
) -> None:
    """Run the learning loop's monitor: windows of predictions -> drift, quality, performance -> policy ->
    retraining through the pipeline runner. Serves /health on LM_MONITOR_PORT. Stops on Ctrl-C or SIGTERM."""
    import signal
    import threading

    from learning_machine.clients.gateway import LearningMachineClient
    from learning_machine.loop.service import LoopService, serve_health

    settings = _settings(ctx)
    client = LearningMachineClient(gateway or settings.gateway_url, _token(settings, token),
                                   timeout_s=settings.request_timeout_s * 3)
    service = LoopService(settings, client, progress=_say)
    if once:
        decision = service.step()
        console.print(json.dumps({"health": service.health(), "decision": decision.as_dict() if decision else None},
                                 default=str))
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    health = serve_health(service, settings.monitor_host, settings.monitor_port)
    _say(f"monitor reading {client.url} every {interval or settings.monitor_interval_s:g} s; "
         f"health at {settings.monitor_health_url}/health")
    try:
        service.run(interval or settings.monitor_interval_s, stop)
    except KeyboardInterrupt:
        pass
    finally:
        health.shutdown()
        client.close()
    _say(f"monitor stopped after {service.steps} step(s), {service.monitor.next_window_id - 1} window(s)")


# -- benchmarks --------------------------------------------------------------------------------------
@app.command()
def bench(quick: Annotated[bool, typer.Option(help="Smaller sizes, and the pipelines and dashboard sections "
                                                     "only when named: minutes instead of most of an hour.")] = False,
          out_dir: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path("bench-results"),
          section: Annotated[list[str] | None, typer.Option(help="Only these sections (repeatable): training, "
                                                                 "pipelines, serving, loop, dashboard.")] = None
          ) -> None:
    """Run the benchmarks: report.md (tables, PNG plots), summary.md and the raw results.json."""
    from learning_machine.bench.harness import check_sections, run_benchmarks

    check_sections(section, quick=quick)
    report = run_benchmarks(out_dir, quick=quick, only=section, progress=_say)
    console.print(f"report: {report}")


def main() -> None:
    """Entry point: the CLI with the platform's errors printed as one clear line."""
    try:
        app()
    except LearningMachineError as exc:
        console.print(f"[red]error:[/red] {exc.message}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
