"""Alembic environment: runs every actor's branch against the engine handed in by clearinghouse.db."""

from alembic import context

from clearinghouse.db import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    context.run_migrations()
