"""The member and admin commands, end to end: the real bot on the fake Discord, the tiny model."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re

import pytest
import torch
from PIL import Image
from safetensors.torch import save as safetensors_bytes

from conftest import EMBEDDING_WIDTH, write_embeddings
from discord_fake import fake_discord
from discord_support import answered, easel_on_fake_discord
from generation.infotext import png_with_infotext

MANAGE_SERVER = 1 << 5


@pytest.fixture
def own_models(models_dir, tmp_path):
    """The shared tiny checkpoint, with an embeddings folder of this test's own (admins add files to it)."""
    root = tmp_path / "models"
    root.mkdir()
    (root / "checkpoints").symlink_to(models_dir / "checkpoints", target_is_directory=True)
    write_embeddings(root / "embeddings")
    return root


def finished(message) -> bool:
    return any(a.filename.startswith("easel-") for a in message.attachments)


def warned(message) -> bool:
    return "⚠️" in message.content


async def ask(env, name, options=None, *, user, subcommand=None, channel=None, done=lambda m: answered(m),
              **kwargs):
    """Run a command and wait for its (first complete) answer."""
    interaction = await env.fake.invoke_command(name, options or {}, user=user, guild=env.guild,
                                                channel=channel or env.channel, subcommand=subcommand, **kwargs)
    return await interaction.wait_for_reply(done, timeout=30)


def description(message) -> str:
    return message.embeds[0].get("description", "") if message.embeds else ""


def embed_text(message) -> str:
    embed = message.embeds[0]
    parts = [embed.get("title", ""), embed.get("description", "")]
    parts += [f"{f['name']}: {f['value']}" for f in embed.get("fields", [])]
    parts.append(embed.get("footer", {}).get("text", ""))
    return "\n".join(parts)


def png_with(infotext: str | None) -> bytes:
    image = Image.new("RGB", (64, 64), (30, 120, 200))
    if infotext is not None:
        return png_with_infotext(image, infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def embedding_file(vectors: int = 1, width: int = EMBEDDING_WIDTH) -> bytes:
    return safetensors_bytes({"emb_params": torch.randn(vectors, width, generator=torch.Generator().manual_seed(3))})


async def bot_sees(predicate, timeout: float = 15.0):
    """Polls the bot's own cache (the fake's change signal does not cover it)."""
    async def poll():
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


@contextlib.asynccontextmanager
async def held_queue(service):
    """Jobs stay queued (their batch waits at the start) until the block ends."""
    gate = asyncio.Event()
    original_run = service._run_batch

    async def delayed(batch, device):
        await gate.wait()
        await original_run(batch, device)

    service._run_batch = delayed
    try:
        yield
    finally:
        gate.set()


async def test_schema_listing_commands_and_empty_states(own_models, tmp_path):
    async with easel_on_fake_discord(own_models, tmp_path) as env:
        names = {command["name"] for command in env.fake.commands()}
        assert {"queue", "cancel", "checkpoints", "embeddings", "settings", "history", "info", "admin", "upscale",
                "upscalers"} <= names
        admin = env.fake.command("admin")
        assert admin["default_member_permissions"] == str(MANAGE_SERVER)
        assert admin.get("contexts") == [0] or admin.get("dm_permission") is False
        assert {o["name"] for o in admin["options"]} == {"show", "limits", "channel", "banned-word", "checkpoint",
                                                         "nsfw-filter", "nsfw-word", "upscaler", "workers"}
        owner = env.fake.command("owner")
        assert {o["name"] for o in owner["options"]} == {"refresh", "embedding-add", "lora-add"}
        imagine = env.fake.command("imagine")
        lengths = {o["name"]: o.get("max_length") for o in imagine["options"] if o["name"] in ("prompt", "negative")}
        assert lengths == {"prompt": 4000, "negative": 4000}  # Discord refuses longer text before easel sees it
        settings = env.fake.command("settings")
        steps = next(o for o in settings["options"] if o["name"] == "steps")
        assert (steps["min_value"], steps["max_value"]) == (1, 60)

        message = await ask(env, "checkpoints", user=env.alice)
        assert message.ephemeral and "**tiny**" in description(message) and "default" in description(message)
        assert "tiny-sd1" in description(message)

        message = await ask(env, "embeddings", user=env.alice)
        text = description(message)
        assert "**a1111pt** · 2 vectors" in text and "**a1111st** · 1 vector" in text
        assert "widewidth" in text and "width 768 does not match the text encoder's 32" in text

        assert "Nothing queued" in (await ask(env, "queue", user=env.alice)).content
        assert "nothing queued or running" in (await ask(env, "cancel", user=env.alice)).content
        assert "history is empty" in (await ask(env, "history", user=env.alice)).content


async def test_settings_are_stored_checked_and_used_by_imagine(own_models, tmp_path):
    async with easel_on_fake_discord(own_models, tmp_path) as env:
        message = await ask(env, "settings", {"sampler": "dpm++ 2m karras", "steps": 3, "width": 128, "height": 96,
                                              "cfg": 5.5, "negative": "blurry"}, user=env.alice)
        text = description(message)
        assert message.ephemeral and "saved" in message.embeds[0]["title"]
        assert "**Sampler:** DPM++ 2M" in text and "**Schedule type:** Karras" in text and "**Steps:** 3" in text
        assert await env.app.store.users.get_settings(env.alice.id) == {
            "sampler": "DPM++ 2M", "schedule": "Karras", "steps": 3, "width": 128, "height": 96, "cfg_scale": 5.5,
            "negative_prompt": "blurry"}

        refused = await ask(env, "settings", {"width": 100, "sampler": "warp drive"}, user=env.alice, done=warned)
        assert "width must be a multiple of 8" in refused.content and "Unknown sampler 'warp drive'" in refused.content
        await ask(env, "settings", {"width": 1536}, user=env.alice)  # 1536x96 fits: the stored height counts
        assert (await env.app.store.users.get_settings(env.alice.id))["width"] == 1536
        too_big = await ask(env, "settings", {"height": 1536}, user=env.alice, done=warned)
        assert "1536x1536 is 2,359,296 pixels; the limit is 1,048,576" in too_big.content
        await ask(env, "settings", {"width": 128}, user=env.alice)

        mine = await env.fake.invoke_command("imagine", {"prompt": "a cat"}, user=env.alice, guild=env.guild,
                                             channel=env.channel)
        await mine.wait_for_reply(finished, timeout=60)
        typed = await env.fake.invoke_command("imagine", {"prompt": "a cat", "steps": 2, "sampler": "Euler"},
                                              user=env.alice, guild=env.guild, channel=env.channel)
        await typed.wait_for_reply(finished, timeout=60)
        theirs = await env.fake.invoke_command("imagine", {"prompt": "a dog"}, user=env.bob, guild=env.guild,
                                               channel=env.channel)
        await theirs.wait_for_reply(finished, timeout=60)
        typed_job, mine_job = await env.app.store.jobs.list_for_owner(env.alice.id)
        assert {k: mine_job.request[k] for k in ("sampler", "schedule", "steps", "width", "height", "cfg_scale",
                                                 "negative_prompt")} == {
            "sampler": "DPM++ 2M", "schedule": "Karras", "steps": 3, "width": 128, "height": 96, "cfg_scale": 5.5,
            "negative_prompt": "blurry"}
        assert (typed_job.request["steps"], typed_job.request["sampler"], typed_job.request["schedule"]) == \
            (2, "Euler", "Automatic")  # typed options win, and a typed sampler brings its own schedule
        (bob_job,) = await env.app.store.jobs.list_for_owner(env.bob.id)
        assert (bob_job.request["steps"], bob_job.request["width"], bob_job.request["negative_prompt"]) == (4, 64, "")

        await ask(env, "settings", {"negative": "-"}, user=env.alice)
        assert "negative_prompt" not in await env.app.store.users.get_settings(env.alice.id)
        message = await ask(env, "settings", {"reset": True}, user=env.alice)
        assert "reset" in message.embeds[0]["title"] and "**Steps:** 4 *(default)*" in description(message)
        assert await env.app.store.users.get_settings(env.alice.id) == {}


async def test_admin_commands_are_enforced_by_the_bot_and_change_the_rules(own_models, tmp_path):
    async with easel_on_fake_discord(own_models, tmp_path) as env:
        with pytest.raises(PermissionError):  # Discord hides it from members without Manage Server...
            await env.fake.invoke_command("admin", {}, user=env.bob, guild=env.guild, subcommand="show")
        for subcommand, options in (("show", {}), ("limits", {"max_steps": 5}),
                                    ("banned-word", {"word": "x", "add": True}),
                                    ("checkpoint", {"name": "tiny", "enabled": False})):
            # ...but a server may override that hint: the bot itself must refuse.
            refused = await ask(env, "admin", options, user=env.bob, subcommand=subcommand,
                                ignore_default_permissions=True, done=warned)
            assert "you need the Manage Server permission" in refused.content and refused.ephemeral
        assert await env.app.store.guilds.get_settings(env.guild.id) == {}
        assert all(r.enabled for r in await env.app.store.checkpoints.list())

        saved = await ask(env, "admin", {"max_steps": 10, "max_count": 1, "max_queued_per_member": 2},
                          user=env.mod, subcommand="limits")
        assert "Limits saved" in saved.content and "Max steps:** 10" in saved.content
        refused = await ask(env, "imagine", {"prompt": "a cat", "steps": 20, "count": 2}, user=env.alice, done=warned)
        assert "steps is at most 10 on this server" in refused.content
        assert "count is at most 1 on this server" in refused.content

        await ask(env, "admin", {"word": "Dog", "add": True}, user=env.mod, subcommand="banned-word")
        refused = await ask(env, "imagine", {"prompt": "a happy DOG"}, user=env.alice, done=warned)
        assert 'your prompt contains "dog", which this server does not allow' in refused.content
        for user, expected in ((env.mod, [{"name": "dog", "value": "dog"}]), (env.bob, [])):
            typed = await env.fake.invoke_autocomplete("admin", {"word": "d"}, focused="word", user=user,
                                                       guild=env.guild, channel=env.channel, subcommand="banned-word")
            await typed.wait_until_acknowledged()
            assert typed.autocomplete_choices == expected  # the list is for admins only
        art = env.fake.add_channel(env.guild, "art")
        await bot_sees(lambda: env.bot.get_channel(art.id) is not None)
        await ask(env, "admin", {"channel": art, "allowed": True}, user=env.mod, subcommand="channel")
        refused = await ask(env, "imagine", {"prompt": "a cat"}, user=env.alice, done=warned)
        assert f"easel works only in <#{art.id}> on this server" in refused.content

        shown = await ask(env, "admin", {}, user=env.mod, subcommand="show")
        text = description(shown)
        assert "Max steps:** 10" in text and f"<#{art.id}>" in text and "||dog||" in text

        await ask(env, "admin", {"word": "dog", "add": False}, user=env.mod, subcommand="banned-word")
        allowed = await env.fake.invoke_command("imagine", {"prompt": "a happy dog", "steps": 2}, user=env.alice,
                                                guild=env.guild, channel=art)
        await allowed.wait_for_reply(finished, timeout=60)
        await ask(env, "admin", {"channel": art, "allowed": False}, user=env.mod, subcommand="channel")
        await ask(env, "admin", {"reset": True}, user=env.mod, subcommand="limits")
        assert await env.app.store.guilds.get_settings(env.guild.id) == {}


async def test_queue_and_cancel_own_and_others_jobs(own_models, tmp_path):
    async with easel_on_fake_discord(own_models, tmp_path) as env:
        async with held_queue(env.app.service):
            first = await env.fake.invoke_command("imagine", {"prompt": "first cat", "steps": 2}, user=env.alice,
                                                  guild=env.guild, channel=env.channel)
            await first.wait_until_acknowledged()
            await bot_sees(lambda: env.app.service.position(1) is not None)  # queued (checked after the ack)
            second = await env.fake.invoke_command("imagine", {"prompt": "second *cat*", "steps": 2}, user=env.alice,
                                                   guild=env.guild, channel=env.channel)
            await second.wait_until_acknowledged()
            await bot_sees(lambda: env.app.service.position(2) == 1)

            shown = await ask(env, "queue", user=env.alice)
            text = description(shown)
            assert shown.ephemeral and text.index("**#2**") < text.index("**#1**")  # newest first
            assert "position 1" in text and r"second \*cat\*" in text

            choices = await env.fake.invoke_autocomplete("cancel", {"job": ""}, focused="job", user=env.alice,
                                                         guild=env.guild, channel=env.channel)
            offered = await choices.wait_for(lambda i: i.autocomplete_choices)
            assert [c["value"] for c in offered] == [2, 1] and offered[0]["name"].startswith("#2 · queued")

            canceled = await ask(env, "cancel", user=env.alice)  # the most recent by default
            assert "Canceled job #2" in canceled.content
            await second.wait_for_reply(lambda m: "Canceled" in m.content)

            refused = await ask(env, "cancel", {"job": 1}, user=env.bob, done=warned)
            assert "job #1 is not yours" in refused.content
            missing = await ask(env, "cancel", {"job": 99}, user=env.alice, done=warned)
            assert "there is no job #99" in missing.content
            again = await ask(env, "cancel", {"job": 2}, user=env.alice, done=warned)
            assert "job #2 was already canceled" in again.content

            other = env.fake.add_guild("Other Club")
            stranger = env.fake.add_member(other, name="othermod", permissions=(1 << 13) | MANAGE_SERVER).user
            await bot_sees(lambda: env.bot.get_guild(other.id) is not None)
            elsewhere = await env.fake.invoke_command("cancel", {"job": 1}, user=stranger, guild=other)
            message = await elsewhere.wait_for_reply(warned)
            assert "job #1 is not yours" in message.content  # a moderator elsewhere is no moderator here

            by_mod = await ask(env, "cancel", {"job": 1}, user=env.mod)
            assert "Canceled job #1" in by_mod.content and f"<@{env.alice.id}>" in by_mod.content
            await first.wait_for_reply(lambda m: "canceled by a moderator" in m.content)
        assert [j.status for j in await env.app.store.jobs.list_for_owner(env.alice.id)] == ["canceled", "canceled"]
        assert "Nothing queued" in (await ask(env, "queue", user=env.alice)).content

        done = await env.fake.invoke_command("imagine", {"prompt": "quick cat", "steps": 2}, user=env.alice,
                                             guild=env.guild, channel=env.channel)
        await done.wait_for_reply(finished, timeout=60)
        over = await ask(env, "cancel", {"job": 3}, user=env.alice, done=warned)
        assert "job #3 has already finished" in over.content

        async with held_queue(env.app.service):  # a job has finished, so the wait can be estimated now
            for job_id, prompt in ((4, "held cat"), (5, "waiting cat")):
                waiting = await env.fake.invoke_command("imagine", {"prompt": prompt, "steps": 2}, user=env.alice,
                                                        guild=env.guild, channel=env.channel)
                await waiting.wait_until_acknowledged()
                # checked after the acknowledgement: wait for the row, so the job ids follow the commands
                await bot_sees(lambda job_id=job_id: env.app.service.position(job_id) is not None)
            await bot_sees(lambda: env.app.service.position(5) == 1)
            shown = await ask(env, "queue", user=env.alice)
            assert "**#5** · ⏳ position 1, starts in under a minute" in description(shown)
            await ask(env, "cancel", {"job": 5}, user=env.alice)
            await ask(env, "cancel", {"job": 4}, user=env.alice)


async def test_history_pages_and_search(own_models, tmp_path):
    async with easel_on_fake_discord(own_models, tmp_path) as env:
        history = env.app.store.prompt_history
        for number in range(23):
            await history.add(user_id=env.alice.id, guild_id=env.guild.id, prompt=f"red cat number {number}")
        await history.add(user_id=env.alice.id, guild_id=env.guild.id, prompt="a blue **dog**",
                          negative_prompt="blurry")
        await history.add(user_id=env.bob.id, guild_id=env.guild.id, prompt="bob's dog")

        first = await ask(env, "history", user=env.alice)
        assert first.ephemeral and "page 1 of 3 · 24 prompts" in embed_text(first)
        assert description(first).startswith(r"**1.** a blue \*\*dog\*\*") and "blurry" in description(first)
        last = await ask(env, "history", {"page": 3}, user=env.alice)
        assert "page 3 of 3" in embed_text(last) and "red cat number 0" in description(last)
        assert description(last).count("**") == 2 * 4  # entries 21-24
        beyond = await ask(env, "history", {"page": 4}, user=env.alice)
        assert "only 3 pages" in beyond.content

        found = await ask(env, "history", {"search": "do"}, user=env.alice)  # word beginnings match
        assert "1 prompt" in embed_text(found) and "blue" in description(found) and "bob" not in description(found)
        none = await ask(env, "history", {"search": "unicorn"}, user=env.alice)
        assert "No prompts matching unicorn" in none.content


async def test_info_shows_parameters_and_its_button_generates_after_a_restart(own_models, tmp_path):
    async with fake_discord() as fake:
        guild = fake.add_guild("Art Club")
        fake.add_member(guild, name="alice")
        fake.add_member(guild, name="bob")
        fake.add_member(guild, name="mod", permissions=(1 << 13) | MANAGE_SERVER)
        async with easel_on_fake_discord(own_models, tmp_path, fake=fake) as env:
            made = await fake.invoke_command("imagine", {"prompt": "a (red:1.2) cat", "steps": 2, "seed": 77,
                                                         "sampler": "DPM++ 2M", "schedule": "Karras", "cfg": 6.0},
                                             user=env.alice, guild=env.guild, channel=env.channel)
            result = await made.wait_for_reply(finished, timeout=60)
            upload = fake.upload_attachment("easel.png", result.attachments[0].data, "image/png")
            shown = await ask(env, "info", {"image": upload}, user=env.bob)
            text = embed_text(shown)
            assert shown.ephemeral
            assert r"a \(red:1.2\) cat" in text or "a (red:1.2) cat" in text
            assert "Seed: 77" in text and "Steps: 2" in text and "Model: tiny" in text and "Not used" not in text
            (draft_button,) = shown.custom_ids()
            assert re.fullmatch(r"easel:draft:[0-9a-f]{16}", draft_button)

            text_file = fake.upload_attachment("notes.txt", b"hello", "text/plain")
            refused = await ask(env, "info", {"image": text_file}, user=env.bob, done=warned)
            assert "must be a PNG, JPEG or WEBP image, not text/plain" in refused.content
            fake_png = fake.upload_attachment("fake.png", b"\x89PNG not really", "image/png")
            refused = await ask(env, "info", {"image": fake_png}, user=env.bob, done=warned)
            assert "not a PNG, JPEG or WEBP image" in refused.content
            plain = fake.upload_attachment("plain.png", png_with(None), "image/png")
            refused = await ask(env, "info", {"image": plain}, user=env.bob, done=warned)
            assert "carries no generation parameters" in refused.content

            foreign = png_with("a dog on the moon\nNegative prompt: ugly\nSteps: 3, Sampler: Warp Drive, "
                               "CFG scale: 6.5, Seed: 5, Size: 64x72, Model hash: 0123456789, Model: mystery-xl, "
                               "Hires upscale: 2")
            upload = fake.upload_attachment("foreign.png", foreign, "image/png")
            foreign_info = await ask(env, "info", {"image": upload}, user=env.alice)
            text = embed_text(foreign_info)
            assert "Not used" in text and "Warp Drive" in text and "mystery-xl" in text and "Hires fix" in text
            assert "2x" in text

        async with easel_on_fake_discord(own_models, tmp_path, fake=fake) as env:  # a new process, same data
            clicked = await fake.click_button(shown, draft_button, user=env.bob)
            await clicked.wait_for_reply(finished, timeout=60)
            (bob_job,) = await env.app.store.jobs.list_for_owner(env.bob.id)
            original = (await env.app.store.jobs.list_for_owner(env.alice.id))[0].request
            for key in ("prompt", "seed", "steps", "sampler", "schedule", "cfg_scale", "width", "height"):
                assert bob_job.request[key] == original[key], key
            assert bob_job.checkpoint == "tiny"

            clicked = await fake.click_button(foreign_info, foreign_info.custom_ids()[0], user=env.alice)
            await clicked.wait_for_reply(finished, timeout=60)
            newest = (await env.app.store.jobs.list_for_owner(env.alice.id))[0].request
            assert (newest["prompt"], newest["negative_prompt"], newest["steps"], newest["seed"]) == \
                ("a dog on the moon", "ugly", 3, 5)
            assert (newest["sampler"], newest["cfg_scale"], newest["width"], newest["height"]) == \
                ("Euler a", 6.5, 64, 72)
            assert newest["checkpoint"] == "tiny"  # the default, as resolved when it was asked for

            await env.app.store.settings.delete(f"draft:{draft_button.rsplit(':', 1)[1]}")
            gone = await fake.click_button(shown, draft_button, user=env.bob)
            message = await gone.wait_for_reply(warned)
            assert "no longer stored" in message.content and message.ephemeral


async def test_models_admin_embedding_upload_refresh_and_checkpoint_switch(own_models, tmp_path):
    async with easel_on_fake_discord(own_models, tmp_path) as env:
        embeddings_dir = own_models / "embeddings"
        before = sorted(p.name for p in embeddings_dir.iterdir())

        owner = env.fake.state.application_owner()

        async def add(filename: str, data: bytes, user=None, **kwargs):
            return await ask(env, "owner", {"file": (filename, data)}, user=user or owner,
                             subcommand="embedding-add", done=answered, **kwargs)

        refused = await add("newstyle.safetensors", embedding_file(), user=env.bob, ignore_default_permissions=True)
        assert "only the bot's owner" in refused.content
        # A server's admin manages their server, not the folder every server shares.
        refused = await add("newstyle.safetensors", embedding_file(), user=env.mod, ignore_default_permissions=True)
        assert "only the bot's owner" in refused.content
        refused = await ask(env, "owner", {}, user=env.mod, subcommand="refresh", ignore_default_permissions=True)
        assert "only the bot's owner" in refused.content
        refused = await add("newstyle.pt", b"\x80\x02}q\x00.")
        assert "only .safetensors embeddings can be uploaded" in refused.content
        refused = await add("newstyle.safetensors", embedding_file(width=768))
        assert "width 768, but the checkpoints here need 32" in refused.content
        refused = await add("two words.safetensors", embedding_file())
        assert "one word" in refused.content
        refused = await add("a1111st.safetensors", embedding_file())
        assert "already exists" in refused.content
        refused = await add("junk.safetensors", b"\x00" * 64)
        assert "not a readable .safetensors embedding" in refused.content
        refused = await add("huge.safetensors", b"\x00" * (1024 * 1024 + 1))
        assert "at most 1024 KiB" in refused.content
        assert sorted(p.name for p in embeddings_dir.iterdir()) == before  # nothing was written

        added = await add("newstyle.safetensors", embedding_file(vectors=2))
        assert "Added embedding **newstyle** (2 vectors)" in added.content
        assert (embeddings_dir / "newstyle.safetensors").is_file()
        listed = await ask(env, "embeddings", user=env.alice)
        assert "**newstyle** · 2 vectors" in description(listed)
        used = await env.fake.invoke_command("imagine", {"prompt": "a newstyle cat", "steps": 2}, user=env.alice,
                                             guild=env.guild, channel=env.channel)
        await used.wait_for_reply(finished, timeout=60)
        refused = await ask(env, "imagine", {"prompt": "a widewidth cat"}, user=env.alice, done=warned)
        assert "embedding widewidth has width 768; tiny needs 32" in refused.content

        (embeddings_dir / "newstyle.safetensors").unlink()
        refreshed = await ask(env, "owner", {}, user=owner, subcommand="refresh")
        checkpoints = len(await env.app.store.checkpoints.list())
        assert f"Found {checkpoints} checkpoint{'s' if checkpoints > 1 else ''} and 3 usable embeddings" \
            in refreshed.content
        assert "widewidth" in refreshed.content
        assert "newstyle" not in {r.trigger for r in await env.app.store.embeddings.list()}

        choices = await env.fake.invoke_autocomplete("admin", {"name": "ti"}, focused="name", user=env.mod,
                                                     guild=env.guild, channel=env.channel, subcommand="checkpoint")
        offered = await choices.wait_for(lambda i: i.autocomplete_choices)
        assert {"name": "tiny (on)", "value": "tiny"} in offered
        switched = await ask(env, "admin", {"name": "tiny", "enabled": False}, user=env.mod, subcommand="checkpoint")
        assert "now disabled on this server" in switched.content and "the bot's default" in switched.content
        assert await env.app.store.checkpoints.get("tiny") is not None
        assert (await env.app.store.checkpoints.get("tiny")).enabled  # for every other server it stays on
        assert "**tiny** ·" not in description(await ask(env, "checkpoints", user=env.alice))
        refused = await ask(env, "imagine", {"prompt": "a cat", "checkpoint": "tiny"}, user=env.alice, done=warned)
        assert "not available" in refused.content
        missing = await ask(env, "admin", {"name": "nope", "enabled": True}, user=env.mod, subcommand="checkpoint",
                            done=warned)
        assert "there is no checkpoint named 'nope'" in missing.content
        await ask(env, "admin", {"name": "tiny", "enabled": True}, user=env.mod, subcommand="checkpoint")
        assert "**tiny** ·" in description(await ask(env, "checkpoints", user=env.alice))
