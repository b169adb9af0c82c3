"""MLflow's REST API (``/api/2.0/mlflow``) called directly, for the calls every pipeline step and service
makes: experiments, runs, parameters, metrics, tags, small artifacts through the server's artifact proxy,
model versions and aliases. Importing the ``mlflow`` package costs 4-6 s on these machines, and each
pipeline task is a fresh interpreter; this module costs httpx. The :class:`~.tracker.Tracker` keeps
``MlflowClient`` for what needs MLflow's own code (logging and loading models, datasets, downloads).

Errors come back as the platform's: an unreachable or failing server is
:class:`TrackingUnavailableError`, a missing resource :class:`ModelNotFoundError`, anything else the
server refuses :class:`RegistryError`, each naming what was being done."""

from __future__ import annotations

import functools
import os
import ssl
import time
from typing import Any

import httpx

from learning_machine.errors import ModelNotFoundError, RegistryError, TrackingUnavailableError
from learning_machine.registry.config import HTTP_RETRIES, http_timeout_s

API = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
# Transient answers worth another try (as MLflow's client retries them), with the pause before each retry.
RETRY_STATUS = {429, 502, 503, 504}
RETRY_PAUSES_S = tuple(0.5 * 2**i for i in range(HTTP_RETRIES))


def _auth() -> tuple[str, str] | None:
    """MLflow's own basic-auth variables, read where and as MLflow's client reads them, so both ways of
    talking to the server authenticate alike (the chart sets them from its Secret when auth is on)."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return (user, password) if user and password else None


def _bearer() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def tls_context() -> ssl.SSLContext:
    """This process's TLS context for the tracking server, as httpx builds it by default (the CA bundle, or
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``), built once: building one loads the CA bundle (~20 ms here), and
    every pipeline step makes a client. The local runner's warm interpreters build it before they fork."""
    return _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.cache
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context()  # reads the same two variables itself


class MlflowRest:
    """One tracking server's REST API over a pooled keep-alive connection."""

    def __init__(self, uri: str, *, timeout_s: float) -> None:
        self.uri = uri.rstrip("/")
        self.http = httpx.Client(base_url=self.uri, timeout=http_timeout_s(timeout_s), auth=_auth(),
                                 headers=_bearer(), verify=tls_context())

    def call(self, what: str, method: str, endpoint: str, *, json: dict[str, Any] | None = None,
             params: dict[str, Any] | None = None, content: bytes | None = None, api: str = API) -> Any:
        """The decoded answer of one call; the platform's error, naming ``what``, when it fails."""
        for attempt in range(len(RETRY_PAUSES_S) + 1):
            try:
                response = self.http.request(method, f"{api}/{endpoint}", json=json, params=params, content=content)
            except httpx.HTTPError as exc:
                if attempt < len(RETRY_PAUSES_S):
                    time.sleep(RETRY_PAUSES_S[attempt])
                    continue
                raise TrackingUnavailableError(
                    f"{what}: MLflow at {self.uri} is unreachable ({type(exc).__name__})") from exc
            if response.status_code in RETRY_STATUS and attempt < len(RETRY_PAUSES_S):
                time.sleep(RETRY_PAUSES_S[attempt])
                continue
            break
        if response.status_code < 400:
            return response.json() if response.content else {}
        try:
            body = response.json()
        except ValueError:
            body = {}
        code, message = body.get("error_code", ""), body.get("message") or response.text[:300]
        if code == "RESOURCE_DOES_NOT_EXIST" or response.status_code == 404:
            raise ModelNotFoundError(f"{what}: {message}")
        if response.status_code >= 500:
            raise TrackingUnavailableError(f"{what}: MLflow at {self.uri} failed: HTTP {response.status_code} "
                                           f"{message}")
        raise RegistryError(f"{what}: {message}" if message else f"{what}: HTTP {response.status_code}",
                            detail={"error_code": code} if code else None)

    def close(self) -> None:
        self.http.close()


def tags_list(tags: dict[str, Any]) -> list[dict[str, str]]:
    return [{"key": str(k), "value": str(v)} for k, v in tags.items()]


def tags_dict(items: list[dict[str, Any]] | None) -> dict[str, str]:
    return {str(i["key"]): str(i.get("value", "")) for i in items or []}
