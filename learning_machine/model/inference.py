"""The serving hot path: V2 request inputs to probabilities without pandas or scikit-learn's per-call
overhead.

A fitted scikit-learn ``ColumnTransformer`` costs 5-15 ms per single-row call here (input validation,
config contexts, pandas), ten times the model itself. :class:`FastPreprocessor` reads the fitted
parameters of *our* preprocessor (:func:`learning_machine.model.features.build_preprocessor`: median impute
with missing indicators + standard scaling; most-frequent impute + one-hot) once and applies them with a
few numpy operations. It checks itself against the real transformer on the training reference when it is
built and refuses (``None``) on any difference or any unknown structure, so callers fall back to the
pipeline's own ``transform``: same numbers, only faster.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from learning_machine.data.spec import DatasetSpec
from learning_machine.model.features import feature_frame
from learning_machine.model.recalibration import RecalibrationMap, unwrap

Columns = dict[str, Any]  # feature name -> float array (numeric) or list of str | None (categorical)


@dataclass
class FastPreprocessor:
    """The fitted preprocessor's arithmetic, in numpy."""

    numeric: list[str]
    medians: np.ndarray
    indicator_columns: np.ndarray  # positions (within ``numeric``) that get a missing indicator
    mean: np.ndarray
    scale: np.ndarray
    categorical: list[str]
    fills: list[str]
    categories: list[dict[str, int]]
    width: int

    @classmethod
    def build(cls, preprocess: Any, spec: DatasetSpec, reference: pd.DataFrame | None = None) -> FastPreprocessor | None:
        """The fast equivalent of a fitted preprocessor, or None when it is not one we know."""
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        if not isinstance(preprocess, ColumnTransformer):
            return None
        numeric: list[str] = []
        categorical: list[str] = []
        medians = mean = scale = indicators = np.empty(0)
        fills: list[str] = []
        cats: list[dict[str, int]] = []
        order = []
        for name, step, columns in preprocess.transformers_:
            if name == "remainder":
                if step != "drop" and not (isinstance(columns, list) and not columns):
                    return None
                continue
            if not isinstance(step, Pipeline) or len(step.steps) != 2:
                return None
            impute, second = step.steps[0][1], step.steps[1][1]
            if not isinstance(impute, SimpleImputer):
                return None
            order.append(name)
            if name == "num" and isinstance(second, StandardScaler):
                numeric = list(columns)
                medians = np.asarray(impute.statistics_, dtype=float)
                indicators = (np.asarray(impute.indicator_.features_, dtype=int) if impute.add_indicator
                              else np.empty(0, dtype=int))
                mean = np.asarray(second.mean_ if second.mean_ is not None else 0.0, dtype=float)
                scale = np.asarray(second.scale_ if second.scale_ is not None else 1.0, dtype=float)
            elif name == "cat" and isinstance(second, OneHotEncoder) and second.drop is None:
                categorical = list(columns)
                fills = [str(v) for v in impute.statistics_]
                cats = [{str(c): j for j, c in enumerate(values)} for values in second.categories_]
            else:
                return None
        if order not in (["num", "cat"], ["num"], ["cat"]):
            return None
        width = len(numeric) + len(indicators) + sum(len(c) for c in cats)
        fast = cls(numeric, medians, indicators, mean, scale, categorical, fills, cats, width)
        if reference is not None and len(reference):
            sample = feature_frame(spec, reference.head(200))
            expected = np.asarray(preprocess.transform(sample), dtype=float)
            got = fast.transform(frame_columns(spec, sample))
            if expected.shape != got.shape or not np.allclose(expected, got, rtol=1e-9, atol=1e-9):
                return None
        return fast

    def transform(self, columns: Columns) -> np.ndarray:
        """The transformed matrix of a batch given as columns (see :func:`request_columns`)."""
        n = _rows(columns)
        parts = []
        if self.numeric:
            x = np.column_stack([np.asarray(columns[c], dtype=float).reshape(n) for c in self.numeric])
            missing = np.isnan(x)
            x = np.where(missing, self.medians, x)
            if len(self.indicator_columns):
                x = np.hstack([x, missing[:, self.indicator_columns].astype(float)])
            parts.append((x - self.mean) / self.scale)
        for name, fill, index in zip(self.categorical, self.fills, self.categories, strict=True):
            onehot = np.zeros((n, len(index)))
            for i, value in enumerate(columns[name]):
                j = index.get(fill if value is None else value)
                if j is not None:  # unknown category: all zeros (handle_unknown="ignore")
                    onehot[i, j] = 1.0
            parts.append(onehot)
        return np.hstack(parts) if parts else np.empty((n, 0))


def _rows(columns: Columns) -> int:
    for value in columns.values():
        return len(value)
    return 0


def frame_columns(spec: DatasetSpec, frame: pd.DataFrame) -> Columns:
    """Columns of a frame in the fast path's form."""
    out: Columns = {}
    for feature in spec.features:
        col = frame[feature.name] if feature.name in frame.columns else pd.Series([None] * len(frame))
        if feature.type == "categorical":
            out[feature.name] = [v if isinstance(v, str) else None for v in col]
        else:
            out[feature.name] = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    return out


def request_columns(spec: DatasetSpec, inputs: Sequence[Mapping[str, Any]]) -> Columns:
    """Columns from V2 request inputs (dicts with name, datatype, data, parameters) in the pandas codec:
    FP64 with null for missing, BYTES as str or pd_json. A feature without an input is missing."""
    by_name = {i["name"]: i for i in inputs}
    n = 0
    for item in inputs:
        data = item.get("data")
        if isinstance(data, list):
            n = len(data)
            break
    out: Columns = {}
    for feature in spec.features:
        found = by_name.get(feature.name)
        if found is None:
            out[feature.name] = [None] * n if feature.type == "categorical" else np.full(n, np.nan)
            continue
        data = found.get("data")
        values = data if isinstance(data, list) else [data]
        params = found.get("parameters") or {}
        content_type = params.get("content_type") if isinstance(params, Mapping) else None
        if content_type == "pd_json":
            values = [None if v is None else json.loads(v) for v in values]
        if feature.type == "categorical":
            out[feature.name] = [_text(v) for v in values]
        else:
            out[feature.name] = np.array([_float(v) for v in values], dtype=float)
    return out


def columns_frame(spec: DatasetSpec, columns: Columns) -> pd.DataFrame:
    """The model's input frame (as :func:`learning_machine.model.features.feature_frame` makes it) from columns."""
    frame = pd.DataFrame({name: columns[name] for name in spec.feature_names}, columns=spec.feature_names)
    return feature_frame(spec, frame)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, float) and value != value:
        return None
    return str(value)


def _float(value: Any) -> float:
    if value is None or value == "":
        return float("nan")
    return float(value)


@dataclass
class Predictor:
    """A fitted pipeline ready to serve: the fast preprocessor when it applies, else the pipeline's own;
    for XGBoost a single-threaded copy of the booster. Waking a second OpenMP thread for one row costs
    more than the prediction (5-40 ms on a busy 2-core machine, against ~0.3 ms for the trees)."""

    pipeline: Any
    spec: DatasetSpec
    fast: FastPreprocessor | None
    threshold: float = 0.5
    booster: Any = None
    mapping: RecalibrationMap | None = None
    """A recalibrated model's map, applied to its original classifier's probability (the booster's too)."""

    @classmethod
    def build(cls, pipeline: Any, spec: DatasetSpec, reference: pd.DataFrame | None = None) -> Predictor:
        predictor = cls(pipeline, spec, FastPreprocessor.build(pipeline.named_steps["preprocess"], spec, reference))
        model, predictor.mapping = unwrap(pipeline.named_steps["model"])
        if hasattr(model, "get_booster") and reference is not None and len(reference):
            booster = model.get_booster().copy()
            booster.set_param({"nthread": 1})
            sample = predictor.transform(frame_columns(spec, feature_frame(spec, reference.head(200))))
            expected = model.predict_proba(sample)[:, 1]
            got = np.asarray(booster.inplace_predict(sample), dtype=float)
            # Only for a plain binary:logistic booster whose output is the event probability.
            if got.shape == expected.shape and np.allclose(got, expected, rtol=0, atol=1e-7):
                predictor.booster = booster
        return predictor

    def transform(self, columns: Columns) -> np.ndarray:
        if self.fast is not None:
            return self.fast.transform(columns)
        return np.asarray(self.pipeline.named_steps["preprocess"].transform(columns_frame(self.spec, columns)),
                          dtype=float)

    def proba(self, columns: Columns) -> np.ndarray:
        """Event probability per row."""
        Xt = self.transform(columns)
        if self.booster is None:
            return np.asarray(self.pipeline.named_steps["model"].predict_proba(Xt)[:, 1])
        proba = np.asarray(self.booster.inplace_predict(Xt), dtype=float)
        return proba if self.mapping is None else self.mapping.apply(proba)

    def predict(self, columns: Columns) -> tuple[np.ndarray, np.ndarray]:
        """(labels, probabilities)."""
        proba = self.proba(columns)
        return (proba >= self.threshold).astype(np.int64), proba
