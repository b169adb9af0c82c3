"""Performance before the outcomes arrive: confidence-based performance estimation (CBPE, as NannyML does it).

If the model is calibrated, a row with score p is an event with probability p. The outcomes of a set of
scored rows are then independent Bernoulli(p) draws, and every metric of those rows has a distribution
that follows from the scores alone:

- **AUC**: the realised AUC is sum over pairs of y_i (1 - y_j) [s_i > s_j] / (n_events n_non_events); its
  expected value (to first order, as a ratio of expectations) is sum over ordered pairs i != j of
  p_i (1 - p_j) [s_i > s_j] / sum over i != j of p_i (1 - p_j), ties counting 1/2 (:func:`expected_auc`).
- **Brier score**: mean p (1 - p), exactly, with variance sum p (1 - p)(1 - 2p)^2 / n^2.
- **prevalence**: mean p, exactly, with variance sum p (1 - p) / n^2.
- **calibration error** (ECE, the same equal-count bins as :mod:`learning_machine.model.evaluation`): the
  estimate *assumes* calibration, so the expected ECE is not 0 but the noise floor of a calibrated model on
  these rows. It is the reference a realised ECE is reconciled against: above its interval, the model is
  miscalibrated on this population.

The interval of each metric is where the *realised* value on the same rows falls with 95 % probability
if the model is calibrated. For the AUC and the ECE it comes from simulating the outcomes (a parametric
bootstrap: ``draws`` sets of y ~ Bernoulli(p), each scored like a real set of outcomes; the scores are
ranked once, so each draw costs O(n)). For the Brier score and the prevalence it is the normal interval
of their exact variance. The estimate cannot see concept drift (the scores stay calibrated-looking while
the truth moves): pair it with the realised figures and :func:`reconcile` them as outcomes arrive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from learning_machine.model.evaluation import Z95, calibration_bins, midranks, subgroup_masks

METRICS: tuple[str, ...] = ("auc", "brier", "prevalence", "ece")
DRAWS = 1000
"""Simulated outcome sets for the AUC and ECE intervals: the 2.5 % and 97.5 % quantiles of 1000 draws move by
about 0.002 AUC between seeds on a few hundred rows."""
_CELLS_PER_BLOCK = 2_000_000  # draws x rows simulated at once: bounded memory however many rows


@dataclass(frozen=True)
class Interval:
    """An estimated metric: its expected value, the 95 % interval of the realised value, and its spread."""

    value: float
    low: float
    high: float
    se: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class GroupEstimate:
    """The estimated metrics of one set of rows (AUC left out when it is undefined: fewer than two rows)."""

    n: int
    metrics: dict[str, Interval]


@dataclass
class EstimatedPerformance:
    """Estimated metrics overall and per subgroup label (the groups :func:`evaluate` reports)."""

    overall: GroupEstimate
    subgroups: dict[str, dict[str, GroupEstimate]] = field(default_factory=dict)


def _clean(proba: Any) -> np.ndarray:
    """Scores as floats, clipped like :func:`binary_metrics` does (so the Brier scores compare exactly)."""
    return np.clip(np.asarray(proba, dtype=float).ravel(), 1e-7, 1 - 1e-7)


def expected_auc(proba: Any) -> float:
    """The expected AUC of calibrated scores: sum over ordered pairs i != j with s_i > s_j of p_i (1 - p_j),
    ties counting 1/2, over sum over i != j of p_i (1 - p_j). O(n log n): one sort, cumulative sums over
    groups of tied scores. NaN with fewer than two rows."""
    p = _clean(proba)
    if len(p) < 2:
        return float("nan")
    p = np.sort(p, kind="mergesort")
    q = 1.0 - p
    # Tied scores form runs in the sorted order; every row of a run sees the same rows below it.
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
    run_p = np.add.reduceat(p, starts)  # events expected in each run
    run_q = np.add.reduceat(q, starts)  # non-events expected in each run
    run_pq = np.add.reduceat(p * q, starts)  # a row paired with itself: not a pair
    below_q = np.cumsum(run_q) - run_q  # non-events expected among strictly lower scores
    numerator = float(np.sum(run_p * below_q) + 0.5 * np.sum(run_p * run_q - run_pq))
    denominator = float(p.sum() * q.sum() - np.sum(p * q))
    return numerator / denominator if denominator > 0 else float("nan")


def _simulate(p: np.ndarray, draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The realised AUC and ECE of ``draws`` simulated outcome sets y ~ Bernoulli(p) (AUC NaN for a draw
    with one class only)."""
    n = len(p)
    ranks = midranks(p)
    bins = calibration_bins(p)
    onehot = np.zeros((n, bins.max() + 1))
    onehot[np.arange(n), bins] = 1.0
    gap_p = p @ onehot  # predicted events per bin
    rng = np.random.default_rng(seed)
    aucs, eces = [], []
    block = max(1, min(draws, _CELLS_PER_BLOCK // max(n, 1)))
    for start in range(0, draws, block):
        y = (rng.random((min(block, draws - start), n)) < p).astype(float)
        n1 = y.sum(axis=1)
        n0 = n - n1
        with np.errstate(invalid="ignore", divide="ignore"):  # one-class draws: AUC undefined
            aucs.append(np.where((n1 > 0) & (n0 > 0), (y @ ranks - n1 * (n1 + 1) / 2) / (n1 * n0), np.nan))
        eces.append(np.abs(gap_p - y @ onehot).sum(axis=1) / n)
    return np.concatenate(aucs), np.concatenate(eces)


def _from_draws(value: float, draws: np.ndarray) -> Interval:
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return Interval(value, float("nan"), float("nan"), float("nan"))
    low, high = np.quantile(draws, [0.025, 0.975])
    return Interval(value, float(low), float(high), float(draws.std(ddof=1)) if len(draws) > 1 else 0.0)


def _normal(value: float, se: float) -> Interval:
    return Interval(value, value - Z95 * se, value + Z95 * se, se)


def estimate_group(proba: Any, *, draws: int = DRAWS, seed: int = 0) -> GroupEstimate:
    """Estimated AUC, Brier score, prevalence and calibration error of one set of scores (no labels)."""
    p = _clean(proba)
    p = p[np.isfinite(p)]
    n = len(p)
    if n == 0:
        return GroupEstimate(0, {})
    var = p * (1 - p)
    metrics = {
        "brier": _normal(float(var.mean()), float(np.sqrt(np.sum(var * (1 - 2 * p) ** 2)) / n)),
        "prevalence": _normal(float(p.mean()), float(np.sqrt(var.sum())) / n),
    }
    sim_auc, sim_ece = _simulate(p, draws, seed)
    metrics["ece"] = _from_draws(float(sim_ece.mean()), sim_ece)
    if n >= 2:
        metrics["auc"] = _from_draws(expected_auc(p), sim_auc)
    return GroupEstimate(n, {name: metrics[name] for name in METRICS if name in metrics})


def estimated_performance(proba: Any, subgroups: Mapping[str, pd.Series] | None = None, *,
                          draws: int = DRAWS, seed: int = 0) -> EstimatedPerformance:
    """Estimated metrics of calibrated scores, overall and per subgroup label: ``subgroups`` is
    ``spec.subgroup_labels(frame)``, as :func:`evaluate` takes it, and labels with fewer than
    ``MIN_SUBGROUP_ROWS`` rows are left out as there."""
    p = np.asarray(proba, dtype=float).ravel()
    result = EstimatedPerformance(estimate_group(p, draws=draws, seed=seed))
    for group, labels in (subgroups or {}).items():
        result.subgroups[group] = {label: estimate_group(p[mask], draws=draws, seed=seed)
                                   for label, mask in subgroup_masks(labels)}
    return result


def reconcile(estimated: GroupEstimate | Mapping[str, Interval], realised: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Realised against estimated metrics on the same rows: per metric both values, the difference
    (realised minus estimated), the estimate's interval and whether the realised value lies inside it.
    Outside means the scores are not calibrated on these rows any more (concept drift, or a population the
    model extrapolates to), or a 1-in-20 chance."""
    metrics = estimated.metrics if isinstance(estimated, GroupEstimate) else estimated
    out: dict[str, dict[str, Any]] = {}
    for name, est in metrics.items():
        value = realised.get(name)
        if value is None or not np.isfinite(value) or not np.isfinite(est.value):
            continue
        out[name] = {"estimated": est.value, "realised": float(value), "difference": float(value) - est.value,
                     "low": est.low, "high": est.high, "within": bool(est.low <= value <= est.high)}
    return out
