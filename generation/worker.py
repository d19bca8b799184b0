"""`easel worker`: one process per GPU, serving the bot's batches through Celery (generation/broker.py).

The worker owns one device and one engine, loaded lazily and kept in its LRU cache across tasks.
It runs Celery's solo pool on its own queue, so it takes one batch at a time and only the batches
the bot sent to it. A heartbeat thread reports it (idle or busy, what is loaded, free memory, the
models it has) every `[workers] heartbeat_s`; a cancel thread turns `easel:cancel:<job>` keys into
the cancel tokens the sampling loop checks after every step. Events go back on the batch's Redis
stream; finished PNGs as keys with a TTL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from . import broker
from .config import Config

log = logging.getLogger(__name__)


class FileHashCache:
    """File hashes kept in one JSON file, so a restarted worker does not hash its checkpoints again."""

    def __init__(self, path: Path):
        self._path = path
        try:
            self._entries = json.loads(path.read_text())
        except (OSError, ValueError):
            self._entries = {}

    def get(self, path: Path, size: int, mtime_ns: int) -> str | None:
        return self._entries.get(f"{path}|{size}|{mtime_ns}")

    def put(self, path: Path, size: int, mtime_ns: int, sha256: str) -> None:
        self._entries[f"{path}|{size}|{mtime_ns}"] = sha256
        temporary = self._path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._entries))
        temporary.replace(self._path)


class Worker:
    """The state of one worker process: its engine, its Redis connection and its current batch."""

    def __init__(self, config: Config, *, name: str):
        import redis

        from .engine import Engine
        from .registry import ModelRegistry

        self.config = config
        self.name = name
        self.redis = redis.Redis.from_url(config.workers.broker_url)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.registry = ModelRegistry.from_config(config, hash_cache=FileHashCache(config.data_dir / "hashes.json"))
        self.registry.refresh()
        self.engine = Engine(config=config, registry=self.registry)
        self.inputs = config.data_dir / "worker-inputs"
        self.inputs.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._batch = ""
        self._tokens: dict[int, object] = {}  # job id -> CancelToken of the running batch
        self._loads = 0
        self._stopping = threading.Event()
        original = self.engine.cache._loader

        def counting_loader(*args, **kwargs):
            self._loads += 1
            return original(*args, **kwargs)

        self.engine.cache._loader = counting_loader

    # ------------------------------------------------------------------ reporting
    def heartbeat(self) -> broker.Heartbeat:
        snapshot = self.registry.snapshot
        return broker.Heartbeat(
            name=self.name, device=self.engine.cache.device.device, busy=self._batch,
            loaded=self.engine.loaded_model_state, free_memory=_free_memory(self.engine.cache.device.device),
            checkpoints=tuple(c.name for c in snapshot.checkpoints),
            loras=tuple(lora.name for lora in snapshot.loras if lora.usable),
            upscalers=tuple(u.name for u in self.registry.upscalers if u.usable),
            loads=self._loads, pid=os.getpid(), host=socket.gethostname(), sent_at=time.time())

    def beat(self) -> None:
        lease_ms = int(self.config.workers.lease_s * 1000)
        pipe = self.redis.pipeline()
        pipe.sadd(broker.WORKERS, self.name)
        pipe.set(broker.worker_key(self.name), self.heartbeat().to_json(), px=lease_ms)
        pipe.execute()

    def _beat_forever(self) -> None:
        while not self._stopping.wait(self.config.workers.heartbeat_s):
            try:
                self.beat()
            except Exception:
                log.exception("heartbeat failed")

    def _watch_cancels(self) -> None:
        while not self._stopping.wait(0.05):
            with self._lock:
                tokens = dict(self._tokens)
            if not tokens:
                continue
            try:
                values = self.redis.mget([broker.cancel_key(key) for key in tokens])
            except Exception:
                log.exception("could not read cancel keys")
                continue
            for (key, token), value in zip(tokens.items(), values):
                if value is not None:
                    data = json.loads(value)
                    token.cancel(data.get("reason", "canceled"), timed_out=bool(data.get("timed_out")))

    def start_threads(self) -> None:
        self.beat()
        for target, label in ((self._beat_forever, "heartbeat"), (self._watch_cancels, "cancels")):
            threading.Thread(target=target, name=f"easel-{label}", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        try:
            self.redis.delete(broker.worker_key(self.name))
            self.redis.srem(broker.WORKERS, self.name)
        except Exception:
            log.warning("could not sign off from the broker")

    # ------------------------------------------------------------------ running
    def run(self, message: broker.BatchMessage) -> None:
        """One batch: its events go to its stream as they happen; one final event per job."""
        from .engine import BatchItem, CancelToken
        from .executor import ItemCanceled, ItemFailed, ItemFinished, run_items
        from .infotext import png_with_infotext
        from .previews import preview_png
        from .requests import GenerationRequest

        stream = broker.events_key(message.batch)
        if not self.redis.exists(broker.wanted_key(message.batch)):
            log.warning("skipped batch %s: the bot no longer waits for it", message.batch)
            return

        def send(kind: str, **fields) -> None:
            fields = {"t": kind, **{k: v if isinstance(v, bytes) else json.dumps(v) for k, v in fields.items()}}
            pipe = self.redis.pipeline()
            pipe.xadd(stream, fields, maxlen=broker.STREAM_MAXLEN, approximate=True)
            pipe.expire(stream, broker.DATA_TTL_S)
            pipe.execute()

        items = []
        for entry in message.items:
            request = GenerationRequest.from_dict(self._local_inputs(entry["request"], entry.get("inputs") or {}))
            items.append(BatchItem(key=int(entry["key"]), request=request, cancel=CancelToken()))
        with self._lock:
            self._batch = message.batch
            self._tokens = {item.key: item.cancel for item in items}
        timers = []
        if message.timeout_s:
            for item in items:
                timer = threading.Timer(message.timeout_s, item.cancel.cancel,
                                        args=(f"it took longer than the {message.timeout_s:g} s limit",),
                                        kwargs={"timed_out": True})
                timer.daemon = True
                timer.start()
                timers.append(timer)
        self.beat()  # busy at once, not a heartbeat later
        send("started")

        def progress(key, step) -> None:
            preview = preview_png(step.preview, min_side=0) if step.preview is not None else b""  # as it is: small
            send("progress", key=key, step=step.step, total=step.total, preview=preview)

        try:
            for event in run_items(self.engine, items, on_progress=progress, preview_every=message.preview_every):
                if isinstance(event, ItemFinished):
                    described = []
                    pipe = self.redis.pipeline()
                    for image in event.images:
                        png = png_with_infotext(image.image, image.infotext, postprocessing=image.postprocessing)
                        key = broker.result_key(message.batch, event.key, image.index)
                        pipe.set(key, png, ex=broker.DATA_TTL_S)
                        described.append({"index": image.index, "seed": image.seed, "infotext": image.infotext,
                                          "postprocessing": image.postprocessing, "result": key})
                    pipe.execute()
                    send("finished", key=event.key, images=described)
                elif isinstance(event, ItemFailed):
                    send("failed", key=event.key, reason=event.reason)
                elif isinstance(event, ItemCanceled):
                    send("canceled", key=event.key, reason=event.reason)
        finally:
            for timer in timers:
                timer.cancel()
            with self._lock:
                self._batch = ""
                self._tokens = {}
            send("done")
            self.beat()

    def _local_inputs(self, request: dict, inputs: dict) -> dict:
        """The request with each input image fetched from the broker into this worker's folder."""
        request = dict(request)
        for field, digest in inputs.items():
            if not all(c in "0123456789abcdef" for c in digest) or len(digest) != 64:
                raise ValueError("an input key must be a sha256 digest")
            path = self.inputs / f"{digest}.png"
            if not path.exists():
                data = self.redis.get(broker.input_key(digest))
                if data is None or hashlib.sha256(data).hexdigest() != digest:
                    raise RuntimeError("an input image of this batch is no longer on the broker")
                temporary = path.with_suffix(".tmp")
                temporary.write_bytes(data)
                temporary.replace(path)
            request[field] = str(path)
        return request


def _free_memory(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    import torch

    try:
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    except Exception:
        return None


def serve(config: Config, *, name: str) -> int:
    """Run one worker until it is stopped (SIGINT/SIGTERM)."""
    if not config.workers.broker_url:
        from .errors import EaselError

        raise EaselError("set EASEL_BROKER_URL (or [workers] broker_url) to the broker's redis:// URL")
    worker = Worker(config, name=name)
    app = broker.celery_app(config.workers.broker_url)

    @app.task(name=broker.TASK)
    def run_batch(data: dict) -> None:
        worker.run(broker.BatchMessage.from_dict(data))

    worker.start_threads()
    log.warning("easel worker %s serving on %s", name, worker.engine.cache.device.device)
    try:
        app.worker_main(["worker", "--pool=solo", "--concurrency=1", "-Q", broker.worker_queue(name),
                         "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
                         "--loglevel=WARNING", "--prefetch-multiplier=1"])
    finally:
        worker.stop()
    return 0


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


__all__ = ["FileHashCache", "Worker", "default_name", "serve"]

