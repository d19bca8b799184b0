"""/owner: the shared models folder, for the bot's owner only (the application's owner or team,
and `[discord] owner_ids`). Every server sees what is in the folder, so no server's admin may
change it."""

# No `from __future__ import annotations`: discord.py reads the option annotations at runtime.

import discord
from discord import app_commands
from discord.ext import commands

from generation.errors import EaselError

from .. import model_admin
from ..context import AppContext
from ..formatting import MAX_CONTENT, clip, escape, names_list, plural
from ..model_admin import (
    MAX_EMBEDDING_BYTES,
    MAX_LORA_BYTES,
    add_embedding,
    add_lora,
    check_lora_size,
    check_upload_size,
    embedding_trigger,
    lora_name,
)


class NotOwner(app_commands.CheckFailure):
    pass


async def is_bot_owner(bot: commands.Bot, user: discord.abc.User) -> bool:
    """`[discord] owner_ids`, else the application's owner or team members (discord.py asks Discord once)."""
    if user.id in bot.app.config.discord.owner_ids:  # type: ignore[attr-defined]
        return True
    return await bot.is_owner(user)


async def owner_only(interaction: discord.Interaction) -> bool:
    if not await is_bot_owner(interaction.client, interaction.user):
        raise NotOwner("only the bot's owner can change the models folder; server admins have /admin")
    return True


async def download(interaction: discord.Interaction, file: discord.Attachment) -> bytes:
    """Acknowledge (a download may take longer than Discord waits), then fetch the attachment."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    try:
        return await file.read()
    except discord.HTTPException:
        raise EaselError("could not download the file; try uploading it again") from None


def build_owner_cog(app: AppContext) -> commands.Cog:
    async def reply(interaction: discord.Interaction, text: str) -> None:
        if interaction.response.is_done():
            await interaction.edit_original_response(content=text)
        else:
            await interaction.response.send_message(text, ephemeral=True)

    @app_commands.default_permissions(administrator=True)  # hides it from members; the check below decides
    class Owner(commands.GroupCog, group_name="owner", group_description="The bot's models folder (bot owner only)"):
        async def interaction_check(self, interaction: discord.Interaction) -> bool:
            return await owner_only(interaction)

        @app_commands.command(name="refresh",
                              description="Rescan the model folders for checkpoints, embeddings and LoRAs")
        async def refresh(self, interaction: discord.Interaction):
            await interaction.response.defer(ephemeral=True, thinking=True)
            summary = await model_admin.refresh(app)
            lines = [f"Found {plural(summary.checkpoints, 'checkpoint')} and "
                     f"{plural(summary.embeddings, 'usable embedding')}."]
            if summary.skipped_checkpoints:
                lines.append(f"Skipped files: {names_list(summary.skipped_checkpoints, 5)}")
            if summary.skipped_embeddings:
                lines.append(f"Skipped embeddings: {names_list(summary.skipped_embeddings, 5)}")
            if summary.loras or summary.skipped_loras:
                lines.append(f"LoRAs: {summary.loras} usable.")
            if summary.skipped_loras:
                lines.append(f"Skipped LoRAs: {names_list(summary.skipped_loras, 5)}")
            await reply(interaction, clip("\n".join(lines), MAX_CONTENT))

        @app_commands.command(name="embedding-add", description="Add a textual-inversion embedding (.safetensors)")
        @app_commands.describe(file=f"A .safetensors embedding, at most {MAX_EMBEDDING_BYTES // 1024} KiB; "
                                    "its name is the trigger word")
        async def embedding_add(self, interaction: discord.Interaction, file: discord.Attachment):
            embedding_trigger(file.filename)  # refuse before downloading anything
            check_upload_size(file.size)
            added = await add_embedding(app, filename=file.filename, data=await download(interaction, file))
            vectors = plural(added.vectors, "vector")
            await reply(interaction, f"Added embedding **{escape(added.trigger)}** ({vectors}). "
                                     f"Write `{added.trigger}` in a prompt to use it.")

        @app_commands.command(name="lora-add", description="Add a LoRA (.safetensors)")
        @app_commands.describe(file=f"A .safetensors LoRA, at most {MAX_LORA_BYTES // 2**20} MiB; "
                                    "its file name is its name in <lora:name:1>")
        async def lora_add(self, interaction: discord.Interaction, file: discord.Attachment):
            lora_name(file.filename)  # refuse before downloading anything
            check_lora_size(file.size)
            added = await add_lora(app, filename=file.filename, data=await download(interaction, file))
            alias = f", alias {escape(clip(added.alias, 100))}" if added.alias else ""
            await reply(interaction, clip(f"Added LoRA **{escape(added.name)}** ({added.family}, hash "
                                          f"`{added.short_hash}`{alias}). Write `<lora:{added.name}:1>` in a prompt "
                                          "to use it.", MAX_CONTENT))

    return Owner()
