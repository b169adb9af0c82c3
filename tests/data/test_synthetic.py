"""The synthetic cohort: valid against its spec, realistic, reproducible, and each drift scenario shifts
exactly what it claims, from the row it claims."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

import learning_machine.data
from learning_machine.data.spec import DatasetSpec, load_spec
from learning_machine.data.synthetic import (
    SCENARIOS,
    Cohort,
    describe_scenarios,
    generate_cohort,
    risk_function,
)
from learning_machine.errors import DatasetError, LearningMachineError, UnknownNameError

N_ROWS = 8_000
DRIFT_START = 4_000
SEED = 7
FEATURES = ["age", "sex", "bmi", "systolic_bp", "total_cholesterol", "hdl_cholesterol", "hba1c", "smoking", "egfr"]
NUMERIC = [f for f in FEATURES if f not in ("sex", "smoking")]
SPEC_PATH = Path(learning_machine.data.__file__).parent / "specs" / "synthetic-cohort.yaml"


@pytest.fixture(scope="module")
def spec() -> DatasetSpec:
    return load_spec(SPEC_PATH)


@cache
def cohort(scenario: str = "none", n_rows: int = N_ROWS, drift_start: int = DRIFT_START, seed: int = SEED,
           severity: float = 1.0) -> Cohort:
    """Cohorts are cached: tests only read them."""
    return generate_cohort(n_rows, seed=seed, scenario=scenario, drift_start=drift_start, severity=severity)


def pre(c: Cohort) -> pd.DataFrame:
    return c.frame.iloc[: c.drift_start]


def post(c: Cohort) -> pd.DataFrame:
    return c.frame.iloc[c.drift_start:]


def complete(frame: pd.DataFrame) -> np.ndarray:
    return frame[FEATURES].notna().all(axis=1).to_numpy()


def model_inputs(frame: pd.DataFrame) -> pd.DataFrame:
    x = frame[FEATURES].copy()
    x["sex"] = (x["sex"] == "male").astype(float)
    x["smoking"] = x["smoking"].map({"never": 0.0, "former": 1.0, "current": 2.0}).astype(float)
    return x


# --------------------------------------------------------------------------------------------------
# Shape, spec and reproducibility
# --------------------------------------------------------------------------------------------------
def test_frame_has_the_spec_columns_in_order_and_the_documented_types(spec: DatasetSpec) -> None:
    frame = cohort().frame
    assert list(frame.columns) == spec.columns
    assert frame["outcome"].dtype == np.int64 and set(frame["outcome"].unique()) == {0, 1}
    assert set(frame["sex"].unique()) == {"female", "male"}
    assert set(frame["smoking"].dropna().unique()) == {"never", "former", "current"}
    assert all(isinstance(v, str) for v in frame["smoking"].dropna())
    for col in NUMERIC:
        assert frame[col].dtype == np.float64, col
    assert frame["record_id"].is_unique


def test_record_ids_use_prefix_and_offset_with_seven_digits() -> None:
    frame = generate_cohort(3, id_prefix="X-", id_offset=41).frame
    assert frame["record_id"].tolist() == ["X-0000041", "X-0000042", "X-0000043"]
    assert generate_cohort(2).frame["record_id"].tolist() == ["P0000000", "P0000001"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_record_of_every_scenario_passes_the_spec(spec: DatasetSpec, scenario: str) -> None:
    frame = cohort(scenario).frame
    problems = [p for record in frame.to_dict("records") for p in spec.validate_record(record, require_target=True)]
    assert problems == []
    report = spec.quality(frame)
    assert report.out_of_range == {} and report.unseen_categories == {} and report.wrong_type == {}
    assert report.missing_columns == [] and report.unknown_columns == []
    assert report.duplicate_ids == 0 and report.missing_target == 0


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_same_seed_gives_an_identical_cohort_and_another_seed_a_different_one(scenario: str) -> None:
    a = generate_cohort(2_000, seed=11, scenario=scenario, drift_start=500)
    b = generate_cohort(2_000, seed=11, scenario=scenario, drift_start=500)
    other = generate_cohort(2_000, seed=12, scenario=scenario, drift_start=500)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    np.testing.assert_array_equal(a.true_risk, b.true_risk)
    np.testing.assert_array_equal(a.drifted, b.drifted)
    assert not a.frame[NUMERIC].equals(other.frame[NUMERIC])
    assert not np.array_equal(a.true_risk, other.true_risk)


def test_zero_rows_give_an_empty_frame_with_the_spec_columns(spec: DatasetSpec) -> None:
    c = generate_cohort(0, scenario="covariate-shift")
    assert list(c.frame.columns) == spec.columns and len(c.frame) == 0
    assert c.true_risk.shape == (0,) and c.drifted.shape == (0,)


# --------------------------------------------------------------------------------------------------
# The base population and its risk function
# --------------------------------------------------------------------------------------------------
def test_base_cohort_has_realistic_correlated_cardiometabolic_values() -> None:
    frame = cohort(n_rows=20_000).frame
    assert 53 <= frame["age"].mean() <= 57 and frame["age"].min() >= 25 and frame["age"].max() <= 90
    assert (frame["age"] % 1 == 0).all() and (frame["systolic_bp"] % 1 == 0).all()
    assert 0.47 <= (frame["sex"] == "male").mean() <= 0.53
    smoking = frame["smoking"].value_counts(normalize=True)
    assert abs(smoking["never"] - 0.55) < 0.04 and abs(smoking["former"] - 0.25) < 0.04
    assert abs(smoking["current"] - 0.20) < 0.04
    assert 0.09 <= (frame["hba1c"].dropna() >= 6.5).mean() <= 0.15  # the diabetic tail
    young, old = frame[frame["age"].between(25, 35)], frame[frame["age"].between(75, 85)]
    assert 92 <= young["egfr"].mean() <= 106 and 58 <= old["egfr"].mean() <= 72
    assert old["systolic_bp"].mean() > young["systolic_bp"].mean() + 20
    corr = frame[NUMERIC].corr()
    assert corr.loc["systolic_bp", "bmi"] > 0.15 and corr.loc["hba1c", "bmi"] > 0.15
    assert corr.loc["hdl_cholesterol", "bmi"] < -0.15
    by_sex = frame.groupby("sex")["hdl_cholesterol"].mean()
    assert by_sex["male"] < by_sex["female"] - 0.2


def test_base_cohort_has_a_few_missing_values_but_none_in_age_or_sex() -> None:
    missing = cohort(n_rows=20_000).frame.isna().mean()
    for col in ("bmi", "hdl_cholesterol", "hba1c", "egfr", "smoking"):
        assert 0.01 <= missing[col] <= 0.045, col
    for col in ("record_id", "age", "sex", "systolic_bp", "total_cholesterol", "outcome"):
        assert missing[col] == 0, col


def test_true_risk_is_the_baseline_risk_function_and_discriminates_the_outcome() -> None:
    c = cohort(n_rows=20_000)
    rows = complete(c.frame)
    np.testing.assert_allclose(risk_function(c.frame[rows]), c.true_risk[rows])
    assert np.isnan(risk_function(c.frame[~rows])).all()  # risk is defined on true values only
    prevalence = c.frame["outcome"].mean()
    assert 0.15 <= prevalence <= 0.25
    assert abs(prevalence - c.true_risk.mean()) < 0.015  # outcomes are drawn from the risk
    assert 0.72 <= roc_auc_score(c.frame["outcome"], c.true_risk) <= 0.85


def test_risk_function_is_non_linear_with_hinges_and_an_age_diabetes_interaction() -> None:
    person = {"age": 55.0, "sex": "female", "bmi": 25.0, "systolic_bp": 110.0, "total_cholesterol": 4.0,
              "hdl_cholesterol": 1.6, "hba1c": 5.2, "smoking": "never", "egfr": 90.0}

    def risk(**changes: object) -> float:
        return float(risk_function(pd.DataFrame([{**person, **changes}]))[0])

    # Blood pressure below its threshold does not matter, above it does.
    assert risk(systolic_bp=100.0) == risk(systolic_bp=120.0) < risk(systolic_bp=160.0)
    # eGFR matters only once it is low; BMI is U-shaped.
    assert risk(egfr=110.0) == risk(egfr=70.0) < risk(egfr=30.0)
    assert risk(bmi=18.0) > risk() < risk(bmi=38.0)
    # Diabetes raises risk more in a young patient than an old one (on the log-odds scale).
    def logit(p: float) -> float:
        return float(np.log(p / (1 - p)))
    young = logit(risk(age=40.0, hba1c=7.0)) - logit(risk(age=40.0))
    old = logit(risk(age=80.0, hba1c=7.0)) - logit(risk(age=80.0))
    assert young > old + 0.5
    assert risk(smoking="current") > risk(smoking="former") > risk()
    assert risk(sex="male") > risk()


def test_risk_function_rejects_an_unknown_concept_and_missing_columns() -> None:
    frame = cohort().frame
    with pytest.raises(UnknownNameError, match="baseline, drifted"):
        risk_function(frame, concept="sideways")
    with pytest.raises(DatasetError, match="hba1c"):
        risk_function(frame.drop(columns=["hba1c"]))


# --------------------------------------------------------------------------------------------------
# Scenarios: common guarantees
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rows_before_drift_start_are_identical_to_the_none_scenario(scenario: str) -> None:
    c, none = cohort(scenario), cohort()
    pd.testing.assert_frame_equal(pre(c), pre(none))
    np.testing.assert_array_equal(c.true_risk[:DRIFT_START], none.true_risk[:DRIFT_START])
    expected = np.arange(N_ROWS) >= DRIFT_START if scenario != "none" else np.zeros(N_ROWS, bool)
    np.testing.assert_array_equal(c.drifted, expected)
    assert (c.scenario, c.drift_start, c.seed) == (scenario, DRIFT_START, SEED)


def test_none_scenario_changes_nothing_whatever_drift_start_and_severity() -> None:
    plain = generate_cohort(3_000, seed=5)
    odd = generate_cohort(3_000, seed=5, scenario="none", drift_start=1_000, severity=3.0)
    pd.testing.assert_frame_equal(plain.frame, odd.frame)
    np.testing.assert_array_equal(plain.true_risk, odd.true_risk)
    assert not odd.drifted.any()


@pytest.mark.parametrize("scenario", SCENARIOS[1:])
def test_drift_start_at_the_end_drifts_nothing_and_at_zero_drifts_everything(scenario: str) -> None:
    none = generate_cohort(1_000, seed=3)
    at_end = generate_cohort(1_000, seed=3, scenario=scenario, drift_start=1_000)
    pd.testing.assert_frame_equal(at_end.frame, none.frame)
    assert not at_end.drifted.any()
    assert generate_cohort(1_000, seed=3, scenario=scenario, drift_start=0).drifted.all()


def test_describe_scenarios_has_one_sentence_for_every_scenario() -> None:
    described = describe_scenarios()
    assert tuple(described) == SCENARIOS
    assert all(text.endswith(".") and len(text) > 20 for text in described.values())


# --------------------------------------------------------------------------------------------------
# Scenarios: each shifts what it claims
# --------------------------------------------------------------------------------------------------
def test_covariate_shift_ages_the_population_and_keeps_the_risk_function() -> None:
    c, none = cohort("covariate-shift"), cohort()
    after, before = post(c), post(none)
    assert 10 <= after["age"].mean() - before["age"].mean() <= 13
    # Age-dependent features follow the older age.
    assert after["systolic_bp"].mean() > before["systolic_bp"].mean() + 4
    assert after["egfr"].mean() < before["egfr"].mean() - 5
    assert after["hba1c"].mean() > before["hba1c"].mean()
    # P(y | x) is unchanged: the true risk is still the baseline risk function of the new features.
    rows = complete(after)
    np.testing.assert_allclose(risk_function(after[rows]), c.true_risk[DRIFT_START:][rows])
    assert abs(after["outcome"].mean() - c.true_risk[DRIFT_START:].mean()) < 0.03
    assert after["outcome"].mean() > before["outcome"].mean()  # older patients have more events
    assert after["sex"].eq("male").mean() == pytest.approx(0.5, abs=0.03)
    # Severity scales the shift.
    half = cohort("covariate-shift", severity=0.5)
    assert 4.5 <= post(half)["age"].mean() - before["age"].mean() <= 7.5


def test_measurement_shift_biases_observed_labs_but_not_the_truth() -> None:
    c, none = cohort("measurement-shift"), cohort()
    after, before = post(c), post(none)
    assert after["hba1c"].mean() - before["hba1c"].mean() == pytest.approx(0.8, abs=0.05)
    assert after["egfr"].mean() / before["egfr"].mean() == pytest.approx(0.9, abs=0.02)
    # Outcomes and true risk come from the true values, which did not change.
    np.testing.assert_array_equal(c.true_risk, none.true_risk)
    pd.testing.assert_series_equal(after["outcome"], before["outcome"])
    untouched = [col for col in c.frame.columns if col not in ("hba1c", "egfr")]
    pd.testing.assert_frame_equal(after[untouched], before[untouched])
    pd.testing.assert_series_equal(after["hba1c"].isna(), before["hba1c"].isna())
    # So the risk computed from what is observed is now wrong for some rows.
    rows = complete(after)
    assert not np.allclose(risk_function(after[rows]), c.true_risk[DRIFT_START:][rows])
    half = cohort("measurement-shift", severity=0.5)
    assert post(half)["hba1c"].mean() - before["hba1c"].mean() == pytest.approx(0.4, abs=0.05)


def test_concept_drift_keeps_the_features_and_changes_how_they_relate_to_the_outcome() -> None:
    c, none = cohort("concept-drift"), cohort()
    after = post(c)
    pd.testing.assert_frame_equal(c.frame[["record_id", *FEATURES]], none.frame[["record_id", *FEATURES]])
    rows = complete(after)
    np.testing.assert_allclose(risk_function(after[rows], concept="drifted"), c.true_risk[DRIFT_START:][rows])
    assert abs(after["outcome"].mean() - post(none)["outcome"].mean()) < 0.04  # not a prevalence change
    baseline_risk = none.true_risk[DRIFT_START:]
    auc_before = roc_auc_score(post(none)["outcome"], baseline_risk)
    auc_after = roc_auc_score(after["outcome"], baseline_risk)
    assert auc_after < auc_before - 0.12
    assert roc_auc_score(after["outcome"], c.true_risk[DRIFT_START:]) > auc_after + 0.1


def test_concept_drift_costs_a_baseline_trained_gradient_boosting_model_clear_auc() -> None:
    c = generate_cohort(24_000, seed=3, scenario="concept-drift", drift_start=12_000)
    train_old, train_new, test = c.frame.iloc[:12_000], c.frame.iloc[12_000:18_000], c.frame.iloc[18_000:]
    with threadpool_limits(1):  # OpenMP threads fighting other processes for the CPU slow this 10x
        old = HistGradientBoostingClassifier(random_state=0).fit(model_inputs(train_old), train_old["outcome"])
        new = HistGradientBoostingClassifier(random_state=0).fit(model_inputs(train_new), train_new["outcome"])
    auc_old = roc_auc_score(test["outcome"], old.predict_proba(model_inputs(test))[:, 1])
    auc_new = roc_auc_score(test["outcome"], new.predict_proba(model_inputs(test))[:, 1])
    assert auc_new - auc_old >= 0.05


def test_prevalence_shift_doubles_the_positive_rate_and_keeps_each_class_alike() -> None:
    c, none = cohort("prevalence-shift"), cohort()
    after = post(c)
    base_rate = none.frame["outcome"].mean()
    assert after["outcome"].mean() / base_rate == pytest.approx(2.0, abs=0.25)
    # P(x | y) is unchanged: within each class the features match the pre-drift rows of that class.
    for label in (0, 1):
        old_class, new_class = pre(c)[pre(c)["outcome"] == label], after[after["outcome"] == label]
        for col in ("age", "systolic_bp", "hba1c", "egfr"):
            assert ks_2samp(old_class[col].dropna(), new_class[col].dropna()).pvalue > 0.01, (label, col)
    # The true risk is still the baseline risk of the selected patients.
    rows = complete(after)
    np.testing.assert_allclose(risk_function(after[rows]), c.true_risk[DRIFT_START:][rows])
    assert after["record_id"].tolist() == post(none)["record_id"].tolist()


def test_missingness_spike_blanks_the_named_labs_only() -> None:
    c, none = cohort("missingness-spike"), cohort()
    after, before = post(c), post(none)
    for col in ("hdl_cholesterol", "hba1c", "egfr"):
        assert after[col].isna().mean() == pytest.approx(0.35, abs=0.03), col
        assert pre(c)[col].isna().mean() < 0.05, col
        # The spike only blanks values: what is still there is the none cohort's value.
        kept = after[col].notna()
        pd.testing.assert_series_equal(after.loc[kept, col], before.loc[kept, col])
    others = [col for col in c.frame.columns if col not in ("hdl_cholesterol", "hba1c", "egfr")]
    pd.testing.assert_frame_equal(after[others], before[others])
    np.testing.assert_array_equal(c.true_risk, none.true_risk)
    half = cohort("missingness-spike", severity=0.5)
    assert 0.15 <= post(half)["hba1c"].isna().mean() <= 0.23


# --------------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------------
def test_unknown_scenario_raises_and_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as raised:
        generate_cohort(10, scenario="gradual-drift")
    assert raised.value.valid == sorted(SCENARIOS)
    assert all(name in raised.value.message for name in SCENARIOS)
    assert raised.value.status == 404


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_rows": -1}, "n_rows must be 0 or more"),
        ({"n_rows": 10.5}, "n_rows must be a whole number"),
        ({"n_rows": 100, "drift_start": 101}, r"drift_start \(101\) must not be greater than n_rows \(100\)"),
        ({"n_rows": 100, "drift_start": -5}, "drift_start must be 0 or more"),
        ({"n_rows": 100, "severity": -0.5}, "severity must be"),
        ({"n_rows": 100, "severity": float("nan")}, "severity must be"),
        ({"n_rows": 100, "seed": -1}, "seed must be 0 or more"),
        ({"n_rows": 100, "id_offset": -1}, "id_offset must be 0 or more"),
    ],
)
def test_bad_arguments_raise_a_clear_dataset_error(kwargs: dict, message: str) -> None:
    args = {"scenario": "covariate-shift", **kwargs}
    n_rows = args.pop("n_rows")
    with pytest.raises(DatasetError, match=message) as raised:
        generate_cohort(n_rows, **args)
    assert isinstance(raised.value, LearningMachineError) and raised.value.status == 422
