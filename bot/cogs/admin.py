"""/admin: one server's settings, for its members with Manage Server. Nothing here changes
another server: the shared models folder is the bot owner's (/owner, bot/cogs/owner.py).

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
from .settings import upscaler_autocomplete
from ..formatting import (MAX_EMBED_DESCRIPTION, clip, escape, guild_limit_lines, guild_settings_lines, join_within,
                          plural, worker_line)
from ..preferences import (MAX_BANNED_WORD_CHARS, allowed_channels_after, banned_words_after,
                           disabled_checkpoints_after, guild_limit_changes, normalized_banned_word)

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
    UpscalerName = app_commands.Range[str, 1, 100]
    UpscaleBy = app_commands.Range[float, 1.0, limits.max_upscale_by]

    async def checkpoint_names(interaction: discord.Interaction, current: str):
        current = str(current or "").lower()
        settings = await app.store.guilds.get_settings(interaction.guild_id) if interaction.guild_id else {}
        hidden = set(settings.get("disabled_checkpoints", []) or [])
        records = await app.store.checkpoints.list(enabled_only=True)
        return [app_commands.Choice(name=clip(f"{r.name} ({'off' if r.name in hidden else 'on'})", 100),
                                    value=r.name[:100])
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

    async def edit_word_list(interaction: discord.Interaction, key: str, word: str, *, add: bool):
        """Add or remove `word` in the server's list `key`; (the list, the word as shown, the old settings)."""
        settings = await app.store.guilds.get_settings(interaction.guild_id)
        words = banned_words_after(settings.get(key), word, add=add)
        await app.store.guilds.update_settings(interaction.guild_id, **{key: words or None})
        return words, escape(normalized_banned_word(word)), settings

    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    class Admin(commands.GroupCog, group_name="admin", group_description="This server's easel settings (Manage Server)"):
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
        @app_commands.describe(word="The word or phrase (case does not matter; plurals too; end with * for a stem)",
                               add="True: ban it; False: allow it again")
        @app_commands.autocomplete(word=banned_word_names)
        @admin_only
        async def banned_word(self, interaction: discord.Interaction, word: Word, add: bool):
            words, shown, _ = await edit_word_list(interaction, "banned_words", word, add=add)
            verb = "is now banned" if add else "is allowed again"
            await reply(interaction, f"“{shown}” {verb}; {plural(len(words), 'banned word')} in all.")

        @app_commands.command(name="checkpoint", description="Let this server's members pick a checkpoint, or not")
        @app_commands.describe(name="The checkpoint", enabled="True: members here may pick it; False: hidden here")
        @app_commands.autocomplete(name=checkpoint_names)
        @admin_only
        async def checkpoint(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 200],
                             enabled: bool):
            if await app.store.checkpoints.get(name) is None:
                raise ModelNotFound(f"there is no checkpoint named {name!r}; pick one from the list")
            settings = await app.store.guilds.get_settings(interaction.guild_id)
            hidden = disabled_checkpoints_after(settings.get("disabled_checkpoints"), name, enabled=enabled)
            await app.store.guilds.update_settings(interaction.guild_id, disabled_checkpoints=hidden or None)
            text = f"Checkpoint **{escape(name)}** is now {'enabled' if enabled else 'disabled'} on this server."
            try:
                default = app.registry.default_name()
            except EaselError:
                default = None
            if not enabled and name == default:
                text += " It is the bot's default: members here must now pick another one."
            await reply(interaction, text)

        @app_commands.command(name="nsfw-filter", description="Refuse NSFW prompts outside age-restricted channels")
        @app_commands.describe(enabled="True: NSFW words only in age-restricted channels; False: no NSFW filter")
        @admin_only
        async def nsfw_filter(self, interaction: discord.Interaction, enabled: bool):
            await app.store.guilds.update_settings(interaction.guild_id, nsfw_filter=True if enabled else None)
            text = ("NSFW prompts are now refused outside age-restricted channels." if enabled
                    else "The NSFW filter is off; banned words still apply.")
            await reply(interaction, text)

        @app_commands.command(name="nsfw-word", description="Add or remove a word of this server's NSFW list")
        @app_commands.describe(word="A word or phrase; end it with * to match every word it starts",
                               add="True: add it; False: remove it")
        @admin_only
        async def nsfw_word(self, interaction: discord.Interaction, word: Word, add: bool):
            _, shown, settings = await edit_word_list(interaction, "nsfw_words", word, add=add)
            state = "" if settings.get("nsfw_filter") else " (the NSFW filter is off: turn it on with /admin nsfw-filter)"
            await reply(interaction, f"“{shown}” {'added to' if add else 'removed from'} this server's NSFW words{state}.")

        @app_commands.command(name="workers", description="The GPU workers that run this bot's jobs")
        @admin_only
        async def workers(self, interaction: discord.Interaction):
            executor = app.service.executor
            if not hasattr(executor, "views"):
                await reply(interaction, "This bot runs every job on its own device; set `[workers] broker_url` "
                                         "(EASEL_BROKER_URL) and start `easel worker` processes to add GPUs.")
                return
            views = executor.views()
            if not views:
                await reply(interaction, "No GPU worker is up: jobs wait in the queue until one starts.")
                return
            busy = sum(view.busy for view in views)
            embed = discord.Embed(title=f"GPU workers ({len(views)}, {busy} busy)", colour=discord.Colour.blurple(),
                                  description=join_within([worker_line(view) for view in views], MAX_EMBED_DESCRIPTION))
            embed.set_footer(text=f"{len(app.service.queued_jobs())} jobs waiting")
            await reply(interaction, "", embed=embed)

        @app_commands.command(name="upscaler", description="The upscaler and factor of this server's Upscale button")
        @app_commands.describe(upscaler="An upscaler from /upscalers", scale="How many times larger")
        @app_commands.autocomplete(upscaler=upscaler_autocomplete(
            lambda: [info.name for info in app.registry.upscalers if info.usable]))
        @admin_only
        async def upscaler(self, interaction: discord.Interaction, upscaler: Optional[UpscalerName] = None,
                           scale: Optional[UpscaleBy] = None):
            settings = await app.store.guilds.get_settings(interaction.guild_id)
            defaults = dict(settings.get("defaults") or {})
            if upscaler is not None:
                try:
                    defaults["upscaler"] = app.registry.upscaler(upscaler).name
                except ModelNotFound as exc:
                    await reply(interaction, f"⚠️ {exc}")
                    return
            if scale is not None:
                defaults["upscale_by"] = float(scale)
            await app.store.guilds.update_settings(interaction.guild_id, defaults=defaults or None)
            chosen = defaults.get("upscaler", app.config.defaults.upscaler)
            factor = defaults.get("upscale_by", app.config.defaults.upscale_by)
            await reply(interaction, f"Upscales here use {escape(chosen)} at {factor:g}x unless a member picks otherwise.")

    return Admin()
