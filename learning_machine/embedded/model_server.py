"""The embedded model server: one ``mlserver start`` process serving three models from a model repository
folder (written here), all loaded from the MLflow registry by our runtimes (``learning_machine.serving``):

* ``<name>``            the model (class, probability, model version),
* ``<name>-explainer``  explanations (exact attributions, anchors),
* ``<name>-drift``      the drift detector fitted on the version's training reference.

Each ``model-settings.json`` names the version as ``parameters.uri = models:/<name>/<version or alias>``;
a promotion rewrites it and asks MLServer to reload through the repository API
(``POST /v2/repository/models/<m>/load``), which loads the new version before it drops the old one.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from learning_machine.clients.v2 import drift_name, explainer_name
from learning_machine.embedded.processes import ServiceSpec
from learning_machine.errors import ConfigurationError, ServiceStartError, ServiceUnavailableError
from learning_machine.registry.names import model_uri
from learning_machine.settings import Settings, settings_env

RUNTIMES = "learning_machine.serving.runtimes"
MODEL_RUNTIME = f"{RUNTIMES}.ModelRuntime"
EXPLAINER_RUNTIME = f"{RUNTIMES}.ExplainerRuntime"
DRIFT_RUNTIME = f"{RUNTIMES}.DriftRuntime"
SETTINGS_FILE = "model-settings.json"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ServerPorts:
    host: str = "127.0.0.1"
    http: int = 8080
    grpc: int = 8081
    metrics: int = 8082

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http}"

    @property
    def metrics_url(self) -> str:
        """MLServer's own Prometheus metrics (requests, latency, queue sizes per model)."""
        return f"http://{self.host}:{self.metrics}/metrics"


def model_settings(model_name: str, ref: str, tracking_uri: str, *, infer_uri: str | None = None,
                   drift_detector: str = "TabularDrift", drift_p_val: float = 0.05) -> dict[str, dict[str, Any]]:
    """The three ``model-settings.json`` documents, by served model name. The ``extra`` keys follow
    MLServer's alibi-explain (``explainer_type``, ``infer_uri``) and alibi-detect (``batch_size``,
    ``predict_parameters``) runtimes, plus ``tracking_uri`` (where the runtimes download the version)."""
    uri = model_uri(model_name, ref)
    return {
        model_name: {
            "name": model_name, "implementation": MODEL_RUNTIME,
            "parameters": {"uri": uri, "extra": {"tracking_uri": tracking_uri}},
        },
        explainer_name(model_name): {
            "name": explainer_name(model_name), "implementation": EXPLAINER_RUNTIME,
            "parameters": {"uri": uri, "extra": {
                "tracking_uri": tracking_uri, "explainer_type": "anchor_tabular",
                "infer_uri": infer_uri or "", "init_parameters": {}, "explain_parameters": {}}},
        },
        drift_name(model_name): {
            "name": drift_name(model_name), "implementation": DRIFT_RUNTIME,
            "parameters": {"uri": uri, "extra": {
                "tracking_uri": tracking_uri, "detector_type": drift_detector, "p_val": drift_p_val,
                "batch_size": None, "predict_parameters": {}}},
        },
    }


def write_repository(root: Path, *, model_name: str, ref: str, tracking_uri: str, ports: ServerPorts,
                     drift_detector: str = "TabularDrift", drift_p_val: float = 0.05,
                     load_at_startup: bool = True, log_format: str = "text") -> Path:
    """Write an MLServer model repository: ``settings.json`` and one folder per served model.
    ``load_at_startup=False`` starts the server empty (MLServer 1.7 exits when a model fails to load at
    startup, e.g. before the first champion exists); the models are then loaded through the repository API.
    ``log_format="json"``: MLServer's own log lines and our runtimes' are JSON too (its ``logging_settings``).
    MLServer serves its Prometheus metrics on ``ports.metrics`` at ``/metrics``."""
    root.mkdir(parents=True, exist_ok=True)
    server = {
        "host": ports.host, "http_port": ports.http, "grpc_port": ports.grpc, "metrics_port": ports.metrics,
        # 0: inference in the main process. Workers (>= 1) crash with uvloop 0.23 (MLServer#2286), and the
        # runtimes are a millisecond per row: a worker pool would mostly add IPC.
        "parallel_workers": 0, "load_models_at_startup": load_at_startup, "debug": False,
        "model_repository_root": str(root.resolve()),
    }
    if log_format == "json":
        from learning_machine.logs import dict_config

        server["logging_settings"] = dict_config("json")
    (root / "settings.json").write_text(json.dumps(server, indent=2))
    infer_uri = f"{ports.url}/v2/models/{model_name}/infer"
    documents = model_settings(model_name, ref, tracking_uri, infer_uri=infer_uri, drift_detector=drift_detector,
                               drift_p_val=drift_p_val)
    for name, document in documents.items():
        folder = root / name
        folder.mkdir(exist_ok=True)
        _write_atomic(folder / SETTINGS_FILE, json.dumps(document, indent=2))
    return root


def set_model_ref(root: Path, model_name: str, ref: str) -> list[str]:
    """Point the three served models at another version (rewrites their ``model-settings.json``);
    returns the served names to reload."""
    names = [model_name, explainer_name(model_name), drift_name(model_name)]
    for name in names:
        path = root / name / SETTINGS_FILE
        document = json.loads(path.read_text())
        document["parameters"]["uri"] = model_uri(model_name, ref)
        _write_atomic(path, json.dumps(document, indent=2))
    return names


def _write_atomic(path: Path, text: str) -> None:
    # MLServer may read the file while we write it (a concurrent load): never let it see half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def served_names(model_name: str) -> list[str]:
    return [model_name, explainer_name(model_name), drift_name(model_name)]


def repository_dir(settings: Settings) -> Path:
    return (settings.home / "model-server").resolve()


def ports_of(settings: Settings) -> ServerPorts:
    return ServerPorts(settings.model_server_host, settings.model_server_port, settings.model_server_grpc_port,
                       settings.model_server_metrics_port)


def write_repository_for(settings: Settings, *, load_at_startup: bool = True) -> Path:
    """The repository of the managed model server, written from the settings."""
    return write_repository(repository_dir(settings), model_name=settings.model_name, ref=settings.model_ref,
                            tracking_uri=settings.tracking_uri, ports=ports_of(settings),
                            drift_detector=settings.drift_detector, drift_p_val=settings.drift_p_val,
                            load_at_startup=load_at_startup, log_format=settings.log_format)


def version_exists(settings: Settings) -> bool:
    """True when ``model_ref`` of ``model_name`` resolves in the registry now."""
    from learning_machine.errors import LearningMachineError
    from learning_machine.registry.tracker import tracker_for

    try:
        tracker_for(settings).version(settings.model_name,
                                                                                     settings.model_ref)
    except LearningMachineError:
        return False
    return True


def model_server_service(settings: Settings) -> ServiceSpec:
    """The managed model server for `lm up` / `lm serve --background`: the process is `lm serve` (which writes
    the repository, then runs ``mlserver start``), with the settings passed through the environment.
    Health is *live*, not ready: before the first champion is registered the models cannot load yet
    (`lm up` loads them after training; ``wait_models_ready`` waits for them)."""
    from learning_machine.embedded.processes import venv_tool

    env = settings_env(settings)
    command = [venv_tool("lm"), "serve", "--ref", settings.model_ref, "--port", str(settings.model_server_port)]
    return ServiceSpec("model-server", command, ports_of(settings).url, "/v2/health/live", env=env,
                       metrics_url=ports_of(settings).metrics_url)


def mlserver_command(root: Path) -> list[str]:
    """``mlserver start`` from this environment; MLServer comes with the serving extra only."""
    from learning_machine.embedded.processes import venv_tool

    mlserver = venv_tool("mlserver")
    if shutil.which(mlserver) is None:
        raise ConfigurationError("the model server runs MLServer, which this install lacks: install the serving "
                                 "extra (pip install 'learning-machine[serving]'; `make install` installs every extra)")
    return [mlserver, "start", str(root)]


def mlserver_env(tracking_uri: str) -> dict[str, str]:
    from learning_machine.registry.config import mlflow_client_env

    return {**mlflow_client_env(), "MLFLOW_TRACKING_URI": tracking_uri,
            # xgboost and numpy threads: 2 cores shared by every service on this machine.
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# -- talking to a running server ---------------------------------------------------------------------
def wait_models_ready(url: str, names: list[str], *, timeout_s: float = 180.0,
                      progress: Progress | None = None, is_alive: Callable[[], bool] | None = None) -> None:
    """Block until every model in ``names`` answers ready, else :class:`ServiceStartError`."""
    deadline = time.monotonic() + timeout_s
    pending = list(names)
    while pending and time.monotonic() < deadline:
        if is_alive is not None and not is_alive():
            raise ServiceStartError(f"the model server at {url} exited while loading {', '.join(pending)}")
        still = []
        for name in pending:
            try:
                ok = httpx.get(f"{url}/v2/models/{name}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                ok = False
            if not ok:
                still.append(name)
        if progress and len(still) < len(pending):
            progress(f"model server at {url}: ready {', '.join(n for n in pending if n not in still)}")
        pending = still
        if pending:
            time.sleep(0.3)
    if pending:
        raise ServiceStartError(f"models {', '.join(pending)} did not become ready at {url} within {timeout_s:.0f} s")


def reload_models(url: str, names: list[str], *, timeout_s: float = 300.0) -> None:
    """Ask MLServer to reload ``names`` from the repository (new version first, then the old is dropped)."""
    for name in names:
        try:
            response = httpx.post(f"{url}/v2/repository/models/{name}/load", timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError(f"model server at {url} is unreachable ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise ServiceStartError(f"model server at {url} could not load {name}: HTTP {response.status_code} "
                                    f"{response.text[:300]}")
