"""/loras and /owner lora-add, end to end: the real bot on the fake Discord, the tiny model."""

from __future__ import annotations

import discord
import pytest
import torch
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file

from bot.model_admin import MAX_LORA_BYTES
from conftest import write_embeddings
from discord_support import answered, easel_on_fake_discord

TEXT = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
BLOCK = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_"


def layer(module: str, in_features: int, out_features: int, fill: float) -> dict[str, torch.Tensor]:
    return {f"{module}.lora_down.weight": torch.full((1, in_features), fill),
            f"{module}.lora_up.weight": torch.full((out_features, 1), fill),
            f"{module}.alpha": torch.tensor(1.0)}


def tiny_lora(fill: float = 0.01, width: int = 32) -> dict[str, torch.Tensor]:
    """A LoRA for the tiny SD-1.x model's cross-attention and text encoder (`width` 768: an SD 1.x one)."""
    return (layer(BLOCK + "attn2_to_k", width, 64, fill) | layer(BLOCK + "attn2_to_v", width, 64, fill)
            | layer(TEXT, width, width, fill))


@pytest.fixture
def own_models(models_dir, tmp_path):
    """The shared tiny checkpoint, with embeddings and loras folders of this test's own."""
    root = tmp_path / "models"
    root.mkdir()
    (root / "checkpoints").symlink_to(models_dir / "checkpoints", target_is_directory=True)
    write_embeddings(root / "embeddings")
    return root


async def ask(env, name, options=None, *, user, subcommand=None, **kwargs):
    interaction = await env.fake.invoke_command(name, options or {}, user=user, guild=env.guild, channel=env.channel,
                                                subcommand=subcommand, **kwargs)
    return await interaction.wait_for_reply(answered, timeout=30)


def description(message) -> str:
    return message.embeds[0].get("description", "") if message.embeds else ""


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


async def test_loras_lists_searches_and_says_when_empty(own_models, tmp_path):
    async with easel_on_fake_discord(own_models, tmp_path) as env:
        command = env.fake.command("loras")
        (search,) = command["options"]
        assert (search["name"], search.get("required", False), search.get("max_length")) == ("search", False, 100)
        owner = env.fake.command("owner")
        assert {o["name"] for o in owner["options"]} >= {"refresh", "embedding-add", "lora-add"}

        empty = await ask(env, "loras", user=env.alice)
        assert empty.ephemeral and empty.content == "No LoRAs are installed."

        folder = own_models / "loras"
        folder.mkdir()
        save_file(tiny_lora(0.5), str(folder / "tinystyle.safetensors"), metadata={"ss_output_name": "Tiny_Style"})
        save_file(tiny_lora(0.25), str(folder / "inked.safetensors"))
        save_file(tiny_lora(width=768), str(folder / "sd1only.safetensors"))
        (folder / "pickled.pt").write_bytes(b"\x80\x02}q\x00.")
        refreshed = await ask(env, "owner", user=env.fake.state.application_owner(), subcommand="refresh")
        assert "LoRAs: 2 usable." in refreshed.content
        assert "Skipped LoRAs:" in refreshed.content and "sd1only.safetensors" in refreshed.content

        tinystyle = env.app.registry.lora("tinystyle")
        message = await ask(env, "loras", user=env.alice)
        text = description(message)
        assert message.ephemeral and message.embeds[0]["title"] == "LoRAs (2 usable, 2 skipped)"
        assert f"`<lora:tinystyle:1>` · `{tinystyle.short_hash}` · tiny SD 1.x · alias `Tiny_Style`" in text
        assert "`<lora:inked:1>`" in text
        assert "~~sd1only~~ · skipped: made for SD 1.x (width 768); the checkpoints here are tiny SD 1.x" in text
        assert "~~pickled~~ · skipped: .pt is a pickle" in text
        assert text.index("inked") < text.index("tinystyle") < text.index("sd1only")  # usable ones first
        assert "<lora:name:weight>" in message.embeds[0]["footer"]["text"]

        found = await ask(env, "loras", {"search": "STYLE"}, user=env.alice)
        assert "tinystyle" in description(found) and "inked" not in description(found)
        assert found.embeds[0]["title"] == "LoRAs matching “STYLE” (1 usable, 0 skipped)"
        by_alias = await ask(env, "loras", {"search": "tiny_s"}, user=env.alice)
        assert "`<lora:tinystyle:1>`" in description(by_alias)
        nothing = await ask(env, "loras", {"search": "**@everyone"}, user=env.alice)
        assert nothing.ephemeral and nothing.content.startswith("No LoRA matches “\\*\\*@")
        assert "@everyone" not in nothing.content

        for index in range(150):
            save_file(tiny_lora(index / 1000), str(folder / f"style_{index:03d}_{'x' * 40}.safetensors"))
        await ask(env, "owner", user=env.fake.state.application_owner(), subcommand="refresh")
        many = await ask(env, "loras", user=env.alice)
        assert len(description(many)) <= 4096 and "more" in description(many).splitlines()[-1]
        assert many.embeds[0]["title"] == "LoRAs (152 usable, 2 skipped)"


async def test_owner_lora_add(own_models, tmp_path, monkeypatch):
    async with easel_on_fake_discord(own_models, tmp_path) as env:
        folder = own_models / "loras"
        owner = env.fake.state.application_owner()
        downloads = []
        real_read = discord.Attachment.read

        async def counted_read(self, *args, **kwargs):
            downloads.append(self.filename)
            return await real_read(self, *args, **kwargs)

        monkeypatch.setattr(discord.Attachment, "read", counted_read)

        async def add(file, user=None, **kwargs):
            return await ask(env, "owner", {"file": file}, user=user or owner, subcommand="lora-add", **kwargs)

        good = safetensors_bytes(tiny_lora(0.5), metadata={"ss_output_name": "Fresh_v1"})
        refused = await add(("fresh.safetensors", good), user=env.bob, ignore_default_permissions=True)
        assert "only the bot's owner" in refused.content
        refused = await add(("fresh.safetensors", good), user=env.mod, ignore_default_permissions=True)
        assert "only the bot's owner" in refused.content
        assert downloads == []

        refused = await add(("fresh.pt", b"\x80\x02}q\x00."))
        assert "only .safetensors LoRAs can be uploaded" in refused.content
        declared_huge = env.fake.upload_attachment("huge.safetensors", good)
        declared_huge["size"] = MAX_LORA_BYTES + 1
        refused = await add(declared_huge)
        assert "LoRAs may be at most 256 MiB" in refused.content
        refused = await add(("two words.safetensors", good))
        assert "one word" in refused.content
        assert downloads == []  # each of those refused before downloading anything

        badkeys = safetensors_bytes(tiny_lora() | {"surprise": torch.zeros(1)})
        refused = await add(("badkeys.safetensors", badkeys))
        assert "has a key easel does not understand: surprise" in refused.content
        refused = await add(("sd1.safetensors", safetensors_bytes(tiny_lora(width=768))))
        assert "made for SD 1.x (width 768), but the checkpoints here are tiny SD 1.x" in refused.content
        refused = await add(("junk.safetensors", b"\x00" * 64))
        assert "not a readable .safetensors LoRA" in refused.content
        assert listing(folder) == []  # nothing was kept, no temporary file either

        added = await add(("fresh.safetensors", good))
        info = env.app.registry.lora("fresh")
        assert info is not None and info.usable
        assert (f"Added LoRA **fresh** (tiny SD 1.x, hash `{info.short_hash}`, alias Fresh\\_v1). "
                "Write `<lora:fresh:1>` in a prompt to use it.") == added.content
        assert listing(folder) == ["fresh.safetensors"] and (folder / "fresh.safetensors").read_bytes() == good
        listed = await ask(env, "loras", user=env.alice)
        assert "`<lora:fresh:1>`" in description(listed)

        refused = await add(("fresh.safetensors", safetensors_bytes(tiny_lora(0.75))))
        assert "a LoRA named fresh already exists" in refused.content
        refused = await add(("Fresh_v1.safetensors", safetensors_bytes(tiny_lora(0.75))))
        assert "a LoRA named Fresh_v1 already exists" in refused.content  # another's alias
        assert listing(folder) == ["fresh.safetensors"] and (folder / "fresh.safetensors").read_bytes() == good
