"""Model evaluation: discrimination, calibration and the same metrics per subgroup, plus the plots a
reviewer expects. Plain functions of labels and probabilities."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss, roc_auc_score

MIN_SUBGROUP_ROWS = 20


@dataclass
class Evaluation:
    """Metrics overall, a calibration table, and metrics per subgroup label."""

    metrics: dict[str, float]
    calibration: list[dict[str, float]]
    subgroups: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def flat(self) -> dict[str, float]:
        """Metric names for MLflow: ``auc``, ``auc.sex.female``, ``n.age_band.75+``..."""
        out = dict(self.metrics)
        for group, by_label in self.subgroups.items():
            for label, metrics in by_label.items():
                safe = str(label).replace("<", "lt").replace(">", "gt").replace("+", "plus").replace(" ", "_")
                for name, value in metrics.items():
                    out[f"{name}.{group}.{safe}"] = value
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "calibration": self.calibration, "subgroups": self.subgroups}


def binary_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC, accuracy, F1, Brier score, log loss, prevalence and calibration error of one set of rows.
    AUC is left out when only one class is present (it is undefined there)."""
    y_true = np.asarray(y_true, dtype=int)
    proba = np.clip(np.asarray(proba, dtype=float), 1e-7, 1 - 1e-7)
    pred = (proba >= threshold).astype(int)
    out = {
        "n": float(len(y_true)),
        "prevalence": float(y_true.mean()) if len(y_true) else float("nan"),
        "mean_predicted": float(proba.mean()) if len(proba) else float("nan"),
        "accuracy": float(accuracy_score(y_true, pred)),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "brier": float(brier_score_loss(y_true, proba)),
        "ece": expected_calibration_error(y_true, proba),
    }
    if len(np.unique(y_true)) == 2:
        out["auc"] = float(roc_auc_score(y_true, proba))
        out["log_loss"] = float(log_loss(y_true, proba, labels=[0, 1]))
    return out


def calibration_table(y_true: np.ndarray, proba: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Observed event rate against mean predicted risk in equal-count bins of predicted risk."""
    frame = pd.DataFrame({"y": np.asarray(y_true, dtype=int), "p": np.asarray(proba, dtype=float)})
    if frame.empty:
        return []
    frame["bin"] = pd.qcut(frame["p"].rank(method="first"), q=min(bins, len(frame)), labels=False)
    table = frame.groupby("bin").agg(mean_predicted=("p", "mean"), observed=("y", "mean"), n=("y", "size"))
    return [{k: float(v) for k, v in row.items()} for row in table.to_dict("records")]


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    """Weighted mean gap between predicted and observed risk over the calibration bins."""
    table = calibration_table(y_true, proba, bins)
    total = sum(row["n"] for row in table)
    if not total:
        return float("nan")
    return float(sum(row["n"] * abs(row["mean_predicted"] - row["observed"]) for row in table) / total)


def evaluate(y_true: np.ndarray, proba: np.ndarray, subgroups: dict[str, pd.Series] | None = None,
             threshold: float = 0.5) -> Evaluation:
    """Overall metrics, a calibration table and per-subgroup metrics (groups of at least
    ``MIN_SUBGROUP_ROWS`` rows; smaller ones would only add noise)."""
    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=float)
    result = Evaluation(binary_metrics(y_true, proba, threshold), calibration_table(y_true, proba))
    for group, labels in (subgroups or {}).items():
        labels = pd.Series(labels).reset_index(drop=True)
        by_label: dict[str, dict[str, float]] = {}
        for label in sorted(labels.dropna().unique(), key=str):
            mask = (labels == label).to_numpy()
            if mask.sum() >= MIN_SUBGROUP_ROWS:
                by_label[str(label)] = binary_metrics(y_true[mask], proba[mask], threshold)
        result.subgroups[group] = by_label
    return result


def evaluation_figures(y_true: np.ndarray, proba: np.ndarray, evaluation: Evaluation,
                       importance: pd.Series | None = None, threshold: float = 0.5) -> dict[str, Any]:
    """ROC curve, calibration curve, confusion matrix and feature importance as matplotlib figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    figures: dict[str, Any] = {}
    fig, ax = plt.subplots(figsize=(5, 5))
    if len(np.unique(y_true)) == 2:
        RocCurveDisplay.from_predictions(y_true, proba, ax=ax, name="model")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set_title(f"ROC (AUC {evaluation.metrics.get('auc', float('nan')):.3f})")
    figures["roc.png"] = fig

    fig, ax = plt.subplots(figsize=(5, 5))
    cal = evaluation.calibration
    ax.plot([r["mean_predicted"] for r in cal], [r["observed"] for r in cal], marker="o", label="model")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    ax.set_xlabel("mean predicted risk")
    ax.set_ylabel("observed event rate")
    ax.set_title(f"Calibration (ECE {evaluation.metrics['ece']:.3f})")
    ax.legend()
    figures["calibration.png"] = fig

    fig, ax = plt.subplots(figsize=(5, 4))
    ConfusionMatrixDisplay.from_predictions(y_true, (proba >= threshold).astype(int), ax=ax, colorbar=False)
    ax.set_title(f"Confusion matrix (threshold {threshold:g})")
    figures["confusion_matrix.png"] = fig

    if importance is not None and len(importance):
        top = importance.sort_values().tail(20)
        fig, ax = plt.subplots(figsize=(6, max(3, 0.3 * len(top))))
        ax.barh(top.index.astype(str), top.to_numpy())
        ax.set_title("Feature importance")
        fig.tight_layout()
        figures["feature_importance.png"] = fig
    return figures
