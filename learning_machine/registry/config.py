"""How every process of the platform configures its MLflow client (light: no MLflow import here)."""

from __future__ import annotations

import warnings


def mlflow_client_env(timeout_s: float = 10.0) -> dict[str, str]:
    """The MLflow client's environment for every process of the platform: fail in seconds, not after
    MLflow's minutes of retries, when the server is down; no progress bar per download in the logs."""
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(max(timeout_s, 5) * 6)),
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

