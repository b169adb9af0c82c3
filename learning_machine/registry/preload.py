"""What logging and loading a model imports from MLflow (the sklearn flavour, signatures, datasets,
artifacts): seconds of imports, which the local runner's warm interpreter
(:mod:`learning_machine.runners.warm`) pays once per pipeline run instead of once per step. Importing
this module is its only use."""

import mlflow.artifacts
import mlflow.data.code_dataset_source
import mlflow.data.pandas_dataset
import mlflow.entities
import mlflow.exceptions
import mlflow.models
import mlflow.sklearn  # noqa: F401 - imported for its cost, never used here
