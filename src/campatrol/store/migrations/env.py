"""Alembic environment for campatrol's store; works without an alembic.ini on disk."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from campatrol.store.schema import Base

config = context.config


def run_offline() -> None:
    """Emit the migration SQL for the configured URL without connecting."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=Base.metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Migrate through the connection Store.migrate() passes in, else one made from the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url", ""))
    try:
        with engine.connect() as own:
            _run(own)
    finally:
        engine.dispose()


def _run(connection) -> None:
    # Batch mode: SQLite cannot ALTER most column properties, so later migrations copy tables.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
