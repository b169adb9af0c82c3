"""The training and retraining pipelines' steps called directly, in one process and in the pipelines' order,
with the same folders-as-artifacts between them: what `lm bench` compares a kfp.local run against. Each
step is timed under the name kfp.local gives its task, so the two can be compared step by step."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from learning_machine.components import release, steps
from learning_machine.registry.config import quiet_mlflow
from learning_machine.registry.names import CHAMPION
from learning_machine.registry.runs import finish_pipeline_run, now_key, start_pipeline_run
from learning_machine.settings import Settings


class _Clock:
    """Wall time per step, by task name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started


@contextmanager
def _pipeline_run(settings: Settings, name: str, source: str) -> Iterator[tuple[_Clock, Path, str]]:
    """The parent MLflow run a pipeline's steps nest under (opened and closed as kfp.local's first and last
    tasks are, and timed as they are), a clock and a scratch folder for the artifacts between the steps."""
    quiet_mlflow()
    clock = _Clock()
    key = now_key()
    with clock.step("open-pipeline-run"):
        parent = start_pipeline_run(settings, name, key, {"source": source})
    state = "FAILED"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            yield clock, Path(tmp), parent
        state = "SUCCEEDED"
    finally:
        with clock.step("close-pipeline-run"):
            finish_pipeline_run(settings, key, state)


def train_inline(settings: Settings, *, source: str, spec_path: str = "", rows: int = 0, seed: int = 42,
                 model_kind: str = "", promote_policy: str = "gate") -> dict[str, Any]:
    """ingest -> validate -> preprocess -> train -> evaluate -> register -> (gate) promote -> deploy, nested
    under one parent MLflow run, without KFP. ``seed`` is the pipeline's ``seed`` parameter (the data's and
    the model's). Returns the parent run id, the version, the gate's verdict and each step's seconds."""
    settings = settings.model_copy(update={"seed": seed})
    with _pipeline_run(settings, "training-inline", source) as (clock, root, parent):
        _clean_data(settings, clock, root, source, parent=parent, spec_path=spec_path, rows=rows, seed=seed)
        with clock.step("train"):
            run_id, _ = steps.train(settings, root / "clean", root / "test", parent_run_id=parent, kind=model_kind)
        result = _gate_and_serve(settings, clock, root, run_id, parent=parent, promote_policy=promote_policy)
    return {**result, "step_seconds": clock.seconds}


def retrain_inline(settings: Settings, *, source: str, spec_path: str = "", rows: int = 0, seed: int = 43,
                   reference_source: str = "", reference_rows: int = 0, reference_seed: int = 42,
                   base_ref: str = CHAMPION, model_params: str = "{}", promote_policy: str = "gate") -> dict[str, Any]:
    """The retraining pipeline's steps: ingest -> validate -> preprocess, ingest the reference (old) rows
    (the pipeline's task ``ingest-2``), retrain (``base_ref`` continued, a fresh model and a simpler fresh
    one; the best goes on) -> evaluate against the champion -> register -> (gate) promote -> deploy, nested
    under one parent MLflow run, without KFP. ``seed`` is the pipeline's ``seed`` parameter (the new data's
    and the retraining's). Returns the parent run id, the version, the gate's verdict and each step's
    seconds."""
    settings = settings.model_copy(update={"seed": seed})
    with _pipeline_run(settings, "retraining-inline", source) as (clock, root, parent):
        _clean_data(settings, clock, root, source, parent=parent, spec_path=spec_path, rows=rows, seed=seed)
        with clock.step("ingest-2"):
            steps.ingest(settings, reference_source, root / "reference", parent_run_id=parent,
                         spec_path=spec_path, rows=reference_rows, seed=reference_seed)
        with clock.step("retrain"):
            run_id, _ = steps.retrain(settings, root / "clean", root / "test", reference_dir=root / "reference",
                                      parent_run_id=parent, base_ref=base_ref, params_json=model_params)
        result = _gate_and_serve(settings, clock, root, run_id, parent=parent, promote_policy=promote_policy)
    return {**result, "step_seconds": clock.seconds}


def _clean_data(settings: Settings, clock: _Clock, root: Path, source: str, *, parent: str, spec_path: str,
                rows: int, seed: int) -> None:
    """ingest -> validate -> preprocess into ``root``/raw, report.json, clean."""
    with clock.step("ingest"):
        steps.ingest(settings, source, root / "raw", parent_run_id=parent, spec_path=spec_path, rows=rows,
                     seed=seed)
    with clock.step("validate"):
        steps.validate(settings, root / "raw", root / "report.json", parent_run_id=parent)
    with clock.step("preprocess"):
        steps.preprocess(settings, root / "raw", root / "clean", parent_run_id=parent)


def _gate_and_serve(settings: Settings, clock: _Clock, root: Path, run_id: str, *, parent: str,
                    promote_policy: str) -> dict[str, Any]:
    """evaluate -> register -> (gate) promote -> deploy, as the pipelines' tail does."""
    with clock.step("evaluate"):
        decision = steps.evaluate(settings, run_id, root / "test", root / "comparison.json", parent_run_id=parent,
                                  policy=promote_policy)
    with clock.step("register"):
        version = release.register(settings, run_id, root / "comparison.json", parent_run_id=parent)
    if decision.promote:
        with clock.step("promote"):
            release.promote(settings, version, parent_run_id=parent, reason=decision.reason)
        with clock.step("deploy"):
            release.deploy(settings, version, parent_run_id=parent)
    return {"parent_run_id": parent, "version": version, "promoted": decision.promote, "reason": decision.reason}
