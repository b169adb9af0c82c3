"""One error hierarchy for the whole platform.

Every error the platform raises on purpose is a :class:`LearningMachineError`. Each carries the HTTP
status the gateway answers with and a short machine-readable ``code``; the message names the problem
and never contains a secret. Errors from libraries are wrapped ``from exc`` at the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class LearningMachineError(Exception):
    """Base class: a problem the platform reports to its user, with an HTTP status."""

    status: int = 500
    code: str = "internal-error"

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_problem(self) -> dict[str, Any]:
        """RFC 9457 problem details, as the gateway returns them."""
        problem: dict[str, Any] = {
            "type": f"https://learning-machine.dev/problems/{self.code}",
            "title": self.code.replace("-", " "),
            "status": self.status,
            "detail": self.message,
        }
        if self.detail is not None:
            problem["errors"] = self.detail
        return problem


class ConfigurationError(LearningMachineError):
    """A setting is missing, malformed or unsafe for the chosen environment."""

    status = 500
    code = "configuration-error"


class UnknownNameError(LearningMachineError):
    """A name (dataset, model kind, scenario, backend) is not one of the registered ones."""

    status = 404
    code = "unknown-name"

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...]) -> None:
        super().__init__(
            f"unknown {kind} {name!r}; valid {kind}s are: {', '.join(sorted(valid))}",
            detail={"kind": kind, "name": name, "valid": sorted(valid)},
        )
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)


class BenchmarkError(LearningMachineError):
    """One or more benchmark sections failed (the report still holds the others)."""

    status = 500
    code = "benchmark-failed"


class DatasetError(LearningMachineError):
    """A dataset or its spec cannot be read or does not match its spec."""

    status = 422
    code = "dataset-error"


class SpecError(DatasetError):
    """A dataset spec file is malformed (a missing or invalid field)."""

    code = "spec-error"


@dataclass(frozen=True)
class Problem:
    """One problem with one field of one record."""

    field: str
    value: Any
    rule: str
    message: str
    record_id: Any = None

    def as_dict(self) -> dict[str, Any]:
        out = {"field": self.field, "value": self.value, "rule": self.rule, "message": self.message}
        if self.record_id is not None:
            out["record_id"] = self.record_id
        return out


class RecordValidationError(DatasetError):
    """One or more records break the dataset spec; ``problems`` lists every one."""

    code = "invalid-record"

    def __init__(self, problems: list[Problem]) -> None:
        fields = sorted({p.field for p in problems})
        super().__init__(
            f"{len(problems)} problem(s) in field(s) {', '.join(fields)}",
            detail=[p.as_dict() for p in problems],
        )
        self.problems = problems


class DataQualityError(DatasetError):
    """A dataset's quality is below the configured threshold."""

    code = "data-quality"


class ServiceUnavailableError(LearningMachineError):
    """A service the platform needs (MLflow, the model server, a database) cannot be reached."""

    status = 503
    code = "service-unavailable"


class TrackingUnavailableError(ServiceUnavailableError):
    """The MLflow tracking server cannot be reached or answered with an error."""

    code = "tracking-unavailable"


class ServiceStartError(LearningMachineError):
    """A managed process did not start or did not become healthy in time."""

    code = "service-start-failed"


class ModelNotFoundError(LearningMachineError):
    """No registered model, version or alias matches the request."""

    status = 404
    code = "model-not-found"


class RegistryError(LearningMachineError):
    """The model registry refused an operation."""

    status = 409
    code = "registry-error"


class TrainingError(LearningMachineError):
    """Training could not produce a model from the data given."""

    status = 422
    code = "training-error"


class PipelineError(LearningMachineError):
    """A pipeline run failed (a step raised) or could not be compiled, submitted or scheduled."""

    status = 502
    code = "pipeline-failed"


class AuthenticationError(LearningMachineError):
    """No bearer token, or one that is unknown or revoked."""

    status = 401
    code = "unauthenticated"


class PermissionDeniedError(LearningMachineError):
    """The token is valid but its role may not use this route."""

    status = 403
    code = "forbidden"


class NotFoundError(LearningMachineError):
    """A stored record (patient, prediction) does not exist."""

    status = 404
    code = "not-found"


class ConflictError(LearningMachineError):
    """The request contradicts what is already stored (another outcome, other features for an id)."""

    status = 409
    code = "conflict"


class PayloadTooLargeError(LearningMachineError):
    """A request body or batch is larger than the configured limit."""

    status = 413
    code = "payload-too-large"


class BadRequestError(LearningMachineError):
    """A request is not well-formed (not JSON, wrong shape) before any record is looked at."""

    status = 422
    code = "invalid-request"
