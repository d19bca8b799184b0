"""Turning errors into plain words for the member, and logging the rest."""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from generation.errors import EaselError

log = logging.getLogger(__name__)


def describe(error: BaseException) -> str:
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, EaselError):
        return str(error)
    if isinstance(error, app_commands.MissingPermissions):
        return "you need the Manage Server permission for that"
    if isinstance(error, app_commands.NoPrivateMessage):
        return "that command works only in a server"
    if isinstance(error, app_commands.CheckFailure) and str(error) and type(error) is not app_commands.CheckFailure:
        return str(error)  # our own checks say what is wrong
    if isinstance(error, app_commands.CheckFailure):
        return "you cannot use that command here"
    if isinstance(error, app_commands.TransformerError):
        return f"that value does not work for this option: {error.value!r}"
    log.error("command failed", exc_info=error)
    return "something went wrong on our side; the error was logged"


async def send_error(interaction: discord.Interaction, error: BaseException) -> None:
    """To the member alone: an ephemeral reply, or, once the interaction was acknowledged (a public
    "thinking" placeholder), an ephemeral follow-up with the placeholder removed."""
    text = f"⚠️ {describe(error)}"[:2000]
    await tell_privately(interaction, text)


# What a public "thinking" placeholder shows for the moment between its end and its deletion.
ENDED_PLACEHOLDER = "…"


async def tell_privately(interaction: discord.Interaction, text: str, **kwargs) -> None:
    """`text` (and a view, ...) to the member alone, whatever the interaction's acknowledgement was."""
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True, **kwargs)
            return
        # Discord turns the first follow-up after a "thinking" acknowledgement into that (public)
        # message: end the placeholder's loading state first, so the follow-up is a private one.
        await interaction.edit_original_response(content=ENDED_PLACEHOLDER, embed=None, attachments=[], view=None)
        await interaction.followup.send(text, ephemeral=True, **kwargs)
    except discord.HTTPException:
        log.warning("could not tell the member: %s", text)
        return
    try:
        await interaction.delete_original_response()
    except discord.HTTPException:
        pass  # already gone


async def acknowledge_then(interaction: discord.Interaction, work, *, ephemeral: bool = False) -> None:
    """Acknowledge at once ("thinking"), so Discord's 3 s deadline is met whatever the checks cost,
    then `await work()`: checks, downloads, queueing. A refusal from it reaches the member alone."""
    await interaction.response.defer(thinking=True, ephemeral=ephemeral)
    try:
        await work()
    except Exception as exc:
        if not isinstance(exc, EaselError):
            log.exception("a command failed after its acknowledgement")
        await send_error(interaction, exc)
