"""What logging and loading a model imports from MLflow (the sklearn flavour and the pyfunc flavour it
adds, signatures, datasets, artifacts, ``mlflow.models.evaluate``'s classifier evaluator and the client's REST
calls behind them), and the drift reference written beside every model (Parquet): seconds of imports, which
the local runner's warm interpreter (:mod:`learning_machine.runners.warm`) pays once instead of once per step. Importing this module and
calling :func:`warm` are its only uses."""

# ruff: noqa: F401 - every import is here for its cost, none is used

import mlflow.artifacts
import mlflow.data.code_dataset_source
import mlflow.data.pandas_dataset
import mlflow.entities
import mlflow.exceptions
import mlflow.models
import mlflow.models.evaluation.evaluators.classifier
import mlflow.pyfunc
import mlflow.sklearn
import mlflow.tracking.request_header.registry
import pandas.core.arrays.arrow.extension_types
import pandas.core.methods.to_dict
import pyarrow.pandas_compat
import pyarrow.parquet

import learning_machine.model.drift
import learning_machine.registry.evaluation


def warm() -> None:
    """Fill what MLflow computes once per process when it saves its first model: the map from modules to
    installed distributions (a scan of every installed package's metadata, ~0.6 s here), against which it
    checks a model's pip requirements. The warm interpreter calls this after the imports, so each step
    forked from it (train, retrain) starts with the map instead of scanning again."""
    from mlflow.utils.requirements_utils import _init_modules_to_packages_map

    _init_modules_to_packages_map()
