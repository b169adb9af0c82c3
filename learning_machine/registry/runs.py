"""Pipeline runs in MLflow: one parent run per pipeline run (found again by its run key), one nested
run per step (FAILED, with the error, when the step raises)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from learning_machine.errors import LearningMachineError
from learning_machine.registry.tracker import Tracker, tracker_for
from learning_machine.settings import Settings

PIPELINE_TAG = "lm.pipeline"
RUN_KEY_TAG = "lm.pipeline_run_key"
STEP_TAG = "lm.step"
ERROR_TAG = "lm.error"


@contextmanager
def step_run(settings: Settings, tracker: Tracker, step: str, parent_run_id: str,
             tags: dict[str, str] | None = None) -> Iterator[str]:
    """One MLflow run for one step, nested under the pipeline run; FAILED (with the error) if the step raises."""
    run_id = tracker.start_run(settings.experiment_name, step, tags={STEP_TAG: step, **(tags or {})},
                               parent_run_id=parent_run_id or None)
    try:
        yield run_id
    except BaseException as exc:
        _mark_failed(tracker, run_id, exc)
        raise
    tracker.end_run(run_id)


def _mark_failed(tracker: Tracker, run_id: str, exc: BaseException) -> None:
    try:
        tracker.set_tag(run_id, ERROR_TAG, f"{type(exc).__name__}: {exc}"[:5000])
        tracker.end_run(run_id, "FAILED")
    except Exception:  # noqa: BLE001 - the server may be the thing that failed; the step's error matters
        pass


# -- parent run ------------------------------------------------------------------------------------
def start_pipeline_run(settings: Settings, pipeline: str, run_key: str, params: dict[str, Any]) -> str:
    """The parent MLflow run of one pipeline run; returns its id. Checks the server first."""
    tracker = tracker_for(settings)
    tracker.health()
    run_id = tracker.start_run(settings.experiment_name, f"{pipeline}-pipeline",
                               tags={PIPELINE_TAG: pipeline, RUN_KEY_TAG: run_key, STEP_TAG: "pipeline"})
    tracker.log_params(run_id, {k: v for k, v in params.items() if v not in ("", None)})
    return run_id


def find_pipeline_run(tracker: Tracker, experiment: str, run_key: str) -> str | None:
    """The parent run tagged with ``run_key``, or None."""
    runs = tracker.search_runs(experiment, f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1)
    return runs[0] if runs else None


def finish_pipeline_run(settings: Settings, run_key: str, state: str, error: str = "") -> str | None:
    """Close the parent run FINISHED or FAILED (it runs as the exit handler, after success or failure).
    Never raises for an unreachable server: the step that failed already said why."""
    tracker = tracker_for(settings)
    try:
        tracker.health()
        run_id = find_pipeline_run(tracker, settings.experiment_name, run_key)
        if run_id is None:
            print(f"no pipeline run tagged {RUN_KEY_TAG}={run_key}: nothing to close")
            return None
        ok = state.upper() in ("SUCCEEDED", "SUCCESS", "FINISHED")
        tracker.set_tag(run_id, "lm.pipeline_state", state)
        if error and not ok:
            tracker.set_tag(run_id, ERROR_TAG, error[:5000])
        tracker.end_run(run_id, "FINISHED" if ok else "FAILED")
        return run_id
    except LearningMachineError as exc:
        print(f"could not close the pipeline run: {exc.message}")
        return None


def now_key() -> str:
    """A unique key for one pipeline run (time plus randomness), used to find its parent run."""
    import uuid

    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
