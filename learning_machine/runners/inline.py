"""The training pipeline's steps called directly, in one process and in the pipeline's order, with the same
folders-as-artifacts between them: what `lm bench` compares a kfp.local run against."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from learning_machine.components import release, steps
from learning_machine.registry.config import quiet_mlflow
from learning_machine.registry.runs import finish_pipeline_run, now_key, start_pipeline_run
from learning_machine.settings import Settings


def train_inline(settings: Settings, *, source: str, spec_path: str = "", rows: int = 0, seed: int = 42,
                 model_kind: str = "", promote_policy: str = "gate") -> dict[str, Any]:
    """ingest -> validate -> preprocess -> train -> evaluate -> register -> (gate) promote -> deploy, nested
    under one parent MLflow run, without KFP. Returns the parent run id, the version and the gate verdict."""
    quiet_mlflow()
    key = now_key()
    parent = start_pipeline_run(settings, "training-inline", key, {"source": source})
    state = "FAILED"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            steps.ingest(settings, source, root / "raw", parent_run_id=parent, spec_path=spec_path, rows=rows,
                         seed=seed)
            steps.validate(settings, root / "raw", root / "report.json", parent_run_id=parent)
            steps.preprocess(settings, root / "raw", root / "clean", parent_run_id=parent)
            run_id, _ = steps.train(settings, root / "clean", root / "test", parent_run_id=parent, kind=model_kind)
            decision = steps.evaluate(settings, run_id, root / "test", root / "comparison.json",
                                      parent_run_id=parent, policy=promote_policy)
            version = release.register(settings, run_id, root / "comparison.json", parent_run_id=parent)
            if decision.promote:
                release.promote(settings, version, parent_run_id=parent, reason=decision.reason)
                release.deploy(settings, version, parent_run_id=parent)
        state = "SUCCEEDED"
    finally:
        finish_pipeline_run(settings, key, state)
    return {"parent_run_id": parent, "version": version, "promoted": decision.promote}
