"""A1111-style conditioning on the real SD tokenizer and the tiny random text encoder."""

from __future__ import annotations

import copy
import random
import string
import time

import pytest
import torch

from generation import conditioning
from generation.conditioning import (
    CHUNK_LENGTH,
    PromptEncoder,
    make_step_callback,
    replace_for_step,
    stack_at,
    stack_negative_at,
)
from generation.errors import InvalidRequest, PromptError
from generation.prompt_parser import parse_attention
from generation.testing import build_tiny_pipeline, sd_clip_tokenizer

BOS, EOS, COMMA, CAT, DOG = 49406, 49407, 267, 2368, 1929


@pytest.fixture(scope="module")
def pipe():
    pipe = build_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def encoder(pipe):
    return PromptEncoder(pipe.tokenizer, pipe.text_encoder, max_chunks=3)


@pytest.fixture(scope="module")
def biased_encoder(pipe):
    """Like a real CLIP encoder, whose final LayerNorm has a bias, so hidden states have a mean
    well away from zero (the tiny random model's is ~0, which makes the emphasis rescale moot)."""
    text_encoder = copy.deepcopy(pipe.text_encoder)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        text_encoder.final_layer_norm.bias.copy_(0.3 + 0.1 * torch.randn(32, generator=generator))
    return PromptEncoder(pipe.tokenizer, text_encoder, max_chunks=3)


def raw_hidden(encoder: PromptEncoder, text: str) -> torch.Tensor:
    """Unweighted encoder output for one text's chunks: [chunks*77, dim]."""
    chunks = encoder.tokenize(text).chunks
    ids = torch.tensor([chunk.token_ids for chunk in chunks])
    with torch.no_grad():
        return encoder.text_encoder(input_ids=ids).last_hidden_state.reshape(-1, 32)


# -- tokens and chunks ---------------------------------------------------------------------------------

def test_token_counts_match_what_a1111_shows(encoder):
    assert encoder.token_count("a photo of a cat") == 5
    assert encoder.token_count("") == 0
    assert encoder.token_count("(cat:1.3), [dog]") == 3
    assert encoder.token_count("cat " * 80) == 80
    assert encoder.token_count("a BREAK b") == 76  # the chunk closed by BREAK counts as 75
    assert encoder.token_count("a BREAK") == 75
    assert encoder.token_count("[cat:a big dog:2]", steps=10) == 3  # longest text of the schedule


def test_chunks_hold_75_tokens_between_bos_and_eos(encoder):
    one = encoder.tokenize("cat " * 75)
    assert len(one.chunks) == 1 and one.token_count == 75
    assert one.chunks[0].token_ids == (BOS, *[CAT] * 75, EOS)

    two = encoder.tokenize("cat " * 76)
    assert len(two.chunks) == 2 and two.token_count == 76
    assert two.chunks[1].token_ids == (BOS, CAT, *[EOS] * 75)
    assert all(len(chunk.token_ids) == len(chunk.multipliers) == CHUNK_LENGTH for chunk in two.chunks)


def test_break_starts_a_new_chunk(encoder):
    chunks = encoder.tokenize("cat BREAK dog").chunks
    assert [chunk.token_ids[:3] for chunk in chunks] == [(BOS, CAT, EOS), (BOS, DOG, EOS)]
    assert encoder.tokenize("BREAK dog").chunks[0].token_ids == (BOS, *[EOS] * 76)


def test_weights_follow_tokens(encoder):
    chunk = encoder.tokenize("a (cat:1.5) [dog]").chunks[0]
    assert chunk.token_ids[:5] == (BOS, 320, CAT, DOG, EOS)
    assert chunk.multipliers[:5] == pytest.approx((1.0, 1.0, 1.5, 1 / 1.1, 1.0))
    assert set(chunk.multipliers[4:]) == {1.0}


def test_full_chunk_breaks_after_a_nearby_comma(pipe, encoder):
    text = "cat " * 70 + ", " + "dog " * 10
    chunks = encoder.tokenize(text).chunks
    assert chunks[0].token_ids[71] == COMMA and chunks[0].token_ids[72:] == (EOS,) * 5  # cut after the comma
    assert chunks[1].token_ids[1:11] == (DOG,) * 10
    assert encoder.tokenize(text).token_count == 85

    no_backtrack = PromptEncoder(pipe.tokenizer, pipe.text_encoder, max_chunks=3, comma_backtrack=0)
    plain = no_backtrack.tokenize(text)
    assert plain.chunks[0].token_ids[72:76] == (DOG,) * 4 and plain.token_count == 81


def test_too_many_chunks_is_a_prompt_error(pipe):
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder, max_chunks=1)
    with pytest.raises(PromptError, match=r"prompt is 76 tokens; the limit is 75"):
        encoder.encode("cat " * 76, "")
    with pytest.raises(PromptError, match=r"negative prompt is 150 tokens"):
        encoder.encode("cat", "dog " * 150)
    with pytest.raises(PromptError, match=r"is 80 tokens"):
        encoder.encode_schedule("[cat:" + "dog " * 80 + ":3]", "", 10)


def test_clip_skip_must_fit_the_encoder(pipe):
    with pytest.raises(InvalidRequest, match="clip skip"):
        PromptEncoder(pipe.tokenizer, pipe.text_encoder, max_chunks=3, clip_skip=3)  # 2 layers


# -- encodings -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "negative"), [
    ("a photo of an astronaut riding a horse, highly detailed", "blurry, lowres"),
    ("cat " * 75, ""),
    ("", "ugly"),
])
def test_plain_prompts_equal_diffusers_encode_prompt(pipe, encoder, prompt, negative):
    embeds, negative_embeds = encoder.encode(prompt, negative)
    expected, expected_negative = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
    assert embeds.shape == negative_embeds.shape == (1, 77, 32)
    assert torch.equal(embeds, expected)
    assert torch.equal(negative_embeds, expected_negative)


def test_negative_is_padded_with_empty_chunks(encoder):
    embeds, negative_embeds = encoder.encode("cat " * 100, "ugly")
    assert embeds.shape == negative_embeds.shape == (1, 154, 32)
    empty, _ = encoder.encode("", "")
    assert torch.equal(negative_embeds[0, 77:], empty[0])
    assert not torch.equal(negative_embeds[0, :77], empty[0])

    short, long_negative = encoder.encode("cat", "dog " * 100)
    assert short.shape == long_negative.shape == (1, 154, 32)
    assert torch.equal(short[0, 77:], empty[0])


def test_long_prompt_chunks_are_encoded_separately(encoder):
    embeds, _ = encoder.encode("cat " * 75 + "dog", "")
    first, _ = encoder.encode("cat " * 75, "")
    second, _ = encoder.encode("dog", "")
    assert torch.equal(embeds[0, :77], first[0])
    assert torch.equal(embeds[0, 77:], second[0])


def test_original_emphasis_scales_tokens_and_keeps_the_mean(biased_encoder):
    plain, _ = biased_encoder.encode("a cat on a mat", "")
    weighted, _ = biased_encoder.encode("a (cat:1.5) on a mat", "")
    z = raw_hidden(biased_encoder, "a cat on a mat")
    assert torch.allclose(plain[0], z)

    out = weighted[0]
    assert out.mean().item() == pytest.approx(z.mean().item(), rel=1e-5)  # mean restored
    ratio = (out[0] / z[0]).mean()  # BOS has weight 1: the rescale factor alone
    assert ratio.item() != pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(out[0], z[0] * ratio, atol=1e-5)
    assert torch.allclose(out[2], z[2] * 1.5 * ratio, atol=1e-5)  # "cat": weight, then rescale
    assert torch.allclose(out[3:], z[3:] * ratio, atol=1e-5)

    lower, _ = biased_encoder.encode("a [cat] on a mat", "")
    assert torch.allclose(lower[0, 2], z[2] / 1.1 * (lower[0, 0] / z[0]).mean(), atol=1e-5)


def test_emphasis_on_a_zero_mean_encoder_stays_finite(encoder):
    weighted, _ = encoder.encode("a (cat:1.5) on a mat", "")
    assert torch.isfinite(weighted).all()
    z = raw_hidden(encoder, "a cat on a mat")
    assert torch.allclose(weighted[0, 2], z[2] * 1.5, atol=1e-6)


def test_clip_skip_uses_an_earlier_layer_then_the_final_norm(pipe, encoder):
    skip_two = PromptEncoder(pipe.tokenizer, pipe.text_encoder, max_chunks=3, clip_skip=2)
    embeds, _ = skip_two.encode("a photo of a cat", "")
    default, _ = encoder.encode("a photo of a cat", "")
    assert not torch.allclose(embeds, default)
    ids = torch.tensor([skip_two.tokenize("a photo of a cat").chunks[0].token_ids])
    with torch.no_grad():
        hidden = pipe.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-2]
        expected = pipe.text_encoder.final_layer_norm(hidden)
    assert torch.equal(embeds, expected)


def test_sd2_style_tokenizer_pads_after_the_first_eos(pipe):
    """SD-2 tokenizers pad with "!" (id 0): every position after the first EOS gets the pad id."""
    tokenizer = sd_clip_tokenizer(pad_token="!")
    encoder = PromptEncoder(tokenizer, pipe.text_encoder, max_chunks=3)
    embeds, _ = encoder.encode("a photo of a cat", "")
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids[0, 7:].eq(0).all()
    with torch.no_grad():
        expected = pipe.text_encoder(input_ids=ids).last_hidden_state
    assert torch.equal(embeds, expected)


# -- textual inversion ---------------------------------------------------------------------------------

@pytest.fixture()
def ti_encoder(pipe):
    """A fresh tokenizer and encoder copy with a 3-vector embedding `myemb` loaded by diffusers."""
    tokenizer, text_encoder = sd_clip_tokenizer(), copy.deepcopy(pipe.text_encoder)
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(11)) * 2
    pipe.load_textual_inversion({"myemb": vectors}, token="myemb", tokenizer=tokenizer, text_encoder=text_encoder)
    return PromptEncoder(tokenizer, text_encoder, max_chunks=3)


def test_multi_vector_trigger_works_inside_weighted_text(ti_encoder):
    ids = [ti_encoder.tokenizer.convert_tokens_to_ids(token) for token in ("myemb", "myemb_1", "myemb_2")]
    chunk = ti_encoder.tokenize("a (myemb:1.2), cat").chunks[0]
    assert chunk.token_ids[:7] == (BOS, 320, *ids, COMMA, CAT)
    assert chunk.multipliers[2:5] == (1.2, 1.2, 1.2)
    assert ti_encoder.token_count("a (myemb:1.2), cat") == 6

    embeds, _ = ti_encoder.encode("a myemb cat", "")
    without, _ = ti_encoder.encode("a cat", "")
    assert not torch.allclose(embeds[0, 2], without[0, 2])


def test_multi_vector_embedding_is_never_split_between_chunks(ti_encoder):
    chunks = ti_encoder.tokenize("cat " * 73 + "myemb").chunks
    assert len(chunks) == 2
    assert chunks[0].token_ids[74:] == (EOS,) * 3  # 73 cats, then padding instead of a split
    assert chunks[1].token_ids[1:4] == tuple(
        ti_encoder.tokenizer.convert_tokens_to_ids(t) for t in ("myemb", "myemb_1", "myemb_2"))


# -- schedules -----------------------------------------------------------------------------------------

def test_schedule_switches_at_a1111_steps(encoder):
    schedule = encoder.encode_schedule("a [cat:dog:3]", "", 10)
    cat, _ = encoder.encode("a cat", "")
    dog, _ = encoder.encode("a dog", "")
    assert [schedule.text_at(i) for i in range(10)] == ["a cat"] * 4 + ["a dog"] * 6
    for step in range(10):
        assert torch.equal(schedule.embeds_at(step), cat if step <= 3 else dog)
    assert not schedule.is_static
    assert encoder.encode_schedule("a (cat:1.2)", "ugly", 10).is_static


def test_alternation_schedule_and_negative_schedule(encoder):
    schedule = encoder.encode_schedule("[cat|dog]", "[ugly:blurry:0.5]", 4)
    assert [schedule.text_at(i) for i in range(4)] == ["cat", "cat", "dog", "cat"]
    _, ugly = encoder.encode("", "ugly")
    _, blurry = encoder.encode("", "blurry")
    assert [torch.equal(schedule.negative_embeds_at(i), ugly) for i in range(4)] == [True, True, True, False]
    assert torch.equal(schedule.negative_embeds_at(3), blurry)


def test_schedule_entries_share_one_chunk_count(encoder):
    schedule = encoder.encode_schedule("[cat:" + "dog " * 80 + ":2]", "ugly", 10)
    assert schedule.chunk_count == 2
    assert {e.shape for e in schedule.embeds + schedule.negative_embeds} == {(1, 154, 32)}
    empty, _ = encoder.encode("", "")
    assert torch.equal(schedule.negative_embeds_at(0)[0, 77:], empty[0])


def test_emphasis_mean_spans_the_schedule_texts(biased_encoder):
    """A1111 encodes all texts of a schedule in one batch and takes the emphasis mean over it."""
    schedule = biased_encoder.encode_schedule("[(cat:1.5)|dog]", "", 4)
    z_cat, z_dog = raw_hidden(biased_encoder, "cat"), raw_hidden(biased_encoder, "dog")
    weights = torch.ones(77, 1)
    weights[1] = 1.5
    ratio = (z_cat.mean() + z_dog.mean()) / ((z_cat * weights).mean() + z_dog.mean())
    assert torch.allclose(schedule.embeds_at(0)[0], z_cat * weights * ratio, atol=1e-5)
    assert torch.allclose(schedule.embeds_at(2)[0], z_dog * ratio, atol=1e-5)


def test_stack_pads_every_image_to_the_longest(encoder):
    short = encoder.encode_schedule("a [cat:dog:2]", "", 6)
    long = encoder.encode_schedule("cat " * 100, "", 6)
    stacked = stack_at([short, long], 0)
    assert stacked.shape == (2, 154, 32)
    assert torch.equal(stacked[0, :77], short.embeds_at(0)[0, :77])
    assert torch.equal(stacked[0, 77:], short.empty_chunk[0])
    assert torch.equal(stacked[1], long.embeds_at(0)[0])
    assert torch.equal(stack_at([short, long], 5)[0, :77], short.embeds_at(5)[0])
    assert stack_negative_at([short, long], 0).shape == (2, 154, 32)
    assert short.padded(2).chunk_count == 2 and torch.equal(short.padded(2).embeds_at(0), stacked[:1])


def test_replace_for_step_with_and_without_guidance(encoder):
    schedules = [encoder.encode_schedule("a [cat:dog:3]", "[ugly::3]", 10), encoder.encode_schedule("bird", "", 10)]
    current = torch.cat([stack_negative_at(schedules, 0), stack_at(schedules, 0)])
    assert replace_for_step({"prompt_embeds": current}, 2, schedules) is current  # step 3 still uses entry 0

    after = replace_for_step({"prompt_embeds": current}, 3, schedules)  # embeddings for step 4
    assert after.shape == current.shape
    assert torch.equal(after[:2], stack_negative_at(schedules, 4))
    assert torch.equal(after[2:], stack_at(schedules, 4))
    assert not torch.equal(after[2], current[2]) and torch.equal(after[3], current[3])

    positive_only = replace_for_step({"prompt_embeds": stack_at(schedules, 0)}, 3, schedules)
    assert torch.equal(positive_only, stack_at(schedules, 4))
    with pytest.raises(ValueError, match="rows"):
        replace_for_step({"prompt_embeds": current[:3]}, 3, schedules)


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_pipeline_unet_sees_scheduled_embeddings(pipe, encoder, guidance):
    """End to end: the UNet gets 'a cat' for steps 0-1 and 'a dog' for 2-3 ([cat:dog:1], 4 steps)."""
    schedule = encoder.encode_schedule("a [cat:dog:1]", "", 4)
    from diffusers import EulerDiscreteScheduler

    seen: list[torch.Tensor] = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    original_scheduler = pipe.scheduler
    pipe.scheduler = EulerDiscreteScheduler.from_config(original_scheduler.config)  # one UNet call per step
    try:
        pipe(prompt_embeds=schedule.embeds_at(0), negative_prompt_embeds=schedule.negative_embeds_at(0),
             num_inference_steps=4, guidance_scale=guidance, height=64, width=64, output_type="latent",
             generator=torch.Generator().manual_seed(0), callback_on_step_end=make_step_callback([schedule]),
             callback_on_step_end_tensor_inputs=["prompt_embeds"])
    finally:
        hook.remove()
        pipe.scheduler = original_scheduler
    assert len(seen) == 4
    cat, _ = encoder.encode("a cat", "")
    dog, _ = encoder.encode("a dog", "")
    positives = [tensor[-1] for tensor in seen]  # with guidance: rows are [negative, positive]
    assert [torch.equal(p, cat[0]) for p in positives] == [True, True, False, False]
    assert [torch.equal(p, dog[0]) for p in positives] == [False, False, True, True]
    if guidance > 1:
        negative = schedule.negative_embeds_at(0)[0]
        assert all(tensor.shape[0] == 2 and torch.equal(tensor[0], negative) for tensor in seen)


# -- cost ----------------------------------------------------------------------------------------------

@pytest.fixture()
def counted_encoder(pipe, monkeypatch):
    """A fresh encoder on its own tokenizer, and the list of texts it has parsed (one per tokenization)."""
    parsed: list[str] = []

    def counting_parse(text):
        parsed.append(text)
        return parse_attention(text)

    monkeypatch.setattr(conditioning, "parse_attention", counting_parse)
    return PromptEncoder(sd_clip_tokenizer(), pipe.text_encoder, max_chunks=3), parsed


def test_a_repeated_text_is_tokenized_once(counted_encoder):
    encoder, parsed = counted_encoder
    first = encoder.tokenize("a (cat:1.2)")
    assert encoder.tokenize("a (cat:1.2)") is first
    assert encoder.token_count("a [(cat:1.2):dog:3]", steps=10) == 2  # its texts: "a (cat:1.2)", "a dog"
    assert parsed == ["a (cat:1.2)", "a dog"]


def test_adding_a_token_invalidates_remembered_texts(counted_encoder):
    encoder, parsed = counted_encoder
    before = encoder.tokenize("a zorblat")
    encoder.tokenizer.add_tokens(["zorblat"])  # as textual inversion does
    after = encoder.tokenize("a zorblat")
    assert parsed == ["a zorblat", "a zorblat"]
    assert after.chunks[0].token_ids[:4] == (BOS, 320, len(encoder.tokenizer) - 1, EOS)
    assert after != before


def test_remembered_texts_are_bounded_least_recently_used_first(counted_encoder):
    encoder, parsed = counted_encoder
    texts = [f"cat {index}" for index in range(conditioning._TOKENIZE_CACHE_SIZE + 1)]
    encoder.tokenize(texts[0])
    for text in texts[1:-1]:
        encoder.tokenize(text)
    encoder.tokenize(texts[0])  # used again: now the most recent
    encoder.tokenize(texts[-1])  # one too many: the least recently used (texts[1]) goes
    parsed.clear()
    encoder.tokenize(texts[0])
    encoder.tokenize(texts[1])
    assert parsed == [texts[1]]


def test_hostile_prompts_tokenize_quickly(pipe):
    """What a member can send in 6,000 characters: the Rust CLIP tokenizer is linear on each (a
    6,000-letter word included) and the parsing before it too. ~0.1 s in all; generous bound."""
    rng = random.Random(0)
    prompts = [
        "".join(rng.choice(string.ascii_lowercase) for _ in range(6000)),
        " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(4)) for _ in range(1200)),
        "a" + " " * 6000 + "b",
        "(" * 1300 + "a" + ")" * 1300,
        "(a]" * 2000,
        "(a" * 3000,
    ]
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder, max_chunks=3)
    started = time.perf_counter()
    for prompt in prompts:
        encoder.tokenize(prompt)
    assert time.perf_counter() - started < 2.0
