"""Composable prompts (`a cat AND a dog:0.5`) on the tiny model: A1111's combination of the parts."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

from generation.engine import BatchItem
from generation.errors import InvalidRequest
from generation.scheduler import job_cost

from conftest import tiny_request


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def image(engine, **changes) -> Image.Image:
    return engine.generate(tiny_request(seed=7, steps=5, **changes))[0].image


@contextlib.contextmanager
def unet_calls(engine):
    """Records what the UNet itself computes on (after easel's hooks): (encoder states, prediction)."""
    unet = engine.cache.get(engine.registry.resolve("tiny")).base.unet
    calls = []
    forward = unet.forward

    def recording(*args, **kwargs):
        output = forward(*args, **kwargs)
        calls.append((kwargs["encoder_hidden_states"].clone(), output[0].clone()))
        return output

    unet.forward = recording
    try:
        yield calls
    finally:
        del unet.forward


def test_weights_follow_a1111s_combination(engine):
    cat = image(engine, prompt="a cat")
    # uncond + 14 * 0.5 * (cat - uncond) is the plain prompt at CFG 7
    assert max_diff(image(engine, prompt="a cat:0.5", cfg_scale=14), cat) <= 1
    # two halves of one prompt add up to the whole; a zero-weight part contributes nothing
    assert max_diff(image(engine, prompt="a cat:0.5 AND a cat:0.5"), cat) <= 1
    assert max_diff(image(engine, prompt="a cat AND a dog:0"), cat) <= 1
    both = image(engine, prompt="a cat AND a dog")
    assert max_diff(both, cat) > 8 and max_diff(both, image(engine, prompt="a dog")) > 8
    assert max_diff(both, image(engine, prompt="a cat AND a dog:0.3")) > 0


def test_without_guidance_the_parts_still_combine(engine):
    # CFG 1 makes the pipeline skip the negative; easel evaluates it for the parts, as A1111 does
    # uncond + 8 * (cat - uncond) at CFG 1 is the plain prompt at CFG 8
    strong = image(engine, prompt="a cat:8", cfg_scale=1)
    assert max_diff(strong, image(engine, prompt="a cat", cfg_scale=8)) <= 1
    assert max_diff(strong, image(engine, prompt="a cat", cfg_scale=1)) > 8
    assert max_diff(image(engine, prompt="a cat AND a dog:0", cfg_scale=1), image(engine, prompt="a cat", cfg_scale=1)) <= 1


def test_the_unet_sees_the_negative_and_every_part_each_step(engine):
    with unet_calls(engine) as plain:
        image(engine, prompt="a red cat", negative_prompt="blurry")
    with unet_calls(engine) as dog:
        image(engine, prompt="a dog", negative_prompt="blurry")
    with unet_calls(engine) as blue:
        image(engine, prompt="a blue cat", negative_prompt="blurry")
    with unet_calls(engine) as composed:
        image(engine, prompt="a [red:blue:2] cat AND a dog:0.5", negative_prompt="blurry")
    assert len(composed) == 5
    for step, (states, _) in enumerate(composed):
        assert states.shape[0] == 3  # negative, first part, second part
        assert torch.equal(states[0], plain[step][0][0])  # pipeline order: [negative; positive]
        assert torch.equal(states[1], (plain if step <= 2 else blue)[step][0][1])  # editing inside a part
        assert torch.equal(states[2], dog[step][0][1])


def test_batched_composable_and_plain_jobs_each_match_alone(engine):
    requests = [tiny_request(prompt="a cat AND a dog:0.5", seed=1, steps=5),
                tiny_request(prompt="a red house", seed=2, steps=5, count=2),
                tiny_request(prompt="sky AND [sea|land] AND sun:-0.4", seed=3, steps=5, negative_prompt="ugly")]
    assert len({engine.batch_key(r) for r in requests}) == 1
    with unet_calls(engine) as calls:
        batched = engine.run_batch([BatchItem(key=i, request=r) for i, r in enumerate(requests)])
    assert {states.shape[0] for states, _ in calls} == {4 + 2 + 2 + 3}  # 4 negatives, then every part of 4 images
    for i, request in enumerate(requests):
        for together, alone in zip(batched[i], engine.generate(request)):
            assert max_diff(together.image, alone.image) <= 1
            assert together.infotext.startswith(request.prompt + "\n")  # recorded as written


@pytest.mark.parametrize("sampler", ["Heun", "DPM++ 2M"])
def test_other_samplers_and_modes(engine, sampler, tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (40, 120, 200)).save(init)
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 64), 255).save(mask)
    for mode in ("txt2img", "img2img", "inpaint"):
        extra = {} if mode == "txt2img" else {"init_image": str(init), "strength": 0.8}
        if mode == "inpaint":
            extra["mask"] = str(mask)
        composed = image(engine, prompt="a cat AND a dog", sampler=sampler, mode=mode, **extra)
        plain = image(engine, prompt="a cat", sampler=sampler, mode=mode, **extra)
        halves = image(engine, prompt="a cat:0.5 AND a cat:0.5", sampler=sampler, mode=mode, **extra)
        assert max_diff(composed, plain) > 0, mode
        assert max_diff(halves, plain) <= 1, mode


def test_parts_are_limited_counted_and_cost_more(engine):
    with pytest.raises(InvalidRequest, match="the prompt has 5 parts joined by AND; the limit is 4"):
        engine.generate(tiny_request(prompt="a AND b AND c AND d AND e"))
    long_part = ", ".join(f"word{i}" for i in range(60))
    assert engine.token_count(f"a cat AND {long_part}") == engine.token_count(long_part)  # the longest part
    assert engine.prompt_chunks(tiny_request(prompt=f"a cat AND {long_part}")) == engine.prompt_chunks(
        tiny_request(prompt=long_part)) > 1
    assert engine.batch_key(tiny_request(prompt=f"a cat AND {long_part}")) != engine.batch_key(tiny_request(prompt="a cat"))
    assert job_cost(512, 512, 20, 1, prompt_parts=3) == 2 * job_cost(512, 512, 20, 1)
