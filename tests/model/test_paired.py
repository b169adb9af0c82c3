"""The gate's paired evidence: DeLong's AUC difference and the paired loss differences, checked against
independent computations on fixed data (scikit-learn's AUC, a brute-force paired bootstrap)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from learning_machine.model.evaluation import delong_difference, paired_comparison


def _data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-1.5 * signal))).astype(int)
    good = 1 / (1 + np.exp(-(1.5 * signal + rng.normal(scale=0.5, size=n))))
    worse = 1 / (1 + np.exp(-(1.5 * signal + rng.normal(scale=2.0, size=n))))
    return y, good, worse, signal


def test_delong_matches_scikit_learn_and_a_paired_bootstrap() -> None:
    y, good, worse, _ = _data()
    found = delong_difference(y, good, worse)
    assert found is not None
    assert found["a"] == pytest.approx(roc_auc_score(y, good)) and found["b"] == pytest.approx(roc_auc_score(y, worse))
    rng = np.random.default_rng(1)
    diffs = []
    for _ in range(400):
        i = rng.integers(0, len(y), len(y))
        diffs.append(roc_auc_score(y[i], good[i]) - roc_auc_score(y[i], worse[i]))
    assert found["se"] == pytest.approx(np.std(diffs), rel=0.2)  # the analytic SE agrees with resampling
    assert found["ci_low"] > 0 and found["p_value"] < 0.01


@pytest.mark.parametrize(("case", "verdict"), [("better", "above"), ("equal", "spans"), ("worse", "below")])
def test_a_better_an_equal_and_a_worse_challenger(case: str, verdict: str) -> None:
    y, good, worse, signal = _data(seed=3)
    rng = np.random.default_rng(4)
    same = 1 / (1 + np.exp(-(1.5 * signal + rng.normal(scale=0.5, size=len(y)))))  # as good as `good`
    candidate = {"better": good, "equal": same, "worse": worse}[case]
    champion = worse if case == "better" else good
    evidence = paired_comparison(y, candidate, champion, {"half": pd.Series(np.arange(len(y)) % 2)})
    auc = evidence["auc"]
    position = "above" if auc["ci_low"] > 0 else "below" if auc["ci_high"] < 0 else "spans"
    assert position == verdict, auc
    # Losses agree in direction: a better challenger has a lower log loss, with an interval below 0.
    if case == "better":
        assert evidence["log_loss"]["ci_high"] < 0 and evidence["brier"]["diff"] < 0
    assert set(evidence["subgroups"]["half"]) == {"0", "1"}


def test_too_few_rows_of_a_class_give_no_auc_evidence() -> None:
    assert delong_difference(np.array([1, 0, 0, 0]), np.array([0.9, 0.1, 0.2, 0.3]), np.full(4, 0.5)) is None
