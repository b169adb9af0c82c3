"""Preprocessing: impute, scale, encode, as one scikit-learn transformer built from the dataset spec.
It is fitted together with the model and saved in the same artifact, so serving needs nothing else."""

from __future__ import annotations

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from learning_machine.data.spec import DatasetSpec


def build_preprocessor(spec: DatasetSpec) -> ColumnTransformer:
    """Median-impute (with missing indicators) and scale numbers; impute and one-hot encode categories.
    Unknown categories at prediction time encode as all zeros instead of failing."""
    numeric = Pipeline([
        ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
        ("scale", StandardScaler()),
    ])
    categorical = Pipeline([
        ("impute", SimpleImputer(strategy="most_frequent", missing_values=None, keep_empty_features=True)),
        ("encode", OneHotEncoder(
            categories=[list(spec.feature(c).categories or ()) for c in spec.categorical_features],
            handle_unknown="ignore", sparse_output=False)),
    ])
    transformers = []
    if spec.numeric_features:
        transformers.append(("num", numeric, spec.numeric_features))
    if spec.categorical_features:
        transformers.append(("cat", categorical, spec.categorical_features))
    return ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)


def feature_frame(spec: DatasetSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The model's input: the spec's features in order, categoricals as objects with None for missing."""
    out = frame[spec.feature_names].copy()
    for name in spec.categorical_features:
        col = out[name]
        out[name] = col.astype(object).where(col.notna(), None)
    for name in spec.numeric_features:
        out[name] = pd.to_numeric(out[name], errors="coerce").astype(float)
    return out
