"""Initial schema: records, predictions, explanations, outcomes, monitoring results, events, API tokens.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "records",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("record_id", sa.String(200), nullable=False),
        sa.Column("features", sa.JSON, nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.UniqueConstraint("record_id", name="uq_records_record_id"),
    )
    op.create_index("ix_records_received_at", "records", ["received_at"])

    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("record_id", sa.String(200),
                  sa.ForeignKey("records.record_id", name="fk_predictions_record", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("label", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_predictions_record_id", "predictions", ["record_id"])
    op.create_index("ix_predictions_model_version", "predictions", ["model_version"])
    op.create_index("ix_predictions_request_id", "predictions", ["request_id"])
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])

    op.create_table(
        "explanations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("record_id", sa.String(200),
                  sa.ForeignKey("records.record_id", name="fk_explanations_record", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("explanation", sa.JSON, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_explanations_record_id", "explanations", ["record_id"])

    op.create_table(
        "outcomes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("record_id", sa.String(200),
                  sa.ForeignKey("records.record_id", name="fk_outcomes_record", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("outcome", sa.Integer, nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.UniqueConstraint("record_id", name="uq_outcomes_record_id"),
    )
    op.create_index("ix_outcomes_received_at", "outcomes", ["received_at"])

    op.create_table(
        "monitoring_results",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("window_start", TZ, nullable=True),
        sa.Column("window_end", TZ, nullable=True),
        sa.Column("window_rows", sa.Integer, nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("metric", sa.String(100), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("threshold", sa.Float, nullable=True),
        sa.Column("alert", sa.Boolean, nullable=False),
        sa.Column("feature", sa.String(200), nullable=True),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("details", sa.JSON, nullable=False),
    )
    op.create_index("ix_monitoring_results_created_at", "monitoring_results", ["created_at"])
    op.create_index("ix_monitoring_results_kind", "monitoring_results", ["kind"])

    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_events_created_at", "events", ["created_at"])
    op.create_index("ix_events_kind", "events", ["kind"])

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )


def downgrade() -> None:
    for table in ("api_tokens", "events", "monitoring_results", "outcomes", "explanations", "predictions",
                  "records"):
        op.drop_table(table)
