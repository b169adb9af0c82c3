"""The ``kubeflow`` runner and the KFP API calls behind `lm pipelines submit` and `schedule`: compile the
pipeline with the cluster options, upload it as a new pipeline version, then start a run or a recurring run
through ``kfp.Client``. Cluster settings (MLflow URL, MinIO credentials) come from the Secret and ConfigMap
named in ``learning_machine.pipelines.cluster``, so nothing machine-local is sent as a parameter."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learning_machine.errors import ConfigurationError, LearningMachineError, PipelineError, ServiceUnavailableError
from learning_machine.runners.base import PipelineRun, PipelineRunner, Progress, compile_pipeline
from learning_machine.settings import Settings

PIPELINE_PREFIX = "learning-machine-"


@dataclass
class Uploaded:
    """A pipeline version on the KFP server."""

    pipeline_id: str
    version_id: str
    version_name: str
    experiment_id: str


def kfp_credentials(token_path: Path) -> Any | None:
    """In-cluster credentials for the KFP API: the projected service-account token at ``token_path``
    (audience ``pipelines.kubeflow.org``, refreshed by the kubelet; multi-user Kubeflow requires it), read
    afresh before each request by ``kfp.client.ServiceAccountTokenVolumeCredentials``. None when there is
    no token file (outside a cluster, or a single-user install): the client then sends no credentials."""
    if not token_path.is_file():
        return None
    from kfp.client import ServiceAccountTokenVolumeCredentials

    return ServiceAccountTokenVolumeCredentials(path=str(token_path))


def kfp_client(host: str | None, token_path: Path | None = None) -> Any:
    """A ``kfp.Client`` for ``host`` (the KFP API URL), with the service-account token at ``token_path`` as
    credentials when that file exists (:func:`kfp_credentials`). kfp.Client applies such credentials on its
    own only when it finds the host itself; given a host, it has to be handed them."""
    if not host:
        raise ConfigurationError("no Kubeflow Pipelines host: pass --host URL or set LM_KFP_HOST")
    import warnings

    import kfp

    credentials = kfp_credentials(token_path) if token_path is not None else None
    with _kfp_errors(host, "connecting"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
        return kfp.Client(host=host, credentials=credentials)


@contextmanager
def _kfp_errors(host: str, what: str) -> Iterator[None]:
    """KFP client and network failures as the platform's errors, naming the host and what was done."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    try:
        yield
    except LearningMachineError:
        raise
    except (OSError, MaxRetryError, NewConnectionError) as exc:
        raise ServiceUnavailableError(f"{what}: Kubeflow Pipelines at {host} is unreachable "
                                      f"({type(exc).__name__})") from exc
    except Exception as exc:
        status = getattr(exc, "status", None)
        reason = getattr(exc, "reason", None) or str(exc).splitlines()[0][:300]
        raise PipelineError(f"{what}: Kubeflow Pipelines at {host} answered "
                            f"{f'HTTP {status} ' if status else ''}{reason}") from exc


def upload(client: Any, host: str, pipeline: str, package: Path, experiment: str) -> Uploaded:
    """Upload ``package`` as a new version of the pipeline (created on first upload)."""
    name = PIPELINE_PREFIX + pipeline.replace("_", "-")
    version_name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with _kfp_errors(host, f"uploading pipeline {name}"):
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            created = client.upload_pipeline(str(package), pipeline_name=name,
                                             description=f"Learning Machine {pipeline} pipeline")
            pipeline_id = created.pipeline_id
        version = client.upload_pipeline_version(str(package), pipeline_version_name=version_name,
                                                 pipeline_id=pipeline_id)
        exp = client.create_experiment(experiment)
    return Uploaded(pipeline_id, version.pipeline_version_id, version_name, exp.experiment_id)


def kfp_cron(cron: str) -> str:
    """KFP's cron has a leading seconds field; a usual five-field expression gets ``0`` seconds."""
    fields = cron.split()
    if len(fields) == 5:
        return "0 " + cron.strip()
    if len(fields) == 6:
        return cron.strip()
    raise ConfigurationError(f"cron expression {cron!r} needs 5 fields (minute hour day month weekday) or 6")


class KubeflowRunner(PipelineRunner):
    """Runs pipelines on a Kubeflow Pipelines server (``LM_KFP_HOST``)."""

    name = "kubeflow"

    def __init__(self, settings: Settings, host: str | None = None) -> None:
        super().__init__(settings)
        self.host = host or settings.kfp_host or ""

    def _package(self, pipeline: str, tmp: str) -> Path:
        return compile_pipeline(pipeline, Path(tmp) / f"{pipeline}.yaml")

    def run(self, pipeline: str, params: dict[str, Any] | None = None, *,
            progress: Progress | None = None) -> PipelineRun:
        """Upload the pipeline and start one run; returns at once (state as the server reports it)."""
        client = kfp_client(self.host, self.settings.kfp_token_path)
        args = self.parameters(pipeline, params, from_settings=False)
        with tempfile.TemporaryDirectory() as tmp:
            uploaded = upload(client, self.host, pipeline, self._package(pipeline, tmp),
                              self.settings.experiment_name)
        with _kfp_errors(self.host, f"starting a run of {pipeline}"):
            run = client.run_pipeline(uploaded.experiment_id, f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S')}",
                                      params=args, pipeline_id=uploaded.pipeline_id,
                                      version_id=uploaded.version_id, enable_caching=False)
        if progress:
            progress(f"submitted {pipeline} as run {run.run_id} to {self.host}")
        return PipelineRun(pipeline=pipeline, runner=self.name, run_key=str(run.run_id),
                           state=str(getattr(run, "state", None) or "SUBMITTED"), parameters=args,
                           extra={"host": self.host, "run_url": f"{self.host.rstrip('/')}/#/runs/details/{run.run_id}",
                                  "pipeline_id": uploaded.pipeline_id, "version_id": uploaded.version_id,
                                  "version_name": uploaded.version_name})

    def schedule(self, pipeline: str, cron: str, params: dict[str, Any] | None = None, *,
                 name: str | None = None) -> dict[str, Any]:
        """Upload the pipeline and create a recurring run on ``cron`` (one run at a time, no catch-up)."""
        client = kfp_client(self.host, self.settings.kfp_token_path)
        args = self.parameters(pipeline, params, from_settings=False)
        expression = kfp_cron(cron)
        with tempfile.TemporaryDirectory() as tmp:
            uploaded = upload(client, self.host, pipeline, self._package(pipeline, tmp),
                              self.settings.experiment_name)
        job_name = name or f"{PIPELINE_PREFIX}{pipeline.replace('_', '-')}-schedule"
        with _kfp_errors(self.host, f"scheduling {pipeline}"):
            job = client.create_recurring_run(uploaded.experiment_id, job_name, cron_expression=expression,
                                              params=args, pipeline_id=uploaded.pipeline_id,
                                              version_id=uploaded.version_id, max_concurrency=1, no_catchup=True,
                                              enable_caching=False)
        return {"recurring_run_id": job.recurring_run_id, "name": job_name, "cron": expression,
                "pipeline_id": uploaded.pipeline_id, "version_id": uploaded.version_id,
                "version_name": uploaded.version_name, "host": self.host, "parameters": args}
