"""The model bundle: a registered version's native pipeline, its dataset spec and its training
reference, downloaded from the registry and loaded for serving."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from learning_machine.data.spec import DatasetSpec


@dataclass
class ServedVersion:
    """A registered version, loaded for serving: pipeline, spec, training reference, registry info."""

    name: str
    version: str
    run_id: str | None
    pipeline: Any
    spec: DatasetSpec
    reference: pd.DataFrame | None

    @property
    def kind(self) -> str:
        """The classifier's type (``XGBClassifier``); ``XGBClassifier+recalibrated-intercept`` for a recalibrated
        one (:mod:`learning_machine.model.recalibration`)."""
        from learning_machine.model.recalibration import unwrap

        base, mapping = unwrap(self.pipeline.named_steps["model"])
        return type(base).__name__ + (f"+recalibrated-{mapping.method}" if mapping is not None else "")


def env_tracking_uri() -> str | None:
    """MLflow's own ``MLFLOW_TRACKING_URI`` (how Seldon's containers name the server), read as MLflow reads it."""
    from mlflow.environment_variables import MLFLOW_TRACKING_URI

    value = MLFLOW_TRACKING_URI.get()
    return str(value) if value else None


def load_version(tracking_uri: str, uri: str, *, timeout_s: float = 30.0) -> ServedVersion:
    """Download ``models:/<name>/<version|@alias>`` from the MLflow registry and load its native pipeline
    (``mlflow.sklearn``, not pyfunc: pyfunc's schema enforcement costs ~7 ms per call), its dataset spec
    and its drift/anchors reference (None for versions registered before references were saved)."""
    import tempfile
    from pathlib import Path

    import mlflow.sklearn
    import yaml

    from learning_machine.data.spec import parse_spec
    from learning_machine.model.drift import REFERENCE_FILE
    from learning_machine.registry.names import SPEC_FILE, parse_model_uri
    from learning_machine.registry.tracker import Tracker

    name, ref = parse_model_uri(uri)
    tracker = Tracker(tracking_uri, timeout_s=timeout_s)
    with tempfile.TemporaryDirectory(prefix="lm-serve-") as tmp:
        folder, info = tracker.download_model(name, ref, Path(tmp))
        pipeline = mlflow.sklearn.load_model(str(folder))
        spec = parse_spec(yaml.safe_load((folder / SPEC_FILE).read_text()), source=f"{uri}/{SPEC_FILE}")
        reference = pd.read_parquet(folder / REFERENCE_FILE) if (folder / REFERENCE_FILE).exists() else None
    return ServedVersion(name, info.version, info.run_id, pipeline, spec, reference)
