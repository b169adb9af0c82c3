"""`lm bench` / `make bench`: the project's benchmark harness. Each section starts what it measures on free
ports, warms up, measures the alternatives side by side in one run and returns a :class:`Section` (tables,
notes, raw numbers). The report folder gets ``report.md`` (tables and PNG plots), ``summary.md`` (the
headline table the README shows), ``results.json`` (everything, raw) and the plots. Medians, p99 and
min-max over repetitions, with ratios against an anchor: these machines are noisy, so compare within a run."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from learning_machine.bench.report import Section, Table, cpu_count, loglog_slope, timed
from learning_machine.errors import BenchmarkError, UnknownNameError

Progress = Callable[[str], None]


def bench_training(quick: bool, progress: Progress, *, sizes: list[int] | None = None,
                   kinds: tuple[str, ...] = ("xgboost", "logistic-regression")) -> Section:
    """Time to train each model kind on 10k, 100k (and in full mode 1M) generated rows: how cost grows
    with rows (rows/s and the log-log slope of time on rows)."""
    from learning_machine.data.sources import load_dataset
    from learning_machine.model.training import train_model

    sizes = sizes or ([10_000, 100_000] if quick else [10_000, 100_000, 1_000_000])

    def repeats_for(rows: int) -> int:
        # The largest size is measured once: 1M rows take tens of seconds per fit here.
        return 1 if quick or rows >= 1_000_000 else 3

    section = Section("Training time versus rows", ["model kind", "rows", "median s", "min s", "max s",
                                                     "runs", "rows/s", "x time of smallest", "held-out AUC"])
    # Warm-up, not timed: the first fit of a kind pays imports and thread-pool start-up, which would make
    # a single timed run of the smallest size look slow and flatten the slope.
    progress("training: warm-up fit of each kind on 2,000 rows")
    warm = load_dataset("synthetic-cohort", n_rows=2_000, seed=2)
    for kind in kinds:
        train_model(warm, kind=kind, seed=1)
    for rows in sizes:
        progress(f"training: generating {rows:,} rows")
        data = load_dataset("synthetic-cohort", n_rows=rows, seed=1)
        for kind in kinds:
            repeats = repeats_for(rows)
            progress(f"training {kind} on {rows:,} rows x{repeats}")
            results: list[Any] = []

            def fit(data: Any = data, kind: str = kind, results: list[Any] = results) -> None:
                results.append(train_model(data, kind=kind, seed=1))

            stats = timed(fit, repeats)
            auc = results[-1].evaluation.metrics["auc"]
            section.raw[f"{kind}/{rows}"] = {**stats, "auc": auc, "kind": kind, "rows": rows}
        del data
    slopes: dict[str, float | None] = {}
    for kind in kinds:
        points = [(v["rows"], v["median"]) for v in section.raw.values() if v["kind"] == kind]
        base = points[0][1]
        for rows, med in points:
            stats = section.raw[f"{kind}/{rows}"]
            section.rows.append([kind, f"{rows:,}", med, stats["min"], stats["max"], int(stats["n"]), rows / med,
                                 med / base, stats["auc"]])
        slopes[kind] = loglog_slope([float(p[0]) for p in points], [p[1] for p in points])
    section.raw = {"runs": section.raw, "loglog_slope": slopes, "sizes": sizes}
    growth = "; ".join(f"{k}: time ~ rows^{v:.2f}" for k, v in slopes.items() if v is not None)
    section.notes += [
        "Fit plus held-out evaluation of the whole pipeline (impute, scale, encode, model) on the synthetic "
        "cohort; 75 % of the rows are used for fitting, 25 % for the held-out AUC. After one untimed warm-up fit "
        f"per kind; sizes under 1M: median of {repeats_for(sizes[0])} run(s); 1M rows: one run.",
        f"Log-log slope of wall time on rows (1 = linear, below 1 = fixed costs still show): {growth or 'n/a'}.",
    ]
    return section


# The two pipelines the section times, each against its own steps called directly; a mode's key in
# ``raw`` (the training pipeline's keep their original names, "direct" and "kfp.local").
PIPELINE_CASES = ("training", "retraining")
PIPELINE_MODES = ("direct", "kfp.local")


def pipeline_key(case: str, mode: str) -> str:
    """The key (and table label) of ``case`` run in ``mode``: ``direct``, ``retraining kfp.local``, ..."""
    return mode if case == "training" else f"{case} {mode}"


def bench_pipelines(quick: bool, progress: Progress) -> Section:
    """Wall time of the training and the retraining pipelines under kfp.local (each step a subprocess,
    artifacts on disk) against the same step functions called directly in one process, on the same data
    and MLflow server; per step too. The retraining continues the champion each training promoted, on the
    rows after a change (concept drift) plus the original rows, and reaches the gate's decision both ways."""
    import contextlib
    import io
    import tempfile
    import uuid

    from learning_machine.data.sources import builtin_spec, load_dataset
    from learning_machine.embedded.processes import ProcessManager
    from learning_machine.embedded.stack import mlflow_service
    from learning_machine.registry.names import CHAMPION
    from learning_machine.registry.tracker import tracker_for
    from learning_machine.runners.inline import retrain_inline, train_inline
    from learning_machine.runners.local import LocalRunner
    from learning_machine.settings import Settings

    def free_port() -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def champion_copy(settings: Settings, suffix: str) -> Settings:
        """A new model whose champion is the settings' model's champion registered again (same run)."""
        tracker = tracker_for(settings)
        champion = tracker.alias_version(settings.model_name, CHAMPION)
        if champion is None or champion.run_id is None:
            raise BenchmarkError(f"the training did not promote a champion of {settings.model_name}")
        copy = settings.model_copy(update={"model_name": settings.model_name + suffix})
        tracker.register(copy.model_name, champion.run_id, metrics=champion.metrics, tags=champion.tags,
                         alias=CHAMPION)
        return copy

    rows, repeats = (1_500, 1) if quick else (5_000, 2)
    retrain_repeats = 3  # per training: a retraining takes seconds, and this machine is noisy
    # The retraining's data, as the loop exports it: the labelled rows since the change point (a cut of a
    # concept-drift stream), and the original rows regenerated as the reference (the loop's default size).
    new_rows, reference_rows, cut = (1_500 if quick else 3_000), 1_000, 500
    times: dict[str, list[float]] = {pipeline_key(c, m): [] for c in PIPELINE_CASES for m in PIPELINE_MODES}
    step_seconds: dict[str, list[dict[str, float]]] = {key: [] for key in times}
    statuses: dict[str, dict[str, str]] = {}
    gates: dict[str, list[dict[str, Any]]] = {key: [] for key in times if key.startswith("retraining")}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        settings = Settings(home=home, mlflow_port=free_port(), mlflow_workers=1)
        manager = ProcessManager(settings.run_dir)
        progress(f"starting an MLflow server on port {settings.mlflow_port}")
        manager.start(mlflow_service(settings), timeout_s=settings.startup_timeout_s, progress=progress)
        try:
            data = home / "cohort.csv"
            load_dataset("synthetic-cohort", n_rows=rows, seed=1).frame.to_csv(data, index=False)
            new = home / "after-change.csv"
            load_dataset("synthetic-cohort", n_rows=cut + new_rows, seed=2, scenario="concept-drift",
                         drift_start=cut).frame.iloc[cut:].to_csv(new, index=False)
            spec = home / "spec.yaml"
            spec.write_text(builtin_spec("synthetic-cohort").model_dump_json())
            params = {"source": str(data), "spec_path": str(spec), "seed": 1}
            retrain_params: dict[str, Any] = {
                "source": str(new), "spec_path": str(spec), "seed": 2, "reference_source": "synthetic-cohort",
                "reference_rows": reference_rows, "reference_seed": 1}
            for i in range(repeats):
                # A fresh model name per measurement and mode: each training registers a first model and
                # promotes it; the retraining of the same mode then continues that champion.
                direct = settings.model_copy(update={"model_name": f"bench-direct-{uuid.uuid4().hex[:6]}"})
                local = settings.model_copy(update={"model_name": f"bench-kfp-{uuid.uuid4().hex[:6]}"})
                progress(f"training steps called directly ({rows:,} rows, {i + 1}/{repeats})")
                started = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    done = train_inline(direct, source=str(data), spec_path=str(spec), seed=1)
                times["direct"].append(time.perf_counter() - started)
                step_seconds["direct"].append(done["step_seconds"])
                progress(f"training pipeline under kfp.local ({rows:,} rows, {i + 1}/{repeats})")
                run = LocalRunner(local).run("training", params).raise_for_state()
                times["kfp.local"].append(run.seconds)
                step_seconds["kfp.local"].append(run.step_seconds)
                statuses.setdefault("training", run.steps)

                for j in range(retrain_repeats):
                    # Each retraining on its own copy of the champion just trained (same run, same model):
                    # a retraining that promotes changes the champion the next one would start from.
                    direct_copy, local_copy = (champion_copy(s, f"-r{j + 1}") for s in (direct, local))
                    progress(f"retraining steps called directly ({new_rows:,} new rows, "
                             f"{i * retrain_repeats + j + 1}/{repeats * retrain_repeats})")
                    started = time.perf_counter()
                    with contextlib.redirect_stdout(io.StringIO()):
                        done = retrain_inline(direct_copy, **retrain_params)
                    times["retraining direct"].append(time.perf_counter() - started)
                    step_seconds["retraining direct"].append(done["step_seconds"])
                    gates["retraining direct"].append({"promoted": done["promoted"], "reason": done["reason"]})
                    progress(f"retraining pipeline under kfp.local ({new_rows:,} new rows, "
                             f"{i * retrain_repeats + j + 1}/{repeats * retrain_repeats})")
                    run = LocalRunner(local_copy).run("retraining", retrain_params).raise_for_state()
                    times["retraining kfp.local"].append(run.seconds)
                    step_seconds["retraining kfp.local"].append(run.step_seconds)
                    statuses.setdefault("retraining", run.steps)
                    comparison = Path(run.outputs_dir or "") / "evaluate" / "comparison"
                    gate = json.loads(comparison.read_text())["gate"]
                    gates["retraining kfp.local"].append({"promoted": gate["promote"], "reason": gate["reason"]})
        finally:
            manager.stop("mlflow")
    labels = {"training": f"{rows:,}", "retraining": f"{new_rows:,} new + {reference_rows:,} reference"}
    return pipelines_section(times, step_seconds, statuses=statuses, gates=gates, labels=labels)


def pipelines_section(times: dict[str, list[float]], step_seconds: dict[str, list[dict[str, float]]], *,
                      statuses: dict[str, dict[str, str]], gates: dict[str, list[dict[str, Any]]],
                      labels: dict[str, str]) -> Section:
    """The pipelines section from its measurements: wall times per mode (keys of :func:`pipeline_key`),
    each run's seconds per step, the kfp.local steps' states per case, the retraining gate's verdicts."""
    section = Section("Pipelines: kfp.local versus direct calls",
                      ["mode", "rows", "median s", "min s", "max s", "overhead ratio"])
    for case in PIPELINE_CASES:
        base_key = pipeline_key(case, "direct")
        if not times.get(base_key):
            continue
        base = statistics.median(times[base_key])
        for mode in PIPELINE_MODES:
            key = pipeline_key(case, mode)
            values = times.get(key) or []
            if not values:
                continue
            med = statistics.median(values)
            section.rows.append([key, labels.get(case, "-"), med, min(values), max(values), med / base])
            section.raw[key] = {"median": med, "min": min(values), "max": max(values), "n": len(values)}
        local = times.get(pipeline_key(case, "kfp.local"))
        if local:
            section.raw["overhead_ratio" if case == "training" else f"{case}_overhead_ratio"] = (
                statistics.median(local) / base)
    if "training" in statuses:
        section.raw["steps"] = statuses["training"]
    if "retraining" in statuses:
        section.raw["retraining_steps"] = statuses["retraining"]
    # Median seconds of each step, per mode: where the kfp.local time goes, next to the same call made directly.
    medians = {key: {step: statistics.median(run[step] for run in runs if step in run)
                     for step in dict.fromkeys(s for run in runs for s in run)}
               for key, runs in step_seconds.items() if runs}
    section.raw["step_seconds"] = medians
    section.raw["gates"] = gates
    for case in PIPELINE_CASES:
        by_call = medians.get(pipeline_key(case, "direct"), {})
        by_task = medians.get(pipeline_key(case, "kfp.local"), {})
        if not by_task:
            continue
        table = Table(f"{case.capitalize()} pipeline per step (median s)", ["step", "direct", "kfp.local", "difference"])
        for step in dict.fromkeys([*by_task, *by_call]):
            d, k = by_call.get(step), by_task.get(step)
            table.rows.append([step, d if d is not None else "-", k if k is not None else "-",
                               k - d if d is not None and k is not None else "-"])
        table.rows.append(["sum of steps", sum(by_call.values()), sum(by_task.values()),
                           sum(by_task.values()) - sum(by_call.values())])
        section.tables.append(table)
    verdicts = {key: sorted({"promoted" if g["promoted"] else "refused" for g in found})
                for key, found in gates.items() if found}
    steps = len(section.raw.get("steps", {})) or 1
    training_local = times.get("kfp.local")
    per_task = ((statistics.median(training_local) - statistics.median(times["direct"])) / steps
                if training_local and times.get("direct") else float("nan"))
    section.notes += [
        f"Same CSV, same MLflow server, same step functions (ingest, validate, preprocess, train, evaluate, "
        f"register, promote, deploy; parent run opened and closed). kfp.local runs each of the {steps} training "
        f"tasks as its own process, forked from warm interpreters that import pandas, scikit-learn and MLflow "
        f"once (learning_machine.runners.warm), and reads/writes its artifacts on disk: about {per_task:.1f} s "
        f"per task here. {len(times.get('direct', []))} run(s) per mode.",
        f"Retraining, {len(times.get('retraining direct', []))} run(s) per mode: each continues its own copy "
        "of the champion its mode's training just promoted (the same run registered again under a new name, "
        "so that every retraining starts from the same model), on the rows after a concept-drift change point "
        "(the loop's post-change export) plus the original rows regenerated as the reference; it trains two "
        "candidates, evaluates the better against the champion on the same held-out rows and registers it, "
        "and promotes and deploys it if the gate passes. Gate verdicts: "
        + ("; ".join(f"{key} {', '.join(v)}" for key, v in verdicts.items()) or "-") + ". Both run after "
        "their mode's training in the same process, as in the learning loop's monitor: the direct calls with "
        "the imports that training paid, kfp.local with the warm interpreters the local runner keeps for a "
        "process's later runs. The difference column of "
        "the per-step tables is what each task costs beyond the same call made directly.",
    ]
    return section


def bench_serving(quick: bool, progress: Progress) -> Section:
    """Single-row latency and throughput of every way to serve the same model, and explanation latency
    (learning_machine.bench.serving starts and stops every server on free ports)."""
    from learning_machine.bench import serving

    section: Section = serving.to_section(serving.run(quick, progress), quick)
    return section


def bench_loop(quick: bool, progress: Progress) -> Section:
    """Detection delay, false alarms, the CUSUM bound and recovery AUC per drift scenario."""
    from learning_machine.bench import loop

    section: Section = loop.bench_loop(quick, progress)
    return section


def bench_dashboard(quick: bool, progress: Progress) -> Section:
    """Page load of each dashboard page with 10,000 stored predictions (AppTest and headless Chromium)."""
    from learning_machine.bench import dashboard

    section: Section = dashboard.to_section(dashboard.run(quick, progress), quick)
    return section


SECTIONS: dict[str, Callable[[bool, Progress], Section]] = {"training": bench_training,
                                                             "pipelines": bench_pipelines,
                                                             "serving": bench_serving,
                                                             "loop": bench_loop,
                                                             "dashboard": bench_dashboard}


# Sections whose own start-up and measurement take minutes whatever the size (an MLflow server and two
# pipeline runs; the dashboard needs every service and thousands of stored predictions): `--quick` leaves
# them out unless they are named with --section, so that the quick run stays under five minutes here.
FULL_ONLY = ("pipelines", "dashboard")


def check_sections(only: list[str] | None, *, quick: bool = False) -> list[str]:
    """The sections to run, in registry order; an unknown name fails with the list of valid ones."""
    for name in only or []:
        if name not in SECTIONS:
            raise UnknownNameError("benchmark section", name, list(SECTIONS))
    if only:
        return [name for name in SECTIONS if name in only]
    return [name for name in SECTIONS if not (quick and name in FULL_ONLY)]


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": cpu_count()}


def run_benchmarks(out_dir: Path, *, quick: bool = False, only: list[str] | None = None,
                   progress: Progress = print, profile: bool = False) -> Path:
    """Run the sections and write the report to ``out_dir`` (again after each section, so a failure or an
    interruption keeps what was measured). A section that fails is reported and the others still run;
    then :class:`BenchmarkError` names the failed ones. ``profile``: the serving section samples its
    gateways with py-spy into ``out_dir/profiles`` (:mod:`learning_machine.bench.profile`)."""
    if not profile:
        return _run_sections(out_dir, quick=quick, only=only, progress=progress)
    from learning_machine.bench.profile import PROFILE_ENV

    before = os.environ.get(PROFILE_ENV)
    os.environ[PROFILE_ENV] = str((out_dir / "profiles").resolve())
    try:  # for this run only: a later run in the same process is not profiled unless asked
        return _run_sections(out_dir, quick=quick, only=only, progress=progress)
    finally:
        if before is None:
            os.environ.pop(PROFILE_ENV, None)
        else:
            os.environ[PROFILE_ENV] = before


def _run_sections(out_dir: Path, *, quick: bool, only: list[str] | None, progress: Progress) -> Path:
    names = check_sections(only, quick=quick)
    skipped = [name for name in SECTIONS if name not in names]
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    clock = time.perf_counter()
    done: dict[str, Section] = {}
    for i, name in enumerate(names, 1):
        progress(f"benchmark section {i}/{len(names)}: {name} ({time.perf_counter() - clock:.0f} s so far)")
        section_started = time.perf_counter()
        try:
            section = SECTIONS[name](quick, progress)
        except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others' results
            section = Section(name, [], error=f"{type(exc).__name__}: {exc}",
                              notes=["Traceback (last lines): " + " | ".join(
                                  traceback.format_exc().strip().splitlines()[-6:])])
            progress(f"section {name} FAILED: {type(exc).__name__}: {exc}")
        section.seconds = time.perf_counter() - section_started
        section.load = _load()
        add_figures(name, section, out_dir, progress)
        done[name] = section
        progress(f"section {name} done in {section.seconds:.0f} s")
        report = write_report(out_dir, done, quick=quick, started=started,
                              elapsed=time.perf_counter() - clock, skipped=skipped)
    elapsed = time.perf_counter() - clock
    progress(f"benchmarks finished in {elapsed:.0f} s ({elapsed / 60:.1f} min): {report}")
    failed = [name for name, section in done.items() if section.error]
    if failed:
        raise BenchmarkError(f"benchmark section(s) failed: {', '.join(failed)}; the others are in {report}",
                             detail={"failed": failed, "report": str(report)})
    return report


def add_figures(name: str, section: Section, out_dir: Path, progress: Progress = print) -> None:
    """Draw the section's plots into ``out_dir`` (PNG) and list them on the section; a plot that fails is
    a note, not a lost report."""
    from learning_machine.bench import plots as bench_plots

    try:
        section.figures = bench_plots.figures(name, section, out_dir)
    except Exception as exc:  # noqa: BLE001 - plotting is best effort; the numbers are in the tables
        section.notes.append(f"Plots failed: {type(exc).__name__}: {exc}")
        progress(f"plots of {name} failed: {exc}")


def write_report(out_dir: Path, sections: dict[str, Section], *, quick: bool, started: float,
                 elapsed: float, skipped: list[str] | None = None) -> Path:
    """Write ``report.md``, ``summary.md`` and ``results.json`` for ``sections`` (name -> section);
    ``skipped`` names the sections this run left out."""
    from learning_machine.bench.summary import headlines

    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    command = f"make bench{'-quick' if quick else ''}"
    when = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started))
    provenance = (f"Measured {when} by `{command}` (`lm bench{' --quick' if quick else ''}`) in {elapsed / 60:.1f} min "
                  f"on {machine['platform']}, {machine['cpus']} CPU(s) ({machine['processor']}), "
                  f"Python {machine['python']}.")
    summary = Table("", ["measurement", "result", "versus the anchor"])
    for name, section in sections.items():
        try:
            summary.rows += headlines(name, section)
        except Exception as exc:  # noqa: BLE001 - a summary row is best effort; the section's table stands
            summary.rows.append([f"{name}: summary failed", f"{type(exc).__name__}: {exc}", "-"])
    sections_run = ", ".join(f"{n} ({s.seconds or 0:.0f} s{', FAILED' if s.error else ''})"
                             for n, s in sections.items())
    loads = [s.load for s in sections.values() if s.load is not None]
    if loads:
        provenance += (f" Load average (1 min) at the end of each section: {', '.join(f'{v:.1f}' for v in loads)} "
                       f"on {machine['cpus']} CPU(s) (above the CPU count, other work was competing).")
    not_run = (f" Not run: {', '.join(skipped)} (" + ("`make bench` runs every section; `lm bench --quick --section "
               "NAME` runs one at quick size)" if quick else "not asked for") + ").") if skipped else ""
    header = [f"# Learning Machine benchmarks ({'quick' if quick else 'full'})", "", provenance, "",
              f"Sections: {sections_run}.{not_run} Raw numbers: `results.json`. Ratios are within this run "
              "(the machine is shared and noisy: compare ratios, not absolute numbers across runs).", "",
              "## Summary", "", summary.markdown(), ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(header) + "\n" + "\n".join(s.markdown() for s in sections.values()))
    (out_dir / "summary.md").write_text(provenance + "\n\n" + summary.markdown())
    (out_dir / "results.json").write_text(json.dumps(
        {"quick": quick, "started": started, "elapsed_s": elapsed, "command": command, "machine": machine,
         "skipped": skipped or [],
         "summary": summary.rows,
         "sections": {name: {"title": s.title, "columns": s.columns, "rows": s.rows, "tables": [
             {"title": t.title, "columns": t.columns, "rows": t.rows} for t in s.tables], "raw": s.raw,
             "notes": s.notes, "figures": [f for f, _ in s.figures], "seconds": s.seconds, "load": s.load,
             "error": s.error}
             for name, s in sections.items()}}, indent=2, default=str))
    return report


def _load() -> float | None:
    """The 1-minute load average: other work on a shared machine shows in every number."""
    import os

    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None
