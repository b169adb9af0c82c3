"""Recalibration: the closed test's choice on samples whose miscalibration is known, and a recalibrated model
that keeps the champion's ranking, predicts better on shifted rows, pickles and serves through the fast path
and exact attributions (no servers needed)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from learning_machine.data.sources import load_dataset
from learning_machine.data.synthetic import generate_cohort
from learning_machine.model.evaluation import binary_metrics, calibration_slope_intercept
from learning_machine.model.explain import Explainer
from learning_machine.model.features import feature_frame
from learning_machine.model.inference import Predictor, frame_columns
from learning_machine.model.recalibration import (
    RecalibratedClassifier,
    RecalibrationMap,
    closed_test,
    logit,
    recalibrated_pipeline,
    sigmoid,
)
from learning_machine.model.training import kind_of, predict_proba, recalibrate_model, retrain_model, train_model


def _sample(n: int, a: float, b: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores spread like a risk model's, and outcomes drawn from ``logit P(y=1) = a + b * logit(score)``."""
    rng = np.random.default_rng(seed)
    score = sigmoid(rng.normal(-1.4, 1.0, n))
    y = (rng.random(n) < sigmoid(a + b * logit(score))).astype(int)
    return y, score


def test_well_calibrated_scores_select_no_update():
    chosen = [closed_test(*_sample(600, 0.0, 1.0, seed)).method for seed in range(20)]
    # The procedure's first test holds the family's error at 5 %: about one sample in twenty is updated.
    assert chosen.count("none") >= 17, chosen
    found = closed_test(*_sample(600, 0.0, 1.0, chosen.index("none")))
    assert found.map == RecalibrationMap() and found.map.apply([0.2])[0] == pytest.approx(0.2)
    assert [t["step"] for t in found.tests] == [1, 0] and not found.tests[0]["significant"]


@pytest.mark.parametrize("shift", [1.0, -0.8])
def test_a_shift_of_the_intercept_selects_recalibration_in_the_large_with_its_sign(shift):
    found = closed_test(*_sample(600, shift, 1.0, 1))
    assert found.method == "intercept", found.as_dict()
    assert found.map.slope == 1.0 and found.map.intercept == pytest.approx(shift, abs=0.25)
    step1, step2 = found.tests[0], found.tests[1]
    assert step1["step"] == 1 and step1["df"] == 2 and step1["significant"]
    assert step2["step"] == 2 and step2["df"] == 1 and not step2["significant"]


def test_too_extreme_scores_select_logistic_recalibration_with_a_slope_below_one():
    found = closed_test(*_sample(1500, 0.3, 0.5, 2))
    assert found.method == "logistic", found.as_dict()
    assert found.map.slope == pytest.approx(0.5, abs=0.12) and found.tests[1]["significant"]
    # The likelihood grows with every parameter, and each chosen map is the fitted one.
    ll = found.log_likelihood
    assert ll["none"] < ll["intercept"] < ll["logistic"]
    assert found.fitted["logistic"] == {"a": found.map.intercept, "b": found.map.slope}


def test_the_generators_prevalence_shift_is_a_shift_of_the_intercept():
    """On label shift (the same patients per outcome, twice the events) the true risk itself needs only its
    intercept moved, by the log of the odds ratio of the prevalences."""
    cohort = generate_cohort(4000, seed=5, scenario="prevalence-shift", drift_start=2000)
    before, after = slice(0, 2000), slice(2000, None)
    y = cohort.frame["outcome"].to_numpy()
    base_risk = cohort.true_risk  # under label shift, the base risk function of every row, drifted or not
    assert closed_test(y[before], base_risk[before]).method == "none"
    found = closed_test(y[after], base_risk[after])
    p0, p1 = y[before].mean(), y[after].mean()
    assert p1 > 1.5 * p0
    assert found.method == "intercept" and found.map.intercept > 0
    assert found.map.intercept == pytest.approx(np.log(p1 / (1 - p1) * (1 - p0) / p0), abs=0.3)


def test_one_outcome_only_cannot_be_recalibrated():
    with pytest.raises(ValueError, match="both outcomes"):
        closed_test(np.zeros(50), np.full(50, 0.2))


@pytest.fixture(scope="module")
def champion():
    return train_model(load_dataset("synthetic-cohort", n_rows=2000, seed=21), kind="xgboost", seed=1)


@pytest.fixture(scope="module")
def shifted():
    data = load_dataset("synthetic-cohort", n_rows=1200, seed=22, scenario="prevalence-shift", drift_start=0)
    return data, data.frame.iloc[:800].reset_index(drop=True), data.frame.iloc[800:].reset_index(drop=True)


def test_a_recalibrated_champion_ranks_the_same_and_predicts_shifted_rows_better(champion, shifted):
    data, fit_rows, test_rows = shifted
    fit = type(data)(data.spec, fit_rows, data.source_uri, data.params)
    result, found = recalibrate_model(champion.pipeline, fit, test_rows)
    assert found.method in ("intercept", "logistic") and found.map.intercept > 0  # more events than it predicts
    assert result.mode == f"recalibrate-{found.method}" and result.kind == "xgboost"
    assert result.params["recalibration.method"] == found.method and len(result.train) == len(fit_rows)
    y = test_rows["outcome"].to_numpy()
    old = predict_proba(champion.pipeline, data.spec, test_rows)
    new = predict_proba(result.pipeline, data.spec, test_rows)
    assert roc_auc_score(y, new) == pytest.approx(roc_auc_score(y, old), abs=1e-12)  # a monotone map
    before, after = binary_metrics(y, old), binary_metrics(y, new)
    assert after["log_loss"] < before["log_loss"] - 0.01 and after["brier"] < before["brier"]
    assert abs(calibration_slope_intercept(y, new)[1]) < abs(calibration_slope_intercept(y, old)[1]) - 0.3
    assert result.evaluation.metrics["auc"] == pytest.approx(roc_auc_score(y, new))
    # The champion itself is left as it was.
    assert not isinstance(champion.pipeline.named_steps["model"], RecalibratedClassifier)


def test_a_recalibrated_model_pickles_serves_and_explains_as_its_champion_does(champion, shifted):
    data, _, test_rows = shifted
    mapping = RecalibrationMap(0.9, 0.8, "logistic")
    model = pickle.loads(pickle.dumps(recalibrated_pipeline(champion.pipeline, mapping)))
    assert kind_of(model).name == "xgboost"
    expected = mapping.apply(predict_proba(champion.pipeline, data.spec, test_rows))
    assert np.allclose(predict_proba(model, data.spec, test_rows), expected, atol=1e-12)
    # The serving fast path: the champion's single-threaded booster, then the map.
    predictor = Predictor.build(model, data.spec, champion.train)
    assert predictor.booster is not None and predictor.mapping == mapping
    columns = frame_columns(data.spec, feature_frame(data.spec, test_rows))
    assert np.allclose(predictor.proba(columns), expected, atol=1e-6)
    # Exact attributions still add up to the margin of the probability served.
    explainer = Explainer(model, data.spec, champion.train)
    explanation = explainer.exact(test_rows.iloc[:1])
    assert explanation["probability"] == pytest.approx(expected[0], abs=1e-5)
    plain = Explainer(champion.pipeline, data.spec, champion.train).exact(test_rows.iloc[:1])
    first = next(iter(plain["attributions"]))
    assert explanation["attributions"][first] == pytest.approx(0.8 * plain["attributions"][first], rel=1e-6)


def test_recalibrating_twice_composes_one_map_and_a_warm_start_continues_the_original(champion, shifted):
    data, _, test_rows = shifted
    once = recalibrated_pipeline(champion.pipeline, RecalibrationMap(0.5, 1.0, "intercept"))
    twice = recalibrated_pipeline(once, RecalibrationMap(0.2, 0.5, "logistic"))
    model = twice.named_steps["model"]
    assert not isinstance(model.base, RecalibratedClassifier)
    assert (model.intercept, model.slope, model.method) == (pytest.approx(0.45), 0.5, "logistic")
    p = predict_proba(champion.pipeline, data.spec, test_rows)
    assert np.allclose(predict_proba(twice, data.spec, test_rows), sigmoid(0.2 + 0.5 * (0.5 + logit(p))))
    continued = retrain_model(twice, data, seed=1)
    assert continued.pipeline.named_steps["model"].get_booster().num_boosted_rounds() == 300
