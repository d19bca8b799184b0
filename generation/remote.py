"""`RemoteExecutor`: the bot's side of GPU workers (generation/worker.py), behind the `Executor` interface.

Each live worker is one device. Liveness and what a worker holds come from its heartbeat key,
read every `POLL_S`; the bot's own claims are the authority on which workers are busy, so a batch
goes only to a worker that is idle (credit-based: never more batches in flight than live idle
workers), preferring one that already holds the batch's checkpoint and LoRA set. A batch's events
come back on its Redis stream. When a worker's heartbeat lapses (`[workers] lease_s`), every job of
its batch that has no final event yet is reported lost (`ItemLost`), and the service queues it
again with the attempt counted; the lost worker's stream is abandoned, so a late result from it
is never delivered.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import secrets
from pathlib import Path
from typing import AsyncIterator, Hashable, Sequence

from . import broker
from .config import Config
from .engine import BatchItem, GeneratedImage, StepProgress
from .executor import Device, ItemCanceled, ItemFailed, ItemFinished, ItemLost, ItemProgress
from .requests import GenerationRequest

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often the heartbeats are read
READ_BLOCK_MS = 200  # one wait on a batch's stream, between liveness checks


class RemoteExecutor:
    def __init__(self, config: Config, *, lora_names=None):
        """`lora_names(request)`: the LoRA file names a request needs (the engine's `lora_set`)."""
        import redis.asyncio

        self.config = config
        self.redis = redis.asyncio.Redis.from_url(config.workers.broker_url)
        self.app = broker.celery_app(config.workers.broker_url)
        self.job_timeout_s = config.queue.job_timeout_s
        self._lora_names = lora_names or (lambda request: ())
        self.workers: dict[str, broker.Heartbeat] = {}  # live ones, as last heard
        self._claimed: dict[str, Device] = {}  # worker -> the batch's claim
        self._claims = 0
        self._running: dict[Hashable, str] = {}  # job -> the worker running it
        self._sent: dict[str, None] = {}  # batch ids this bot sent (recent ones), in order
        # What each worker has loaded since this bot sent it a batch: fresher than its heartbeat.
        self._expected: dict[str, str] = {}
        self._capacity = asyncio.Event()
        self._poller: asyncio.Task | None = None
        self.on_change = None  # called when a worker joins or leaves (the service looks again)
        self.prefer_loaded = True  # claim a worker that has the batch's model state loaded, if one is idle
        self.ran_on: dict[Hashable, str] = {}  # job -> the worker that last ran it (recent jobs)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.poll()
        self._poller = asyncio.create_task(self._poll_forever(), name="easel-workers")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
        await self.redis.aclose()

    def shutdown(self) -> None:
        """For symmetry with LocalExecutor (nothing runs in this process)."""

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.poll()
            except Exception:
                log.exception("could not read the workers' heartbeats")

    async def poll(self) -> None:
        """Read every heartbeat; workers whose key lapsed are gone."""
        names = sorted(name.decode() for name in await self.redis.smembers(broker.WORKERS))
        values = await self.redis.mget([broker.worker_key(name) for name in names]) if names else []
        live = {}
        for name, value in zip(names, values):
            if value is None:
                await self.redis.srem(broker.WORKERS, name)
                continue
            try:
                live[name] = broker.Heartbeat.from_json(value)
            except (ValueError, TypeError):
                log.warning("worker %s sent a heartbeat this bot cannot read", name)
        changed = set(live) != set(self.workers)
        self.workers = live
        for name in [name for name in self._claimed if name not in live]:
            log.warning("worker %s stopped answering", name)
        for name in [name for name in self._expected if name not in live]:
            del self._expected[name]  # a worker that comes back under that name starts empty
        self._update_capacity()
        if changed and self.on_change is not None:
            self.on_change()

    def views(self) -> list:
        """The live workers for /admin workers and the metrics (metrics.WorkerView)."""
        import time

        from .metrics import WorkerView

        now = time.time()
        return [WorkerView(name=name, busy=name in self._claimed or bool(beat.busy and beat.busy not in self._sent),
                           device=beat.device, loaded=self._loaded(beat), free_memory=beat.free_memory,
                           last_seen_s=max(0.0, now - beat.sent_at))
                for name, beat in sorted(self.workers.items())]

    # ------------------------------------------------------------------ the Executor interface
    def _idle(self) -> list[broker.Heartbeat]:
        """Live workers this bot has not claimed and that run nothing else (a heartbeat that still
        names a batch of ours is one beat late: that batch is over)."""
        return [beat for name, beat in self.workers.items()
                if name not in self._claimed and (not beat.busy or beat.busy in self._sent)]

    def _update_capacity(self) -> None:
        if self._idle():
            self._capacity.set()
        else:
            self._capacity.clear()

    async def wait_for_capacity(self) -> None:
        while not self._idle():
            self._capacity.clear()
            await self._capacity.wait()

    def _loaded(self, beat: broker.Heartbeat) -> str | None:
        return self._expected.get(beat.name) or beat.loaded

    @property
    def idle_model_states(self) -> frozenset[str]:
        return frozenset(state for state in map(self._loaded, self._idle()) if state)

    @property
    def loaded_checkpoint(self) -> str | None:
        return None

    def unavailable(self, request: GenerationRequest) -> str | None:
        if not self.workers:
            return None  # none is up: the job waits for one
        needs = _needs(request, self._lora_names(request))
        if any(_has(beat, needs) for beat in self.workers.values()):
            return None
        what = ", ".join(f"{kind} {name!r}" for kind, name in needs if not any(
            name in getattr(beat, kind + "s") for beat in self.workers.values())) or "its models"
        return f"no GPU worker has {what}; ask the bot's operator to add it to the workers' models folder"

    def claim(self, model_state: str | None) -> Device:
        idle = self._idle()
        if not idle:
            raise RuntimeError("no idle worker to claim")
        chosen = next((beat for beat in idle if self.prefer_loaded and model_state
                       and self._loaded(beat) == model_state), idle[0])
        self._claims += 1
        device = Device(chosen.name, self._loaded(chosen), self._claims)
        if model_state:
            self._expected[chosen.name] = model_state  # what it will have loaded once it runs the batch
        self._claimed[chosen.name] = device
        self._update_capacity()
        return device

    def release(self, device: Device) -> None:
        if self._claimed.get(device.name) == device:
            del self._claimed[device.name]
            self._update_capacity()

    def cancel(self, key: Hashable, reason: str = "canceled") -> bool:
        if key not in self._running:
            return False
        asyncio.get_running_loop().create_task(self._send_cancel(key, reason, timed_out=False))
        return True

    async def _send_cancel(self, key: Hashable, reason: str, *, timed_out: bool) -> None:
        await self.redis.set(broker.cancel_key(int(key)), json.dumps({"reason": reason, "timed_out": timed_out}),
                             ex=broker.DATA_TTL_S)

    async def run_batch(self, items: Sequence[BatchItem], device: Device) -> AsyncIterator:
        batch = secrets.token_hex(8)
        self._sent[batch] = None
        while len(self._sent) > 1000:
            del self._sent[next(iter(self._sent))]
        stream = broker.events_key(batch)
        pending = {item.key for item in items}
        try:
            message = broker.BatchMessage(batch=batch, timeout_s=self.job_timeout_s,
                                          preview_every=self.config.previews.steps_between,
                                          items=[await self._item(item) for item in items])
            for item in items:
                self._running[item.key] = device.name
                self.ran_on[item.key] = device.name
            while len(self.ran_on) > 1000:
                del self.ran_on[next(iter(self.ran_on))]
            await self.redis.set(broker.wanted_key(batch), "1", ex=broker.DATA_TTL_S)
            await asyncio.to_thread(self.app.send_task, broker.TASK, args=[message.to_dict()],
                                    queue=broker.worker_queue(device.name))
            last_id = "0-0"
            task = asyncio.current_task()
            while pending:
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError()  # redis' client can swallow a cancellation mid-read
                if device.name not in self.workers:
                    for key in sorted(pending):
                        yield ItemLost(key, f"GPU worker {device.name} stopped answering")
                    return
                answer = await self.redis.xread({stream: last_id}, count=100, block=READ_BLOCK_MS)
                for _, entries in answer or ():
                    for entry_id, fields in entries:
                        last_id = entry_id
                        event = await self._event(batch, fields)
                        if event is None:
                            continue
                        if isinstance(event, (ItemFinished, ItemFailed, ItemCanceled)):
                            pending.discard(event.key)
                        yield event
        finally:
            for item in items:
                self._running.pop(item.key, None)
            self.release(device)
            try:
                await self.redis.delete(stream, broker.wanted_key(batch))
            except Exception:
                log.warning("could not remove the stream of batch %s", batch)

    async def _item(self, item: BatchItem) -> dict:
        """A batch item as plain data; its init image and mask go to the broker by content hash."""
        request = item.request.to_dict()
        inputs = {}
        for field in ("init_image", "mask"):
            if request.get(field):
                data = await asyncio.to_thread(Path(request[field]).read_bytes)
                digest = hashlib.sha256(data).hexdigest()
                await self.redis.set(broker.input_key(digest), data, ex=broker.DATA_TTL_S)
                inputs[field] = digest
        return {"key": item.key, "request": request, "inputs": inputs}

    async def _event(self, batch: str, fields: dict):
        fields = {key.decode(): value for key, value in fields.items()}
        kind = fields.pop("t").decode()
        if kind in ("started", "done"):
            return None
        values = {key: value if key == "preview" else json.loads(value) for key, value in fields.items()}
        key = values["key"]
        if kind == "progress":
            preview = _open_png(values["preview"]) if values.get("preview") else None
            return ItemProgress(key, StepProgress(step=values["step"], total=values["total"], preview=preview))
        if kind == "failed":
            return ItemFailed(key, values["reason"])
        if kind == "canceled":
            return ItemCanceled(key, values["reason"])
        if kind == "finished":
            described = values["images"]
            data = await self.redis.mget([entry["result"] for entry in described])
            if any(png is None for png in data):
                return ItemFailed(key, "the worker's result expired before the bot could fetch it")
            return ItemFinished(key, tuple(
                GeneratedImage(index=entry["index"], seed=entry["seed"], image=_open_png(png), infotext=entry["infotext"],
                               postprocessing=entry.get("postprocessing", ""), png=png)
                for entry, png in zip(described, data)))
        log.warning("unknown event %r from batch %s", kind, batch)
        return None


def _open_png(data: bytes):
    """A PNG opened lazily: its size is known without decoding the pixels."""
    from PIL import Image

    return Image.open(io.BytesIO(data))


def _needs(request: GenerationRequest, loras) -> list[tuple[str, str]]:
    """(kind, name) of every model file the request needs on a worker."""
    from .hires import LATENT_MODES
    from .upscalers import BUILTIN_UPSCALERS

    if request.mode == "upscale":
        return [] if request.upscaler in BUILTIN_UPSCALERS else [("upscaler", request.upscaler)]
    needs = [("checkpoint", request.checkpoint)] if request.checkpoint else []
    needs += [("lora", name) for name in loras]
    if request.enable_hr and request.hr_upscaler not in LATENT_MODES and request.hr_upscaler not in BUILTIN_UPSCALERS:
        needs.append(("upscaler", request.hr_upscaler))
    return needs


def _has(beat: broker.Heartbeat, needs) -> bool:
    return all(name in getattr(beat, kind + "s") for kind, name in needs)


__all__ = ["RemoteExecutor"]
