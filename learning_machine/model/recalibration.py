"""Recalibration: keep a model's scores and refit only the map from score to probability.

When the rows a model sees change in a way that leaves its ranking intact (a prevalence shift: the same
patients per outcome, more of them with the event), its risks are off by a constant on the logit scale and
retraining it is not needed: a map ``logit p' = a + b * logit p`` fitted on a few hundred new labelled rows
restores its calibration, and being monotone it leaves the AUC exactly as it was. Two such maps
(Steyerberg, *Clinical Prediction Models*, ch. 20; Van Calster et al. 2016):

- **recalibration-in-the-large** (``intercept``): ``b = 1``, only the offset ``a`` is fitted (the model's
  logit as an offset), which corrects risks that are right in spread but wrong on average;
- **logistic recalibration** (``logistic``): ``a`` and ``b`` both fitted, which also corrects risks that are
  too extreme (``b < 1``) or too timid (``b > 1``).

Which one (or none) is chosen by the **closed testing procedure** of Vergouwe et al. (Stat Med 2017), the one
Davis et al. use in their recalibrate-versus-refit updating (JAMIA 2019; J Biomed Inform 2020): likelihood-
ratio tests from the most extensive update down, so the whole family keeps the level ``alpha``:

1. logistic recalibration against no update (2 degrees of freedom): not significant, keep the model as it is;
2. logistic recalibration against recalibration-in-the-large (1 degree of freedom): not significant, shift the
   intercept only; significant, fit both.

The procedure's last level, a full refit of the model against logistic recalibration, is the platform's
``retrain`` change (:func:`learning_machine.model.training.retrain_best`): the loop asks for a recalibration
only when the model still ranks (:mod:`learning_machine.loop.policy`), and the gate compares either change with
the champion on the same held-out rows.

:class:`RecalibratedClassifier` is the recalibrated model: the champion's fitted classifier and the map, a
scikit-learn classifier that pickles with the pipeline, so a recalibrated version is logged, loaded, served and
explained through the same paths as any other (the model server's fast path and exact attributions apply the
map to the champion's margin; see :mod:`learning_machine.model.inference` and
:mod:`learning_machine.model.explain`)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

Method = Literal["none", "intercept", "logistic"]
METHODS: tuple[Method, ...] = ("none", "intercept", "logistic")
EPS = 1e-7


def logit(proba: Any) -> np.ndarray:
    """The log-odds of probabilities, clipped away from 0 and 1 (as the calibration measures clip them)."""
    p = np.clip(np.asarray(proba, dtype=float), EPS, 1 - EPS)
    return np.asarray(np.log(p) - np.log1p(-p))


def sigmoid(z: Any) -> np.ndarray:
    z = np.asarray(z, dtype=float)
    return np.asarray(np.exp(-np.logaddexp(0.0, -z)))


def _log_likelihood(y: np.ndarray, z: np.ndarray) -> float:
    """Bernoulli log-likelihood of outcomes ``y`` under log-odds ``z`` (stable for large ``|z|``)."""
    return float(-(y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)).sum())


def fit_intercept(y: Any, proba: Any) -> float:
    """Recalibration-in-the-large: the ``a`` of ``logit P(y=1) = a + logit(p)`` by maximum likelihood (Newton
    on one concave parameter). 0 when the risks are right on average, above 0 when they are too low."""
    y = np.asarray(y, dtype=float)
    lp = logit(proba)
    a = 0.0
    for _ in range(100):
        mu = sigmoid(a + lp)
        step = float((y - mu).sum() / max(float((mu * (1 - mu)).sum()), 1e-12))
        a += step
        if abs(step) < 1e-12:
            break
    return float(a)


def fit_logistic(y: Any, proba: Any) -> tuple[float, float]:
    """Logistic recalibration: ``(a, b)`` of ``logit P(y=1) = a + b * logit(p)`` by maximum likelihood
    (Newton-Raphson from the identity map; the log-likelihood is concave)."""
    y = np.asarray(y, dtype=float)
    lp = logit(proba)
    coef = np.array([0.0, 1.0])
    design = np.column_stack([np.ones_like(lp), lp])
    for _ in range(100):
        mu = sigmoid(design @ coef)
        w = np.maximum(mu * (1 - mu), 1e-12)
        delta = np.linalg.solve(design.T @ (design * w[:, None]), design.T @ (y - mu))
        coef = coef + delta
        if np.abs(delta).max() < 1e-10:
            break
    return float(coef[0]), float(coef[1])


@dataclass(frozen=True)
class CalibrationFit:
    """The calibration of risks on labelled rows, with standard errors (from the observed information at the
    maximum): calibration-in-the-large (the intercept with the model's logit as an offset; 0 is ideal) and
    the calibration slope (1 is ideal), as :func:`learning_machine.model.evaluation.calibration_slope_intercept`."""

    intercept: float
    intercept_se: float
    slope: float
    slope_se: float
    rows: int

    def as_dict(self) -> dict[str, float]:
        """What the change-control plan's calibration clauses read (``slope``, ``slope_se``, ``intercept``,
        ``intercept_se``, ``rows``)."""
        return {"slope": self.slope, "slope_se": self.slope_se, "intercept": self.intercept,
                "intercept_se": self.intercept_se, "rows": float(self.rows)}

    def interval(self, name: str, z: float = 1.959963984540054) -> tuple[float, float]:
        """The 95 % (by default) interval of ``intercept`` or ``slope``."""
        value, se = (self.intercept, self.intercept_se) if name == "intercept" else (self.slope, self.slope_se)
        return value - z * se, value + z * se


def calibration_fit(y: Any, proba: Any) -> CalibrationFit | None:
    """Calibration-in-the-large and slope of ``proba`` for the outcomes ``y``, with their standard errors;
    None without rows of both outcomes."""
    y = np.asarray(y, dtype=float)
    if len(y) < 3 or len(np.unique(y)) < 2:
        return None
    lp = logit(proba)
    a1 = fit_intercept(y, proba)
    mu = sigmoid(a1 + lp)
    a1_se = float(1.0 / np.sqrt(max(float((mu * (1 - mu)).sum()), 1e-12)))
    a2, b2 = fit_logistic(y, proba)
    mu = sigmoid(a2 + b2 * lp)
    design = np.column_stack([np.ones_like(lp), lp])
    information = design.T @ (design * np.maximum(mu * (1 - mu), 1e-12)[:, None])
    try:
        b2_se = float(np.sqrt(max(np.linalg.inv(information)[1, 1], 0.0)))
    except np.linalg.LinAlgError:  # every score the same: no slope can be measured
        b2_se = float("inf")
    return CalibrationFit(a1, a1_se, b2, b2_se, len(y))


@dataclass(frozen=True)
class RecalibrationMap:
    """``logit p' = intercept + slope * logit p``, and the method that chose it (identity for ``none``)."""

    intercept: float = 0.0
    slope: float = 1.0
    method: Method = "none"

    def apply(self, proba: Any) -> np.ndarray:
        """The recalibrated probabilities of the scores ``proba``."""
        return sigmoid(self.intercept + self.slope * logit(proba))

    def after(self, first: RecalibrationMap) -> RecalibrationMap:
        """This map applied after ``first`` (a recalibrated model recalibrated again): one map of the same form."""
        method: Method = "logistic" if "logistic" in (self.method, first.method) else (
            "intercept" if "intercept" in (self.method, first.method) else "none")
        return RecalibrationMap(self.intercept + self.slope * first.intercept, self.slope * first.slope, method)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClosedTest:
    """The closed test's choice and its statistics on the rows it was run on."""

    method: Method
    map: RecalibrationMap
    alpha: float
    rows: int
    events: int
    log_likelihood: dict[str, float]
    """Maximised log-likelihood of each model: ``none`` (the scores as they are), ``intercept``, ``logistic``."""
    tests: tuple[dict[str, Any], ...]
    """Each likelihood-ratio test: the two models, the statistic, degrees of freedom, p-value and whether it
    was significant at ``alpha``; ``step`` 1 and 2 are the procedure's, ``step`` 0 (intercept against none) is
    shown for information."""
    fitted: dict[str, dict[str, float]]
    """Both fitted maps, whichever was chosen: ``intercept`` (``a``) and ``logistic`` (``a``, ``b``)."""

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "map": self.map.as_dict(), "alpha": self.alpha, "rows": self.rows,
                "events": self.events, "log_likelihood": self.log_likelihood, "tests": list(self.tests),
                "fitted": self.fitted, "procedure": "closed testing (Vergouwe et al., Stat Med 2017)"}


def closed_test(y: Any, proba: Any, *, alpha: float = 0.05) -> ClosedTest:
    """Choose no update, recalibration-in-the-large or logistic recalibration of the scores ``proba`` for the
    outcomes ``y`` by the closed testing procedure (see the module's documentation). Raises ``ValueError``
    when the rows do not hold both outcomes (no map can be fitted)."""
    from scipy.stats import chi2

    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha!r}")
    y = np.asarray(y, dtype=float)
    lp = logit(proba)
    if len(y) != len(lp):
        raise ValueError(f"{len(y)} outcomes but {len(lp)} scores")
    if len(y) < 2 or len(np.unique(y)) < 2:
        raise ValueError("recalibration needs rows of both outcomes")
    a1 = fit_intercept(y, proba)
    a2, b2 = fit_logistic(y, proba)
    ll = {"none": _log_likelihood(y, lp), "intercept": _log_likelihood(y, a1 + lp),
          "logistic": _log_likelihood(y, a2 + b2 * lp)}

    def lr_test(step: int, larger: Method, smaller: Method, df: int) -> dict[str, Any]:
        statistic = max(2.0 * (ll[larger] - ll[smaller]), 0.0)
        p_value = float(chi2.sf(statistic, df))
        return {"step": step, "test": f"{larger} against {smaller}", "statistic": statistic, "df": df,
                "p_value": p_value, "significant": bool(p_value < alpha)}

    overall = lr_test(1, "logistic", "none", 2)
    slope = lr_test(2, "logistic", "intercept", 1)
    shown = lr_test(0, "intercept", "none", 1)
    if not overall["significant"]:
        chosen = RecalibrationMap()
        tests: tuple[dict[str, Any], ...] = (overall, shown)
    elif not slope["significant"]:
        chosen = RecalibrationMap(a1, 1.0, "intercept")
        tests = (overall, slope, shown)
    else:
        chosen = RecalibrationMap(a2, b2, "logistic")
        tests = (overall, slope, shown)
    return ClosedTest(chosen.method, chosen, alpha, len(y), int(y.sum()), ll, tests,
                      {"intercept": {"a": a1}, "logistic": {"a": a2, "b": b2}})


class RecalibratedClassifier(ClassifierMixin, BaseEstimator):
    """A fitted classifier whose event probability is mapped by ``logit p' = intercept + slope * logit p``.

    It is never fitted itself (the base is the champion's, the map the closed test's): it only predicts.
    ``base`` keeps the champion's classifier as it was, so its kind (:func:`learning_machine.model.training.
    kind_of`), its booster or coefficients (the serving fast path, exact attributions) and a later warm start
    all see the original model."""

    def __init__(self, base: Any = None, intercept: float = 0.0, slope: float = 1.0, method: str = "none") -> None:
        self.base = base
        self.intercept = intercept
        self.slope = slope
        self.method = method

    @property
    def mapping(self) -> RecalibrationMap:
        method = self.method if self.method in METHODS else "logistic"
        return RecalibrationMap(float(self.intercept), float(self.slope), method)

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.base.classes_)

    @property
    def n_features_in_(self) -> int:
        return int(self.base.n_features_in_)

    def __sklearn_is_fitted__(self) -> bool:
        return self.base is not None

    def fit(self, X: Any, y: Any) -> RecalibratedClassifier:
        """Refit the map (not the base) on ``(X, y)`` by the closed test."""
        found = closed_test(y, self.base.predict_proba(X)[:, 1])
        self.intercept, self.slope, self.method = found.map.intercept, found.map.slope, found.method
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        q = self.mapping.apply(self.base.predict_proba(X)[:, 1])
        return np.column_stack([1.0 - q, q])

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self.classes_)[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]


def unwrap(classifier: Any) -> tuple[Any, RecalibrationMap | None]:
    """The base classifier of a recalibrated one and its map; any other classifier as it is, with None."""
    if isinstance(classifier, RecalibratedClassifier):
        return classifier.base, classifier.mapping
    return classifier, None


def recalibrated_pipeline(pipeline: Any, mapping: RecalibrationMap) -> Any:
    """A copy of the fitted pipeline (``preprocess`` + ``model``) whose model's probabilities are mapped by
    ``mapping``; a pipeline that is already recalibrated gets one composed map on its original classifier."""
    from sklearn.pipeline import Pipeline

    base, earlier = unwrap(pipeline.named_steps["model"])
    combined = mapping if earlier is None else mapping.after(earlier)
    model = RecalibratedClassifier(copy.deepcopy(base), combined.intercept, combined.slope, combined.method)
    return Pipeline([("preprocess", copy.deepcopy(pipeline.named_steps["preprocess"])), ("model", model)])
