"""A1111's variation seed: slerp, per-image seeds and subseeds, seed resize, infotext, batching."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from generation.engine import BatchItem
from generation.infotext import format_infotext, parse_infotext, to_request_fields
from generation.requests import GenerationRequest, request_problems
from generation.config import LimitsConfig
from generation.variations import image_noise, randn, slerp

from conftest import tiny_request


def max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a.convert("RGB"), dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16)).max())


def test_slerp_on_known_vectors():
    # shape (C=1, H=2, W=1): the norm runs along H, so each column is one 2-vector
    low = torch.tensor([[[1.0], [0.0]]])
    high = torch.tensor([[[0.0], [1.0]]])
    half = slerp(0.5, low, high)
    assert torch.allclose(half[0, :, 0], torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)
    third = slerp(1 / 3, low, high)
    assert torch.allclose(third[0, :, 0], torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]), atol=1e-6)
    assert torch.equal(slerp(0.0, low, high), low) and torch.equal(slerp(1.0, low, high), high)
    # per column (dim 1), not over the whole tensor: two columns with different angles
    low2 = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    high2 = torch.tensor([[[0.0, -1.0], [2.0, 0.0]]])
    out = slerp(0.5, low2, high2)
    assert torch.allclose(out[0, :, 0], torch.tensor([math.sqrt(0.5), 2 * math.sqrt(0.5)]), atol=1e-6)


def test_slerp_reversed_fallback_when_nearly_parallel():
    low = torch.tensor([[[1.0], [0.0]]])
    high = torch.tensor([[[2.0], [0.0]]])  # same direction: dot 1 > 0.9995
    out = slerp(0.25, low, high)
    assert torch.equal(out, low * 0.25 + high * 0.75)  # A1111's reversed weights


def test_image_noise_matches_plain_draws():
    shape = (4, 8, 8)
    assert torch.equal(image_noise(shape, 5, 9, 0.0), randn(5, shape))
    assert torch.equal(image_noise(shape, 5, 9, 1.0), randn(9, shape))
    mixed = image_noise(shape, 5, 9, 0.3)
    assert torch.equal(mixed, slerp(0.3, randn(5, shape), randn(9, shape)))


def test_seed_resize_pastes_centred():
    shape = (4, 8, 8)
    smaller = image_noise(shape, 7, None, 0.0, resize_from=(32, 48))  # noise 4x6x4 (h=6, w=4)
    full, small = randn(7, shape), randn(7, (4, 6, 4))
    expected = full.clone()
    expected[:, 1:7, 2:6] = small
    assert torch.equal(smaller, expected)
    larger = image_noise(shape, 7, None, 0.0, resize_from=(96, 64))  # noise 4x8x12: centre crop of width
    assert torch.equal(larger, randn(7, (4, 8, 12))[:, :, 2:10])


def test_per_image_seeds_and_subseeds_of_a_count_3_job():
    request = tiny_request(seed=100, subseed=200, subseed_strength=0.4, count=3)
    assert request.seeds() == [100, 100, 100]
    assert request.subseeds() == [200, 201, 202]
    plain = tiny_request(seed=100, count=3)
    assert plain.seeds() == [100, 101, 102]
    resolved = tiny_request(seed=-1, subseed=-1, subseed_strength=0.5).with_resolved_seed(random.Random(1))
    assert resolved.seed >= 0 and resolved.subseed >= 0
    assert tiny_request(subseed=-1).with_resolved_seed().subseed == -1  # strength 0: left random


def test_request_problems():
    limits = LimitsConfig()
    assert request_problems(tiny_request(subseed=3, subseed_strength=0.5, seed_resize_from_w=64,
                                         seed_resize_from_h=128), limits) == []
    assert any("variation strength" in p for p in request_problems(tiny_request(subseed_strength=1.5), limits))
    assert any("variation seed" in p for p in request_problems(tiny_request(subseed=-5), limits))
    assert any("both" in p for p in request_problems(tiny_request(seed_resize_from_w=64), limits))
    assert any("multiple of 8" in p for p in request_problems(
        tiny_request(seed_resize_from_w=65, seed_resize_from_h=64), limits))
    assert GenerationRequest.from_dict(tiny_request(subseed=3, subseed_strength=0.5).to_dict()).subseed == 3


def test_infotext_keys_written_in_a1111_order_and_read_back():
    text = format_infotext(prompt="p", negative_prompt="", steps=20, sampler="Euler", schedule_type=None,
                           cfg_scale=7.0, seed=10, width=512, height=512, model="m", variation_seed=33,
                           variation_seed_strength=0.35, seed_resize_from=(640, 448), denoising_strength=0.5,
                           version="v")
    assert ("Seed: 10, Size: 512x512, Model: m, Variation seed: 33, Variation seed strength: 0.35, "
            "Seed resize from: 640x448, Denoising strength: 0.5") in text
    fields = to_request_fields(parse_infotext(text))
    assert (fields["subseed"], fields["subseed_strength"]) == (33, 0.35)
    assert (fields["seed_resize_from_w"], fields["seed_resize_from_h"]) == (640, 448)
    plain = format_infotext(prompt="p", negative_prompt="", steps=20, sampler="Euler", schedule_type=None,
                            cfg_scale=7.0, seed=10, width=512, height=512, variation_seed=33,
                            variation_seed_strength=0.0, version="v")
    assert "Variation" not in plain and "Seed resize" not in plain


def test_strength_0_equals_plain_seed(engine):
    plain = engine.generate(tiny_request(seed=42))[0]
    varied = engine.generate(tiny_request(seed=42, subseed=7, subseed_strength=0.0))[0]
    assert max_diff(plain.image, varied.image) == 0
    assert "Variation" not in varied.infotext


def test_strength_1_equals_the_subseeds_plain_image(engine):
    plain = engine.generate(tiny_request(seed=77, sampler="Euler"))[0]
    varied = engine.generate(tiny_request(seed=42, subseed=77, subseed_strength=1.0, sampler="Euler"))[0]
    assert max_diff(plain.image, varied.image) == 0
    assert varied.seed == 42 and "Seed: 42, " in varied.infotext
    assert "Variation seed: 77, Variation seed strength: 1.0," in varied.infotext


def test_count_3_variation_job_images_and_infotext(engine):
    images = engine.generate(tiny_request(seed=42, subseed=500, subseed_strength=0.5, count=3))
    assert [image.seed for image in images] == [42, 42, 42]
    for i, image in enumerate(images):
        fields = to_request_fields(parse_infotext(image.infotext))
        assert (fields["seed"], fields["subseed"], fields["subseed_strength"]) == (42, 500 + i, 0.5)
        alone = engine.generate(tiny_request(seed=42, subseed=500 + i, subseed_strength=0.5))[0]
        assert max_diff(image.image, alone.image) <= 1
    assert max_diff(images[0].image, images[1].image) > 0


def test_seed_resize_changes_the_image_and_is_recorded(engine):
    plain = engine.generate(tiny_request(seed=42))[0]
    resized = engine.generate(tiny_request(seed=42, seed_resize_from_w=96, seed_resize_from_h=64))[0]
    assert max_diff(plain.image, resized.image) > 0
    assert "Seed resize from: 96x64" in resized.infotext
    assert "Variation" not in resized.infotext


@pytest.mark.parametrize("sampler", ["Euler", "Euler a"])
def test_batched_variation_job_equals_its_alone_run(engine, sampler):
    requests = [tiny_request(seed=5, sampler=sampler),
                tiny_request(seed=9, subseed=11, subseed_strength=0.6, count=2, sampler=sampler,
                             seed_resize_from_w=64, seed_resize_from_h=96)]
    assert engine.batch_key(requests[0]) == engine.batch_key(requests[1])
    batched = engine.run_batch([BatchItem(key=i, request=r) for i, r in enumerate(requests)])
    for i, request in enumerate(requests):
        alone = engine.run_batch([BatchItem(key="x", request=request)])["x"]
        for a, b in zip(batched[i], alone):
            assert max_diff(a.image, b.image) <= 1
            assert a.infotext == b.infotext


def test_img2img_rejects_variations():
    problems = request_problems(tiny_request(mode="img2img", init_image="x.png", subseed_strength=0.5), LimitsConfig())
    assert any("txt2img only" in p for p in problems)
