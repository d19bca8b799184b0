"""A1111's hires fix: target size and crop, the second pass's step slice, fresh noise, prompts,
infotext, limits, cost and batching, on the tiny model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from generation.config import LimitsConfig
from generation.engine import BatchItem, Engine
from generation.errors import InvalidRequest
from generation.hires import (HiresPlan, crop_latents, img2img_strength, plan, second_pass_schedule, target_size,
                              upscale_latents)
from generation.infotext import parse_infotext, to_request_fields
from generation.prompt_parser import prompt_schedule
from generation.registry import ModelRegistry
from generation.requests import request_problems
from generation.samplers import make_scheduler, resolve_sampler
from generation.scheduler import job_cost
from generation.upscaler_testing import write_test_upscaler

from conftest import make_config, tiny_request


def max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a.convert("RGB"), dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16)).max())


# --------------------------------------------------------------------------- the arithmetic


def test_target_size_follows_a1111():
    assert target_size(512, 512, hr_scale=2.0) == ((1024, 1024), (0, 0))
    assert target_size(512, 768, hr_scale=1.3) == ((665, 998), (0, 0))  # int(), no rounding to 8
    assert target_size(512, 768, hr_scale=2.0, hr_resize_x=1000) == ((1000, 1500), (0, 0))
    assert target_size(512, 768, hr_scale=2.0, hr_resize_y=1000) == ((666, 1000), (0, 0))
    # both set: cover, then crop the latents by (to - target) // 8
    assert target_size(512, 768, hr_scale=2.0, hr_resize_x=1024, hr_resize_y=1024) == ((1024, 1536), (0, 64))
    assert target_size(768, 512, hr_scale=2.0, hr_resize_x=1024, hr_resize_y=1024) == ((1536, 1024), (64, 0))
    assert plan(512, 768, 20, hr_scale=2, hr_resize_x=1024, hr_resize_y=1024, hr_second_pass_steps=0) == \
        HiresPlan(upscale_to=(1024, 1536), truncate=(0, 64), steps=20)
    assert plan(512, 768, 20, hr_scale=2, hr_resize_x=1024, hr_resize_y=1024, hr_second_pass_steps=0).final_size \
        == (1024, 1024)
    assert plan(512, 512, 20, hr_scale=1.0, hr_resize_x=0, hr_resize_y=0, hr_second_pass_steps=5) is None


def test_crop_splits_odd_truncation_as_a1111():
    latents = torch.arange(2 * 1 * 10 * 7, dtype=torch.float32).reshape(2, 1, 10, 7)
    cropped = crop_latents(latents, (3, 5))  # x: [1 : 7-2], y: [2 : 10-3]
    assert torch.equal(cropped, latents[:, :, 2:7, 1:5])


@pytest.mark.parametrize("steps, strength, expected", [(20, 0.7, (28, 8)), (20, 1.0, (20, 0)), (10, 0.5, (20, 10)),
                                                        (30, 0.999, (30, 0)), (1, 0.01, (100, 99))])
def test_second_pass_schedule_is_a1111s(steps, strength, expected):
    assert second_pass_schedule(steps, strength) == expected


def test_img2img_strength_runs_exactly_the_last_n_steps():
    # diffusers' img2img runs int(total * strength) of `total` steps: for every N and d it must be N
    for steps in range(1, 151):
        for strength in np.linspace(0.01, 1.0, 67):
            total, start = second_pass_schedule(steps, float(strength))
            assert min(int(total * img2img_strength(total, steps)), total) == steps == total - start


def test_latent_modes_interpolate_as_a1111():
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    up = upscale_latents(latents, (128, 96), "Latent (bicubic antialiased)")
    expected = torch.nn.functional.interpolate(latents, size=(12, 16), mode="bicubic", antialias=True)
    assert torch.equal(up, expected)
    assert upscale_latents(latents, (128, 128), "Latent (nearest-exact)").shape == (1, 4, 16, 16)


def test_hires_prompt_schedule_counts_on_from_the_first_pass():
    # A1111: an integer step is counted from the first pass's start, a fraction is (f - 1) of the hires pass
    assert prompt_schedule("a [b:c:25]", 10, first_pass_steps=20) == [(5, "a b"), (10, "a c")]
    assert prompt_schedule("a [b:c:15]", 10, first_pass_steps=20) == [(10, "a c")]
    assert prompt_schedule("a [b:c:1.5]", 10, first_pass_steps=20) == [(5, "a b"), (10, "a c")]
    assert prompt_schedule("a [b:c:0.5]", 10, first_pass_steps=20) == [(10, "a c")]


def test_request_rules():
    limits = LimitsConfig()
    assert request_problems(tiny_request(enable_hr=True), limits) == []
    assert "the hires fix works with txt2img only" in request_problems(
        tiny_request(enable_hr=True, mode="img2img", init_image="x.png"), limits)
    problems = request_problems(tiny_request(enable_hr=True, hr_scale=4.5, strength=0.0, hr_second_pass_steps=-1),
                                limits)
    assert problems == ["the hires scale must be from 1 to 4", "hires steps must be from 0 (the same as steps) to 60",
                        "the hires denoising strength must be above 0 and at most 1"]
    over = request_problems(tiny_request(enable_hr=True, width=1024, height=1024, hr_scale=2.5), limits)
    assert over == ["the hires size 2560x2560 must have sides from 64 to 2048"]
    small = dataclasses.replace(limits, max_hires_pixels=100_000)
    assert request_problems(tiny_request(enable_hr=True, width=256, height=256, hr_scale=2), small) == [
        "the hires size 512x512 is over 100,000 pixels"]
    assert request_problems(tiny_request(enable_hr=True, hr_sampler="Nope"), limits)[0].startswith("hires sampler:")


# --------------------------------------------------------------------------- the engine


def reference_hires(engine: Engine, request, *, seed: int) -> np.ndarray:
    """A1111's hires fix for one Euler image, written from its description with the raw modules:
    the first pass (diffusers' own txt2img), Latent upscale, noise randn(seed) at the new size,
    x = latents + noise * sigmas[total - N], then k-diffusion's Euler over sigmas[total - N:]."""
    from diffusers import StableDiffusionPipeline

    loaded = engine.cache.get(engine.registry.resolve("tiny"))
    components = loaded.base.components
    choice = resolve_sampler("Euler", "Automatic")
    first_pipe = StableDiffusionPipeline(**components)
    first_pipe.scheduler = make_scheduler(choice, loaded.scheduler_config, seeds=[seed], steps=request.steps)
    first = first_pipe(request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
                       guidance_scale=request.cfg_scale, width=request.width, height=request.height,
                       generator=torch.Generator().manual_seed(seed), output_type="latent").images
    hires = plan(request.width, request.height, request.steps, hr_scale=request.hr_scale, hr_resize_x=0,
                 hr_resize_y=0, hr_second_pass_steps=request.hr_second_pass_steps)
    x0 = torch.nn.functional.interpolate(first, size=(hires.upscale_to[1] // 8, hires.upscale_to[0] // 8),
                                         mode="bilinear", antialias=False)
    steps = hires.steps
    total = int(steps / min(request.strength, 0.999))
    scheduler = make_scheduler(choice, loaded.scheduler_config, seeds=[seed], steps=total)
    scheduler.set_timesteps(total)
    sigmas, timesteps = scheduler.sigmas, scheduler.timesteps
    noise = torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(seed))[None]
    x = x0 + noise * sigmas[total - steps]
    positive, negative = first_pipe.encode_prompt(request.prompt, "cpu", 1, True, request.negative_prompt)
    context = torch.cat([negative, positive])
    unet = components["unet"]
    with torch.no_grad():
        for i in range(total - steps, total):
            sigma = sigmas[i]
            scaled = x / (sigma ** 2 + 1) ** 0.5
            eps = unet(torch.cat([scaled] * 2), timesteps[i], encoder_hidden_states=context).sample
            uncond, cond = eps.chunk(2)
            eps = uncond + request.cfg_scale * (cond - uncond)
            denoised = x - sigma * eps
            x = x + (x - denoised) / sigma * (sigmas[i + 1] - sigma)
        vae = components["vae"]
        pixels = vae.decode(x / vae.config.scaling_factor).sample
    return np.round(((pixels[0] / 2 + 0.5).clamp(0, 1) * 255).permute(1, 2, 0).numpy()).astype(np.uint8)


@pytest.mark.parametrize("steps, hr_steps, strength", [(4, 0, 0.5), (4, 3, 0.6), (3, 5, 0.35)])
def test_second_pass_equals_a1111s_step_slice(engine, steps, hr_steps, strength):
    request = tiny_request(steps=steps, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=hr_steps,
                           strength=strength, negative_prompt="blurry")
    [image] = engine.generate(request)
    assert image.image.size == (96, 96)
    expected = reference_hires(engine, request, seed=request.seed)
    assert np.abs(np.asarray(image.image, dtype=np.int16) - expected.astype(np.int16)).max() <= 1


def test_infotext_keys_written_and_read_back(engine):
    request = tiny_request(enable_hr=True, hr_resize_x=128, hr_resize_y=96, hr_second_pass_steps=3, strength=0.55,
                           hr_sampler="DPM++ 2M", hr_prompt="a blue cat", hr_upscaler="Latent (nearest-exact)")
    [image] = engine.generate(request)
    assert image.image.size == (128, 96)
    info = parse_infotext(image.infotext)
    keys = list(info.as_dict())
    assert info.as_dict()["Size"] == "64x64"  # the first pass's
    assert keys[keys.index("Model") + 1:keys.index("Version")] == [
        "Denoising strength", "Hires sampler", "Hires prompt", "Hires resize", "Hires steps", "Hires upscaler"]
    fields = to_request_fields(info)
    assert fields["enable_hr"] is True
    assert (fields["hr_resize_x"], fields["hr_resize_y"], fields["hr_second_pass_steps"]) == (128, 96, 3)
    assert (fields["hr_sampler"], fields["hr_prompt"], fields["hr_upscaler"]) == ("DPM++ 2M", "a blue cat",
                                                                                "Latent (nearest-exact)")
    assert fields["denoising_strength"] == 0.55
    [scaled] = engine.generate(tiny_request(enable_hr=True, hr_scale=1.5))
    scaled_fields = to_request_fields(parse_infotext(scaled.infotext))
    assert "Hires upscale: 1.5, Hires upscaler: Latent" in scaled.infotext and "Hires steps" not in scaled.infotext
    assert scaled_fields["hr_scale"] == 1.5 and scaled_fields["enable_hr"] is True


def test_same_size_is_no_hires_pass(engine):
    checked = engine.check(tiny_request(enable_hr=True, hr_scale=1.0))
    assert checked.request.enable_hr is False
    [image] = engine.generate(tiny_request(enable_hr=True, hr_scale=1.0))
    assert "Hires" not in image.infotext and "Denoising strength" not in image.infotext


def test_cost_counts_the_second_pass_and_progress_both(engine):
    request = tiny_request(enable_hr=True, hr_scale=2.0, hr_second_pass_steps=3, count=2)
    assert engine.check(request).cost == job_cost(64, 64, 4, 2) + job_cost(128, 128, 3, 2)
    progress = []
    engine.generate(request, on_progress=lambda p: progress.append((p.step, p.total)))
    assert progress == [(step, 7) for step in range(1, 8)]


def test_hires_prompt_rules(engine):
    with pytest.raises(InvalidRequest, match="same LoRA tags"):
        engine.check(tiny_request(enable_hr=True, hr_prompt="a cat <lora:nothere:1>"))
    with pytest.raises(InvalidRequest, match="hires upscaler: unknown upscaler 'R-ESRGAN 4x\\+'"):
        engine.check(tiny_request(enable_hr=True, hr_upscaler="R-ESRGAN 4x+"))
    checked = engine.check(tiny_request(enable_hr=True, hr_prompt="a [green:blue:0.5] dog", hr_negative_prompt="ugly"))
    assert checked.prompt_texts == ("a red cat", "a blue dog")  # moderation reads the hires prompt too
    assert checked.negative_texts == ("ugly",)


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_batched_hires_jobs_equal_their_alone_runs(engine, upscaler):
    requests = [tiny_request(seed=11, enable_hr=True, hr_scale=1.5, hr_upscaler=upscaler, strength=0.5),
                tiny_request(seed=40, prompt="a green tree", count=2, enable_hr=True, hr_scale=1.5,
                             hr_upscaler=upscaler, strength=0.5, subseed=3, subseed_strength=0.4)]
    assert len({engine.check(r).batch_key for r in requests}) == 1
    together = engine.run_batch([BatchItem(key=i, request=r) for i, r in enumerate(requests)])
    for i, request in enumerate(requests):
        alone = engine.generate(request)
        assert [max_diff(a.image, b.image) for a, b in zip(alone, together[i])] == [0] * request.count \
            or max(max_diff(a.image, b.image) for a, b in zip(alone, together[i])) <= 1


def test_batch_keys_separate_different_hires_passes(engine):
    base = tiny_request(enable_hr=True, hr_scale=1.5)
    keys = {engine.check(dataclasses.replace(base, **change)).batch_key for change in
            ({}, {"hr_scale": 2.0}, {"strength": 0.4}, {"hr_upscaler": "Latent (bicubic)"},
             {"hr_second_pass_steps": 2}, {"hr_sampler": "DPM++ 2M"}, {"enable_hr": False})}
    assert len(keys) == 7


def test_upscaler_model_as_hires_upscaler(models_dir, tmp_path):
    """A Real-ESRGAN Compact model from models/upscalers/ decodes, upscales and re-encodes; the hires
    image differs from the Latent one."""
    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "tiny").symlink_to(models_dir / "checkpoints" / "tiny")
    write_test_upscaler(root / "upscalers" / "4x-tiny-compact.safetensors", "compact")
    config = make_config(root, tmp_path / "data")
    registry = ModelRegistry.from_config(config)
    registry.refresh()
    engine = Engine(config=config, registry=registry)
    [model] = engine.generate(tiny_request(enable_hr=True, hr_scale=2.0, hr_upscaler="4x-tiny-compact"))
    [latent] = engine.generate(tiny_request(enable_hr=True, hr_scale=2.0))
    assert model.image.size == latent.image.size == (128, 128)
    assert max_diff(model.image, latent.image) > 0
    assert "Hires upscaler: 4x-tiny-compact" in model.infotext
