"""`lm`: the Learning Machine command line. A thin edge: it builds the settings once, calls the logic,
and turns :class:`LearningMachineError` into a one-line message and a non-zero exit code. Each command
group lives in its own module and adds itself here with ``register(app)``."""

from __future__ import annotations

import sys

import typer

from learning_machine.cli import bench, data, gateway, loop, models, pipelines, plan, serving, stack
from learning_machine.cli.common import console
from learning_machine.errors import LearningMachineError
from learning_machine.registry.config import quiet_mlflow
from learning_machine.settings import load_settings

app = typer.Typer(help="Learning Machine: a self-monitoring, self-retraining clinical model platform.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
for group in (stack, data, models, pipelines, loop, gateway, serving, plan, bench):
    group.register(app)


@app.callback()
def _main(ctx: typer.Context) -> None:
    settings = load_settings()
    quiet_mlflow(settings.request_timeout_s)
    ctx.obj = settings


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
