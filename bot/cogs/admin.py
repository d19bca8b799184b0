"""/admin: server settings and the model folders, for members with Manage Server.

default_permissions only hides the commands (a server can override it), so every subcommand
also checks the permission itself.
"""

# No `from __future__ import annotations`: discord.py reads the Range bounds (from config) at runtime.

from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from generation.errors import EaselError, ModelNotFound

from ..context import AppContext
from ..formatting import (MAX_EMBED_DESCRIPTION, clip, escape, guild_limit_lines, guild_settings_lines, join_within,
                          names_list, plural)
from .. import model_admin
from ..model_admin import MAX_EMBEDDING_BYTES, add_embedding, check_upload_size, embedding_trigger
from ..preferences import (MAX_BANNED_WORD_CHARS, allowed_channels_after, banned_words_after,
                           guild_limit_changes, normalized_banned_word)

admin_only = app_commands.checks.has_permissions(manage_guild=True)


def build_admin_cog(app: AppContext) -> commands.Cog:
    limits, queue = app.config.limits, app.config.queue
    Steps = app_commands.Range[int, limits.min_steps, limits.max_steps]
    Width = app_commands.Range[int, limits.min_size, limits.max_width]
    Height = app_commands.Range[int, limits.min_size, limits.max_height]
    Count = app_commands.Range[int, 1, limits.max_count]
    PerMember = app_commands.Range[int, 1, queue.per_user_queued]
    PerGuild = app_commands.Range[int, 1, queue.per_guild_queued]
    Word = app_commands.Range[str, 1, MAX_BANNED_WORD_CHARS]

    async def checkpoint_names(interaction: discord.Interaction, current: str):
        current = str(current or "").lower()
        records = await app.store.checkpoints.list()
        return [app_commands.Choice(name=clip(f"{r.name} ({'on' if r.enabled else 'off'})", 100), value=r.name[:100])
                for r in records if current in r.name.lower()][:25]

    async def banned_word_names(interaction: discord.Interaction, current: str):
        if interaction.guild_id is None or not interaction.permissions.manage_guild:
            return []  # checks do not run for autocomplete: the list is for admins only
        current = str(current or "").lower()
        settings = await app.store.guilds.get_settings(interaction.guild_id) if interaction.guild_id else {}
        return [app_commands.Choice(name=w[:100], value=w[:100])
                for w in settings.get("banned_words", []) or [] if current in w][:25]

    async def reply(interaction: discord.Interaction, text: str, **kwargs) -> None:
        kwargs.setdefault("allowed_mentions", discord.AllowedMentions.none())
        if interaction.response.is_done():
            await interaction.edit_original_response(content=text, **kwargs)
        else:
            await interaction.response.send_message(text, ephemeral=True, **kwargs)

    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    class Admin(commands.GroupCog, group_name="admin", group_description="Server settings and models (Manage Server)"):
        @app_commands.command(name="show", description="This server's easel settings")
        @admin_only
        async def show(self, interaction: discord.Interaction):
            settings = await app.store.guilds.get_settings(interaction.guild_id)
            embed = discord.Embed(title="easel settings for this server", colour=discord.Colour.blurple(),
                                  description=join_within(guild_settings_lines(settings), MAX_EMBED_DESCRIPTION))
            await interaction.response.send_message(embed=embed, ephemeral=True)

        @app_commands.command(name="limits", description="Lower this server's limits (within the bot's own)")
        @app_commands.describe(max_steps="Most sampling steps", max_width="Widest image in pixels",
                               max_height="Tallest image in pixels", max_count="Most images per request",
                               max_queued_per_member="Most jobs one member may have waiting",
                               max_queued="Most jobs the whole server may have waiting",
                               reset="Remove all of this server's limits first")
        @admin_only
        async def limits_(self, interaction: discord.Interaction, max_steps: Optional[Steps] = None,
                          max_width: Optional[Width] = None, max_height: Optional[Height] = None,
                          max_count: Optional[Count] = None, max_queued_per_member: Optional[PerMember] = None,
                          max_queued: Optional[PerGuild] = None, reset: Optional[bool] = False):
            changes = guild_limit_changes(dict(max_steps=max_steps, max_width=max_width, max_height=max_height,
                                               max_count=max_count, max_queued_per_member=max_queued_per_member,
                                               max_queued=max_queued), config=app.config)
            if reset:
                changes = {key: None for key in ("max_steps", "max_width", "max_height", "max_count",
                                                 "max_queued_per_member", "max_queued")} | changes
            settings = await app.store.guilds.update_settings(interaction.guild_id, **changes) if changes else \
                await app.store.guilds.get_settings(interaction.guild_id)
            lines = guild_limit_lines(settings)
            head = "Limits saved." if changes else "Nothing changed; the limits are:"
            await reply(interaction, head + "\n" + "\n".join(lines))

        @app_commands.command(name="channel", description="Allow or stop easel in a channel (none listed: everywhere)")
        @app_commands.describe(channel="The channel", allowed="True: easel works there; False: not any more")
        @admin_only
        async def channel(self, interaction: discord.Interaction, channel: discord.TextChannel, allowed: bool):
            settings = await app.store.guilds.get_settings(interaction.guild_id)
            channels = allowed_channels_after(settings.get("allowed_channels"), channel.id, allowed=allowed)
            await app.store.guilds.update_settings(interaction.guild_id, allowed_channels=channels or None)
            where = ", ".join(f"<#{c}>" for c in channels) if channels else "every channel"
            await reply(interaction, f"easel now works in {where}.")

        @app_commands.command(name="banned-word", description="Add or remove a word that prompts may not contain")
        @app_commands.describe(word="The word or phrase (case does not matter)",
                               add="True: ban it; False: allow it again")
        @app_commands.autocomplete(word=banned_word_names)
        @admin_only
        async def banned_word(self, interaction: discord.Interaction, word: Word, add: bool):
            settings = await app.store.guilds.get_settings(interaction.guild_id)
            words = banned_words_after(settings.get("banned_words"), word, add=add)
            await app.store.guilds.update_settings(interaction.guild_id, banned_words=words or None)
            shown = escape(normalized_banned_word(word))
            verb = "is now banned" if add else "is allowed again"
            await reply(interaction, f"“{shown}” {verb}; {plural(len(words), 'banned word')} in all.")

        @app_commands.command(name="refresh", description="Rescan the model folders for checkpoints and embeddings")
        @admin_only
        async def refresh(self, interaction: discord.Interaction):
            await interaction.response.defer(ephemeral=True, thinking=True)
            summary = await model_admin.refresh(app)
            lines = [f"Found {plural(summary.checkpoints, 'checkpoint')} and "
                     f"{plural(summary.embeddings, 'usable embedding')}."]
            if summary.skipped_checkpoints:
                lines.append(f"Skipped files: {names_list(summary.skipped_checkpoints, 5)}")
            if summary.skipped_embeddings:
                lines.append(f"Skipped embeddings: {names_list(summary.skipped_embeddings, 5)}")
            await reply(interaction, clip("\n".join(lines), 2000))

        @app_commands.command(name="checkpoint", description="Let members pick a checkpoint, or stop them")
        @app_commands.describe(name="The checkpoint", enabled="True: members may pick it; False: hidden")
        @app_commands.autocomplete(name=checkpoint_names)
        @admin_only
        async def checkpoint(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 200],
                             enabled: bool):
            if not await app.store.checkpoints.set_enabled(name, enabled):
                raise ModelNotFound(f"there is no checkpoint named {name!r}; pick one from the list")
            text = f"Checkpoint **{escape(name)}** is now {'enabled' if enabled else 'disabled'}."
            try:
                default = app.registry.default_name()
            except EaselError:
                default = None
            if not enabled and name == default:
                text += " It is still the default, used when a request names no checkpoint."
            await reply(interaction, text)

        @app_commands.command(name="embedding-add", description="Add a textual-inversion embedding (.safetensors)")
        @app_commands.describe(file=f"A .safetensors embedding, at most {MAX_EMBEDDING_BYTES // 1024} KiB; "
                                    "its name is the trigger word")
        @admin_only
        async def embedding_add(self, interaction: discord.Interaction, file: discord.Attachment):
            embedding_trigger(file.filename)  # refuse before downloading anything
            check_upload_size(file.size)
            await interaction.response.defer(ephemeral=True, thinking=True)
            try:
                data = await file.read()
            except discord.HTTPException:
                raise EaselError("could not download the file; try uploading it again") from None
            added = await add_embedding(app, filename=file.filename, data=data)
            vectors = plural(added.vectors, "vector")
            await reply(interaction, f"Added embedding **{escape(added.trigger)}** ({vectors}). "
                                     f"Write `{added.trigger}` in a prompt to use it.")

    return Admin()
