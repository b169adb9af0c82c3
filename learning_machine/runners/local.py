"""The ``local`` runner: the pipeline's own KFP graph run by ``kfp.local.SubprocessRunner(use_venv=False)``,
each step a subprocess of this interpreter, artifacts under ``pipeline_root`` (``LM_HOME``/pipelines).
The steps' processes are forked from warm interpreters (:mod:`.warm`), kept for this process's later runs,
so they do not each pay the imports again.

Progress comes from kfp.local's own per-task call (:func:`record_tasks`): which step runs, how it ended, its
outputs; a failed step's reason is the error its process recorded (:data:`ERROR_FILE`). The log file keeps
everything kfp.local and the steps printed, for reading, not for parsing."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from learning_machine.components import ERROR_FILE
from learning_machine.runners.base import PipelineRun, PipelineRunner, Progress, build_pipeline
from learning_machine.runners.warm import kept_interpreters, warm_steps
from learning_machine.settings import Settings, settings_env


class _Tee:
    """Stands in for ``sys.stdout`` during a run: kfp.local's own log lines and the steps' streamed output go
    to the run's log file (and, with ``echo``, to the terminal). Nothing is read back from the text: what
    the run did comes from kfp.local's task calls (:class:`TaskRecord`)."""

    def __init__(self, log: TextIO, echo: TextIO | None) -> None:
        self.log, self.echo = log, echo

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.echo is not None:
            self.echo.write(text)
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        if self.echo is not None:
            self.echo.flush()


@dataclass
class TaskRecord:
    """What kfp.local's tasks did, recorded as kfp.local runs them: each task's state (``RUNNING``,
    ``SUCCEEDED``, ``FAILED``), wall time, outputs (parameters, and artifacts as type, uri and metadata:
    what the Kubeflow UI would show), and the error its step recorded when it failed (:data:`ERROR_FILE`)."""

    progress: Progress | None = None
    steps: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def started(self, task: str) -> None:
        self.steps[task] = "RUNNING"
        if self.progress:
            self.progress(f"step {task} ...")

    def finished(self, task: str, succeeded: bool, seconds: float, outputs: dict[str, Any],
                 task_root: Path | None) -> None:
        self.steps[task] = "SUCCEEDED" if succeeded else "FAILED"
        self.seconds[task] = seconds
        if succeeded:
            self.outputs[task] = {name: _output(value) for name, value in outputs.items()}
        else:
            self.errors[task] = _step_error(task_root)
        if self.progress:
            self.progress(f"step {task}: {'success' if succeeded else 'failure'}"
                          + ("" if succeeded else f" ({self.errors[task]})"))

    @property
    def failed(self) -> list[str]:
        return [task for task, state in self.steps.items() if state == "FAILED"]


_recording: TaskRecord | None = None
_hook_lock = threading.Lock()


@contextlib.contextmanager
def record_tasks(progress: Progress | None = None) -> Iterator[TaskRecord]:
    """For the ``with`` block, every task kfp.local runs in this process is recorded (:class:`TaskRecord`)
    and reported to ``progress`` as it starts and ends. The observable is kfp.local's own per-task call
    (``kfp.local.orchestrator.task_executor.execute_single_task``: both of its DAG orchestrators run every
    container task through it, and it returns the task's outputs and status), wrapped once per process;
    nothing is parsed from the log."""
    global _recording
    _observe_kfp_tasks()
    record = TaskRecord(progress)
    previous, _recording = _recording, record
    try:
        yield record
    finally:
        _recording = previous


def _observe_kfp_tasks() -> None:
    from kfp.local.orchestrator import task_executor

    with _hook_lock:
        original = task_executor.execute_single_task
        if getattr(original, "lm_observed", False):
            return

        def execute_single_task(*args: Any, **kwargs: Any) -> Any:
            record, task = _recording, kwargs.get("task_name")
            if record is None or not isinstance(task, str):
                return original(*args, **kwargs)
            record.started(task)
            started = time.perf_counter()
            try:
                outputs, task_status = original(*args, **kwargs)
            except BaseException:
                record.finished(task, False, time.perf_counter() - started, {}, _task_root(kwargs))
                raise
            record.finished(task, task_status.name == "SUCCESS", time.perf_counter() - started, outputs or {},
                            _task_root(kwargs))
            return outputs, task_status

        execute_single_task.lm_observed = True  # type: ignore[attr-defined]
        task_executor.execute_single_task = execute_single_task


def _task_root(kwargs: dict[str, Any]) -> Path | None:
    """The folder kfp.local gives the task (its outputs, executor output and, on failure, the step's
    :data:`ERROR_FILE`), from the same arguments kfp.local builds it from."""
    from kfp.local import executor_input_utils

    try:
        name = executor_input_utils.get_local_task_resource_name(kwargs["task_spec"].component_ref.name)
        return Path(executor_input_utils.construct_local_task_root(
            pipeline_root=kwargs["pipeline_root"], pipeline_resource_name=kwargs["pipeline_resource_name"],
            task_resource_name=name))
    except (KeyError, AttributeError, TypeError):
        return None


def _step_error(task_root: Path | None) -> str:
    """``Type: message`` of the exception that ended the task's step, as the step recorded it."""
    try:
        found = json.loads((task_root / ERROR_FILE).read_text()) if task_root else None
    except (OSError, ValueError):
        found = None
    if not isinstance(found, dict) or not found.get("type"):
        return "it left no error record: see the log"
    message = str(found.get("message") or "").strip()
    return f"{found['type']}: {message}" if message else str(found["type"])


def _output(value: Any) -> Any:
    """A task output as plain data: a parameter as it is, an artifact as its type, uri and metadata."""
    schema = getattr(value, "schema_title", None)
    if schema is None:
        return value
    return {"type": schema, "uri": getattr(value, "uri", ""), "metadata": dict(getattr(value, "metadata", {}))}


def _leaf_tasks(spec: Any) -> list[str]:
    """The names kfp.local gives the container tasks of a compiled pipeline spec, sub-DAGs included."""
    components = dict(spec.components.items())
    names: list[str] = []

    def walk(dag: Any) -> None:
        for name, task in dag.tasks.items():
            component = components.get(task.component_ref.name)
            if component is not None and component.WhichOneof("implementation") == "dag":
                walk(component.dag)
            else:
                names.append(name)

    walk(spec.root.dag)
    return names


class LocalRunner(PipelineRunner):
    """Runs pipelines on this machine with kfp.local (the embedded default)."""

    name = "local"

    def __init__(self, settings: Settings, *, echo: bool = False) -> None:
        super().__init__(settings)
        self.echo = echo

    def prepare(self) -> None:
        """Start this process's warm interpreters now (they import what the steps need in the background),
        with the environment :meth:`run` gives the steps, so the next run finds them ready."""
        root = self.settings.pipeline_root_dir()
        (root / "logs").mkdir(parents=True, exist_ok=True)
        kept_interpreters({**os.environ, **settings_env(self.settings)}, log=root / "logs" / "warm.log")

    def run(self, pipeline: str, params: dict[str, Any] | None = None, *,
            progress: Progress | None = None) -> PipelineRun:
        from kfp import local

        from learning_machine.pipelines.cluster import LOCAL_OPTIONS
        from learning_machine.registry.config import quiet_mlflow
        from learning_machine.registry.runs import find_pipeline_run, now_key
        from learning_machine.registry.tracker import tracker_for

        quiet_mlflow()  # the steps inherit this process's environment
        root = self.settings.pipeline_root_dir()
        (root / "logs").mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as warm:
            # Started first (unless an earlier run of this process left them warm), with the environment the
            # steps get: they import what the steps need while the pipeline is being built.
            warm.enter_context(warm_steps(root / ".warm", {**os.environ, **settings_env(self.settings)},
                                          log=root / "logs" / "warm.log", keep=True))
            args = self.parameters(pipeline, params)
            args.setdefault("run_key", now_key())
            graph = build_pipeline(pipeline, LOCAL_OPTIONS)
            log_path = root / "logs" / f"{graph.name}-{args['run_key']}.log"
            before = set(root.iterdir())
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
            started = time.perf_counter()
            state, error = "SUCCEEDED", None
            if progress:
                progress(f"running pipeline {graph.name} locally (kfp.local), log: {log_path}")
            with open(log_path, "w") as log, record_tasks(progress) as tasks:
                try:
                    with contextlib.redirect_stdout(_Tee(log, sys.__stdout__ if self.echo else None)), \
                            warnings.catch_warnings(), _environment(self.settings):
                        # kfp.local warns, per task, that cluster settings and the platform image are not used here.
                        warnings.simplefilter("ignore", UserWarning)
                        warnings.simplefilter("ignore", RuntimeWarning)
                        graph(**args)
                except RuntimeError as exc:  # kfp.local raises this when a task failed (raise_on_error)
                    state = "FAILED"
                    failed = tasks.failed
                    # The first failure is the cause; an exit handler that failed after it is not.
                    error = tasks.errors[failed[0]] if failed else f"kfp.local: {_plain(str(exc))}"
            seconds = time.perf_counter() - started
            not_run = [t for t in _leaf_tasks(graph.pipeline_spec) if t not in tasks.steps]
            if progress and not_run:
                why = "a step before them failed" if state == "FAILED" else "their condition was not met"
                progress(f"not run: {', '.join(not_run)} ({why})")
        new = sorted(p for p in set(root.iterdir()) - before if p.is_dir() and p.name.startswith(f"{graph.name}-"))
        result = PipelineRun(pipeline=graph.name, runner=self.name, run_key=args["run_key"], state=state,
                             parameters=args, outputs_dir=str(new[-1]) if new else None, log_path=str(log_path),
                             seconds=seconds, error=error, steps=dict(tasks.steps),
                             step_seconds=dict(tasks.seconds))
        result.extra["outputs"] = tasks.outputs
        settings = self.settings.model_copy(update={"experiment_name": args.get("experiment_name")
                                                    or self.settings.experiment_name})
        with contextlib.suppress(Exception):  # where to look is a courtesy: the run itself is what counts
            tracker = tracker_for(settings)
            tracker.health()
            parent = find_pipeline_run(tracker, settings.experiment_name, args["run_key"])
            if parent:
                exp = tracker.experiment_id(settings.experiment_name)
                result.parent_run_id = parent
                result.mlflow_url = f"{settings.tracking_uri}/#/experiments/{exp}/runs/{parent}"
        if result.outputs_dir:
            result.extra["artifacts"] = _artifacts(Path(result.outputs_dir))
        return result


@contextlib.contextmanager
def _environment(settings: Settings) -> Iterator[None]:
    """kfp.local steps are subprocesses that build their settings from the environment (as pods do from
    the ConfigMap): give them this runner's settings for the run, then restore the environment."""
    saved = dict(os.environ)
    os.environ.update(settings_env(settings))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _artifacts(folder: Path) -> dict[str, list[str]]:
    """Task -> the output files it wrote (relative to the run folder)."""
    out: dict[str, list[str]] = {}
    for task in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [str(f.relative_to(folder)) for f in sorted(task.rglob("*"))
                 if f.is_file() and f.name not in ("executor_output.json", ERROR_FILE)]
        if files:
            out[task.name] = files
    return out



def _plain(text: str) -> str:
    """kfp.local's message without its terminal colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
