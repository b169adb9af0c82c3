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
                                                     "1,000-row batches and 8-client run: where its CPU time goes, "
                                                     "in <out>/profiles/profiles.md. Profiled timings are not for "
                                                     "comparison (py-spy shares the cores).")] = False,
          ) -> None:
    """Run the benchmarks: report.md (tables, PNG plots), summary.md and the raw results.json."""
    import os

    from learning_machine.bench.harness import check_sections, run_benchmarks
    from learning_machine.bench.profile import PROFILE_ENV

    check_sections(section, quick=quick)
    if profile:
        os.environ[PROFILE_ENV] = str((out_dir / "profiles").resolve())
    report = run_benchmarks(out_dir, quick=quick, only=section, progress=say)
    console.print(f"report: {report}")


def register(app: typer.Typer) -> None:
    """Add `lm bench` to the `lm` app."""
    app.command()(bench)
