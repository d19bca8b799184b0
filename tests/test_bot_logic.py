"""The bot's pure logic, without Discord: rules, throttling, presenting, formatting, settings, drafts, uploads."""

from __future__ import annotations

import asyncio
import random
import types
from dataclasses import replace

import pytest

from bot import throttle
from bot.drafts import DraftError, draft_from_infotext
from bot.formatting import (clip, escape, format_duration, join_within, one_line, page_count, queue_line,
                            settings_lines)
from bot.model_admin import MAX_EMBEDDING_BYTES, check_upload_size, embedding_trigger
from bot.preferences import (InvalidSetting, allowed_channels_after, banned_words_after, guild_limit_bounds,
                             guild_limit_changes, member_setting_changes)
from bot.presenter import fit_files, progress_bar
from bot.queue_status import ThroughputMeter, estimate_start_s
from generation.config import Config, DefaultsConfig, LimitsConfig
from generation.errors import EmbeddingError
from generation.infotext import parse_infotext, to_request_fields
from generation.requests import GenerationRequest
from generation.rules import (RuleBroken, check_channel, guild_limit_problems, resolve_options,
                              validated_member_setting)

DEFAULTS = DefaultsConfig()
LIMITS = LimitsConfig()


class FakeClock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------------- generation/rules.py


def test_resolve_options_prefers_typed_then_member_then_guild_then_config():
    member = {"steps": 30, "sampler": "DPM++ 2M", "schedule": "Karras", "negative_prompt": "blurry"}
    guild = {"defaults": {"steps": 12, "width": 768, "cfg_scale": 5.0}}
    resolved = resolve_options({"steps": 8, "width": None}, member=member, guild=guild, defaults=DEFAULTS)
    assert resolved["steps"] == 8  # typed
    assert (resolved["sampler"], resolved["schedule"], resolved["negative_prompt"]) == ("DPM++ 2M", "Karras", "blurry")
    assert (resolved["width"], resolved["cfg_scale"]) == (768, 5.0)  # the guild's defaults
    assert (resolved["height"], resolved["count"], resolved["clip_skip"]) == (512, 1, 1)  # config.toml


def test_the_checkpoints_size_stands_in_for_the_configs_only():
    guild = {"defaults": {"width": 768}}
    resolved = resolve_options({}, member={}, guild=guild, defaults=DEFAULTS, size=(1024, 1024))
    assert (resolved["width"], resolved["height"]) == (768, 1024)  # the guild chose a width, not a height
    resolved = resolve_options({"height": 640}, member={"width": 896}, guild={}, defaults=DEFAULTS, size=(1024, 1024))
    assert (resolved["width"], resolved["height"]) == (896, 640)


def test_a_typed_sampler_brings_its_own_schedule():
    member = {"sampler": "DPM++ 2M", "schedule": "Karras"}
    resolved = resolve_options({"sampler": "Euler"}, member=member, guild={}, defaults=DEFAULTS)
    assert (resolved["sampler"], resolved["schedule"]) == ("Euler", "Automatic")
    resolved = resolve_options({"sampler": "Euler", "schedule": "Exponential"}, member=member, guild={},
                               defaults=DEFAULTS)
    assert resolved["schedule"] == "Exponential"


def test_server_limits_are_named_together():
    request = GenerationRequest(prompt="a cat", steps=30, width=1024, height=512, count=3)
    guild = {"max_steps": 20, "max_width": 768, "max_height": 512, "max_count": 2}
    problems = guild_limit_problems(request, guild)
    assert problems == ["steps is at most 20 on this server", "width is at most 768 on this server",
                        "count is at most 2 on this server"]
    assert guild_limit_problems(replace(request, steps=20, width=768, count=2), guild) == []
    assert guild_limit_problems(request, {}) == []


def test_defaults_nobody_chose_are_clamped_to_the_servers_limits():
    guild = {"max_steps": 10, "max_width": 300, "max_count": 1, "defaults": {"count": 3}}
    resolved = resolve_options({}, member={"steps": 30}, guild=guild, defaults=DEFAULTS, limits=LIMITS)
    assert (resolved["steps"], resolved["width"], resolved["count"]) == (10, 296, 1)  # width: a multiple of 8
    typed = resolve_options({"steps": 30}, member={}, guild=guild, defaults=DEFAULTS, limits=LIMITS)
    assert typed["steps"] == 30  # what the member typed is checked, not changed


def test_channel_rule():
    check_channel({}, 5)
    check_channel({"allowed_channels": [5, 6]}, 6)
    with pytest.raises(RuleBroken, match="<#5>, <#6>"):
        check_channel({"allowed_channels": ["5", "6"]}, 7)


def test_member_setting_types():
    assert validated_member_setting("steps", "12") == 12
    with pytest.raises(RuleBroken, match="steps must be a whole number"):
        validated_member_setting("steps", "many")
    with pytest.raises(RuleBroken, match="unknown setting"):
        validated_member_setting("seed", 1)


# ------------------------------------------------------------------------------------------- bot/throttle.py


@pytest.fixture
def fake_time(monkeypatch):
    """The editor's clock and its sleeps, both fake: a sleep advances the clock and is recorded."""
    clock = FakeClock(100.0)
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds):
        sleeps.append(round(seconds, 6))
        clock.now += seconds
        await real_sleep(0)

    patched = types.SimpleNamespace(**{name: getattr(asyncio, name) for name in ("Event", "create_task",
                                                                                 "CancelledError", "Task")})
    patched.sleep = sleep
    monkeypatch.setattr(throttle, "asyncio", patched)
    return clock, sleeps


async def settle():
    for _ in range(20):
        await asyncio.sleep(0)


async def test_latest_frame_editor_edits_at_once_then_keeps_only_the_newest_frame(fake_time):
    clock, sleeps = fake_time
    edits: list[str] = []

    async def edit(frame):
        edits.append(frame)

    editor = throttle.LatestFrameEditor(edit, interval=2.0, clock=clock)
    editor.offer("a")
    await settle()
    assert edits == ["a"] and sleeps == []
    clock.now += 0.5
    for frame in ("b", "c", "d"):
        editor.offer(frame)  # never waits
    await settle()
    assert edits == ["a", "d"] and sleeps == [1.5]  # the rest of the interval, then only the newest
    assert editor.next_edit_at == pytest.approx(104.0)
    clock.now += 10
    editor.offer("e")  # long after the last edit: no wait
    await settle()
    assert edits == ["a", "d", "e"] and sleeps == [1.5] and editor.edits == 3
    await editor.close()


async def test_latest_frame_editor_survives_a_failed_edit_and_close_drops_pending_frames(fake_time):
    clock, sleeps = fake_time
    edits: list[str] = []

    async def edit(frame):
        if frame == "bad":
            raise RuntimeError("Discord said no")
        edits.append(frame)

    editor = throttle.LatestFrameEditor(edit, interval=1.0, clock=clock)
    editor.offer("bad")
    await settle()
    clock.now += 5
    editor.offer("good")
    await settle()
    assert edits == ["good"] and editor.edits == 1
    await editor.close()
    editor.offer("late")  # a new task starts only with a new offer after close; the old frames are gone
    await settle()
    assert edits == ["good", "late"]
    await editor.close()


# ------------------------------------------------------------------------------------------- bot/presenter.py


def test_fit_files_keeps_what_fits_in_order_and_at_most_ten():
    assert fit_files([4, 4, 4], 10) == [0, 1]
    assert fit_files([11, 3, 3], 10) == [1, 2]  # one too large is skipped, the rest still go
    assert fit_files([1] * 12, 100) == list(range(10))
    assert fit_files([], 10) == []


def test_progress_bar():
    assert progress_bar(0, 10) == "░" * 16
    assert progress_bar(10, 10) == "█" * 16
    assert progress_bar(5, 10) == "█" * 8 + "░" * 8
    assert progress_bar(0, 0, width=4) == "░░░░"  # a zero total never divides by zero


# ------------------------------------------------------------------------------------------- bot/formatting.py


def test_clip_and_one_line():
    assert clip("abcdef", 4) == "abc…" and clip("abc", 3) == "abc" and clip("abc", 0) == ""
    assert one_line("a\n\n  b\tc  ", 10) == "a b c"


def test_join_within_never_exceeds_the_limit_and_says_what_was_left_out():
    rng = random.Random(1)
    for _ in range(300):
        lines = ["x" * rng.randint(0, 60) for _ in range(rng.randint(0, 30))]
        limit = rng.randint(20, 400)
        text = join_within(lines, limit)
        assert len(text) <= limit
        if text != "\n".join(lines):
            assert text.endswith("more")
    assert join_within(["a", "b"], 100) == "a\nb"
    assert join_within(["aaaa", "bbbb", "cccc"], 20) == "aaaa\n… and 2 more"


def test_escape_shows_markdown_and_mentions_as_written():
    assert escape("**bold** _it_ `code`") == r"\*\*bold\*\* \_it\_ \`code\`"
    assert "@everyone" not in escape("hi @everyone")


@pytest.mark.parametrize(("seconds", "text"), [(5, "under a minute"), (90, "about 2 min"), (3600, "about 1 h"),
                                               (4800, "about 1 h 20 min"), (float("nan"), "unknown")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_page_count_and_queue_line():
    assert (page_count(0, 10), page_count(10, 10), page_count(11, 10)) == (1, 1, 2)
    assert "running now" in queue_line(job_id=3, prompt="a cat", position=0, starts_in_s=None)
    line = queue_line(job_id=4, prompt="a *cat*\nwith a hat", position=2, starts_in_s=300)
    assert line == r"**#4** · ⏳ position 2, starts in about 5 min · a \*cat\* with a hat"


def test_settings_lines_mark_defaults():
    lines = settings_lines({"steps": 30}, {"steps": "Steps", "sampler": "Sampler", "negative_prompt": "Negative"},
                           fallback={"steps": 20, "sampler": "Euler a", "negative_prompt": ""})
    assert lines == ["**Steps:** 30", "**Sampler:** Euler a *(default)*", "**Negative:** *(none)*"]


# ------------------------------------------------------------------------------------------- bot/queue_status.py


def test_throughput_meter_learns_seconds_per_cost_and_counts_batches_once():
    clock = FakeClock()
    meter = ThroughputMeter(decay=1.0, clock=clock)
    assert meter.seconds_per_cost is None and estimate_start_s(1000, meter.seconds_per_cost) is None
    meter.started(1, cost=100)
    meter.started(2, cost=300)  # the same batch
    assert meter.running_cost() == 400
    clock.now = 8.0
    meter.finished(1)
    meter.finished(2)  # finished together: its time was already counted
    assert meter.seconds_per_cost == pytest.approx(8.0 / 400)
    meter.started(3, cost=50)
    clock.now = 20.0
    meter.ended(3)  # canceled: says nothing about speed
    assert meter.seconds_per_cost == pytest.approx(8.0 / 400) and meter.running_cost() == 0
    meter.started(4, cost=100)
    clock.now = 22.0
    meter.finished(4)
    assert meter.seconds_per_cost == pytest.approx(10.0 / 500)
    assert estimate_start_s(1000, meter.seconds_per_cost) == pytest.approx(20.0)


def test_throughput_meter_follows_recent_speed():
    clock = FakeClock()
    meter = ThroughputMeter(decay=0.5, clock=clock)
    for job_id in range(1, 20):
        meter.started(job_id, cost=100)
        clock.now += 1.0 if job_id < 10 else 10.0  # the machine got ten times slower
        meter.finished(job_id)
    assert meter.seconds_per_cost == pytest.approx(0.1, rel=0.01)


# ------------------------------------------------------------------------------------------- bot/preferences.py


def test_member_settings_are_canonical_and_checked():
    changes = member_setting_changes(current={}, limits=LIMITS, defaults=DEFAULTS, sampler="dpm++ 2m karras",
                                     steps=25, width=640, cfg_scale=6, negative_prompt="  blurry ")
    assert changes == {"sampler": "DPM++ 2M", "schedule": "Karras", "steps": 25, "width": 640, "cfg_scale": 6.0,
                       "negative_prompt": "blurry"}
    # only a schedule: checked against the member's sampler
    assert member_setting_changes(current={"sampler": "DPM++ 2M"}, limits=LIMITS, defaults=DEFAULTS,
                                  schedule="exponential") == {"schedule": "Exponential"}
    for cleared in (" ", "-"):
        assert member_setting_changes(current={}, limits=LIMITS, defaults=DEFAULTS, negative_prompt=cleared) == \
            {"negative_prompt": None}
    with pytest.raises(InvalidSetting) as caught:
        member_setting_changes(current={"height": 1536}, limits=LIMITS, defaults=DEFAULTS, sampler="DPM++ 2M Karras",
                               schedule="Exponential", steps=0, width=1500, cfg_scale=99)
    message = str(caught.value)
    assert "names both Karras and Exponential" in message and "steps must be from 1 to 60" in message
    assert "width must be a multiple of 8" in message and "CFG scale must be from 0 to 30" in message
    with pytest.raises(InvalidSetting, match="1536x1536 is 2,359,296 pixels"):
        member_setting_changes(current={"height": 1536}, limits=LIMITS, defaults=DEFAULTS, width=1536)


def test_guild_limits_stay_within_the_bots_own():
    config = Config()
    assert guild_limit_bounds(config)["max_queued"] == (1, config.queue.per_guild_queued)
    assert guild_limit_changes({"max_steps": 20, "max_count": None}, config=config) == {"max_steps": 20}
    with pytest.raises(InvalidSetting) as caught:
        guild_limit_changes({"max_steps": 61, "max_queued_per_member": 0, "max_width": 2048}, config=config)
    assert "max_steps must be from 1 to 60" in str(caught.value)
    assert "max_queued_per_member must be from 1 to 5" in str(caught.value)
    assert "max_width must be from 64 to 1536" in str(caught.value)


def test_channel_and_banned_word_lists():
    assert allowed_channels_after(None, 5, allowed=True) == [5]
    assert allowed_channels_after([5], 5, allowed=True) == [5]
    assert allowed_channels_after(["5", 6], 5, allowed=False) == [6]
    assert banned_words_after(None, "  Big   DOG ", add=True) == ["big dog"]
    assert banned_words_after(["big dog"], "BIG dog", add=True) == ["big dog"]
    assert banned_words_after(["big dog", "cat"], "big dog", add=False) == ["cat"]
    with pytest.raises(InvalidSetting, match="not on the list"):
        banned_words_after(["cat"], "dog", add=False)
    with pytest.raises(InvalidSetting, match="empty"):
        banned_words_after([], "   ", add=True)


# ------------------------------------------------------------------------------------------- bot/drafts.py

FOREIGN = ("masterpiece, 1girl\nNegative prompt: lowres\nSteps: 150, Sampler: Warp Drive, Schedule type: Karras, "
           "CFG scale: 7.5, Seed: 2387412923, Size: 1536x1536, Model hash: 7f96a1a9ca, Model: anything-v5, "
           "Clip skip: 2, Hires upscale: 2")


def test_draft_keeps_what_this_bot_can_use_and_names_the_rest():
    fields = to_request_fields(parse_infotext(FOREIGN))
    draft = draft_from_infotext(fields, limits=LIMITS, checkpoints={"tiny": "5355509e4d"})
    assert draft.given == {"prompt": "masterpiece, 1girl", "negative_prompt": "lowres", "count": 1,
                           "cfg_scale": 7.5, "seed": 2387412923, "clip_skip": 2}
    ignored = " | ".join(draft.ignored)
    assert "sampler 'Warp Drive'" in ignored and "model 'anything-v5'" in ignored
    assert "steps 150 (allowed: 1-60)" in ignored and "size 1536x1536" in ignored


def test_draft_leaves_out_loras_it_does_not_have_and_names_them():
    text = "a cat <lora:fluffy:0.8>, (soft:1.2)\nNegative prompt: <lora:bad:1> lowres\nSteps: 20, Sampler: Euler, Seed: 5"
    draft = draft_from_infotext(to_request_fields(parse_infotext(text)), limits=LIMITS, checkpoints={})
    assert (draft.given["prompt"], draft.given["negative_prompt"]) == ("a cat , (soft:1.2)", "<lora:bad:1> lowres")
    assert list(draft.ignored) == ["<lora:fluffy:0.8> (no LoRA here by that name)"]
    with pytest.raises(DraftError, match="no prompt"):
        draft_from_infotext({"prompt": "<lora:only:1>", "negative_prompt": ""}, limits=LIMITS, checkpoints={})


def test_draft_finds_models_by_name_or_hash_and_resolves_samplers():
    text = FOREIGN.replace("Warp Drive", "DPM++ 2M").replace("Steps: 150", "Steps: 30").replace("1536x1536", "512x768")
    fields = to_request_fields(parse_infotext(text))
    by_hash = draft_from_infotext(fields, limits=LIMITS, checkpoints={"my-anything": "7F96A1A9CA", "other": None})
    assert by_hash.given["checkpoint"] == "my-anything" and by_hash.ignored == ()
    assert (by_hash.given["sampler"], by_hash.given["schedule"], by_hash.given["steps"]) == ("DPM++ 2M", "Karras", 30)
    by_name = draft_from_infotext(fields, limits=LIMITS, checkpoints={"anything-v5": None})
    assert by_name.given["checkpoint"] == "anything-v5"
    with pytest.raises(DraftError, match="no prompt"):
        draft_from_infotext({"prompt": "  ", "negative_prompt": ""}, limits=LIMITS, checkpoints={})


async def test_saving_a_draft_deletes_drafts_past_their_lifetime(tmp_path):
    from datetime import datetime, timedelta, timezone

    from bot.drafts import Draft, load_draft, save_draft
    from generation.config import RetentionConfig
    from storage import open_store

    retention = RetentionConfig(drafts_days=30)
    lifetime = timedelta(days=30)
    store = await open_store(tmp_path / "easel.db")
    try:
        draft = Draft(given={"prompt": "a cat"})
        start = datetime(2026, 1, 1, tzinfo=timezone.utc)
        old = await save_draft(store, draft, owner_id=1, now=start, retention=retention)
        await store.settings.set("other:setting", {"created_at": start.isoformat()})  # not a draft: stays
        kept = await save_draft(store, draft, owner_id=1, now=start + lifetime - timedelta(days=1), retention=retention)
        assert await load_draft(store, old) is not None  # not yet too old
        newest = await save_draft(store, draft, owner_id=2, now=start + lifetime + timedelta(seconds=1),
                                  retention=retention)
        assert await load_draft(store, old) is None
        assert (await load_draft(store, kept)).given == {"prompt": "a cat"}
        assert await load_draft(store, newest) is not None
        assert await store.settings.get("other:setting") is not None
    finally:
        await store.close()


async def test_a_member_keeps_a_bounded_number_of_drafts(tmp_path):
    from datetime import datetime, timedelta, timezone

    from bot.drafts import Draft, load_draft, save_draft
    from generation.config import RetentionConfig
    from storage import open_store

    retention = RetentionConfig(max_drafts_per_member=2)
    start = datetime.now(timezone.utc)
    store = await open_store(tmp_path / "easel.db")
    try:
        ids = [await save_draft(store, Draft(given={"prompt": f"p{i}"}), owner_id=1, retention=retention,
                                now=start + timedelta(seconds=i)) for i in range(4)]
        other = await save_draft(store, Draft(given={"prompt": "x"}), owner_id=2, retention=retention, now=start)
        assert [await load_draft(store, i) is not None for i in ids] == [False, False, True, True]
        assert await load_draft(store, other) is not None
    finally:
        await store.close()


def test_a_draft_refuses_a_prompt_over_the_limit():
    limits = LimitsConfig(max_prompt_chars=50)
    with pytest.raises(DraftError, match="60 characters; the limit here is 50"):
        draft_from_infotext({"prompt": "a" * 60, "negative_prompt": ""}, limits=limits, checkpoints={})


# ------------------------------------------------------------------------------------------- bot/model_admin.py


@pytest.mark.parametrize("filename", ["style.pt", "style.bin", "style", "../evil.safetensors", "a/b.safetensors",
                                      "two words.safetensors", ".hidden.safetensors", "bad!.safetensors",
                                      "x" * 65 + ".safetensors"])
def test_embedding_file_names_are_refused_unless_one_safe_word(filename):
    with pytest.raises(EmbeddingError):
        embedding_trigger(filename)


def test_embedding_trigger_and_size():
    assert embedding_trigger("my-style_v2.1.SafeTensors") == "my-style_v2.1"
    check_upload_size(MAX_EMBEDDING_BYTES)
    with pytest.raises(EmbeddingError, match="at most 1024 KiB"):
        check_upload_size(MAX_EMBEDDING_BYTES + 1)
    with pytest.raises(EmbeddingError, match="empty"):
        check_upload_size(0)


def test_info_shows_a1111s_inpaint_keys():
    from bot.cogs.info import info_embed
    from bot.drafts import Draft

    text = ("a cat\nSteps: 20, Sampler: Euler, Seed: 5, Size: 512x512, Denoising strength: 0.75, "
            "Mask mode: Inpaint not masked, Mask blur: 8, Inpaint area: Only masked, Masked area padding: 16, "
            "Masked content: latent noise")
    embed = info_embed(to_request_fields(parse_infotext(text)), Draft(given={}), "cat.png")
    fields = {field.name: field.value for field in embed.fields}
    assert (fields["Mask blur"], fields["Masked content"], fields["Masked area padding"]) == ("8", "latent noise", "16")
    assert (fields["Mask mode"], fields["Inpaint area"]) == ("Inpaint not masked", "Only masked")


def test_queue_positions_are_coalesced_into_steps():
    """A job 1,000 places back that moves to the front one pick at a time changes its text only a
    handful of times (each change is one message edit on Discord)."""
    from bot.formatting import queue_position_text

    assert queue_position_text(3) == "⏳ Queued — position 3"
    assert queue_position_text(10) == "⏳ Queued — position 10"
    assert queue_position_text(11) == "⏳ Queued — within the first 20"
    assert queue_position_text(999) == "⏳ Queued — within the first 1,000"
    assert queue_position_text(20001) == "⏳ Queued — 10,000+ waiting ahead"
    texts = [queue_position_text(position) for position in range(1000, 0, -1)]
    changes = sum(1 for before, after in zip(texts, texts[1:]) if before != after)
    assert changes == 15  # 1000 -> 500 -> 200 -> 100 -> 50 -> 20 -> 10, 9, ..., 1
