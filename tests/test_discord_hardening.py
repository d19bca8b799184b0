"""What members cannot make the bot do: ping everyone, delete past the rules, act through a button
copied onto another message, or use buttons and reactions in DMs when DMs are off."""

from __future__ import annotations

import asyncio
import copy

from discord_fake import PermissionOverwrite, fake_discord
from discord_support import easel_on_fake_discord

MANAGE_MESSAGES = 1 << 13
MANAGE_SERVER = 1 << 5


def finished(message) -> bool:
    return bool(message.attachments) and any(a.filename.startswith("easel-") for a in message.attachments)


def sent_messages(fake):
    """The body of every message create or edit the bot sent (interaction callbacks carry it in `data`)."""
    for request in fake.requests:
        body = request.json
        if request.method not in ("POST", "PATCH") or not isinstance(body, dict):
            continue
        if "/callback" in request.path:
            body = body.get("data") or {}
        if body.get("content") or body.get("embeds"):
            yield request, body


async def test_prompts_never_ping_everyone_here_or_roles(models_dir, tmp_path):
    prompt = "@everyone <@&123> @here a cat"
    async with easel_on_fake_discord(models_dir, tmp_path) as env:
        # 1. the interaction token expires while the job waits: the result goes to the channel, pinging alice
        gate = asyncio.Event()
        original_run = env.app.service._run_batch

        async def delayed(batch, device):
            await gate.wait()
            await original_run(batch, device)

        env.app.service._run_batch = delayed
        interaction = await env.fake.invoke_command("imagine", {"prompt": prompt, "steps": 2},
                                                    user=env.alice, guild=env.guild, channel=env.channel)
        await interaction.wait_until_acknowledged()
        env.fake.advance_time(15 * 60 + 1)
        gate.set()
        posted = await env.fake.wait_for(
            lambda: next((m for m in env.fake.messages(env.channel) if finished(m)), None), timeout=60)
        await env.fake.wait_for(lambda: "🔁" in env.fake.message(posted.id).reactions)
        # 2. bob rerolls it by reaction: a status message in the channel, edited into his result
        await env.fake.add_reaction(posted, "🔁", user=env.bob)
        await env.fake.wait_for(
            lambda: next((m for m in env.fake.messages(env.channel) if m.id != posted.id and finished(m)), None),
            timeout=60)
        # 3. a live /imagine: deferred, progress edits, the final edit of the original response
        live = await env.fake.invoke_command("imagine", {"prompt": prompt, "steps": 2},
                                             user=env.alice, guild=env.guild, channel=env.channel)
        await live.wait_for_reply(finished, timeout=60)

        members = {env.alice.id, env.bob.id}
        pinged = set()
        checked = 0
        for request, body in sent_messages(env.fake):
            mentions = body.get("allowed_mentions")
            assert mentions is not None, f"{request.route} sent no allowed_mentions: Discord would parse all"
            assert mentions.get("parse") == [], (request.route, mentions)
            assert not mentions.get("roles") and not mentions.get("replied_user"), (request.route, mentions)
            users = {int(user) for user in mentions.get("users", [])}
            assert len(users) <= 1 and users <= members, (request.route, mentions)
            pinged |= users
            checked += 1
        assert checked >= 6
        assert pinged == members  # the channel post named alice, the reroll's status message bob


async def test_delete_button_and_reaction_follow_the_same_channel_level_rule(models_dir, tmp_path):
    async with fake_discord() as fake:
        guild = fake.add_guild("Art Club")
        fake.add_member(guild, name="alice")
        fake.add_member(guild, name="bob")
        mod = fake.add_member(guild, name="mod", permissions=MANAGE_MESSAGES | MANAGE_SERVER)  # server-wide
        helper = fake.add_member(guild, name="helper")
        guild.channel_named("general").overwrites = [  # a moderator of this channel only, and one not here
            PermissionOverwrite(helper.id, is_member=True, allow=MANAGE_MESSAGES),
            PermissionOverwrite(mod.id, is_member=True, deny=MANAGE_MESSAGES),
        ]
        async with easel_on_fake_discord(models_dir, tmp_path, fake=fake) as env:
            results = []
            for seed in range(4):
                made = await fake.invoke_command("imagine", {"prompt": "a cat", "steps": 2, "seed": seed},
                                                 user=env.alice, guild=env.guild, channel=env.channel)
                results.append(await made.wait_for_reply(finished, timeout=60))
            for result in results:
                await fake.wait_for(lambda r=result: "🔁" in fake.message(r.id).reactions)
            first = results[0]
            for member in (env.bob, env.mod):  # a stranger; a server moderator without the right here
                denied = await fake.click_button(first, "easel:job:1:delete", user=member)
                await denied.wait_for_reply(lambda m: "Only the member" in m.content)
                await fake.add_reaction(first, "❌", user=member)
            await asyncio.sleep(0.5)
            assert not fake.message(first.id).deleted
            # the requester and this channel's moderator: yes, by button and by reaction
            await fake.click_button(results[0], "easel:job:1:delete", user=env.alice)
            await fake.click_button(results[1], "easel:job:2:delete", user=helper.user)
            await fake.add_reaction(results[2], "❌", user=env.alice)
            await fake.add_reaction(results[3], "❌", user=helper.user)
            await fake.wait_for(lambda: all(fake.message(r.id).deleted for r in results))


async def test_a_button_copied_onto_another_message_does_not_act_there(models_dir, tmp_path):
    async with easel_on_fake_discord(models_dir, tmp_path) as env:
        fake = env.fake
        mine = await (await fake.invoke_command("imagine", {"prompt": "a cat", "steps": 2}, user=env.alice,
                                                guild=env.guild, channel=env.channel)).wait_for_reply(finished, 60)
        theirs = await (await fake.invoke_command("imagine", {"prompt": "a dog", "steps": 2}, user=env.bob,
                                                  guild=env.guild, channel=env.channel)).wait_for_reply(finished, 60)
        for message in (mine, theirs):
            await fake.wait_for(lambda m=message: "🔁" in fake.message(m.id).reactions)
        # alice's job 1 buttons, forged onto bob's result: Discord would send these interactions as they are
        fake.message(theirs.id).components = copy.deepcopy(fake.message(mine.id).components)
        for action in ("delete", "info", "reroll"):
            forged = await fake.click_button(theirs, f"easel:job:1:{action}", user=env.alice)
            refusal = await forged.wait_for_reply(lambda m: "does not belong" in m.content)
            assert refusal.ephemeral
        assert not fake.message(theirs.id).deleted
        assert len(await env.app.store.jobs.list_for_owner(env.alice.id)) == 1  # no reroll was queued
        # on its own message the same button works
        info = await fake.click_button(mine, "easel:job:1:info", user=env.bob)
        await info.wait_for_reply(lambda m: "Steps: 2" in m.content)


async def test_buttons_and_reactions_in_dms_follow_the_switch(models_dir, tmp_path):
    async with fake_discord() as fake:
        guild = fake.add_guild("Art Club")
        for name in ("alice", "bob", "mod"):
            fake.add_member(guild, name=name)
        async with easel_on_fake_discord(models_dir, tmp_path, fake=fake, discord={"allow_dms": True}) as env:
            dm = fake.dm_channel(env.alice)
            made = await fake.invoke_command("imagine", {"prompt": "a cat", "steps": 2}, user=env.alice, channel=dm)
            result = await made.wait_for_reply(finished, timeout=60)
            await fake.wait_for(lambda: "🔁" in fake.message(result.id).reactions)
            upload = fake.upload_attachment("easel.png", result.attachments[0].data, "image/png")
            info = await fake.invoke_command("info", {"image": upload}, user=env.alice, channel=dm)
            shown = await info.wait_for_reply(lambda m: bool(m.custom_ids()))
        async with easel_on_fake_discord(models_dir, tmp_path, fake=fake) as env:  # the operator turned DMs off
            for custom_id in result.custom_ids():
                clicked = await fake.click_button(result, custom_id, user=env.alice)
                refusal = await clicked.wait_for_reply(lambda m: "servers only" in m.content)
                assert refusal.ephemeral
            clicked = await fake.click_button(shown, shown.custom_ids()[0], user=env.alice)
            await clicked.wait_for_reply(lambda m: "servers only" in m.content)
            await fake.add_reaction(result, "🔁", user=env.alice)
            await fake.add_reaction(result, "❌", user=env.alice)
            await asyncio.sleep(0.5)
            assert not fake.message(result.id).deleted
            assert len(await env.app.store.jobs.list_for_owner(env.alice.id)) == 1
