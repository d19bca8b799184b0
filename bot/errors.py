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
    """Ephemeral when still possible; otherwise edit the deferred response."""
    text = f"⚠️ {describe(error)}"[:2000]
    try:
        if interaction.response.is_done():
            await interaction.edit_original_response(content=text, embed=None, attachments=[], view=None)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not tell the member about an error: %s", text)
