"""What logging and loading a model imports from MLflow (the sklearn flavour and the pyfunc flavour it
adds, signatures, datasets, artifacts and the client's REST calls behind them), and the drift reference
written beside every model (Parquet): seconds of imports, which the local runner's warm interpreter
(:mod:`learning_machine.runners.warm`) pays once instead of once per step. Importing this module is its
only use."""

# ruff: noqa: F401 - every import is here for its cost, none is used

import mlflow.artifacts
import mlflow.data.code_dataset_source
import mlflow.data.pandas_dataset
import mlflow.entities
import mlflow.exceptions
import mlflow.models
import mlflow.pyfunc
import mlflow.sklearn
import mlflow.tracking.request_header.registry
import pandas.core.arrays.arrow.extension_types
import pandas.core.methods.to_dict
import pyarrow.pandas_compat
import pyarrow.parquet

import learning_machine.model.drift
