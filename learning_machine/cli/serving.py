"""`lm serve`, `lm deploy` and `lm manifests`: the model server and deployments from the command line.
Registered on the main app by :func:`register`; heavy imports stay inside the commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from learning_machine.cli.common import console, out, settings_of
from learning_machine.settings import Settings


def serve(ctx: typer.Context,
          ref: Annotated[str | None, typer.Option(help="Version or alias to serve (default: LM_MODEL_REF).")] = None,
          port: Annotated[int | None, typer.Option(help="HTTP port (default: LM_MODEL_SERVER_PORT).")] = None,
          background: Annotated[bool, typer.Option(help="Run in the background like `lm up` does.")] = False,
          ) -> None:
    """Run MLServer with the model, its explainer and its drift detector (loaded from MLflow)."""
    from learning_machine.embedded.model_server import (
        mlserver_command,
        mlserver_env,
        model_server_service,
        ports_of,
        served_names,
        version_exists,
        wait_models_ready,
        write_repository_for,
    )
    from learning_machine.embedded.processes import ProcessManager

    settings = settings_of(ctx)
    updates = {k: v for k, v in {"model_ref": ref, "model_server_port": port}.items() if v is not None}
    settings = settings.model_copy(update=updates)
    url = ports_of(settings).url
    names = served_names(settings.model_name)
    if background:
        console.print(f"starting the model server on {url} in the background")
        ProcessManager(settings.run_dir).start(model_server_service(settings), timeout_s=settings.startup_timeout_s,
                                               progress=console.print)
        wait_models_ready(url, names, timeout_s=settings.startup_timeout_s, progress=console.print)
        return
    loadable = version_exists(settings)
    root = write_repository_for(settings, load_at_startup=loadable)
    console.print(f"model server on {url} serving {', '.join(names)} "
                  f"(models:/{settings.model_name}@{settings.model_ref} from {settings.tracking_uri}); "
                  f"repository {root}")
    if not loadable:
        console.print(f"{settings.model_name}@{settings.model_ref} is not in the registry at {settings.tracking_uri} "
                      "yet: starting with no models; `lm up` loads them once a champion exists (or `lm deploy`)")
    import os

    proc = subprocess.Popen(mlserver_command(root), env={**os.environ, **mlserver_env(settings.tracking_uri)})
    try:
        sys.exit(proc.wait())
    except KeyboardInterrupt:
        proc.terminate()
        sys.exit(proc.wait(timeout=30))


def ensure_serving(settings: Settings) -> None:
    """After `lm up` registered a first champion: load the models the managed server could not load at start."""
    from learning_machine.clients.v2 import ModelServerClient
    from learning_machine.embedded.model_server import ports_of, reload_models, served_names, wait_models_ready
    from learning_machine.embedded.processes import is_healthy

    if not settings.model_server_managed:
        return
    url = ports_of(settings).url
    names = served_names(settings.model_name)
    if not is_healthy(f"{url}/v2/health/live"):
        return  # not running (e.g. started elsewhere): nothing to load
    with ModelServerClient(url, timeout_s=settings.request_timeout_s) as client:
        missing = [n for n in names if not client.model_ready(n)]
    if missing:
        console.print(f"loading {', '.join(missing)} into the model server at {url}")
        reload_models(url, missing)
        wait_models_ready(url, names, timeout_s=settings.startup_timeout_s)


def deploy(ctx: typer.Context, version: Annotated[str, typer.Argument(help="Version number or alias.")],
           backend: Annotated[str | None, typer.Option(help="none, local or seldon (default: LM_DEPLOYER).")] = None,
           skip_missing: Annotated[bool, typer.Option(help="Exit 0 when the version or alias does not exist yet "
                                                      "(the Helm chart's install hook, before a first champion).")]
           = False,
           ) -> None:
    """Serve a registered version with the configured deployer (local MLServer swap or Seldon)."""
    from learning_machine.deployers import get_deployer
    from learning_machine.errors import ModelNotFoundError
    from learning_machine.registry.tracker import tracker_for

    settings = settings_of(ctx)
    try:
        info = tracker_for(settings).version(settings.model_name, version)
    except ModelNotFoundError as exc:
        if not skip_missing:
            raise
        console.print(f"nothing to deploy: {exc}")
        return
    result = get_deployer(settings, backend).deploy(settings.model_name, info.version)
    out.print_json(json.dumps(result.as_dict()))


def manifests(ctx: typer.Context,
              out_dir: Annotated[Path, typer.Option("--out", help="Folder to write into.")] = Path("manifests"),
              version: Annotated[str, typer.Option(help="Model version the manifests name.")] = "1",
              shadow_version: Annotated[str | None, typer.Option(
                  help="Also render this challenger in the shadow of VERSION, under shadow/ (v1: the SeldonDeployment "
                       "with a shadow predictor; v2: the challenger's Model and a mirroring Experiment).")] = None,
              ) -> None:
    """Render the Seldon manifests (v1 SeldonDeployment, v2 Server/Model/Pipeline) with the current settings."""
    from learning_machine.k8s.manifests import write_manifests

    for path in write_manifests(out_dir, settings_of(ctx), version=version, shadow_version=shadow_version):
        out.print(str(path))


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(deploy)
    app.command()(manifests)
