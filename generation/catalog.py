"""Keeps the database's checkpoint and embedding tables in step with the model folders."""

from __future__ import annotations

import asyncio
from pathlib import Path

from .registry import ModelRegistry, ModelSnapshot


async def refresh_models(registry: ModelRegistry, store) -> ModelSnapshot:
    """Rescan the folders (hashing runs in a thread) and mirror the result into the store."""
    from storage.records import CheckpointRecord, EmbeddingRecord

    snapshot = await asyncio.to_thread(registry.refresh)
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
