"""One error hierarchy for the whole platform.

Every error the platform raises on purpose is a :class:`LearningMachineError`. Each carries the HTTP
status the gateway answers with and a short machine-readable ``code``; the message names the problem
and never contains a secret. Errors from libraries are wrapped ``from exc`` at the boundary.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import Any

MAX_ECHO_CHARS = 200
"""An offending value is echoed back in an error at most this long (the rest is cut, and said so)."""


def encodable(value: Any, *, depth: int = 0) -> Any:
    """``value`` as something strict JSON (RFC 8259, UTF-8) can always carry, for error documents and logs:
    non-finite numbers become their spelling (``"Infinity"``), integers beyond 15 digits and long strings
    are cut, characters JSON or UTF-8 cannot carry (lone surrogates, NUL and other control characters) are
    escaped, containers are walked (bounded). The reader sees what was sent; the encoder never fails."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) < 10**15:
            return value
        if value.bit_length() > 4000:  # str() refuses integers past Python's digit limit
            return "an integer of more than 1,000 digits"
        digits = str(abs(value))
        return f"{'-' if value < 0 else ''}{digits[:15]}... ({len(digits)} digits)"
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return safe_text(value)
    if depth < 3 and isinstance(value, dict):
        return {safe_text(str(k), 100): encodable(v, depth=depth + 1) for k, v in list(value.items())[:50]}
    if depth < 3 and isinstance(value, (list, tuple)):
        return [encodable(v, depth=depth + 1) for v in value[:50]]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and not isinstance(value, (dict, list, tuple)):
        try:
            return encodable(item(), depth=depth + 1)
        except (TypeError, ValueError):
            pass
    return safe_text(repr(value))


def safe_text(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with control characters and lone surrogates escaped."""
    cut = text[:limit]
    if not cut.isprintable():
        cut = "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape", "backslashreplace")
                      .decode("ascii") for c in cut)
    return cut + (f"... ({len(text):,} characters)" if len(text) > limit else "")


def bad_text(text: str) -> str | None:
    """Why ``text`` cannot be stored or echoed as sent (a NUL or other control character, an unpaired
    surrogate, a non-character), or None when it can."""
    for char in text:
        category = unicodedata.category(char)
        if category == "Cs":
            return "contains an unpaired UTF-16 surrogate (not valid Unicode text)"
        if category == "Cc" and char not in "\t\n\r":
            return f"contains the control character U+{ord(char):04X}"
        if category == "Cn":
            return f"contains U+{ord(char):04X}, which is not a Unicode character"
    return None


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
            problem["errors"] = encodable_detail(self.detail)
        return problem


def encodable_detail(detail: Any) -> Any:
    """A problem's detail made encodable (see :func:`encodable`), lists of any length kept whole: a batch
    with 1,000 bad records lists 1,000 problems."""
    if isinstance(detail, list):
        return [encodable(d) for d in detail]
    return encodable(detail)


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
        out = {"field": safe_text(str(self.field), 100), "value": encodable(self.value), "rule": self.rule,
               "message": self.message}
        if self.record_id is not None:
            out["record_id"] = encodable(self.record_id)
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


class RecordIntegrityError(LearningMachineError):
    """A model version's change record is missing or its bytes no longer match the digest recorded when it was
    written: reported, never served as if it were the record."""

    status = 409
    code = "change-record-tampered"


class PayloadTooLargeError(LearningMachineError):
    """A request body or batch is larger than the configured limit."""

    status = 413
    code = "payload-too-large"


class BadRequestError(LearningMachineError):
    """A request is not well-formed (not JSON, wrong shape) before any record is looked at."""

    status = 422
    code = "invalid-request"
