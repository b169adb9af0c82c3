"""What the Kubeflow UI shows for a step: its scalar metrics (``system.Metrics``), the ROC curve and the
confusion matrix on the held-out rows (``system.ClassificationMetrics``) and the model it made or registered
(``system.Model``, with the MLflow URI in its metadata). The steps compute the numbers (:mod:`.steps`);
these functions only publish them in KFP's own artifact types, so the run page renders them without the
platform's dashboard. Light on purpose (numpy only at import): every task imports it."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

MAX_ROC_POINTS = 200
"""At most this many points of a ROC curve go into the artifact's metadata: the KFP UI draws them and the
metadata store keeps them with every run, so a curve of 10,000 held-out rows stays a few kilobytes."""
CATEGORIES = ["0", "1"]
"""The confusion matrix's classes: the binary outcome's values (rows: true class, columns: predicted)."""


def roc_points(labels: Any, proba: Any, max_points: int = MAX_ROC_POINTS) -> tuple[list[float], list[float],
                                                                                   list[float]]:
    """(false positive rates, true positive rates, thresholds) of the ROC curve, at most ``max_points``
    points taken evenly along the curve (its two ends always kept); empty when only one class is present
    (the curve is undefined there). Thresholds are clipped to [0, 1]: scikit-learn's first is infinite."""
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels, dtype=int)
    if len(np.unique(labels)) < 2:
        return [], [], []
    fpr, tpr, thresholds = roc_curve(labels, np.asarray(proba, dtype=float))
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max(max_points, 2)).round().astype(int))
        fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    return ([float(x) for x in fpr], [float(x) for x in tpr],
            [float(x) for x in np.clip(thresholds, 0.0, 1.0)])


def confusion(labels: Any, proba: Any, threshold: float = 0.5) -> list[list[int]]:
    """The 2×2 confusion matrix at ``threshold`` (the threshold the step's accuracy and F1 use): rows are
    the true class (0, 1), columns the predicted one."""
    labels = np.asarray(labels, dtype=int)
    predicted = (np.asarray(proba, dtype=float) >= threshold).astype(int)
    return [[int(((labels == t) & (predicted == p)).sum()) for p in (0, 1)] for t in (0, 1)]


def publish_metrics(artifact: Any, values: Mapping[str, Any], prefix: str = "") -> None:
    """Log each finite number of ``values`` as a scalar metric (``prefix`` + name); booleans as 0/1.
    NaN and infinity are left out: JSON has no such numbers and the UI would show nothing useful."""
    for name, value in values.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, int | float) and math.isfinite(value):
            artifact.log_metric(f"{prefix}{name}", float(value))


def publish_classification(artifact: Any, labels: Any, proba: Any, threshold: float = 0.5) -> None:
    """The ROC curve (bounded, :data:`MAX_ROC_POINTS`) and the confusion matrix of ``proba`` against
    ``labels`` on the held-out rows."""
    fpr, tpr, thresholds = roc_points(labels, proba)
    if fpr:
        artifact.log_roc_curve(fpr, tpr, thresholds)
    artifact.log_confusion_matrix(CATEGORIES, confusion(labels, proba, threshold))


def publish_model(artifact: Any, **metadata: Any) -> None:
    """The model as a KFP ``Model`` artifact: where it is in MLflow (``model_uri``, ``run_id``, registered
    ``version``...) in the metadata the UI shows, and the same as a small JSON file (the model itself stays
    in MLflow: the artifact points at it, it does not copy it)."""
    values = {k: v for k, v in metadata.items() if v not in (None, "")}
    artifact.metadata.update(values)
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(json.dumps(values, indent=2, default=str))


def candidate_model(settings: Any, run_id: str) -> dict[str, str]:
    """Where a training run's candidate model is in MLflow: its logged model (``models:/<model_id>``, MLflow 3),
    or the run's model folder for a run from before logged models."""
    from learning_machine.registry.names import MODEL_ARTIFACT
    from learning_machine.registry.tracker import tracker_for

    model_id = tracker_for(settings).run_model_id(run_id)
    if model_id is None:
        return {"model_uri": f"runs:/{run_id}/{MODEL_ARTIFACT}"}
    return {"model_uri": f"models:/{model_id}", "model_id": model_id}
