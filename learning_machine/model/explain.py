"""Explanations of single predictions, as plain functions and one small class (the MLServer explainer
runtime is a thin adapter around :class:`Explainer`).

Two methods:

* ``exact``: per-feature attributions that sum exactly to the model's margin (log-odds). For XGBoost
  they are XGBoost's own TreeSHAP (``Booster.predict(..., pred_contribs=True)``): alibi's TreeShap
  wraps the ``shap`` package, which cannot read XGBoost >= 2.1 models, and XGBoost computes the same
  exact values natively in well under a millisecond. For logistic regression ``coef * (x - mean)`` in the
  transformed space is the exact (interventional) SHAP value of the margin. Contributions of the
  transformed columns (scaled value, missing indicator, one-hot columns) are summed back into the spec
  feature they come from, so a clinician sees ``bmi``, not ``missingindicator_bmi``.
* ``anchors``: alibi's ``AnchorTabular``: an if-then rule on a few features that "anchors" the
  prediction, with its precision and coverage, fitted on the training reference saved with the model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from learning_machine.data.spec import DatasetSpec
from learning_machine.errors import LearningMachineError, UnknownNameError
from learning_machine.model.features import feature_frame
from learning_machine.model.inference import Columns, Predictor, columns_frame, frame_columns
from learning_machine.model.recalibration import unwrap

METHODS = ("exact", "anchors")
# alibi-explain's explainer_type names, mapped to our methods (the runtime accepts both spellings).
EXPLAINER_TYPES = {"anchor_tabular": "anchors", "anchors": "anchors", "tree_shap": "exact",
                   "kernel_shap": "exact", "exact": "exact"}
ANCHOR_DEFAULTS: dict[str, Any] = {"threshold": 0.9, "batch_size": 200, "coverage_samples": 1000,
                                   "beam_size": 1, "max_anchor_size": 4, "stop_on_first": True}


class ExplanationError(LearningMachineError):
    """The requested explanation cannot be computed for this model."""

    status = 422
    code = "explanation-error"


def source_features(spec: DatasetSpec, transformed_names: list[str]) -> list[str]:
    """For each transformed column, the spec feature it comes from (scaled value, ``missingindicator_``
    column, or one-hot ``<feature>_<category>`` column)."""
    out = []
    features = sorted(spec.feature_names, key=len, reverse=True)  # longest first: "bp" vs "bp_sys"
    for name in transformed_names:
        base = name.removeprefix("missingindicator_")
        match = next((f for f in features if base == f), None) or next(
            (f for f in features if base.startswith(f + "_")), None)
        if match is None:
            raise ExplanationError(f"cannot map transformed column {name!r} back to a feature of {spec.name!r}")
        out.append(match)
    return out


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


@dataclass
class Explainer:
    """Explains predictions of one fitted pipeline (preprocess + model) on one dataset spec."""

    pipeline: Any
    spec: DatasetSpec
    reference: pd.DataFrame
    model_version: str = ""
    anchor_options: dict[str, Any] = field(default_factory=dict)
    predictor: Callable[[pd.DataFrame], np.ndarray] | None = None  # labels for a frame; default: the pipeline
    _groups: np.ndarray | None = None
    _predictor: Predictor | None = None
    _booster: Any = None
    _linear_mean: np.ndarray | None = None
    _anchor: Any = None
    _anchor_encoding: AnchorEncoding | None = None

    def __post_init__(self) -> None:
        if self.pipeline is not None:
            names = list(self.pipeline.named_steps["preprocess"].get_feature_names_out())
            sources = source_features(self.spec, names)
            index = {f: i for i, f in enumerate(self.spec.feature_names)}
            self._groups = np.array([index[s] for s in sources])
            self._predictor = Predictor.build(self.pipeline, self.spec, self.reference)

    # -- exact --------------------------------------------------------------------------------------
    def exact(self, record: Columns | pd.DataFrame) -> dict[str, Any]:
        """Exact attributions of the margin for the first row of ``record`` (columns or a frame)."""
        if self.pipeline is None or self._groups is None or self._predictor is None:
            raise ExplanationError("exact attributions need the model itself (white-box); this explainer only "
                                   "has a remote inference URL")
        columns = self._columns(record)
        Xt = self._predictor.transform(columns)
        model, mapping = unwrap(self.pipeline.named_steps["model"])
        contribs, base = self._contributions(model, Xt)
        if mapping is not None:
            # A recalibrated model's log-odds are a + b * (the original's): the attributions scale by b and the
            # base value moves with a, so they still sum exactly to the margin of the probability it serves.
            contribs, base = mapping.slope * contribs, mapping.intercept + mapping.slope * base
        per_feature = np.zeros(len(self.spec.feature_names))
        np.add.at(per_feature, self._groups, contribs)
        margin = float(base + contribs.sum())
        return {
            "method": "exact",
            "model_version": self.model_version,
            "feature_names": self.spec.feature_names,
            "attributions": {f: float(v) for f, v in zip(self.spec.feature_names, per_feature, strict=True)},
            "base_value": float(base),
            "margin": margin,
            "probability": _sigmoid(margin),
            "output": "log-odds",
            "values": self._values(columns),
        }

    def _columns(self, record: Columns | pd.DataFrame) -> Columns:
        if isinstance(record, pd.DataFrame):
            return frame_columns(self.spec, feature_frame(self.spec, record.iloc[:1]))
        return {name: record[name][:1] for name in self.spec.feature_names}

    def _values(self, columns: Columns) -> dict[str, Any]:
        return {name: _jsonable(columns[name][0]) for name in self.spec.feature_names}

    def _contributions(self, model: Any, Xt: np.ndarray) -> tuple[np.ndarray, float]:
        from sklearn.linear_model import LogisticRegression

        if hasattr(model, "get_booster"):
            import xgboost

            if self._booster is None:
                # One thread: with two, every new one-row DMatrix costs ~8 ms of thread set-up here, ten
                # times the TreeSHAP computation itself.
                self._booster = model.get_booster().copy()
                self._booster.set_param({"nthread": 1})
            # validate_features=False: the booster was fitted on a bare matrix, it has no column names.
            out = self._booster.predict(xgboost.DMatrix(Xt, nthread=1), pred_contribs=True, validate_features=False)
            row = np.asarray(out[0], dtype=float)
            return row[:-1], float(row[-1])
        if isinstance(model, LogisticRegression):
            if self._linear_mean is None:
                ref = feature_frame(self.spec, self.reference)
                self._linear_mean = np.asarray(self.pipeline.named_steps["preprocess"].transform(ref),
                                               dtype=float).mean(axis=0)
            coef = model.coef_[0]
            contribs = coef * (Xt[0] - self._linear_mean)
            return contribs, float(model.intercept_[0] + coef @ self._linear_mean)
        raise ExplanationError(f"no exact attribution method for a {type(model).__name__} model")

    # -- anchors ------------------------------------------------------------------------------------
    def anchors(self, record: Columns | pd.DataFrame, **options: Any) -> dict[str, Any]:
        """An anchor rule for the first row of ``record`` (columns or a frame), with precision and coverage."""
        explainer, encoding = self._anchor_explainer()
        columns = self._columns(record)
        x = encoding.encode(columns_frame(self.spec, columns))[0]
        params = {**ANCHOR_DEFAULTS, **self.anchor_options, **options}
        started = time.perf_counter()
        result = explainer.explain(x, **params)
        return {
            "method": "anchors",
            "model_version": self.model_version,
            "anchor": list(result.anchor),
            "precision": float(np.atleast_1d(result.precision)[0]),
            "coverage": float(np.atleast_1d(result.coverage)[0]),
            "prediction": int(np.atleast_1d(result.raw["prediction"])[0]),
            "threshold": params["threshold"],
            "seconds": time.perf_counter() - started,
            "values": self._values(columns),
        }

    def _anchor_explainer(self) -> tuple[Any, AnchorEncoding]:
        if self._anchor is None or self._anchor_encoding is None:
            from alibi.explainers import AnchorTabular

            encoding = AnchorEncoding.fit(self.spec, feature_frame(self.spec, self.reference))
            remote = self.predictor
            local = self._predictor

            def predictor(x: np.ndarray) -> np.ndarray:
                # Anchors calls this with batches of perturbed rows: the fast path keeps it cheap.
                if remote is not None:
                    return np.asarray(remote(encoding.decode(x)))
                assert local is not None
                return local.predict(frame_columns(self.spec, encoding.decode(x)))[0]

            explainer = AnchorTabular(predictor, feature_names=self.spec.feature_names,
                                      categorical_names=encoding.categorical_names, seed=0)
            explainer.fit(encoding.encode(feature_frame(self.spec, self.reference)), disc_perc=(25, 50, 75))
            self._anchor, self._anchor_encoding = explainer, encoding
        return self._anchor, self._anchor_encoding

    def explain(self, record: Columns | pd.DataFrame, method: str = "exact", **options: Any) -> dict[str, Any]:
        """One explanation by method name (``exact`` or ``anchors``)."""
        if method == "exact":
            return self.exact(record)
        if method == "anchors":
            return self.anchors(record, **options)
        raise UnknownNameError("explanation method", method, METHODS)


def method_for(explainer_type: str) -> str:
    """Our method for an alibi-explain ``explainer_type`` (``anchor_tabular`` -> anchors, ...)."""
    try:
        return EXPLAINER_TYPES[explainer_type]
    except KeyError:
        raise UnknownNameError("explainer type", explainer_type, list(EXPLAINER_TYPES)) from None


@dataclass
class AnchorEncoding:
    """AnchorTabular works on a numeric matrix: categories become their index; missing values become the
    reference median (numbers) or most frequent category, because anchors sample from the reference and
    a NaN has no percentile bin. The rule is then about the imputed value (as the model also imputes)."""

    spec: DatasetSpec
    fill: dict[str, Any]
    categorical_names: dict[int, list[str]]

    @classmethod
    def fit(cls, spec: DatasetSpec, reference: pd.DataFrame) -> AnchorEncoding:
        fill: dict[str, Any] = {}
        names: dict[int, list[str]] = {}
        for i, feature in enumerate(spec.features):
            col = reference[feature.name]
            if feature.type == "categorical":
                names[i] = list(feature.categories or ())
                counts = col.dropna().value_counts()
                fill[feature.name] = str(counts.index[0]) if len(counts) else names[i][0]
            else:
                median = pd.to_numeric(col, errors="coerce").median()
                fill[feature.name] = float(median) if median == median else 0.0
        return cls(spec, fill, names)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        cols = []
        for i, feature in enumerate(self.spec.features):
            col = frame[feature.name]
            if feature.type == "categorical":
                cats = self.categorical_names[i]
                index = {c: j for j, c in enumerate(cats)}
                default = index[self.fill[feature.name]]
                cols.append(np.array([index.get(v, default) for v in col], dtype=float))
            else:
                values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
                cols.append(np.where(np.isnan(values), self.fill[feature.name], values))
        return np.column_stack(cols)

    def decode(self, x: np.ndarray) -> pd.DataFrame:
        x = np.atleast_2d(x)
        data: dict[str, Any] = {}
        for i, feature in enumerate(self.spec.features):
            if feature.type == "categorical":
                cats = self.categorical_names[i]
                data[feature.name] = np.array(cats, dtype=object)[x[:, i].astype(int)]
            else:
                data[feature.name] = x[:, i].astype(float)
        return pd.DataFrame(data, columns=self.spec.feature_names)


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_json(explanation: dict[str, Any]) -> str:
    """The explanation as the JSON string the explainer runtime returns (alibi's ``meta``/``data`` shape)."""
    meta = {"name": "ExactAttributions" if explanation["method"] == "exact" else "AnchorTabular",
            "type": ["whitebox"] if explanation["method"] == "exact" else ["blackbox"],
            "explanations": ["local"], "params": {"method": explanation["method"]}}
    return json.dumps({"meta": meta, "data": explanation})
