"""What the Helm chart's containers run, derived from the embedded setup's service builders
(:mod:`learning_machine.embedded.stack`), so a cluster runs the commands, ports and settings tested here.

:func:`cluster_services` calls the same ``*_service(settings)`` functions `lm up` uses, with in-cluster
settings (bind to all interfaces, state under the image's ``LM_HOME``, secrets as ``$(VAR)`` references
that Kubernetes expands from the container's environment), and rewrites local paths to the platform
image's. ``charts/learning-machine/files/services.json`` holds the result; the chart's templates read
their commands and ports from it and a test checks it is current (:func:`write_chart_services`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from learning_machine.embedded.processes import ServiceSpec
from learning_machine.embedded.stack import dashboard_service, gateway_service, mlflow_service, monitor_service
from learning_machine.settings import Settings, settings_env

# The platform image (top-level Dockerfile): the venv's console scripts are on PATH and the package is
# installed as a wheel under this site-packages folder.
IMAGE_HOME = "/tmp/lm"  # noqa: S108 - LM_HOME in the image: /tmp is the pod's own emptyDir (read-only root)
IMAGE_PACKAGE = "/opt/venv/lib/python3.11/site-packages/learning_machine"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - a pod's port is reached through its Service
# Secrets reach the MLflow command as Kubernetes $(VAR) references, never as literal values.
BACKEND_STORE_REF = "$(LM_MLFLOW_BACKEND_STORE_URI)"
ARTIFACTS_REF = "$(LM_MLFLOW_ARTIFACTS_DESTINATION)"
CHART_SERVICES = Path(__file__).resolve().parents[2] / "charts" / "learning-machine" / "files" / "services.json"
CHART_SERVING = CHART_SERVICES.with_name("serving.json")
# Stands for the SeldonDeployment's name (the model name) in files/serving.json; the chart substitutes it.
DEPLOYMENT_PLACEHOLDER = "DEPLOYMENT"


@dataclass(frozen=True)
class ClusterService:
    """One chart Deployment's container: its command, port, health path and the fixed ``LM_*`` settings it
    needs (the chart adds release-specific ones, e.g. URLs of the other services)."""

    name: str
    command: list[str]
    port: int
    health_path: str
    env: dict[str, str] = field(default_factory=dict)
    # Settings the embedded builder passes explicitly (beyond the shared ones): the chart must set them
    # too, with the cluster's values (e.g. the database and model-server URLs).
    required_env: list[str] = field(default_factory=list)


def cluster_settings() -> Settings:
    """The settings the chart's containers run with, as far as they shape commands and ports."""
    return Settings(home=Path(IMAGE_HOME), mlflow_host=ALL_INTERFACES, gateway_host=ALL_INTERFACES,
                    monitor_host=ALL_INTERFACES, dashboard_host=ALL_INTERFACES,
                    mlflow_backend_store_uri=BACKEND_STORE_REF, mlflow_artifacts_destination=ARTIFACTS_REF)


def _in_image(command: list[str]) -> list[str]:
    """Local paths to the image's: the executable by name (it is on PATH), package files under
    :data:`IMAGE_PACKAGE`."""
    package = Path(__file__).resolve().parents[1]
    out = [Path(command[0]).name]
    for arg in command[1:]:
        path = Path(arg)
        if path.is_absolute() and path.is_relative_to(package):
            arg = f"{IMAGE_PACKAGE}/{path.relative_to(package).as_posix()}"
        out.append(arg)
    return out


# The dashboard's token file is the embedded setup's convenience (one user, one machine): in a cluster
# each user pastes their own token, so it is not carried over.
NOT_IN_CLUSTER = {"dashboard": {"LM_TOKENS_FILE"}}


def _service(spec: ServiceSpec, settings: Settings, port: int, env: dict[str, str]) -> ClusterService:
    shared = settings_env(settings)
    explicit = sorted(k for k, v in spec.env.items() if k.startswith("LM_") and shared.get(k) != v
                      and k not in NOT_IN_CLUSTER.get(spec.name, set()))
    return ClusterService(spec.name, _in_image(spec.command), port, spec.health_path, env, explicit)


def cluster_services(settings: Settings | None = None) -> dict[str, ClusterService]:
    """Per chart Deployment (mlflow, gateway, monitor, dashboard) what its container must run."""
    s = settings or cluster_settings()
    mlflow = mlflow_service(s)
    return {
        # MLflow's fixed env (MLFLOW_SERVER_ENABLE_JOB_EXECUTION) is not a setting of ours; it goes as is.
        "mlflow": ClusterService("mlflow", _in_image(mlflow.command), s.mlflow_port, mlflow.health_path,
                                 dict(mlflow.env or {})),
        "gateway": _service(gateway_service(s), s, s.gateway_port, {}),
        # The monitor takes its bind address and port from settings, not flags.
        "monitor": _service(monitor_service(s), s, s.monitor_port,
                            {"LM_MONITOR_HOST": s.monitor_host, "LM_MONITOR_PORT": str(s.monitor_port)}),
        "dashboard": _service(dashboard_service(s), s, s.dashboard_port, {}),
    }


def chart_services_json(settings: Settings | None = None) -> str:
    """:func:`cluster_services` as the chart's ``files/services.json``."""
    data = {name: asdict(svc) for name, svc in cluster_services(settings).items()}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_chart_services(path: Path = CHART_SERVICES) -> Path:
    """Regenerate the chart's ``files/services.json`` (run after changing a service builder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(chart_services_json())
    return path



def chart_serving_json() -> str:
    """The Services Seldon creates for the manifests of :mod:`learning_machine.k8s.manifests` (model,
    explainer, drift detector), as the chart's ``files/serving.json``: each Service's name with
    :data:`DEPLOYMENT_PLACEHOLDER` for the deployment's name, and its port. The chart builds the gateway's
    and monitor's ``LM_MODEL_SERVER_URL``, ``LM_EXPLAINER_URL`` and ``LM_DRIFT_DETECTOR_URL`` from it, so the
    URLs and the deployed manifests cannot disagree (a test checks the file is current)."""
    from learning_machine.k8s.manifests import seldon_services

    services = seldon_services(Settings(seldon_deployment_name=DEPLOYMENT_PLACEHOLDER))
    data = {role: {"service": name, "port": port} for role, (name, port) in services.items()}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_chart_serving(path: Path = CHART_SERVING) -> Path:
    """Regenerate the chart's ``files/serving.json`` (run after changing how the manifests name things)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(chart_serving_json())
    return path
