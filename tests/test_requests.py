import random

import pytest

from generation.config import DefaultsConfig, LimitsConfig
from generation.errors import InvalidRequest
from generation.requests import MAX_SEED, GenerationRequest, default_size, request_problems, validate_request

LIMITS = LimitsConfig()


def test_valid_request_passes_unchanged():
    request = GenerationRequest(prompt="a cat", width=512, height=768, steps=20, seed=5, count=2)
    assert validate_request(request, LIMITS) is request


@pytest.mark.parametrize("changes, expected", [
    (dict(prompt="  "), "the prompt is empty"),
    (dict(width=500), "width must be a multiple of 8"),
    (dict(height=32), "height must be from 64 to 1536"),
    (dict(width=1536, height=1536), "the limit is 1,048,576"),
    (dict(steps=0), "steps must be a whole number from 1 to 60"),
    (dict(steps=2.5), "steps must be a whole number"),
    (dict(count=9), "count must be from 1 to 4"),
    (dict(cfg_scale=31), "CFG scale must be from 0 to 30"),
    (dict(seed=-2), "seed must be -1 (random)"),
    (dict(seed=MAX_SEED), "seed must be -1 (random)"),
    (dict(seed=MAX_SEED - 1, count=2), "seed + count must stay below"),
    (dict(clip_skip=0), "clip skip must be from 1 to 12"),
    (dict(mode="img2img"), "img2img needs an init image"),
    (dict(mode="img2img", init_image="x.png", strength=1.5), "strength must be from 0 to 1"),
    (dict(mode="inpaint", init_image="x.png"), "inpaint needs a mask image"),
    (dict(init_image="x.png"), "an init image needs mode img2img or inpaint"),
    (dict(mode="outpaint"), "mode must be one of txt2img, img2img, inpaint"),
    (dict(sampler="Euler z"), "Unknown sampler"),
    (dict(sampler="Euler a", schedule="Karras"), "Euler a has no Karras schedule"),
])
def test_each_invalid_field_has_its_message(changes, expected):
    request = GenerationRequest(**{"prompt": "a cat", **changes})
    with pytest.raises(InvalidRequest) as err:
        validate_request(request, LIMITS)
    assert expected in str(err.value)


def test_one_error_names_everything_wrong():
    request = GenerationRequest(prompt="", width=100, steps=1000, count=0)
    problems = request_problems(request, LIMITS)
    assert len(problems) == 4
    with pytest.raises(InvalidRequest) as err:
        validate_request(request, LIMITS)
    assert err.value.problems == problems


def test_random_seed_and_batch_seeds():
    request = GenerationRequest(prompt="x", count=3)
    with pytest.raises(ValueError):
        request.seeds()
    rng = random.Random(1)
    resolved = request.with_resolved_seed(rng)
    assert 0 <= resolved.seed < MAX_SEED
    assert resolved.seeds() == [resolved.seed, resolved.seed + 1, resolved.seed + 2]
    assert resolved.with_resolved_seed() is resolved
    draws = {GenerationRequest(prompt="x").with_resolved_seed().seed for _ in range(20)}
    assert len(draws) > 15


def test_dict_round_trip_and_unknown_fields():
    request = GenerationRequest(prompt="p", negative_prompt="n", seed=3, mode="img2img", init_image="a.png")
    assert GenerationRequest.from_dict(request.to_dict()) == request
    with pytest.raises(InvalidRequest, match="unknown field 'colour'"):
        GenerationRequest.from_dict({"prompt": "p", "colour": 1})


def test_default_size_is_the_checkpoints_own_when_it_fits():
    defaults, limits = DefaultsConfig(width=640, height=448), LimitsConfig()
    assert default_size(defaults, limits, "sdxl") == (1024, 1024)
    assert default_size(defaults, limits, "sd2") == (768, 768)
    assert default_size(defaults, limits, "sd1") == (512, 512)
    # no native size known, switched off, or over a limit: the configured size
    assert default_size(defaults, limits, "tiny-sd1") == default_size(defaults, limits, "unknown") == (640, 448)
    assert default_size(DefaultsConfig(width=640, height=448, native_size=False), limits, "sdxl") == (640, 448)
    assert default_size(defaults, LimitsConfig(max_pixels=768 * 768), "sdxl") == (640, 448)
    assert default_size(defaults, limits, "sdxl", max_width=896) == (640, 448)  # a server's limit
    assert default_size(defaults, limits, "sdxl", max_height=1024) == (1024, 1024)
