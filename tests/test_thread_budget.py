"""The thread budget: generating on the CPU, torch leaves the event loop a core, so Discord's
heartbeat and every command stay on time while an image is being made."""

from __future__ import annotations

import asyncio

import torch

from discord_fake import fake_discord
from discord_support import easel_on_fake_discord
from generation.pipelines import cpu_thread_budget
from generation.service import JobFinished, JobStarted


def test_every_core_but_one_unless_configured():
    assert cpu_thread_budget(0, cores=2) == 1
    assert cpu_thread_budget(0, cores=1) == 1
    assert cpu_thread_budget(0, cores=16) == 15
    assert cpu_thread_budget(3, cores=16) == 3


async def test_the_gateway_heartbeat_keeps_time_while_the_cpu_generates(models_dir, tmp_path):
    interval = 0.5
    before = torch.get_num_threads()
    async with fake_discord(heartbeat_interval=interval) as fake:
        guild = fake.add_guild("Busy")
        for name in ("alice", "bob", "mod"):
            fake.add_member(guild, name=name)
        async with easel_on_fake_discord(models_dir, tmp_path, fake=fake, limits={"max_steps": 400}) as env:
            assert torch.get_num_threads() == cpu_thread_budget(0)
            events = env.app.service.subscribe()
            await env.fake.invoke_command("imagine", {"prompt": "a long job", "steps": 400, "width": 256,
                                                      "height": 256}, user=env.alice, guild=env.guild,
                                          channel=env.channel)
            async for event in events:
                if isinstance(event, JobStarted):
                    break
            loop = asyncio.get_running_loop()
            start = loop.time()
            await asyncio.sleep(5 * interval * 2)  # ten heartbeats' worth of generating
            busy_until = loop.time()
            running = await env.app.store.jobs.list_for_owner(env.alice.id)
            assert running[0].status == "running"  # the CPU was generating all along
            beats = [at for at in fake.gateway.heartbeats if start <= at <= busy_until]
            gaps = [b - a for a, b in zip(beats, beats[1:])]
            assert len(beats) >= 8 and max(gaps) < interval * 1.6, gaps
            await env.app.service.cancel(running[0].id, by_user_id=env.alice.id)
            async for event in events:
                if not isinstance(event, (JobStarted, JobFinished)) and getattr(event, "job_id", None):
                    if event.__class__.__name__ == "JobCanceled":
                        break
    assert torch.get_num_threads() == before  # the budget ends with the bot
