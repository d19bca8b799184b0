"""The generation request: one frozen value, validated up front against the configured limits."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from .config import DefaultsConfig, LimitsConfig
from .errors import EaselError, InvalidRequest

Mode = Literal["txt2img", "img2img", "inpaint", "upscale"]
MODES: tuple[str, ...] = ("txt2img", "img2img", "inpaint", "upscale")
# A1111's "Masked content" choices, in A1111's order (its API sends the index as `inpainting_fill`).
MASKED_CONTENT: tuple[str, ...] = ("fill", "original", "latent noise", "latent nothing")
MAX_MASK_BLUR = 64
MAX_ONLY_MASKED_PADDING = 256

RANDOM_SEED = -1
MAX_SEED = 4294967294  # A1111 draws random seeds from [0, 4294967294)


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    mode: Mode = "txt2img"
    checkpoint: str = ""  # empty: the configured default
    sampler: str = "Euler a"
    schedule: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = RANDOM_SEED
    count: int = 1
    init_image: str | None = None  # path of a PNG/JPEG/WEBP file (img2img, inpaint)
    mask: str | None = None  # path; white = repaint (inpaint)
    strength: float = 0.75
    clip_skip: int = 1
    # Inpainting, as A1111's inpaint tab: blur of the mask's edge in pixels; repaint the unmasked part
    # instead; what the masked part starts from; work on a crop around the mask ("Only masked") with
    # this many pixels of context around it.
    mask_blur: int = 4
    mask_invert: bool = False
    masked_content: str = "original"
    only_masked: bool = False
    only_masked_padding: int = 32
    # A1111's "Variation seed" (its API names): the initial noise is slerp(subseed_strength,
    # noise(seed), noise(subseed)); -1: random when the strength is above 0. Seed resize: the
    # noise is drawn as for this size (0 = off; both or neither) and pasted centred.
    subseed: int = RANDOM_SEED
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    # A1111's hires fix (txt2img; its API names): generate at width x height, upscale to hr_scale
    # times that, or to hr_resize_x x hr_resize_y (one 0: keep the aspect; both: cover, then crop),
    # with hr_upscaler (a Latent mode or an upscaler), then an img2img pass of `strength` (A1111's
    # denoising_strength) over hr_second_pass_steps (0: `steps`). Empty hr_sampler, hr_prompt,
    # hr_negative_prompt: the first pass's.
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_sampler: str = ""
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    # Mode "upscale" (A1111's Extras): init_image upscaled `upscale_by` times with `upscaler`;
    # width x height is the source's size. The prompt is the source's, kept for the record.
    upscaler: str = "Lanczos"
    upscale_by: float = 2.0

    @property
    def has_variation(self) -> bool:
        return bool(self.subseed_strength)

    @property
    def has_seed_resize(self) -> bool:
        return self.seed_resize_from_w > 0 and self.seed_resize_from_h > 0

    def seeds(self) -> list[int]:
        """Seed of each image: image i uses seed + i, so it can be reproduced alone. With a
        variation (A1111) every image keeps the seed and the subseed counts up instead."""
        if self.seed == RANDOM_SEED:
            raise ValueError("resolve the random seed first (with_resolved_seed)")
        if self.has_variation:
            return [self.seed] * self.count
        return [self.seed + i for i in range(self.count)]

    def subseeds(self) -> list[int]:
        """Variation seed of each image: subseed + i (A1111, always)."""
        if self.has_variation and self.subseed == RANDOM_SEED:
            raise ValueError("resolve the random subseed first (with_resolved_seed)")
        return [self.subseed + i for i in range(self.count)]

    def with_resolved_seed(self, rng: random.Random | None = None) -> "GenerationRequest":
        """The seed, and the subseed when a variation is asked for, drawn if random."""
        changes: dict[str, int] = {}
        if self.seed == RANDOM_SEED:
            changes["seed"] = (rng := rng or random.SystemRandom()).randrange(0, MAX_SEED)
        if self.has_variation and self.subseed == RANDOM_SEED:
            changes["subseed"] = (rng or random.SystemRandom()).randrange(0, MAX_SEED)
        return dataclasses.replace(self, **changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenerationRequest":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidRequest([f"unknown field {name!r}" for name in unknown])
        return cls(**data)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def length_problems(prompt: str, negative_prompt: str, limits: LimitsConfig) -> list[str]:
    """The first and cheapest check of member text: how long it is."""
    return [f"the {what} has {len(text):,} characters; the limit is {limits.max_prompt_chars:,}"
            for what, text in (("prompt", prompt), ("negative prompt", negative_prompt))
            if len(text) > limits.max_prompt_chars]


MAX_NAME_CHARS = 200  # an upscaler's or sampler's name


def request_problems(request: GenerationRequest, limits: LimitsConfig) -> list[str]:
    """Every rule the request breaks, in field order; empty when it is valid."""
    if request.mode == "upscale":
        return upscale_problems(request, limits)
    problems: list[str] = []
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        problems.append("the prompt is empty")
    if not isinstance(request.negative_prompt, str):
        problems.append("the negative prompt must be text")
    if not problems:
        problems += length_problems(request.prompt, request.negative_prompt, limits)
    if request.mode not in MODES:
        problems.append(f"mode must be one of {', '.join(MODES)}, not {request.mode!r}")
    try:
        from .samplers import resolve_sampler

        resolve_sampler(request.sampler, request.schedule)
    except EaselError as exc:
        problems.append(str(exc))
    if not _is_int(request.steps) or not limits.min_steps <= request.steps <= limits.max_steps:
        problems.append(f"steps must be a whole number from {limits.min_steps} to {limits.max_steps}")
    if not _is_number(request.cfg_scale) or not 0 <= request.cfg_scale <= limits.max_cfg_scale:
        problems.append(f"CFG scale must be from 0 to {limits.max_cfg_scale:g}")
    for name, maximum in (("width", limits.max_width), ("height", limits.max_height)):
        value = getattr(request, name)
        if not _is_int(value) or value % 8:
            problems.append(f"{name} must be a multiple of 8")
        elif not limits.min_size <= value <= maximum:
            problems.append(f"{name} must be from {limits.min_size} to {maximum}")
    if _is_int(request.width) and _is_int(request.height) and request.width * request.height > limits.max_pixels:
        problems.append(
            f"{request.width}x{request.height} is {request.width * request.height:,} pixels; "
            f"the limit is {limits.max_pixels:,}"
        )
    if not _is_int(request.seed) or not (request.seed == RANDOM_SEED or 0 <= request.seed < MAX_SEED):
        problems.append(f"seed must be -1 (random) or from 0 to {MAX_SEED - 1}")
    elif _is_int(request.count) and request.seed != RANDOM_SEED and request.seed + request.count - 1 >= MAX_SEED:
        problems.append(f"seed + count must stay below {MAX_SEED}")
    if not _is_number(request.subseed_strength) or not 0.0 <= request.subseed_strength <= 1.0:
        problems.append("the variation strength must be from 0 to 1")
    if not _is_int(request.subseed) or not (request.subseed == RANDOM_SEED or 0 <= request.subseed < MAX_SEED):
        problems.append(f"the variation seed must be -1 (random) or from 0 to {MAX_SEED - 1}")
    elif _is_int(request.count) and request.subseed != RANDOM_SEED and request.subseed + request.count - 1 >= MAX_SEED:
        problems.append(f"variation seed + count must stay below {MAX_SEED}")
    resize = (request.seed_resize_from_w, request.seed_resize_from_h)
    if not all(_is_int(value) for value in resize):
        problems.append("the seed resize size must be whole numbers")
    elif any(resize):
        if not all(resize):
            problems.append("seed resize needs both a width and a height (or neither)")
        for name, value, maximum in (("width", resize[0], limits.max_width), ("height", resize[1], limits.max_height)):
            if value and (value % 8 or not limits.min_size <= value <= maximum):
                problems.append(f"the seed resize {name} must be a multiple of 8 from {limits.min_size} to {maximum}")
        if all(resize) and resize[0] * resize[1] > limits.max_pixels:
            problems.append(f"the seed resize size is over {limits.max_pixels:,} pixels")
    if not _is_int(request.count) or not 1 <= request.count <= limits.max_count:
        problems.append(f"count must be from 1 to {limits.max_count}")
    if not _is_int(request.clip_skip) or not 1 <= request.clip_skip <= limits.max_clip_skip:
        problems.append(f"clip skip must be from 1 to {limits.max_clip_skip}")
    if request.mode in ("img2img", "inpaint"):
        if (_is_number(request.subseed_strength) and request.subseed_strength) or any(resize):
            problems.append("a variation seed and seed resize work with txt2img only")
        if not request.init_image:
            problems.append(f"{request.mode} needs an init image")
        if not _is_number(request.strength) or not 0.0 <= request.strength <= 1.0:
            problems.append("strength must be from 0 to 1")
    elif request.init_image:
        problems.append("an init image needs mode img2img or inpaint")
    if request.mode == "inpaint" and not request.mask:
        problems.append("inpaint needs a mask image")
    if not _is_int(request.mask_blur) or not 0 <= request.mask_blur <= MAX_MASK_BLUR:
        problems.append(f"mask blur must be from 0 to {MAX_MASK_BLUR}")
    if request.masked_content not in MASKED_CONTENT:
        problems.append(f"masked content must be one of {', '.join(MASKED_CONTENT)}")
    if not isinstance(request.mask_invert, bool) or not isinstance(request.only_masked, bool):
        problems.append("mask invert and only masked must be true or false")
    if not _is_int(request.only_masked_padding) or not 0 <= request.only_masked_padding <= MAX_ONLY_MASKED_PADDING:
        problems.append(f"the only-masked padding must be from 0 to {MAX_ONLY_MASKED_PADDING} pixels")
    if request.mask and request.mode != "inpaint":
        problems.append("a mask needs mode inpaint")
    return problems + hires_problems(request, limits)


def hires_problems(request: GenerationRequest, limits: LimitsConfig) -> list[str]:
    """The hires fix's own rules (its upscaler's name is checked against the models by the engine)."""
    if not isinstance(request.enable_hr, bool):
        return ["enable_hr must be true or false"]
    if not request.enable_hr:
        return []
    if request.mode != "txt2img":
        return ["the hires fix works with txt2img only"]
    problems = []
    if not _is_number(request.hr_scale) or not 1.0 <= request.hr_scale <= limits.max_hires_scale:
        problems.append(f"the hires scale must be from 1 to {limits.max_hires_scale:g}")
    resize = (request.hr_resize_x, request.hr_resize_y)
    if not all(_is_int(value) and 0 <= value <= limits.max_hires_side for value in resize):
        problems.append(f"the hires resize width and height must be whole numbers from 0 to {limits.max_hires_side}")
    if not _is_int(request.hr_second_pass_steps) or not 0 <= request.hr_second_pass_steps <= limits.max_steps:
        problems.append(f"hires steps must be from 0 (the same as steps) to {limits.max_steps}")
    if not _is_number(request.strength) or not 0.0 < request.strength <= 1.0:
        problems.append("the hires denoising strength must be above 0 and at most 1")
    for name in ("hr_upscaler", "hr_sampler"):
        if not isinstance(getattr(request, name), str) or len(getattr(request, name)) > MAX_NAME_CHARS:
            problems.append(f"{name} must be a name")
    if not problems and request.hr_sampler:
        try:
            from .samplers import resolve_sampler

            resolve_sampler(request.hr_sampler, request.schedule)
        except EaselError as exc:
            problems.append(f"hires sampler: {exc}")
    for what, text in (("hires prompt", request.hr_prompt), ("hires negative prompt", request.hr_negative_prompt)):
        if not isinstance(text, str):
            problems.append(f"the {what} must be text")
        elif len(text) > limits.max_prompt_chars:
            problems.append(f"the {what} has {len(text):,} characters; the limit is {limits.max_prompt_chars:,}")
    if problems or not all(_is_int(v) for v in (request.width, request.height, request.steps)):
        return problems
    from .hires import plan

    hires = plan(request.width, request.height, request.steps, hr_scale=request.hr_scale,
                 hr_resize_x=request.hr_resize_x, hr_resize_y=request.hr_resize_y,
                 hr_second_pass_steps=request.hr_second_pass_steps)
    if hires is not None:
        width, height = hires.final_size
        sides = (*hires.upscale_to, width, height)
        if min(sides) < limits.min_size or max(sides) > limits.max_hires_side:
            problems.append(f"the hires size {width}x{height} must have sides from {limits.min_size} "
                            f"to {limits.max_hires_side}")
        elif max(width * height, hires.upscale_to[0] * hires.upscale_to[1]) > limits.max_hires_pixels:
            problems.append(f"the hires size {width}x{height} is over {limits.max_hires_pixels:,} pixels")
    return problems


def upscale_problems(request: GenerationRequest, limits: LimitsConfig) -> list[str]:
    """Rules of an upscale job: a source image of width x height, a factor, a named upscaler."""
    problems = []
    if not request.init_image or request.mask:
        problems.append("an upscale needs one image and no mask")
    if not isinstance(request.upscaler, str) or not request.upscaler or len(request.upscaler) > MAX_NAME_CHARS:
        problems.append("name an upscaler (/upscalers lists them)")
    if not _is_number(request.upscale_by) or not 1.0 <= request.upscale_by <= limits.max_upscale_by:
        problems.append(f"the upscale factor must be from 1 to {limits.max_upscale_by:g}")
    if not all(_is_int(v) and v >= 1 for v in (request.width, request.height)):
        problems.append("the source image's size must be known")
    elif not problems:
        width, height = upscaled_size(request.width, request.height, request.upscale_by)
        if min(width, height) < 8:
            problems.append(f"{request.width}x{request.height} is too small to upscale {request.upscale_by:g}x")
        elif width * height > limits.max_upscale_pixels:
            problems.append(f"{request.width}x{request.height} upscaled {request.upscale_by:g}x is {width}x{height}, "
                            f"over {limits.max_upscale_pixels:,} pixels; choose a smaller factor")
    if not isinstance(request.prompt, str) or len(request.prompt) > limits.max_prompt_chars:
        problems.append("the prompt kept with an upscale is too long")
    return problems


def upscaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """A1111's Extras size for "upscale by" (Upscaler.upscale's dest): int(side * scale) // 8 * 8."""
    return int(width * scale) // 8 * 8, int(height * scale) // 8 * 8


def validate_request(request: GenerationRequest, limits: LimitsConfig) -> GenerationRequest:
    """Raise InvalidRequest naming everything that is wrong; return the request unchanged otherwise."""
    problems = request_problems(request, limits)
    if problems:
        raise InvalidRequest(problems)
    return request


def default_size(defaults: DefaultsConfig, limits: LimitsConfig, architecture: str, *,
                 max_width: int | None = None, max_height: int | None = None) -> tuple[int, int]:
    """(width, height) for a request that names no size: the checkpoint's native size (SD 1.x 512,
    SD 2.x 768, SDXL 1024) while `[defaults] native_size` is on and it fits the limits (and a
    server's `max_width`/`max_height`, if given); otherwise `[defaults] width` x `height`."""
    from .architectures import ARCHITECTURES

    spec = ARCHITECTURES.get(architecture)
    native = spec.native_size if spec is not None and defaults.native_size else None
    if native is not None and native <= min(limits.max_width, max_width or native) \
            and native <= min(limits.max_height, max_height or native) and native * native <= limits.max_pixels:
        return native, native
    return defaults.width, defaults.height
