"""Interaction acknowledgement latency of /imagine (p50, p99) against the loopback fake Discord,
with 200 jobs already queued. Goal: p99 < 500 ms.

The real bot, discord.py client, store and tiny model run here; the queue is held (nothing is
generated) so the 200 jobs stay queued and every /imagine adds to a long queue. Latency is
measured by the fake: from dispatching INTERACTION_CREATE to receiving the defer callback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# bench/queue.py would shadow the standard library's queue module: drop this folder from the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUEUED = 200


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(commands: int) -> list[float]:
    from discord_fake import fake_discord
    from discord_support import easel_on_fake_discord
    from generation.requests import GenerationRequest
    from generation.service import ReplyTarget
    from generation.testing import write_test_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_test_model(root / "models" / "checkpoints" / "tiny")
        async with fake_discord() as fake:
            guild = fake.add_guild("Bench")
            users = [fake.add_member(guild, name=f"user{i}").user for i in range(commands)]
            for name in ("alice", "bob", "mod"):
                fake.add_member(guild, name=name)
            async with easel_on_fake_discord(root / "models", root / "data", fake=fake,
                                             queue={"per_user_queued": 10, "per_guild_queued": 1000}) as env:
                hold = asyncio.Event()
                original = env.app.service._run_batch

                async def held(batch):
                    await hold.wait()
                    await original(batch)

                env.app.service._run_batch = held
                target = ReplyTarget(frontend="cli")
                for i in range(QUEUED):
                    await env.app.service.submit(GenerationRequest(prompt=f"queued {i}", width=64, height=64, steps=4),
                                                 owner_id=10_000 + i % 40, target=target)
                latencies = []
                for i, user in enumerate(users):
                    interaction = await fake.invoke_command("imagine", {"prompt": f"a cat number {i}", "steps": 4},
                                                            user=user, guild=guild, channel=env.channel)
                    await interaction.wait_until_acknowledged(timeout=10)
                    latencies.append((interaction.acknowledged_at - interaction.created_at) * 1000)
                queued_now = len(env.app.service.queued_jobs())
                hold.set()
                env.app.service._run_batch = original
                print(f"jobs queued at the end: {queued_now}")
                return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=100)
    args = parser.parse_args()
    from generation import quiet_libraries

    quiet_libraries()
    latencies = asyncio.run(measure(args.commands))
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    print(f"/imagine acknowledgements: {len(latencies)} with {QUEUED}+ jobs queued")
    print(f"p50 {p50:.1f} ms   p99 {p99:.1f} ms   max {max(latencies):.1f} ms")
    print(f"goal p99 < 500 ms: {'PASS' if p99 < 500 else 'FAIL'}")


if __name__ == "__main__":
    main()
