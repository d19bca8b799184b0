"""The engine end to end on the tiny offline model (CPU): samplers, seeds, modes, embeddings, cancel."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import torch
import pytest
from PIL import Image

from generation.engine import BatchItem, CancelToken, Engine
from generation.errors import Canceled, EmbeddingError, InvalidRequest, ModelNotFound
from generation.infotext import parse_infotext, to_request_fields
from generation.samplers import SAMPLER_NAMES

from conftest import tiny_request


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_runs_and_is_deterministic(engine, sampler):
    request = tiny_request(sampler=sampler, steps=3)
    first = engine.generate(request)
    again = engine.generate(request)
    assert len(first) == 1 and first[0].image.size == (64, 64)
    assert max_diff(first[0].image, again[0].image) == 0
    assert f"Sampler: {sampler}," in first[0].infotext


def test_samplers_give_different_images(engine):
    euler_a = engine.generate(tiny_request(sampler="Euler a", steps=6))[0].image
    for sampler in ("Euler", "DDIM", "DPM++ 2M", "UniPC"):
        assert max_diff(euler_a, engine.generate(tiny_request(sampler=sampler, steps=6))[0].image) > 0, sampler


def test_schedule_types_change_the_result(engine):
    plain = engine.generate(tiny_request(sampler="DPM++ 2M", schedule="SGM Uniform", steps=5))[0]
    karras = engine.generate(tiny_request(sampler="DPM++ 2M Karras", schedule="Automatic", steps=5))[0]
    assert max_diff(plain.image, karras.image) > 0
    assert "Schedule type: SGM Uniform" in plain.infotext


def test_seed_changes_image(engine):
    a = engine.generate(tiny_request(seed=1))[0].image
    b = engine.generate(tiny_request(seed=2))[0].image
    assert max_diff(a, b) > 0


def test_count_uses_consecutive_seeds_each_reproducible_alone(engine):
    batch = engine.generate(tiny_request(seed=500, count=3, sampler="Euler a"))
    assert [image.seed for image in batch] == [500, 501, 502]
    for image in batch:
        alone = engine.generate(tiny_request(seed=image.seed, count=1, sampler="Euler a"))[0]
        assert max_diff(image.image, alone.image) <= 1  # batched vs single: within 1/255 (diffusers.md)
        assert f"Seed: {image.seed}," in image.infotext


def test_random_seed_is_resolved_and_recorded(engine):
    image = engine.generate(tiny_request(seed=-1))[0]
    assert image.seed >= 0
    assert to_request_fields(parse_infotext(image.infotext))["seed"] == image.seed


def test_img2img_and_inpaint(engine, tmp_path):
    base = engine.generate(tiny_request(seed=9))[0].image
    init = tmp_path / "init.png"
    base.save(init)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half only
    mask_path = tmp_path / "mask.png"
    mask.save(mask_path)

    # Random weights make "closer to the init image" meaningless; what must hold: the init image and the
    # strength matter, the run is reproducible, and only int(steps * strength) steps run.
    other = tmp_path / "other.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(other)
    events = []
    low = engine.generate(tiny_request(mode="img2img", init_image=str(init), strength=0.5, seed=3, steps=6),
                          on_progress=events.append)[0]
    assert [e.step for e in events] == [1, 2, 3] and events[-1].total == 3
    again = engine.generate(tiny_request(mode="img2img", init_image=str(init), strength=0.5, seed=3, steps=6))[0]
    red = engine.generate(tiny_request(mode="img2img", init_image=str(other), strength=0.5, seed=3, steps=6))[0]
    high = engine.generate(tiny_request(mode="img2img", init_image=str(init), strength=0.9, seed=3, steps=6))[0]
    assert max_diff(low.image, again.image) == 0
    assert max_diff(low.image, red.image) > 0 and max_diff(low.image, high.image) > 0
    assert "Denoising strength: 0.5" in low.infotext

    painted = engine.generate(tiny_request(mode="inpaint", init_image=str(init), mask=str(mask_path), strength=1.0, seed=3, steps=6))[0]
    diff = np.abs(pixels(painted.image) - pixels(base)).mean(axis=2)
    assert diff[:, :24].mean() > diff[:, 40:].mean()  # the masked half changed more than the kept half


def test_img2img_refuses_a_non_image(engine, tmp_path):
    bogus = tmp_path / "init.png"
    bogus.write_bytes(b"not an image at all")
    with pytest.raises(Exception, match="not a PNG, JPEG or WEBP"):
        engine.generate(tiny_request(mode="img2img", init_image=str(bogus)))


def test_single_file_gives_the_same_image_as_its_folder(engine, registry):
    names = {info.name: info for info in registry.checkpoints}
    assert names["tiny"].format == "diffusers"
    assert names["tiny.safetensors"].format == "safetensors"
    assert names["tiny.safetensors"].short_hash == names["tiny.safetensors"].sha256[:10]
    folder = engine.generate(tiny_request(checkpoint="tiny", seed=77))[0]
    single = engine.generate(tiny_request(checkpoint="tiny.safetensors", seed=77))[0]
    assert max_diff(folder.image, single.image) == 0
    assert "Model: tiny.safetensors" in single.infotext


@pytest.mark.parametrize("trigger", ["a1111pt", "a1111st", "diffusersemb"])
def test_each_embedding_format_changes_the_output(engine, registry, trigger):
    info = registry.embedding(trigger)
    assert info is not None and info.usable, info
    plain = engine.generate(tiny_request(prompt="a red cat", seed=5))[0]
    used = engine.generate(tiny_request(prompt=f"a red cat {trigger}", seed=5))[0]
    assert max_diff(plain.image, used.image) > 0
    assert f'TI hashes: "{trigger}: {info.sha256[:12]}"' in used.infotext or f"TI hashes: {trigger}: {info.sha256[:12]}" in used.infotext


def test_wrong_width_embedding_is_skipped_and_refused(engine, registry):
    info = registry.embedding("widewidth")
    assert not info.usable and "width 768 does not match the text encoder's 32" in info.skip_reason
    with pytest.raises(InvalidRequest, match=r"embedding widewidth has width 768; tiny needs 32 \(tiny SD 1.x test model\)"):
        engine.generate(tiny_request(prompt="a widewidth cat"))


def test_cancel_mid_run_stops_at_once(engine):
    token = CancelToken()
    steps_seen = []

    def on_progress(progress):
        steps_seen.append(progress.step)
        if progress.step == 2:
            token.cancel("stop please")

    with pytest.raises(Canceled, match="stop please"):
        engine.generate(tiny_request(steps=20), on_progress=on_progress, cancel=token)
    assert steps_seen == [1, 2]


def test_progress_and_previews(engine):
    events = []
    engine.generate(tiny_request(steps=6), on_progress=events.append)
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    assert all(e.total == 6 for e in events)
    previews = [e for e in events if e.preview is not None]
    assert [e.step for e in previews] == [2, 4]  # every 2 steps (conftest), none on the last step
    assert previews[0].preview.size == (8, 8)  # latent resolution of a 64 px image


def test_previews_can_be_turned_off(engine):
    """`[previews] enabled = false` (what `easel generate` uses): progress still counts every step."""
    import dataclasses

    from generation.engine import Engine

    config = dataclasses.replace(engine.config, previews=dataclasses.replace(engine.config.previews, enabled=False))
    events = []
    Engine(config=config, registry=engine.registry).generate(tiny_request(steps=6), on_progress=events.append)
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    assert all(e.preview is None for e in events)


def test_batch_of_different_requests_matches_each_alone(engine):
    requests = [tiny_request(prompt="a red cat", seed=10), tiny_request(prompt="a blue dog", seed=20, count=2),
                tiny_request(prompt="(a green:1.3) house, [sunset]", seed=30, negative_prompt="blurry")]
    items = [BatchItem(key=i, request=r) for i, r in enumerate(requests)]
    batched = engine.run_batch(items)
    for i, request in enumerate(requests):
        alone = engine.generate(request)
        assert [image.seed for image in batched[i]] == [image.seed for image in alone]
        for a, b in zip(batched[i], alone):
            assert max_diff(a.image, b.image) <= 1
            assert a.infotext == b.infotext


def test_canceling_one_job_of_a_batch_keeps_the_others(engine):
    items = [BatchItem(key="a", request=tiny_request(seed=1)), BatchItem(key="b", request=tiny_request(seed=2))]

    def on_progress(key, progress):
        if key == "a" and progress.step == 1:
            items[0].cancel.cancel()

    results = engine.run_batch(items, on_progress=on_progress)
    assert results["a"] is None
    assert len(results["b"]) == 1


def test_unknown_checkpoint_suggests_names(engine):
    with pytest.raises(ModelNotFound, match="did you mean tiny"):
        engine.generate(tiny_request(checkpoint="tinny"))


def test_invalid_request_lists_every_problem(engine):
    with pytest.raises(InvalidRequest) as err:
        engine.generate(tiny_request(width=65, steps=0, sampler="Nope"))
    assert len(err.value.problems) == 3


def test_prompt_language_reaches_the_pipeline(engine):
    plain = engine.generate(tiny_request(prompt="a red cat", seed=5, steps=6))[0]
    weighted = engine.generate(tiny_request(prompt="a (red:1.6) cat", seed=5, steps=6))[0]
    edited = engine.generate(tiny_request(prompt="a [red:blue:1] cat", seed=5, steps=6))[0]
    assert max_diff(plain.image, weighted.image) > 0
    assert max_diff(plain.image, edited.image) > 0
    assert "a [red:blue:1] cat\n" in edited.infotext  # recorded as written


def test_long_prompts_are_not_truncated_but_capped(engine):
    words = ", ".join(f"word{i}" for i in range(60))  # well over 75 tokens
    assert engine.token_count(words) > 75
    short = tiny_request(prompt="a cat")
    assert engine.prompt_chunks(short) == 1 and engine.prompt_chunks(tiny_request(prompt=words)) > 1
    assert engine.batch_key(short) != engine.batch_key(tiny_request(prompt=words))  # padding would change images
    first = engine.generate(tiny_request(prompt=words, seed=5))[0]
    longer = engine.generate(tiny_request(prompt=words + ", a final extra detail", seed=5))[0]
    assert max_diff(first.image, longer.image) > 0  # the tail past 75 tokens matters
    too_long = " ".join(["cat"] * (6 * 75 + 1))
    with pytest.raises(InvalidRequest, match="the prompt is 451 tokens; the limit is 450"):
        engine.generate(tiny_request(prompt=too_long))


def test_clip_skip_changes_the_result(engine):
    one = engine.generate(tiny_request(seed=5))[0]
    two = engine.generate(tiny_request(seed=5, clip_skip=2))[0]
    assert max_diff(one.image, two.image) > 0
    assert "Clip skip: 2" in two.infotext


def unet_conditioning_per_call(engine, request):
    """The encoder_hidden_states the UNet receives at each call (the GPU-free way to watch a run)."""
    loaded = engine.cache.get(engine.registry.resolve(request.checkpoint))
    seen = []
    hook = loaded.base.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        engine.generate(request)
    finally:
        hook.remove()
    return seen


def test_prompt_editing_switches_the_unets_conditioning_at_the_right_step(engine):
    edited = unet_conditioning_per_call(engine, tiny_request(prompt="a [red:blue:2] cat", steps=5))
    red = unet_conditioning_per_call(engine, tiny_request(prompt="a red cat", steps=5))
    blue = unet_conditioning_per_call(engine, tiny_request(prompt="a blue cat", steps=5))
    assert len(edited) == 5  # one UNet call per Euler step, CFG batched as [negative, positive]
    # A1111: "when" = 2 means steps 0..2 use "red", then "blue"
    for step in range(5):
        expected = red if step <= 2 else blue
        assert torch.equal(edited[step], expected[step]), step


def test_alternation_switches_as_in_a1111(engine):
    alternating = unet_conditioning_per_call(engine, tiny_request(prompt="a [cat|dog]", steps=4))
    cat = unet_conditioning_per_call(engine, tiny_request(prompt="a cat", steps=4))
    dog = unet_conditioning_per_call(engine, tiny_request(prompt="a dog", steps=4))
    # A1111 compares its 0-based step with 1-based schedule ends, so the first word is used twice:
    # cat, cat, dog, cat (its reconstruct_cond_batch); after that it alternates every step.
    expected = [cat, cat, dog, cat]
    assert [torch.equal(alternating[i], expected[i][i]) for i in range(4)] == [True] * 4


def test_batched_jobs_with_different_schedules_each_match_alone(engine):
    requests = [tiny_request(prompt="a [red:blue:2] cat", seed=1, steps=5),
                tiny_request(prompt="a [cat|dog] in a field", seed=2, steps=5, negative_prompt="[ugly:blurry:0.5]"),
                tiny_request(prompt="plain house", seed=3, steps=5)]
    assert len({engine.batch_key(r) for r in requests}) == 1
    batched = engine.run_batch([BatchItem(key=i, request=r) for i, r in enumerate(requests)])
    for i, request in enumerate(requests):
        assert max_diff(batched[i][0].image, engine.generate(request)[0].image) <= 1


def test_embedding_triggers_work_inside_weighted_text(engine):
    plain = engine.generate(tiny_request(prompt="a cat a1111pt", seed=5, steps=6))[0]
    weighted = engine.generate(tiny_request(prompt="a cat (a1111pt:1.4)", seed=5, steps=6))[0]
    assert max_diff(plain.image, weighted.image) > 0
    assert "TI hashes" in weighted.infotext


def test_img2img_and_inpaint_reuse_the_loaded_modules(engine, registry):
    loaded = engine.cache.get(registry.resolve("tiny"))
    for mode in ("img2img", "inpaint"):
        derived = loaded.pipeline_for(mode)
        assert derived is not loaded.base and derived is loaded.pipeline_for(mode)
        assert derived.unet is loaded.base.unet and derived.text_encoder is loaded.base.text_encoder


def test_token_counts_see_multi_vector_embeddings_as_the_loaded_tokenizer_does(engine, registry):
    from generation.conditioning import PromptEncoder

    engine.generate(tiny_request(prompt="a1111pt"))  # loads the 2-vector embedding into the pipeline
    loaded = engine.cache.get(registry.resolve("tiny")).base
    truth = PromptEncoder(loaded.tokenizer, loaded.text_encoder, max_chunks=6)
    assert engine.token_count("a cat a1111pt") == engine.token_count("a cat") + 2
    # around the 75-token boundary; at 74 the 2 vectors do not fit and move whole to a new chunk, as in A1111
    for cats, tokens, chunks in ((72, 74, 1), (73, 75, 1), (74, 77, 2)):
        prompt = "cat " * cats + "a1111pt"
        assert engine.token_count(prompt) == truth.token_count(prompt) == tokens
        assert engine.prompt_chunks(tiny_request(prompt=prompt)) == len(truth.tokenize(prompt).chunks) == chunks


def test_unknown_networks_are_refused_clearly_not_read_as_words(engine):
    with pytest.raises(InvalidRequest) as refused:
        engine.check_request(tiny_request(prompt="a cat <lora:fluffy:0.8> <hypernet:old:1>"))
    assert "there is no LoRA named 'fluffy'; /loras lists them" in str(refused.value)
    assert "extra networks are not supported: <hypernet:old:1>; remove them" in str(refused.value)
    engine.check_request(tiny_request(prompt="a cat", negative_prompt="<hypernet:old:1> <lora:x:1>"))  # text there
    engine.check_request(tiny_request(prompt="a <cat> and (dog:1.2)"))  # angle brackets alone are text


@pytest.mark.parametrize("sampler, prompt", [("Euler", "a red cat"), ("DPM++ 2M", "a red cat AND a blue dog:0.6")])
def test_jobs_differing_only_in_cfg_share_a_batch_and_equal_their_alone_images(engine, sampler, prompt):
    """Per-image CFG (composable.PerImageGuidance): one pipeline call, each image as alone (1/255)."""
    import numpy as np

    requests = [tiny_request(seed=5, cfg_scale=7.0, sampler=sampler, prompt=prompt),
                tiny_request(seed=6, cfg_scale=3.5, sampler=sampler, prompt=prompt, count=2),
                tiny_request(seed=9, cfg_scale=12.0, sampler=sampler, prompt=prompt)]
    assert len({engine.check(request).batch_key for request in requests}) == 1
    assert engine.check(tiny_request(cfg_scale=1.0)).batch_key != engine.check(tiny_request(cfg_scale=7.0)).batch_key
    together = engine.run_batch([BatchItem(key=i, request=r) for i, r in enumerate(requests)])
    for index, request in enumerate(requests):
        for alone, batched in zip(engine.generate(request), together[index]):
            difference = np.abs(np.asarray(alone.image, dtype=np.int16) - np.asarray(batched.image, dtype=np.int16))
            assert difference.max() <= 1
            assert f"CFG scale: {request.cfg_scale:g}" in batched.infotext
