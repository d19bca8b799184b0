"""First run: with an empty checkpoints/ folder, `easel run` downloads a default model, as A1111 does.

A1111 fetches `v1-5-pruned-emaonly.safetensors` from `{HF_ENDPOINT}/stable-diffusion-v1-5/
stable-diffusion-v1-5/resolve/main/...` into its models folder and checks its sha256; so does easel
(`[models] download_default`, `default_repo`, `default_file`, `default_sha256`).

Why a plain HTTP GET (urllib) and not `huggingface_hub.hf_hub_download`: the file must end up as
an ordinary file in checkpoints/ (the hub's cache keeps blobs and symlinks elsewhere, and its
`local_dir` mode adds its own metadata folder beside the file); easel wants its own resume rule (a
`<file>.part` beside the target, continued with an HTTP `Range: bytes=N-` request, even across
restarts and library versions), its own progress bar and messages, and the sha256 computed while
the bytes arrive, so a 4 GB file is not read twice. The URL is the one the hub serves for every
client (`{endpoint}/{repo}/resolve/main/{file}`, redirected to its CDN), so `HF_ENDPOINT` (a mirror)
works as in huggingface_hub, `HF_TOKEN` is sent as a bearer token (never to another host after a
redirect), and `HF_HUB_OFFLINE=1` means no attempt at all. Tests stand in for the hub with a small
local HTTP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import logging
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, TextIO

from .errors import EaselError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
_CHUNK = 1 << 20
_TIMEOUT_S = 30.0  # per connect and per read; a stalled transfer is an interruption, not a hang
_SPARE_BYTES = 64 << 20  # left free on the disk beyond the file itself
_TRUE = {"1", "ON", "YES", "TRUE"}  # what huggingface_hub reads as true in HF_HUB_OFFLINE

Progress = Callable[[int, "int | None"], None]  # (bytes so far, total bytes or None)


class DownloadFailed(EaselError):
    """The default model could not be downloaded; the message says what to do instead."""

    def __init__(self, message: str, *, reason: str, endpoint: str):
        super().__init__(message)
        self.reason = reason
        self.endpoint = endpoint


class HubOffline(DownloadFailed):
    """HF_HUB_OFFLINE is set: no attempt was made."""


class _Interrupted(Exception):
    """The transfer stopped part way; what arrived is kept in the .part file."""

    def __init__(self, done: int, total: int | None, reason: str):
        super().__init__(reason)
        self.done = done
        self.total = total
        self.reason = reason


def hub_endpoint(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return (env.get("HF_ENDPOINT", "").strip() or DEFAULT_ENDPOINT).rstrip("/")


def hub_offline(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def default_url(config, env: Mapping[str, str] | None = None) -> str:
    models = config.models
    return (f"{hub_endpoint(env)}/{urllib.parse.quote(models.default_repo, safe='/')}/resolve/main/"
            f"{urllib.parse.quote(models.default_file)}")


def wants_default_checkpoint(config, registry) -> bool:
    """True when `easel run` should fetch the default model: downloads are on, no default checkpoint
    is named, and checkpoints/ holds nothing (not even a skipped file: then the operator has put
    something there, and `missing_checkpoint_note` tells them why it was not taken)."""
    models = config.models
    return bool(models.download_default and not models.default_checkpoint and not registry.checkpoints
                and not registry.snapshot.skipped)


def _gigabytes(count: int) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"


class ProgressBar:
    """A one-line bar on a terminal (redrawn at most 5 times a second); on anything else (a log,
    a pipe) a plain line every 10%."""

    def __init__(self, label: str, stream: TextIO | None = None):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._started = time.monotonic()
        self._first: int | None = None
        self._last_draw = 0.0
        self._last_tenth = -1
        self._finished = False

    def __call__(self, done: int, total: int | None) -> None:
        if self._first is None:
            self._first = done  # a resumed download: its speed counts from here
        now = time.monotonic()
        complete = total is not None and done >= total
        elapsed = max(now - self._started, 1e-6)
        speed = (done - self._first) / elapsed
        amount = f"{_gigabytes(done)}/{_gigabytes(total)}" if total else _gigabytes(done)
        if self._tty:
            if not complete and now - self._last_draw < 0.2:
                return
            self._last_draw = now
            if total:
                width = 30
                filled = int(width * done / total)
                bar = f"[{'#' * filled}{'.' * (width - filled)}] {100 * done // total:3d}% "
            else:
                bar = ""
            self.stream.write(f"\r{self.label} {bar}{amount} {speed / 1e6:.1f} MB/s  ")
            if complete:
                self.stream.write("\n")
                self._finished = True
            self.stream.flush()
            return
        tenth = 10 * done // total if total else done // (500 << 20)
        if tenth != self._last_tenth or complete:
            self._last_tenth = tenth
            share = f" ({100 * done // total}%)" if total else ""
            self.stream.write(f"{self.label}: {amount}{share}, {speed / 1e6:.1f} MB/s\n")
            self.stream.flush()

    def close(self) -> None:
        """End the bar's line when the transfer stopped before its end."""
        if self._tty and self._first is not None and not self._finished:
            self.stream.write("\n")
            self.stream.flush()


class _DropAuthorizationElsewhere(urllib.request.HTTPRedirectHandler):
    """The hub redirects downloads to its CDN: the token goes only to the host it was meant for."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_DropAuthorizationElsewhere())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code}"
        if exc.code in (401, 403):
            text += " (a gated or private repo needs a Hugging Face token in HF_TOKEN)"
        elif exc.code == 404:
            text += " (no such repo or file; check [models] default_repo and default_file)"
        return text
    if isinstance(exc, urllib.error.URLError):
        if not isinstance(exc.reason, BaseException):
            return str(exc.reason)
        exc = exc.reason
    if isinstance(exc, TimeoutError):
        return f"no answer within {_TIMEOUT_S:g} s"
    text = " ".join(str(getattr(exc, "strerror", None) or exc).split())
    return text or type(exc).__name__


def _hash_file(path: Path, cancel: threading.Event | None) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            if cancel is not None and cancel.is_set():
                raise EaselError("the download was stopped; start again to resume it")
            digest.update(chunk)
    return digest


def _content_range_total(value: str | None) -> int | None:
    """N from `bytes a-b/N` or `bytes */N`."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _content_range_start(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(value.split()[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return None


class _Transfer:
    """One file's download into `part` (an open, locked file), resuming from what it holds."""

    def __init__(self, url: str, part: Path, handle, *, headers: dict[str, str], progress: Progress,
                 cancel: threading.Event | None, folder: Path):
        self.url = url
        self.part = part
        self.handle = handle
        self.headers = headers
        self.progress = progress
        self.cancel = cancel
        self.folder = folder
        self.digest = None
        self.hashed = 0  # bytes of the .part file `digest` covers

    def _restart(self) -> None:
        self.handle.seek(0)
        self.handle.truncate()
        self.digest = hashlib.sha256()
        self.hashed = 0

    def run(self) -> str:
        """The sha256 of the whole file once it is all in `part`; _Interrupted when it stopped early."""
        have = self.part.stat().st_size
        if self.digest is None or self.hashed != have:
            self.digest = _hash_file(self.part, self.cancel) if have else hashlib.sha256()
            self.hashed = have
        headers = dict(self.headers)
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            response = _opener().open(urllib.request.Request(self.url, headers=headers), timeout=_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            with contextlib.closing(exc):
                if exc.code == 416 and have:  # nothing after byte `have`: the .part may be the whole file
                    total = _content_range_total(exc.headers.get("Content-Range"))
                    if total == have:
                        return self.digest.hexdigest()
                    self._restart()
                    raise _Interrupted(0, total, "the partial download did not match the file; starting over") from None
            raise
        with response:
            status = response.status
            start = _content_range_start(response.headers.get("Content-Range")) if status == 206 else 0
            if status != 206 or start != have:
                if have:
                    log.info("the server did not resume %s at byte %d; downloading it from the start", self.url, have)
                self._restart()
                have = 0
                if status == 206 and start != 0:
                    raise _Interrupted(0, None, "the server sent an unexpected part of the file")
            length = response.headers.get("Content-Length")
            total = _content_range_total(response.headers.get("Content-Range")) if status == 206 else None
            if total is None and length is not None and length.isdigit():
                total = have + int(length)
            if total is not None:
                free = shutil.disk_usage(self.folder).free
                if free < total - have + _SPARE_BYTES:
                    raise EaselError(f"not enough disk space in {self.folder} for {self.part.name[:-5]}: it needs "
                                     f"{_gigabytes(total - have)} more, {_gigabytes(free)} are free")
            done = have
            self.progress(done, total)
            while True:
                if self.cancel is not None and self.cancel.is_set():
                    raise EaselError("the download was stopped; start again to resume it")
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    self.handle.flush()
                    raise _Interrupted(done, total, _reason(exc)) from None
                if not chunk:
                    break
                try:
                    self.handle.write(chunk)
                except OSError as exc:
                    raise EaselError(f"cannot write {self.part}: {_reason(exc)}") from None
                self.digest.update(chunk)
                done += len(chunk)
                self.hashed = done
                self.progress(done, total)
            self.handle.flush()
            os.fsync(self.handle.fileno())
            if total is not None and done < total:
                raise _Interrupted(done, total, "the connection closed early")
        return self.digest.hexdigest()


@contextlib.contextmanager
def _locked_part(part: Path):
    """The .part file opened for appending, locked so two easel processes never write it at once."""
    try:
        handle = part.open("ab")
    except OSError as exc:
        raise EaselError(f"cannot write {part}: {_reason(exc)}") from None
    with handle:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one easel at a time
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EaselError(f"another easel process is downloading {part.name[:-5]} already; wait for it "
                                 "or stop it") from None
        yield handle


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fetch_default_checkpoint(config, *, progress: Progress | None = None, cancel: threading.Event | None = None,
                             attempts: int = 3, retry_delay_s: float = 1.0, env: Mapping[str, str] | None = None,
                             hash_cache=None) -> Path | None:
    """Download `[models] default_file` of `default_repo` into checkpoints/ and return its path.

    None when `[models] download_default` is false; the existing path when the file is there
    already. The bytes go to `<file>.part` (kept when the transfer breaks: the next call continues
    it with a Range request; a call retries by itself `attempts` times in all), are checked against
    `default_sha256` (a mismatch deletes them) and are renamed into place at the end. `progress`
    gets (bytes so far, total or None); default: a bar on stderr. `cancel` stops the transfer
    between chunks, keeping the .part. `hash_cache` (a generation.hashing.HashCache) learns the
    verified hash, so the next scan does not read the file again. Raises DownloadFailed (HubOffline
    under HF_HUB_OFFLINE) with what to do instead, EaselError for a bad hash, a full disk or an
    unwritable folder."""
    env = os.environ if env is None else env
    models = config.models
    if not models.download_default:
        return None
    folder = config.checkpoints_dir
    target = folder / models.default_file
    if target.is_file():
        return target
    endpoint = hub_endpoint(env)
    fix = (f"put a .safetensors checkpoint in {folder}, or run `easel make-test-model {folder / 'tiny'}` for a "
           "tiny test model, then start again")
    if hub_offline(env):
        raise HubOffline(f"HF_HUB_OFFLINE is set, so the default model ({models.default_file}) was not downloaded; "
                         f"{fix}", reason="HF_HUB_OFFLINE is set", endpoint=endpoint)
    url = default_url(config, env)
    headers = {"User-Agent": "easel (first-run download)", "Accept-Encoding": "identity"}
    token = env.get("HF_TOKEN", "").strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def failed(reason: str) -> DownloadFailed:
        return DownloadFailed(f"could not download the default model from {endpoint} ({reason}); {fix}",
                              reason=reason, endpoint=endpoint)

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EaselError(f"cannot create {folder}: {_reason(exc)}") from None
    part = target.with_name(target.name + ".part")
    bar = progress if progress is not None else ProgressBar(f"downloading {models.default_file}")
    try:
        with _locked_part(part) as handle:
            transfer = _Transfer(url, part, handle, headers=headers, progress=bar, cancel=cancel, folder=folder)
            attempt = 0
            while True:
                attempt += 1
                try:
                    digest = transfer.run()
                    break
                except _Interrupted as exc:
                    if attempt >= max(1, attempts):
                        got = f" after {_gigabytes(exc.done)}" + (f" of {_gigabytes(exc.total)}" if exc.total else "")
                        raise failed(f"{exc.reason}{got}; start again to resume the download") from None
                    log.warning("download of %s interrupted (%s); resuming", models.default_file, exc.reason)
                    if cancel is not None and cancel.wait(retry_delay_s * attempt):
                        raise EaselError("the download was stopped; start again to resume it") from None
                    if cancel is None:
                        time.sleep(retry_delay_s * attempt)
                except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                    raise failed(_reason(exc)) from None
            expected = models.default_sha256.lower()
            if expected and digest != expected:
                part.unlink(missing_ok=True)
                raise EaselError(f"the downloaded {models.default_file} has sha256 {digest}, but {expected} was "
                                 f"expected ([models] default_sha256); it was deleted. Check HF_ENDPOINT and "
                                 f"[models] default_repo / default_file, or {fix}")
            os.replace(part, target)
        _fsync_folder(folder)
    finally:
        if isinstance(bar, ProgressBar):
            bar.close()
    if hash_cache is not None:
        stat = target.stat()
        hash_cache.put(target, stat.st_size, stat.st_mtime_ns, digest)
    log.info("downloaded %s (sha256 %s) to %s", url, digest, target)
    return target


async def fetch_at_start(config, registry, store, *, progress: Progress | None = None,
                         stream: TextIO | None = None) -> str | None:
    """`easel run`'s first-run step: when `wants_default_checkpoint`, download the default model (in
    a thread; stopping the bot stops it, keeping the .part) and rescan the folders. Returns None, or
    a short clause saying why the download did not happen, for the "no checkpoint" note."""
    from .catalog import StoreHashCache, refresh_models

    if not wants_default_checkpoint(config, registry):
        return None
    stream = stream if stream is not None else sys.stderr
    models = config.models
    if not hub_offline():
        print(f"easel: no checkpoint in {config.checkpoints_dir}: downloading the default model, {models.default_file} "
              f"from {hub_endpoint()}/{models.default_repo}, once ([models] download_default = false turns this off)",
              file=stream, flush=True)
    cancel = threading.Event()
    cache = StoreHashCache(store.hash_cache, asyncio.get_running_loop())
    try:
        path = await asyncio.to_thread(fetch_default_checkpoint, config, progress=progress, cancel=cancel,
                                       hash_cache=cache)
    except asyncio.CancelledError:
        cancel.set()  # the thread stops at its next chunk; asyncio.run waits for it
        raise
    except HubOffline as exc:
        return exc.reason + f", so the default model ({models.default_file}) was not downloaded"
    except DownloadFailed as exc:
        return (f"the default model could not be downloaded from {exc.endpoint} ({exc.reason}); starting easel "
                "again retries")
    except EaselError as exc:
        return f"the default model was not downloaded: {exc}"
    if path is not None:
        print(f"easel: {path} is ready", file=stream, flush=True)
        await refresh_models(registry, store)
    return None
