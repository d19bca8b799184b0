"""Hires fix, /upscale, /upscalers, /admin upscaler and the hires defaults of /settings, end to end:
the real bot on the fake Discord, the tiny model and a tiny upscaler model."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from discord_support import easel_on_fake_discord
from generation.infotext import png_with_infotext, read_infotext
from generation.upscaler_testing import write_test_upscaler


def finished(message) -> bool:
    return bool(message.attachments) and any(a.filename.startswith("easel-") for a in message.attachments)


def refused(message) -> bool:
    return "⚠️" in message.content


def embed_text(message) -> str:
    parts = [message.content]
    for embed in message.embeds:
        parts += [embed.get("title") or "", embed.get("description") or ""]
        parts += [f"{field['name']}: {field['value']}" for field in embed.get("fields", [])]
    return "\n".join(parts)


@pytest.fixture
def upscaler_models(models_dir, tmp_path):
    """The session's tiny checkpoint and embeddings, plus models/upscalers/ with a Compact model."""
    root = tmp_path / "models"
    root.mkdir()
    for folder in ("checkpoints", "embeddings"):
        (root / folder).symlink_to(models_dir / folder)
    write_test_upscaler(root / "upscalers" / "4x-tiny.safetensors", "compact")
    (root / "upscalers" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return root


async def imagine(env, options, user=None):
    return await env.fake.invoke_command("imagine", options, user=user or env.alice, guild=env.guild,
                                         channel=env.channel)


async def test_imagine_hires_options_and_settings_default(upscaler_models, tmp_path):
    async with easel_on_fake_discord(upscaler_models, tmp_path / "data") as env:
        imagine_schema = {o["name"] for o in env.fake.command("imagine")["options"]}
        assert {"hires", "hires_scale", "hires_upscaler", "hires_denoise", "hires_steps"} <= imagine_schema
        # choosing a hires option turns the fix on
        done = await (await imagine(env, {"prompt": "a cat", "steps": 2, "seed": 3, "width": 64, "height": 64,
                                          "hires_scale": 1.5, "hires_upscaler": "4x-tiny", "hires_denoise": 0.4}))\
            .wait_for_reply(finished, timeout=60)
        png = done.attachments[0].data
        assert Image.open(io.BytesIO(png)).size == (96, 96)
        text = read_infotext(png)
        assert "Size: 64x64" in text and "Denoising strength: 0.4, Hires upscale: 1.5, Hires upscaler: 4x-tiny" in text
        assert "Hires fix: 96×96 · 4x-tiny · denoise 0.4" in embed_text(done)

        bad = await (await imagine(env, {"prompt": "a cat", "hires_upscaler": "R-ESRGAN 4x+"}))\
            .wait_for_reply(refused)
        assert bad.ephemeral and "hires upscaler: unknown upscaler 'R-ESRGAN 4x+'" in bad.content
        too_big = await (await imagine(env, {"prompt": "a cat", "width": 1024, "height": 1024, "hires_scale": 3}))\
            .wait_for_reply(refused)
        assert "the hires size 3072x3072 must have sides from 64 to 2048" in too_big.content

        # a member's default: every plain /imagine of theirs is a hires job
        saved = await env.fake.invoke_command("settings", {"hires": True, "hires_scale": 2.0},
                                              user=env.bob, guild=env.guild, channel=env.channel)
        shown = await saved.wait_for_reply(lambda m: bool(m.embeds))
        assert "**Hires fix:** on" in embed_text(shown) and "**Hires scale:** 2\n" in embed_text(shown)
        wrong = await env.fake.invoke_command("settings", {"hires_upscaler": "nope"},
                                              user=env.bob, guild=env.guild, channel=env.channel)
        assert "no hires upscaler named 'nope'" in (await wrong.wait_for_reply(refused)).content
        plain = await (await imagine(env, {"prompt": "a dog", "steps": 2, "width": 64, "height": 64}, user=env.bob))\
            .wait_for_reply(finished, timeout=60)
        assert Image.open(io.BytesIO(plain.attachments[0].data)).size == (128, 128)
        (job,) = await env.app.store.jobs.list_for_owner(env.bob.id)
        assert job.request["enable_hr"] is True and job.request["hr_scale"] == 2.0
        off = await (await imagine(env, {"prompt": "a dog", "steps": 2, "width": 64, "height": 64, "hires": False},
                                   user=env.bob)).wait_for_reply(finished, timeout=60)
        assert Image.open(io.BytesIO(off.attachments[0].data)).size == (64, 64)


async def test_upscale_command_keeps_parameters_and_checks_first(upscaler_models, tmp_path):
    source = png_with_infotext(Image.new("RGB", (48, 40), (10, 120, 200)),
                               "a lake\nSteps: 20, Sampler: Euler, Seed: 9, Size: 48x40")
    async with easel_on_fake_discord(upscaler_models, tmp_path / "data",
                                     limits={"max_upscale_pixels": 100_000}) as env:
        listing = await env.fake.invoke_command("upscalers", {}, user=env.alice, guild=env.guild, channel=env.channel)
        text = embed_text(await listing.wait_for_reply(lambda m: bool(m.embeds)))
        assert text.index("Lanczos") < text.index("Nearest") < text.index("4x-tiny")
        assert "Compact, 4x" in text and "broken" in text and "cannot be used" in text and "Latent (bicubic)" in text

        upload = env.fake.upload_attachment("lake.png", source, "image/png")
        done = await (await env.fake.invoke_command("upscale", {"image": upload, "upscaler": "4x-tiny", "scale": 2.5},
                                                    user=env.alice, guild=env.guild, channel=env.channel))\
            .wait_for_reply(finished, timeout=60)
        result = Image.open(io.BytesIO(done.attachments[0].data))
        assert result.size == (120, 96)  # int(48 * 2.5) // 8 * 8, int(40 * 2.5) // 8 * 8
        assert result.text["parameters"].startswith("a lake\n")
        assert result.text["postprocessing"] == "Postprocess upscale by: 2.5, Postprocess upscaler: 4x-tiny"
        assert "Upscaled 2.5x to 120×96" in embed_text(done)
        (job,) = await env.app.store.jobs.list_for_owner(env.alice.id)
        assert (job.request["mode"], job.request["width"], job.request["height"]) == ("upscale", 48, 40)

        # refused before anything is downloaded or queued, and only the member sees it
        large = env.fake.upload_attachment("large.png", png_with_infotext(Image.new("RGB", (300, 300)), ""),
                                           "image/png")
        message = await (await env.fake.invoke_command("upscale", {"image": large, "scale": 2},
                                                       user=env.bob, guild=env.guild, channel=env.channel))\
            .wait_for_reply(refused)
        assert message.ephemeral and "300x300 upscaled 2x is 600x600, over 100,000 pixels" in message.content
        notes = env.fake.upload_attachment("notes.txt", b"hi", "text/plain")
        message = await (await env.fake.invoke_command("upscale", {"image": notes}, user=env.bob, guild=env.guild,
                                                       channel=env.channel)).wait_for_reply(refused)
        assert "must be a PNG, JPEG or WEBP image" in message.content
        broken = await (await env.fake.invoke_command("upscale", {"image": upload, "upscaler": "broken"},
                                                      user=env.bob, guild=env.guild, channel=env.channel))\
            .wait_for_reply(refused)
        assert "upscaler 'broken' cannot be used" in broken.content
        assert await env.app.store.jobs.list_for_owner(env.bob.id) == []

        # the server's default upscaler, set by an admin, is what a plain /upscale uses
        admin = await env.fake.invoke_command("admin", {"upscaler": "4x-tiny", "scale": 1.5}, subcommand="upscaler",
                                              user=env.mod, guild=env.guild, channel=env.channel)
        assert "Upscales here use 4x-tiny at 1.5x" in (await admin.wait_for_reply(lambda m: m.content)).content
        await (await env.fake.invoke_command("upscale", {"image": upload}, user=env.bob, guild=env.guild,
                                             channel=env.channel)).wait_for_reply(finished, timeout=60)
        (job,) = await env.app.store.jobs.list_for_owner(env.bob.id)
        assert (job.request["upscaler"], job.request["upscale_by"]) == ("4x-tiny", 1.5)
