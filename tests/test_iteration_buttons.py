"""The iteration row of results (Vary subtle/strong, Remix, Use as init, Upscale) on the loopback
fake Discord with the real bot, the tiny model and SQLite: each button's new job, the per-image
picker, the Remix form, refusals that reach only the presser, and all of it after a restart."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from discord_support import easel_on_fake_discord
from generation.infotext import read_infotext

ROW_3 = ("upscale", "varysubtle", "varystrong", "remix", "useinit")


def finished(message) -> bool:
    return bool(message.attachments) and any(a.filename.startswith("easel-") for a in message.attachments)


def warned(message) -> bool:
    return "⚠️" in message.content


def custom_ids(message) -> list[list[str]]:
    return [[c["custom_id"] for c in row["components"]] for row in message.components]


def pixels(data: bytes) -> tuple[tuple[int, int], bytes]:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return image.size, image.tobytes()


def snapshot(message) -> tuple:
    return (message.content, [a.data for a in message.attachments], custom_ids(message), message.deleted)


async def imagine(env, *, user=None, **options):
    interaction = await env.fake.invoke_command("imagine", {"prompt": "a cat", "steps": 2, **options},
                                                user=user or env.alice, guild=env.guild, channel=env.channel)
    result = await interaction.wait_for_reply(finished, timeout=60)
    await env.fake.wait_for(lambda: "🔁" in env.fake.message(result.id).reactions)  # delivery is complete
    return result


async def jobs_of(env, user) -> list:
    return sorted(await env.app.store.jobs.list_for_owner(user.id), key=lambda job: job.id)


async def press(env, message, custom_id, *, user, until=finished):
    interaction = await env.fake.click_button(message, custom_id, user=user)
    answer = await interaction.wait_for_reply(until, timeout=60)
    if until is finished:  # a result: wait until its delivery is complete (its buttons are bound to it)
        await env.fake.wait_for(lambda: "🔁" in env.fake.message(answer.id).reactions)
    return answer


async def pick(env, message, action: str, number: int, *, user, until=finished):
    """Press a per-image button on a several-image result, then number `number` (1-based) in its picker."""
    job_id = custom_ids(message)[0][0].split(":")[2]
    picker = await press(env, message, f"easel:job:{job_id}:{action}", user=user, until=lambda m: bool(m.components))
    assert picker.ephemeral and "Which image?" in picker.content
    return await press(env, picker, f"easel:job:{job_id}:{action}:{number - 1}", user=user, until=until)


async def test_vary_buttons_keep_the_images_seed_and_draw_a_variation_seed(models_dir, tmp_path):
    async with easel_on_fake_discord(models_dir, tmp_path, defaults={"vary_strong_strength": 0.5}) as env:
        result = await imagine(env, seed=5)
        rows = custom_ids(result)
        assert len(rows) == 4 and rows[3] == [f"easel:job:1:{action}" for action in ROW_3]
        labels = [c.get("label") for c in result.components[3]["components"]]
        assert labels == ["Upscale", "Vary (subtle)", "Vary (strong)", "Remix", "Use as init"]

        subtle = await press(env, result, "easel:job:1:varysubtle", user=env.bob)  # bob's own job
        (job,) = await jobs_of(env, env.bob)
        request = job.request
        assert (request["mode"], request["seed"], request["count"], request["prompt"]) == ("txt2img", 5, 1, "a cat")
        assert request["subseed_strength"] == 0.15 and request["subseed"] != -1
        infotext = read_infotext(subtle.attachments[0].data)
        assert "Seed: 5," in infotext
        assert f"Variation seed: {request['subseed']}, Variation seed strength: 0.15" in infotext
        assert f"easel:job:{job.id}:varystrong" in sum(custom_ids(subtle), [])  # the new result has the row too

        strong = await press(env, result, "easel:job:1:varystrong", user=env.bob)
        job = (await jobs_of(env, env.bob))[-1]
        assert (job.request["seed"], job.request["subseed_strength"]) == (5, 0.5)  # [defaults] vary_strong_strength
        assert "Variation seed strength: 0.5" in read_infotext(strong.attachments[0].data)


async def test_a_several_image_job_asks_which_image(models_dir, tmp_path):
    async with easel_on_fake_discord(models_dir, tmp_path) as env:
        result = await imagine(env, seed=40, count=3)
        picker = await press(env, result, "easel:job:1:varystrong", user=env.bob, until=lambda m: bool(m.components))
        assert picker.ephemeral and custom_ids(picker) == [[f"easel:job:1:varystrong:{i}" for i in range(3)]]
        assert [c["label"] for c in picker.components[0]["components"]] == ["1", "2", "3"]
        assert await jobs_of(env, env.bob) == []  # nothing yet

        await press(env, picker, "easel:job:1:varystrong:1", user=env.bob)
        (job,) = await jobs_of(env, env.bob)
        assert (job.request["seed"], job.request["count"], job.request["subseed_strength"]) == (41, 3, 0.6)
        images = await env.app.store.images.list_for_job(job.id)
        assert [image.seed for image in images] == [41, 41, 41]  # with a variation the seed is shared

        # the picker stays: another number is another job
        await press(env, picker, "easel:job:1:varystrong:2", user=env.bob)
        assert (await jobs_of(env, env.bob))[-1].request["seed"] == 42

        # Use as init through the picker: image 3's pixels
        done = await pick(env, result, "useinit", 3, user=env.alice)
        job = (await jobs_of(env, env.alice))[-1]
        assert job.request["mode"] == "img2img"
        source = (await env.app.store.images.list_for_job(1))[2]
        assert pixels(open(job.request["init_image"], "rb").read()) == pixels(source.path.read_bytes())
        assert finished(done)

        # a picker's number copied onto another message does nothing there
        other = await imagine(env, seed=1)
        env.fake.message(other.id).components = picker.components
        forged = await press(env, other, "easel:job:1:varystrong:0", user=env.alice, until=warned)
        assert forged.ephemeral and "does not belong" in forged.content


async def test_remix_opens_a_form_and_keeps_the_seed(models_dir, tmp_path):
    async with easel_on_fake_discord(models_dir, tmp_path, limits={"max_prompt_chars": 300}) as env:
        result = await imagine(env, seed=7, negative="blurry", count=2, width=64, height=96)
        opened = await env.fake.click_button(result, "easel:job:1:remix", user=env.bob)
        assert await opened.wait_until_acknowledged() == 9  # the form is the first response
        form = opened.modal
        assert form["title"] == "Remix"
        fields = {label["component"]["custom_id"]: (label["label"], label["component"]) for label in form["components"]}
        assert fields["prompt"][0] == "Prompt" and fields["prompt"][1]["value"] == "a cat"
        assert fields["negative"][0] == "Negative prompt" and fields["negative"][1]["value"] == "blurry"
        assert fields["prompt"][1]["style"] == 2  # a paragraph
        assert fields["prompt"][1]["max_length"] == fields["negative"][1]["max_length"] == 300  # max_prompt_chars

        submitted = await env.fake.submit_modal(opened, {"prompt": "a (dog:1.1) in a hat", "negative": ""})
        done = await submitted.wait_for_reply(finished, timeout=60)
        assert not done.ephemeral
        (job,) = await jobs_of(env, env.bob)
        request = job.request
        assert (request["prompt"], request["negative_prompt"]) == ("a (dog:1.1) in a hat", "")
        assert (request["seed"], request["count"], request["width"], request["height"]) == (7, 2, 64, 96)
        infotext = read_infotext(done.attachments[0].data)
        assert infotext.startswith("a (dog:1.1) in a hat\n") and "Seed: 7," in infotext
        assert "Negative prompt" not in infotext

        # only the prompt edited: the negative prompt stays as the form showed it
        opened = await env.fake.click_button(result, "easel:job:1:remix", user=env.alice)
        await opened.wait_until_acknowledged()
        await (await env.fake.submit_modal(opened, {"prompt": "a fox"})).wait_for_reply(finished, timeout=60)
        job = (await jobs_of(env, env.alice))[-1]
        assert (job.request["prompt"], job.request["negative_prompt"], job.request["seed"]) == ("a fox", "blurry", 7)


async def test_use_as_init_is_img2img_from_the_image(models_dir, tmp_path):
    async with easel_on_fake_discord(models_dir, tmp_path) as env:
        result = await imagine(env, seed=3, width=96, height=64, negative="blurry", cfg=5.0)
        done = await press(env, result, "easel:job:1:useinit", user=env.bob)
        (job,) = await jobs_of(env, env.bob)
        request = job.request
        assert request["mode"] == "img2img" and (request["width"], request["height"]) == (96, 64)
        assert (request["prompt"], request["negative_prompt"], request["cfg_scale"]) == ("a cat", "blurry", 5.0)
        assert request["seed"] != 3 and request["strength"] == 0.75  # a new seed, the default strength
        assert request["subseed_strength"] == 0 and request["mask"] is None
        (source,) = await env.app.store.images.list_for_job(1)
        init = open(request["init_image"], "rb").read()
        assert pixels(init) == pixels(source.path.read_bytes())  # the image itself, kept as bob's upload
        assert str(env.app.uploads.folder / str(env.bob.id)) in request["init_image"]
        infotext = read_infotext(done.attachments[0].data)
        assert "Denoising strength: 0.75" in infotext and "Size: 96x64" in infotext
        # an img2img result has no Vary buttons (A1111's variation seed is txt2img's) ...
        rows = custom_ids(done)
        assert rows[3] == [f"easel:job:{job.id}:{action}" for action in ("upscale", "remix", "useinit")]
        # ... and a Vary button copied onto it says why, to the presser only
        env.fake.message(done.id).components = [{"type": 1, "components": [
            {"type": 2, "style": 2, "label": "Vary", "custom_id": f"easel:job:{job.id}:varysubtle"}]}]
        refused = await press(env, done, f"easel:job:{job.id}:varysubtle", user=env.alice, until=warned)
        assert refused.ephemeral and "txt2img" in refused.content
        assert await jobs_of(env, env.alice) == [(await env.app.store.jobs.get(1))]



async def test_upscale_button_upscales_the_chosen_image(models_dir, tmp_path):
    async with easel_on_fake_discord(models_dir, tmp_path) as env:
        result = await imagine(env, seed=8, count=2, width=64, height=96)
        done = await pick(env, result, "upscale", 2, user=env.bob)
        (job,) = await jobs_of(env, env.bob)
        request = job.request
        assert request["mode"] == "upscale" and request["prompt"] == "a cat"
        assert (request["upscaler"], request["upscale_by"]) == ("Lanczos", 2.0)  # [defaults] upscaler, upscale_by
        assert (request["width"], request["height"]) == (64, 96)  # the source's size
        source = (await env.app.store.images.list_for_job(1))[1]
        assert pixels(open(request["init_image"], "rb").read()) == pixels(source.path.read_bytes())
        assert str(env.app.uploads.folder / str(env.bob.id)) in request["init_image"]
        assert pixels(done.attachments[0].data)[0] == (128, 192)
        # an upscale's result can be upscaled again or used as init; there is nothing to vary or remix
        assert custom_ids(done)[3] == [f"easel:job:{job.id}:{action}" for action in ("upscale", "useinit")]

        # the server's upscaler settings (/admin upscaler) apply to the button
        await env.app.store.guilds.update_settings(env.guild.id, defaults={"upscale_by": 1.5})
        single = await imagine(env, seed=9)
        done = await press(env, single, f"easel:job:{custom_ids(single)[0][0].split(':')[2]}:upscale", user=env.bob)
        assert pixels(done.attachments[0].data)[0] == (96, 96)
        assert (await jobs_of(env, env.bob))[-1].request["upscale_by"] == 1.5

async def test_refusals_reach_only_the_presser_and_lose_nothing(models_dir, tmp_path):
    async with easel_on_fake_discord(models_dir, tmp_path, queue={"per_user_queued": 1}) as env:
        await env.app.store.guilds.update_settings(env.guild.id, banned_words=["dog"])
        result = await imagine(env, seed=11, count=2)
        before = snapshot(env.fake.message(result.id))
        public = len(env.fake.messages(env.channel))

        # a banned word typed into the Remix form
        opened = await env.fake.click_button(result, "easel:job:1:remix", user=env.bob)
        await opened.wait_until_acknowledged()
        edited = "a big DOG on a sofa"
        refused = await (await env.fake.submit_modal(opened, {"prompt": edited, "negative": "ugly"})
                         ).wait_for_reply(warned)
        assert refused.ephemeral and "dog" in refused.content.lower()
        assert await jobs_of(env, env.bob) == []
        # what bob typed is one press away: "Edit again" reopens the form holding it
        (edit_again,) = sum(custom_ids(refused), [])
        reopened = await env.fake.click_button(refused, edit_again, user=env.bob)
        assert await reopened.wait_until_acknowledged() == 9
        values = {label["component"]["custom_id"]: label["component"].get("value")
                  for label in reopened.modal["components"]}
        assert values == {"prompt": edited, "negative": "ugly"}
        done = await (await env.fake.submit_modal(reopened, {"prompt": "a big cat on a sofa"})
                      ).wait_for_reply(finished, timeout=60)
        job = (await jobs_of(env, env.bob))[-1]
        assert (job.request["prompt"], job.request["negative_prompt"], job.request["seed"]) == \
               ("a big cat on a sofa", "ugly", 11)

        # the queue cap: bob's one job is still waiting, so his next press is refused
        gate = asyncio.Event()
        service = env.app.service
        original_run = service._run_batch

        async def held(batch, device):
            await gate.wait()
            await original_run(batch, device)

        service._run_batch = held
        waiting = await env.fake.click_button(result, "easel:job:1:varysubtle", user=env.bob)
        picker = await waiting.wait_for_reply(lambda m: bool(m.components))
        queued = await env.fake.click_button(picker, "easel:job:1:varysubtle:0", user=env.bob)
        await queued.wait_until_acknowledged()
        while len(jobs_before := await jobs_of(env, env.bob)) < 2:  # the row follows the acknowledgement
            await asyncio.sleep(0.02)
        uploads_before = sorted((env.app.uploads.folder / str(env.bob.id)).glob("*"))
        for pressed in ("easel:job:1:useinit:1", "easel:job:1:varystrong:1"):
            action = pressed.split(":")[3]
            second = await press(env, result, f"easel:job:1:{action}", user=env.bob,
                                 until=lambda m: bool(m.components))
            capped = await press(env, second, pressed, user=env.bob, until=warned)
            assert capped.ephemeral and "jobs waiting; the limit is 1" in capped.content
        assert await jobs_of(env, env.bob) == jobs_before
        assert sorted((env.app.uploads.folder / str(env.bob.id)).glob("*")) == uploads_before
        gate.set()
        await queued.wait_for_reply(finished, timeout=60)

        # nothing of this reached anyone else, and the result is as it was
        assert snapshot(env.fake.message(result.id)) == before
        refusals = [m for m in env.fake.messages(env.channel) if warned(m)]
        assert refusals == []
        assert len(env.fake.messages(env.channel)) == public + 2  # the two jobs' results, nothing else
        assert finished(done)


async def test_the_new_buttons_work_after_a_restart(models_dir, tmp_path):
    from discord_fake import fake_discord

    async with fake_discord() as fake:
        guild = fake.add_guild("Art Club")
        for name in ("alice", "bob", "mod"):
            fake.add_member(guild, name=name)
        async with easel_on_fake_discord(models_dir, tmp_path, fake=fake) as env:
            single = await imagine(env, seed=21)
            several = await imagine(env, seed=30, count=2)
            picker = await press(env, several, "easel:job:2:varysubtle", user=env.bob,
                                 until=lambda m: bool(m.components))
        async with easel_on_fake_discord(models_dir, tmp_path, fake=fake) as env:  # a new process, same data
            await press(env, single, "easel:job:1:varysubtle", user=env.bob)
            await press(env, single, "easel:job:1:varystrong", user=env.bob)
            await press(env, single, "easel:job:1:useinit", user=env.bob)
            opened = await fake.click_button(single, "easel:job:1:remix", user=env.bob)
            assert await opened.wait_until_acknowledged() == 9
            await (await fake.submit_modal(opened, {"prompt": "a cat, night"})).wait_for_reply(finished, 60)
            await press(env, picker, "easel:job:2:varysubtle:1", user=env.bob)  # a picker from before the restart
            await pick(env, several, "useinit", 2, user=env.bob)
            upscaled = await press(env, single, "easel:job:1:upscale", user=env.bob)
            assert pixels(upscaled.attachments[0].data)[0] == (128, 128)
            jobs = await jobs_of(env, env.bob)
            summary = [(job.request["mode"], job.request["seed"], job.request["subseed_strength"]) for job in jobs]
            assert summary[:2] == [("txt2img", 21, 0.15), ("txt2img", 21, 0.6)]
            assert summary[2][0] == "img2img" and summary[3] == ("txt2img", 21, 0.0)
            assert summary[4] == ("txt2img", 31, 0.15) and summary[5][0] == "img2img" and summary[6][0] == "upscale"
            assert jobs[3].request["prompt"] == "a cat, night"


def test_the_remix_form_holds_the_prompt_limit_within_discords():
    from bot.formatting import MAX_TEXT_INPUT
    from bot.remix import form_max_chars
    from generation.config import LimitsConfig

    assert form_max_chars(LimitsConfig(max_prompt_chars=300)) == 300
    assert form_max_chars(LimitsConfig(max_prompt_chars=10_000)) == MAX_TEXT_INPUT == 4000
