"""Persistence for easel: SQLite through SQLAlchemy 2 async, schema managed by Alembic.

    store = await open_store(Path("data/easel.sqlite3"))
    job = await store.jobs.create(owner_id=..., request={...}, checkpoint="...", batch_key="...")
    ...
    await store.close()
"""

from storage.db import MigrationError, upgrade_database
from storage.errors import QueueCapReached
from storage.records import QueueCaps
from storage.store import Store, open_store

__all__ = ["MigrationError", "QueueCapReached", "QueueCaps", "Store", "open_store", "upgrade_database"]
