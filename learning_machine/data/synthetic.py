"""A synthetic patient cohort with a known risk function and named drift scenarios.

Adult outpatients with a cardiometabolic work-up (``specs/synthetic-cohort.yaml``). Features are drawn
with realistic correlations, the outcome is a Bernoulli draw from a known non-linear risk function of
the *true* feature values, so every row carries its ground-truth event probability. A scenario then
changes the rows from ``drift_start`` on: the population (covariate shift), a lab assay (measurement
shift), the risk function itself (concept drift), the prevalence (label shift) or the missing rate.

Rows before ``drift_start`` are byte-for-byte the ``none`` cohort of the same seed and size: the base
cohort is drawn first with one generator, and the scenario uses a second one seeded from
``(seed, scenario)``, so a drift detector's reference window is the same whatever scenario follows.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from learning_machine.errors import DatasetError, UnknownNameError

SCENARIOS: tuple[str, ...] = (
    "none", "covariate-shift", "measurement-shift", "concept-drift", "prevalence-shift", "missingness-spike",
)
CONCEPTS: tuple[str, ...] = ("baseline", "drifted")

COLUMNS: tuple[str, ...] = (
    "record_id", "age", "sex", "bmi", "systolic_bp", "total_cholesterol", "hdl_cholesterol", "hba1c",
    "smoking", "egfr", "outcome",
)
FEATURES: tuple[str, ...] = COLUMNS[1:-1]
SMOKING: tuple[str, ...] = ("never", "former", "current")

# Share of missing values per column in the base cohort (age and sex are never missing).
BASE_MISSING: dict[str, float] = {"bmi": 0.02, "hdl_cholesterol": 0.03, "hba1c": 0.03, "egfr": 0.03, "smoking": 0.02}
# Missing rate of these columns at severity 1 under "missingness-spike" (an interface to the lab broke).
SPIKE_COLUMNS: tuple[str, ...] = ("hdl_cholesterol", "hba1c", "egfr")
SPIKE_MISSING = 0.35
AGEING_YEARS = 12.0  # covariate shift: the population is this much older at severity 1
HBA1C_BIAS = 0.8  # measurement shift: the recalibrated assay reads this many points higher
EGFR_BIAS = 0.10  # measurement shift: ... and eGFR this fraction lower (a new creatinine assay)

# Spec ranges, used for the final clip so no value can ever leave them.
_SPEC_RANGE: dict[str, tuple[float, float]] = {
    "age": (18, 100), "bmi": (12, 70), "systolic_bp": (70, 250), "total_cholesterol": (1.5, 15),
    "hdl_cholesterol": (0.2, 4.5), "hba1c": (3.5, 18), "egfr": (5, 150),
}

_DESCRIPTIONS: dict[str, str] = {
    "none": "No drift: every row comes from the same population and risk function.",
    "covariate-shift": (f"An ageing population: patients are ~{AGEING_YEARS:g} years older, with blood pressure, "
                        "HbA1c, BMI and eGFR following their age; the risk function is unchanged."),
    "measurement-shift": (f"A recalibrated lab: observed HbA1c reads ~{HBA1C_BIAS:g} points higher and eGFR "
                          f"~{EGFR_BIAS:.0%} lower, while outcomes still follow the true values."),
    "concept-drift": ("A new treatment era: same patients, but the risk function changes (HbA1c, BMI and blood "
                      "pressure matter little, smoking and low eGFR much more)."),
    "prevalence-shift": ("Label shift: twice as many events, with the patients of each outcome "
                         "(P(features | outcome)) unchanged."),
    "missingness-spike": (f"A broken lab feed: HDL, HbA1c and eGFR are missing in ~{SPIKE_MISSING:.0%} of records "
                          "instead of ~3 %."),
}


@dataclass(frozen=True)
class Cohort:
    """A generated cohort: the observed frame plus the ground truth behind it."""

    frame: pd.DataFrame
    """Columns in spec order; ``outcome`` is int 0/1, categoricals str, missing values NaN/None."""
    true_risk: np.ndarray
    """Event probability of each row under the risk function that drew its outcome."""
    drifted: np.ndarray
    """True for the rows the scenario changed (``>= drift_start``; none for ``"none"``)."""
    scenario: str
    drift_start: int
    seed: int


def describe_scenarios() -> dict[str, str]:
    """Scenario name -> one sentence on what it shifts (for CLI help)."""
    return {name: _DESCRIPTIONS[name] for name in SCENARIOS}


# --------------------------------------------------------------------------------------------------
# Risk function
# --------------------------------------------------------------------------------------------------
# Log-odds of a major adverse cardiovascular event within 5 years. "baseline" is the world the model
# is first trained in; "drifted" is a new treatment era: glucose- and weight-lowering drugs remove the
# HbA1c and BMI effects, treated blood pressure and statins flatten those terms, and the events left
# are driven by smoking and kidney disease. Coefficients are on the scale noted beside each term.
_COEF: dict[str, dict[str, float]] = {
    "baseline": {
        "intercept": -2.67,
        "age": 0.55,             # per 10 years over 55
        "age_sq": 0.06,          # per (10 years)^2: risk accelerates with age
        "male": 0.45,
        "sbp_hinge": 0.022,      # per mmHg above 130
        "lipid_ratio": 0.22,     # per unit of total/HDL cholesterol above 4
        "hba1c_hinge": 0.35,     # per HbA1c point above 6.5 %
        "diabetes_young": 0.035,  # diabetes (HbA1c >= 6.5) x years under 70: worse when it starts young
        "current_smoker": 0.65,
        "former_smoker": 0.25,
        "egfr_hinge": 0.025,     # per mL/min below 60
        "bmi_u": 0.004,          # per (kg/m2 away from 25)^2
    },
    "drifted": {
        "intercept": -2.03,
        "age": 0.15,
        "age_sq": 0.0,
        "male": -0.1,
        "sbp_hinge": -0.01,
        "lipid_ratio": 0.0,
        "hba1c_hinge": 0.0,
        "diabetes_young": 0.0,
        "current_smoker": 2.0,
        "former_smoker": 0.8,
        "egfr_hinge": 0.07,
        "bmi_u": -0.002,
    },
}


def risk_function(frame: pd.DataFrame, *, concept: str = "baseline") -> np.ndarray:
    """Event probability of each row from its true feature values under ``concept``.

    ``concept`` is ``"baseline"`` or ``"drifted"``. A row with a missing feature gets NaN: the risk is
    defined on true values, which are never missing.
    """
    if concept not in CONCEPTS:
        raise UnknownNameError("concept", concept, CONCEPTS)
    absent = [c for c in FEATURES if c not in frame.columns]
    if absent:
        raise DatasetError(f"risk_function needs column(s): {', '.join(absent)}", detail={"missing_columns": absent})
    x = {c: pd.to_numeric(frame[c], errors="coerce").to_numpy(float)
         for c in FEATURES if c not in ("sex", "smoking")}
    sex = frame["sex"].to_numpy(object)
    male = np.where(sex == "male", 1.0, np.where(sex == "female", 0.0, np.nan))
    smoking = frame["smoking"].to_numpy(object)
    known_smoking = np.isin(smoking, SMOKING)
    current = np.where(known_smoking, smoking == "current", np.nan)
    former = np.where(known_smoking, smoking == "former", np.nan)
    return _sigmoid(_logit(x["age"], male, x["bmi"], x["systolic_bp"], x["total_cholesterol"],
                           x["hdl_cholesterol"], x["hba1c"], current, former, x["egfr"], _COEF[concept]))


def _logit(age: np.ndarray, male: np.ndarray, bmi: np.ndarray, sbp: np.ndarray, tc: np.ndarray,
           hdl: np.ndarray, hba1c: np.ndarray, current: np.ndarray, former: np.ndarray, egfr: np.ndarray,
           c: dict[str, float]) -> np.ndarray:
    a = (age - 55.0) / 10.0
    diabetes = (hba1c >= 6.5).astype(float)
    diabetes[np.isnan(hba1c)] = np.nan
    return (c["intercept"] + c["age"] * a + c["age_sq"] * a * a + c["male"] * male
            + c["sbp_hinge"] * np.maximum(sbp - 130.0, 0.0)
            + c["lipid_ratio"] * np.maximum(tc / hdl - 4.0, 0.0)
            + c["hba1c_hinge"] * np.maximum(hba1c - 6.5, 0.0)
            + c["diabetes_young"] * diabetes * np.maximum(70.0 - age, 0.0)
            + c["current_smoker"] * current + c["former_smoker"] * former
            + c["egfr_hinge"] * np.maximum(60.0 - egfr, 0.0)
            + c["bmi_u"] * (bmi - 25.0) ** 2)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# --------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------
def generate_cohort(n_rows: int, *, seed: int = 0, scenario: str = "none", drift_start: int = 0,
                    severity: float = 1.0, id_prefix: str = "P", id_offset: int = 0) -> Cohort:
    """A cohort of ``n_rows`` patients; rows from ``drift_start`` on follow ``scenario``.

    ``severity`` scales the scenario's magnitude (1.0 is the documented shift, 0 none). Record ids are
    ``f"{id_prefix}{id_offset + i:07d}"``. The same arguments always give the same cohort.
    """
    if scenario not in SCENARIOS:
        raise UnknownNameError("scenario", scenario, SCENARIOS)
    _check_args(n_rows, seed, drift_start, severity, id_offset)

    base = np.random.default_rng(seed)
    true = _sample_true(base, n_rows)
    risk = _risk_of(true, _COEF["baseline"])
    outcome = (base.random(n_rows) < risk).astype(np.int64)
    observed = _with_missing(base, true, BASE_MISSING)

    drifted = np.zeros(n_rows, dtype=bool)
    if scenario != "none":
        drifted[drift_start:] = True
        m = n_rows - drift_start
        rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(scenario.encode())]))
        tail = slice(drift_start, None)
        if m > 0:
            if scenario == "covariate-shift":
                new = _sample_true(rng, m, age_shift=AGEING_YEARS * severity)
                new_risk = _risk_of(new, _COEF["baseline"])
                _put(true, new, tail)
                _put(observed, _with_missing(rng, new, BASE_MISSING), tail)
                risk[tail] = new_risk
                outcome[tail] = rng.random(m) < new_risk
            elif scenario == "measurement-shift":
                observed["hba1c"][tail] = _finish("hba1c", observed["hba1c"][tail] + HBA1C_BIAS * severity, 1)
                bias = max(1.0 - EGFR_BIAS * severity, 0.0)
                observed["egfr"][tail] = _finish("egfr", observed["egfr"][tail] * bias, 1)
            elif scenario == "concept-drift":
                tail_true = {k: v[tail] for k, v in true.items()}
                z0 = _logit_of(tail_true, _COEF["baseline"])
                z1 = _logit_of(tail_true, _COEF["drifted"])
                new_risk = _sigmoid(z0 + severity * (z1 - z0))
                risk[tail] = new_risk
                outcome[tail] = rng.random(m) < new_risk
            elif scenario == "prevalence-shift":
                new, new_risk, new_outcome = _label_shifted(rng, m, severity)
                _put(true, new, tail)
                _put(observed, _with_missing(rng, new, BASE_MISSING), tail)
                risk[tail] = new_risk
                outcome[tail] = new_outcome
            elif scenario == "missingness-spike":
                for col in SPIKE_COLUMNS:
                    # Blank extra cells so base-missing plus extra reaches the spike rate.
                    base_rate = BASE_MISSING[col]
                    extra = rng.random(m) < (_spike_rate(base_rate, severity) - base_rate) / (1.0 - base_rate)
                    observed[col][tail] = np.where(extra, np.nan, observed[col][tail])

    frame = _frame(observed, outcome, id_prefix, id_offset)
    return Cohort(frame=frame, true_risk=risk, drifted=drifted, scenario=scenario, drift_start=drift_start, seed=seed)


def _check_args(n_rows: int, seed: int, drift_start: int, severity: float, id_offset: int) -> None:
    for name, value in (("n_rows", n_rows), ("seed", seed), ("drift_start", drift_start), ("id_offset", id_offset)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DatasetError(f"{name} must be a whole number, got {value!r}")
        if value < 0:
            raise DatasetError(f"{name} must be 0 or more, got {value}")
    if drift_start > n_rows:
        raise DatasetError(f"drift_start ({drift_start}) must not be greater than n_rows ({n_rows})")
    if isinstance(severity, bool) or not isinstance(severity, (int, float, np.integer, np.floating)) \
            or not math.isfinite(severity) or severity < 0:
        raise DatasetError(f"severity must be a finite number, 0 or more, got {severity!r}")


def _sample_true(rng: np.random.Generator, n: int, *, age_shift: float = 0.0) -> dict[str, np.ndarray]:
    """True feature values of ``n`` patients (rounded and clipped, so they are also what a lab would
    report). Smoking is coded 0 never, 1 former, 2 current; sex 1 for male."""
    # Age: a beta on 25-90 with mean ~55; an ageing population is the same shape moved up.
    age = 25.0 + 65.0 * rng.beta(2.4, 2.8, n) + age_shift
    age = np.round(np.clip(age, 18.0, 99.0))
    male = (rng.random(n) < 0.5).astype(float)
    a = (age - 55.0) / 10.0
    # BMI: log-normal around 27, peaking in late middle age.
    bmi = _finish("bmi", np.exp(np.log(27.5 + 0.5 * a - 0.35 * a * a) + 0.17 * rng.standard_normal(n)), 1, 15, 60)
    # Glycaemia: a normal band that rises with BMI and age, plus a diabetic tail (~12 %).
    p_diabetes = _sigmoid(-2.3 + 0.35 * a + 0.11 * (bmi - 27.0))
    diabetic = rng.random(n) < p_diabetes
    normal = 5.35 + 0.05 * a + 0.02 * (bmi - 27.0) + 0.28 * rng.standard_normal(n)
    tail = 6.5 + rng.gamma(2.0, 0.6, n)
    hba1c = _finish("hba1c", np.where(diabetic, tail, np.minimum(normal, 6.45)), 1, 4.0, 14.0)
    # Systolic BP rises with age and BMI; men a little higher.
    sbp = 128.0 + 6.0 * a + 0.9 * (bmi - 27.0) + 3.0 * male + 4.0 * diabetic + 15.0 * rng.standard_normal(n)
    sbp = _finish("systolic_bp", sbp, 0, 85.0, 230.0)
    # Lipids: total cholesterol rises to late middle age; HDL lower in men and with high BMI.
    tc = _finish("total_cholesterol", 5.2 + 0.12 * a - 0.08 * a * a + 0.2 * (1 - male) * (age > 50)
                 + 1.0 * rng.standard_normal(n), 2, 2.5, 11.0)
    hdl = np.exp(np.log(1.55 - 0.30 * male - 0.025 * (bmi - 27.0)).clip(-1.0) + 0.22 * rng.standard_normal(n))
    hdl = _finish("hdl_cholesterol", hdl, 2, 0.4, 3.5)
    # Smoking: ~55/25/20 never/former/current; older patients have more often quit.
    p_current = np.clip(0.20 - 0.03 * a, 0.04, 0.4)
    p_former = np.clip(0.25 + 0.04 * a, 0.08, 0.5)
    u = rng.random(n)
    smoking = np.where(u < p_current, 2.0, np.where(u < p_current + p_former, 1.0, 0.0))
    # eGFR: ~100 at 30 falling to ~65 at 80; lower with diabetes.
    egfr = 121.0 - 0.7 * age - 6.0 * diabetic + 11.0 * rng.standard_normal(n)
    egfr = _finish("egfr", egfr, 1, 8.0, 140.0)
    return {"age": age, "sex": male, "bmi": bmi, "systolic_bp": sbp, "total_cholesterol": tc,
            "hdl_cholesterol": hdl, "hba1c": hba1c, "smoking": smoking, "egfr": egfr}


def _finish(name: str, values: np.ndarray, decimals: int, low: float | None = None,
            high: float | None = None) -> np.ndarray:
    """Clip to a plausible band, round, and clip to the spec range (NaN stays NaN)."""
    spec_low, spec_high = _SPEC_RANGE[name]
    values = np.clip(values, spec_low if low is None else low, spec_high if high is None else high)
    return np.clip(np.round(values, decimals), spec_low, spec_high)


def _logit_of(true: dict[str, np.ndarray], coef: dict[str, float]) -> np.ndarray:
    smoking = true["smoking"]
    return _logit(true["age"], true["sex"], true["bmi"], true["systolic_bp"], true["total_cholesterol"],
                  true["hdl_cholesterol"], true["hba1c"], (smoking == 2).astype(float),
                  (smoking == 1).astype(float), true["egfr"], coef)


def _risk_of(true: dict[str, np.ndarray], coef: dict[str, float]) -> np.ndarray:
    return _sigmoid(_logit_of(true, coef))


def _with_missing(rng: np.random.Generator, true: dict[str, np.ndarray],
                  rates: dict[str, float]) -> dict[str, np.ndarray]:
    """A copy of ``true`` with each column in ``rates`` blanked (NaN) at that rate."""
    n = len(true["age"])
    observed = {k: v.copy() for k, v in true.items()}
    for col, rate in rates.items():
        observed[col][rng.random(n) < rate] = np.nan
    return observed


def _put(target: dict[str, np.ndarray], values: dict[str, np.ndarray], where: slice) -> None:
    for key, column in values.items():
        target[key][where] = column


def _spike_rate(base_rate: float, severity: float) -> float:
    """Missing rate under a spike: the base rate at severity 0, SPIKE_MISSING at 1, at most 95 %."""
    return float(min(base_rate + (SPIKE_MISSING - base_rate) * severity, 0.95))


def _label_shifted(rng: np.random.Generator, m: int,
                   severity: float) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``m`` patients with the base P(x | y) and (1 + severity) times the base prevalence.

    Candidates are drawn from the base population and outcome model, then positives and negatives
    are taken in the target proportion, so each class keeps its own feature distribution.
    """
    pools: list[dict[str, np.ndarray]] = []
    risks: list[np.ndarray] = []
    outcomes: list[np.ndarray] = []
    batch = max(5 * m // 2, 1000)  # enough for one batch at severity 1 (prevalence ~0.2 -> 0.4)
    n_pos = n_neg = 0
    while not pools or sum(int(o.sum()) for o in outcomes) < n_pos or \
            sum(int((o == 0).sum()) for o in outcomes) < n_neg:
        cand = _sample_true(rng, batch)
        cand_risk = _risk_of(cand, _COEF["baseline"])
        pools.append(cand)
        risks.append(cand_risk)
        outcomes.append((rng.random(batch) < cand_risk).astype(np.int64))
        if len(pools) == 1:
            # The target comes from the first batch, so it does not depend on how many batches it takes.
            target = float(np.clip(outcomes[0].mean() * (1.0 + severity), 0.01, 0.95))
            n_pos = round(m * target)
            n_neg = m - n_pos
    pool = {k: np.concatenate([p[k] for p in pools]) for k in pools[0]}
    risk = np.concatenate(risks)
    outcome = np.concatenate(outcomes)
    chosen = np.concatenate([np.flatnonzero(outcome == 1)[:n_pos], np.flatnonzero(outcome == 0)[:n_neg]])
    chosen = rng.permutation(chosen)
    return {k: v[chosen] for k, v in pool.items()}, risk[chosen], outcome[chosen]


def _frame(observed: dict[str, np.ndarray], outcome: np.ndarray, id_prefix: str, id_offset: int) -> pd.DataFrame:
    n = len(outcome)
    sex = np.where(observed["sex"] == 1.0, "male", "female").astype(object)
    codes = observed["smoking"]
    smoking = np.array(SMOKING, dtype=object)[np.nan_to_num(codes, nan=0.0).astype(np.int64)]
    smoking[np.isnan(codes)] = None
    columns = {
        "record_id": [f"{id_prefix}{id_offset + i:07d}" for i in range(n)],
        "age": observed["age"], "sex": sex, "bmi": observed["bmi"], "systolic_bp": observed["systolic_bp"],
        "total_cholesterol": observed["total_cholesterol"], "hdl_cholesterol": observed["hdl_cholesterol"],
        "hba1c": observed["hba1c"], "smoking": smoking, "egfr": observed["egfr"],
        "outcome": outcome.astype(np.int64),
    }
    return pd.DataFrame(columns, columns=list(COLUMNS))
