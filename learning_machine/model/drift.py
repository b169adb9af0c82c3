"""Data drift against the training reference, as plain functions (the MLServer drift runtime is a thin
adapter around them).

At training time a sample of the training rows (features only) is saved inside the model artifact as
``reference.parquet``, so every registered version carries the reference it was fitted on. A detector is
fitted from it at load time (fitting a ``TabularDrift`` only stores the reference and is instant).

alibi-detect's feature-wise detectors want one numeric matrix, so records are encoded as:

* numeric features: the value, a missing value replaced by the reference median, plus (for nullable
  features) a 0/1 ``<name>__missing`` column treated as categorical, so a spike of missing values is
  drift too instead of being hidden by the imputation;
* categorical features: the index of the category in the spec; missing or unknown values get one
  extra code.

Numeric columns are compared with Kolmogorov-Smirnov, categorical ones with chi-squared (TabularDrift),
with a Bonferroni correction over the features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from learning_machine.backends import DRIFT_DETECTORS
from learning_machine.data.spec import DatasetSpec
from learning_machine.errors import DatasetError, UnknownNameError

REFERENCE_FILE = "reference.parquet"
REFERENCE_ROWS = 2000
DETECTOR_TYPES = DRIFT_DETECTORS


def write_reference(spec: DatasetSpec, frame: pd.DataFrame, folder: Path, *, max_rows: int = REFERENCE_ROWS,
                    seed: int = 0) -> Path:
    """Save a sample of ``frame``'s features as the drift (and anchors) reference into ``folder``."""
    features = frame[spec.feature_names]
    if len(features) > max_rows:
        features = features.sample(n=max_rows, random_state=seed)
    path = folder / REFERENCE_FILE
    features.reset_index(drop=True).to_parquet(path, index=False)
    return path


def load_reference(folder: Path, spec: DatasetSpec) -> pd.DataFrame:
    """The reference saved with a model version; a model saved without one cannot detect drift."""
    path = folder / REFERENCE_FILE
    if not path.exists():
        raise DatasetError(f"the model artifact at {folder} has no {REFERENCE_FILE}: it was registered before "
                           "drift references were saved; retrain it to serve a drift detector")
    return pd.read_parquet(path)[spec.feature_names]


@dataclass
class DriftEncoding:
    """How records become the detector's numeric matrix (fitted on the reference)."""

    spec: DatasetSpec
    medians: dict[str, float]
    names: list[str] = field(default_factory=list)
    categories_per_feature: dict[int, int] = field(default_factory=dict)  # codes per categorical column

    @classmethod
    def fit(cls, spec: DatasetSpec, reference: pd.DataFrame) -> DriftEncoding:
        medians = {}
        for name in spec.numeric_features:
            median = pd.to_numeric(reference[name], errors="coerce").median()
            medians[name] = float(median) if median == median else 0.0
        enc = cls(spec, medians)
        for feature in spec.features:
            if feature.type == "categorical":
                enc.categories_per_feature[len(enc.names)] = len(feature.categories or ()) + 1
                enc.names.append(feature.name)
            else:
                enc.names.append(feature.name)
                if feature.nullable:
                    enc.categories_per_feature[len(enc.names)] = 2
                    enc.names.append(f"{feature.name}__missing")
        return enc

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The numeric matrix of ``frame`` (rows x :attr:`names`)."""
        columns: list[np.ndarray] = []
        for feature in self.spec.features:
            col = frame[feature.name] if feature.name in frame.columns else pd.Series([None] * len(frame))
            if feature.type == "categorical":
                cats = list(feature.categories or ())
                index = {c: i for i, c in enumerate(cats)}
                columns.append(np.array([index.get(v, len(cats)) if isinstance(v, str) else len(cats)
                                         for v in col], dtype=float))
            else:
                values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
                missing = np.isnan(values)
                columns.append(np.where(missing, self.medians[feature.name], values))
                if feature.nullable:
                    columns.append(missing.astype(float))
        return np.column_stack(columns) if columns else np.empty((len(frame), 0))


@dataclass
class DriftDetector:
    """A fitted alibi-detect detector with the encoding it expects."""

    encoding: DriftEncoding
    detector: Any
    detector_type: str
    p_val: float


def fit_detector(spec: DatasetSpec, reference: pd.DataFrame, *, detector_type: str = "TabularDrift",
                 p_val: float = 0.05) -> DriftDetector:
    """A feature-wise drift detector fitted on the training reference. numpy/scipy detectors only
    (no TensorFlow or PyTorch): ``TabularDrift`` (KS for numbers, chi-squared for categories),
    ``KSDrift`` (KS on every column) or ``ChiSquareDrift`` (chi-squared on every column)."""
    from alibi_detect.cd import ChiSquareDrift, KSDrift, TabularDrift

    if detector_type not in DETECTOR_TYPES:
        raise UnknownNameError("drift detector type", detector_type, DETECTOR_TYPES)
    encoding = DriftEncoding.fit(spec, reference)
    x_ref = encoding.transform(reference)
    if detector_type == "TabularDrift":
        # None: count the categories seen in the reference and the batch (their union). Declaring every
        # possible code would put never-seen codes in the contingency table, which chi-squared rejects.
        detector = TabularDrift(x_ref, p_val=p_val,
                                categories_per_feature=dict.fromkeys(encoding.categories_per_feature))
    elif detector_type == "KSDrift":
        detector = KSDrift(x_ref, p_val=p_val)
    else:
        detector = ChiSquareDrift(x_ref, p_val=p_val)
    return DriftDetector(encoding, detector, detector_type, p_val)


def detect(drift: DriftDetector, frame: pd.DataFrame, **predict_parameters: Any) -> dict[str, Any]:
    """alibi-detect's ``data`` dict for one batch (``is_drift``, ``p_val``, ``threshold``, ``distance``)
    plus ``feature_names`` and the names of the drifted features. Needs at least two rows."""
    if len(frame) < 2:
        raise DatasetError("drift is measured on a batch: send at least 2 records")
    x = drift.encoding.transform(frame)
    params = {"drift_type": "batch", "return_p_val": True, "return_distance": True, **predict_parameters}
    result = drift.detector.predict(x, **params)["data"]
    out: dict[str, Any] = {}
    for key, value in result.items():
        out[key] = value.tolist() if isinstance(value, np.ndarray) else value
    names = drift.encoding.names
    p_vals = np.atleast_1d(np.asarray(result.get("p_val", []), dtype=float))
    threshold = float(result.get("threshold", drift.p_val))
    out["is_drift"] = int(out["is_drift"])
    out["threshold"] = threshold
    out["feature_names"] = names
    out["drifted_features"] = [n for n, p in zip(names, p_vals, strict=False) if p < threshold]
    out["detector_type"] = drift.detector_type
    return out
