"""Request and response shapes, for validation of the envelope and for the OpenAPI docs at /docs.
Records themselves are checked against the dataset spec (every problem listed), not here."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from learning_machine.data.spec import MAX_INTEGER_ID, RECORD_ID_MAX_CHARS, check_record_id
from learning_machine.errors import bad_text


class In(BaseModel):
    """Every request body: no unknown fields, no NaN or infinite numbers (strict JSON has none)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _record_id(value: str | int) -> str | int:
    problem = check_record_id("record_id", value)
    if problem is not None:
        raise ValueError(problem.message)
    return value


RecordId = Annotated[Annotated[str, StringConstraints(min_length=1, max_length=RECORD_ID_MAX_CHARS)]
                     | Annotated[int, Field(ge=-MAX_INTEGER_ID, le=MAX_INTEGER_ID)],
                     Field(description="A record id: 1 to 128 printable characters, or an integer of up to 15 digits."),
                     AfterValidator(_record_id)]


def with_record_id(payload: Any, id_field: str) -> Any:
    """A body that names the record by the dataset's own id field (``patient_id``) as one that says
    ``record_id``, so every route takes the id the same way `POST /v1/predictions` does."""
    if id_field != "record_id" and isinstance(payload, dict) and id_field in payload:
        if "record_id" in payload:
            raise ValueError(f"send the record id once, as 'record_id' or as {id_field!r}, not both")
        payload = {("record_id" if k == id_field else k): v for k, v in payload.items()}
    return payload


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    """A free-form JSON object we store and serve back (an event's detail, a result's details): bounded in
    size and depth, finite numbers, integers that fit 64 bits, text that every database can hold."""
    budget = [5000]

    def walk(item: Any, depth: int, where: str) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError("the object is too large (more than 5,000 values)")
        if depth > 8:
            raise ValueError(f"{where}: nested more than 8 levels deep")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{where}: numbers must be finite")
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) >= 2**63:
            raise ValueError(f"{where}: integers must fit in 64 bits")
        if isinstance(item, str):
            why = bad_text(item)
            if why:
                raise ValueError(f"{where}: the text {why}")
        elif isinstance(item, dict):
            for key, inner in item.items():
                walk(str(key), depth + 1, where)
                walk(inner, depth + 1, f"{where}.{str(key)[:40]}")
        elif isinstance(item, list):
            for index, inner in enumerate(item):
                walk(inner, depth + 1, f"{where}[{index}]")

    walk(value, 0, "")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class PredictionOut(_Out):
    record_id: str
    probability: float = Field(description="Predicted probability of the positive outcome.")
    label: int = Field(description="Predicted class (0 or 1).")
    model_version: str = Field(description="Registered model version that answered.")
    request_id: str


class BatchPredictionOut(_Out):
    request_id: str
    predictions: list[PredictionOut]


class ExplanationIn(In):
    record_id: RecordId | None = Field(None, description="Id of a stored record to explain (the dataset's own "
                                        "id field, e.g. `patient_id`, is accepted too).")
    record: dict[str, Any] | None = Field(None, description="A full record to explain (it is stored too).")
    method: Literal["exact", "anchors"] = Field("exact", description="exact: per-feature contributions; "
                                                "anchors: a rule that locally fixes the prediction.")


class ExplanationOut(_Out):
    record_id: str
    method: str
    model_version: str | None
    explanation: dict[str, Any]
    request_id: str
    created_at: str | None


class OutcomeIn(In):
    record_id: RecordId = Field(description="Id of a record the gateway has stored (the dataset's own id field, "
                                "e.g. `patient_id`, is accepted too).")
    outcome: Any = Field(description="The ground truth: 0 or 1 (also true/false, \"0\"/\"1\").")


class OutcomeOut(_Out):
    record_id: str
    outcome: int
    received_at: str | None
    recorded_by: str | None = Field(None, description="Name of the token that recorded (or corrected) it.")
    status: Literal["created", "unchanged", "overwritten"]


class PageOut(_Out):
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


PREDICTION_EXAMPLES = {
    "one record": {"value": {"record_id": "enc-0001", "age": 63, "sex": "male", "bmi": 29.1, "systolic_bp": 148,
                             "total_cholesterol": 6.2, "hdl_cholesterol": 1.1, "hba1c": 6.1, "smoking": "former",
                             "egfr": 71}},
    "a batch": {"value": {"records": [
        {"record_id": "enc-0002", "age": 48, "sex": "female", "bmi": 24.0, "systolic_bp": 121,
         "total_cholesterol": 5.0, "hdl_cholesterol": 1.6, "hba1c": 5.4, "smoking": "never", "egfr": 95},
        {"record_id": "enc-0003", "age": 71, "sex": "male", "bmi": None, "systolic_bp": 162,
         "total_cholesterol": 6.8, "hdl_cholesterol": 0.9, "hba1c": 7.2, "smoking": "current", "egfr": 55}]}},
}
