"""`lm bench`: the benchmark harness (imported only when the command runs: it is dev tooling)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from learning_machine.cli.common import console, say


def bench(quick: Annotated[bool, typer.Option(help="Smaller sizes, and the pipelines and dashboard sections "
                                                     "only when named: minutes instead of most of an hour.")] = False,
          out_dir: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path("bench-results"),
          section: Annotated[list[str] | None, typer.Option(help="Only these sections (repeatable): training, "
                                                                 "pipelines, serving, loop, dashboard.")] = None,
          profile: Annotated[bool, typer.Option(help="Sample each gateway with py-spy during the serving section's "
                                                     "single rows, 1,000-row batches and 8-client run: where its CPU "
                                                     "time goes, "
                                                     "in <out>/profiles/profiles.md. Profiled timings are not for "
                                                     "comparison (py-spy shares the cores).")] = False,
          ) -> None:
    """Run the benchmarks: report.md (tables, PNG plots), summary.md and the raw results.json."""
    from learning_machine.bench.harness import check_sections, run_benchmarks

    check_sections(section, quick=quick)
    report = run_benchmarks(out_dir, quick=quick, only=section, progress=say, profile=profile)
    console.print(f"report: {report}")


def register(app: typer.Typer) -> None:
    """Add `lm bench` to the `lm` app."""
    app.command()(bench)
