"""The offline fixtures: SD's CLIP tokenizer rebuilt locally, the tiny pipeline and its single-file twin."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from generation import architectures
from generation.errors import ModelLoadError
from generation.testing import build_tiny_pipeline, sd_clip_tokenizer, write_test_model

# Ids of the SD 1.5 tokenizer (openai/clip-vit-large-patch14), written out so a rebuild cannot drift.
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


def _image(pipe, *, seed: int = 1, steps: int = 2, prompt: str = "a photo of a cat") -> np.ndarray:
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    result = pipe(
        prompt, num_inference_steps=steps, height=64, width=64, guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(seed),
    )
    return np.asarray(result.images[0])


def _file_digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    return write_test_model(tmp_path_factory.mktemp("model") / "tiny")


# --- tokenizer -------------------------------------------------------------------------------------


def test_tokenizer_matches_stable_diffusion_ids():
    tokenizer = sd_clip_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == CAT_IDS
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|startoftext|>", 49406)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|endoftext|>", 49407)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 49407)
    # Case and runs of spaces do not change the tokens, as in every SD frontend.
    assert tokenizer("A  Photo of a CAT").input_ids == CAT_IDS
    assert tokenizer.decode(CAT_IDS, skip_special_tokens=True) == "a photo of a cat"


def test_open_clip_pad_token_for_sd2_and_sdxl():
    tokenizer = sd_clip_tokenizer(pad_token="!")
    padded = tokenizer("a cat", padding="max_length", max_length=8).input_ids
    assert padded == [49406, 320, 2368, 49407, 0, 0, 0, 0]


def test_long_prompt_token_count_and_truncation():
    tokenizer = sd_clip_tokenizer()
    prompt = ", ".join(["a photo of a cat"] * 20)  # 5 words x 20 + 19 commas
    assert len(tokenizer(prompt, add_special_tokens=False).input_ids) == 119
    truncated = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    assert len(truncated) == 77
    assert truncated[0] == 49406 and truncated[-1] == 49407


def test_each_call_gives_an_independent_tokenizer():
    # Textual inversion adds tokens to the tokenizer it is given: one model must not leak into another.
    first, second = sd_clip_tokenizer(), sd_clip_tokenizer()
    first.add_tokens(["<my-embedding>"])
    assert len(first) == 49409
    assert len(second) == 49408


def test_missing_open_clip_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a, **k: None if name == "open_clip" else real_find_spec(name, *a, **k)
    )
    architectures._clip_bpe.cache_clear()
    try:
        with pytest.raises(ModelLoadError, match=r"pip install --no-deps open-clip-torch"):
            sd_clip_tokenizer()
    finally:
        architectures._clip_bpe.cache_clear()


# --- tiny pipeline ---------------------------------------------------------------------------------


def test_tiny_pipeline_is_deterministic_and_leaves_global_rng_alone():
    rng_before = torch.random.get_rng_state()
    first, second = build_tiny_pipeline(seed=3), build_tiny_pipeline(seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(first, name).state_dict(), getattr(second, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a), name
    assert np.array_equal(_image(first), _image(second))

    other = build_tiny_pipeline(seed=4)
    assert not torch.equal(
        other.unet.conv_in.weight, first.unet.conv_in.weight
    ), "a different seed must give different weights"


def test_tiny_pipeline_has_sd1_shape_and_real_scheduler():
    pipe = build_tiny_pipeline()
    assert pipe.vae_scale_factor == 8
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 32
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer) == 49408
    scheduler = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert (scheduler.beta_start, scheduler.beta_end, scheduler.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert (scheduler.num_train_timesteps, scheduler.steps_offset) == (1000, 1)
    assert scheduler.skip_prk_steps is True and scheduler.set_alpha_to_one is False
    assert pipe.safety_checker is None and pipe.feature_extractor is None


def test_tiny_pipeline_draws_a_non_uniform_image():
    image = _image(build_tiny_pipeline(), steps=3)
    assert image.shape == (64, 64, 3)
    assert image.std() > 5, "random weights still have to give a picture with structure"
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 100


# --- files -----------------------------------------------------------------------------------------


def test_write_test_model_writes_folder_and_single_file(tiny_files):
    assert tiny_files.folder.is_dir()
    assert tiny_files.single_file == tiny_files.folder.parent / "tiny.safetensors"
    for part in ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors", "tokenizer/tokenizer.json", "scheduler/scheduler_config.json"):
        assert (tiny_files.folder / part).is_file(), part
    assert not list(tiny_files.folder.rglob("*.bin")), "weights must be safetensors, never pickles"

    with safe_open(str(tiny_files.single_file), framework="pt") as file:
        keys = set(file.keys())
        q_shape = file.get_slice("first_stage_model.encoder.mid.attn_1.q.weight").get_shape()
    prefixes = {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."}
    assert {next((p for p in prefixes if k.startswith(p)), k) for k in keys} == prefixes | {
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
        "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    }
    # Names exactly as in SD-1.x files: LDM block numbering, 1x1-conv VAE attention.
    assert "model.diffusion_model.output_blocks.1.2.conv.weight" in keys  # upsampler after resnet + attention
    assert "model.diffusion_model.input_blocks.2.0.op.weight" in keys
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in keys
    assert q_shape == [32, 32, 1, 1]


def test_written_files_are_byte_identical_every_time(tmp_path, tiny_files):
    again = write_test_model(tmp_path / "tiny")
    assert again.single_file.read_bytes() == tiny_files.single_file.read_bytes()
    assert _file_digests(again.folder) == _file_digests(tiny_files.folder)
    other_seed = write_test_model(tmp_path / "other", seed=1)
    assert other_seed.single_file.read_bytes() != tiny_files.single_file.read_bytes()


def test_folder_loads_offline_with_its_own_tokenizer(tiny_files):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_files.folder, local_files_only=True)
    assert pipe.tokenizer("a photo of a cat").input_ids == CAT_IDS
    assert np.array_equal(_image(pipe), _image(build_tiny_pipeline()))


@pytest.mark.parametrize("architecture", ["tiny-sd1", "tiny-sdxl"])
def test_single_file_gives_the_same_image_as_the_folder(tmp_path, architecture):
    from diffusers import DiffusionPipeline

    files = write_test_model(tmp_path / "tiny", architecture=architecture)
    from_folder = DiffusionPipeline.from_pretrained(files.folder, local_files_only=True)
    from_file = architectures.load_single_file(files.single_file, dtype=torch.float32)
    assert type(from_file) is type(from_folder) is architectures.pipeline_class(architecture)
    assert architectures.detect_architecture(files.single_file) == architecture
    models = [name for name in ("unet", "vae", "text_encoder", "text_encoder_2") if hasattr(from_folder, name)]
    for name in models:
        a, b = getattr(from_folder, name).state_dict(), getattr(from_file, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[key], b[key]) for key in a), name
    assert np.array_equal(_image(from_folder, steps=4), _image(from_file, steps=4))


def test_tiny_sdxl_pipeline_is_sdxl_shaped():
    pipe = build_tiny_pipeline(architecture="tiny-sdxl")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipe.unet.config.cross_attention_dim == 32 + 64
    assert pipe.tokenizer.pad_token == "<|endoftext|>" and pipe.tokenizer_2.pad_token == "!"
    assert pipe.text_encoder_2.config.projection_dim == 64
    assert pipe.config.force_zeros_for_empty_prompt is True
    image = _image(pipe)
    assert image.shape == (64, 64, 3) and image.std() > 5
    with pytest.raises(ValueError, match="tiny-sd1"):
        build_tiny_pipeline(architecture="sd1")
