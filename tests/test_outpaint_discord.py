"""Outpainting on the loopback fake Discord with the real bot and the tiny model: the Zoom out and Pan
buttons on results (also after a restart), and /outpaint with an attachment."""

from __future__ import annotations

import io

from PIL import Image

from discord_support import easel_on_fake_discord
from generation.infotext import read_infotext

OUTPAINT_ACTIONS = ("zoomout15", "zoomout2", "panleft", "panright", "panup", "pandown")


def png(width=64, height=64, colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def finished(message) -> bool:
    return bool(message.attachments) and any(a.filename.startswith("easel-") for a in message.attachments)


def size_of(message) -> tuple[int, int]:
    return Image.open(io.BytesIO(message.attachments[0].data)).size


def rows(message) -> list[list[dict]]:
    return [row["components"] for row in message.components]


async def imagine(env, **options):
    interaction = await env.fake.invoke_command("imagine", {"prompt": "a cat", "steps": 2, **options},
                                                user=env.alice, guild=env.guild, channel=env.channel)
    result = await interaction.wait_for_reply(finished, timeout=60)
    await env.fake.wait_for(lambda: "🔁" in env.fake.message(result.id).reactions)  # delivery is complete
    return result


async def test_results_carry_zoom_out_and_pan_buttons_that_queue_the_clickers_own_job(models_dir, tmp_path):
    async with easel_on_fake_discord(models_dir, tmp_path) as env:
        result = await imagine(env, seed=5)
        layout = rows(result)
        assert [[c["custom_id"] for c in row] for row in layout] == [
            ["easel:job:1:reroll", "easel:job:1:info", "easel:job:1:delete"],
            ["easel:job:1:zoomout15", "easel:job:1:zoomout2"],
            ["easel:job:1:panleft", "easel:job:1:panright", "easel:job:1:panup", "easel:job:1:pandown"],
            ["easel:job:1:upscale", "easel:job:1:varysubtle", "easel:job:1:varystrong", "easel:job:1:remix",
             "easel:job:1:useinit"],
        ]
        assert [c.get("label") for c in layout[1]] == ["Zoom out 1.5x", "Zoom out 2x"]
        assert [c["emoji"]["name"] for c in layout[2]] == ["⬅️", "➡️", "⬆️", "⬇️"]

        zoomed = await env.fake.click_button(result, "easel:job:1:zoomout2", user=env.bob)
        message = await zoomed.wait_for_reply(finished, timeout=60)
        assert size_of(message) == (128, 128)
        infotext = read_infotext(message.attachments[0].data)
        assert infotext.startswith("a cat\n") and "Seed: 5," not in infotext and "Denoising strength: 1" in infotext
        (job,) = await env.app.store.jobs.list_for_owner(env.bob.id)  # the clicker's own job
        assert job.request["mode"] == "inpaint" and job.request["masked_content"] == "fill"
        assert job.request["mask_blur"] == 0 and (job.request["width"], job.request["height"]) == (128, 128)
        # the new result has the buttons too, and they work on it
        assert f"easel:job:{job.id}:panleft" in [c["custom_id"] for row in rows(message) for c in row]
        await env.fake.wait_for(lambda: "🔁" in env.fake.message(message.id).reactions)

        panned = await env.fake.click_button(result, "easel:job:1:panleft", user=env.alice)
        assert size_of(await panned.wait_for_reply(finished, timeout=60)) == (96, 64)
        panned = await env.fake.click_button(message, f"easel:job:{job.id}:pandown", user=env.alice)
        assert size_of(await panned.wait_for_reply(finished, timeout=60)) == (128, 192)


async def test_an_outpaint_button_is_refused_in_plain_words_when_the_canvas_is_too_large(models_dir, tmp_path):
    async with easel_on_fake_discord(models_dir, tmp_path, limits={"max_width": 96, "max_height": 96}) as env:
        result = await imagine(env)
        refused = await env.fake.click_button(result, "easel:job:1:zoomout2", user=env.bob)
        message = await refused.wait_for_reply(lambda m: "⚠️" in m.content)
        assert message.ephemeral and "zooming out 2x makes the 64x64 image 128x128; the limit here is 96x96" \
            in message.content
        assert await env.app.store.jobs.list_for_owner(env.bob.id) == []
        # a button copied onto another message does nothing there (the existing binding check)
        other = await imagine(env)
        env.fake.message(other.id).components = env.fake.message(result.id).components
        forged = await env.fake.click_button(other, "easel:job:1:panup", user=env.alice)
        assert "does not belong" in (await forged.wait_for_reply(lambda m: "⚠️" in m.content)).content


async def test_zoom_out_and_pan_buttons_work_after_a_restart(models_dir, tmp_path):
    from discord_fake import fake_discord

    async with fake_discord() as fake:
        guild = fake.add_guild("Art Club")
        for name in ("alice", "bob", "mod"):
            fake.add_member(guild, name=name)
        async with easel_on_fake_discord(models_dir, tmp_path, fake=fake) as env:
            result = await imagine(env, seed=9)
        async with easel_on_fake_discord(models_dir, tmp_path, fake=fake) as env:  # a new process, same data
            zoomed = await fake.click_button(result, "easel:job:1:zoomout15", user=env.bob)
            assert size_of(await zoomed.wait_for_reply(finished, timeout=60)) == (96, 96)
            panned = await fake.click_button(result, "easel:job:1:panright", user=env.alice)
            assert size_of(await panned.wait_for_reply(finished, timeout=60)) == (96, 64)


async def test_outpaint_command_with_an_attachment(models_dir, tmp_path):
    async with easel_on_fake_discord(models_dir, tmp_path) as env:
        fake = env.fake
        command = fake.command("outpaint")
        options = {o["name"]: o for o in command["options"]}
        assert [c["value"] for c in options["zoom"]["choices"]] == [1.5, 2.0]
        assert [c["value"] for c in options["direction"]["choices"]] == ["left", "right", "up", "down"]

        def say(**options):
            return fake.invoke_command("outpaint", options, user=env.alice, guild=env.guild, channel=env.channel)

        plain = fake.upload_attachment("photo.png", png(), "image/png")
        for bad, words in (({}, "either a zoom"), ({"zoom": 2.0, "direction": "left"}, "either a zoom")):
            refused = await say(image=plain, prompt="a garden", **bad)
            message = await refused.wait_for_reply(lambda m: "⚠️" in m.content)
            assert message.ephemeral and words in message.content
        large = fake.upload_attachment("big.png", png(1024, 1024), "image/png")
        refused = await say(image=large, zoom=2.0, prompt="a garden")
        message = await refused.wait_for_reply(lambda m: "⚠️" in m.content)
        assert message.ephemeral and "1024x1024 image 2048x2048" in message.content

        # a picture without parameters needs a prompt
        refused = await say(image=plain, direction="up")
        message = await refused.wait_for_reply(lambda m: "⚠️" in m.content)
        assert "carries no prompt of its own" in message.content
        assert await env.app.store.jobs.list_for_owner(env.alice.id) == []

        done = await (await say(image=plain, direction="up", prompt="a red wall")).wait_for_reply(finished, 60)
        assert size_of(done) == (64, 96)
        assert read_infotext(done.attachments[0].data).startswith("a red wall\n")

        # an easel result (its infotext carries the prompt): the prompt defaults to its own
        result = await imagine(env, prompt="a blue teapot")
        own = fake.upload_attachment("teapot.png", result.attachments[0].data, "image/png")
        done = await (await say(image=own, zoom=1.5)).wait_for_reply(finished, 60)
        assert size_of(done) == (96, 96)
        assert read_infotext(done.attachments[0].data).startswith("a blue teapot\n")
        jobs = await env.app.store.jobs.list_for_owner(env.alice.id)
        assert sorted(job.request["mode"] for job in jobs) == ["inpaint", "inpaint", "txt2img"]
