"""The drift detector (alibi-detect) fitted on a version's training reference, as plain functions: the MLServer
drift runtime is a thin adapter around them. Apart from :mod:`learning_machine.model.drift` (the reference and its
encoding, which training needs) so that only the serving install carries alibi-detect: the `serving-only`
contract in pyproject.toml keeps everything but the model server from importing this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from learning_machine.data.spec import DatasetSpec
from learning_machine.errors import DatasetError, UnknownNameError
from learning_machine.model.drift import DETECTOR_TYPES, DriftEncoding


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
