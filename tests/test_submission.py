"""The one submission path, called directly (no Discord): every rule, and the attacks it must stop."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import time

import pytest
import pytest_asyncio
from PIL import Image

from conftest import make_config
from generation.engine import Engine
from generation.errors import EaselError, ImageError, InvalidRequest, ModelNotFound, PromptError
from generation.executor import LocalExecutor
from generation.rules import RuleBroken
from generation.service import (BOT_RUNNER, GenerationService, JobFailed, QueueLimitReached, ReplyTarget,
                                cli_runner_id)
from generation.submission import Ask, Requester, Submissions
from generation.uploads import UploadStore
from storage import open_store

GUILD, CHANNEL = 10, 11


class Env:
    def __init__(self, config, store, engine, service, submissions):
        self.config, self.store, self.engine, self.service, self.submissions = config, store, engine, service, submissions

    def member(self, user_id=1, *, guild=GUILD, channel=CHANNEL, nsfw=False, operator=False) -> Requester:
        return Requester(user_id=user_id, channel_nsfw=nsfw, operator=operator,
                         target=ReplyTarget(frontend="cli" if operator else "discord", guild_id=guild,
                                            channel_id=channel))

    async def submit(self, prompt="a red cat", requester=None, **options):
        return await self.submissions.submit(Ask(prompt=prompt, **options), requester or self.member())


@pytest_asyncio.fixture(loop_scope="function")
async def make_env(tmp_path, models_dir, registry):
    made = []

    async def factory(**sections):
        sections.setdefault("defaults", {}).setdefault("steps", 4)
        config = make_config(models_dir, tmp_path / f"data{len(made)}", **sections)
        store = await open_store(config.data_dir / "easel.db")
        from generation.catalog import refresh_models

        await refresh_models(registry, store)
        engine = Engine(config=config, registry=registry)
        executor = LocalExecutor(engine)
        service = GenerationService(config=config, store=store, engine=engine, executor=executor)
        submissions = Submissions(config=config, store=store, registry=registry, engine=engine, service=service,
                                  uploads=UploadStore(config=config, store=store))
        made.append((service, store, executor, submissions))
        return Env(config, store, engine, service, submissions)

    yield factory
    for service, store, executor, submissions in made:
        submissions.close()
        await service.stop()
        executor.shutdown()
        await store.close()


class FakeUpload:
    """An upload as a frontend declares it; counts downloads."""

    def __init__(self, data: bytes, *, content_type="image/png", width=None, height=None):
        self.data, self.content_type, self.size = data, content_type, len(data)
        self.width, self.height = width, height
        self.reads = 0

    async def read(self) -> bytes:
        self.reads += 1
        return self.data


def png(size=(64, 64), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ options


async def test_options_come_from_the_member_then_the_server_then_the_config(make_env):
    env = await make_env()
    await env.store.users.update_settings(1, steps=6, negative_prompt="blurry")
    await env.store.guilds.update_settings(GUILD, defaults={"cfg_scale": 5.0})
    record = await env.submit(steps=None, sampler="Euler")
    assert (record.request["steps"], record.request["negative_prompt"], record.request["cfg_scale"]) == (6, "blurry", 5.0)
    assert (record.request["sampler"], record.request["schedule"]) == ("Euler", "Automatic")
    assert record.runner == BOT_RUNNER and record.checkpoint == "tiny"


async def test_a_lowered_server_limit_never_breaks_a_plain_request(make_env):
    env = await make_env()
    await env.store.users.update_settings(1, steps=30)
    await env.store.guilds.update_settings(GUILD, max_steps=5, max_count=1, defaults={"count": 3})
    record = await env.submit()
    assert (record.request["steps"], record.request["count"]) == (5, 1)
    with pytest.raises(RuleBroken, match="steps is at most 5 on this server"):
        await env.submit(steps=8)  # what the member chose is refused, naming the limit


async def test_allowed_channels(make_env):
    env = await make_env()
    await env.store.guilds.update_settings(GUILD, allowed_channels=[99])
    with pytest.raises(RuleBroken, match="<#99>"):
        await env.submit()
    await env.submit(requester=env.member(channel=99))


# ------------------------------------------------------------------------------------------ checkpoints


async def test_checkpoints_are_enabled_per_server(make_env):
    env = await make_env()
    await env.store.guilds.update_settings(GUILD, disabled_checkpoints=["tiny"])
    with pytest.raises(ModelNotFound, match="not available here"):
        await env.submit()
    with pytest.raises(ModelNotFound):
        await env.submit(checkpoint="tiny")
    await env.submit(requester=env.member(guild=20))  # another server is not affected
    await env.store.checkpoints.set_enabled("tiny", False)  # the operator's switch: everywhere
    with pytest.raises(ModelNotFound):
        await env.submit(requester=env.member(guild=20))
    await env.submit(requester=env.member(operator=True, guild=None))  # the operator's own CLI


async def test_a_reroll_goes_through_the_same_gate(make_env):
    env = await make_env()
    first = await env.submit()
    from generation.requests import GenerationRequest

    again = Ask.again(GenerationRequest.from_dict(first.request), seed=None)
    await env.store.guilds.update_settings(GUILD, disabled_checkpoints=["tiny"])
    with pytest.raises(ModelNotFound):
        await env.submissions.submit(again, env.member(user_id=2))


# ------------------------------------------------------------------------------------------ moderation


@pytest.mark.parametrize("prompt", ["a cat", "a CAT", "a c[]at", "a c()at", "a c\\at", "a c[a|a]t", "a [c:ca:0]t",
                                    "a ｃａｔ", "a c\u200bat", "two cats", "a (cat:1.2)", "a dog AND a cat",
                                    "a [dog:cat:2]", "a [dog|cat]"])
async def test_banned_words_see_what_the_model_sees(make_env, prompt):
    env = await make_env()
    await env.store.guilds.update_settings(GUILD, banned_words=["cat"])
    with pytest.raises(RuleBroken, match='contains "cat"'):
        await env.submit(prompt)


async def test_banned_words_leave_other_words_alone(make_env):
    env = await make_env()
    await env.store.guilds.update_settings(GUILD, banned_words=["cat", "dog*"])
    await env.submit("a concatenated catalog")
    with pytest.raises(RuleBroken, match='"dog\\*"'):
        await env.submit("doggo")
    with pytest.raises(RuleBroken, match='"cat"'):
        await env.submit("a bird", negative_prompt="cat")


async def test_nsfw_words_only_in_age_restricted_channels_when_the_server_asks(make_env):
    env = await make_env()
    await env.submit("nude figure")  # the filter is off by default
    await env.store.guilds.update_settings(GUILD, nsfw_filter=True, nsfw_words=["spicy"])
    for prompt in ("nude figure", "a spicy picture", "NUDE"):
        with pytest.raises(RuleBroken, match="age-restricted"):
            await env.submit(prompt)
    await env.submit("nude figure", requester=env.member(nsfw=True))
    await env.submit("a portrait", negative_prompt="nsfw, nude")  # negative prompts may name them


# ------------------------------------------------------------------------------------------ hostile text


async def test_prompt_lengths_are_refused_before_anything_else(make_env):
    env = await make_env(limits={"max_prompt_chars": 100})
    with pytest.raises(InvalidRequest, match="101 characters; the limit is 100"):
        await env.submit("a" * 101)
    with pytest.raises(InvalidRequest, match="negative prompt has 101"):
        await env.submit(negative_prompt="b" * 101)
    assert await env.store.jobs.count_queued() == 0


@pytest.mark.parametrize(("prompt", "message"), [
    ("(cat:" + "9" * 400 + ")", "too large|between"),  # float() of it is inf
    ("(cat:" + "9" * 3900 + ")", "too large|between"),
    ("(cat:11)", "between -10 and 10"),
    ("(" * 30 + "cat", "between -10 and 10"),  # 1.1 ** 30
    ("a cat AND a dog:99", "AND-part weight"),
    ("a cat AND a dog:" + "9" * 3900, "AND-part weight"),
])
async def test_weights_are_finite_and_bounded(make_env, prompt, message):
    env = await make_env()
    with pytest.raises((InvalidRequest, PromptError), match=message):
        await env.submit(prompt)


async def test_an_exponent_is_not_a_weight(make_env):
    env = await make_env()
    record = await env.submit("(cat:1e400)")  # A1111 reads no weight here: the text "cat:1e400", emphasised
    assert record.request["prompt"] == "(cat:1e400)"


async def test_distinct_scheduled_texts_are_capped_before_tokenizing(make_env):
    env = await make_env(limits={"max_steps": 60})
    alternation = "[" + "|".join(str(i) for i in range(60)) + "]"
    with pytest.raises(InvalidRequest, match="60 different texts"):
        await env.submit(f"a cat {alternation}", steps=60)
    await env.submit("a [cat|dog] [red:blue:0.5]", steps=60)


WORST_PROMPTS = {
    "unclosed brackets": "(a]" * 1333,
    "spaces": "a" + " " * 3998 + "b",
    "alternation": ("[" + "|".join(str(i) for i in range(15)) + "] ") * 100,
    "nested": "(" * 1000 + "cat" + ")" * 1000,
    "long word": "a" * 4000,
    "colons": ": 1 " * 1000,
}


async def test_the_longest_hostile_prompts_pass_quickly_and_the_loop_stays_free(make_env):
    env = await make_env(limits={"max_steps": 60, "max_prompt_weight": 1e300})
    gaps = []

    async def ticker():
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    try:
        for name, prompt in WORST_PROMPTS.items():
            assert len(prompt) <= env.config.limits.max_prompt_chars, name
            started = time.perf_counter()
            try:
                await env.submit(prompt, negative_prompt=prompt, steps=60)
            except EaselError:
                pass  # refused is fine; what matters is how soon
            assert time.perf_counter() - started < 2.5, name  # ~0.2 s here; generous for a loaded CI machine
    finally:
        task.cancel()
    assert max(gaps) < 0.5  # the event loop kept running: other members' commands are answered


async def test_a_check_that_overruns_its_deadline_is_refused(make_env):
    env = await make_env(limits={"check_deadline_s": 0.05})

    def slow_check(request):
        time.sleep(0.5)
        return original(request)

    original = env.engine.check
    env.engine.check = slow_check
    with pytest.raises(InvalidRequest, match="took too long"):
        await env.submit()


# ------------------------------------------------------------------------------------------ caps and uploads


async def test_parallel_submits_cannot_pass_the_cap(make_env):
    env = await make_env(queue={"per_user_queued": 3})
    results = await asyncio.gather(*[env.submit(f"cat {i}") for i in range(12)], return_exceptions=True)
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 3
    assert all(isinstance(r, QueueLimitReached) for r in results if isinstance(r, BaseException))
    assert await env.store.jobs.count_queued(owner_id=1) == 3


async def test_caps_are_checked_before_an_upload_is_downloaded(make_env):
    env = await make_env(queue={"per_user_queued": 1})
    await env.submit()
    upload = FakeUpload(png())
    with pytest.raises(QueueLimitReached):
        await env.submit(mode="img2img", init_image=upload)
    assert upload.reads == 0
    assert not env.config.uploads_dir.exists() or not any(env.config.uploads_dir.rglob("*.png"))


async def test_uploads_are_kept_per_member_and_a_refused_job_keeps_none(make_env):
    env = await make_env()
    image = FakeUpload(png())
    record = await env.submit(mode="img2img", init_image=image)
    path = record.request["init_image"]
    assert path.startswith(str(env.config.uploads_dir / "1")) and os.path.exists(path)
    assert not list(env.config.uploads_dir.rglob("*.tmp"))
    bad_mask = FakeUpload(b"\x89PNG not really")
    with pytest.raises(ImageError):
        await env.submit(mode="inpaint", init_image=FakeUpload(png(colour=(1, 2, 3))), mask=bad_mask)
    assert sorted(p.name for p in env.config.uploads_dir.rglob("*.png")) == [os.path.basename(path)]


async def test_declared_sizes_are_refused_before_download(make_env):
    env = await make_env()
    huge = FakeUpload(png(), width=20000, height=20000)
    with pytest.raises(ImageError, match="20000x20000"):
        await env.submit(mode="img2img", init_image=huge)
    gif = FakeUpload(b"GIF89a", content_type="image/gif")
    with pytest.raises(ImageError, match="PNG, JPEG or WEBP"):
        await env.submit(mode="img2img", init_image=gif)
    assert huge.reads == gif.reads == 0


async def test_a_stored_path_must_be_an_upload_of_ours(make_env, tmp_path):
    env = await make_env()
    outside = tmp_path / "secret.png"
    outside.write_bytes(png())
    with pytest.raises(ImageError, match="not an upload of this bot"):
        await env.submit(mode="img2img", init_image=str(outside))


async def test_the_upload_quota_drops_the_oldest_unused_upload(make_env):
    env = await make_env(retention={"max_uploads_per_member": 2}, queue={"per_user_queued": 10})
    paths = []
    for colour in ((1, 1, 1), (2, 2, 2), (3, 3, 3)):
        path, _ = await env.submissions.uploads.save(FakeUpload(png(colour=colour)), owner_id=7, what="image")
        paths.append(path)
    assert [p.exists() for p in paths] == [False, True, True]


# ------------------------------------------------------------------------------------------ runners


async def test_a_bot_never_takes_over_a_live_cli_job_and_fails_a_dead_ones(make_env):
    env = await make_env()
    live = cli_runner_id()  # this very process: alive
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"cli:{socket.gethostname()}:{int(finished.stdout)}:abcd"
    jobs = {}
    for runner in (live, dead):
        record = await env.store.jobs.create(owner_id=0, request={"prompt": "x"}, checkpoint="tiny", batch_key="k",
                                             frontend="cli", runner=runner)
        await env.store.jobs.start(record.id)
        jobs[runner] = record.id
    await env.service.start()
    assert (await env.store.jobs.get(jobs[live])).status == "running"  # still the CLI's
    dead_job = await env.store.jobs.get(jobs[dead])
    assert dead_job.status == "failed" and "has ended" in dead_job.error
    assert env.service.queued_jobs() == []


async def test_every_job_of_a_broken_batch_gets_one_final_event(make_env):
    env = await make_env()

    class Broken(LocalExecutor):
        def run_batch(self, items, device=None):
            raise RuntimeError("boom")

    env.service.executor = Broken(env.engine)
    events = env.service.subscribe()
    await env.service.start()
    record = await env.submit()
    async def terminal():
        while True:
            event = await events.queue.get()
            if isinstance(event, JobFailed) and event.job_id == record.id:
                return event
    event = await asyncio.wait_for(terminal(), 20)
    assert "logged" in event.reason
    assert (await env.store.jobs.get(record.id)).status == "failed"


async def test_uploads_expire_after_their_retention_unless_a_job_needs_them(make_env):
    from datetime import datetime, timedelta, timezone

    env = await make_env(retention={"uploads_days": 1})
    uploads = env.submissions.uploads
    kept = await env.submit(mode="img2img", init_image=FakeUpload(png(colour=(9, 9, 9))))
    unused, _ = await uploads.save(FakeUpload(png(colour=(8, 8, 8))), owner_id=1, what="image")
    later = datetime.now(timezone.utc) + timedelta(days=2)
    assert await uploads.prune(later) == 1
    assert not unused.exists() and os.path.exists(kept.request["init_image"])  # the queued job still needs it


async def test_an_inpaint_mask_may_come_from_the_images_transparency(make_env):
    env = await make_env()
    image = Image.new("RGBA", (64, 64), (200, 30, 30, 255))
    image.paste((0, 0, 0, 0), (32, 0, 64, 64))  # the right half erased
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    record = await env.submit(mode="inpaint", init_image=FakeUpload(buffer.getvalue()))
    mask = Image.open(record.request["mask"])
    assert mask.getpixel((10, 10)) == 0 and mask.getpixel((50, 10)) == 255
    assert record.request["mask"].startswith(str(env.config.uploads_dir / "1"))
    with pytest.raises(ImageError, match="inpainting needs a mask"):
        await env.submit(mode="inpaint", init_image=FakeUpload(png(colour=(5, 5, 5))))
    assert len(list(env.config.uploads_dir.rglob("*.png"))) == 2  # the refused image was not kept


async def test_hostile_hires_and_upscale_inputs_are_refused_cheaply(make_env):
    """10x the longest hires prompt, an absurd factor or upscaler name, a huge declared upload:
    each refused by the one submission path in milliseconds, nothing queued or downloaded."""
    import time

    from generation.errors import EaselError

    env = await make_env()
    limit = env.config.limits.max_prompt_chars
    cases = [dict(enable_hr=True, hr_prompt="(a]" * (limit * 10 // 3)),
             dict(enable_hr=True, hr_negative_prompt="x " * (limit * 5)),
             dict(enable_hr=True, hr_scale=40.0),
             dict(enable_hr=True, hr_upscaler="U" * (limit * 10)),
             dict(mode="upscale", prompt="", init_image=FakeUpload(b"never read", width=20000, height=20000),
                  upscale_by=4.0),
             dict(mode="upscale", prompt="", init_image=FakeUpload(png(), width=64, height=64), upscale_by=40.0),
             dict(mode="upscale", prompt="", init_image=FakeUpload(png(), width=64, height=64),
                  upscaler="../" * 1000)]
    for options in cases:
        options.setdefault("prompt", "a red cat")
        started = time.perf_counter()
        with pytest.raises(EaselError):
            await env.submissions.submit(Ask(**options), env.member())
        assert time.perf_counter() - started < 1.0, options.keys()
    assert await env.store.jobs.list_for_owner(1) == []
