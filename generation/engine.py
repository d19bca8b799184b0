"""The generation engine: one entry point that turns validated requests into images.

`Engine.run_batch` runs several compatible requests (same checkpoint, mode, sampler, steps, CFG,
size, ...) as ONE pipeline call with one generator per image, and splits the results back, so a
job gets the same images it would get alone. Only one thread may call it at a time (the
executor's worker owns the GPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections import OrderedDict
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Hashable, Sequence

import numpy as np
import torch
from PIL import Image

from . import __version__
from .architectures import ARCHITECTURES
from .config import Config
from .embeddings import EmbeddingInfo, ensure_loaded, triggers_in
from .errors import Canceled, EaselError, InvalidRequest, ModelNotFound
from .images import load_user_image
from .infotext import format_infotext
from .inpainting import InpaintJob, finish_inpaint, latent_mask, prepare_inpaint
from .pipelines import DeviceSpec, LoadedCheckpoint, PipelineCache, decode_latents, encode_image_mean
from .previews import latents_to_preview
from .prompt_parser import (BREAK, LORA_TYPES, extra_network_tags, lora_tags, parse_attention, prompt_parts,
                            prompt_schedule, without_extra_networks)
from .registry import TEXT_ENCODER_WIDTH, ModelRegistry
from .hires import LATENT_MODES, plan as plan_hires
from .requests import GenerationRequest, upscaled_size, validate_request
from .samplers import make_scheduler, resolve_sampler
from .scheduler import job_cost

log = logging.getLogger(__name__)

# torchsde (DPM++ SDE) warns about float rounding of its interval ends on nearly every step; harmless.
warnings.filterwarnings("ignore", message="Should have ta>=t0")


class CancelToken:
    """Set from any thread; checked by the sampling loop after every step."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = "canceled"
        self.timed_out = False  # stopped by the time limit: a failure, not a member's cancel

    def cancel(self, reason: str = "canceled", *, timed_out: bool = False) -> None:
        if self._event.is_set():
            return
        self.reason = reason
        self.timed_out = timed_out
        self._event.set()

    @property
    def canceled(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class StepProgress:
    step: int  # steps done, 1-based
    total: int
    preview: Image.Image | None = None  # one preview per image of the job


@dataclass(frozen=True)
class GeneratedImage:
    index: int  # within its job
    seed: int
    image: Image.Image
    infotext: str  # the PNG's "parameters"
    postprocessing: str = ""  # an upscale's A1111 "postprocessing" text (its PNG's "extras" too)
    png: bytes = b""  # the finished file, when a worker made it already (then `image` is its lazy opening)


@dataclass(frozen=True)
class BatchItem:
    key: Hashable  # the job id, or anything the caller uses to tell items apart
    request: GenerationRequest  # validated, seed resolved
    cancel: CancelToken = field(default_factory=CancelToken)


ProgressCallback = Callable[[Hashable, StepProgress], None]


def batch_key(request: GenerationRequest, checkpoint_name: str, prompt_chunks: int, loras: tuple = (),
              hires_chunks: int = 0) -> tuple:
    """Requests with equal keys can share one pipeline call and still get the images they would get alone.

    Embeddings are loaded per checkpoint and never block batching. The number of 77-token chunks is
    part of the key: padding a prompt with an empty chunk would change its image. So is the LoRA
    set (`Engine.lora_set`): one UNet call runs with one set of merged weights. A hires pass adds
    its own size, steps, upscaler, sampler, strength and chunks (`hires_chunks`).
    """
    # Scales above 1 differ per image (composable.PerImageGuidance); 1 and below run unguided.
    cfg = "guided" if request.cfg_scale > 1 else float(request.cfg_scale)
    key = (checkpoint_name, request.mode, request.sampler, request.schedule, request.steps, cfg,
           request.width, request.height, request.clip_skip,
           float(request.strength) if request.mode != "txt2img" else None, prompt_chunks, loras)
    hires = hires_plan(request)
    if hires is not None:
        key += (("hires", hires.upscale_to, hires.truncate, hires.steps, request.hr_upscaler,
                 request.hr_sampler or request.sampler, float(request.strength), hires_chunks),)
    return key


def hires_plan(request: GenerationRequest):
    """The request's hires pass (generation.hires.HiresPlan), or None without one."""
    if not request.enable_hr or request.mode != "txt2img":
        return None
    return plan_hires(request.width, request.height, request.steps, hr_scale=request.hr_scale,
                      hr_resize_x=request.hr_resize_x, hr_resize_y=request.hr_resize_y,
                      hr_second_pass_steps=request.hr_second_pass_steps)


def hires_texts(request: GenerationRequest) -> tuple[str, str]:
    """(prompt, negative prompt) of the hires pass: A1111 uses the first pass's when left empty."""
    return request.hr_prompt or request.prompt, request.hr_negative_prompt or request.negative_prompt


def upscale_cost(request: GenerationRequest) -> int:
    """What an upscale counts for fairness: one sampling step at its result's size."""
    width, height = upscaled_size(request.width, request.height, request.upscale_by)
    return job_cost(width, height, 1, 1)


def model_state(checkpoint_name: str, loras: tuple) -> str:
    """What must be loaded and merged for a job: the scheduler's affinity key."""
    return checkpoint_name + "".join(f" <lora:{name}:{te:g}:{unet:g}>" for name, _, te, unet in loras)


def upscaler_state(name: str) -> str:
    """The scheduler's affinity key of an upscale job: its upscaler model."""
    return f"upscaler:{name}"


def encoder_prompt(prompt: str) -> str:
    """The prompt the text encoder reads: extra-network tags removed (the infotext keeps them)."""
    return without_extra_networks(prompt)


def _lora_uses(prompt: str) -> list[tuple]:
    """A prompt's LoRA tags as (name, te, unet), in one order."""
    return sorted((tag.name, float(tag.te), float(tag.unet)) for tag in lora_tags(prompt))


def _family_label(width: int) -> str:
    labels = {spec.cross_attention_width: spec.label for spec in ARCHITECTURES.values() if spec.detectable}
    return labels.get(width, f"a model with {width}-wide text conditioning")


def _distinct_texts(prompts: Sequence[str], steps: int, first_pass_steps: int | None = None) -> list[str]:
    """Each text prompt editing and alternation give over `steps`, once, in order of appearance
    (`first_pass_steps`: over a hires pass after that many)."""
    return list(dict.fromkeys(text for prompt in prompts
                              for _, text in prompt_schedule(prompt, steps, first_pass_steps=first_pass_steps)))


@dataclass(frozen=True)
class CheckedRequest:
    """A request that passed `Engine.check`, with what the check computed, so nothing is parsed twice."""

    request: GenerationRequest
    checkpoint: str  # the resolved checkpoint name
    batch_key: tuple
    cost: int
    # What the text encoder reads: every AND part at every step, emphasis syntax applied (for moderation).
    prompt_texts: tuple[str, ...]
    negative_texts: tuple[str, ...]
    token_count: int  # the longest prompt text's, as A1111 counts it
    model_state: str = ""  # checkpoint and LoRA set, for the scheduler's affinity


class Engine:
    def __init__(self, *, config: Config, registry: ModelRegistry, cache: PipelineCache | None = None):
        self.config = config
        self.registry = registry
        self._counter: tuple[tuple, object] | None = None  # (the embeddings it knows, the counting encoder)
        self._counter_lock = threading.Lock()
        self.cache = cache or PipelineCache.from_config(config)
        self._lora_files = _LoraFiles(config.models.lora_cache_size)
        self._upscalers = None  # UpscalerCache, made on first use (GPU thread only)

    @property
    def upscalers(self):
        """Loaded upscaler models (LRU) on the generation device; only the GPU thread uses them."""
        if self._upscalers is None:
            from .upscalers import UpscalerCache

            models, device = self.config.models, self.cache.device
            self._upscalers = UpscalerCache(models.upscaler_cache_size, device=device.device, dtype=device.dtype,
                                            tile=models.upscaler_tile, overlap=models.upscaler_tile_overlap,
                                            allow_pickle=models.allow_pickle_checkpoints)
        return self._upscalers

    # ------------------------------------------------------------------ checks
    def check(self, request: GenerationRequest) -> "CheckedRequest":
        """Every check that can run before queueing, cheap ones first: the request's numbers and
        lengths, then the prompt language (parts, scheduled texts, weights) with nothing tokenized
        yet, then embeddings and token counts, each distinct text tokenized once. CPU work on
        member text: frontends call this off the event loop."""
        limits = self.config.limits
        validate_request(request, limits)
        if request.mode == "upscale":
            return self._check_upscale(request)
        info = self.registry.resolve(request.checkpoint)  # raises ModelNotFound with a hint
        hires = hires_plan(request)
        if request.enable_hr and hires is None:  # A1111: a hires size equal to the first pass's is no pass
            request = dataclasses.replace(request, enable_hr=False)
        problems = []
        # As in A1111, only the prompt's tags count; a tag in the negative prompt is plain text there.
        others = [tag for tag in extra_network_tags(request.prompt) if tag[1:].split(":", 1)[0] not in LORA_TYPES]
        if others:
            problems.append(f"hypernetworks and other extra networks are not supported: {', '.join(others[:5])}; "
                            "remove them to generate without")
        uses = self._lora_problems(request, info, problems)
        passes = [("", request.prompt, request.negative_prompt, request.steps, None)]
        if hires is not None:
            hr_prompt, hr_negative = hires_texts(request)
            passes.append(("hires ", hr_prompt, hr_negative, hires.steps, request.steps))
            if request.hr_prompt:  # A1111 activates the hires prompt's networks for the second pass
                if any(tag[1:].split(":", 1)[0] not in LORA_TYPES for tag in extra_network_tags(request.hr_prompt)):
                    problems.append("hypernetworks and other extra networks are not supported in the hires prompt")
                if _lora_uses(request.hr_prompt) != _lora_uses(request.prompt):
                    problems.append("the hires prompt must carry the same LoRA tags as the prompt")
            if request.hr_upscaler not in LATENT_MODES:
                try:
                    self.registry.upscaler(request.hr_upscaler)
                except ModelNotFound as exc:
                    problems.append(f"hires upscaler: {exc}")
        texts: dict[str, list[str]] = {}
        part_counts = []
        for label, prompt, negative, steps, first_pass in passes:
            parts = prompt_parts(encoder_prompt(prompt))
            part_counts.append(len(parts))
            if len(parts) > limits.max_prompt_parts:
                problems.append(f"the {label}prompt has {len(parts)} parts joined by AND; the limit is "
                                f"{limits.max_prompt_parts}")
            if any(not math.isfinite(weight) or abs(weight) > limits.max_prompt_weight for _, weight in parts):
                problems.append(f"an AND-part weight must be between -{limits.max_prompt_weight:g} and "
                                f"{limits.max_prompt_weight:g}")
            texts[f"{label}prompt"] = _distinct_texts([text for text, _ in parts], steps, first_pass)
            texts[f"{label}negative prompt"] = _distinct_texts([negative], steps, first_pass) if negative else []
        for what, found in texts.items():
            if len(found) > limits.max_schedule_texts:
                problems.append(f"the {what} gives {len(found)} different texts through prompt editing or "
                                f"alternation; the limit is {limits.max_schedule_texts}")
        if problems:  # before any further parsing or tokenizing
            raise InvalidRequest(list(dict.fromkeys(problems)))
        plain = {what: tuple(self._plain_text(text, problems) for text in found) for what, found in texts.items()}
        width = TEXT_ENCODER_WIDTH.get(info.architecture)
        for embedding in self.embeddings_used(request):
            # the registry judged widths against every family; this request uses one checkpoint
            if embedding.vectors and width is not None:
                if embedding.width != width:
                    problems.append(f"embedding {embedding.trigger} has width {embedding.width}; "
                                    f"{info.name} needs {width} ({ARCHITECTURES[info.architecture].label})")
            elif not embedding.usable:
                problems.append(f"embedding {embedding.trigger} cannot be used: {embedding.skip_reason}")
        if problems:
            raise InvalidRequest(problems)
        limit, tokens, chunks = limits.max_prompt_chunks * 75, {}, {"": 1, "hires ": 1}
        with self._counter_lock:
            for what, found in texts.items():
                tokenized = [self._token_counter.tokenize(text) for text in found]
                tokens[what] = max([0] + [t.token_count for t in tokenized])
                label = "hires " if what.startswith("hires ") else ""
                chunks[label] = max([chunks[label]] + [len(t.chunks) for t in tokenized])
        for what, count in tokens.items():
            if count > limit:
                problems.append(f"the {what} is {count} tokens; the limit is {limit}")
        if problems:
            raise InvalidRequest(problems)
        cost = job_cost(request.width, request.height, request.steps, request.count, prompt_parts=part_counts[0])
        if hires is not None:
            cost += job_cost(*hires.final_size, hires.steps, request.count, prompt_parts=part_counts[1])
        return CheckedRequest(
            request=request, checkpoint=info.name,
            batch_key=batch_key(request, info.name, chunks[""], uses, hires_chunks=chunks["hires "]),
            model_state=model_state(info.name, uses), cost=cost,
            prompt_texts=plain["prompt"] + plain.get("hires prompt", ()),
            negative_texts=plain["negative prompt"] + plain.get("hires negative prompt", ()),
            token_count=max(tokens["prompt"], tokens.get("hires prompt", 0)))

    def _check_upscale(self, request: GenerationRequest) -> "CheckedRequest":
        """An upscale (A1111's Extras): its upscaler exists; the key batches equal sources and factors."""
        upscaler = self.registry.upscaler(request.upscaler)  # ModelNotFound with a hint
        return CheckedRequest(
            request=request, checkpoint="", cost=upscale_cost(request), prompt_texts=(), negative_texts=(),
            batch_key=("upscale", upscaler.name, float(request.upscale_by), request.width, request.height),
            token_count=0, model_state=upscaler_state(upscaler.name))

    def _lora_problems(self, request: GenerationRequest, info, problems: list[str]) -> tuple:
        """The request's LoRA set (see `lora_set`), adding to `problems` what keeps it from working."""
        bound = self.config.limits.max_prompt_weight
        width = TEXT_ENCODER_WIDTH.get(info.architecture)
        tags = lora_tags(request.prompt)  # PromptError for a weight that is not a number
        if len(tags) > self.config.limits.max_loras:
            problems.append(f"the prompt has {len(tags)} LoRA tags; the limit is {self.config.limits.max_loras}")
            return ()
        for tag in tags:
            lora = self.registry.lora(tag.name)
            if lora is None:
                problems.append(f"there is no LoRA named {tag.name!r}; /loras lists them")
            elif not lora.usable:
                problems.append(f"LoRA {tag.name!r} cannot be used: {lora.skip_reason}")
            elif lora.width is not None and width is not None and lora.width != width:
                problems.append(f"LoRA {tag.name!r} was made for {_family_label(lora.width)}; {info.name} is "
                                f"{ARCHITECTURES[info.architecture].label}")
            if not all(math.isfinite(w) and abs(w) <= bound for w in (tag.te, tag.unet)):
                problems.append(f"LoRA weights must stay between -{bound:g} and {bound:g}: {tag.tag}")
        return () if problems else self.lora_set(request)

    def lora_set(self, request: GenerationRequest) -> tuple:
        """(name, short hash, te, unet) of each LoRA tag, in one canonical order: jobs with equal sets
        share a batch and get bit-identical weights, whatever order their tags were written in."""
        uses = []
        for tag in lora_tags(request.prompt):
            lora = self.registry.lora(tag.name)
            if lora is not None:
                uses.append((lora.name, lora.short_hash, float(tag.te), float(tag.unet)))
        return tuple(sorted(uses))

    def lora_hashes(self, request: GenerationRequest) -> str:
        """A1111's `Lora hashes` value: "name: hash12, ..." in tag order, names as typed without , and :."""
        entries = []
        for tag in lora_tags(request.prompt):
            lora = self.registry.lora(tag.name)
            if lora is not None:
                entries.append(f"{tag.name.replace(':', '').replace(',', '')}: {lora.short_hash}")
        return ", ".join(entries)

    def check_request(self, request: GenerationRequest) -> GenerationRequest:
        """`check`, for callers that need only the verdict; returns the request unchanged."""
        return self.check(request).request

    def _plain_text(self, text: str, problems: list[str]) -> str:
        """The words the encoder reads from one scheduled text (emphasis syntax applied); weights
        out of bounds are added to `problems`."""
        fragments = parse_attention(text)  # raises PromptError for a weight that is not a number
        bound = self.config.limits.max_prompt_weight
        if any(not math.isfinite(weight) or abs(weight) > bound for fragment, weight in fragments
               if (fragment, weight) != BREAK):
            message = f"emphasis weights must stay between -{bound:g} and {bound:g} (nested brackets multiply)"
            if message not in problems:
                problems.append(message)
        return "".join(" " if (fragment, weight) == BREAK else fragment for fragment, weight in fragments)

    @property
    def _token_counter(self):
        """A PromptEncoder that only counts: the SD tokenizer with every readable embedding's tokens
        added as textual inversion adds them, so a trigger counts as its vectors (as in A1111).
        Used under `_counter_lock`: the check thread, the GPU thread and the presenter share it."""
        from .architectures import sd_clip_tokenizer
        from .conditioning import PromptEncoder

        embeddings = tuple((e.trigger, e.vectors) for e in self.registry.embeddings if e.vectors)
        if self._counter is None or self._counter[0] != embeddings:  # rebuilt after a refresh changed them
            tokenizer = sd_clip_tokenizer()
            tokenizer.add_tokens([name for trigger, vectors in embeddings
                                  for name in [trigger] + [f"{trigger}_{i}" for i in range(1, vectors)]])
            # Counting needs only the tokenizer; the encoder object is asked just for its layer count.
            text_encoder = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=12))
            self._counter = (embeddings, PromptEncoder(tokenizer, text_encoder,
                                                      max_chunks=self.config.limits.max_prompt_chunks))
        return self._counter[1]

    def token_count(self, prompt: str, *, steps: int = 20) -> int:
        """Tokens as A1111 counts them under a prompt (75 per chunk; the longest AND-part), with the
        SD CLIP tokenizer."""
        with self._counter_lock:
            return max(self._token_counter.token_count(text, steps=steps)
                       for text, _ in prompt_parts(encoder_prompt(prompt)))

    def embeddings_used(self, request: GenerationRequest) -> list[EmbeddingInfo]:
        return triggers_in(encoder_prompt(request.prompt) + "\n" + request.negative_prompt, self.registry.embeddings)

    def batch_key(self, request: GenerationRequest) -> tuple:
        if request.mode == "upscale":
            return self._check_upscale(request).batch_key
        return batch_key(request, self.registry.resolve(request.checkpoint).name, self.prompt_chunks(request),
                         self.lora_set(request), hires_chunks=self.prompt_chunks(request, hires=True))

    def prompt_chunks(self, request: GenerationRequest, *, hires: bool = False) -> int:
        """How many 77-token chunks the request's conditioning has (prompt parts and negative are
        padded alike); `hires`: its hires pass's (1 without one)."""
        steps, first_pass, (prompt, negative) = request.steps, None, (request.prompt, request.negative_prompt)
        if hires:
            plan = hires_plan(request)
            if plan is None:
                return 1
            steps, first_pass, (prompt, negative) = plan.steps, request.steps, hires_texts(request)
        texts = _distinct_texts([part for part, _ in prompt_parts(encoder_prompt(prompt))], steps, first_pass)
        texts += _distinct_texts([negative], steps, first_pass) if negative else []
        with self._counter_lock:
            return max([1] + [len(self._token_counter.tokenize(text).chunks) for text in texts])

    @property
    def loaded_model_state(self) -> str | None:
        """The most recently used checkpoint with the LoRA set merged into it (see `model_state`)."""
        name = self.cache.most_recent
        if name is None:
            return None
        loaded = self.cache.peek(name)
        return model_state(name, loaded.lora_set if loaded is not None else ())

    def merge_loras(self, loaded: LoadedCheckpoint, loras: tuple) -> None:
        """Merge the batch's LoRA set into the loaded weights (a no-op when it is merged already)."""
        from .lora_networks import LoraError, LoraMerger

        if loaded.lora_merger is None:
            if not loras:
                return
            loaded.lora_merger = LoraMerger(loaded.base)
        uses = []
        for name, _, te, unet in loras:
            info = self.registry.lora(name)
            if info is None:
                raise LoraError(f"LoRA {name!r} is no longer in the models folder")
            uses.append((self._lora_files.get(info, allow_pickle=self.config.models.allow_pickle_checkpoints),
                         te, unet))
        loaded.lora_set = ()  # unknown until the merge below succeeds
        loaded.lora_merger.apply(uses)
        loaded.lora_set = loras

    # ------------------------------------------------------------------ running
    def generate(self, request: GenerationRequest, *, on_progress: Callable[[StepProgress], None] | None = None,
                 cancel: CancelToken | None = None) -> list[GeneratedImage]:
        """One request on its own; raises Canceled when canceled."""
        request = self.check_request(request).with_resolved_seed()
        item = BatchItem(key=0, request=request, cancel=cancel or CancelToken())
        results = self.run_batch([item], on_progress=(lambda _key, p: on_progress(p)) if on_progress else None)
        if results[0] is None:
            raise Canceled(item.cancel.reason)
        return results[0]

    def run_batch(self, items: Sequence[BatchItem], *, on_progress: ProgressCallback | None = None,
                  preview_every: int | None = None) -> dict[Hashable, list[GeneratedImage] | None]:
        """Run compatible requests as one call. A canceled item maps to None; if all are canceled, raises
        Canceled. `preview_every`: steps between previews, 0 for none (default from `[previews]`; a
        worker takes the bot's)."""
        if not items:
            return {}
        first = items[0].request
        if first.mode == "upscale":
            return _UpscaleRun(engine=self, items=list(items), on_progress=on_progress).run()
        info = self.registry.resolve(first.checkpoint)
        key = self.batch_key(first)
        for item in items:
            if item.request.seed < 0:
                raise ValueError("batch items need resolved seeds")
            if len(items) > 1 and self.batch_key(item.request) != key:
                raise ValueError("batch items must share one batch key")
        loaded = self.cache.get(info)
        self.merge_loras(loaded, self.lora_set(first))
        pipe = _pipeline_for(loaded, first.mode)
        used: dict[str, EmbeddingInfo] = {}
        for item in items:
            for embedding in self.embeddings_used(item.request):
                used[embedding.trigger] = embedding
        ensure_loaded(loaded.base, used.values(), loaded.embeddings)
        return _BatchRun(engine=self, loaded=loaded, pipe=pipe, items=list(items), used=used, preview_every=preview_every,
                         on_progress=on_progress).run()


def _unet_channels(pipe) -> int:
    return int(pipe.unet.config.in_channels)


def _pipeline_for(loaded: LoadedCheckpoint, mode: str):
    """The pipeline a batch runs on. Inpainting with a regular (4-channel) checkpoint runs on the
    img2img pipeline, with A1111's latent mask blended in after every step by `_LatentBlend`, so
    the initial latents are A1111's at any strength; a 9-channel inpainting checkpoint runs on its
    inpaint pipeline (which reads the mask and the masked picture), blended the same way."""
    if mode == "inpaint" and _unet_channels(loaded.base) == 4:
        return loaded.pipeline_for("img2img")
    return loaded.pipeline_for(mode)


def _use_noise(scheduler, noise: torch.Tensor) -> None:
    """Make the img2img pipeline noise its initial latents with `noise` (A1111's redrawn ImageRNG
    noise) instead of its own first draw; the generators then go on as the pipeline's would."""
    original = scheduler.add_noise
    used = []

    def add_noise(original_samples, drawn, timesteps):
        if not used:
            used.append(True)
            if drawn.shape != noise.shape:
                raise RuntimeError("the pipeline drew noise of another shape than the hires pass made")
            drawn = noise.to(drawn.device, drawn.dtype)
        return original(original_samples, drawn, timesteps)

    scheduler.add_noise = add_noise


class _LatentBlend:
    """A1111's inpainting blend in latent space, for the images of one batch.

    A1111 keeps the unmasked latents with its `mask` (1 - the latent mask) and `nmask`: the
    initial latents are init + noise there, and after the last step `init * mask + samples *
    nmask`. Between steps A1111's k-diffusion samplers blend the denoised prediction with init;
    here, as diffusers' own inpaint pipeline does for 4-channel UNets, the latents after each
    step are blended with init noised to the next step's level with the image's own noise. For
    the deterministic samplers (Euler, LMS, Heun, DPM2, DPM++ 2M) A1111's kept latents are
    exactly that too, so the runs agree; for ancestral and SDE samplers A1111's kept area holds
    the same noise level but mixed with the step's fresh noise, and for DDIM, PLMS and UniPC it
    re-noises the kept area before each step with unseeded noise: there only the kept area the
    UNet sees differs. `init` already carries "latent noise" / "latent nothing".
    """

    def __init__(self, *, init: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor):
        self.init = init
        self.noise = noise
        self.keep = keep  # [B, 1, h, w]: 1 = keep the init latents (A1111's `mask`)
        self.paint = 1.0 - keep  # A1111's `nmask`
        self._noise_checked = False

    def watch(self, scheduler) -> None:
        """Check that the pipeline noises its initial latents with this batch's noise (each image's
        first draw from its own seed): the blend re-noises the kept area with it."""
        original = scheduler.add_noise

        def add_noise(original_samples, noise, timesteps):
            if not self._noise_checked:
                self._noise_checked = True
                if noise.shape != self.noise.shape or not torch.equal(noise, self.noise):
                    raise RuntimeError("the pipeline drew other initial noise than inpainting blends with")
            return original(original_samples, noise, timesteps)

        scheduler.add_noise = add_noise

    def after_step(self, pipe, step_index: int, latents: torch.Tensor) -> torch.Tensor:
        scheduler = pipe.scheduler
        steps = pipe.num_timesteps  # this run's timesteps (strength applied)
        init = self.init
        if step_index < steps - 1:
            upcoming = scheduler.timesteps[len(scheduler.timesteps) - steps + step_index + 1]
            init = scheduler.add_noise(self.init, self.noise, torch.tensor([upcoming]))
        return init * self.keep + latents * self.paint


def _pixels(image: Image.Image) -> torch.Tensor:
    """An RGB picture as [1, 3, H, W] in [-1, 1] (A1111: uint8 / 255, then * 2 - 1)."""
    array = np.array(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None] * 2.0 - 1.0


class _LoraFiles:
    """Parsed LoRA files kept in memory (least recently used dropped first), so switching sets costs
    a merge, not a read. Used from the GPU thread only."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._files: OrderedDict[tuple, object] = OrderedDict()

    def get(self, info, *, allow_pickle: bool):
        from .lora_networks import read_lora_file

        stat = info.path.stat()
        key = (info.path, stat.st_size, stat.st_mtime_ns)
        if key not in self._files:
            self._files[key] = read_lora_file(info.path, allow_pickle=allow_pickle)
            while len(self._files) > self.capacity:
                self._files.popitem(last=False)
        self._files.move_to_end(key)
        return self._files[key]


class _BatchRun:
    """One pipeline call for a batch: conditioning, generators, the per-step callback, splitting results."""

    def __init__(self, *, engine: Engine, loaded: LoadedCheckpoint, pipe, items: list[BatchItem], preview_every=None,
                 used: dict[str, EmbeddingInfo], on_progress: ProgressCallback | None):
        self.engine = engine
        self.loaded = loaded
        self.pipe = pipe
        self.items = items
        self.used = used
        self.on_progress = on_progress
        self.request = items[0].request
        self.choice = resolve_sampler(self.request.sampler, self.request.schedule)
        self.seeds = [seed for item in items for seed in item.request.seeds()]
        self.owner = [index for index, item in enumerate(items) for _ in range(item.request.count)]
        self.every = preview_every if preview_every is not None else engine.config.previews.steps_between
        self.guidance = None  # ComposableGuidance while a composable batch runs
        self.inpaint_jobs: list[InpaintJob] | None = None  # per item, in inpaint mode
        self.blend: _LatentBlend | None = None  # in inpaint mode
        self.hires = hires_plan(self.request)
        self.step_offset = 0  # steps of the first pass, while the hires pass runs (progress counts on)
        self.in_hires_pass = False

    def run(self) -> dict[Hashable, list[GeneratedImage] | None]:
        from .batch_conditioning import BatchConditioning

        request, pipe = self.request, self.pipe
        pipe.scheduler = make_scheduler(self.choice, self.loaded.scheduler_config, seeds=self.seeds, steps=request.steps)
        device = self.engine.cache.device
        self.conditioning = BatchConditioning.build(
            pipe, [(encoder_prompt(item.request.prompt), item.request.negative_prompt, item.request.count)
                   for item in self.items],
            steps=request.steps, clip_skip=request.clip_skip, max_chunks=self.engine.config.limits.max_prompt_chunks,
        )
        prompt_embeds, negative_embeds = self.conditioning.at_step(0)
        kwargs = dict(
            prompt_embeds=prompt_embeds.to(device.device, device.dtype),
            negative_prompt_embeds=negative_embeds.to(device.device, device.dtype),
            num_inference_steps=request.steps,
            guidance_scale=self.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in self.seeds],
            output_type="pil",
            callback_on_step_end=self._on_step_end,
            callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
        )
        if self.conditioning.has_pooled:  # SDXL
            pooled, negative_pooled = self.conditioning.pooled_at(0)
            kwargs.update(pooled_prompt_embeds=pooled.to(device.device, device.dtype),
                          negative_pooled_prompt_embeds=negative_pooled.to(device.device, device.dtype))
            kwargs["callback_on_step_end_tensor_inputs"].append("add_text_embeds")
        if request.mode == "txt2img":
            kwargs.update(width=request.width, height=request.height)
            if any(item.request.has_variation or item.request.has_seed_resize for item in self.items):
                kwargs["latents"] = self._variation_latents(device, kwargs["generator"])
            if self.hires is not None:
                kwargs["output_type"] = "latent"
        elif request.mode == "img2img":
            limit = self.engine.config.limits.max_pixels * 4
            kwargs["image"] = [load_user_image(Path(self.items[i].request.init_image), max_pixels=limit)
                               .convert("RGB").resize((request.width, request.height), Image.LANCZOS) for i in self.owner]
            kwargs["strength"] = float(request.strength)
            if self.loaded.info.inpainting:
                kwargs["inpainting_mask_weight"] = self.engine.config.models.inpainting_mask_weight
        else:
            with torch.inference_mode():
                kwargs.update(self._inpaint_inputs(device))
            self.blend.watch(pipe.scheduler)
        with torch.inference_mode(), self._guidance_attached():
            output = pipe(**kwargs)
        images = output.images
        if self.hires is not None:
            images = self._hires_pass(images, device)
        if self.inpaint_jobs is not None:
            images = [finish_inpaint(self.inpaint_jobs[owner], image) for owner, image in zip(self.owner, images)]
        return self._split(images)

    def _hires_pass(self, latents: torch.Tensor, device: DeviceSpec) -> list[Image.Image]:
        """A1111's second pass (see generation.hires): upscale the first pass's latents (a Latent
        mode, or decode, an upscaler, encode), crop, then img2img from fresh seeded noise at the new
        size over exactly the last N steps of a longer schedule, with the hires prompts."""
        from .batch_conditioning import BatchConditioning
        from .hires import crop_latents, img2img_strength, pixels_to_uint8, second_pass_schedule, upscale_latents

        request, hires, first = self.request, self.hires, self.pipe
        pipe = _pipeline_for(self.loaded, "img2img")
        with torch.inference_mode():
            if request.hr_upscaler in LATENT_MODES:
                latents = upscale_latents(latents, hires.upscale_to, request.hr_upscaler)
            else:
                upscaler = self.engine.registry.upscaler(request.hr_upscaler)
                pictures = pixels_to_uint8(decode_latents(first, latents))
                resized = [self.engine.upscalers.resize(picture, *hires.upscale_to, upscaler) for picture in pictures]
                latents = encode_image_mean(pipe, torch.cat([_pixels(picture) for picture in resized]))
            latents = crop_latents(latents, hires.truncate).to(device.device, device.dtype)
        total, _ = second_pass_schedule(hires.steps, float(request.strength))
        choice = resolve_sampler(request.hr_sampler, request.schedule) if request.hr_sampler else self.choice
        pipe.scheduler = make_scheduler(choice, self.loaded.scheduler_config, seeds=self.seeds, steps=total)
        noise = self._seeded_noise(tuple(latents.shape[1:]), device)
        _use_noise(pipe.scheduler, noise)
        self.step_offset = getattr(first, "num_timesteps", None) or request.steps
        self.pipe, self.in_hires_pass = pipe, True
        self.conditioning = BatchConditioning.build(
            pipe, [(encoder_prompt(hires_texts(item.request)[0]), hires_texts(item.request)[1], item.request.count)
                   for item in self.items],
            steps=hires.steps, clip_skip=request.clip_skip, max_chunks=self.engine.config.limits.max_prompt_chunks,
            first_pass_steps=request.steps)
        prompt_embeds, negative_embeds = self.conditioning.at_step(0)
        kwargs = dict(
            image=latents, strength=img2img_strength(total, hires.steps), num_inference_steps=total,
            prompt_embeds=prompt_embeds.to(device.device, device.dtype),
            negative_prompt_embeds=negative_embeds.to(device.device, device.dtype),
            guidance_scale=self.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in self.seeds],
            output_type="pil", callback_on_step_end=self._on_step_end,
            callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
        )
        if self.conditioning.has_pooled:
            pooled, negative_pooled = self.conditioning.pooled_at(0)
            kwargs.update(pooled_prompt_embeds=pooled.to(device.device, device.dtype),
                          negative_pooled_prompt_embeds=negative_pooled.to(device.device, device.dtype))
            kwargs["callback_on_step_end_tensor_inputs"].append("add_text_embeds")
        if self.loaded.info.inpainting:
            kwargs["inpainting_mask_weight"] = self.engine.config.models.inpainting_mask_weight
        with torch.inference_mode(), self._guidance_attached():
            return pipe(**kwargs).images

    def _seeded_noise(self, shape: tuple[int, ...], device: DeviceSpec) -> torch.Tensor:
        """Every image's noise of `shape` as A1111's ImageRNG draws it afresh: randn(seed), or with a
        variation seed or seed resize `variations.image_noise` (A1111 redraws both at the hires size)."""
        from diffusers.utils.torch_utils import randn_tensor

        from .variations import image_noise

        target = dict(device=device.device, dtype=device.dtype)
        noises = []
        for item in self.items:
            asked = item.request
            subseeds = asked.subseeds() if asked.has_variation else [None] * asked.count
            resize = (asked.seed_resize_from_w, asked.seed_resize_from_h) if asked.has_seed_resize else None
            for seed, subseed in zip(asked.seeds(), subseeds):
                if asked.has_variation or asked.has_seed_resize:
                    noises.append(image_noise(shape, seed, subseed, float(asked.subseed_strength), resize)[None].to(**target))
                else:
                    noises.append(randn_tensor((1, *shape), generator=torch.Generator("cpu").manual_seed(seed), **target))
        return torch.cat(noises)

    def _variation_latents(self, device: DeviceSpec, generators: list[torch.Generator]) -> torch.Tensor:
        """txt2img initial noise of every image, as A1111's ImageRNG.first draws it: for a job with a
        variation seed or seed resize `variations.image_noise` (seed, subseed + i); for the others
        the pipeline's own first draw from the image's generator. Unscaled: the pipeline multiplies
        given latents by the scheduler's init_noise_sigma, as it does its own noise. The per-image
        generators (ancestral and SDE step noise) keep following the main seed, as in A1111: each
        makes the first draw the pipeline would have made, so the step noise after it is unchanged."""
        from diffusers.utils.torch_utils import randn_tensor

        from .variations import image_noise

        scale = self.pipe.vae_scale_factor
        shape = (self.pipe.unet.config.in_channels, self.request.height // scale, self.request.width // scale)
        target = dict(device=device.device, dtype=device.dtype)
        noises = []
        position = 0
        for item in self.items:
            asked = item.request
            subseeds = asked.subseeds() if asked.has_variation else [None] * asked.count
            resize = (asked.seed_resize_from_w, asked.seed_resize_from_h) if asked.has_seed_resize else None
            for seed, subseed in zip(asked.seeds(), subseeds):
                drawn = randn_tensor((1, *shape), generator=generators[position], **target)  # the pipeline's draw
                position += 1
                if asked.has_variation or asked.has_seed_resize:
                    drawn = image_noise(shape, seed, subseed, float(asked.subseed_strength), resize)[None].to(**target)
                noises.append(drawn)
        return torch.cat(noises)

    def _inpaint_inputs(self, device: DeviceSpec) -> dict:
        """A1111's inpaint init for every image of the batch (`inpainting.prepare_inpaint` per job),
        as pipeline arguments: the initial latents of each image (VAE latents of its prepared
        picture; for "latent noise" its own seeded noise in the masked latents, as A1111 uses the
        image's first noise there; for "latent nothing" zeros), and for a 9-channel checkpoint the
        mask and the masked picture's latents. Sets up the per-step blend (`_LatentBlend`)."""
        request, pipe = self.request, self.pipe
        limit = self.engine.config.limits.max_pixels * 4
        jobs = []
        for item in self.items:
            asked = item.request
            jobs.append(prepare_inpaint(
                load_user_image(Path(asked.init_image), max_pixels=limit),
                load_user_image(Path(asked.mask), max_pixels=limit),
                width=request.width, height=request.height, mask_blur=asked.mask_blur,
                mask_invert=asked.mask_invert, masked_content=asked.masked_content,
                only_masked=asked.only_masked, only_masked_padding=asked.only_masked_padding))
        self.inpaint_jobs = jobs
        scale = pipe.vae_scale_factor
        latent_w, latent_h = request.width // scale, request.height // scale
        target = dict(device=device.device, dtype=device.dtype)
        nine_channels = _unet_channels(pipe) == 9
        encoded, paint_masks, masked_latents = [], [], []
        for job in jobs:
            pixels = _pixels(job.image)
            encoded.append(encode_image_mean(pipe, pixels).to(**target))
            if job.image_mask is None:  # "Only masked" on a blank mask: A1111 runs img2img, unmasked
                paint = torch.ones(1, 1, latent_h, latent_w)
            else:
                paint = torch.from_numpy(latent_mask(job.image_mask, latent_w, latent_h))[None, None]
            paint_masks.append(paint.to(**target))
            if nine_channels:  # A1111's inpainting conditioning: the picture where the rounded mask is 0
                mask = (np.ones((request.height, request.width), dtype=np.float32) if job.image_mask is None
                        else np.array(job.image_mask.convert("L"), dtype=np.float32) / 255.0)
                # lerp(pixels, pixels * (1 - mask), w) with A1111's conditioning mask strength w
                weight = self.engine.config.models.inpainting_mask_weight
                keep_pixels = 1.0 - weight * torch.from_numpy(np.round(mask))[None, None]
                masked_latents.append(encode_image_mean(pipe, pixels * keep_pixels).to(**target))
        from diffusers.utils.torch_utils import randn_tensor

        init, noise, keep = [], [], []
        for owner, seed in zip(self.owner, self.seeds):
            latents, paint = encoded[owner], paint_masks[owner]
            # The pipeline's own noise for this image: the first draw of its generator.
            drawn = randn_tensor(tuple(latents.shape), generator=torch.Generator("cpu").manual_seed(seed), **target)
            content = self.items[owner].request.masked_content
            if jobs[owner].image_mask is not None and content == "latent noise":
                latents = latents * (1.0 - paint) + drawn * paint
            elif jobs[owner].image_mask is not None and content == "latent nothing":
                latents = latents * (1.0 - paint)
            init.append(latents)
            noise.append(drawn)
            keep.append(1.0 - paint)
        self.blend = _LatentBlend(init=torch.cat(init), noise=torch.cat(noise), keep=torch.cat(keep))
        kwargs = dict(image=self.blend.init, strength=float(request.strength))
        if nine_channels:
            white = Image.new("L", (request.width, request.height), 255)
            kwargs.update(width=request.width, height=request.height,
                          mask_image=[jobs[owner].image_mask or white for owner in self.owner],
                          masked_image_latents=torch.cat([masked_latents[owner] for owner in self.owner]))
            if request.strength == 1.0:
                # diffusers' inpaint pipeline starts a full-strength run from noise alone; A1111 (and
                # the img2img pipeline) from the init latents noised to the first step. Given latents,
                # the pipeline scales them by init_noise_sigma: hand it A1111's start divided by that.
                probe = make_scheduler(self.choice, self.loaded.scheduler_config, seeds=self.seeds, steps=request.steps)
                probe.set_timesteps(request.steps, device=device.device)
                if hasattr(probe, "set_begin_index"):
                    probe.set_begin_index(0)
                start = probe.add_noise(self.blend.init, self.blend.noise, probe.timesteps[:1])
                kwargs["latents"] = start / probe.init_noise_sigma
        return kwargs

    @property
    def guidance_scale(self) -> float:
        """The scale the pipeline runs with: the batch's largest (PerImageGuidance scales the others)."""
        return max(float(item.request.cfg_scale) for item in self.items)

    def _guidance_attached(self):
        from .composable import ComposableGuidance, PerImageGuidance

        stack = contextlib.ExitStack()
        if self.conditioning.is_composable:
            self.guidance = ComposableGuidance(self.conditioning)
            stack.enter_context(self.guidance.attached(self.pipe.unet))
        scales = [float(self.items[owner].request.cfg_scale) for owner in self.owner]
        if len(set(scales)) > 1:  # the batch key lets only scales above 1 differ: all run guided
            stack.enter_context(PerImageGuidance(scales).attached(self.pipe.unet))
        return stack

    def _on_step_end(self, pipe, step_index: int, timestep, tensors: dict) -> dict:
        if all(item.cancel.canceled for item in self.items):
            raise Canceled(self.items[0].cancel.reason)  # stops at once, before the VAE decode
        done = self.step_offset + step_index + 1
        total = self.step_offset + (getattr(pipe, "num_timesteps", None) or self.request.steps)
        if self.hires is not None and not self.in_hires_pass:
            total += self.hires.steps
        blended = {}
        if self.blend is not None and tensors.get("latents") is not None:
            blended["latents"] = self.blend.after_step(pipe, step_index, tensors["latents"])
        if self.on_progress is not None:
            latents = blended.get("latents", tensors.get("latents"))
            want_preview = latents is not None and self.every and done % self.every == 0 and done < total
            for index, item in enumerate(self.items):
                if item.cancel.canceled:
                    continue
                preview = None
                if want_preview:
                    first_image = self.owner.index(index)
                    preview = latents_to_preview(latents[first_image], sdxl=self.loaded.is_sdxl)
                try:
                    self.on_progress(item.key, StepProgress(step=done, total=total, preview=preview))
                except Exception:  # a frontend's bug must not kill the batch
                    log.exception("progress callback failed")
        if self.guidance is not None:
            self.guidance.step_index = step_index + 1
        return {**self.conditioning.replacements_after(step_index, tensors), **blended}

    def _hires_infotext(self, request: GenerationRequest) -> list[tuple[str, str]]:
        """A1111's hires keys, in its order; the sampler and prompts only where they differ."""
        if self.hires is None:
            return []
        pairs = []
        if request.hr_sampler and request.hr_sampler != request.sampler:
            pairs.append(("Hires sampler", request.hr_sampler))
        hr_prompt, hr_negative = hires_texts(request)
        if hr_prompt != request.prompt:
            pairs.append(("Hires prompt", hr_prompt))
        if hr_negative != request.negative_prompt:
            pairs.append(("Hires negative prompt", hr_negative))
        if request.hr_resize_x or request.hr_resize_y:
            pairs.append(("Hires resize", f"{request.hr_resize_x}x{request.hr_resize_y}"))
        else:
            pairs.append(("Hires upscale", str(float(request.hr_scale))))  # A1111 writes the float as str() does
        if request.hr_second_pass_steps:
            pairs.append(("Hires steps", str(request.hr_second_pass_steps)))
        pairs.append(("Hires upscaler", request.hr_upscaler))
        return pairs

    def _split(self, images: list[Image.Image]) -> dict[Hashable, list[GeneratedImage] | None]:
        results: dict[Hashable, list[GeneratedImage] | None] = {}
        position = 0
        for index, item in enumerate(self.items):
            request = item.request
            chunk = images[position:position + request.count]
            position += request.count
            if item.cancel.canceled:
                results[item.key] = None
                continue
            ti_hashes = {e.trigger: e.ti_hash for e in self.engine.embeddings_used(request)}
            lora_hashes = self.engine.lora_hashes(request)
            # A1111 writes the inpaint keys in init, before the LoRA hashes of the batch's networks.
            extra = list(self.inpaint_jobs[index].extra) if self.inpaint_jobs is not None else []
            if self.loaded.info.inpainting:  # A1111 notes the mask weight of every inpainting-model run
                # A1111 writes the float as str() does
                extra.append(("Conditional mask weight", str(float(self.engine.config.models.inpainting_mask_weight))))
            extra += self._hires_infotext(request)
            extra += [("Lora hashes", lora_hashes)] if lora_hashes else []
            info = self.loaded.info
            seeds = request.seeds()
            subseeds = request.subseeds() if request.has_variation else [None] * request.count
            resize = (request.seed_resize_from_w, request.seed_resize_from_h) if request.has_seed_resize else None
            results[item.key] = [
                GeneratedImage(index=i, seed=seeds[i], image=image, infotext=format_infotext(
                    prompt=request.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
                    sampler=self.choice.sampler, schedule_type=self.choice.schedule, cfg_scale=request.cfg_scale,
                    seed=seeds[i], width=request.width, height=request.height,
                    model_hash=info.short_hash, model=info.name, variation_seed=subseeds[i],
                    variation_seed_strength=request.subseed_strength if request.has_variation else None,
                    seed_resize_from=resize,
                    denoising_strength=request.strength if request.mode != "txt2img" or self.hires else None,
                    clip_skip=request.clip_skip, ti_hashes=ti_hashes or None, version=f"easel {__version__}",
                    extra=extra,
                ))
                for i, image in enumerate(chunk)
            ]
        return results


class _UpscaleRun:
    """Upscale jobs (A1111's Extras "upscale by") on the GPU thread. Jobs of one batch share the
    upscaler, factor and source size: their pictures go through the model together, tile by tile.
    The source keeps its "parameters"; the result adds A1111's postprocessing keys."""

    def __init__(self, *, engine: Engine, items: list[BatchItem], on_progress: ProgressCallback | None):
        self.engine = engine
        self.items = items
        self.on_progress = on_progress

    def run(self) -> dict[Hashable, list[GeneratedImage] | None]:
        from .infotext import read_infotext
        from .upscalers import postprocess_infotext

        first = self.items[0].request
        upscaler = self.engine.registry.upscaler(first.upscaler)
        limit = self.engine.config.limits.max_upscale_pixels
        sources, texts = [], []
        for item in self.items:
            path = Path(item.request.init_image)
            sources.append(load_user_image(path, max_pixels=limit).convert("RGB"))
            try:  # our own PNGs, or a member's upload that kept only its A1111 parameters
                texts.append(read_infotext(path.read_bytes(), max_pixels=limit) or "")
            except EaselError:
                texts.append("")
        if len({source.size for source in sources}) > 1:
            raise ValueError("batch items must share one source size")
        images = self.engine.upscalers.upscale(sources, upscaler, float(first.upscale_by),
                                               cancel=lambda: all(item.cancel.canceled for item in self.items))
        results: dict[Hashable, list[GeneratedImage] | None] = {}
        postprocessing = postprocess_infotext(first.upscale_by, upscaler.name)
        for item, image, text in zip(self.items, images, texts):
            if item.cancel.canceled:
                results[item.key] = None
                continue
            results[item.key] = [GeneratedImage(index=0, seed=item.request.seed, image=image, infotext=text,
                                                postprocessing=postprocessing)]
            if self.on_progress is not None:
                try:
                    self.on_progress(item.key, StepProgress(step=1, total=1))
                except Exception:
                    log.exception("progress callback failed")
        if all(result is None for result in results.values()):
            raise Canceled(self.items[0].cancel.reason)
        return results


__all__ = ["BatchItem", "CancelToken", "CheckedRequest", "Engine", "GeneratedImage", "StepProgress", "batch_key"]
