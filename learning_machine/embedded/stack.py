"""The embedded default: every service as a local process, started by `lm up` and stopped by `lm down`.
Later services (model server, gateway, monitor, dashboard) are added to :func:`embedded_services`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from learning_machine.embedded.processes import ProcessManager, ServiceSpec, ServiceStatus, is_healthy, venv_tool
from learning_machine.settings import Settings, settings_env

Progress = Callable[[str], None]


def mlflow_service(settings: Settings) -> ServiceSpec:
    """The managed MLflow tracking server: SQLite backend, proxied artifacts on disk (or S3)."""
    command = [
        venv_tool("mlflow"), "server", "--host", settings.mlflow_host, "--port", str(settings.mlflow_port),
        "--backend-store-uri", settings.backend_store_uri(),
        "--artifacts-destination", settings.artifacts_destination(), "--serve-artifacts",
        "--workers", str(settings.mlflow_workers),
    ]
    # The job runner is for GenAI jobs we do not use; without it a cold start is much faster.
    return ServiceSpec("mlflow", command, settings.tracking_uri, "/health",
                       env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, folders=(settings.mlflow_dir,))


def gateway_service(settings: Settings) -> ServiceSpec:
    """The gateway (`lm gateway`). It rebuilds its settings from the environment, so everything it must
    agree on with this process (database, model server, tracking server, home) is passed explicitly."""
    env = settings_env(settings)
    env.update({"LM_DATABASE_URL": settings.database_uri(), "LM_MODEL_SERVER_URL": settings.model_server_base_url()})
    command = [venv_tool("lm"), "gateway", "--host", settings.gateway_host, "--port", str(settings.gateway_port),
               "--log-level", "warning"]
    return ServiceSpec("gateway", command, settings.gateway_url, "/healthz", env=env,
                       metrics_url=f"{settings.gateway_url}/metrics")


def monitor_service(settings: Settings) -> ServiceSpec:
    """The learning loop's monitor (`lm monitor`). In the embedded setup a promotion is deployed to the
    managed model server, so the monitor's retraining runs use the ``local`` deployer unless one is set."""
    env = settings_env(settings)
    env.update({"LM_DATABASE_URL": settings.database_uri(), "LM_MODEL_SERVER_URL": settings.model_server_base_url()})
    env["LM_DEPLOYER"] = settings.serving_deployer()
    return ServiceSpec("monitor", [venv_tool("lm"), "monitor"], settings.monitor_health_url, "/health", env=env,
                       metrics_url=f"{settings.monitor_health_url}/metrics")


def dashboard_service(settings: Settings) -> ServiceSpec:
    """The Streamlit dashboard; it talks only to the gateway (at ``dashboard_gateway_url`` or the gateway's
    address). It holds no token: users sign in with their own (`lm dashboard-link` prints a sign-in link)."""
    app = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
    env = settings_env(settings)
    env["LM_DASHBOARD_GATEWAY_URL"] = settings.dashboard_gateway_url or settings.gateway_url
    env.pop("LM_TOKENS_FILE", None)
    command = [venv_tool("streamlit"), "run", str(app), "--server.port", str(settings.dashboard_port),
               "--server.headless", "true", "--server.address", settings.dashboard_host,
               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]
    return ServiceSpec("dashboard", command, settings.dashboard_url, "/_stcore/health", env=env)


def gateway_readiness(url: str) -> str:
    """'ready', or why the gateway is alive but not ready (its database or model server), for `lm status`."""
    try:
        response = httpx.get(url.rstrip("/") + "/readyz", timeout=5)
    except httpx.HTTPError as exc:
        return f"not ready: {type(exc).__name__}"
    if response.status_code == 200:
        return "ready"
    try:
        return "not ready: " + str(response.json().get("detail", response.status_code))
    except ValueError:
        return f"not ready: HTTP {response.status_code}"


def embedded_services(settings: Settings) -> list[ServiceSpec]:
    """The services `lm up` runs, in start order."""
    services = []
    if settings.mlflow_managed:
        services.append(mlflow_service(settings))
    if settings.model_server_managed:
        from learning_machine.embedded.model_server import model_server_service

        services.append(model_server_service(settings))
    # The gateway comes after the model server it calls, the monitor after the gateway it reads.
    services.append(gateway_service(settings))
    services.append(monitor_service(settings))
    services.append(dashboard_service(settings))
    return services


@dataclass
class UpReport:
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)
    statuses: list[ServiceStatus] = field(default_factory=list)


def start_all(settings: Settings, progress: Progress | None = None) -> UpReport:
    """Start every embedded service that is not running; wait until each is healthy."""
    manager = ProcessManager(settings.run_dir)
    report = UpReport()
    from learning_machine.store.tokens import prepare_for_gateway

    prepare_for_gateway(settings, progress)  # migrations and the first API tokens, before the gateway starts
    for spec in embedded_services(settings):
        if manager.start(spec, timeout_s=settings.startup_timeout_s, progress=progress):
            report.started.append(spec.name)
        else:
            report.already_running.append(spec.name)
            if progress:
                progress(f"{spec.name} already running at {spec.url}")
    report.statuses = statuses(settings)
    return report


def start_serving(settings: Settings, manager: ProcessManager, timeout_s: float | None = None) -> dict[str, str]:
    """The serving path alone, without `lm up`'s monitor and dashboard (benchmarks and end-to-end tests run
    their own): the model server (until its models are ready), then the database migrated with its first
    tokens and the gateway in front of the model server, in ``manager``. The API tokens, by role."""
    import json

    from learning_machine.embedded.model_server import model_server_service, served_names, wait_models_ready
    from learning_machine.store.tokens import prepare_for_gateway

    timeout = settings.startup_timeout_s if timeout_s is None else timeout_s
    server = model_server_service(settings)
    manager.start(server, timeout_s=timeout)
    wait_models_ready(server.url, served_names(settings.model_name), timeout_s=timeout)
    prepare_for_gateway(settings)
    manager.start(gateway_service(settings), timeout_s=timeout)
    return {role: str(token) for role, token in json.loads(settings.tokens_path().read_text()).items()}


def stop_all(settings: Settings) -> list[str]:
    """Stop every process `lm up` started (newest first); returns their names."""
    manager = ProcessManager(settings.run_dir)
    known = [s.name for s in embedded_services(settings)]
    names = list(dict.fromkeys([*reversed(known), *manager.managed_names()]))
    return [name for name in names if manager.stop(name)]


def statuses(settings: Settings) -> list[ServiceStatus]:
    """Each service with its URL and health; external services are checked but not managed."""
    manager = ProcessManager(settings.run_dir)
    specs = embedded_services(settings)
    out = [manager.status(spec) for spec in specs]
    for spec, status in zip(specs, out, strict=True):
        status.metrics = spec.metrics_url
    for status in out:
        if status.name == "gateway" and status.healthy:
            status.detail = gateway_readiness(settings.gateway_url)
    if not settings.mlflow_managed:
        healthy = is_healthy(settings.tracking_uri.rstrip("/") + "/health")
        out.insert(0, ServiceStatus("mlflow", settings.tracking_uri, None, healthy, healthy, managed=False,
                                    detail="external"))
    return out
