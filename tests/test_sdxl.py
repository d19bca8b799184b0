"""SDXL on the tiny offline SDXL model: A1111 conditioning with two text encoders and pooled embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from generation.batch_conditioning import BatchConditioning
from generation.conditioning import PromptEncoder
from generation.engine import BatchItem, Engine
from generation.errors import InvalidRequest
from generation.registry import ModelRegistry

from conftest import make_config, tiny_request, write_embeddings


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@pytest.fixture(scope="module")
def xl_engine(tmp_path_factory) -> Engine:
    from generation.testing import write_test_model

    root = tmp_path_factory.mktemp("xl-models")
    write_test_model(root / "checkpoints" / "xl", architecture="tiny-sdxl")
    write_embeddings(root / "embeddings")
    save_file({"clip_l": XL_EMBEDDING[0], "clip_g": XL_EMBEDDING[1]}, str(root / "embeddings" / "xlemb.safetensors"))
    config = make_config(root, tmp_path_factory.mktemp("xl-data"), models={"default_checkpoint": "xl"})
    registry = ModelRegistry.from_config(config)
    registry.refresh()
    return Engine(config=config, registry=registry)


XL_EMBEDDING = (torch.randn(2, 32, generator=torch.Generator().manual_seed(1)) * 2,
                torch.randn(2, 64, generator=torch.Generator().manual_seed(2)) * 2)


def xl_request(**changes):
    return tiny_request(**{"checkpoint": "xl", "seed": 7, "steps": 4, **changes})


def xl_pipe(engine: Engine):
    return engine.cache.get(engine.registry.resolve("xl")).base


def encoder_for(pipe, **options) -> PromptEncoder:
    return PromptEncoder(pipe.tokenizer, pipe.text_encoder, max_chunks=3, tokenizer_2=pipe.tokenizer_2,
                         text_encoder_2=pipe.text_encoder_2, **options)


def test_single_file_gives_the_same_image_as_its_folder(xl_engine):
    assert [c.architecture for c in xl_engine.registry.checkpoints] == ["tiny-sdxl", "tiny-sdxl"]
    folder = xl_engine.generate(xl_request(prompt="a red cat"))[0]
    single = xl_engine.generate(xl_request(prompt="a red cat", checkpoint="xl.safetensors"))[0]
    assert max_diff(folder.image, single.image) == 0


def test_plain_prompts_encode_exactly_as_diffusers_does(xl_engine):
    pipe = xl_pipe(xl_engine)
    schedule = encoder_for(pipe).encode_schedule("a red cat", "blurry", 4)
    expected = pipe.encode_prompt("a red cat", negative_prompt="blurry", device="cpu")
    for ours, theirs in zip((schedule.embeds[0], schedule.negative_embeds[0], schedule.pooled[0],
                             schedule.negative_pooled[0]), expected):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs)
    assert schedule.embeds[0].shape[-1] == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    # an empty negative is zeros, as in A1111 and diffusers (force_zeros_for_empty_prompt)
    empty = encoder_for(pipe).encode_schedule("a red cat", "", 4)
    assert not empty.negative_embeds[0].any() and not empty.negative_pooled[0].any()
    _, zeros, _, zero_pooled = pipe.encode_prompt("a red cat", device="cpu")
    assert not zeros.any() and not zero_pooled.any()


def test_emphasis_is_applied_to_each_encoder_alone_and_pooled_stays_unweighted(xl_engine):
    pipe = xl_pipe(xl_engine)
    plain = encoder_for(pipe).encode_schedule("a red cat", "", 4)
    weighted = encoder_for(pipe).encode_schedule("a (red:1.5) cat", "", 4)
    width = pipe.text_encoder.config.hidden_size
    red = 2  # BOS, "a", "red"
    for half in (slice(None, width), slice(width, None)):
        ours, base = weighted.embeds[0][0, :, half], plain.embeds[0][0, :, half]
        assert not torch.allclose(ours[red], base[red])
        # the chunk's mean is rescaled back to the unweighted mean, per encoder
        torch.testing.assert_close(ours.mean(), base.mean())
    torch.testing.assert_close(weighted.pooled[0], encoder_for(pipe).encode_schedule("a red cat", "", 4).pooled[0])


def test_clip_skip_moves_both_encoders_back_as_diffusers_does(xl_engine):
    pipe = xl_pipe(xl_engine)
    ours = encoder_for(pipe, clip_skip=2).encode_schedule("a red cat", "blurry", 4).embeds[0]
    theirs = pipe.encode_prompt("a red cat", negative_prompt="blurry", device="cpu", clip_skip=1)[0]
    torch.testing.assert_close(ours, theirs)


def test_sdxl_generates_like_diffusers_and_reproducibly(xl_engine):
    request = xl_request(prompt="a red cat", negative_prompt="blurry")
    ours = xl_engine.generate(request)[0]
    assert max_diff(ours.image, xl_engine.generate(request)[0].image) == 0
    pipe = xl_pipe(xl_engine)
    from generation.samplers import make_scheduler, resolve_sampler
    pipe.scheduler = make_scheduler(resolve_sampler("Euler"), dict(pipe.scheduler.config), seeds=[7], steps=4)
    raw = pipe(prompt="a red cat", negative_prompt="blurry", width=64, height=64, num_inference_steps=4,
               guidance_scale=7.0, generator=[torch.Generator("cpu").manual_seed(7)]).images[0]
    assert max_diff(ours.image, raw) <= 1
    assert "Model: xl" in ours.infotext


def test_prompt_language_on_sdxl(xl_engine, tmp_path):
    plain = xl_engine.generate(xl_request(prompt="a red cat"))[0].image
    for prompt in ("a (red:1.6) cat", "a [red:blue:1] cat", "a [red|blue] cat", "a red cat AND a dog:0.7",
                   "a red cat BREAK in a field"):
        assert max_diff(xl_engine.generate(xl_request(prompt=prompt))[0].image, plain) > 0, prompt
    assert max_diff(xl_engine.generate(xl_request(prompt="a red cat:0.5", cfg_scale=14))[0].image, plain) <= 1
    events = []
    xl_engine.generate(xl_request(prompt="a red cat"), on_progress=events.append)
    assert [e.step for e in events] == [1, 2, 3, 4] and events[1].preview is not None
    init = tmp_path / "init.png"
    plain.save(init)
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 64), 255).save(mask)
    for mode, extra in (("img2img", {}), ("inpaint", {"mask": str(mask)})):
        result = xl_engine.generate(xl_request(prompt="a red cat AND a dog", mode=mode, init_image=str(init),
                                               strength=0.8, **extra))[0]
        assert result.image.size == (64, 64)


def test_prompt_editing_swaps_pooled_embeddings_too(xl_engine):
    pipe = xl_pipe(xl_engine)
    conditioning = BatchConditioning.build(pipe, [("a [red:blue:1] cat", "", 1)], steps=4, clip_skip=1, max_chunks=3)
    red = encoder_for(pipe).encode_schedule("a red cat", "", 4)
    blue = encoder_for(pipe).encode_schedule("a blue cat", "", 4)
    start, _ = conditioning.pooled_at(0)
    torch.testing.assert_close(start, red.pooled[0])
    prompt_embeds = torch.cat(conditioning.at_step(0)[::-1])
    pooled = torch.cat(conditioning.pooled_at(0)[::-1])
    assert conditioning.replacements_after(0, {"prompt_embeds": prompt_embeds, "add_text_embeds": pooled}) == {}
    swapped = conditioning.replacements_after(1, {"prompt_embeds": prompt_embeds, "add_text_embeds": pooled})
    torch.testing.assert_close(swapped["add_text_embeds"][1:], blue.pooled[0])
    torch.testing.assert_close(swapped["prompt_embeds"][1:], blue.embeds[0])


def test_batched_sdxl_jobs_each_match_alone(xl_engine):
    requests = [xl_request(prompt="a red cat", seed=1), xl_request(prompt="a [cat|dog] AND sky:0.5", seed=2, count=2),
                xl_request(prompt="a (house:1.2)", seed=3, negative_prompt="ugly")]
    assert len({xl_engine.batch_key(r) for r in requests}) == 1
    batched = xl_engine.run_batch([BatchItem(key=i, request=r) for i, r in enumerate(requests)])
    for i, request in enumerate(requests):
        for together, alone in zip(batched[i], xl_engine.generate(request)):
            assert max_diff(together.image, alone.image) <= 1


def test_sdxl_embeddings_load_into_both_encoders(xl_engine):
    info = xl_engine.registry.embedding("xlemb")
    assert info.usable and (info.vectors, info.width) == (2, 32 + 64)
    plain = xl_engine.generate(xl_request(prompt="a cat"))[0]
    used = xl_engine.generate(xl_request(prompt="a (cat:1.1) xlemb"))[0]
    assert max_diff(plain.image, used.image) > 0
    assert f"TI hashes: \"xlemb: {info.sha256[:12]}\"" in used.infotext or f"TI hashes: xlemb: {info.sha256[:12]}" in used.infotext
    pipe = xl_pipe(xl_engine)
    ids = pipe.tokenizer.convert_tokens_to_ids(["xlemb", "xlemb_1"])
    assert pipe.tokenizer_2.convert_tokens_to_ids(["xlemb", "xlemb_1"]) == ids
    for encoder, vectors in ((pipe.text_encoder, XL_EMBEDDING[0]), (pipe.text_encoder_2, XL_EMBEDDING[1])):
        torch.testing.assert_close(encoder.get_input_embeddings().weight[ids], vectors)
    assert xl_engine.token_count("a cat xlemb") == xl_engine.token_count("a cat") + 2


def test_sd1_embeddings_are_refused_on_sdxl(xl_engine):
    with pytest.raises(InvalidRequest, match=r"embedding a1111st has width 32; xl needs 96 \(tiny SDXL test model\)"):
        xl_engine.check_request(xl_request(prompt="a cat a1111st"))
