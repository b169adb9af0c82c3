"""Evaluation through ``mlflow.models.evaluate`` against a real `mlflow server`: the numbers a promotion is
decided on are exactly those of the platform's own evaluation, and MLflow links them to the logged model and
the scored rows."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pytest

from learning_machine.lifecycle.promotion import GATE_METRICS, decide
from learning_machine.model.evaluation import evaluate
from learning_machine.registry.tracker import Tracker
from learning_machine.settings import Settings


def _scored_rows(seed: int, n: int = 800) -> tuple[np.ndarray, np.ndarray, dict[str, pd.Series]]:
    """Fixed labels and probabilities, with exact 0 and 1, ties and a subgroup too small to be scored."""
    rng = np.random.default_rng(seed)
    risk = rng.beta(2, 5, n)
    y = (rng.random(n) < risk).astype(int)
    proba = np.round(np.clip(risk + rng.normal(0, 0.1, n), 0, 1), 2)  # rounded: ties
    proba[:5], proba[5:10] = 0.0, 1.0
    sex = pd.Series(rng.choice(["female", "male"], n))
    band = pd.Series(rng.choice(["<45", "45-59", "60-74", "75+"], n, p=[0.3, 0.3, 0.38, 0.02]))
    band[band.index % 97 == 0] = None  # missing labels are in no subgroup
    return y, proba, {"sex": sex, "age_band": band}


def test_mlflow_evaluation_gives_the_platforms_numbers_and_links_them_to_the_model(mlflow_sqlite: Settings):
    tracker = Tracker(mlflow_sqlite.tracking_uri)
    experiment = f"evaluation-{uuid.uuid4().hex[:8]}"
    run_id = tracker.start_run(experiment, "evaluate")
    model = tracker.client.create_logged_model(tracker.experiment_id(experiment), name="model", source_run_id=run_id)
    y, proba, groups = _scored_rows(seed=7)

    found = tracker.evaluate(run_id, y, proba, groups, model_id=model.model_id, dataset_name="fixed-rows",
                             prefix="candidate.")
    own = evaluate(y, proba, groups)
    # Bit for bit: MLflow's accuracy and F1 (its classifier evaluator's), ours through make_metric, per subgroup.
    assert {k: v for k, v in found.metrics.items() if not k.startswith("calibration_")} == own.metrics
    assert found.subgroups == own.subgroups and "75+" not in found.subgroups["age_band"]  # 2 % of rows: too few
    assert found.calibration == own.calibration
    assert set(found.metrics) - set(own.metrics) == {"calibration_slope", "calibration_intercept"}
    # ... so every gate metric decides the same.
    champion = evaluate(y, np.clip(proba + 0.03, 0, 1), groups).metrics
    for metric in GATE_METRICS:
        assert (decide("gate", has_champion=True, metric=metric, candidate=found.metrics[metric],
                       champion=champion[metric])
                == decide("gate", has_champion=True, metric=metric, candidate=own.metrics[metric],
                          champion=champion[metric]))

    tracker.end_run(run_id)
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED"  # handed back running by the evaluation, ended by its owner
    for key in ("candidate.auc", "candidate.accuracy_score", "candidate.calibration_slope", "candidate.auc.sex.male"):
        assert key in run.data.metrics, key
    assert run.data.metrics["candidate.auc"] == own.metrics["auc"]
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["fixed-rows"]
    assert [m.model_id for m in run.inputs.model_inputs] == [model.model_id]
    linked = {m.key: m for m in tracker.client.get_logged_model(model.model_id).metrics}
    assert linked["candidate.log_loss"].value == own.metrics["log_loss"]
    assert linked["candidate.log_loss"].dataset_name == "fixed-rows" and linked["candidate.log_loss"].dataset_digest


def test_an_evaluation_without_a_logged_model_still_scores(mlflow_sqlite: Settings):
    """A champion registered before logged models has no model id: its evaluation is logged to the run only."""
    tracker = Tracker(mlflow_sqlite.tracking_uri)
    run_id = tracker.start_run(f"evaluation-{uuid.uuid4().hex[:8]}", "evaluate")
    y, proba, groups = _scored_rows(seed=8, n=300)
    found = tracker.evaluate(run_id, y, proba, groups, prefix="champion.")
    assert found.metrics["auc"] == pytest.approx(evaluate(y, proba).metrics["auc"], abs=0)
    tracker.end_run(run_id)
    assert "champion.auc" in tracker.client.get_run(run_id).data.metrics
