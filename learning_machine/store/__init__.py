"""The platform database: SQLAlchemy models, Alembic migrations, and reads/writes as plain functions."""

from learning_machine.store.db import Database, upgrade

__all__ = ["Database", "upgrade"]
