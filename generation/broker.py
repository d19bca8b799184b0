"""What the bot and its GPU workers share through Redis: key names, messages and the Celery app.

The bot stays the authority: jobs are rows in its database, its fair scheduler picks each batch,
and it sends a batch only to a worker it saw idle, on that worker's own queue, so the broker
never holds a backlog. Everything that crosses is data, serialized as JSON (never pickle):

    easel:workers                 set of worker names
    easel:worker:<name>           a worker's heartbeat (JSON), expiring after the lease
    easel:input:<sha256>          an init image or mask the batch needs (PNG bytes, TTL)
    easel:wanted:<batch>          set while the bot waits for the batch (a stale one is skipped)
    easel:events:<batch>          the batch's events, a Redis stream (progress, finished, ...)
    easel:result:<batch>:<job>:<i> a finished PNG (TTL); the finished event names these keys
    easel:cancel:<job>            set to stop a job; the worker checks it every few tens of ms

Celery carries only the batch message: one task, "easel.run_batch", acknowledged when a worker
takes it (a worker killed mid-batch loses it; the bot sees the heartbeat stop and queues the
jobs again, attempts counted), one task at a time per worker (solo pool, no prefetch).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

PREFIX = "easel:"
WORKERS = PREFIX + "workers"
TASK = "easel.run_batch"
DATA_TTL_S = 3600  # inputs, results and streams: long enough for any job, never forever
STREAM_MAXLEN = 2000


def worker_key(name: str) -> str:
    return f"{PREFIX}worker:{name}"


def worker_queue(name: str) -> str:
    """The Celery queue only this worker consumes: a batch goes to the idle worker the bot chose."""
    return f"easel.worker.{name}"


def wanted_key(batch: str) -> str:
    """Set while the bot waits for the batch: a worker skips a batch nobody waits for any more (a
    message left on its queue when it stopped, run after a restart under the same name)."""
    return f"{PREFIX}wanted:{batch}"


def input_key(digest: str) -> str:
    return f"{PREFIX}input:{digest}"


def events_key(batch: str) -> str:
    return f"{PREFIX}events:{batch}"


def result_key(batch: str, job: int, index: int) -> str:
    return f"{PREFIX}result:{batch}:{job}:{index}"


def cancel_key(job: int) -> str:
    return f"{PREFIX}cancel:{job}"


@dataclass(frozen=True)
class Heartbeat:
    """What a worker reports every `[workers] heartbeat_s`."""

    name: str
    device: str
    busy: str = ""  # the batch it runs, "" when idle
    loaded: str | None = None  # engine.model_state of what it has loaded
    free_memory: int | None = None  # bytes free on its device (GPU), when known
    checkpoints: tuple[str, ...] = ()
    loras: tuple[str, ...] = ()
    upscalers: tuple[str, ...] = ()
    loads: int = 0  # checkpoints loaded since it started (affinity saves these)
    pid: int = 0
    host: str = ""
    sent_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Heartbeat":
        data = json.loads(text)
        for name in ("checkpoints", "loras", "upscalers"):
            data[name] = tuple(data.get(name) or ())
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(frozen=True)
class BatchMessage:
    """The one task argument: a batch's jobs as plain data."""

    batch: str
    items: list[dict[str, Any]] = field(default_factory=list)  # {"key", "request", "inputs": {field: sha}}
    timeout_s: float | None = None
    preview_every: int | None = None  # the bot's [previews] steps_between (0: none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BatchMessage":
        return cls(batch=str(data["batch"]), items=list(data["items"]), timeout_s=data.get("timeout_s"),
                   preview_every=data.get("preview_every"))


def celery_app(broker_url: str):
    """The Celery app both sides use: JSON only, no result backend, one task at a time per worker,
    acknowledged on receipt (the bot, not the broker, decides what runs again)."""
    from celery import Celery

    app = Celery("easel", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json", accept_content=["json"], result_serializer="json", result_backend=None,
        task_ignore_result=True, task_acks_late=False, worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
        worker_send_task_events=False, task_send_sent_event=False,
        # Nothing waits in the broker long: the bot sends a batch only to an idle worker.
        broker_transport_options={"visibility_timeout": DATA_TTL_S},
    )
    return app
