"""Alembic environment: metadata from ``core.schema``, URL from ``DATABASE_URL`` (settings).

``alembic -x url=postgresql://…`` overrides the URL (the test harness uses it).
"""

from __future__ import annotations

from logging.config import fileConfig

from sqlalchemy import create_engine, pool

from alembic import context
from core.db import sqlalchemy_url
from core.schema import metadata
from core.settings import BaseServiceSettings, load_settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    override = context.get_x_argument(as_dictionary=True).get("url")
    if override:
        return override
    return load_settings(BaseServiceSettings).database_url


def run_migrations_offline() -> None:
    context.configure(url=sqlalchemy_url(_database_url()), target_metadata=metadata,
                      literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(sqlalchemy_url(_database_url()), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
