"""A model's evaluation through MLflow's evaluator (``mlflow.models.evaluate``), linked to the logged model and
to the rows it was scored on, and read back as the platform's :class:`~learning_machine.model.evaluation.Evaluation`.

The rows are given with their predictions (the probabilities the model in memory computed, and the labels
at the threshold), so nothing is predicted twice. MLflow's classifier evaluator computes what it computes
from labels (accuracy, F1, precision, recall, the confusion matrix and its plot); what it cannot, the
metrics of the predicted risks (AUC, log loss, Brier score, calibration error, calibration slope and
intercept) and every metric per subgroup, are custom metrics (``mlflow.models.make_metric``) that call the
same functions as :func:`learning_machine.model.evaluation.evaluate`, so the numbers a promotion is decided
on are the same as before. MLflow logs the metrics to the run and to the logged model (``model_id``), each
with the evaluated dataset's name and digest, and the dataset as an input of the run.

``mlflow.models.evaluate`` works on MLflow's fluent state only (a global tracking URI and an active run):
:func:`_resumed` gives it the run for the call and hands it back still running."""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from learning_machine.model.evaluation import (
    MIN_SUBGROUP_ROWS,
    Evaluation,
    binary_metrics,
    calibration_slope_intercept,
    calibration_table,
    flat_name,
    subgroup_masks,
)

# The platform's names of what MLflow's classifier evaluator computes itself from the predicted labels.
BUILTIN = {"n": "example_count", "accuracy": "accuracy_score", "f1": "f1_score"}
# The metrics of the predicted risks, and whether higher is better (MLflow records it with the metric).
RISK_METRICS = {"prevalence": False, "mean_predicted": False, "brier": False, "ece": False, "auc": True,
                "log_loss": False}
# Only where the rows are all there: per subgroup they would be noise on a few dozen rows.
CALIBRATION = {"calibration_slope": True, "calibration_intercept": False}
# Every metric of binary_metrics (in its order), the per-subgroup set, and whether higher is better.
SUBGROUP_METRICS = {"n": True, "prevalence": False, "mean_predicted": False, "accuracy": True, "f1": True,
                    "brier": False, "ece": False, "auc": True, "log_loss": False}
TARGET, PREDICTION, PROBABILITY = "label", "prediction", "probability"


def evaluate_predictions(tracking_uri: str, run_id: str, *, labels: np.ndarray, proba: np.ndarray,
                         subgroups: dict[str, pd.Series] | None = None, model_id: str | None = None,
                         dataset_name: str = "held-out", prefix: str = "", threshold: float = 0.5) -> Evaluation:
    """Evaluate predicted probabilities against ``labels`` with ``mlflow.models.evaluate``, log the result to the
    run ``run_id`` (each metric name after ``prefix``) and to the logged model ``model_id`` (when given), and
    return it as an :class:`Evaluation` with the platform's metric names."""
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.models import make_metric
    from sklearn.exceptions import UndefinedMetricWarning

    y = np.asarray(labels, dtype=int)
    p = np.asarray(proba, dtype=float)
    frame = pd.DataFrame({TARGET: y, PREDICTION: (np.clip(p, 1e-7, 1 - 1e-7) >= threshold).astype(int),
                          PROBABILITY: p})
    columns: dict[str, str] = {}  # subgroup -> its column in the evaluated frame
    for i, (group, values) in enumerate((subgroups or {}).items()):
        column = group if group.isidentifier() and group not in (TARGET, PREDICTION, PROBABILITY) else f"group_{i}"
        columns[group] = column
        frame[column] = pd.Series(values).reset_index(drop=True).astype(object).map(
            lambda v: None if v is None or v != v else str(v))
    memo: dict[tuple[str, str, int], dict[str, float]] = {}

    def metrics_of(key: tuple[str, str, int], targets: Any, probability: Any, mask: Any = None) -> dict[str, float]:
        if key not in memo:
            t, q = np.asarray(targets, dtype=int), np.asarray(probability, dtype=float)
            memo[key] = binary_metrics(t[mask], q[mask], threshold) if mask is not None else binary_metrics(t, q,
                                                                                                         threshold)
        return memo[key]

    # Every metric takes the predicted labels too: MLflow calls a function of two parameters other than
    # (predictions, targets) the old way, with (eval_df, metrics).
    def overall(name: str) -> Callable[..., float | None]:
        def fn(predictions: Any, targets: Any, probability: Any) -> float | None:
            return _number(metrics_of(("", "", len(targets)), targets, probability).get(name))
        return fn

    def calibration(index: int) -> Callable[..., float | None]:
        def fn(predictions: Any, targets: Any, probability: Any) -> float | None:
            return _number(calibration_slope_intercept(np.asarray(targets), np.asarray(probability))[index])
        return fn

    def subgroup(group: str, label: str, name: str) -> Callable[..., float | None]:
        def fn(predictions: Any, targets: Any, probability: Any, labels: Any) -> float | None:
            mask = (np.asarray(labels, dtype=object) == label)
            if mask.sum() < MIN_SUBGROUP_ROWS:  # e.g. MLflow's trial on the first row alone
                return None
            return _number(metrics_of((group, label, len(targets)), targets, probability, mask).get(name))
        return _with_params(fn, ["predictions", "targets", PROBABILITY, columns[group]])

    # The subgroup labels with enough rows, as evaluate() picks them.
    plan = {group: [label for label, _ in subgroup_masks(frame[column])] for group, column in columns.items()}
    # (make_metric warns that a subgroup metric's name, "auc.age_band.60-74", cannot name a parameter of a
    # derived metric: none does.)
    with _quiet("mlflow.models.evaluation"):
        extra = [make_metric(eval_fn=_with_params(overall(name), ["predictions", "targets", PROBABILITY]), name=name,
                             greater_is_better=better) for name, better in RISK_METRICS.items()]
        extra += [make_metric(eval_fn=_with_params(calibration(i), ["predictions", "targets", PROBABILITY]),
                              name=name, greater_is_better=better)
                  for i, (name, better) in enumerate(CALIBRATION.items())]
        extra += [make_metric(eval_fn=subgroup(group, label, name), name=flat_name(name, group, label),
                              greater_is_better=better)
                  for group, labels_found in plan.items() for label in labels_found
                  for name, better in SUBGROUP_METRICS.items()]

    config = {"pos_label": 1, "label_list": [0, 1], "log_model_explainability": False,  # SHAP is not installed
              **({"metric_prefix": prefix} if prefix else {})}
    with _resumed(tracking_uri, run_id), _quiet("mlflow.models.evaluation"), warnings.catch_warnings():
        # MLflow's precision on rows where the model predicts no event at the threshold is 0, as it says; the
        # labels are integers, as a classifier's are (MLflow hints that integers cannot be missing).
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        data = from_pandas(frame, targets=TARGET, predictions=PREDICTION, name=dataset_name)
        result = mlflow.models.evaluate(data=data, model_type="classifier", evaluator_config=config,
                                        extra_metrics=extra, model_id=model_id)
    found = {key[len(prefix):]: float(value) for key, value in result.metrics.items() if key.startswith(prefix)}
    metrics = {name: found[BUILTIN[name]] if name in BUILTIN else found[name]
               for name in ("n", "prevalence", "mean_predicted", "accuracy", "f1", "brier", "ece", "auc", "log_loss",
                            *CALIBRATION) if (BUILTIN.get(name) or name) in found}
    evaluation = Evaluation(metrics, calibration_table(y, p))
    for group, labels_found in plan.items():
        evaluation.subgroups[group] = {
            label: {name: found[flat_name(name, group, label)] for name in SUBGROUP_METRICS
                    if flat_name(name, group, label) in found} for label in labels_found}
    return evaluation


def _number(value: float | None) -> float | None:
    """A metric MLflow can log: None (not logged) for an undefined one."""
    return None if value is None or value != value else float(value)


def _with_params(fn: Callable[..., Any], names: list[str]) -> Callable[..., Any]:
    """``fn`` with a signature naming ``names``: MLflow passes each metric the columns its parameters name."""
    def call(*args: Any) -> Any:
        return fn(*args)

    call.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names])
    return call


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Errors only from ``logger`` for the call: MLflow first tries every metric on one row, where the
    subgroup metrics are undefined, and warns about each."""
    import logging

    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        log.setLevel(level)


@contextmanager
def _resumed(tracking_uri: str, run_id: str) -> Iterator[None]:
    """MLflow's fluent state for one call: the tracking URI and the run ``run_id`` active in this thread (MLflow
    keeps the active run per thread). The run is handed back RUNNING: its owner ends it. The tracking URI is put
    back as it was (MLflow keeps it in the process and in ``MLFLOW_TRACKING_URI``)."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        mlflow.start_run(run_id=run_id)
        try:
            yield
        finally:
            mlflow.end_run(status="RUNNING")
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None: unset, as it was
