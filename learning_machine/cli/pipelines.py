"""`lm pipelines`: compile the KFP pipelines, run one locally (kfp.local), submit or schedule one on a
Kubeflow Pipelines server. A thin edge over ``learning_machine.runners``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from learning_machine.cli.common import console, out, say
from learning_machine.errors import ConfigurationError
from learning_machine.settings import Settings

pipelines_app = typer.Typer(help="KFP pipelines: compile, run locally, submit or schedule on Kubeflow.",
                            no_args_is_help=True)

ParamOption = Annotated[list[str] | None, typer.Option(
    "--param", "-p", help="A pipeline parameter as NAME=VALUE (repeatable); see `lm pipelines list`.")]


def parse_params(items: list[str] | None) -> dict[str, str]:
    """NAME=VALUE pairs as a dict (values stay strings; the runner converts them to the parameter types)."""
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"--param takes NAME=VALUE, got {item!r}")
        params[key.strip()] = value
    return params


def print_run(run: Any) -> None:
    """Where a pipeline run's MLflow runs and outputs are."""
    table = Table(show_header=False, box=None)
    table.add_row("pipeline", f"{run.pipeline} ({run.runner})")
    table.add_row("state", ("[green]" if run.succeeded else "[red]") + run.state + "[/]")
    if run.error:
        table.add_row("error", run.error)
    table.add_row("took", f"{run.seconds:.0f} s")
    if run.mlflow_url:
        table.add_row("MLflow parent run", run.mlflow_url)
    if run.outputs_dir:
        table.add_row("outputs", run.outputs_dir)
    if run.log_path:
        table.add_row("log", run.log_path)
    if run.steps:
        table.add_row("steps", ", ".join(f"{k}: {v.lower()}" for k, v in run.steps.items()))
    console.print(table)


@pipelines_app.command("list")
def list_pipelines() -> None:
    """The pipelines and their parameters with defaults."""
    from learning_machine.runners.base import build_pipeline, pipeline_names

    table = Table("pipeline", "parameter", "type", "default")
    for name in pipeline_names():
        spec = build_pipeline(name).component_spec
        for key, value in (spec.inputs or {}).items():
            table.add_row(name, key, str(value.type), repr(value.default))
    out.print(table)


@pipelines_app.command("compile")
def compile_cmd(
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder (default: pipelines/compiled).")] = None,
    gpu: Annotated[bool, typer.Option(help="Request a GPU for the train/retrain step.")] = False,
    retries: Annotated[int, typer.Option(min=0, help="Retries per step (with backoff).")] = 2,
) -> None:
    """Compile every pipeline to YAML (with the cluster settings: Secret/ConfigMap env, requests, retries)."""
    import dataclasses

    from learning_machine.pipelines.cluster import DEFAULT_OPTIONS
    from learning_machine.runners.base import compile_all

    options = dataclasses.replace(DEFAULT_OPTIONS, gpu=gpu, retries=retries)
    for path in compile_all(out_dir, options):
        console.print(f"wrote {path}")


@pipelines_app.command("run")
def run_cmd(ctx: typer.Context, name: Annotated[str, typer.Argument(help="training, retraining or batch_inference.")],
            param: ParamOption = None,
            verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Echo every step's log.")] = False,
            as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False) -> None:
    """Run a pipeline with the configured runner (LM_PIPELINE_RUNNER, default local: kfp.local)."""
    from learning_machine.runners.base import get_runner
    from learning_machine.runners.local import LocalRunner

    settings: Settings = ctx.obj
    runner = get_runner(settings)
    if isinstance(runner, LocalRunner):
        runner.echo = verbose
    result = runner.run(name, parse_params(param), progress=say)
    print_run(result)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    result.raise_for_state()


@pipelines_app.command("submit")
def submit_cmd(ctx: typer.Context, name: Annotated[str, typer.Argument(help="training, retraining or batch_inference.")],
               host: Annotated[str | None, typer.Option(help="Kubeflow Pipelines API URL (default LM_KFP_HOST).")]
               = None, param: ParamOption = None) -> None:
    """Upload the pipeline as a new version and start a run on a Kubeflow Pipelines server."""
    from learning_machine.runners.kubeflow import KubeflowRunner

    result = KubeflowRunner(ctx.obj, host).run(name, parse_params(param), progress=say)
    typer.echo(json.dumps(result.as_dict(), indent=2))


@pipelines_app.command("schedule")
def schedule_cmd(ctx: typer.Context,
                 name: Annotated[str, typer.Argument(help="training, retraining or batch_inference.")],
                 cron: Annotated[str, typer.Option(help="When: a cron expression, e.g. '0 3 * * *' (03:00 daily).")],
                 host: Annotated[str | None, typer.Option(help="Kubeflow Pipelines API URL (default LM_KFP_HOST).")]
                 = None, param: ParamOption = None,
                 job_name: Annotated[str | None, typer.Option("--name", help="Name of the recurring run.")] = None,
                 ) -> None:
    """Upload the pipeline and create a recurring run (one at a time, no catch-up)."""
    from learning_machine.runners.kubeflow import KubeflowRunner

    result = KubeflowRunner(ctx.obj, host).schedule(name, cron, parse_params(param), name=job_name)
    console.print(f"scheduled {name} on '{result['cron']}' as recurring run {result['recurring_run_id']}")
    typer.echo(json.dumps(result, indent=2))


def train_via_pipeline(settings: Settings, *, dataset: str | None, spec: Path | None, rows: int | None,
                       kind: str | None, continue_from: str | None, promote: str, scenario: str,
                       drift_start: int) -> dict[str, Any]:
    """`lm train`: the training pipeline run locally (the retraining pipeline, without reference data,
    for ``--continue-from``). Returns what it registered and where to look."""
    from learning_machine.data.sources import SOURCES
    from learning_machine.errors import UnknownNameError
    from learning_machine.lifecycle.promotion import PROMOTE_POLICIES
    from learning_machine.registry.tracker import tracker_for
    from learning_machine.runners.local import LocalRunner

    name = dataset or settings.dataset
    # Fail before starting anything for a dataset that cannot exist.
    if name not in SOURCES and not Path(name).exists():
        raise UnknownNameError("dataset", name, list(SOURCES))
    if promote not in PROMOTE_POLICIES:
        raise UnknownNameError("promotion policy", promote, list(PROMOTE_POLICIES))
    params: dict[str, Any] = {"source": name, "promote_policy": promote, "seed": settings.seed}
    spec_path = spec or settings.dataset_spec
    if spec_path:
        params["spec_path"] = str(Path(spec_path).resolve())
    if name in SOURCES or rows:
        params["rows"] = rows or (settings.train_rows if name == "synthetic-cohort" else 0)
    if name == "synthetic-cohort":
        params.update(scenario=scenario, drift_start=drift_start)
    elif Path(name).exists():
        params["source"] = str(Path(name).resolve())
    if continue_from:
        pipeline = "retraining"
        params.update(base_ref=continue_from, reference_source="")
    else:
        pipeline = "training"
        if kind:
            params["model_kind"] = kind
    result = LocalRunner(settings).run(pipeline, params, progress=say)
    print_run(result)
    result.raise_for_state()
    summary: dict[str, Any] = {"pipeline": result.pipeline, "state": result.state,
                               "parent_run_id": result.parent_run_id, "mlflow_run_url": result.mlflow_url,
                               "outputs": result.outputs_dir, "steps": result.steps}
    tracker = tracker_for(settings)
    for version in tracker.list_versions(settings.model_name):
        if version.tags.get("lm.pipeline_run") == result.parent_run_id:
            summary.update(run_id=version.run_id, version=version.version, aliases=version.aliases,
                           metrics=version.metrics)
            break
    return summary


def register(app: typer.Typer) -> None:
    """Add `lm pipelines` to the `lm` app."""
    app.add_typer(pipelines_app, name="pipelines")
