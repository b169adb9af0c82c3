"""How every process of the platform configures its MLflow client (light: no MLflow import here)."""

from __future__ import annotations

import warnings

# Retries of one call to MLflow (MlflowClient's and our REST transport's alike): fail in seconds, not
# after MLflow's default minutes of retries, when the server is down.
HTTP_RETRIES = 2


def http_timeout_s(timeout_s: float) -> float:
    """How long one MLflow HTTP call may take, from the settings' request timeout: uploads and
    registrations take longer than a health check."""
    return max(timeout_s, 5.0) * 6


def mlflow_client_env(timeout_s: float = 10.0) -> dict[str, str]:
    """The MLflow client's environment for every process of the platform: :data:`HTTP_RETRIES` and
    :func:`http_timeout_s`; no progress bar per download in the logs."""
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(HTTP_RETRIES), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(http_timeout_s(timeout_s))),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            # MLflow prints run links to stdout, which would break `--json` output; we print our own.
            "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def quiet_mlflow(timeout_s: float = 10.0) -> None:
    """Apply :func:`mlflow_client_env` to this process (where the environment does not already say),
    before MLflow reads it; quiet MLflow's own logging and its hint about integer columns (ours are
    floats: the hint only confuses users)."""
    import logging
    import os

    for key, value in mlflow_client_env(timeout_s).items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")

