"""Buttons that work after a restart: DynamicItems whose custom_id carries the job id."""

from __future__ import annotations

import logging
import re

import discord

from generation.errors import EaselError

from . import actions
from .errors import acknowledge_then, send_error
from .requesters import requester_of

log = logging.getLogger(__name__)


DM_REFUSAL = "easel works in servers only."
NOT_THIS_MESSAGE = "⚠️ that button does not belong to this message"


def _app(interaction: discord.Interaction):
    return interaction.client.app  # type: ignore[attr-defined]


async def refuse_in_dms(interaction: discord.Interaction) -> bool:
    """True, after telling the member, when this comes from a DM and `[discord] allow_dms` is off.
    Slash commands, result buttons and the /info draft button all ask this."""
    if interaction.guild_id is None and not _app(interaction).config.discord.allow_dms:
        await interaction.response.send_message(DM_REFUSAL, ephemeral=True)
        return True
    return False


class JobButton(discord.ui.DynamicItem[discord.ui.Button], template=r"easel:job:(?P<job_id>\d+):(?P<action>[a-z]+)"):
    """Base of the result buttons: the custom_id `easel:job:<id>:<action>` is all the state they need."""

    action = ""
    label = ""
    emoji = ""
    style = discord.ButtonStyle.secondary
    layout_row = 0  # the action row of result_view (Discord: at most 5 rows of at most 5 buttons)

    def __init__(self, job_id: int):
        super().__init__(discord.ui.Button(label=self.label or None, emoji=self.emoji or None, style=self.style,
                                           custom_id=f"easel:job:{job_id}:{self.action}"), row=self.layout_row)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(int(match["job_id"]))

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """Runs before every button's callback: no DMs unless allowed, and the job must be this
        message's own (a custom_id copied onto another message must not delete or reroll that one)."""
        try:
            if await refuse_in_dms(interaction):
                return False
            message_id = interaction.message.id if interaction.message else None
            if not await actions.job_is_on_message(_app(interaction), self.job_id, message_id):
                await interaction.response.send_message(NOT_THIS_MESSAGE, ephemeral=True)
                return False
            return True
        except Exception as exc:  # discord.py drops errors raised here without a word
            await send_error(interaction, exc)
            return False


class RerollButton(JobButton, template=r"easel:job:(?P<job_id>\d+):reroll"):
    action, label, emoji, style = "reroll", "Reroll", "🔁", discord.ButtonStyle.primary

    async def callback(self, interaction: discord.Interaction) -> None:
        app, requester = _app(interaction), requester_of(interaction)
        await acknowledge_then(interaction, lambda: actions.reroll(app, self.job_id, requester))


class InfoButton(JobButton, template=r"easel:job:(?P<job_id>\d+):info"):
    action, label, emoji = "info", "Info", "ℹ️"

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            text = await actions.infotext_of(_app(interaction), self.job_id)
        except EaselError as exc:
            await send_error(interaction, exc)
            return
        await interaction.response.send_message(f"```\n{text[:1900]}\n```", ephemeral=True)


class DeleteButton(JobButton, template=r"easel:job:(?P<job_id>\d+):delete"):
    action, label, emoji, style = "delete", "Delete", "🗑️", discord.ButtonStyle.danger

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await _app(interaction).store.jobs.get(self.job_id)
        allowed = actions.may_delete(job, user_id=interaction.user.id,
                                     can_manage_messages=interaction.permissions.manage_messages)
        if not allowed:
            await interaction.response.send_message("Only the member who asked for it or a moderator can delete this.",
                                                    ephemeral=True)
            return
        await interaction.response.defer()
        await interaction.message.delete()


class OutpaintButton(JobButton,
                     template=r"easel:job:(?P<job_id>\d+):(?P<action>zoomout(?:15|2)|pan(?:left|right|up|down))"):
    """Zoom out or pan the job's first image, as the clicker's own job (a new random seed, as Reroll),
    through the one submission path: the clicker's limits, caps and moderation apply. A refusal is
    ephemeral; the new job's progress and result replace the "thinking" reply."""

    direction: str | None = None
    zoom: float | None = None

    async def callback(self, interaction: discord.Interaction) -> None:
        app, requester = _app(interaction), requester_of(interaction)

        async def work():
            plan = await actions.plan_outpaint(app, self.job_id, requester, direction=self.direction, zoom=self.zoom)
            await actions.finish_outpaint(app, plan)

        await acknowledge_then(interaction, work)


class ZoomOut15Button(OutpaintButton, template=r"easel:job:(?P<job_id>\d+):zoomout15"):
    action, label, emoji, zoom, layout_row = "zoomout15", "Zoom out 1.5x", "🔍", 1.5, 1


class ZoomOut2Button(OutpaintButton, template=r"easel:job:(?P<job_id>\d+):zoomout2"):
    action, label, emoji, zoom, layout_row = "zoomout2", "Zoom out 2x", "🔍", 2.0, 1


class PanLeftButton(OutpaintButton, template=r"easel:job:(?P<job_id>\d+):panleft"):
    action, emoji, direction, layout_row = "panleft", "⬅️", "left", 2


class PanRightButton(OutpaintButton, template=r"easel:job:(?P<job_id>\d+):panright"):
    action, emoji, direction, layout_row = "panright", "➡️", "right", 2


class PanUpButton(OutpaintButton, template=r"easel:job:(?P<job_id>\d+):panup"):
    action, emoji, direction, layout_row = "panup", "⬆️", "up", 2


class PanDownButton(OutpaintButton, template=r"easel:job:(?P<job_id>\d+):pandown"):
    action, emoji, direction, layout_row = "pandown", "⬇️", "down", 2


OUTPAINT_BUTTONS = (ZoomOut15Button, ZoomOut2Button, PanLeftButton, PanRightButton, PanUpButton, PanDownButton)


# ---------------------------------------------------------------------- row 3: iterate on a result
# Vary, Use as init (and Upscale) act on one image: on a job of several images they answer with an
# ephemeral picker of number buttons (`easel:job:<id>:<action>:<index>`), on a one-image job at once.
# Each is the presser's own new job through the one submission path; a refusal is ephemeral (before
# any acknowledgement), the new job's progress and result replace the "thinking" reply.

PICK_PROMPT = "Which image?"
MAX_PICKER_BUTTONS = 25  # 5 rows of 5


def _per_image_planner(action: str):
    """action -> `plan(app, job_id, image_index, requester)` in bot/actions.py."""
    if action in ("varysubtle", "varystrong"):
        kind = action.removeprefix("vary")
        return lambda app, job_id, index, requester: actions.plan_vary(app, job_id, index, requester, kind)
    if action == "useinit":
        return actions.plan_use_as_init
    if action == "upscale":
        return actions.plan_upscale
    raise ValueError(action)


async def act_on_image(interaction: discord.Interaction, job_id: int, action: str, image_index: int) -> None:
    """"Thinking" at once, then every check and the job; a refusal reaches only the presser."""
    app, requester = _app(interaction), requester_of(interaction)

    async def work():
        plan = await _per_image_planner(action)(app, job_id, image_index, requester)
        await actions.finish(app, plan)

    await acknowledge_then(interaction, work)


class PerImageButton(JobButton,
                     template=r"easel:job:(?P<job_id>\d+):(?P<action>upscale|varysubtle|varystrong|useinit)"):
    """Vary (subtle/strong), Use as init, Upscale: on the chosen image of the job."""

    layout_row = 3

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            indexes = await actions.image_choices(_app(interaction), self.job_id,
                                                  vary=self.action.startswith("vary"))
        except Exception as exc:  # a refusal in plain words; anything else is logged and named as ours
            await send_error(interaction, exc)
            return
        if len(indexes) == 1:
            await act_on_image(interaction, self.job_id, self.action, indexes[0])
            return
        await interaction.response.send_message(f"{self.emoji} {self.label}: {PICK_PROMPT}", ephemeral=True,
                                                view=picker_view(self.job_id, self.action, indexes))


class UpscaleButton(PerImageButton, template=r"easel:job:(?P<job_id>\d+):upscale"):
    action, label, emoji = "upscale", "Upscale", "🔎"


class VarySubtleButton(PerImageButton, template=r"easel:job:(?P<job_id>\d+):varysubtle"):
    action, label, emoji = "varysubtle", "Vary (subtle)", "🌱"


class VaryStrongButton(PerImageButton, template=r"easel:job:(?P<job_id>\d+):varystrong"):
    action, label, emoji = "varystrong", "Vary (strong)", "🌪️"


class UseAsInitButton(PerImageButton, template=r"easel:job:(?P<job_id>\d+):useinit"):
    action, label, emoji = "useinit", "Use as init", "🖼️"


class RemixButton(JobButton, template=r"easel:job:(?P<job_id>\d+):remix"):
    """Opens the Remix form (bot/remix.py) as the first response: no defer before a modal."""

    action, label, emoji, layout_row = "remix", "Remix", "🎛️", 3

    async def callback(self, interaction: discord.Interaction) -> None:
        from .remix import open_remix

        await open_remix(interaction, self.job_id)


class PickImageButton(discord.ui.DynamicItem[discord.ui.Button],
                      template=r"easel:job:(?P<job_id>\d+):(?P<action>varysubtle|varystrong|useinit|upscale)"
                               r":(?P<index>\d+)"):
    """A number in the ephemeral picker: the per-image action on image `index` (0-based; labelled 1..n)."""

    def __init__(self, job_id: int, action: str, index: int, *, row: int | None = None):
        super().__init__(discord.ui.Button(label=str(index + 1), style=discord.ButtonStyle.secondary,
                                           custom_id=f"easel:job:{job_id}:{action}:{index}"), row=row)
        self.job_id, self.action, self.index = job_id, action, index

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(int(match["job_id"]), match["action"], int(match["index"]))

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """The DM rule, and the picker must be the ephemeral answer to a press on this job's own
        result message (the binding rule of the result buttons, one message removed)."""
        try:
            if await refuse_in_dms(interaction):
                return False
            message = interaction.message
            metadata = message.interaction_metadata if message is not None else None
            pressed_on = metadata.interacted_message_id if metadata is not None else None
            bound = (metadata is not None and message.flags.ephemeral and metadata.user.id == interaction.user.id
                     and await actions.job_is_on_message(_app(interaction), self.job_id, pressed_on))
            if not bound:
                await interaction.response.send_message(NOT_THIS_MESSAGE, ephemeral=True)
                return False
            return True
        except Exception as exc:  # discord.py drops errors raised here without a word
            await send_error(interaction, exc)
            return False

    async def callback(self, interaction: discord.Interaction) -> None:
        await act_on_image(interaction, self.job_id, self.action, self.index)


def picker_view(job_id: int, action: str, indexes: list[int]) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for position, index in enumerate(indexes[:MAX_PICKER_BUTTONS]):
        view.add_item(PickImageButton(job_id, action, index, row=position // 5))
    return view


ITERATION_BUTTONS = (UpscaleButton, VarySubtleButton, VaryStrongButton, RemixButton, UseAsInitButton)


def result_view(job_id: int, *, mode: str = "txt2img") -> discord.ui.View:
    """Row 0: Reroll, Info, Delete. Row 1: Zoom out 1.5x, 2x. Row 2: pan left, right, up, down.
    Row 3: Upscale, Vary (subtle), Vary (strong), Remix, Use as init; the Vary buttons on txt2img
    results only (A1111's variation seed is txt2img's), Remix not on upscales (nothing to remix)."""
    view = discord.ui.View(timeout=None)
    row3 = [button for button in ITERATION_BUTTONS
            if not (button in (VarySubtleButton, VaryStrongButton) and mode != "txt2img")
            and not (button is RemixButton and mode == "upscale")]
    for button in (RerollButton, InfoButton, DeleteButton, *OUTPAINT_BUTTONS, *row3):
        view.add_item(button(job_id))
    return view


DYNAMIC_ITEMS = (RerollButton, InfoButton, DeleteButton, *OUTPAINT_BUTTONS, *ITERATION_BUTTONS, PickImageButton)
