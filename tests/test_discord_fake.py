"""End-to-end checks of the fake Discord against a real discord.py 2.7 bot.

The bot below is deliberately small and defined here: it exercises what the real bot relies on
(defer/edit/follow-up with files and a persistent button, reactions, autocomplete, DMs) so a
change in discord.py or in the fake that breaks that contract fails here first.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands
from discord_fake import (
    CLIENT_OPTIONS,
    DiscordHTTPError,
    FakeChannel,
    FakeDiscord,
    FakeGuild,
    FakeUser,
    InvalidInvocation,
    fake_discord,
)
from discord_fake.validation import validate_commands

pytestmark = pytest.mark.timeout(30)

MIB = 1024 * 1024


def tiny_png(width: int = 3, height: int = 2) -> bytes:
    """A valid RGB PNG, built by hand so the test needs no image library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x10\x20\x30" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@dataclass
class Probes:
    """What the test bot observed, for assertions from the test side."""

    errors: asyncio.Queue[BaseException] = field(default_factory=asyncio.Queue)
    reactions: asyncio.Queue[discord.RawReactionActionEvent] = field(default_factory=asyncio.Queue)
    rerolls: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    received_image: bytes | None = None


class RerollButton(discord.ui.DynamicItem[discord.ui.Button], template=r"job:(?P<job_id>[0-9]+):reroll"):
    def __init__(self, job_id: int) -> None:
        super().__init__(discord.ui.Button(label="Reroll", style=discord.ButtonStyle.secondary,
                                           custom_id=f"job:{job_id}:reroll"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> RerollButton:
        return cls(int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        interaction.client.probes.rerolls.put_nowait(self.job_id)  # type: ignore[attr-defined]
        await interaction.response.send_message(f"Rerolling job {self.job_id}", ephemeral=True)


class ProbeBot(commands.Bot):
    def __init__(self, probes: Probes) -> None:
        super().__init__(command_prefix="!", intents=discord.Intents.default(), **CLIENT_OPTIONS)
        self.probes = probes

    async def setup_hook(self) -> None:
        self.add_dynamic_items(RerollButton)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if payload.user_id != self.user.id:
            self.probes.reactions.put_nowait(payload)


def build_bot() -> ProbeBot:
    probes = Probes()
    bot = ProbeBot(probes)

    async def record_errors(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        probes.errors.put_nowait(getattr(error, "original", error))

    bot.tree.on_error = record_errors

    @bot.tree.command(description="Generate an image")
    @app_commands.describe(prompt="What to draw", image="An init image")
    async def imagine(interaction: discord.Interaction, prompt: str, image: discord.Attachment | None = None,
                      size_mib: int = 0) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content=f"Working on {prompt!r}...")
        data = await image.read() if image is not None else tiny_png()
        probes.received_image = data
        if size_mib:
            data = b"\0" * (size_mib * MIB + 1)
        view = discord.ui.View(timeout=None)
        view.add_item(RerollButton(job_id=42))
        try:
            embed = discord.Embed(title="Done").set_image(url="attachment://result.png")
            await interaction.followup.send(content="Done", embed=embed,
                                            file=discord.File(io.BytesIO(data), "result.png"), view=view)
        except discord.HTTPException as error:
            probes.errors.put_nowait(error)

    @bot.tree.command(description="Answer only after the test opens the gate")
    async def slow(interaction: discord.Interaction) -> None:
        await probes.gate.wait()
        try:
            await interaction.response.defer()
        except discord.HTTPException as error:
            probes.errors.put_nowait(error)

    @bot.tree.command(description="Defer, then edit after the test opens the gate")
    async def later(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await probes.gate.wait()
        try:
            await interaction.edit_original_response(content="finally")
        except discord.HTTPException as error:
            probes.errors.put_nowait(error)
            # The documented fallback once the token is gone: post with the bot token.
            await interaction.channel.send(f"{interaction.user.mention} your job finished")

    @bot.tree.command(description="Many progress edits")
    async def progress(interaction: discord.Interaction, edits: int) -> None:
        await interaction.response.defer()
        for step in range(edits):
            await interaction.edit_original_response(content=f"step {step + 1}/{edits}")

    @bot.tree.command(description="Pick a style")
    async def style(interaction: discord.Interaction, name: str) -> None:
        await interaction.response.send_message(f"style {name}")

    @style.autocomplete("name")
    async def style_names(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        names = ["anime", "analog film", "photo", "pixel art"]
        return [app_commands.Choice(name=n, value=n) for n in names if n.startswith(current)]

    @bot.tree.command(description="Defer privately, then answer with a follow-up")
    async def quick(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        await interaction.followup.send("done")

    @bot.tree.command(description="Edit a prompt in a form")
    async def prompt(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(PromptModal())

    @bot.tree.command(description="Choose a sampler")
    async def sampler(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("sampler: default", view=SamplerView())

    models = app_commands.Group(name="model", description="Models")

    @models.command(name="list", description="List models")
    async def list_models(interaction: discord.Interaction, family: str = "sd15") -> None:
        await interaction.response.send_message(f"models for {family}", ephemeral=True)

    bot.tree.add_command(models)

    @bot.tree.command(description="Admins only")
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.checks.has_permissions(manage_guild=True)
    async def purge(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("purged", ephemeral=True)

    return bot


class PromptModal(discord.ui.Modal, title="Edit prompt"):
    text = discord.ui.TextInput(label="Prompt", custom_id="prompt-text", max_length=500)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"new prompt: {self.text.value}")


class SamplerView(discord.ui.View):
    @discord.ui.select(custom_id="sampler-select", options=[discord.SelectOption(label=name, value=name)
                                                            for name in ("euler", "dpmpp_2m")])
    async def choose(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        await interaction.response.edit_message(content=f"sampler: {select.values[0]}", view=None)


@dataclass
class Env:
    fake: FakeDiscord
    bot: ProbeBot
    guild: FakeGuild
    alice: FakeUser


@contextlib.asynccontextmanager
async def running_bot(**fake_options: object) -> AsyncIterator[Env]:
    async with fake_discord(**fake_options) as fake:
        guild = fake.add_guild("Easel Test")
        alice = fake.add_member(guild, name="alice").user
        bot = build_bot()
        async with fake.run_client(bot):
            await bot.tree.sync()
            yield Env(fake=fake, bot=bot, guild=guild, alice=alice)
        assert fake.unhandled_requests == []


def fake_channel(env: Env) -> FakeChannel:
    return env.guild.channel_named("general")


async def next_error(probes: Probes) -> BaseException:
    return await asyncio.wait_for(probes.errors.get(), timeout=15)


async def test_login_ready_and_guild_available() -> None:
    async with fake_discord() as fake:
        guild = fake.add_guild("Easel Test")
        fake.add_member(guild, name="alice")
        admin_role = fake.add_role(guild, "admins", permissions=discord.Permissions(administrator=True).value)
        bot = build_bot()
        async with fake.run_client(bot):
            await fake.wait_until_ready()
            assert bot.user is not None and bot.user.id == fake.bot.id
            assert bot.application_id == fake.application_id
            seen = bot.get_guild(guild.id)
            assert seen is not None and not seen.unavailable and seen.name == "Easel Test"
            assert [c.name for c in seen.text_channels] == ["general"]
            assert seen.get_role(admin_role.id).permissions.administrator
            assert seen.me.guild_permissions.attach_files
            assert seen.filesize_limit == 10 * MIB
        routes = [r.route for r in fake.requests]
        assert routes[:2] == ["GET /api/v10/users/@me", "GET /api/v10/oauth2/applications/@me"]
        assert fake.unhandled_requests == []


async def test_wrong_token_is_refused() -> None:
    async with fake_discord() as fake:
        bot = build_bot()
        with pytest.raises(discord.LoginFailure):
            await bot.login("not-the-token")
        await bot.close()
        assert fake.requests[-1].status == 401


async def test_sync_accepted_and_schema_errors_rejected() -> None:
    async with running_bot() as env:
        registered = {c["name"]: c for c in env.fake.commands()}
        assert set(registered) == {"imagine", "slow", "later", "progress", "style", "prompt", "sampler", "model",
                                   "purge", "quick"}
        assert registered["purge"]["default_member_permissions"] == str(discord.Permissions(manage_guild=True).value)
        assert all(c["id"].isdigit() and c["application_id"] == str(env.fake.application_id)
                   for c in registered.values())
        prompt = registered["imagine"]["options"][0]
        assert (prompt["name"], prompt["required"]) == ("prompt", True)

        # discord.py validates names when a command is declared; rename afterwards to reach Discord.
        bad = app_commands.Command(name="bad", description="x", callback=_noop)
        bad.name = "Bad Name"
        env.bot.tree.add_command(bad)
        with pytest.raises(discord.HTTPException) as caught:
            await env.bot.tree.sync()
        assert caught.value.status == 400 and caught.value.code == 50035
        assert "In 10.name: Command name is invalid" in caught.value.text
        env.bot.tree.remove_command("Bad Name")
        assert len(env.fake.commands()) == 10  # the rejected sync changed nothing


async def _noop(interaction: discord.Interaction) -> None:
    pass


def _command(**overrides: object) -> dict[str, object]:
    return {"name": "imagine", "description": "Generate", "type": 1} | overrides


def _option(name: str, kind: int = 3, **extra: object) -> dict[str, object]:
    return {"name": name, "description": "d", "type": kind} | extra


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (_command(name="Imagine"), "name"),
        (_command(name="has space"), "name"),
        (_command(name="x" * 33), "name"),
        (_command(description=""), "description"),
        (_command(description="d" * 101), "description"),
        (_command(options=[_option(f"o{i}") for i in range(26)]), "options"),
        (_command(options=[_option("a"), _option("b", required=True)]), "required"),
        (_command(options=[_option("a", choices=[{"name": str(i), "value": str(i)} for i in range(26)])]), "choices"),
        (_command(options=[_option("a", autocomplete=True, choices=[{"name": "x", "value": "x"}])]), "autocomplete"),
        (_command(options=[_option("a", kind=4, min_value=5, max_value=1)]), "min_value"),
        (_command(options=[_option("a", kind=4, choices=[{"name": "x", "value": "x"}])]), "value"),
        (_command(options=[_option("Upper")]), "name"),
        (_command(options=[_option("a"), _option("a")]), "name"),
    ],
)
def test_command_schema_rules(command: dict[str, object], field: str) -> None:
    with pytest.raises(DiscordHTTPError) as caught:
        validate_commands([command])
    assert caught.value.code == 50035
    assert f'"{field}"' in json.dumps(caught.value.errors)


def test_valid_schema_passes() -> None:
    validate_commands([
        _command(options=[_option("prompt", required=True), _option("steps", kind=4, min_value=1, max_value=150),
                          _option("style", autocomplete=True), _option("image", kind=11)]),
        {"name": "Upscale image", "description": "", "type": 3},
    ])


async def test_command_defer_edit_followup_file_round_trip() -> None:
    async with running_bot() as env:
        fake = env.fake
        upload = tiny_png(5, 4)
        image = fake.upload_attachment("init.png", upload, "image/png")
        assert (image["width"], image["height"]) == (5, 4)
        interaction = await fake.invoke_command("imagine", {"prompt": "a lighthouse", "image": image},
                                                user=env.alice, guild=env.guild)
        (followup,) = await interaction.wait_for_followups(1)

        assert env.bot.probes.received_image == upload  # the bot downloaded the option from the fake CDN
        assert interaction.callback_type == 5
        assert [r.kind for r in interaction.responses] == ["callback", "edit_original", "followup"]
        original = interaction.original
        assert original.history[0].loading and not original.loading
        assert original.content == "Working on 'a lighthouse'..."
        assert original.interaction_metadata["name"] == "imagine"
        assert followup.content == "Done" and not followup.ephemeral
        (attachment,) = followup.attachments
        assert attachment.filename == "result.png" and attachment.data == upload
        assert followup.custom_ids() == ["job:42:reroll"]
        url = fake.state.message_payload(followup)["attachments"][0]["url"]
        assert followup.embeds[0]["image"]["url"] == url  # attachment:// resolved like Discord does
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                assert await response.read() == upload
        assert [m.id for m in fake.messages(fake_channel(env))] == [original.id, followup.id]


async def test_button_click_reaches_dynamic_item() -> None:
    async with running_bot() as env:
        command = await env.fake.invoke_command("imagine", {"prompt": "x"}, user=env.alice, guild=env.guild)
        (followup,) = await command.wait_for_followups(1)
        click = await env.fake.click_button(followup, "job:42:reroll", user=env.alice)
        assert await asyncio.wait_for(env.bot.probes.rerolls.get(), timeout=15) == 42
        reply = await click.wait_for_reply()
        assert click.callback_type == 4 and reply.ephemeral and reply.content == "Rerolling job 42"
        assert env.fake.messages(fake_channel(env))[-1].id == followup.id  # ephemeral replies stay private
        with pytest.raises(InvalidInvocation):
            await env.fake.click_button(followup, "job:43:reroll", user=env.alice)


async def test_late_acknowledgement_is_unknown_interaction() -> None:
    async with running_bot() as env:
        interaction = await env.fake.invoke_command("slow", {}, user=env.alice, guild=env.guild)
        env.fake.advance_time(3.5)
        env.bot.probes.gate.set()
        error = await next_error(env.bot.probes)
        assert isinstance(error, discord.NotFound) and error.code == 10062
        assert not interaction.acknowledged


async def test_second_acknowledgement_is_rejected() -> None:
    async with running_bot() as env:
        interaction = await env.fake.invoke_command("style", {"name": "anime"}, user=env.alice, guild=env.guild)
        await interaction.wait_until_acknowledged()
        url = f"{env.fake.api_url}/interactions/{interaction.id}/{interaction.token}/callback"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json={"type": 5}) as response:
                assert response.status == 400
                assert response.headers["Content-Type"] == "application/json"
                assert (await response.json())["code"] == 40060


async def test_expired_token_surfaces_as_http_exception() -> None:
    async with running_bot() as env:
        interaction = await env.fake.invoke_command("later", {}, user=env.alice, guild=env.guild)
        await interaction.wait_until_acknowledged()
        env.fake.advance_time(15 * 60 + 1)
        env.bot.probes.gate.set()
        error = await next_error(env.bot.probes)
        assert isinstance(error, discord.HTTPException) and (error.status, error.code) == (401, 50027)
        notice = await env.fake.wait_for(lambda: [m for m in env.fake.messages(fake_channel(env))
                                                  if "finished" in m.content])
        assert notice[0].content == f"<@{env.alice.id}> your job finished"
        assert interaction.original.loading  # the edit never landed


async def test_oversized_file_is_rejected_with_40005() -> None:
    async with running_bot() as env:
        interaction = await env.fake.invoke_command("imagine", {"prompt": "x", "size_mib": 10},
                                                    user=env.alice, guild=env.guild)
        error = await next_error(env.bot.probes)
        assert isinstance(error, discord.HTTPException) and (error.status, error.code) == (413, 40005)
        assert interaction.followups == []


async def test_injected_429_is_retried_by_discord_py() -> None:
    async with running_bot() as env:
        env.fake.inject_rate_limit(method="PATCH", path=r"/messages/@original$", retry_after=0.25)
        interaction = await env.fake.invoke_command("progress", {"edits": 1}, user=env.alice, guild=env.guild)
        await interaction.wait_for_reply(lambda m: m.content == "step 1/1")
        edits = env.fake.requests_matching("PATCH", r"/messages/@original$")
        assert [r.status for r in edits] == [429, 200]
        assert edits[1].at - edits[0].at >= 0.25
        assert env.bot.probes.errors.empty()


async def test_edit_bucket_paces_discord_py_without_429() -> None:
    async with running_bot() as env:
        interaction = await env.fake.invoke_command("progress", {"edits": 7}, user=env.alice, guild=env.guild)
        await interaction.wait_for_reply(lambda m: m.content == "step 7/7", timeout=10)
        edits = env.fake.requests_matching("PATCH", r"/messages/@original$")
        assert [r.status for r in edits] == [200] * 7
        times = [r.at for r in edits]
        # Five edits fit one 2 s window; the sixth waited for the reset.
        assert max(sum(1 for t in times if start <= t < start + 2.0) for start in times) <= 5
        assert times[5] - times[0] >= 1.9


async def test_cloudflare_style_429_is_raised() -> None:
    async with running_bot() as env:
        env.fake.inject_rate_limit(method="GET", path=r"/channels/\d+$", with_via=False)
        with pytest.raises(discord.HTTPException) as caught:
            await env.bot.fetch_channel(fake_channel(env).id)
        assert caught.value.status == 429


async def test_user_reaction_reaches_bot() -> None:
    async with running_bot() as env:
        message = await env.fake.send_message(fake_channel(env), "look at this", user=env.alice)
        await env.fake.add_reaction(message, "🎲", user=env.alice)
        payload = await asyncio.wait_for(env.bot.probes.reactions.get(), timeout=15)
        assert (payload.message_id, payload.user_id, str(payload.emoji)) == (message.id, env.alice.id, "🎲")
        assert payload.member is not None and payload.member.name == "alice"
        assert payload.guild_id == env.guild.id and not payload.burst


async def test_bot_reaction_shows_up_in_state() -> None:
    async with running_bot() as env:
        channel = env.bot.get_channel(fake_channel(env).id)
        sent = await channel.send("pick one")
        await sent.add_reaction("👍")
        await sent.add_reaction("1️⃣")
        assert env.fake.message(sent.id).reactors("👍") == [env.fake.bot.id]
        assert env.fake.message(sent.id).reactors("1️⃣") == [env.fake.bot.id]
        with pytest.raises(discord.HTTPException) as caught:
            await sent.add_reaction(":thumbsup:")
        assert caught.value.code == 10014
        assert env.bot.probes.reactions.empty()  # the bot's own reactions are filtered by the bot


async def test_autocomplete_choices_are_recorded() -> None:
    async with running_bot() as env:
        interaction = await env.fake.invoke_autocomplete("style", {"name": "an"}, focused="name",
                                                         user=env.alice, guild=env.guild)
        assert await interaction.wait_until_acknowledged() == 8
        assert [c["value"] for c in interaction.autocomplete_choices] == ["anime", "analog film"]
        with pytest.raises(InvalidInvocation):
            await env.fake.invoke_command("style", {}, user=env.alice, guild=env.guild)


async def test_direct_messages_and_blocked_users() -> None:
    async with running_bot() as env:
        bob = env.fake.add_user("bob", accepts_dms=False)
        member = await env.bot.get_guild(env.guild.id).fetch_member(env.alice.id)
        await member.send("hello alice")
        (dm,) = env.fake.messages(env.fake.dm_channel(env.alice))
        assert dm.content == "hello alice"
        with pytest.raises(discord.Forbidden) as caught:
            await (await env.bot.fetch_user(bob.id)).send("hello bob")
        assert caught.value.code == 50007


async def test_resume_after_reconnect_request() -> None:
    async with running_bot() as env:
        await env.fake.request_reconnect()
        await env.fake.wait_for(lambda: any(s.resumes for s in env.fake.gateway.sessions.values()))
        interaction = await env.fake.invoke_command("style", {"name": "photo"}, user=env.alice, guild=env.guild)
        reply = await interaction.wait_for_reply()
        assert reply.content == "style photo"
        assert env.fake.gateway.identify_count == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"content": "x" * 2001}, "content"),
        ({"embeds": [{"description": "d"}] * 11}, "embeds"),
        ({"embeds": [{"description": "d" * 4097}]}, "description"),
        ({"embeds": [{"title": "t" * 257}]}, "title"),
        ({"embeds": [{"description": "d" * 4000}, {"description": "d" * 2001}]}, "embeds"),
        ({"components": [{"type": 1, "components": [{"type": 2, "style": 1, "label": "b", "custom_id": str(i)}]}
                         for i in range(6)]}, "components"),
        ({"components": [{"type": 1, "components": [{"type": 2, "style": 1, "label": "b", "custom_id": f"{i}"}
                                                    for i in range(6)]}]}, "components"),
        ({"components": [{"type": 1, "components": [{"type": 2, "style": 1, "label": "b", "custom_id": "c" * 101}]}]},
         "custom_id"),
        ({"components": [{"type": 1, "components": [{"type": 2, "style": 1, "label": "l" * 81, "custom_id": "c"}]}]},
         "label"),
    ],
)
async def test_message_limits_are_enforced(payload: dict[str, object], field: str) -> None:
    async with fake_discord() as fake:
        channel = fake.add_guild().channel_named("general")
        headers = {"Authorization": f"Bot {fake.token}"}
        async with aiohttp.ClientSession() as session:
            url = f"{fake.api_url}/channels/{channel.id}/messages"
            async with session.post(url, json=payload, headers=headers) as response:
                body = await response.json()
                assert response.status == 400 and body["code"] == 50035
                assert f'"{field}"' in json.dumps(body["errors"])
                assert response.headers["X-RateLimit-Limit"] == "5"
        assert fake.messages(channel) == []


async def test_too_many_files_and_empty_messages_are_rejected() -> None:
    async with fake_discord() as fake:
        channel = fake.add_guild().channel_named("general")
        headers = {"Authorization": f"Bot {fake.token}"}
        url = f"{fake.api_url}/channels/{channel.id}/messages"
        async with aiohttp.ClientSession() as session:
            form = aiohttp.FormData(quote_fields=False)
            form.add_field("payload_json", json.dumps({"content": "many"}))
            for index in range(11):
                form.add_field(f"files[{index}]", b"x", filename=f"{index}.txt")
            async with session.post(url, data=form, headers=headers) as response:
                assert response.status == 400 and (await response.json())["code"] == 50035
            async with session.post(url, json={"content": ""}, headers=headers) as response:
                assert response.status == 400 and (await response.json())["code"] == 50006


async def test_modal_round_trip() -> None:
    async with running_bot() as env:
        opened = await env.fake.invoke_command("prompt", {}, user=env.alice, guild=env.guild)
        assert await opened.wait_until_acknowledged() == 9
        assert opened.modal["title"] == "Edit prompt"
        submitted = await env.fake.submit_modal(opened, {"prompt-text": "a red fox"})
        reply = await submitted.wait_for_reply()
        assert reply.content == "new prompt: a red fox"


async def test_select_menu_updates_its_message() -> None:
    async with running_bot() as env:
        command = await env.fake.invoke_command("sampler", {}, user=env.alice, guild=env.guild)
        message = await command.wait_for_reply()
        chosen = await env.fake.choose_in_select(message, "sampler-select", ["euler"], user=env.alice)
        assert await chosen.wait_until_acknowledged() == 7
        assert [snapshot.content for snapshot in message.history] == ["sampler: default", "sampler: euler"]
        assert message.components == [] and message.edited_at is not None
        with pytest.raises(InvalidInvocation):
            await env.fake.choose_in_select(message, "sampler-select", ["euler"], user=env.alice)


async def test_subcommands_and_default_permissions() -> None:
    async with running_bot() as env:
        listing = await env.fake.invoke_command("model", {"family": "sdxl"}, subcommand="list",
                                                user=env.alice, guild=env.guild)
        assert (await listing.wait_for_reply()).content == "models for sdxl"
        with pytest.raises(PermissionError):
            await env.fake.invoke_command("purge", {}, user=env.alice, guild=env.guild)
        # An admin may grant the command to anyone; the bot's own check still refuses.
        override = await env.fake.invoke_command("purge", {}, user=env.alice, guild=env.guild,
                                                 ignore_default_permissions=True)
        assert isinstance(await next_error(env.bot.probes), app_commands.MissingPermissions)
        assert not override.acknowledged
        owner = env.fake.state.users[env.guild.owner_id]
        allowed = await env.fake.invoke_command("purge", {}, user=owner, guild=env.guild)
        assert (await allowed.wait_for_reply()).content == "purged"


async def test_command_in_direct_messages() -> None:
    async with running_bot() as env:
        interaction = await env.fake.invoke_command("style", {"name": "photo"}, user=env.alice)
        reply = await interaction.wait_for_reply()
        assert interaction.payload["context"] == 1 and "member" not in interaction.payload
        assert reply.channel_id == env.fake.dm_channel(env.alice).id and reply.guild_id is None


async def test_bot_fetches_edits_and_deletes_channel_messages() -> None:
    async with running_bot() as env:
        channel = env.bot.get_channel(fake_channel(env).id)
        assert (await env.bot.application_info()).owner.id == env.guild.owner_id
        sent = await channel.send("first draft")
        fetched = await channel.fetch_message(sent.id)
        await fetched.edit(content="final")
        stored = env.fake.message(sent.id)
        assert [s.content for s in stored.history] == ["first draft", "final"]
        theirs = await env.fake.send_message(fake_channel(env), "mine", user=env.alice)
        with pytest.raises(discord.Forbidden) as caught:
            await (await channel.fetch_message(theirs.id)).edit(content="hijacked")
        assert caught.value.code == 50005
        await fetched.delete()
        assert stored.deleted and [m.id for m in env.fake.messages(fake_channel(env))] == [theirs.id]
        with pytest.raises(discord.NotFound) as missing:
            await channel.fetch_message(sent.id)
        assert missing.value.code == 10008


async def test_privileged_intents_must_be_enabled() -> None:
    intents = discord.Intents.default()
    intents.members = True
    async with fake_discord(allowed_privileged_intents=0) as fake:
        fake.add_guild()
        client = discord.Client(intents=intents, **CLIENT_OPTIONS)
        with pytest.raises(discord.PrivilegedIntentsRequired):
            async with fake.run_client(client):
                pass


async def test_members_intent_chunks_the_member_list() -> None:
    intents = discord.Intents.default()
    intents.members = True
    async with fake_discord() as fake:
        guild = fake.add_guild()
        alice = fake.add_member(guild, name="alice")
        client = discord.Client(intents=intents, **CLIENT_OPTIONS)
        async with fake.run_client(client):
            seen = client.get_guild(guild.id)
            assert seen.chunked and seen.get_member(alice.id).name == "alice"
        plain = discord.Client(intents=discord.Intents.default(), **CLIENT_OPTIONS)
        async with fake.run_client(plain):
            assert plain.get_guild(guild.id).get_member(alice.id) is None  # as on Discord: no member list


async def test_first_followup_after_defer_replaces_the_thinking_message() -> None:
    async with running_bot() as env:
        interaction = await env.fake.invoke_command("quick", {}, user=env.alice, guild=env.guild)
        original = await interaction.wait_for_reply()
        assert original.content == "done" and original.ephemeral  # the defer decided ephemerality
        assert interaction.followups == []
        assert [r.kind for r in interaction.responses] == ["callback", "edit_original"]
