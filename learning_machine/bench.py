"""`lm bench` / `make bench`: the project's benchmark harness. Each section measures something side by
side in one run and returns rows for a Markdown table; the report folder gets `report.md` and the raw
`results.json`. Medians and min-max over repetitions: these machines are noisy, so compare within a run."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Progress = Callable[[str], None]


@dataclass
class Section:
    """One benchmark section: a title, a table and notes."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in self.rows]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Wall times of ``repeats`` calls: median, min, max (seconds)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": float(len(times))}


def bench_training(quick: bool, progress: Progress) -> Section:
    """Time to train each model kind on 10k and 100k generated rows (how cost grows with rows)."""
    from learning_machine.data.sources import load_dataset
    from learning_machine.training import train_model

    sizes = [10_000, 100_000]
    repeats = 1 if quick else 3
    section = Section("Training time versus rows", ["model kind", "rows", "median s", "min s", "max s",
                                                     "rows/s", "held-out AUC"])
    for kind in ("xgboost", "logistic-regression"):
        for rows in sizes:
            data = load_dataset("synthetic-cohort", n_rows=rows, seed=1)
            progress(f"training {kind} on {rows:,} rows x{repeats}")
            results: list[Any] = []

            def fit(data: Any = data, kind: str = kind, results: list[Any] = results) -> None:
                results.append(train_model(data, kind=kind, seed=1))

            stats = timed(fit, repeats)
            auc = results[-1].evaluation.metrics["auc"]
            section.rows.append([kind, f"{rows:,}", stats["median"], stats["min"], stats["max"],
                                 rows / stats["median"], auc])
            section.raw[f"{kind}/{rows}"] = {**stats, "auc": auc}
    section.notes.append(f"Fit plus held-out evaluation of the whole pipeline (impute, scale, encode, model); "
                         f"{repeats} repetition(s) each; 75 % of the rows are used for fitting.")
    return section


def bench_pipelines(quick: bool, progress: Progress) -> Section:
    """Wall time of the training pipeline under kfp.local (each step a subprocess, artifacts on disk)
    against the same step functions called directly in one process, on the same data and MLflow server."""
    import contextlib
    import io
    import tempfile
    import uuid

    from learning_machine.data.sources import builtin_spec, load_dataset
    from learning_machine.embedded import mlflow_service
    from learning_machine.runners.inline import train_inline
    from learning_machine.runners.local import LocalRunner
    from learning_machine.services import ProcessManager
    from learning_machine.settings import Settings

    def free_port() -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    rows, repeats = (1_500, 1) if quick else (5_000, 2)
    section = Section("Training pipeline: kfp.local versus direct calls",
                      ["mode", "rows", "median s", "min s", "max s", "overhead ratio"])
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        settings = Settings(home=home, mlflow_port=free_port(), mlflow_workers=1)
        manager = ProcessManager(settings.run_dir)
        progress(f"starting an MLflow server on port {settings.mlflow_port}")
        manager.start(mlflow_service(settings), timeout_s=settings.startup_timeout_s, progress=progress)
        try:
            data = home / "cohort.csv"
            load_dataset("synthetic-cohort", n_rows=rows, seed=1).frame.to_csv(data, index=False)
            spec = home / "spec.yaml"
            spec.write_text(builtin_spec("synthetic-cohort").model_dump_json())
            params = {"source": str(data), "spec_path": str(spec), "seed": 1}
            times: dict[str, list[float]] = {"direct": [], "kfp.local": []}
            for i in range(repeats):
                # A fresh model name per measurement: both paths register a first model and promote it.
                direct = settings.model_copy(update={"model_name": f"bench-direct-{uuid.uuid4().hex[:6]}"})
                progress(f"training steps called directly ({rows:,} rows, {i + 1}/{repeats})")
                started = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    train_inline(direct, source=str(data), spec_path=str(spec), seed=1)
                times["direct"].append(time.perf_counter() - started)
                local = settings.model_copy(update={"model_name": f"bench-kfp-{uuid.uuid4().hex[:6]}"})
                progress(f"training pipeline under kfp.local ({rows:,} rows, {i + 1}/{repeats})")
                run = LocalRunner(local).run("training", params).raise_for_state()
                times["kfp.local"].append(run.seconds)
                section.raw.setdefault("steps", run.steps)
        finally:
            manager.stop("mlflow")
    base = statistics.median(times["direct"])
    for mode, values in times.items():
        med = statistics.median(values)
        section.rows.append([mode, f"{rows:,}", med, min(values), max(values), med / base])
        section.raw[mode] = {"median": med, "min": min(values), "max": max(values), "n": len(values)}
    steps = len(section.raw.get("steps", {})) or 1
    section.raw["overhead_ratio"] = statistics.median(times["kfp.local"]) / base
    section.notes.append(
        f"Same CSV, same MLflow server, same step functions (ingest, validate, preprocess, train, evaluate, "
        f"register, promote, deploy; parent run opened and closed). kfp.local runs each of the {steps} tasks "
        f"as a fresh subprocess of this interpreter, so each pays Python + MLflow + scikit-learn imports and "
        f"reads/writes its artifacts on disk: about "
        f"{(statistics.median(times['kfp.local']) - base) / steps:.1f} s per task here. {repeats} repetition(s).")
    return section


def bench_serving(quick: bool, progress: Progress) -> Section:
    """Single-row latency and throughput of every way to serve the same model, and explanation latency
    (learning_machine.bench_serving starts and stops every server on free ports)."""
    from learning_machine import bench_serving as serving

    section: Section = serving.to_section(serving.run(quick, progress), quick)
    return section


def bench_loop(quick: bool, progress: Progress) -> Section:
    """Detection delay, false alarms, the CUSUM bound and recovery AUC per drift scenario."""
    from learning_machine import bench_loop as loop

    section: Section = loop.bench_loop(quick, progress)
    return section


def bench_dashboard(quick: bool, progress: Progress) -> Section:
    """Page load of each dashboard page with 10,000 stored predictions (AppTest and headless Chromium)."""
    from learning_machine import bench_dashboard as dashboard

    section: Section = dashboard.to_section(dashboard.run(quick, progress), quick)
    return section


SECTIONS: dict[str, Callable[[bool, Progress], Section]] = {"training": bench_training,
                                                             "pipelines": bench_pipelines,
                                                             "serving": bench_serving,
                                                             "loop": bench_loop,
                                                             "dashboard": bench_dashboard}


def run_benchmarks(out_dir: Path, *, quick: bool = False, only: list[str] | None = None,
                   progress: Progress = print) -> Path:
    """Run the sections and write ``report.md`` and ``results.json`` to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    sections = []
    for name, fn in SECTIONS.items():
        if only and name not in only:
            continue
        progress(f"benchmark section: {name}")
        sections.append(fn(quick, progress))
    machine = {"python": platform.python_version(), "platform": platform.platform(),
               "processor": platform.processor() or platform.machine(), "cpus": _cpus()}
    header = [f"# Learning Machine benchmarks ({'quick' if quick else 'full'})", "",
              f"Run {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}, "
              f"{time.time() - started:.0f} s, on {machine['platform']} with {machine['cpus']} CPU(s), "
              f"Python {machine['python']}. Command: `make bench{'-quick' if quick else ''}`.", ""]
    (out_dir / "report.md").write_text("\n".join(header) + "\n" + "\n".join(s.markdown() for s in sections))
    (out_dir / "results.json").write_text(json.dumps(
        {"quick": quick, "started": started, "machine": machine,
         "sections": {s.title: {"columns": s.columns, "rows": s.rows, "raw": s.raw, "notes": s.notes}
                      for s in sections}}, indent=2, default=str))
    return out_dir / "report.md"


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
