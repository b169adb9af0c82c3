"""`lm doctor`: check every configured service and log a smoke run, so a new user knows the stack works."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from learning_machine.errors import LearningMachineError
from learning_machine.registry.names import CHAMPION
from learning_machine.registry.tracker import Tracker, tracker_for
from learning_machine.settings import Settings

SMOKE_EXPERIMENT = "lm-doctor"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _check(name: str, fn: Callable[[], str]) -> Check:
    try:
        return Check(name, True, fn())
    except LearningMachineError as exc:
        return Check(name, False, exc.message)


def smoke_run(tracker: Tracker) -> str:
    """Log a tiny run (2 params, 2 metrics over 5 steps, a text artifact) and read it back."""
    run_id = tracker.start_run(SMOKE_EXPERIMENT, "doctor-smoke-run", tags={"lm.purpose": "smoke test"})
    try:
        tracker.log_params(run_id, {"alpha": 0.5, "kind": "smoke"})
        for step in range(5):
            tracker.log_metrics(run_id, {"loss": 1.0 / (step + 1), "accuracy": 0.5 + step / 10}, step=step)
        tracker.log_text(run_id, "Learning Machine doctor: the artifact store works.\n", "doctor/hello.txt")
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.end_run(run_id)
    history = tracker.metric_history(run_id, "loss")
    artifacts = tracker.artifact_names(run_id, "doctor")
    if len(history) != 5 or not artifacts:
        raise LearningMachineError(f"smoke run {run_id} did not read back (metrics {len(history)}/5, "
                                   f"artifacts {len(artifacts)})")
    return f"run {run_id} in experiment {SMOKE_EXPERIMENT!r}: 2 params, 2 metrics x 5 steps, 1 artifact"


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in order; a failed check does not stop the others."""
    tracker = tracker_for(settings)
    checks = [Check("settings", True, f"environment={settings.environment}, home={settings.home}")]

    def health() -> str:
        tracker.health()
        return f"{settings.tracking_uri} answers /health" + (" (managed by lm up)" if settings.mlflow_managed else "")

    checks.append(_check("mlflow server", health))
    if not checks[-1].ok:
        return checks
    checks.append(_check("tracking + artifacts", lambda: smoke_run(tracker)))

    def registry() -> str:
        champion = tracker.alias_version(settings.model_name, CHAMPION)
        if champion is None:
            return f"reachable; {settings.model_name!r} has no champion yet (run `lm up` or `lm train`)"
        return f"{settings.model_name} v{champion.version} is the champion"

    checks.append(_check("model registry", registry))
    if settings.s3_endpoint_url:
        endpoint = settings.s3_endpoint_url
        checks.append(_check("s3 endpoint", lambda: _s3_check(endpoint)))
    return checks


def _s3_check(endpoint: str) -> str:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        buckets = boto3.client("s3", endpoint_url=endpoint).list_buckets().get("Buckets", [])
    except (BotoCoreError, ClientError) as exc:
        raise LearningMachineError(f"S3 endpoint {endpoint} failed: {type(exc).__name__}") from exc
    return f"{endpoint}: {len(buckets)} bucket(s) visible"
