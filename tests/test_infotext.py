"""A1111 infotext: exact layout, parsing, round trips and the image containers that carry it."""

from __future__ import annotations

import io
import random
import re
import struct
import time
import zlib

import pytest
from PIL import Image

from generation.errors import EaselError, ImageError
from generation.infotext import (
    MAX_INFOTEXT_CHARS,
    Infotext,
    _param_pairs,
    format_infotext,
    parse_hash_list,
    parse_infotext,
    png_with_infotext,
    read_infotext,
    to_request_fields,
)

# Written out here rather than imported, so a change in the module cannot hide a mismatch.
A1111_PARAM_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')

BASE = dict(
    steps=20,
    sampler="Euler a",
    schedule_type="Karras",
    cfg_scale=7.0,
    seed=1234,
    width=512,
    height=768,
    version="easel 0.1.0",
)

A1111_SAMPLE = (
    "masterpiece, best quality, 1girl, (looking at viewer:1.2), <lora:add_detail:0.6>\n"
    "Negative prompt: easynegative, (worst quality, low quality:1.4), text\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 2387412923, "
    "Size: 512x768, Model hash: 7f96a1a9ca, Model: anything-v5, VAE hash: 735e4c3a44, "
    "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.45, Clip skip: 2, "
    "Hires upscale: 2, Hires steps: 15, Hires upscaler: R-ESRGAN 4x+ Anime6B, "
    'Lora hashes: "add_detail: 7c6bad76eb54", TI hashes: "easynegative: c74b4e810b03", '
    "Version: v1.10.1"
)


def render(prompt: str, negative_prompt: str = "", **overrides) -> str:
    return format_infotext(prompt=prompt, negative_prompt=negative_prompt, **{**BASE, **overrides})


# --------------------------------------------------------------------------- format


def test_typical_parameters_render_exactly_like_a1111():
    text = format_infotext(
        prompt="a photo of a cat, (sitting:1.2) on a red sofa",
        negative_prompt="blurry, lowres",
        steps=20,
        sampler="DPM++ 2M",
        schedule_type="Karras",
        cfg_scale=7.5,
        seed=1234,
        width=512,
        height=512,
        model_hash="6ce0161689",
        model="v1-5-pruned-emaonly",
        vae_hash="735e4c3a44",
        vae="vae-ft-mse-840000-ema-pruned.safetensors",
        denoising_strength=0.75,
        clip_skip=2,
        ti_hashes={"easynegative": "c74b4e810b03", "bad:hands,v2": "0123456789ab"},
        extra=[("Hires upscale", 2), ("Hires upscaler", "Latent"), ("Lora hashes", "foo: abcdef012345")],
        version="easel 0.1.0",
    )
    assert text == (
        "a photo of a cat, (sitting:1.2) on a red sofa\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1234, "
        "Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, "
        "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.75, Clip skip: 2, "
        'Hires upscale: 2, Hires upscaler: Latent, Lora hashes: "foo: abcdef012345", '
        'TI hashes: "easynegative: c74b4e810b03, badhandsv2: 0123456789ab", Version: easel 0.1.0'
    )


def test_omitted_parts_leave_no_trace():
    text = render("a cat", "", schedule_type=None, clip_skip=1)
    assert text == (
        "a cat\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x768, Version: easel 0.1.0"
    )
    assert "Negative prompt" not in text
    assert "Clip skip" not in text
    assert "Model hash" not in text and "TI hashes" not in text


def test_automatic_schedule_type_is_written_as_v1_10_does():
    assert "Sampler: Euler a, Schedule type: Automatic, CFG scale: 7," in render(
        "x", schedule_type="Automatic"
    )


def test_numbers_are_formatted_like_a1111():
    text = render("x", cfg_scale=7.0, denoising_strength=0.35)
    assert "CFG scale: 7," in text
    assert "Denoising strength: 0.35," in text
    assert "CFG scale: 4.5," in render("x", cfg_scale=4.5)
    assert "CFG scale: 12," in render("x", cfg_scale=12)


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("name, with comma", '"name, with comma"'),
        ("name: with colon", '"name: with colon"'),
        ("two\nlines", '"two\\nlines"'),
        ('"already quoted"', '"\\"already quoted\\""'),
        ("back\\slash, 日本", '"back\\\\slash, 日本"'),
        ("", '""'),
        (" padded ", '" padded "'),
        ("plain name", "plain name"),
    ],
)
def test_values_that_would_break_the_line_are_json_quoted(value: str, written: str):
    text = render("x", model=value, extra=[("Note", value)])
    assert f"Model: {written}, " in text
    parsed = parse_infotext(text)
    assert parsed.get("Model") == value
    assert parsed.get("Note") == value
    # A1111's own pattern still sees every pair.
    assert len(A1111_PARAM_PAIR.findall(text.split("\n")[-1])) == len(parsed.params)


def test_bad_arguments_are_programming_errors():
    with pytest.raises(ValueError, match="repeats"):
        render("x", extra=[("Seed", "1")])
    with pytest.raises(ValueError, match="repeats"):
        render("x", extra=[("Hires steps", "1"), ("Hires steps", "2")])
    with pytest.raises(ValueError, match="not a valid"):
        render("x", extra=[("Bad: key", "1")])
    with pytest.raises(ValueError, match="finite"):
        render("x", cfg_scale=float("nan"))
    with pytest.raises(TypeError):
        render("x", steps=20.0)


# --------------------------------------------------------------------------- parse


def test_parses_a_real_a1111_infotext():
    info = parse_infotext(A1111_SAMPLE)
    assert info.prompt == (
        "masterpiece, best quality, 1girl, (looking at viewer:1.2), <lora:add_detail:0.6>"
    )
    assert info.negative_prompt == "easynegative, (worst quality, low quality:1.4), text"
    assert [key for key, _ in info.params] == [
        "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
        "VAE hash", "VAE", "Denoising strength", "Clip skip", "Hires upscale", "Hires steps",
        "Hires upscaler", "Lora hashes", "TI hashes", "Version",
    ]  # fmt: skip
    assert info.get("Hires upscaler") == "R-ESRGAN 4x+ Anime6B"
    assert info.get("Lora hashes") == "add_detail: 7c6bad76eb54"
    assert parse_hash_list(info.get("TI hashes")) == {"easynegative": "c74b4e810b03"}
    assert info.get("Missing") is None

    fields = to_request_fields(info)
    assert {k: v for k, v in fields.items() if k not in ("prompt", "negative_prompt")} == {
        "steps": 28,
        "sampler": "DPM++ 2M",
        "schedule_type": "Karras",
        "cfg_scale": 7.5,
        "seed": 2387412923,
        "width": 512,
        "height": 768,
        "model_hash": "7f96a1a9ca",
        "model": "anything-v5",
        "denoising_strength": 0.45,
        "clip_skip": 2,
        # the hires keys, as A1111's paste reads them (the denoising strength turns the fix on)
        "enable_hr": True,
        "hr_scale": 2.0,
        "hr_second_pass_steps": 15,
        "hr_upscaler": "R-ESRGAN 4x+ Anime6B",
        "extra": {
            "VAE hash": "735e4c3a44",
            "VAE": "vae-ft-mse-840000-ema-pruned.safetensors",
            "Lora hashes": "add_detail: 7c6bad76eb54",
            "TI hashes": "easynegative: c74b4e810b03",
            "Version": "v1.10.1",
        },
        "warnings": [],
    }


def test_multiline_prompts_and_windows_line_ends():
    text = "line one,\r\nline two\r\nNegative prompt: bad,\r\nworse\r\nSteps: 5, Seed: 1, Size: 64x64\r\n"
    info = parse_infotext(text)
    assert info.prompt == "line one,\nline two"
    assert info.negative_prompt == "bad,\nworse"
    assert info.as_dict() == {"Steps": "5", "Seed": "1", "Size": "64x64"}


def test_last_line_with_fewer_than_three_pairs_is_prompt():
    info = parse_infotext("a cat\nSteps: 20, Seed: 5")
    assert info.prompt == "a cat\nSteps: 20, Seed: 5"
    assert info.params == ()
    assert parse_infotext("") == Infotext(prompt="", negative_prompt="", params=())


def test_a_prompt_only_text_that_looks_like_parameters_is_read_as_parameters():
    # A1111's rule, kept: a bare line with three pairs is the parameter line.
    info = parse_infotext("style: ink, mood: calm, light: soft")
    assert info.prompt == ""
    assert info.as_dict() == {"style": "ink", "mood": "calm", "light": "soft"}


def test_repeated_key_last_one_wins_like_a1111():
    info = parse_infotext("x\nSteps: 5, Seed: 1, Steps: 9")
    assert info.get("Steps") == "9"
    assert info.as_dict()["Steps"] == "9"
    assert to_request_fields(info)["steps"] == 9


def test_undecodable_quoted_value_is_kept_raw():
    info = parse_infotext('x\nSteps: 5, Seed: 1, Note: "bad \\q escape"')
    assert info.get("Note") == '"bad \\q escape"'


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [
        ("a, b, c: d", "e, f: g"),
        ('say "hi", then \\(escaped\\) and \\\\', 'quote "inside"'),
        ("first line\nsecond line\n\nafter a blank line\n", "neg\nmore neg"),
        ("日本語のプロンプト, café, emoji 🎨: ok", "ümlaut, ß"),
        ("", ""),
        ("", "only a negative"),
        ("only a positive", ""),
        ("cat\nSteps: 1, Sampler: Fake, Seed: 2, Size: 8x8", ""),
        ("cat\nSteps: 1, Sampler: Fake, Seed: 2, Size: 8x8", "dog\nCFG scale: 1, Seed: 3, Size: 9x9"),
        ("Negative prompt: not really", ""),
        ("a\nNegative prompt: still the prompt\nb", "Negative prompt: in the negative"),
        ("\\Negative prompt: with a backslash", "neg\n\\\\Negative prompt: two"),
        ('"starts with a quote', 'ends with one"'),
    ],
)
def test_round_trip_of_tricky_prompts(prompt: str, negative: str):
    info = parse_infotext(render(prompt, negative, extra=[("Note", f"{prompt}|{negative}")]))
    assert info.prompt == prompt
    assert info.negative_prompt == negative
    assert info.get("Note") == f"{prompt}|{negative}"
    assert info.get("Steps") == "20"
    assert info.get("Version") == "easel 0.1.0"


def test_whitespace_at_line_edges_is_the_one_thing_lost():
    info = parse_infotext(render("\n  padded  \n  lines", "  neg  "))
    assert info.prompt == "padded\nlines"
    assert info.negative_prompt == "neg"


def test_request_fields_round_trip_from_our_own_output():
    text = render(
        "p", "n", model="m, 1", model_hash="abc", denoising_strength=0.5, clip_skip=3,
        extra=[("Hires steps", 10), ("Face restoration", "CodeFormer")],
    )  # fmt: skip
    fields = to_request_fields(parse_infotext(text))
    assert fields["cfg_scale"] == 7.0 and isinstance(fields["cfg_scale"], float)
    assert (fields["width"], fields["height"]) == (512, 768)
    assert fields["model"] == "m, 1"
    assert fields["clip_skip"] == 3
    assert fields["hr_second_pass_steps"] == 10
    assert fields["extra"] == {"Face restoration": "CodeFormer", "Version": "easel 0.1.0"}
    assert fields["warnings"] == []


def test_clip_skip_defaults_to_one_when_absent():
    assert to_request_fields(parse_infotext(render("p")))["clip_skip"] == 1


def test_bad_values_become_warnings_not_crashes():
    info = parse_infotext(
        "p\nSteps: abc, Sampler: Euler, CFG scale: high, Seed: 12.5, Size: 512 by 512, "
        "Denoising strength: nan, Clip skip: ２, Model: ok"
    )
    fields = to_request_fields(info)
    for missing in ("steps", "cfg_scale", "seed", "width", "height", "denoising_strength"):
        assert missing not in fields
    assert fields["clip_skip"] == 1  # the unreadable value is ignored, the default stays
    assert fields["sampler"] == "Euler"
    assert fields["model"] == "ok"
    assert len(fields["warnings"]) == 6
    assert fields["warnings"][0] == "Steps: 'abc' is not a whole number, ignored"
    assert any(w.startswith("Size: '512 by 512'") for w in fields["warnings"])


def test_size_splits_into_width_and_height():
    fields = to_request_fields(parse_infotext("p\nSteps: 1, Seed: 2, Size: 1024x576"))
    assert (fields["width"], fields["height"]) == (1024, 576)


def test_hash_list_skips_malformed_entries():
    assert parse_hash_list("a: 0123, junk, b:4567, : x") == {"a": "0123", "b": "4567"}


# --------------------------------------------------------------------------- image files


def _png_chunks(data: bytes) -> list[bytes]:
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        chunks.append(data[position + 4 : position + 8])
        position += 12 + length
    return chunks


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_png_round_trip_keeps_unicode_in_an_itxt_chunk():
    text = render("日本語, café 🎨\nsecond line", "ß")
    data = png_with_infotext(Image.new("RGB", (16, 16), "red"), text)
    assert b"iTXt" in _png_chunks(data)
    assert read_infotext(data) == text
    assert parse_infotext(read_infotext(data)).prompt == "日本語, café 🎨\nsecond line"


def test_latin1_text_uses_a_plain_text_chunk():
    data = png_with_infotext(Image.new("RGBA", (4, 4)), "café\nSteps: 1, Seed: 2, Size: 4x4")
    assert b"tEXt" in _png_chunks(data) and b"iTXt" not in _png_chunks(data)
    assert read_infotext(data) == "café\nSteps: 1, Seed: 2, Size: 4x4"


def test_png_with_text_after_the_image_data_is_read():
    plain = io.BytesIO()
    Image.new("L", (4, 4)).save(plain, format="PNG")
    data = plain.getvalue()
    iend = data.rindex(b"IEND") - 4
    data = data[:iend] + _chunk(b"tEXt", b"parameters\x00late text") + data[iend:]
    assert read_infotext(data) == "late text"


def test_png_without_parameters_gives_none():
    plain = io.BytesIO()
    Image.new("RGB", (4, 4)).save(plain, format="PNG")
    assert read_infotext(plain.getvalue()) is None


def _with_user_comment(format: str, comment: bytes) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = comment  # Exif IFD -> UserComment
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buffer, format=format, exif=exif)
    return buffer.getvalue()


def test_jpeg_exif_user_comment_as_a1111_writes_it():
    text = render("a cat, 日本 🎨", "bad")
    data = _with_user_comment("JPEG", b"UNICODE\x00" + text.encode("utf-16-be"))
    assert read_infotext(data) == text


def test_webp_and_other_user_comment_encodings():
    assert read_infotext(_with_user_comment("WEBP", b"UNICODE\x00" + "héllo".encode("utf-16-be"))) == "héllo"
    assert read_infotext(_with_user_comment("JPEG", b"UNICODE\x00" + "héllo".encode("utf-16-le"))) == "héllo"
    assert read_infotext(_with_user_comment("JPEG", b"ASCII\x00\x00\x00plain text")) == "plain text"
    assert read_infotext(_with_user_comment("JPEG", b"no prefix at all")) == "no prefix at all"


def test_jpeg_without_metadata_gives_none():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    assert read_infotext(buffer.getvalue()) is None


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, this is not an image", b"%PDF-1.7\n" + b"0" * 100],
)
def test_non_images_are_refused_clearly(data: bytes):
    with pytest.raises(ImageError, match="not a PNG, JPEG or WEBP image") as caught:
        read_infotext(data)
    assert isinstance(caught.value, EaselError)


def test_other_image_formats_are_refused():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="GIF")
    with pytest.raises(ImageError, match="not a PNG, JPEG or WEBP"):
        read_infotext(buffer.getvalue())


def test_damaged_png_is_refused():
    data = png_with_infotext(Image.new("RGB", (64, 64)), "x")
    with pytest.raises(ImageError):
        read_infotext(data[:40])


def test_pixel_cap_is_checked_before_decoding():
    data = png_with_infotext(Image.new("L", (100, 60)), "x")
    assert read_infotext(data, max_pixels=6000) == "x"
    with pytest.raises(ImageError, match="too large"):
        read_infotext(data, max_pixels=5999)


# --------------------------------------------------------------------------- hostile text


def test_pair_scanner_equals_a1111_pattern_on_real_lines():
    lines = [A1111_SAMPLE.split("\n")[-1], render("x", model="m, 1", extra=[("Note", 'a "b", c: d')])]
    lines += [render(prompt, negative).split("\n")[-1] for prompt, negative in [("a", "b"), ("", ""), ("p: q", "r, s")]]
    lines += ["Steps: 5, Seed: 1, Size: 64x64\r", 'a: "x", b: "y\\\\", c: "z\\n', 'k: "v"\n', 'k: "v"\nx', "ab: ,cd:,ef:"]
    for line in lines:
        assert _param_pairs(line) == A1111_PARAM_PAIR.findall(line), line


@pytest.mark.parametrize("alphabet", ['a b:,"\\-/ 1\n', 'ab:,"', 'a :"\\,\n\t', "ab:,\"\\-/ é_\u2003\n"])
def test_pair_scanner_equals_a1111_pattern_on_random_lines(alphabet: str):
    rng = random.Random(alphabet)
    for _ in range(20_000):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randrange(30)))
        assert _param_pairs(line) == A1111_PARAM_PAIR.findall(line), line


# 1 MiB lines: A1111's pattern is quadratic on each (128 KiB of the first took 67 s); the scanner
# reads them in tens of milliseconds. The bound is generous, for a loaded CI machine.
HOSTILE_LINES = {
    "one long key": "a" * 2**20,
    "words, no colon": "ab " * (2**20 // 3),
    "one-letter keys": "a:" * 2**19,
    "dashes": "a-" * 2**19,
    "unclosed quotes": 'ab:"x, ' * (2**20 // 7),
    "backslashes": "ab: " + '"' + "\\" * 2**20,
}


@pytest.mark.parametrize("name", HOSTILE_LINES)
def test_a_hostile_parameter_line_parses_in_linear_time(name: str):
    started = time.perf_counter()
    parse_infotext("prompt\n" + HOSTILE_LINES[name])
    assert time.perf_counter() - started < 2.0


def test_hostile_numbers_become_warnings_quickly():
    started = time.perf_counter()
    fields = to_request_fields(Infotext("p", "", params=(
        ("Seed", "1" * 5000),
        ("Steps", "-" + "9" * 4300),
        ("CFG scale", "1" * 60_000 + "x"),  # quadratic for a pattern that can split digits two ways
        ("Denoising strength", "9" * 400),  # float() gives infinity
        ("Size", "1" * 5000 + "x512"),
        ("Clip skip", "2"),
    )))
    assert time.perf_counter() - started < 2.0
    for missing in ("seed", "steps", "cfg_scale", "denoising_strength", "width", "height"):
        assert missing not in fields
    assert fields["clip_skip"] == 2
    assert [warning.split(":")[0] for warning in fields["warnings"]] == [
        "Seed", "Steps", "CFG scale", "Denoising strength", "Size"]
    assert all(len(warning) < 120 for warning in fields["warnings"])
    assert fields["warnings"][0].endswith("is too long for a number, ignored")


def test_long_numbers_that_mean_something_still_read():
    fields = to_request_fields(parse_infotext("p\nSteps: 20, Seed: 18446744073709551615, CFG scale: 7.50000000000000000001"))
    assert fields["seed"] == 18446744073709551615
    assert fields["cfg_scale"] == 7.5


def test_infotext_at_the_limit_is_read():
    text = "x" * MAX_INFOTEXT_CHARS
    assert read_infotext(png_with_infotext(Image.new("L", (4, 4)), text)) == text


def test_a_longer_png_infotext_is_refused():
    data = png_with_infotext(Image.new("L", (4, 4)), "x" * (MAX_INFOTEXT_CHARS + 1))
    with pytest.raises(ImageError, match="generation parameters are 65,537 characters long; the limit is 65,536"):
        read_infotext(data)


def test_a_longer_exif_comment_is_refused():
    # WEBP, as a JPEG's EXIF segment holds at most 64 KiB
    data = _with_user_comment("WEBP", b"UNICODE\x00" + ("y" * (MAX_INFOTEXT_CHARS + 1)).encode("utf-16-be"))
    with pytest.raises(ImageError, match="the limit is 65,536"):
        read_infotext(data)


@pytest.mark.parametrize("key", ["Mask blur", "Masked area padding", "Variation seed", "Variation seed strength",
                                 "Seed resize from", "Masked content"])
def test_newer_keys_with_hostile_values_become_warnings(key):
    fields = to_request_fields(parse_infotext(f"a cat\nSteps: 2, Seed: 1, Size: 64x64, {key}: {'9' * 60000}"))
    assert fields["steps"] == 2 and any(key in warning for warning in fields["warnings"])
