"""Things members do to existing jobs (reroll, delete, info), shared by buttons and reactions.

No discord objects come in: only ids and flags, so tests call these directly.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from generation.errors import EaselError
from generation.requests import RANDOM_SEED, GenerationRequest
from generation.service import ReplyTarget

from .context import AppContext
from .rules import check_channel, check_request_rules


class NotFound(EaselError):
    pass


async def job_for_message(app: AppContext, message_id: int):
    images = await app.store.images.get_by_message(message_id)
    if not images:
        return None
    return await app.store.jobs.get(images[0].job_id)


async def reroll(app: AppContext, job_id: int, *, user_id: int, guild_id: int | None, channel_id: int | None,
                 application_id: int | None = None, interaction_token: str | None = None,
                 interaction_created_at: datetime | None = None):
    """The same request with a new seed, as the member's own job (their limits apply)."""
    job = await app.store.jobs.get(job_id)
    if job is None:
        raise NotFound("that result is gone; start a new /imagine")
    request = dataclasses.replace(GenerationRequest.from_dict(job.request), seed=RANDOM_SEED)
    guild = await app.store.guilds.get_settings(guild_id) if guild_id else {}
    check_channel(guild, channel_id)
    check_request_rules(request, guild)
    return await app.service.submit(request, owner_id=user_id, target=ReplyTarget(
        frontend="discord", guild_id=guild_id, channel_id=channel_id, application_id=application_id,
        interaction_token=interaction_token, interaction_created_at=interaction_created_at))


def may_delete(job, *, user_id: int, can_manage_messages: bool) -> bool:
    return job is not None and (job.owner_id == user_id or can_manage_messages)


async def infotext_of(app: AppContext, job_id: int) -> str:
    images = await app.store.images.list_for_job(job_id)
    if not images:
        raise NotFound("that result has no images any more")
    text = images[0].infotext
    if len(images) > 1:
        text += f"\n(images {len(images)}: seeds {', '.join(str(i.seed) for i in images)})"
    return text
