"""Keeps the database's checkpoint and embedding tables in step with the model folders."""

from __future__ import annotations

import asyncio
from pathlib import Path

from .registry import ModelRegistry, ModelSnapshot


class StoreHashCache:
    """The database's file-hash table, for the scanning thread: each call runs on the event loop."""

    def __init__(self, repository, loop: asyncio.AbstractEventLoop):
        self._repository = repository
        self._loop = loop

    def get(self, path: Path, size: int, mtime_ns: int) -> str | None:
        return asyncio.run_coroutine_threadsafe(self._repository.get(path, size, mtime_ns), self._loop).result()

    def put(self, path: Path, size: int, mtime_ns: int, sha256: str) -> None:
        asyncio.run_coroutine_threadsafe(self._repository.put(path, size, mtime_ns, sha256), self._loop).result()


async def refresh_models(registry: ModelRegistry, store) -> ModelSnapshot:
    """Rescan the folders in a thread (hashes cached in the database) and mirror the result into the store."""
    from storage.records import CheckpointRecord, EmbeddingRecord

    hash_cache = StoreHashCache(store.hash_cache, asyncio.get_running_loop())
    snapshot = await asyncio.to_thread(registry.refresh, hash_cache=hash_cache)
    await store.checkpoints.sync([
        CheckpointRecord(name=c.name, path=c.path, format=c.format, architecture=c.architecture, sha256=c.sha256,
                         short_hash=c.short_hash, size=c.size, mtime=c.mtime_ns / 1e9 if c.mtime_ns else None,
                         vae_path=c.vae_path)
        for c in snapshot.checkpoints
    ])
    await store.embeddings.sync([
        EmbeddingRecord(trigger=e.trigger, path=Path(e.path), sha256=e.sha256, vectors=e.vectors, width=e.width,
                        status="skipped" if e.skip_reason else "loaded", skip_reason=e.skip_reason)
        for e in snapshot.embeddings
    ])
    return snapshot


async def enabled_checkpoint_names(store) -> list[str]:
    return [record.name for record in await store.checkpoints.list(enabled_only=True)]
