"""One cog per concern; each module only parses options and formats replies."""

from __future__ import annotations

import importlib

COG_BUILDERS = (
    "imagine:build_imagine_cog",
    "outpaint:build_outpaint_cog",
    "upscale:build_upscale_cog",
    "queue:build_queue_cog",
    "models:build_models_cog",
    "settings:build_settings_cog",
    "history:build_history_cog",
    "info:build_info_cog",
    "admin:build_admin_cog",
    "owner:build_owner_cog",
)


async def register_cogs(bot, app) -> None:
    for spec in COG_BUILDERS:
        module_name, builder = spec.split(":")
        module = importlib.import_module(f"{__name__}.{module_name}")
        cog = getattr(module, builder)(app)
        # A cog's persistent buttons (DynamicItems) must be known before any click arrives.
        bot.add_dynamic_items(*getattr(cog, "dynamic_items", ()))
        await bot.add_cog(cog)
