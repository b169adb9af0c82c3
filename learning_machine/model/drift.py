"""Data drift against the training reference, as plain functions: the reference saved with each model version
and the encoding of records into the detector's numeric matrix. The detector itself (alibi-detect) is
:mod:`learning_machine.model.drift_detector`, which only the model server imports, so training, the registry
and the gateway install without alibi-detect.

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

import numpy as np
import pandas as pd

from learning_machine.backends import DRIFT_DETECTORS
from learning_machine.data.spec import DatasetSpec
from learning_machine.errors import DatasetError

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
