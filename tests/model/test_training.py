"""Preprocessing, training, warm-start retraining and evaluation (no servers needed)."""

from __future__ import annotations

import numpy as np
import pytest

from learning_machine.data.sources import load_dataset
from learning_machine.errors import TrainingError, UnknownNameError
from learning_machine.model.evaluation import evaluate
from learning_machine.model.training import predict_proba, retrain_model, train_model


@pytest.fixture(scope="module")
def cohort():
    return load_dataset("synthetic-cohort", n_rows=3000, seed=11)


@pytest.mark.parametrize("kind", ["xgboost", "logistic-regression"])
def test_both_kinds_learn_the_risk_and_report_all_metrics(cohort, kind):
    result = train_model(cohort, kind=kind, seed=1)
    metrics = result.evaluation.metrics
    assert metrics["auc"] > 0.68  # the true risk's own AUC is about 0.77
    for name in ("accuracy", "f1", "brier", "ece", "log_loss"):
        assert name in metrics
    assert set(result.evaluation.subgroups) == {"sex", "age_band"}
    assert "auc" in result.evaluation.subgroups["sex"]["female"]
    assert len(result.evaluation.calibration) == 10
    assert list(result.pipeline.named_steps) == ["preprocess", "model"]  # one artifact: preprocessing + model
    assert result.importance.index.str.startswith("age").any()


def test_the_pipeline_handles_missing_values_and_unseen_categories(cohort):
    result = train_model(cohort, seed=1)
    rows = cohort.frame.head(3).copy()
    rows.loc[0, ["bmi", "hba1c", "smoking"]] = [np.nan, np.nan, None]
    rows.loc[1, "smoking"] = "vaping"  # never seen in training: encoded as all zeros, not an error
    proba = predict_proba(result.pipeline, cohort.spec, rows)
    assert proba.shape == (3,) and np.all((proba > 0) & (proba < 1))


def test_xgboost_warm_start_adds_trees_and_keeps_the_preprocessing(cohort):
    base = train_model(cohort, seed=1).pipeline
    drifted = load_dataset("synthetic-cohort", n_rows=3000, seed=12, scenario="concept-drift")
    result = retrain_model(base, drifted, seed=1)
    booster = result.pipeline.named_steps["model"].get_booster()
    assert booster.num_boosted_rounds() == 300
    assert result.mode == "warm-start"
    scaler = base.named_steps["preprocess"].named_transformers_["num"].named_steps["scale"]
    new_scaler = result.pipeline.named_steps["preprocess"].named_transformers_["num"].named_steps["scale"]
    np.testing.assert_array_equal(scaler.mean_, new_scaler.mean_)
    # The base model is left as it was.
    assert base.named_steps["model"].get_booster().num_boosted_rounds() == 200
    # Continuing on post-drift data beats the base model on post-drift held-out rows.
    before = evaluate(result.test_labels, predict_proba(base, cohort.spec, result.test)).metrics["auc"]
    assert result.evaluation.metrics["auc"] > before + 0.03


def test_logistic_warm_start_continues_from_the_coefficients(cohort):
    base = train_model(cohort, kind="logistic-regression", seed=1).pipeline
    result = retrain_model(base, cohort, seed=1)
    assert result.kind == "logistic-regression"
    assert result.pipeline.named_steps["model"].warm_start


def test_unknown_kind_and_bad_params_are_clear(cohort):
    with pytest.raises(UnknownNameError, match="valid model kinds are: logistic-regression, xgboost"):
        train_model(cohort, kind="deep-net")
    with pytest.raises(TrainingError, match="unknown parameter\\(s\\) for xgboost: depth"):
        train_model(cohort, params={"depth": 3})


def test_too_little_data_is_a_training_error(cohort):
    tiny = load_dataset("synthetic-cohort", n_rows=300, seed=1)
    tiny.frame = tiny.frame.head(10)
    with pytest.raises(TrainingError, match="at least 20 labelled rows"):
        train_model(tiny)


def test_retraining_keeps_the_best_of_continued_fresh_and_simpler_on_unseen_new_rows(cohort):
    from learning_machine.data.sources import LoadedDataset, load_dataset
    from learning_machine.model.training import retrain_best

    base = train_model(cohort, seed=1).pipeline
    new = load_dataset("synthetic-cohort", n_rows=2500, seed=9, scenario="concept-drift", drift_start=0)
    result, scores = retrain_best(base, new, cohort.frame.head(500), seed=1)
    assert set(scores) == {"warm-start", "scratch", "scratch-simple"} and all(0.5 < a < 1 for a in scores.values())
    order = ("warm-start", "scratch-simple", "scratch")
    assert result.mode == max(order, key=lambda m: (scores[m], -order.index(m)))
    # With no reference rows the continued candidate learns from the new rows alone.
    again, _ = retrain_best(base, LoadedDataset(new.spec, new.frame, "x", {}), None, seed=1)
    assert again.mode in order


def test_a_few_hundred_rows_since_a_concept_change_choose_the_simpler_fresh_model(cohort):
    """The rows a retraining has soon after a change in the risk function: the default trees overfit them, the
    simpler fresh model is chosen, is really simpler, and ranks fresh post-change patients better."""
    from learning_machine.data.sources import load_dataset
    from learning_machine.model.evaluation import binary_metrics
    from learning_machine.model.training import predict_proba, retrain_best

    base = train_model(cohort, seed=1).pipeline
    new = load_dataset("synthetic-cohort", n_rows=450, seed=1001, scenario="concept-drift", drift_start=0)
    result, scores = retrain_best(base, new, cohort.frame.head(1000), seed=1)
    assert result.mode == "scratch-simple", scores
    booster = result.pipeline.named_steps["model"]
    assert booster.get_params()["max_depth"] == 2 and booster.get_params()["n_estimators"] == 50
    test = load_dataset("synthetic-cohort", n_rows=3000, seed=305, scenario="concept-drift", drift_start=0)
    y = test.frame["outcome"].to_numpy()
    default = train_model(new, seed=1, test_fraction=0.1).pipeline
    auc = {name: binary_metrics(y, predict_proba(p, test.spec, test.frame))["auc"]
           for name, p in (("simpler", result.pipeline), ("default", default), ("champion", base))}
    assert auc["simpler"] > auc["default"] + 0.01 and auc["simpler"] > auc["champion"] + 0.08, auc


def test_calibration_slope_and_intercept_find_overconfident_and_underestimated_risks():
    from scipy.special import expit, logit

    from learning_machine.model.evaluation import calibration_slope_intercept

    rng = np.random.default_rng(5)
    true_risk = expit(rng.normal(-1.0, 1.0, 20_000))
    y = rng.random(true_risk.size) < true_risk
    slope, intercept = calibration_slope_intercept(y, true_risk)
    assert slope == pytest.approx(1.0, abs=0.05) and intercept == pytest.approx(0.0, abs=0.05)
    slope, _ = calibration_slope_intercept(y, expit(2 * logit(true_risk)))  # twice as extreme as it should be
    assert slope == pytest.approx(0.5, abs=0.05)
    _, intercept = calibration_slope_intercept(y, expit(logit(true_risk) - 0.5))  # every risk too low
    assert intercept == pytest.approx(0.5, abs=0.05)
    assert all(np.isnan(calibration_slope_intercept(np.ones(50), np.full(50, 0.3))))  # one outcome: undefined
