"""Reads for the monitor: predictions in arrival order with their inputs and outcomes, and the most
recent labelled predictions. The monitor gets them through the gateway's API, never from the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from learning_machine.store.db import Database
from learning_machine.store.models import Outcome, Prediction, Record
from learning_machine.store.repository import _iso


def _row(prediction: Prediction, record: Record, outcome: Outcome | None) -> dict[str, Any]:
    return {"id": prediction.id, "record_id": prediction.record_id, "features": record.features,
            "probability": prediction.probability, "label": prediction.label,
            "model_version": prediction.model_version, "created_at": _iso(prediction.created_at),
            "outcome": None if outcome is None else outcome.outcome,
            "outcome_id": None if outcome is None else outcome.id}


def predictions_after(db: Database, after_id: int, limit: int) -> dict[str, Any]:
    """Predictions with id > ``after_id`` in arrival order, each with its record's features and outcome."""
    query = (select(Prediction, Record, Outcome).join(Record, Record.record_id == Prediction.record_id)
             .outerjoin(Outcome, Outcome.record_id == Prediction.record_id)
             .where(Prediction.id > after_id).order_by(Prediction.id).limit(limit))
    with db.read() as session:
        items = [_row(p, r, o) for p, r, o in session.execute(query)]
    return {"items": items, "next_after_id": items[-1]["id"] if items else after_id}


def labelled_predictions(db: Database, limit: int, model_version: str | None = None) -> dict[str, Any]:
    """The most recent predictions whose outcome has arrived (newest first), for realised performance."""
    query = (select(Prediction, Record, Outcome).join(Record, Record.record_id == Prediction.record_id)
             .join(Outcome, Outcome.record_id == Prediction.record_id))
    if model_version is not None:
        query = query.where(Prediction.model_version == model_version)
    query = query.order_by(Prediction.id.desc()).limit(limit)
    with db.read() as session:
        items = [_row(p, r, o) for p, r, o in session.execute(query)]
    return {"items": items}
