"""One cog per concern; each module only parses options and formats replies."""

from __future__ import annotations

import importlib

COG_BUILDERS = ("imagine:build_imagine_cog",)


async def register_cogs(bot, app) -> None:
    for spec in COG_BUILDERS:
        module_name, builder = spec.split(":")
        module = importlib.import_module(f"{__name__}.{module_name}")
        await bot.add_cog(getattr(module, builder)(app))
