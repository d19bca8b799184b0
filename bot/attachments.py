"""A Discord attachment as the generation.uploads.ImageInput the submission path takes."""

from __future__ import annotations

import discord


class DiscordImage:
    """What an attachment declares (checked before download) and how to download it."""

    def __init__(self, attachment: discord.Attachment):
        self._attachment = attachment
        self.filename = attachment.filename
        self.content_type = attachment.content_type
        self.size = attachment.size
        self.width = attachment.width
        self.height = attachment.height

    async def read(self) -> bytes:
        try:
            return await self._attachment.read()
        except discord.HTTPException as exc:
            raise OSError(f"download failed: {exc}") from None
