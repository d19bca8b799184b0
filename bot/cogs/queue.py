"""/queue and /cancel: the member's own jobs. Logic lives in bot/queue_status.py."""

# No `from __future__ import annotations`: discord.py reads the option annotations at runtime.

import asyncio
from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from ..context import AppContext
from ..formatting import MAX_CHOICE_NAME, MAX_EMBED_DESCRIPTION, join_within, one_line, plural, queue_line, quoted
from ..queue_status import ThroughputMeter, active_jobs, cancel_job, feed_meter, queue_entries


def build_queue_cog(app: AppContext) -> commands.Cog:
    async def my_active_jobs(interaction: discord.Interaction, current: str):
        records = await active_jobs(app, interaction.user.id)
        current = str(current or "").strip().lstrip("#").lower()
        choices = []
        for record in records:
            label = f"#{record.id} · {record.status} · {one_line(str(record.request.get('prompt', '')), 70)}"
            if current in label.lower():
                choices.append(app_commands.Choice(name=label[:MAX_CHOICE_NAME], value=record.id))
        return choices[:25]

    class Queue(commands.Cog, name="Queue"):
        def __init__(self):
            self.meter = ThroughputMeter()
            self._subscription = None
            self._task: Optional[asyncio.Task] = None

        async def cog_load(self) -> None:
            # Subscribed before the service starts (cogs load first), so no job start is missed.
            self._subscription = app.service.subscribe()
            self._task = asyncio.create_task(feed_meter(self.meter, app, self._subscription), name="easel-wait-meter")

        async def cog_unload(self) -> None:
            if self._subscription is not None:
                self._subscription.close()
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)

        @app_commands.command(name="queue", description="Your queued and running jobs, with a rough wait")
        async def queue(self, interaction: discord.Interaction):
            entries = await queue_entries(app, interaction.user.id, self.meter)
            if not entries:
                await interaction.response.send_message("Nothing queued: you have no jobs waiting or running.",
                                                        ephemeral=True)
                return
            lines = [queue_line(job_id=e.job_id, prompt=e.prompt, position=e.position, starts_in_s=e.starts_in_s)
                     for e in entries]
            embed = discord.Embed(title=f"Your jobs ({len(entries)})", colour=discord.Colour.blurple(),
                                  description=join_within(lines, MAX_EMBED_DESCRIPTION))
            total = len(app.service.queued_jobs())
            embed.set_footer(text=f"{plural(total, 'job')} waiting in all · /cancel to cancel one")
            await interaction.response.send_message(embed=embed, ephemeral=True)

        @app_commands.command(name="cancel", description="Cancel a queued or running job (default: your latest)")
        @app_commands.describe(job="The job to cancel (default: your most recent one)")
        @app_commands.autocomplete(job=my_active_jobs)
        async def cancel(self, interaction: discord.Interaction, job: Optional[app_commands.Range[int, 1]] = None):
            moderator = interaction.guild_id is not None and interaction.permissions.manage_messages
            record = await cancel_job(app, job_id=job, user_id=interaction.user.id, guild_id=interaction.guild_id,
                                      moderator=moderator)
            whose = "" if record.owner_id == interaction.user.id else f" (asked for by <@{record.owner_id}>)"
            prompt = quoted(str(record.request.get("prompt", "")), 100)
            await interaction.response.send_message(f"🚫 Canceled job #{record.id}{whose}: {prompt}", ephemeral=True,
                                                    allowed_mentions=discord.AllowedMentions.none())

    return Queue()
