"""Acknowledge first, check after: however long the checks take, Discord gets its acknowledgement
at once, and a refusal still reaches only the member who asked (the public placeholder removed)."""

from __future__ import annotations

import asyncio

from discord_support import easel_on_fake_discord


def finished(message) -> bool:
    return bool(message.attachments) and any(a.filename.startswith("easel-") for a in message.attachments)


async def test_a_slow_validator_never_delays_the_acknowledgement(models_dir, tmp_path):
    async with easel_on_fake_discord(models_dir, tmp_path) as env:
        submissions = env.app.submissions
        checked = submissions.prepare

        async def slow_prepare(ask, requester):
            await asyncio.sleep(2.0)  # a validator that takes its time (a huge prompt, a slow disk)
            return await checked(ask, requester)

        submissions.prepare = slow_prepare
        refused = await env.fake.invoke_command("imagine", {"prompt": "a cat", "width": 100}, user=env.bob,
                                                guild=env.guild, channel=env.channel)
        assert await refused.wait_until_acknowledged() == 5  # "thinking", before any check ran
        assert refused.acknowledged_at - refused.created_at < 0.5
        message = await refused.wait_for_reply(lambda m: "⚠️" in m.content, timeout=30)
        assert message.ephemeral and "width must be a multiple of 8" in message.content
        await env.fake.wait_for(lambda: refused.original is not None and refused.original.deleted)
        public = [m for m in env.fake.messages(env.channel) if not m.deleted and not m.ephemeral]
        assert public == []  # nobody else saw anything of it

        accepted = await env.fake.invoke_command("imagine", {"prompt": "a cat", "steps": 2}, user=env.alice,
                                                 guild=env.guild, channel=env.channel)
        assert await accepted.wait_until_acknowledged() == 5
        assert accepted.acknowledged_at - accepted.created_at < 0.5
        await accepted.wait_for_reply(finished, timeout=60)


async def test_buttons_acknowledge_before_their_checks_too(models_dir, tmp_path):
    async with easel_on_fake_discord(models_dir, tmp_path, queue={"per_user_queued": 1}) as env:
        first = await env.fake.invoke_command("imagine", {"prompt": "a cat", "steps": 2}, user=env.alice,
                                              guild=env.guild, channel=env.channel)
        result = await first.wait_for_reply(finished, timeout=60)
        await env.fake.wait_for(lambda: "🔁" in env.fake.message(result.id).reactions)  # delivery is complete
        submissions = env.app.submissions
        checked = submissions.prepare

        async def slow_prepare(ask, requester):
            await asyncio.sleep(1.5)
            return await checked(ask, requester)

        submissions.prepare = slow_prepare
        hold = asyncio.Event()
        original_run = env.app.service._run_batch

        async def held(batch, device):
            await hold.wait()
            await original_run(batch, device)

        env.app.service._run_batch = held
        mine = await env.fake.click_button(result, result.custom_ids()[0], user=env.bob)  # Reroll: bob's first job
        await mine.wait_until_acknowledged()
        assert mine.acknowledged_at - mine.created_at < 0.5
        await env.fake.wait_for(lambda: mine.original is not None)
        for _ in range(300):  # bob's job is queued (held) before he presses again
            if await env.app.store.jobs.list_for_owner(env.bob.id):
                break
            await asyncio.sleep(0.05)
        again = await env.fake.click_button(result, result.custom_ids()[0], user=env.bob)  # over bob's cap
        await again.wait_until_acknowledged()
        assert again.acknowledged_at - again.created_at < 0.5
        refusal = await again.wait_for_reply(lambda m: "⚠️" in m.content, timeout=30)
        assert refusal.ephemeral and "the limit is 1" in refusal.content
        hold.set()
        env.app.service._run_batch = original_run
