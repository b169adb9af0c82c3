"""Sequential (row-by-row) change detection with a configured false-alarm budget: CUSUM statistics on every
encoded feature and on the model's log-loss once outcomes arrive.

Why: a windowed two-sample test decides only at window ends and needs a large shift to reject with
a Bonferroni correction, so its delay is at least one window. Page's CUSUM is the optimal sequential
test for a shift of the designed size (Lorden 1971): it keeps one number per stream, so its state is
bounded however long the monitor runs, and its threshold sets the mean run length between false alarms.

Streams (each standardised on the training reference, clipped at +-``CLIP`` so one outlier cannot alarm):

* every numeric feature (missing values imputed by the reference median), two-sided;
* every ``<feature>__missing`` indicator and every category of a categorical feature as a 0/1 stream,
  two-sided (a missingness spike or a new case mix);
* once outcomes arrive: the log-loss excess ``(loss - H(p)) / sd``, where ``H(p)`` is the expected loss of a
  calibrated model at probability ``p``, centred and scaled on the serving model's first outcomes
  (a burn-in); one-sided, it rises when the model gets worse for any reason (concept drift, prevalence
  shift), which feature streams cannot see.

Thresholds are calibrated by simulation, not by a normal approximation (the features are skewed,
binary or bounded): bootstrap streams from the reference (for the outcome stream, from the burn-in
outcomes), and the threshold ``h`` is chosen so that the probability of no alarm
within ``T`` rows is ``exp(-T / ARL)``, i.e. a mean run length ``ARL = 10,000 / budget`` rows, with the
budget split between the feature streams and the outcome stream.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from learning_machine.data.spec import DatasetSpec
from learning_machine.model.drift import DriftEncoding

CLIP = 5.0
CHANGE_POINT_HISTORY = 1000  # outcomes an outcome alarm's change point is estimated on
BRIDGE_5PC = 1.2239  # P(max of a Brownian bridge > x) = exp(-2 x^2) = 0.05
SIM_RUNS = 400
SIM_ROWS = 2500


def _expand(encoding: DriftEncoding, matrix: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """One-hot the categorical codes of the drift encoding (a code's mean is meaningless); numeric
    columns and 0/1 missing indicators stay as they are."""
    columns: list[np.ndarray] = []
    names: list[str] = []
    for i, name in enumerate(encoding.names):
        n_codes = encoding.categories_per_feature.get(i)
        if n_codes is None or n_codes <= 2:
            columns.append(matrix[:, i])
            names.append(name)
            continue
        feature = encoding.spec.feature(name)
        labels = [*(feature.categories or ()), "(missing or unknown)"]
        for code in range(n_codes):
            columns.append((matrix[:, i] == code).astype(float))
            names.append(f"{name}={labels[code]}")
    return (np.column_stack(columns) if columns else np.empty((len(matrix), 0))), names


def _run_maxima(increments: np.ndarray, ks: tuple[float, ...], two_sided: bool) -> np.ndarray:
    """For simulated streams (runs x rows x streams), the running maximum over rows of the largest CUSUM
    statistic over streams and reference values: a run alarms at threshold h at the first row where this
    exceeds h."""
    runs, rows, streams = increments.shape
    k = np.asarray(ks, dtype=float)[None, :, None]
    up = np.zeros((runs, len(ks), streams))
    down = np.zeros((runs, len(ks), streams))
    best = np.zeros(runs)
    for t in range(rows):
        z = increments[:, t, None, :]
        up = np.maximum(0.0, up + z - k)
        stat = up.max(axis=(1, 2))
        if two_sided:
            down = np.maximum(0.0, down - z - k)
            stat = np.maximum(stat, down.max(axis=(1, 2)))
        best = np.maximum(best, stat)
    return best


def calibrate_threshold(increments: np.ndarray, k: tuple[float, ...], arl_rows: float, *, two_sided: bool) -> float:
    """The threshold whose mean run length to a false alarm is about ``arl_rows`` on these H0 streams."""
    maxima = _run_maxima(increments, k, two_sided)
    no_alarm = float(np.exp(-increments.shape[1] / arl_rows))
    return float(np.quantile(maxima, no_alarm))


def calibrate_thresholds(increments: np.ndarray, ks: tuple[float, ...], arl_rows: float, *,
                         two_sided: bool) -> np.ndarray:
    """One threshold per reference value, each chart family given ``1 / len(ks)`` of the budget."""
    return np.array([calibrate_threshold(increments, (k,), arl_rows * len(ks), two_sided=two_sided) for k in ks])


def _logloss_excess(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Standardised excess log-loss of outcomes ``y`` at probabilities ``p``: mean 0, variance 1 when the
    model is calibrated, positive when it does worse than it expects."""
    p = np.clip(p, 1e-4, 1 - 1e-4)
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    expected = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    sd = np.sqrt(p * (1 - p)) * np.abs(np.log(p / (1 - p)))
    return np.clip((loss - expected) / np.maximum(sd, 0.05), -CLIP, CLIP)


@dataclass
class Alarm:
    """A CUSUM crossed its threshold: which stream group, at which row of it, and the streams that crossed."""

    stream: str
    """``features`` or ``outcomes``."""
    row: int
    ratio: float
    """The largest statistic as a multiple of its threshold (above 1 at an alarm)."""
    streams: list[str]
    change_row: int = 0
    """CUSUM's estimate of where the change began: the first row of the excursion that crossed."""
    since: str | None = None
    """When the row at ``change_row`` arrived (set by the monitor): retraining waits for outcomes after it."""

    def reason(self) -> str:
        what = "the model's log-loss on outcomes" if self.stream == "outcomes" else "the features"
        return (f"sequential test (CUSUM) on {what}: {', '.join(self.streams[:4])}"
                f"{' and more' if len(self.streams) > 4 else ''} crossed its threshold "
                f"({self.ratio:.2f}x) at row {self.row}")


@dataclass
class SequentialDetector:
    """CUSUM on every encoded feature (and the log-loss once outcomes arrive), calibrated on a reference."""

    encoding: DriftEncoding
    names: list[str]
    center: np.ndarray
    scale: np.ndarray
    k: tuple[float, ...]
    """Reference values (half the shift each chart is tuned for, in sd): a small one for slow, small shifts
    and a large one that reacts within a few rows to a large shift; all share one threshold."""
    threshold: np.ndarray
    """One threshold per reference value: each chart family gets its share of the false-alarm budget."""
    false_alarms_per_10k: float
    outcome_threshold: np.ndarray | None = None
    outcome_center: float = 0.0
    outcome_scale: float = 1.0
    burn_in: int = 500
    """Outcomes that calibrate the outcome stream before it tests (bounded: kept only until then)."""
    rows_seen: int = 0
    outcomes_seen: int = 0
    up: np.ndarray = field(init=False)
    down: np.ndarray = field(init=False)
    outcome_stat: np.ndarray = field(init=False)
    _burn_y: list[float] = field(default_factory=list)
    _burn_p: list[float] = field(default_factory=list)
    _recent_loss: deque[float] = field(default_factory=lambda: deque(maxlen=CHANGE_POINT_HISTORY))
    """The excess log-loss of the last outcomes tested, for the change point of an outcome alarm."""

    def __post_init__(self) -> None:
        self.reset()

    @property
    def arl_rows(self) -> float:
        """Mean rows between two false alarms that the budget allows (features and outcomes together)."""
        return 10_000 / self.false_alarms_per_10k

    def reset(self) -> None:
        """Forget the evidence (after an alarm, or when a new model version with a new reference serves)."""
        self.up = np.zeros((len(self.k), len(self.names)))
        self.down = np.zeros((len(self.k), len(self.names)))
        self.outcome_stat = np.zeros(len(self.k))
        # Where each excursion began (the row after the statistic was last 0): the change-point estimate.
        self.up_from = np.zeros((len(self.k), len(self.names)), dtype=np.int64)
        self.down_from = np.zeros((len(self.k), len(self.names)), dtype=np.int64)
        self.outcome_from = np.zeros(len(self.k), dtype=np.int64)

    def _standardise(self, frame: pd.DataFrame) -> np.ndarray:
        matrix, _ = _expand(self.encoding, self.encoding.transform(frame))
        return np.clip((matrix - self.center) / self.scale, -CLIP, CLIP)

    def update(self, frame: pd.DataFrame) -> list[Alarm]:
        """Feed rows in arrival order; every alarm (the statistics restart after each)."""
        alarms: list[Alarm] = []
        k = np.asarray(self.k)[:, None]
        for z in self._standardise(frame):
            self.rows_seen += 1
            self.up_from[self.up == 0] = self.rows_seen
            self.down_from[self.down == 0] = self.rows_seen
            self.up = np.maximum(0.0, self.up + z - k)
            self.down = np.maximum(0.0, self.down - z - k)
            ratios = np.maximum(self.up, self.down) / self.threshold[:, None]
            ratio = ratios.max(axis=0)
            if ratio.max() > 1.0:
                crossed = [f"{self.names[i]} {'up' if self.up[:, i].max() >= self.down[:, i].max() else 'down'}"
                           for i in np.argsort(-ratio) if ratio[i] > 1.0]
                chart, stream = np.unravel_index(int(np.argmax(ratios)), ratios.shape)
                began = (self.up_from if self.up[chart, stream] >= self.down[chart, stream] else self.down_from)
                alarms.append(Alarm("features", self.rows_seen, float(ratio.max()), crossed,
                                    int(began[chart, stream])))
                self.reset()
        return alarms

    def calibrate_outcomes(self, outcomes: np.ndarray, probabilities: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """Calibrate the outcome stream on labelled predictions of the serving model before any change (its
        first outcomes: a burn-in). The excess log-loss is centred and scaled on them, since a model is
        rarely perfectly calibrated on new patients, and the threshold set by resampling them."""
        z = _logloss_excess(np.asarray(outcomes, dtype=float), np.asarray(probabilities, dtype=float))
        self.outcome_center, self.outcome_scale = float(z.mean()), max(float(z.std()), 0.05)
        rng = np.random.default_rng(seed)
        runs = SIM_RUNS // 2
        # As for the features: each simulated run is standardised on its own bootstrap of the burn-in.
        boots = [z[rng.integers(0, len(z), size=len(z))] for _ in range(runs)]
        centers = np.array([b.mean() for b in boots])[:, None]
        scales = np.array([max(float(b.std()), 0.05) for b in boots])[:, None]
        sample = (z[rng.integers(0, len(z), size=(runs, SIM_ROWS))] - centers) / scales
        self.outcome_threshold = calibrate_thresholds(np.clip(sample, -CLIP, CLIP)[:, :, None], self.k,
                                                      2 * self.arl_rows, two_sided=False)
        return self.outcome_threshold

    def update_outcomes(self, outcomes: np.ndarray, probabilities: np.ndarray) -> list[Alarm]:
        """Feed outcomes (in arrival order) with the probabilities predicted for them. The first
        ``burn_in`` outcomes calibrate the stream; it tests from the next one on."""
        y = np.asarray(outcomes, dtype=float)
        p = np.asarray(probabilities, dtype=float)
        alarms: list[Alarm] = []
        if self.outcome_threshold is None:
            take = max(0, self.burn_in - len(self._burn_y))
            self.outcomes_seen += min(take, len(y))
            self._burn_y += y[:take].tolist()
            self._burn_p += p[:take].tolist()
            y, p = y[take:], p[take:]
            if len(self._burn_y) < self.burn_in:
                return alarms
            self.calibrate_outcomes(np.array(self._burn_y), np.array(self._burn_p))
            self._burn_y, self._burn_p = [], []
        assert self.outcome_threshold is not None
        z = np.clip((_logloss_excess(y, p) - self.outcome_center) / self.outcome_scale, -CLIP, CLIP)
        k = np.asarray(self.k)
        for value in z:
            self._recent_loss.append(float(value))
            self.outcomes_seen += 1
            self.outcome_from[self.outcome_stat == 0] = self.outcomes_seen
            self.outcome_stat = np.maximum(0.0, self.outcome_stat + float(value) - k)
            ratios = self.outcome_stat / self.outcome_threshold
            if ratios.max() > 1.0:
                began = int(self.outcome_from[int(np.argmax(ratios))])
                alarms.append(Alarm("outcomes", self.outcomes_seen, float(ratios.max()), ["log-loss up"],
                                    min(began, self._shift_start(began))))
                self.outcome_stat = np.zeros(len(self.k))
        return alarms

    def _shift_start(self, fallback: int) -> int:
        """Where the loss most likely rose among the last outcomes tested (up to ``CHANGE_POINT_HISTORY``): the
        single-shift estimate (argmin of the centred cumulative sum), taken without a significance test since
        the CUSUM has just shown that the loss rose. The start of the crossing chart's excursion lags the change
        (measured on the generator's concept drift at row 600: excursions began at rows 610-1,746, this estimate
        at 416-1,534 and mostly within 30 rows of 600)."""
        history = np.asarray(self._recent_loss, dtype=float)
        if len(history) < 40:
            return fallback
        cumulative = np.cumsum(history - history.mean())
        first_after = int(np.argmin(cumulative[:-1])) + 1
        return self.outcomes_seen - len(history) + first_after + 1

    def statistics(self) -> dict[str, float]:
        """The current statistic per stream (largest of the two sides), for the monitoring table."""
        ratio = (np.maximum(self.up, self.down) / self.threshold[:, None]).max(axis=0)
        out = {name: float(r) for name, r in zip(self.names, ratio, strict=True)}
        out["outcomes"] = float((self.outcome_stat / self.outcome_threshold).max()) if self.outcome_threshold is not None else 0.0
        return out


def fit_sequential(spec: DatasetSpec, reference: pd.DataFrame, *, false_alarms_per_10k: float = 1.0,
                   k: tuple[float, ...] = (0.25, 1.0), burn_in: int = 500, seed: int = 0) -> SequentialDetector:
    """Standardise on ``reference`` and calibrate the thresholds to ``false_alarms_per_10k`` (features and
    outcomes share it). Each ``k`` is half the shift, in standard deviations, that one chart is tuned for."""
    if false_alarms_per_10k <= 0:
        raise ValueError("false_alarms_per_10k must be positive")
    if len(reference) < 50:
        raise ValueError("a sequential detector needs a reference of at least 50 rows")
    encoding = DriftEncoding.fit(spec, reference)
    matrix, names = _expand(encoding, encoding.transform(reference))
    center = matrix.mean(axis=0)
    # A column constant in the reference (e.g. never missing) still gets a scale: one event in n+1 rows.
    floor = np.sqrt(1.0 / (len(matrix) + 1))
    scale = np.maximum(matrix.std(axis=0), floor)
    rng = np.random.default_rng(seed)
    sample = matrix[rng.integers(0, len(matrix), size=(SIM_RUNS, SIM_ROWS))].astype(np.float32)
    # Each simulated run standardises with the mean and sd of its own bootstrap of the reference: both are
    # estimated, and a small error in them adds up in a CUSUM (without this, false alarms came out two to
    # five times the budget on fresh data).
    boots = [matrix[rng.integers(0, len(matrix), size=len(matrix))] for _ in range(SIM_RUNS)]
    centers = np.stack([b.mean(axis=0) for b in boots])[:, None, :]
    scales = np.stack([np.maximum(b.std(axis=0), floor) for b in boots])[:, None, :]
    increments = np.clip((sample - centers) / scales, -CLIP, CLIP)
    arl = 10_000 / false_alarms_per_10k
    threshold = calibrate_thresholds(increments, k, 2 * arl, two_sided=True)
    return SequentialDetector(encoding, names, center, scale, k, threshold, false_alarms_per_10k, burn_in=burn_in)


def describe(detector: SequentialDetector) -> dict[str, Any]:
    """What the detector is, for results and events."""
    return {"detector": "CUSUM", "k": list(detector.k), "threshold": detector.threshold.tolist(),
            "outcome_threshold": None if detector.outcome_threshold is None else detector.outcome_threshold.tolist(), "false_alarms_per_10k": detector.false_alarms_per_10k,
            "streams": len(detector.names) + 1}


def rebaselined(old: SequentialDetector, fresh: SequentialDetector) -> SequentialDetector:
    """``fresh`` (fitted on a changed population) with ``old``'s outcome stream: a refused challenger lets
    the monitor accept a new feature distribution, never a loss of performance, so the log-loss is still
    judged against the serving model's own burn-in and a champion that has become worse keeps alarming."""
    fresh.outcome_threshold = None if old.outcome_threshold is None else old.outcome_threshold.copy()
    fresh.outcome_center, fresh.outcome_scale = old.outcome_center, old.outcome_scale
    fresh.outcomes_seen = old.outcomes_seen
    fresh._burn_y, fresh._burn_p = list(old._burn_y), list(old._burn_p)
    return fresh


def loss_change_point(outcomes: np.ndarray, probabilities: np.ndarray, *, min_segment: int = 20) -> int | None:
    """Where the model's loss most likely rose, on labelled predictions in arrival order: the index that
    maximises the likelihood of a single upward shift in mean of the excess log-loss (the CUSUM change-point
    estimator, argmax of ``S_k - k/n S_n`` over ``k``), when the shift is significant at 5 % (the scaled bridge
    ``max (k/n S_n - S_k) / (sd sqrt n)`` beyond 1.224, the one-sided Brownian-bridge quantile). None when there is
    no such shift or either side would have fewer than ``min_segment`` rows: the change then lies before these
    rows (learn from all of them)."""
    z = _logloss_excess(np.asarray(outcomes, dtype=float), np.asarray(probabilities, dtype=float))
    n = len(z)
    if n < 2 * min_segment:
        return None
    s = np.cumsum(z - z.mean())  # falls while the loss is below its mean (before a rise), then climbs back
    k = int(np.argmin(s[:-1])) + 1  # the first row after the lowest point: the first of the worse segment
    sd = float(z.std())
    if k < min_segment or n - k < min_segment or sd == 0 or -s[k - 1] / (sd * np.sqrt(n)) < BRIDGE_5PC:
        return None
    return k
