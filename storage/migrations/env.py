"""Alembic environment for easel's SQLite database.

The bot calls Alembic from storage/db.py and passes an open connection in
`config.attributes["connection"]`. A developer may also run the alembic CLI with
`-c storage/migrations/alembic.ini -x db=path/to/easel.sqlite3`.
"""

from pathlib import Path

from alembic import context
from sqlalchemy import Connection

from storage.db import create_migration_engine
from storage.models import DATABASE_ONLY_TABLE_PREFIXES, Base

config = context.config


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    # The FTS5 table and its shadow tables are made by hand in revision 0001.
    if type_ == "table" and name is not None:
        return not name.startswith(DATABASE_ONLY_TABLE_PREFIXES)
    return True


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        include_name=include_name,
        render_as_batch=True,  # SQLite can only change most columns by rebuilding the table
        transactional_ddl=True,  # SQLite DDL is transactional once BEGIN is ours to emit
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported: revision 0001 inspects the database")
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    db = context.get_x_argument(as_dictionary=True).get("db")
    if not db:
        raise SystemExit("pass the database file: alembic -x db=path/to/easel.sqlite3 ...")
    engine = create_migration_engine(Path(db))
    try:
        with engine.connect() as connection:
            run_migrations(connection)
            connection.commit()
    finally:
        engine.dispose()


main()
