"""Things members do to existing jobs (reroll, delete, info), shared by buttons and reactions.

No discord objects come in: only ids and flags, so tests call these directly.
"""

from __future__ import annotations


from generation.errors import EaselError
from generation.requests import GenerationRequest
from generation.submission import Ask, Requester

from .context import AppContext


class NotFound(EaselError):
    pass


async def job_for_message(app: AppContext, message_id: int):
    images = await app.store.images.get_by_message(message_id)
    if not images:
        return None
    return await app.store.jobs.get(images[0].job_id)


async def reroll(app: AppContext, job_id: int, requester: Requester):
    """The same request with a new seed, as the requester's own job, through the one submission path
    (this server's rules, the checkpoint gate, caps and moderation apply to the new member)."""
    job = await app.store.jobs.get(job_id)
    if job is None:
        raise NotFound("that result is gone; start a new /imagine")
    ask = Ask.again(GenerationRequest.from_dict(job.request), seed=None)
    return await app.submissions.submit(ask, requester)


def may_delete(job, *, user_id: int, can_manage_messages: bool) -> bool:
    """The one delete rule for the button and the reaction: the requester, or Manage Messages in that channel."""
    return job is not None and (job.owner_id == user_id or can_manage_messages)


async def job_is_on_message(app: AppContext, job_id: int, message_id: int | None) -> bool:
    """Whether the message is this job's result (or its status message), so a button copied onto
    another message cannot act on that message in this job's name."""
    if message_id is None:
        return False
    if any(image.job_id == job_id for image in await app.store.images.get_by_message(message_id)):
        return True
    job = await app.store.jobs.get(job_id)
    return job is not None and job.response_message_id == message_id


async def infotext_of(app: AppContext, job_id: int) -> str:
    images = await app.store.images.list_for_job(job_id)
    if not images:
        raise NotFound("that result has no images any more")
    text = images[0].infotext
    if len(images) > 1:
        text += f"\n(images {len(images)}: seeds {', '.join(str(i.seed) for i in images)})"
    return text
