"""The Remix form: a result's prompt and negative prompt in a modal, generated again as written
with the result's seed and every other setting (`actions.plan_remix`).

A refusal (a banned word, a cap, a length) reaches only the member, with an "Edit again" button
that reopens the form holding what they typed, so no edit is lost. The form lives in this
process (discord.py keeps open modals in memory): one opened before a restart cannot be
submitted after it; pressing Remix again opens a new one.
"""

from __future__ import annotations

import logging

import discord

from generation.config import LimitsConfig
from generation.errors import EaselError

from . import actions
from .errors import send_error, tell_privately
from .formatting import MAX_TEXT_INPUT
from .requesters import requester_of

log = logging.getLogger(__name__)

FORM_TIMEOUT_S = 30 * 60  # an open form is forgotten after this (it holds no state worth more)
EDIT_AGAIN_TIMEOUT_S = 14 * 60


class RemixTooLong(EaselError):
    pass


def form_max_chars(limits: LimitsConfig) -> int:
    """Characters a Remix field takes: the bot's prompt limit, within what Discord's text input holds."""
    return max(1, min(limits.max_prompt_chars, MAX_TEXT_INPUT))


class RemixModal(discord.ui.Modal):
    def __init__(self, job_id: int, *, prompt: str, negative_prompt: str, max_chars: int):
        for what, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
            if len(text) > max_chars:
                raise RemixTooLong(f"that {what} has {len(text):,} characters; the Remix form holds "
                                   f"{max_chars:,}. Use /imagine instead")
        super().__init__(title="Remix", timeout=FORM_TIMEOUT_S)  # a random custom_id: one form per press
        self.job_id = job_id
        self.prompt = discord.ui.TextInput(style=discord.TextStyle.paragraph, custom_id="prompt", default=prompt,
                                           min_length=1, max_length=max_chars, required=True)
        self.negative = discord.ui.TextInput(style=discord.TextStyle.paragraph, custom_id="negative",
                                             default=negative_prompt or None, max_length=max_chars, required=False)
        self.add_item(discord.ui.Label(text="Prompt", description="Same seed and settings; new words",
                                       component=self.prompt))
        self.add_item(discord.ui.Label(text="Negative prompt", component=self.negative))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        app = interaction.client.app  # type: ignore[attr-defined]
        prompt, negative = self.prompt.value or "", self.negative.value or ""
        await interaction.response.defer(thinking=True)  # acknowledged first, checked after
        try:
            plan = await actions.plan_remix(app, self.job_id, requester_of(interaction), prompt=prompt,
                                            negative_prompt=negative)
        except EaselError as exc:
            # only the member sees it, and what they typed is one press away
            view = EditAgainView(self.job_id, prompt=prompt, negative_prompt=negative,
                                 max_chars=form_max_chars(app.config.limits))
            await tell_privately(interaction, f"⚠️ {exc}"[:2000], view=view)
            return
        try:
            await actions.finish(app, plan)
        except EaselError as exc:
            await send_error(interaction, exc)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await send_error(interaction, error)


class EditAgainView(discord.ui.View):
    """On a refusal: reopen the form with the member's own edits (in memory; a form, not a job)."""

    def __init__(self, job_id: int, *, prompt: str, negative_prompt: str, max_chars: int):
        super().__init__(timeout=EDIT_AGAIN_TIMEOUT_S)
        self.job_id, self.texts, self.max_chars = job_id, (prompt, negative_prompt), max_chars

    @discord.ui.button(label="Edit again", emoji="✏️", style=discord.ButtonStyle.primary)
    async def edit_again(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        prompt, negative = self.texts
        try:
            modal = RemixModal(self.job_id, prompt=prompt, negative_prompt=negative, max_chars=self.max_chars)
        except EaselError as exc:
            await send_error(interaction, exc)
            return
        await interaction.response.send_modal(modal)


async def open_remix(interaction: discord.Interaction, job_id: int) -> None:
    """The Remix button: the form is the first response (no defer before a modal)."""
    app = interaction.client.app  # type: ignore[attr-defined]
    try:
        prompt, negative = await actions.remix_texts(app, job_id)
        modal = RemixModal(job_id, prompt=prompt, negative_prompt=negative,
                           max_chars=form_max_chars(app.config.limits))
    except Exception as exc:  # a refusal in plain words; anything else is logged and named as ours
        await send_error(interaction, exc)
        return
    await interaction.response.send_modal(modal)
