"""LoRA tags in prompts as A1111 reads them, and /info drafts that keep the LoRAs this bot has."""

from __future__ import annotations

import pytest

from bot.drafts import draft_from_infotext
from generation.config import LimitsConfig
from generation.engine import encoder_prompt
from generation.errors import PromptError
from generation.prompt_parser import lora_tags


@pytest.mark.parametrize(("prompt", "expected"), [
    ("a cat <lora:x:0.8>", [("x", 0.8, 0.8)]),
    ("<lora:x>", [("x", 1.0, 1.0)]),
    ("<lora:x:0.5:1.2>", [("x", 0.5, 1.2)]),
    ("<lora:x:te=0.3>", [("x", 0.3, 0.3)]),  # A1111: unet follows te set by name
    ("<lora:x:0.7:unet=0.1>", [("x", 0.7, 0.1)]),
    ("<lora:x:1:0.5:te=0.2>", [("x", 0.2, 0.5)]),
    ("<lyco:y:0.4>", [("y", 0.4, 0.4)]),
    ("<lora:a:1> and <lora:b:-0.5> <hypernet:h:1>", [("a", 1.0, 1.0), ("b", -0.5, -0.5)]),
    ("<lora:Mixed_Case-v1.2:1>", [("Mixed_Case-v1.2", 1.0, 1.0)]),
])
def test_lora_weights_follow_a1111(prompt, expected):
    assert [(t.name, t.te, t.unet) for t in lora_tags(prompt)] == expected


@pytest.mark.parametrize(("prompt", "message"), [
    ("<lora:x:heavy>", "not a number"),
    ("<lora:x:" + "9" * 400 + ">", "too large"),
    ("<lora:x:1:1:8>", "dyn"),
    ("<lora:x:dyn=8>", "dyn"),
    ("<lora::1>", "names no LoRA"),
])
def test_bad_lora_tags_are_refused_in_words(prompt, message):
    with pytest.raises(PromptError, match=message):
        lora_tags(prompt)


def test_the_encoder_never_reads_a_tag():
    assert encoder_prompt("a cat <lora:x:0.8>, photo") == "a cat , photo"  # A1111 leaves the comma too


def fields(prompt, lora_hashes=None, negative=""):
    extra = {"Lora hashes": lora_hashes} if lora_hashes else {}
    return {"prompt": prompt, "negative_prompt": negative, "extra": extra, "warnings": []}


def test_a_draft_keeps_loras_found_by_hash_then_by_name():
    local = {"fluffy-local": "aaaaaaaaaaaa", "style": "bbbbbbbbbbbb"}
    draft = draft_from_infotext(
        fields("a cat <lora:fluffy:0.8> <lora:style:0.5> <lora:gone:1> <hypernet:old:1>",
               lora_hashes="fluffy: AAAAAAAAAAAA, style: 999999999999, gone: cccccccccccc",
               negative="<lora:neg:1> blurry"),
        limits=LimitsConfig(), checkpoints={}, loras=local)
    # fluffy: the image's hash is here under another name; style: the hash differs, the name is here.
    assert draft.given["prompt"] == "a cat <lora:fluffy-local:0.8> <lora:style:0.5>"
    assert draft.given["negative_prompt"] == "<lora:neg:1> blurry"  # plain text in a negative prompt
    assert any("<lora:gone:1>" in item for item in draft.ignored)
    assert any("<hypernet:old:1>" in item and "not supported" in item for item in draft.ignored)
