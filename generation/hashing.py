"""File hashes for checkpoints and embeddings, computed once and cached by (path, size, mtime)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

_CHUNK = 1 << 20


class HashCache(Protocol):
    def get(self, path: Path, size: int, mtime_ns: int) -> str | None: ...
    def put(self, path: Path, size: int, mtime_ns: int, sha256: str) -> None: ...


class MemoryHashCache:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, int, int], str] = {}

    def get(self, path: Path, size: int, mtime_ns: int) -> str | None:
        return self._entries.get((str(path), size, mtime_ns))

    def put(self, path: Path, size: int, mtime_ns: int, sha256: str) -> None:
        self._entries[(str(path), size, mtime_ns)] = sha256


def sha256_file(path: Path, cache: HashCache | None = None) -> str:
    stat = path.stat()
    if cache is not None:
        known = cache.get(path, stat.st_size, stat.st_mtime_ns)
        if known:
            return known
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    if cache is not None:
        cache.put(path, stat.st_size, stat.st_mtime_ns, value)
    return value


def sha256_folder(folder: Path, cache: HashCache | None = None) -> str:
    """A diffusers folder has no A1111 hash: hash the sorted (relative path, file hash) list instead."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode())
        digest.update(sha256_file(file, cache).encode())
    return digest.hexdigest()


def short_hash(sha256: str) -> str:
    """The 10-character "Model hash" A1111 writes into infotext (Civitai's AutoV2)."""
    return sha256[:10]
