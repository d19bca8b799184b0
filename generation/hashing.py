"""File hashes for checkpoints and embeddings, computed once and cached by (path, size, mtime)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Protocol

_CHUNK = 1 << 20


class HashCache(Protocol):
    def get(self, path: Path, size: int, mtime_ns: int) -> str | None: ...
    def put(self, path: Path, size: int, mtime_ns: int, sha256: str) -> None: ...


class JsonHashCache:
    """A small JSON file of known hashes; good enough for a few hundred model files."""

    def __init__(self, path: Path):
        self._path = path
        self._lock = threading.Lock()
        try:
            self._entries: dict[str, list] = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            self._entries = {}

    def get(self, path: Path, size: int, mtime_ns: int) -> str | None:
        entry = self._entries.get(str(path))
        if entry and entry[0] == size and entry[1] == mtime_ns:
            return entry[2]
        return None

    def put(self, path: Path, size: int, mtime_ns: int, sha256: str) -> None:
        with self._lock:
            self._entries[str(path)] = [size, mtime_ns, sha256]
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._entries, indent=0, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self._path)


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
