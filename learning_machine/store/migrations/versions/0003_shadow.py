"""Shadow predictions: a challenger's scores of the records the champion answered, stored apart from the
predictions clinicians see, for the learning loop's paired evidence.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "shadow_predictions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("prediction_id", sa.Integer, sa.ForeignKey("predictions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.UniqueConstraint("prediction_id", "model_version", name="uq_shadow_prediction_version"),
    )
    op.create_index("ix_shadow_predictions_prediction_id", "shadow_predictions", ["prediction_id"])
    op.create_index("ix_shadow_predictions_model_version", "shadow_predictions", ["model_version"])


def downgrade() -> None:
    op.drop_index("ix_shadow_predictions_model_version", "shadow_predictions")
    op.drop_index("ix_shadow_predictions_prediction_id", "shadow_predictions")
    op.drop_table("shadow_predictions")
