"""Request and response shapes, for validation of the envelope and for the OpenAPI docs at /docs.
Records themselves are checked against the dataset spec (every problem listed), not here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class ExplanationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    record_id: str | int | None = Field(None, description="Id of a stored record to explain.")
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


class OutcomeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    record_id: str | int = Field(description="Id of a record the gateway has stored.")
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
