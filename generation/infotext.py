"""A1111 "infotext": the generation parameters stored inside an image.

Layout (stable-diffusion-webui v1.10)::

    <prompt, may span lines>
    Negative prompt: <negative prompt, may span lines>     (omitted when empty)
    Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, ...

PNG files carry it in the text chunk ``parameters``; JPEG and WEBP in the EXIF UserComment.

Decisions worth knowing:

- ``Schedule type`` is written whenever a schedule type is given, "Automatic" included: v1.10
  writes the request's scheduler as-is (``"Schedule type": p.scheduler``), so "Automatic"
  appears in its own images. Pass ``schedule_type=None`` to leave the key out.
- A1111's parser strips every prompt line and drops leading blank lines, so whitespace at the
  start or end of a line cannot survive the format. It changes nothing in the image (CLIP's
  tokenizer ignores it). Everything else in a prompt round-trips through our own output.
- A prompt line that starts with ``Negative prompt:`` would be read back as the start of the
  negative prompt. We escape such lines with one leading backslash (``\\Negative prompt:``),
  the way mbox escapes ``>From``; the parser removes exactly one backslash from lines that
  start with backslashes followed by ``Negative prompt:``.
- Values are JSON-quoted when A1111 would quote them (``,`` ``:`` or a newline) and also when
  they are empty, start with a quote, or have whitespace at either end, so that they read back
  unchanged; A1111's parser reads all of these correctly.
- Reading is linear in the text: the parameter line is split by a scanner that finds exactly the
  pairs of A1111's pattern (which is quadratic on a long line without pairs), and an image's
  infotext longer than `MAX_INFOTEXT_CHARS` is refused.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from struct import error as StructError

from PIL import ExifTags, Image, PngImagePlugin, UnidentifiedImageError

from generation.errors import ImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_INFOTEXT_CHARS",
    "Infotext",
    "format_infotext",
    "parse_hash_list",
    "parse_infotext",
    "png_with_infotext",
    "read_infotext",
    "to_request_fields",
]

DEFAULT_MAX_PIXELS = 4096 * 4096
# A1111's own images carry a few KiB; a longer infotext is a file made to cost us time.
MAX_INFOTEXT_CHARS = 64 * 1024

# The key of one "Key: value" pair as A1111's pattern
# `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)` (modules/infotext_utils.py) finds it: the first
# word character of a run of key characters that ends with ":", at least one key character
# before the colon. Starting only at the start of a run (the lookbehind) and never giving
# characters back (`++`) reads each run once, where A1111's pattern rereads it from every start.
_PAIR_KEY = re.compile(r"(?<![\w \-/])[ \-/]*+(\w[\w \-/]++):")
_SPACES = re.compile(r"\s*")
# A1111's quoted value; its loop can never give back a character that would let `"` match
# earlier (no iteration starts with a quote), so the possessive form finds the same matches.
_QUOTED_VALUE = re.compile(r'"(?:\\.|[^\\"])++"(?=,|$)')
_PARAM_KEY = re.compile(r"\w[\w \-/]+")
_IMAGE_SIZE = re.compile(r"([0-9]+)x([0-9]+)")
_INTEGER = re.compile(r"[+-]?[0-9]+")
# One way to read each string (`1.5` cannot split into `1` + `.5`), so a failing match is linear.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Longer whole numbers mean nothing here (a seed has at most 20 digits), and int() of thousands
# of digits is slow or refused by Python.
_MAX_INTEGER_CHARS = 64

_NEGATIVE_PREFIX = "Negative prompt:"
# A prompt line that A1111 would read as the start of the negative prompt, possibly already escaped.
_NEEDS_ESCAPE = re.compile(r"(\s*)(\\*Negative prompt:)")
_ESCAPED = re.compile(r"\\+Negative prompt:")

# Keys format_infotext writes itself; extras may not repeat them.
_STANDARD_KEYS = frozenset(
    {
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Seed",
        "Size",
        "Model hash",
        "Model",
        "VAE hash",
        "VAE",
        "Variation seed",
        "Variation seed strength",
        "Seed resize from",
        "Denoising strength",
        "Clip skip",
        "TI hashes",
        "Version",
    }
)

_EXIF_CHARSET_UNICODE = b"UNICODE\x00"
_EXIF_CHARSET_ASCII = b"ASCII\x00\x00\x00"
_EXIF_CHARSET_JIS = b"JIS\x00\x00\x00\x00\x00"
_EXIF_CHARSET_UNDEFINED = b"\x00" * 8

_ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")


@dataclass(frozen=True)
class Infotext:
    """A parsed infotext. `params` keeps the parameter line's pairs in order, values unquoted."""

    prompt: str
    negative_prompt: str
    params: tuple[tuple[str, str], ...] = ()

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of `key`; the last one wins when a key repeats, as in A1111."""
        for name, value in reversed(self.params):
            if name == key:
                return value
        return default

    def as_dict(self) -> dict[str, str]:
        return dict(self.params)


# --------------------------------------------------------------------------- writing


def _format_number(value: int | float, *, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    # A1111 shows 7 rather than 7.0; repr keeps every other float exact (7.5, 0.35).
    return str(int(value)) if value.is_integer() else repr(value)


def _format_value(value: str | int | float, *, name: str) -> str:
    return value if isinstance(value, str) else _format_number(value, name=name)


def _quote(value: str) -> str:
    """A1111's quote(), plus the cases its parser would otherwise read back differently."""
    if (
        value == ""
        or value != value.strip()
        or value.startswith('"')
        or any(char in value for char in ",:\n\r")
    ):
        return json.dumps(value, ensure_ascii=False)
    return value


def _escape_prompt_lines(text: str) -> str:
    return "\n".join(
        _NEEDS_ESCAPE.sub(r"\1\\\2", line, count=1) if _NEEDS_ESCAPE.match(line) else line
        for line in text.split("\n")
    )


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _PARAM_KEY.fullmatch(key) or key != key.strip():
        raise ValueError(f"infotext key {key!r} is not a valid A1111 parameter name")


def format_infotext(
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    sampler: str,
    schedule_type: str | None,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model_hash: str | None = None,
    model: str | None = None,
    vae_hash: str | None = None,
    vae: str | None = None,
    variation_seed: int | None = None,
    variation_seed_strength: float | None = None,
    seed_resize_from: tuple[int, int] | None = None,
    denoising_strength: float | None = None,
    clip_skip: int = 1,
    ti_hashes: Mapping[str, str] | None = None,
    extra: Sequence[tuple[str, str | int | float]] = (),
    version: str,
) -> str:
    """Render generation parameters in A1111's infotext layout.

    `extra` pairs (e.g. Hires settings, "Lora hashes") go after Clip skip, in the given order.
    `ti_hashes` maps embedding names to their short hashes (sha256[:12]); names lose ":" and ","
    as in A1111. Raises ValueError/TypeError for malformed arguments (a programming error).
    """
    for name, number in (("steps", steps), ("seed", seed), ("width", width), ("height", height)):
        if isinstance(number, bool) or not isinstance(number, int):
            raise TypeError(f"{name} must be an int, not {type(number).__name__}")
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int):
        raise TypeError(f"clip_skip must be an int, not {type(clip_skip).__name__}")

    pairs: list[tuple[str, str]] = [
        ("Steps", str(steps)),
        ("Sampler", sampler),
    ]
    if schedule_type is not None:
        pairs.append(("Schedule type", schedule_type))
    pairs += [
        ("CFG scale", _format_number(cfg_scale, name="cfg_scale")),
        ("Seed", str(seed)),
        ("Size", f"{width}x{height}"),
    ]
    optional: tuple[tuple[str, str | None], ...] = (
        ("Model hash", model_hash),
        ("Model", model),
        ("VAE hash", vae_hash),
        ("VAE", vae),
    )
    pairs += [(key, value) for key, value in optional if value is not None]
    # A1111's order: after VAE, before Denoising strength; each only when it applies.
    if variation_seed_strength:
        pairs.append(("Variation seed", str(int(variation_seed))))
        _format_number(variation_seed_strength, name="variation_seed_strength")  # checks it is a finite number
        pairs.append(("Variation seed strength", str(float(variation_seed_strength))))  # A1111: str(float), 1.0
    if seed_resize_from is not None and seed_resize_from[0] > 0 and seed_resize_from[1] > 0:
        pairs.append(("Seed resize from", f"{int(seed_resize_from[0])}x{int(seed_resize_from[1])}"))
    if denoising_strength is not None:
        pairs.append(
            ("Denoising strength", _format_number(denoising_strength, name="denoising_strength"))
        )
    if clip_skip > 1:
        pairs.append(("Clip skip", str(clip_skip)))

    seen = {key for key, _ in pairs} | {"TI hashes", "Version"}
    for key, value in extra:
        _check_key(key)
        if key in _STANDARD_KEYS or key in seen:
            raise ValueError(f"infotext extra key {key!r} repeats a key that is already written")
        seen.add(key)
        pairs.append((key, _format_value(value, name=key)))

    if ti_hashes:
        entries = [
            f"{name.replace(':', '').replace(',', '')}: {short_hash}"
            for name, short_hash in ti_hashes.items()
        ]
        pairs.append(("TI hashes", ", ".join(entries)))
    pairs.append(("Version", version))

    for key, value in pairs:
        if not isinstance(value, str):
            raise TypeError(f"infotext value for {key!r} must be a str, not {type(value).__name__}")
    parameter_line = ", ".join(f"{key}: {_quote(value)}" for key, value in pairs)

    text = _escape_prompt_lines(prompt)
    if negative_prompt:
        text += f"\n{_NEGATIVE_PREFIX} {_escape_prompt_lines(negative_prompt)}"
    return f"{text}\n{parameter_line}".strip()


# --------------------------------------------------------------------------- reading


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            loaded = json.loads(value)
        except ValueError:
            return value
        if isinstance(loaded, str):
            return loaded
    return value


def _unescape_line(line: str) -> str:
    return line[1:] if _ESCAPED.match(line) else line


def _param_pairs(line: str) -> list[tuple[str, str]]:
    """The (key, raw value) pairs `re.findall` gives with A1111's pair pattern, in linear time.

    A key is followed by optional whitespace and a value: a quoted string directly followed by a
    comma or the end, or else everything up to the next comma. The search for the next key
    starts after that comma, where the lookbehind of `_PAIR_KEY` sees no key character.
    """
    pairs: list[tuple[str, str]] = []
    position = 0
    while key := _PAIR_KEY.search(line, position):
        start = _SPACES.match(line, key.end()).end()
        if quoted := _QUOTED_VALUE.match(line, start):
            end = quoted.end()
        else:
            end = line.find(",", start)
            end = len(line) if end == -1 else end
        pairs.append((key.group(1), line[start:end]))
        position = end + 1  # past the comma (past the end, or the final newline `$` stopped at)
    return pairs


def parse_infotext(text: str) -> Infotext:
    """Parse infotext with A1111's parse_generation_parameters rules.

    The last line is the parameter line only if A1111's pattern finds at least 3 pairs in it.
    Lines from the first one starting with "Negative prompt:" on are the negative prompt.
    Linear in the length of `text`.
    """
    *lines, last_line = text.strip().split("\n")
    pairs = _param_pairs(last_line)
    if len(pairs) < 3:
        lines.append(last_line)
        pairs = []

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for raw_line in lines:
        line = raw_line.strip()
        if line.startswith(_NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(_NEGATIVE_PREFIX) :].strip()
        target = negative_lines if in_negative else prompt_lines
        # A1111 drops empty lines until the prompt has text (it adds "\n" only once non-empty).
        if line or target:
            target.append(_unescape_line(line))

    params = tuple(
        (key, _unquote(value) if value.startswith('"') else value) for key, value in pairs
    )
    return Infotext(
        prompt="\n".join(prompt_lines),
        negative_prompt="\n".join(negative_lines),
        params=params,
    )


def parse_hash_list(value: str) -> dict[str, str]:
    """Split a "name: hash, name2: hash2" value (TI hashes, Lora hashes) into a dict."""
    result: dict[str, str] = {}
    for entry in value.split(","):
        name, separator, short_hash = entry.partition(":")
        if separator and name.strip() and short_hash.strip():
            result[name.strip()] = short_hash.strip()
    return result


def _shorten(value: str, limit: int = 40) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def to_request_fields(info: Infotext) -> dict:
    """Map A1111 keys to plain request fields.

    Always present: prompt, negative_prompt, clip_skip (1 when absent, as A1111 assumes),
    extra (unmapped keys, in order) and warnings. Other fields appear only when present and
    valid; a value that does not parse is left out and described in "warnings". A1111's inpaint
    keys map to the request's names: Mask blur -> mask_blur, Mask mode -> mask_invert, Masked
    content -> masked_content, Inpaint area -> only_masked, Masked area padding ->
    only_masked_padding (A1111 writes each only when it is not the plain case). The hires keys
    map to A1111's API names (hr_scale, hr_resize_x/_y, hr_second_pass_steps, hr_upscaler,
    hr_sampler, hr_prompt, hr_negative_prompt), with enable_hr when A1111's paste would set it.
    """
    fields: dict = {
        "prompt": info.prompt,
        "negative_prompt": info.negative_prompt,
        "clip_skip": 1,
    }
    extra: dict[str, str] = {}
    warnings: list[str] = []

    def integer(key: str, raw: str) -> int | None:
        if len(raw) > _MAX_INTEGER_CHARS:
            warnings.append(f"{key}: {_shorten(raw)!r} is too long for a number, ignored")
        elif _INTEGER.fullmatch(raw):
            return int(raw)
        else:
            warnings.append(f"{key}: {_shorten(raw)!r} is not a whole number, ignored")
        return None

    def decimal(key: str, raw: str) -> float | None:
        if _DECIMAL.fullmatch(raw):
            number = float(raw)
            if math.isfinite(number):
                return number
        warnings.append(f"{key}: {_shorten(raw)!r} is not a number, ignored")
        return None

    text_fields = {
        "Sampler": "sampler",
        "Schedule type": "schedule_type",
        "Model": "model",
        "Model hash": "model_hash",
        "Hires sampler": "hr_sampler",
        "Hires upscaler": "hr_upscaler",
        "Hires prompt": "hr_prompt",
        "Hires negative prompt": "hr_negative_prompt",
    }
    integer_fields = {"Steps": "steps", "Seed": "seed", "Clip skip": "clip_skip", "Variation seed": "subseed",
                      "Hires steps": "hr_second_pass_steps"}
    decimal_fields = {"CFG scale": "cfg_scale", "Denoising strength": "denoising_strength",
                      "Variation seed strength": "subseed_strength", "Hires upscale": "hr_scale"}
    # A1111's inpaint keys (processing.py init), each written only when it differs from the plain
    # case, read as A1111's paste reads them (infotext_utils: the img2img tab's fields).
    integer_inpaint_fields = {"Mask blur": "mask_blur", "Masked area padding": "only_masked_padding"}
    choice_inpaint_fields = {
        "Mask mode": ("mask_invert", {"Inpaint masked": False, "Inpaint not masked": True}),
        "Masked content": ("masked_content", {name: name for name in
                                              ("fill", "original", "latent noise", "latent nothing")}),
        "Inpaint area": ("only_masked", {"Whole picture": False, "Only masked": True}),
    }

    for key, value in info.as_dict().items():
        raw = value.strip()
        if key in text_fields:
            fields[text_fields[key]] = raw
        elif key in integer_fields:
            if (number := integer(key, raw)) is not None:
                fields[integer_fields[key]] = number
        elif key in decimal_fields:
            if (number := decimal(key, raw)) is not None:
                fields[decimal_fields[key]] = number
        elif key in integer_inpaint_fields:
            if (number := integer(key, raw)) is not None:
                fields[integer_inpaint_fields[key]] = number
        elif key in choice_inpaint_fields:
            name, choices = choice_inpaint_fields[key]
            if raw in choices:
                fields[name] = choices[raw]
            else:
                warnings.append(f"{key}: {_shorten(raw)!r} is not one of {', '.join(choices)}, ignored")
        elif key == "Hires resize":  # A1111 writes WxH, either side 0 (keep the aspect ratio)
            if len(raw) <= 2 * _MAX_INTEGER_CHARS + 1 and (match := _IMAGE_SIZE.fullmatch(raw)):
                fields["hr_resize_x"], fields["hr_resize_y"] = int(match[1]), int(match[2])
            else:
                warnings.append(f"Hires resize: {_shorten(raw)!r} is not WIDTHxHEIGHT, ignored")
        elif key == "Seed resize from":
            if len(raw) <= 2 * _MAX_INTEGER_CHARS + 1 and (match := _IMAGE_SIZE.fullmatch(raw)):
                fields["seed_resize_from_w"], fields["seed_resize_from_h"] = int(match[1]), int(match[2])
            else:
                warnings.append(f"Seed resize from: {_shorten(raw)!r} is not WIDTHxHEIGHT, ignored")
        elif key == "Size":
            if len(raw) > 2 * _MAX_INTEGER_CHARS + 1:
                warnings.append(f"Size: {_shorten(raw)!r} is too long, ignored")
            elif match := _IMAGE_SIZE.fullmatch(raw):
                fields["width"], fields["height"] = int(match[1]), int(match[2])
            else:
                warnings.append(f"Size: {_shorten(raw)!r} is not WIDTHxHEIGHT, ignored")
        else:
            extra[key] = value

    # A1111's paste turns the hires fix on when the denoising strength comes with a hires key.
    if "denoising_strength" in fields and {"hr_scale", "hr_upscaler", "hr_resize_x"} & set(fields):
        fields["enable_hr"] = True
    fields["extra"] = extra
    fields["warnings"] = warnings
    return fields


# --------------------------------------------------------------------------- image files


def png_with_infotext(image: Image.Image, text: str, *, compress_level: int = 6, postprocessing: str = "") -> bytes:
    """Encode `image` as PNG with `text` in the "parameters" chunk (left out when empty), and
    `postprocessing` (an upscale's keys) in "postprocessing" and "extras", as A1111's Extras saves.

    Pillow writes tEXt when the text is latin-1 and iTXt (UTF-8) otherwise, so any text survives.
    """
    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    metadata = PngImagePlugin.PngInfo()
    if text:
        metadata.add_text("parameters", text)
    if postprocessing:
        metadata.add_text("postprocessing", postprocessing)
        metadata.add_text("extras", postprocessing)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=metadata, compress_level=compress_level)
    return buffer.getvalue()


def _decode_user_comment(comment: bytes | str) -> str | None:
    """Decode an EXIF UserComment: an 8-byte character-code prefix, then the text."""
    if isinstance(comment, str):
        return comment.rstrip("\x00") or None
    prefix, body = comment[:8], comment[8:]
    if prefix == _EXIF_CHARSET_UNICODE:
        text = _decode_utf16(body)
    elif prefix == _EXIF_CHARSET_ASCII:
        text = body.decode("utf-8", errors="replace")
    elif prefix == _EXIF_CHARSET_JIS:
        text = body.decode("shift_jis", errors="replace")
    elif prefix == _EXIF_CHARSET_UNDEFINED:
        text = body.decode("utf-8", errors="replace")
    else:
        # No character code at all: A1111 falls back to UTF-8 too.
        text = comment.decode("utf-8", errors="replace")
    return text.rstrip("\x00") or None


def _decode_utf16(body: bytes) -> str:
    # A1111 (piexif) writes UTF-16 big-endian; some tools write little-endian. A BOM decides;
    # otherwise mostly-ASCII text has its zero bytes on the even (BE) or odd (LE) positions.
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return body.decode("utf-16", errors="replace")
    body = body[: len(body) - len(body) % 2]
    zeros_even = body[0::2].count(0)
    zeros_odd = body[1::2].count(0)
    encoding = "utf-16-le" if zeros_odd > zeros_even else "utf-16-be"
    return body.decode(encoding, errors="replace")


def _exif_user_comment(image: Image.Image) -> str | None:
    try:
        exif_ifd = image.getexif().get_ifd(ExifTags.IFD.Exif)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, StructError):
        return None
    comment = exif_ifd.get(ExifTags.Base.UserComment)
    if not isinstance(comment, (bytes, str)) or not comment:
        return None
    return _decode_user_comment(comment)


def read_infotext(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """The infotext of a PNG, JPEG or WEBP image, or None when it has none.

    Raises ImageError when `data` is not one of those formats, is damaged, has more than
    `max_pixels` pixels, or carries an infotext longer than `MAX_INFOTEXT_CHARS`. Pixels are
    decoded only for a PNG whose text sits after the image data.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=list(_ALLOWED_FORMATS))
    except UnidentifiedImageError:
        raise ImageError("That file is not a PNG, JPEG or WEBP image.") from None
    except Image.DecompressionBombError:
        raise ImageError("That image is too large to open.") from None
    except (OSError, SyntaxError, ValueError, StructError):
        raise ImageError("That image file is damaged and cannot be read.") from None

    with image:
        text = _image_infotext(image, max_pixels)
    if text is not None and len(text) > MAX_INFOTEXT_CHARS:
        raise ImageError(
            f"That image's generation parameters are {len(text):,} characters long; "
            f"the limit is {MAX_INFOTEXT_CHARS:,}."
        )
    return text


def _image_infotext(image: Image.Image, max_pixels: int) -> str | None:
    """The text of the "parameters" chunk, else the EXIF UserComment, else a JPEG comment."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"That image is too large ({width}x{height}); "
            f"the limit is {max_pixels:,} pixels."
        )
    text = image.info.get("parameters")
    if text is None and image.format == "PNG":
        # Text chunks after the image data are only seen once the image is decoded.
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, StructError):
            raise ImageError("That image file is damaged and cannot be read.") from None
        text = image.info.get("parameters")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if isinstance(text, str):
        return text
    if (comment := _exif_user_comment(image)) is not None:
        return comment
    # A JPEG COM segment: A1111 reads it too when there is no EXIF comment.
    comment = image.info.get("comment")
    if isinstance(comment, bytes):
        comment = comment.decode("utf-8", errors="replace")
    return comment or None

