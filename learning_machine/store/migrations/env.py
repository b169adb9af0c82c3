"""Alembic environment: run programmatically (`lm db upgrade`, gateway start-up) with the engine passed
in ``config.attributes['engine']``; no alembic.ini, no URL in a config file."""

from __future__ import annotations

from alembic import context

from learning_machine.store.db import VERSION_TABLE
from learning_machine.store.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    raise RuntimeError("run migrations through learning_machine.store.db.upgrade (`lm db upgrade`)")

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
