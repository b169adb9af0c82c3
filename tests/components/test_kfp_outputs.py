"""What the steps publish for the Kubeflow UI, in KFP's own artifact classes (no KFP server needed: the
classes write the metadata the UI reads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from kfp.dsl import ClassificationMetrics, Metrics, Model
from sklearn.metrics import auc, roc_auc_score

from learning_machine.components.kfp_outputs import (
    MAX_ROC_POINTS,
    confusion,
    publish_classification,
    publish_metrics,
    publish_model,
    roc_points,
)


def _scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    proba = np.clip(0.3 * labels + rng.normal(0.35, 0.2, n), 0, 1)
    return labels, proba


def test_the_roc_curve_is_bounded_and_keeps_its_ends_and_shape():
    labels, proba = _scores(5000)
    fpr, tpr, thresholds = roc_points(labels, proba)
    assert 2 < len(fpr) <= MAX_ROC_POINTS and len(fpr) == len(tpr) == len(thresholds)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert all(0.0 <= t <= 1.0 for t in thresholds)  # scikit-learn's first threshold is infinite
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # The thinned curve still has the model's area under it (trapezoids over at most 200 points).
    assert abs(auc(fpr, tpr) - roc_auc_score(labels, proba)) < 0.01
    assert roc_points([1, 1, 1], [0.2, 0.4, 0.9]) == ([], [], [])  # one class: no curve


def test_the_confusion_matrix_counts_rows_by_true_and_predicted_class():
    labels = [0, 0, 0, 1, 1]
    proba = [0.1, 0.6, 0.2, 0.7, 0.4]
    assert confusion(labels, proba) == [[2, 1], [1, 1]]
    assert confusion(labels, proba, threshold=0.05) == [[0, 3], [0, 2]]


def test_the_artifacts_carry_what_the_kubeflow_ui_reads(tmp_path: Path):
    labels, proba = _scores(400, seed=1)
    classification = ClassificationMetrics(name="classification", uri=str(tmp_path / "c"))
    publish_classification(classification, labels, proba)
    points = classification.metadata["confidenceMetrics"]
    assert points and set(points[0]) == {"confidenceThreshold", "recall", "falsePositiveRate"}
    matrix = classification.metadata["confusionMatrix"]
    assert [s["displayName"] for s in matrix["annotationSpecs"]] == ["0", "1"]
    assert sum(sum(r["row"]) for r in matrix["rows"]) == 400

    metrics = Metrics(name="metrics", uri=str(tmp_path / "m"))
    publish_metrics(metrics, {"auc": 0.8, "ece": float("nan"), "n": 400, "promote": True, "label": "x",
                              "nested": {"a": 1}}, prefix="candidate.")
    assert metrics.metadata == {"candidate.auc": 0.8, "candidate.n": 400.0, "candidate.promote": 1.0}

    model = Model(name="model", uri=str(tmp_path / "model"))
    model.path = str(tmp_path / "model")
    publish_model(model, model_uri="models:/m/3", version="3", run_id="abc", alias="")
    assert model.metadata == {"model_uri": "models:/m/3", "version": "3", "run_id": "abc"}
    assert json.loads((tmp_path / "model").read_text()) == model.metadata
