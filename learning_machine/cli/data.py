"""`lm data ...`: generate the synthetic cohort, list its drift scenarios, validate a CSV against a spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from learning_machine.cli.common import console, out

data_app = typer.Typer(help="Datasets: generate, validate, list scenarios.", no_args_is_help=True)

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


def register(app: typer.Typer) -> None:
    """Add `lm data` to the `lm` app."""
    app.add_typer(data_app, name="data")
