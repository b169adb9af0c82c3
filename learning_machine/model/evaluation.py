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
                for name, value in metrics.items():
                    out[flat_name(name, group, label)] = value
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "calibration": self.calibration, "subgroups": self.subgroups}


def flat_name(metric: str, group: str, label: object) -> str:
    """The MLflow name of a subgroup's metric: ``auc.sex.female``, ``n.age_band.75plus``."""
    safe = str(label).replace("<", "lt").replace(">", "gt").replace("+", "plus").replace(" ", "_")
    return f"{metric}.{group}.{safe}"


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


def calibration_bins(proba: np.ndarray, bins: int = 10) -> np.ndarray:
    """The equal-count bin of each row by predicted risk (ties split by order), as the calibration table and
    error use them."""
    ranks = pd.Series(np.asarray(proba, dtype=float)).rank(method="first")
    return np.asarray(pd.qcut(ranks, q=min(bins, len(ranks)), labels=False), dtype=int)


def calibration_table(y_true: np.ndarray, proba: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Observed event rate against mean predicted risk in equal-count bins of predicted risk."""
    frame = pd.DataFrame({"y": np.asarray(y_true, dtype=int), "p": np.asarray(proba, dtype=float)})
    if frame.empty:
        return []
    frame["bin"] = calibration_bins(frame["p"].to_numpy(), bins)
    table = frame.groupby("bin").agg(mean_predicted=("p", "mean"), observed=("y", "mean"), n=("y", "size"))
    return [{k: float(v) for k, v in row.items()} for row in table.to_dict("records")]


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    """Weighted mean gap between predicted and observed risk over the calibration bins."""
    table = calibration_table(y_true, proba, bins)
    total = sum(row["n"] for row in table)
    if not total:
        return float("nan")
    return float(sum(row["n"] * abs(row["mean_predicted"] - row["observed"]) for row in table) / total)


def auc_standard_error(auc: float, n_events: int | None, n_outcomes: int) -> float:
    """Hanley & McNeil's (1982) standard error of an AUC on ``n_events`` events among ``n_outcomes``;
    0 when the counts are unknown."""
    if n_events is None or n_events < 1 or n_outcomes - n_events < 1:
        return 0.0
    n1, n0 = n_events, n_outcomes - n_events
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (n1 - 1) * (q1 - auc * auc) + (n0 - 1) * (q2 - auc * auc)) / (n1 * n0)
    return float(max(variance, 0.0) ** 0.5)


def calibration_slope_intercept(y_true: np.ndarray, proba: np.ndarray) -> tuple[float, float]:
    """Logistic recalibration of the predicted risks (Cox 1958; Van Calster et al. 2019): the **slope** of
    ``logit P(y=1) = a + b * logit(p)`` (1 when the risks spread as much as they should, below 1 when they are
    too extreme) and the **intercept** of ``logit P(y=1) = a + logit(p)`` (calibration-in-the-large: 0 when the
    risks are right on average, above 0 when they are too low). NaN for both when only one outcome is present."""
    from learning_machine.model.recalibration import fit_intercept, fit_logistic

    y = np.asarray(y_true, dtype=float)
    if len(y) < 2 or len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    # The maps a recalibration would fit (model.recalibration): the slope of logistic recalibration and
    # the offset of recalibration-in-the-large.
    return fit_logistic(y, proba)[1], fit_intercept(y, proba)


def evaluate(y_true: np.ndarray, proba: np.ndarray, subgroups: dict[str, pd.Series] | None = None,
             threshold: float = 0.5) -> Evaluation:
    """Overall metrics, a calibration table and per-subgroup metrics (groups of at least
    ``MIN_SUBGROUP_ROWS`` rows; smaller ones would only add noise)."""
    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=float)
    result = Evaluation(binary_metrics(y_true, proba, threshold), calibration_table(y_true, proba))
    for group, labels in (subgroups or {}).items():
        result.subgroups[group] = {label: binary_metrics(y_true[mask], proba[mask], threshold)
                                   for label, mask in subgroup_masks(labels)}
    return result


def subgroup_masks(labels: Any) -> list[tuple[str, np.ndarray]]:
    """Each label of a subgroup (one per row, missing where unknown) with at least ``MIN_SUBGROUP_ROWS`` rows,
    in the order of its text, and the rows that have it: the labels every per-subgroup metric is given for."""
    labels = pd.Series(labels).reset_index(drop=True)
    masks = ((str(label), (labels == label).to_numpy()) for label in sorted(labels.dropna().unique(), key=str))
    return [(label, mask) for label, mask in masks if mask.sum() >= MIN_SUBGROUP_ROWS]


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


# -- paired comparison of two models on the same rows ---------------------------------------------------
Z95 = 1.959963984540054


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (vectorised: one sort)."""
    order = np.argsort(x, kind="mergesort")
    s = x[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mean of positions starts+1 .. ends
    return ranks


def delong_difference(y_true: np.ndarray, proba_a: np.ndarray, proba_b: np.ndarray) -> dict[str, float] | None:
    """AUC(a) - AUC(b) on the same rows with DeLong's paired variance (DeLong, DeLong & Clarke-Pearson 1988,
    in the fast midrank form of Sun & Xu 2014): both AUCs, the difference, its standard error, the 95 %
    interval and the two-sided p-value. None when either class has fewer than two rows."""
    from scipy.stats import norm

    y = np.asarray(y_true).astype(int)
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(positives), len(negatives)
    if m < 2 or n < 2:
        return None
    aucs, v10, v01 = [], [], []
    for proba in (np.asarray(proba_a, dtype=float), np.asarray(proba_b, dtype=float)):
        pos, neg = proba[positives], proba[negatives]
        tx, ty, tz = midranks(pos), midranks(neg), midranks(np.concatenate([pos, neg]))
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)  # each positive's share of the AUC
        v01.append(1.0 - (tz[m:] - ty) / m)  # each negative's
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    variance = float((s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n)
    diff = float(aucs[0] - aucs[1])
    se = max(variance, 0.0) ** 0.5
    p_value = float(2 * norm.sf(abs(diff) / se)) if se > 0 else (0.0 if diff else 1.0)
    return {"a": float(aucs[0]), "b": float(aucs[1]), "diff": diff, "se": se, "ci_low": diff - Z95 * se,
            "ci_high": diff + Z95 * se, "p_value": p_value, "n": float(m + n), "events": float(m)}


def paired_loss_difference(losses_a: np.ndarray, losses_b: np.ndarray) -> dict[str, float]:
    """Mean per-row loss of a minus b on the same rows, with its 95 % interval (paired, normal approximation:
    per-row losses are independent across rows, and a few hundred rows make the mean close to normal)."""
    from scipy.stats import norm

    d = np.asarray(losses_a, dtype=float) - np.asarray(losses_b, dtype=float)
    diff = float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    p_value = float(2 * norm.sf(abs(diff) / se)) if 0 < se < float("inf") else (0.0 if diff else 1.0)
    return {"a": float(np.mean(losses_a)), "b": float(np.mean(losses_b)), "diff": diff, "se": se,
            "ci_low": diff - Z95 * se, "ci_high": diff + Z95 * se, "p_value": p_value, "n": float(len(d))}


def paired_comparison(y_true: np.ndarray, candidate: np.ndarray, champion: np.ndarray,
                      subgroups: dict[str, pd.Series] | None = None) -> dict[str, Any]:
    """The evidence of a challenger against the champion on the same held-out rows: the AUC difference
    (DeLong), the log-loss and Brier differences (paired), overall and per subgroup (AUC, where each class
    has enough rows). Differences are candidate minus champion: above 0 is better for AUC, below 0 for losses."""
    y = np.asarray(y_true).astype(int)
    cand = np.clip(np.asarray(candidate, dtype=float), 1e-15, 1 - 1e-15)
    champ = np.clip(np.asarray(champion, dtype=float), 1e-15, 1 - 1e-15)

    def log_losses(p: np.ndarray) -> np.ndarray:
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))

    out: dict[str, Any] = {"rows": len(y), "auc": delong_difference(y, cand, champ),
                           "log_loss": paired_loss_difference(log_losses(cand), log_losses(champ)),
                           "brier": paired_loss_difference((cand - y) ** 2, (champ - y) ** 2), "subgroups": {}}
    for group, labels in (subgroups or {}).items():
        values = np.asarray(labels)
        for label in pd.unique(values[pd.notna(values)]):
            mask = values == label
            if mask.sum() < MIN_SUBGROUP_ROWS:
                continue
            found = delong_difference(y[mask], cand[mask], champ[mask])
            if found is not None:
                out["subgroups"].setdefault(group, {})[str(label)] = {"auc": found}
    return out
