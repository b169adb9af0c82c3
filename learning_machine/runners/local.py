"""The ``local`` runner: the pipeline's own KFP graph run by ``kfp.local.SubprocessRunner(use_venv=False)``,
each step a subprocess of this interpreter, artifacts under ``pipeline_root`` (``LM_HOME``/pipelines).
The steps' processes are forked from warm interpreters (:mod:`.warm`), kept for this process's later runs,
so they do not each pay the imports again."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from learning_machine.runners.base import PipelineRun, PipelineRunner, Progress, build_pipeline
from learning_machine.runners.warm import kept_interpreters, warm_steps
from learning_machine.settings import Settings, settings_env

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# kfp.local's own log lines ("12:00:00.000 - INFO - Executing task 'x'"; failures are logged as ERROR).
_TASK = re.compile(r" - (?:INFO|ERROR|WARNING) - (Executing task|Task) '([\w-]+)'(?: finished with status (\w+))?")
# The last line of a step's traceback, e.g. "learning_machine.errors.DataQualityError: dataset ... failed".
_ERROR = re.compile(r"^\s*((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit)): (.+)$")


class _Tap:
    """Stands in for ``sys.stdout`` during a run: keeps every line in a log file, reports step starts and
    ends as progress, times each step (from kfp.local's "Executing task" line to its "finished" line), and
    remembers error lines so a failure can be explained in one sentence."""

    def __init__(self, log: TextIO, progress: Progress | None, echo: TextIO | None) -> None:
        self.log, self.progress, self.echo = log, progress, echo
        self.errors: list[str] = []
        self.steps: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self._partial = ""

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.echo is not None:
            self.echo.write(text)
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def _line(self, line: str) -> None:
        found = _ERROR.match(line)
        if found and not found.group(1).startswith(("RuntimeError", "subprocess")):
            self.errors.append(f"{found.group(1).rsplit('.', 1)[-1]}: {found.group(2).strip()}")
        task = _TASK.search(line)
        if task:
            name, status = task.group(2), task.group(3)
            if task.group(1) == "Executing task":
                self.steps[name] = "RUNNING"
                self._started[name] = time.perf_counter()
                if self.progress:
                    self.progress(f"step {name} ...")
            elif status:
                self.steps[name] = "SUCCEEDED" if status == "SUCCESS" else "FAILED"
                if name in self._started:
                    self.seconds[name] = time.perf_counter() - self._started[name]
                if self.progress:
                    self.progress(f"step {name}: {status.lower()}")
        elif "Skipping" in line and self.progress:
            self.progress(line.split(" - ", 2)[-1].strip())


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
            with open(log_path, "w") as log:
                tap = _Tap(log, progress, sys.__stdout__ if self.echo else None)
                try:
                    with contextlib.redirect_stdout(tap), warnings.catch_warnings(), _environment(self.settings):
                        # kfp.local warns, per task, that cluster settings and the platform image are not used here.
                        warnings.simplefilter("ignore", UserWarning)
                        warnings.simplefilter("ignore", RuntimeWarning)
                        graph(**args)
                except RuntimeError as exc:
                    state = "FAILED"
                    error = tap.errors[-1] if tap.errors else _ANSI.sub("", str(exc))
            seconds = time.perf_counter() - started
        new = sorted(p for p in set(root.iterdir()) - before if p.is_dir() and p.name.startswith(f"{graph.name}-"))
        result = PipelineRun(pipeline=graph.name, runner=self.name, run_key=args["run_key"], state=state,
                             parameters=args, outputs_dir=str(new[-1]) if new else None, log_path=str(log_path),
                             seconds=seconds, error=error, steps=dict(tap.steps),
                             step_seconds=dict(tap.seconds))
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
                 if f.is_file() and f.name != "executor_output.json"]
        if files:
            out[task.name] = files
    return out
