"""Training and retraining: one scikit-learn pipeline (preprocessing + classifier) per model, the
classifier chosen by name from a small registry. Plain functions of data and settings."""

from __future__ import annotations

import copy
import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from learning_machine.data.sources import LoadedDataset
from learning_machine.data.spec import DatasetSpec
from learning_machine.errors import TrainingError, UnknownNameError
from learning_machine.model.evaluation import Evaluation, evaluate
from learning_machine.model.features import build_preprocessor, feature_frame
from learning_machine.model.recalibration import ClosedTest, closed_test, recalibrated_pipeline, unwrap

Progress = Callable[[str], None]


class ModelKind(ABC):
    """A kind of classifier: how to build one and how to continue training one."""

    name: str
    default_params: dict[str, Any]

    def params(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        unknown = set(overrides or {}) - set(self.default_params)
        if unknown:
            raise TrainingError(f"unknown parameter(s) for {self.name}: {', '.join(sorted(unknown))}; "
                                f"valid: {', '.join(sorted(self.default_params))}")
        return {**self.default_params, **(overrides or {})}

    @abstractmethod
    def build(self, params: dict[str, Any], seed: int) -> ClassifierMixin:
        """A fresh, unfitted classifier."""

    @abstractmethod
    def continue_fit(self, fitted: Any, X: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int) -> Any:
        """A new classifier that continues from ``fitted`` on (X, y); ``fitted`` is left unchanged."""

    @abstractmethod
    def owns(self, classifier: Any) -> bool:
        """True when ``classifier`` is of this kind."""

    def simpler(self, params: dict[str, Any]) -> dict[str, Any]:
        """The same kind at lower capacity, for a few hundred rows (the retraining's rows since a change):
        a model sized for thousands of rows overfits them."""
        return dict(params)

    def importance(self, classifier: Any, names: list[str]) -> pd.Series:
        """Global importance per transformed feature."""
        return pd.Series(dtype=float)


class XGBoostKind(ModelKind):
    """Gradient-boosted trees; retraining adds trees to the registered booster (warm start)."""

    name = "xgboost"
    default_params = {"n_estimators": 200, "max_depth": 4, "learning_rate": 0.05, "subsample": 0.9,
                      "colsample_bytree": 0.9, "min_child_weight": 1.0, "reg_lambda": 1.0,
                      "continue_estimators": 100, "n_jobs": 2}

    def _estimator(self, params: dict[str, Any], seed: int, n_estimators: int) -> ClassifierMixin:
        from xgboost import XGBClassifier

        kwargs = {k: v for k, v in params.items() if k not in ("n_estimators", "continue_estimators")}
        return XGBClassifier(n_estimators=n_estimators, random_state=seed, tree_method="hist",
                             eval_metric="logloss", **kwargs)

    def build(self, params: dict[str, Any], seed: int) -> ClassifierMixin:
        return self._estimator(params, seed, int(params["n_estimators"]))

    def simpler(self, params: dict[str, Any]) -> dict[str, Any]:
        """Trees of depth 2, a quarter as many: on 200-900 rows after the generator's concept drift these
        reached 0.675-0.700 AUC on fresh rows (8 seeds), half as many 0.663-0.696, the default trees
        0.640-0.664; after covariate and prevalence shifts the two simpler ones were within 0.004."""
        return {**params, "max_depth": min(int(params["max_depth"]), 2),
                "n_estimators": max(1, int(params["n_estimators"]) // 4)}

    def owns(self, classifier: Any) -> bool:
        from xgboost import XGBClassifier

        return isinstance(classifier, XGBClassifier)

    def continue_fit(self, fitted: Any, X: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int) -> Any:
        model = self._estimator(params, seed, int(params["continue_estimators"]))
        model.fit(X, y, xgb_model=fitted.get_booster())
        return model

    def importance(self, classifier: Any, names: list[str]) -> pd.Series:
        return pd.Series(classifier.feature_importances_, index=names, dtype=float)


class LogisticKind(ModelKind):
    """L2-regularised logistic regression; retraining starts from the registered coefficients."""

    name = "logistic-regression"
    default_params = {"C": 1.0, "max_iter": 2000}

    def build(self, params: dict[str, Any], seed: int) -> ClassifierMixin:
        return LogisticRegression(C=float(params["C"]), max_iter=int(params["max_iter"]), random_state=seed)

    def simpler(self, params: dict[str, Any]) -> dict[str, Any]:
        """Four times the L2 penalty."""
        return {**params, "C": float(params["C"]) / 4}

    def owns(self, classifier: Any) -> bool:
        return isinstance(classifier, LogisticRegression)

    def continue_fit(self, fitted: Any, X: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int) -> Any:
        model = copy.deepcopy(fitted)
        model.set_params(warm_start=True, C=float(params["C"]), max_iter=int(params["max_iter"]))
        return model.fit(X, y)

    def importance(self, classifier: Any, names: list[str]) -> pd.Series:
        return pd.Series(np.abs(classifier.coef_[0]), index=names, dtype=float)


MODEL_KINDS: dict[str, ModelKind] = {k.name: k for k in (XGBoostKind(), LogisticKind())}


def model_kind(name: str) -> ModelKind:
    """The registered model kind called ``name``; unknown names list the valid ones."""
    try:
        return MODEL_KINDS[name]
    except KeyError:
        raise UnknownNameError("model kind", name, list(MODEL_KINDS)) from None


def kind_of(pipeline: Pipeline) -> ModelKind:
    """The model kind of a fitted pipeline's classifier (of the original one, for a recalibrated model)."""
    classifier, _ = unwrap(pipeline.named_steps["model"])
    for kind in MODEL_KINDS.values():
        if kind.owns(classifier):
            return kind
    raise UnknownNameError("model kind", type(classifier).__name__, list(MODEL_KINDS))


@dataclass
class TrainingResult:
    """A fitted pipeline with its held-out evaluation and what produced it."""

    pipeline: Pipeline
    kind: str
    params: dict[str, Any]
    evaluation: Evaluation
    train: pd.DataFrame
    test: pd.DataFrame
    test_labels: np.ndarray
    test_proba: np.ndarray
    importance: pd.Series
    seconds: float
    mode: str = "scratch"
    extra: dict[str, Any] = field(default_factory=dict)


def split(dataset: LoadedDataset, test_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stratified train/test split of the labelled rows."""
    spec = dataset.spec
    frame = dataset.frame[dataset.frame[spec.target.name].notna()]
    y = frame[spec.target.name].astype(int)
    if len(frame) < 20 or y.nunique() < 2:
        raise TrainingError(f"dataset {spec.name!r} needs at least 20 labelled rows with both outcomes; "
                            f"it has {len(frame)} rows and {y.nunique()} outcome value(s)")
    train, test = train_test_split(frame, test_size=test_fraction, random_state=seed, stratify=y)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def _xy(spec: DatasetSpec, frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    return feature_frame(spec, frame), frame[spec.target.name].astype(int).to_numpy()


def train_model(dataset: LoadedDataset, *, kind: str = "xgboost", params: dict[str, Any] | None = None,
                seed: int = 0, test_fraction: float = 0.25, progress: Progress | None = None) -> TrainingResult:
    """Fit preprocessing and a classifier from scratch; evaluate on a held-out split."""
    model = model_kind(kind)
    merged = model.params(params)
    train, test = split(dataset, test_fraction, seed)
    _say(progress, f"training {kind} on {len(train):,} rows ({len(test):,} held out)")
    started = time.perf_counter()
    X, y = _xy(dataset.spec, train)
    pipeline = Pipeline([("preprocess", build_preprocessor(dataset.spec)), ("model", model.build(merged, seed))])
    try:
        pipeline.fit(X, y)
    except ValueError as exc:
        raise TrainingError(f"training {kind} on {dataset.name!r} failed: {exc}") from exc
    seconds = time.perf_counter() - started
    return _finish(dataset.spec, pipeline, model, merged, train, test, seconds, "scratch", progress)


def retrain_model(base: Pipeline, dataset: LoadedDataset, *, params: dict[str, Any] | None = None, seed: int = 0,
                  test_fraction: float = 0.25, progress: Progress | None = None) -> TrainingResult:
    """Continue training ``base`` (a registered model) on new data: its fitted preprocessing is kept so
    the earlier trees or coefficients stay meaningful, and the classifier continues from where it was (a
    recalibrated model's original classifier: the new trees or coefficients learn what the map corrected)."""
    model = kind_of(base)
    merged = model.params(params)
    train, test = split(dataset, test_fraction, seed)
    _say(progress, f"continuing {model.name} on {len(train):,} rows ({len(test):,} held out)")
    started = time.perf_counter()
    preprocess = copy.deepcopy(base.named_steps["preprocess"])
    X, y = _xy(dataset.spec, train)
    try:
        classifier = model.continue_fit(unwrap(base.named_steps["model"])[0], preprocess.transform(X), y, merged,
                                        seed)
    except ValueError as exc:
        raise TrainingError(f"retraining {model.name} on {dataset.name!r} failed: {exc}") from exc
    pipeline = Pipeline([("preprocess", preprocess), ("model", classifier)])
    seconds = time.perf_counter() - started
    return _finish(dataset.spec, pipeline, model, merged, train, test, seconds, "warm-start", progress)


def retrain_best(base: Pipeline, new: LoadedDataset, reference: pd.DataFrame | None = None, *,
                 params: dict[str, Any] | None = None, seed: int = 0, test_fraction: float = 0.25,
                 candidates: str = "best", progress: Progress | None = None) -> tuple[TrainingResult, dict[str, float]]:
    """The best of three candidates, judged on a fifth of the new rows that none has seen: ``base``
    continued (warm start) on ``reference`` plus the new rows, the same kind of model trained from scratch on
    the new rows only, and that at lower capacity (:meth:`ModelKind.simpler`). Returns the chosen result
    (mode ``warm-start``, ``scratch`` or ``scratch-simple``) and each candidate's AUC there.

    Why all three: after a covariate shift the continued model keeps what still holds, but after a change in
    the risk relationship its old trees mislead (measured here on the generator's concept drift: the
    continued model ended 0.02-0.03 AUC short of an oracle, a fresh one within 0.003-0.017 on thousands of
    rows); and the few hundred rows since a change overfit a model sized for thousands (on 200-900 such rows
    the default trees ended 0.04-0.06 short of that oracle, the simpler ones 0.003-0.028: see
    :meth:`XGBoostKind.simpler`). A tie keeps the history, then the simpler."""
    if candidates not in ("best", "warm-start", "scratch"):
        raise UnknownNameError("retraining candidates", candidates, ["best", "warm-start", "scratch"])
    kind = kind_of(base)
    if candidates == "scratch":
        return train_model(new, kind=kind.name, params=params, seed=seed, test_fraction=test_fraction,
                           progress=progress), {}
    if candidates == "warm-start":
        old_rows = reference if reference is not None and len(reference) else None
        frame = pd.concat([old_rows, new.frame], ignore_index=True) if old_rows is not None else new.frame
        return retrain_model(base, LoadedDataset(new.spec, frame, new.source_uri, new.params), params=params,
                             seed=seed, test_fraction=test_fraction, progress=progress), {}
    target = new.spec.target.name
    fit_part, valid = split(new, 0.2, seed)
    old = reference if reference is not None and len(reference) else None
    combined = LoadedDataset(new.spec, pd.concat([old, fit_part], ignore_index=True) if old is not None else fit_part,
                             new.source_uri, {**new.params, "reference_rows": 0 if old is None else len(old)})
    fresh = LoadedDataset(new.spec, fit_part, new.source_uri, new.params)
    simpler = kind.simpler(kind.params(params))

    def scratch(data: LoadedDataset, mode: str, split_off: float) -> TrainingResult:
        chosen_params = simpler if mode == "scratch-simple" else params
        return dataclasses.replace(train_model(data, kind=kind.name, params=chosen_params, seed=seed,
                                               test_fraction=split_off, progress=progress), mode=mode)

    fitted = {"warm-start": retrain_model(base, combined, params=params, seed=seed, test_fraction=test_fraction,
                                          progress=progress),
              "scratch": scratch(fresh, "scratch", test_fraction),
              "scratch-simple": scratch(fresh, "scratch-simple", test_fraction)}
    y = valid[target].astype(int).to_numpy()
    scores = {}
    for mode, result in fitted.items():
        proba = predict_proba(result.pipeline, new.spec, valid)
        scores[mode] = float(evaluate(y, proba, {}).metrics.get("auc", float("nan")))
    preference = ("warm-start", "scratch-simple", "scratch")  # on a tie: the history, then the simpler model
    chosen = max(preference, key=lambda m: (np.nan_to_num(scores[m], nan=-1.0), -preference.index(m)))
    _say(progress, f"candidates on {len(valid):,} unseen new rows: "
         + ", ".join(f"{m} AUC {a:.3f}" for m, a in scores.items()) + f"; chose {chosen}, refitting it on all of them")
    # The choice made, the chosen one learns from every new row (the rows held out for the choice too).
    everything = pd.concat([old, new.frame], ignore_index=True) if old is not None else new.frame
    if chosen == "warm-start":
        final = retrain_model(base, LoadedDataset(new.spec, everything, new.source_uri, combined.params),
                              params=params, seed=seed, test_fraction=0.1, progress=progress)
    else:
        final = scratch(new, chosen, 0.1)
    return final, scores


def recalibrate_model(base: Pipeline, dataset: LoadedDataset, test: pd.DataFrame, *, alpha: float = 0.05,
                      progress: Progress | None = None) -> tuple[TrainingResult, ClosedTest]:
    """Recalibrate ``base`` (a registered model) on the labelled rows of ``dataset``: the closed test
    (:func:`learning_machine.model.recalibration.closed_test`) chooses no update, recalibration-in-the-large
    or logistic recalibration of its scores there, and the result is ``base`` with that map (mode
    ``recalibrate-<method>``), evaluated on ``test``, rows the map was not fitted on. Its training rows, the
    reference saved with the version, are the rows the map was fitted on: the population it is calibrated to."""
    spec = dataset.spec
    kind = kind_of(base)
    frame = dataset.frame[dataset.frame[spec.target.name].notna()].reset_index(drop=True)
    X, y = _xy(spec, frame)
    if len(frame) < 20 or len(np.unique(y)) < 2:
        raise TrainingError(f"recalibrating needs at least 20 labelled rows with both outcomes; {dataset.name!r} "
                            f"has {len(frame)} rows and {len(np.unique(y))} outcome value(s)")
    started = time.perf_counter()
    found = closed_test(y, base.predict_proba(X)[:, 1], alpha=alpha)
    pipeline = recalibrated_pipeline(base, found.map)
    seconds = time.perf_counter() - started
    step1 = found.tests[0]
    _say(progress, f"closed test on {len(frame):,} rows ({found.events} events): logistic recalibration against "
         f"none p={step1['p_value']:.3g}" + (f", against the intercept only p={found.tests[1]['p_value']:.3g}"
                                            if found.tests[1]["step"] == 2 else "")
         + f"; chose {found.method} (a={found.map.intercept:+.3f}, b={found.map.slope:.3f})")
    params = {"recalibration.method": found.method, "recalibration.intercept": round(found.map.intercept, 6),
              "recalibration.slope": round(found.map.slope, 6), "recalibration.alpha": alpha}
    result = _finish(spec, pipeline, kind, params, frame, test.reset_index(drop=True), seconds,
                     f"recalibrate-{found.method}", progress)
    return result, found


def _finish(spec: DatasetSpec, pipeline: Pipeline, model: ModelKind, params: dict[str, Any], train: pd.DataFrame,
            test: pd.DataFrame, seconds: float, mode: str, progress: Progress | None) -> TrainingResult:
    X_test, y_test = _xy(spec, test)
    proba = pipeline.predict_proba(X_test)[:, 1]
    evaluation = evaluate(y_test, proba, spec.subgroup_labels(test))
    names = list(pipeline.named_steps["preprocess"].get_feature_names_out())
    importance = model.importance(unwrap(pipeline.named_steps["model"])[0], names)
    _say(progress, f"held-out AUC {evaluation.metrics.get('auc', float('nan')):.3f}, "
         f"Brier {evaluation.metrics['brier']:.3f} ({seconds:.1f} s)")
    return TrainingResult(pipeline, model.name, params, evaluation, train, test, y_test, proba, importance, seconds,
                          mode)


def predict_proba(pipeline: Pipeline, spec: DatasetSpec, frame: pd.DataFrame) -> np.ndarray:
    """Event probability for each row of ``frame``."""
    return np.asarray(pipeline.predict_proba(feature_frame(spec, frame))[:, 1])


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)
