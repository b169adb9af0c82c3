"""`lm plan ...`: the change-control plan (which changes the loop may make on its own, and the acceptance
criteria): check a plan file, print it, print its JSON schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from learning_machine.cli.common import console, out

plan_app = typer.Typer(help="The change-control plan: check, show, schema.", no_args_is_help=True)

PlanFile = Annotated[Path | None, typer.Argument(help="Plan file (default: the one shipped for --dataset).")]
Dataset = Annotated[str, typer.Option(help="Dataset the plan must apply to.")]


@plan_app.command("check")
def plan_check(path: PlanFile = None, dataset: Dataset = "synthetic-cohort") -> None:
    """Check a plan file against the schema and the dataset; print what it allows and requires."""
    from learning_machine.data.sources import spec_for
    from learning_machine.lifecycle.plan import plan_for

    plan = plan_for(dataset, path)
    plan.check_against(spec_for(dataset))
    a = plan.acceptance
    table = Table("clause", "requirement", title=f"{plan.plan} {plan.version} (sha256 {plan.digest[:12]})")
    table.add_row("changes without approval", ", ".join(plan.changes) or "none")
    table.add_row("better than the champion", f"{a.discrimination.metric} (or "
                  f"{', '.join(a.discrimination.also_better_on) or '-'}) by more than {a.discrimination.margin:g}")
    table.add_row("AUC not worse", f"by at most {a.discrimination.noninferiority_auc:g}")
    table.add_row("log-loss not worse", f"by at most {a.calibration.noninferiority_log_loss:g}")
    judged = {"interval": "unless its 95 % interval lies wholly outside", "point": "the estimate"}
    table.add_row("calibration slope", f"{a.calibration.slope.low:g} to {a.calibration.slope.high:g} "
                  f"({judged[a.calibration.judged_on]})")
    table.add_row("calibration intercept", f"{a.calibration.intercept.low:g} to {a.calibration.intercept.high:g} "
                  f"({judged[a.calibration.judged_on]})")
    table.add_row("subgroups", f"AUC not worse by more than {a.subgroups.noninferiority_auc:g} "
                  f"(tested from {a.subgroups.min_events} events; underpowered: {a.subgroups.underpowered})")
    for group, floors in sorted(a.subgroups.floors.items()):
        table.add_row(f"floor: {group}", ", ".join(f"{k}: AUC >= {v:g}" for k, v in sorted(floors.items()))
                      + f" ({'unless shown below by its 95 % interval' if a.subgroups.floors_judged_on == 'interval' else 'the estimate'}; from {a.subgroups.min_events} events)")
    table.add_row("rows after the change", f"at least {a.min_post_change_rows}")
    table.add_row("test rows independent", "required" if a.independent_test_rows else "not required")
    r = plan.rollback
    table.add_row("rollback", f"to the {r.to} when a new champion's realised AUC on its first {r.window_rows} "
                  f"labelled predictions is shown below {r.auc_floor:g} ({'automatic' if r.automatic else 'recommended: a person rolls back'})")
    out.print(table)
    console.print(f"plan {plan.plan} {plan.version} is valid for dataset {dataset!r}")


@plan_app.command("schema")
def plan_schema_cmd() -> None:
    """Print the plan file's JSON schema."""
    from learning_machine.lifecycle.plan import plan_schema

    out.print_json(json.dumps(plan_schema()))


def register(app: typer.Typer) -> None:
    """Add `lm plan` to the `lm` app."""
    app.add_typer(plan_app, name="plan")
