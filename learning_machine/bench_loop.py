"""Benchmark of the learning loop's statistics, per drift scenario of the generator, seeds fixed:
detection delay (rows after drift onset until the policy fires) and false alarms per 10,000 clean rows
for the configured detector and policy, next to the CUSUM lower bound for the same shift and false-alarm
rate; and AUC on post-drift data before and after retraining next to an oracle trained on post-drift data.

The monitor's own functions run here in process (windows, the drift detector the model server runs, the
policy); the services around them are measured by the end-to-end tests and the serving section."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from learning_machine.data.sources import LoadedDataset, load_dataset
from learning_machine.data.synthetic import SCENARIOS
from learning_machine.drift import detect, fit_detector
from learning_machine.evaluation import binary_metrics
from learning_machine.monitor import performance_results
from learning_machine.policy import RetrainPolicy, WindowSummary, decide
from learning_machine.training import predict_proba, retrain_model, train_model

Progress = Callable[[str], None]
WINDOW = 200
CLEAN_ROWS = 10_000
OUTCOME_DELAY = 100


@dataclass
class Detection:
    delay_rows: int | None
    rule: str | None


def _frame(scenario: str, rows: int, seed: int, drift_start: int) -> LoadedDataset:
    return load_dataset("synthetic-cohort", n_rows=rows, seed=seed, scenario=scenario, drift_start=drift_start)


def run_monitor(data: LoadedDataset, model: Any, detector: Any, policy: RetrainPolicy, *, drift_start: int,
                stop_at_first: bool = True) -> list[Detection]:
    """Windows over ``data`` in arrival order; outcomes arrive ``OUTCOME_DELAY`` rows late. Returns each
    time the policy fired (its delay after ``drift_start`` in rows); after a firing the history restarts."""
    frame = data.frame
    proba = predict_proba(model, data.spec, frame)
    windows: list[WindowSummary] = []
    fired: list[Detection] = []
    for end in range(WINDOW, len(frame) + 1, WINDOW):
        window = frame.iloc[end - WINDOW:end]
        drift = detect(detector, window[data.spec.feature_names])
        seen = max(0, end - OUTCOME_DELAY)
        labelled = frame.iloc[max(0, seen - 400):seen].assign(probability=proba[max(0, seen - 400):seen])
        _, auc = performance_results(data.spec, labelled) if len(labelled) >= 100 else ([], None)
        windows.append(WindowSummary(end // WINDOW, float(end), WINDOW, drift=bool(drift["is_drift"]),
                                     auc=auc, n_outcomes=len(labelled)))
        decision = decide(windows, policy, now=float(end), last_retrain_at=None)
        if decision.retrain:
            fired.append(Detection(end - drift_start, decision.rules[0]))
            if stop_at_first:
                break
            windows = []
    return fired


def kl_rate(before: pd.DataFrame, after: pd.DataFrame, columns: list[str], seed: int) -> float:
    """KL divergence per row, KL(after || before), of the joint distribution of ``columns`` (features and
    outcome), estimated with a cross-fitted classifier: the mean log density ratio on the 'after' rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import cross_val_predict

    x = pd.concat([before[columns], after[columns]], ignore_index=True)
    for column in x.columns:
        if x[column].dtype == object:
            x[column] = x[column].astype("category").cat.codes.replace(-1, np.nan)
    y = np.r_[np.zeros(len(before)), np.ones(len(after))]
    model = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.05, random_state=seed)
    p = cross_val_predict(model, x, y, cv=5, method="predict_proba")[:, 1]
    p = np.clip(p[len(before):], 1e-4, 1 - 1e-4)
    prior = len(after) / len(before)
    return max(float(np.mean(np.log(p / (1 - p)) - np.log(prior))), 1e-6)


def cusum_bound(kl_per_row: float, false_alarms_per_10k: float) -> float:
    """Lorden's lower bound on the worst-case mean detection delay, log(ARL) / KL, for a detector whose
    mean run length to a false alarm is ARL rows (here: 10,000 / the false-alarm rate, at least 10,000)."""
    arl = CLEAN_ROWS / max(false_alarms_per_10k, 1.0)
    return math.log(arl) / kl_per_row


def bench_loop(quick: bool, progress: Progress) -> Any:
    from learning_machine.bench import Section

    seeds = [11] if quick else [11, 12, 13]
    policy = RetrainPolicy(drift_windows=2, auc_floor=0.70, min_outcomes=100, cooldown_s=0)
    reference = load_dataset("synthetic-cohort", n_rows=3000, seed=42)
    champion = train_model(reference, seed=1).pipeline
    detector = fit_detector(reference.spec, reference.frame)
    columns = [*reference.spec.feature_names, reference.spec.target.name]

    progress(f"false alarms on {CLEAN_ROWS:,} clean rows x{len(seeds)}")
    alarms = [len(run_monitor(_frame("none", CLEAN_ROWS, s, 0), champion, detector, policy, drift_start=0,
                              stop_at_first=False)) for s in seeds]
    false_alarms = statistics.mean(alarms) * 10_000 / CLEAN_ROWS
    section = Section("Learning loop: detection and recovery per drift scenario",
                      ["scenario", "detected by", "delay rows (median)", "CUSUM bound rows", "delay / bound",
                       "AUC before", "AUC retrained", "AUC oracle", "gap to oracle"])
    section.raw["false_alarms_per_10k"] = {"runs": alarms, "per_10k": false_alarms}
    drift_start, post = 1000, 2400
    for scenario in [s for s in SCENARIOS if s != "none"]:
        progress(f"scenario {scenario} x{len(seeds)}")
        delays, rules, kls, before, after, oracle = [], [], [], [], [], []
        for seed in seeds:
            data = _frame(scenario, drift_start + post, seed, drift_start)
            found = run_monitor(data, champion, detector, policy, drift_start=drift_start)
            delays.append(found[0].delay_rows if found else None)
            rules.append(found[0].rule if found else "not detected")
            pre = _frame("none", 4000, seed + 100, 0).frame
            after_rows = _frame(scenario, 4000, seed + 100, 0).frame
            kls.append(kl_rate(pre, after_rows, columns, seed))
            # Retrain as the loop does: continue the champion on old plus recent post-drift labelled rows.
            recent = LoadedDataset(reference.spec, pd.concat(
                [reference.frame.sample(1000, random_state=seed), data.frame.iloc[drift_start:]], ignore_index=True),
                "bench", {})
            retrained = retrain_model(champion, recent, seed=seed).pipeline
            oracle_model = train_model(_frame(scenario, 5000, seed + 200, 0), seed=seed).pipeline
            test = _frame(scenario, 3000, seed + 300, 0).frame
            y = test["outcome"].to_numpy()
            before.append(binary_metrics(y, predict_proba(champion, reference.spec, test))["auc"])
            after.append(binary_metrics(y, predict_proba(retrained, reference.spec, test))["auc"])
            oracle.append(binary_metrics(y, predict_proba(oracle_model, reference.spec, test))["auc"])
        found_delays = [d for d in delays if d is not None]
        delay = statistics.median(found_delays) if found_delays else float("nan")
        bound = cusum_bound(statistics.median(kls), false_alarms)
        row = [scenario, max(set(rules), key=rules.count), delay, bound, delay / bound if found_delays else "-",
               statistics.median(before), statistics.median(after), statistics.median(oracle),
               statistics.median(oracle) - statistics.median(after)]
        section.rows.append(row)
        section.raw[scenario] = {"delays": delays, "rules": rules, "kl_per_row": kls, "bound_rows": bound,
                                 "auc_before": before, "auc_retrained": after, "auc_oracle": oracle}
    section.notes += [
        f"Windows of {WINDOW} rows; drift = TabularDrift (KS / chi-squared, Bonferroni, p < 0.05) on the training "
        f"reference; policy: drift in 2 consecutive windows or realised AUC < 0.70 on >= 100 outcomes that "
        f"arrive {OUTCOME_DELAY} rows late. Drift starts at row {drift_start}; seeds {seeds}.",
        f"False alarms: {false_alarms:.2f} per 10,000 clean rows (runs: {alarms}); the bound uses an average run "
        "length to false alarm of 10,000 rows / that rate (at least 10,000).",
        "CUSUM bound: log(ARL) / KL per row (Lorden), KL of the joint (features, outcome) distribution after "
        "versus before the shift, estimated with a cross-fitted gradient-boosting classifier. A windowed test "
        "decides only at window ends, so its delay is at least one window.",
        "AUC on 3,000 fresh post-drift rows: the champion (trained on 3,000 clean rows), the champion continued on "
        "1,000 old plus the post-drift rows the loop would have (warm start), and an oracle trained from scratch "
        "on 5,000 post-drift rows.",
    ]
    return section
