"""Settings: config.toml validated at start, plus environment overrides for containers.

Every key has a default here; config.toml at the project root repeats them with comments. An
unknown key or a wrong value stops the start with one message that lists every problem.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, get_type_hints

from .errors import EaselError


class ConfigError(EaselError):
    pass


@dataclass(frozen=True)
class DiscordConfig:
    dev_guild_id: int = 0  # 0: sync commands globally
    allow_dms: bool = False
    progress_edit_interval_s: float = 2.0
    # Who may change the shared models folder (/owner ...): these ids and the application's owner(s).
    owner_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class PathsConfig:
    data_dir: str = "data"
    models_dir: str = "models"


@dataclass(frozen=True)
class DeviceConfig:
    device: str = "auto"
    # Weights' dtype: auto = float16 on cuda/mps, float32 on cpu; bfloat16 on cards that have it.
    dtype: str = "auto"
    # accelerate's CPU offload: none, model (one model at a time on the GPU), sequential (layer by
    # layer: least memory, slowest), or auto (by free memory and the checkpoint's size).
    offload: str = "none"
    vae_tiling_above: int = 1024 * 1024  # pixels; decode/encode in tiles above this (0: never)
    vae_slicing: bool = True  # decode a batch one image at a time (GPU/MPS)
    attention_slicing: bool = False
    channels_last: bool = True  # GPU/MPS
    tf32: bool = True  # on Ampere and later
    # torch.compile of the UNet, one graph per size below (other sizes run uncompiled).
    compile: bool = False
    compile_sizes: tuple[str, ...] = ("512x512", "768x768", "1024x1024", "832x1216", "1216x832")
    warmup: bool = True  # with compile: compile every size when a checkpoint loads
    cache_bytes: int = 0  # loaded checkpoints' weights on the device; 0 = free memory minus a margin
    # Generating on the CPU, the bot leaves its event loop (Discord's heartbeat, every command) a
    # core: torch gets this many threads, 0 = every core but one.
    cpu_threads: int = 0


@dataclass(frozen=True)
class ModelsConfig:
    default_checkpoint: str = ""
    pipeline_cache_size: int = 2
    lora_cache_size: int = 8  # parsed LoRA files kept in memory
    # A1111's "Inpainting conditioning mask strength" for inpainting checkpoints: 1 hides the masked
    # part of the picture from the model, 0 shows it all (img2img and inpaint).
    inpainting_mask_weight: float = 1.0
    allow_pickle_checkpoints: bool = False
    allow_hub_checkpoints: bool = True
    # Upscaler models (models/upscalers/) kept loaded, and A1111's tiling of their input
    # ("ESRGAN_tile", "ESRGAN_tile_overlap"; tile 0 = the whole image at once).
    upscaler_cache_size: int = 2
    upscaler_tile: int = 192
    upscaler_tile_overlap: int = 8
    # First run: with checkpoints/ empty and no default_checkpoint, `easel run` downloads this file
    # of this Hugging Face repo (HF_ENDPOINT, HF_TOKEN honoured) into checkpoints/, as A1111 does, and
    # refuses it unless its sha256 is this one ("": not checked).
    download_default: bool = True
    default_repo: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    default_file: str = "v1-5-pruned-emaonly.safetensors"
    default_sha256: str = "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"


@dataclass(frozen=True)
class LimitsConfig:
    min_steps: int = 1
    max_steps: int = 60
    min_size: int = 64
    max_width: int = 1536
    max_height: int = 1536
    max_pixels: int = 1024 * 1024
    max_count: int = 4
    max_cfg_scale: float = 30.0
    max_prompt_chunks: int = 6
    max_prompt_parts: int = 4
    max_clip_skip: int = 12
    # Checked before any parsing: characters of the prompt and of the negative prompt, each.
    max_prompt_chars: int = 4000
    # Distinct texts prompt editing and alternation may give (each one is tokenized and encoded).
    max_schedule_texts: int = 16
    # Largest emphasis weight, explicit `(x:w)` or from nested brackets, and AND-part weight.
    max_prompt_weight: float = 10.0
    # LoRA tags one prompt may carry (each is merged into the weights before the job runs).
    max_loras: int = 8
    # Checking one request (parsing, tokenizing) runs off the event loop and gives up after this.
    check_deadline_s: float = 5.0
    # Hires fix: the second pass's size (after the crop) has limits of its own.
    max_hires_side: int = 2048
    max_hires_pixels: int = 2048 * 2048
    max_hires_scale: float = 4.0
    # Upscales (/upscale, the Upscale button, `easel upscale`): largest factor and result size.
    max_upscale_by: float = 4.0
    max_upscale_pixels: int = 4096 * 4096


@dataclass(frozen=True)
class DefaultsConfig:
    sampler: str = "Euler a"
    schedule: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    native_size: bool = True  # a checkpoint's own size (SDXL 1024, SD 2.x 768) beats width x height
    count: int = 1
    negative_prompt: str = ""
    strength: float = 0.75
    clip_skip: int = 1
    # Inpainting, as A1111's defaults.
    mask_blur: int = 4
    masked_content: str = "original"
    only_masked_padding: int = 32
    # Hires fix: off unless a member (or their /settings, or the server) turns it on; then A1111's
    # UI defaults for the scale and upscaler.
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    # Upscales: the upscaler (a file stem in models/upscalers/, "Lanczos" or "Nearest") and factor.
    upscaler: str = "Lanczos"
    upscale_by: float = 2.0
    # The Vary (subtle) / Vary (strong) buttons: A1111's variation strength (0-1) toward a new random
    # variation seed, from the chosen image's seed.
    vary_subtle_strength: float = 0.15
    vary_strong_strength: float = 0.6


@dataclass(frozen=True)
class PreviewsConfig:
    enabled: bool = True  # off: no preview is made (`easel generate` shows none)
    every_n_steps: int = 4

    @property
    def steps_between(self) -> int:
        """Steps between two previews; 0 for none."""
        return self.every_n_steps if self.enabled else 0


@dataclass(frozen=True)
class QueueConfig:
    max_batch: int = 4
    per_user_queued: int = 5
    per_guild_queued: int = 50
    affinity_lookahead: int = 4
    max_attempts: int = 3
    job_timeout_s: float = 600.0


@dataclass(frozen=True)
class RetentionConfig:
    # Images members upload for /img2img and /inpaint: kept this long after their last use...
    uploads_days: float = 30.0
    # ...and at most this many per member (the oldest unused ones go first).
    max_uploads_per_member: int = 50
    # /info's "Generate with these" drafts.
    drafts_days: float = 30.0
    max_drafts_per_member: int = 20


@dataclass(frozen=True)
class MetricsConfig:
    # Prometheus /metrics on host:port; port 0 = off.
    host: str = "127.0.0.1"
    port: int = 0


@dataclass(frozen=True)
class WorkersConfig:
    # Redis URL of the Celery broker (EASEL_BROKER_URL overrides it). Empty: the bot runs jobs on
    # its own device; set: `easel run` loads no model and dispatches to `easel worker` processes.
    broker_url: str = ""
    # A worker beats every heartbeat_s; one silent for lease_s is gone and its jobs run elsewhere.
    heartbeat_s: float = 1.0
    lease_s: float = 5.0


@dataclass(frozen=True)
class Config:
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    defaults: DefaultsConfig = field(default_factory=DefaultsConfig)
    previews: PreviewsConfig = field(default_factory=PreviewsConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    discord_token: str = field(default="", repr=False)  # from DISCORD_TOKEN only, never from the file

    @property
    def data_dir(self) -> Path:
        return Path(self.paths.data_dir).expanduser()

    @property
    def models_dir(self) -> Path:
        return Path(self.paths.models_dir).expanduser()

    @property
    def checkpoints_dir(self) -> Path:
        return self.models_dir / "checkpoints"

    @property
    def embeddings_dir(self) -> Path:
        return self.models_dir / "embeddings"

    @property
    def loras_dir(self) -> Path:
        return self.models_dir / "loras"

    @property
    def upscalers_dir(self) -> Path:
        return self.models_dir / "upscalers"

    @property
    def uploads_dir(self) -> Path:
        """Images members uploaded (init images, masks), one folder per member."""
        return self.data_dir / "uploads"


_DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N, one GPU of several


def _check_value(section: str, key: str, value: Any, expected: type) -> tuple[Any, str | None]:
    where = f"[{section}] {key}"
    if expected is bool:
        if not isinstance(value, bool):
            return value, f"{where} must be true or false, not {value!r}"
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return value, f"{where} must be a whole number, not {value!r}"
        if value < 0:
            return value, f"{where} must not be negative"
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, f"{where} must be a number, not {value!r}"
        value = float(value)
        if value < 0:
            return value, f"{where} must not be negative"
    elif expected is str:
        if not isinstance(value, str):
            return value, f"{where} must be a string, not {value!r}"
    elif expected == tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return value, f"{where} must be a list of strings, not {value!r}"
        value = tuple(value)
    elif expected == tuple[int, ...]:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return value, f"{where} must be a list of whole numbers, not {value!r}"
        value = tuple(value)
    return value, None


_DTYPES = ("auto", "float16", "bfloat16", "float32")
_OFFLOADS = ("none", "model", "sequential", "auto")


def _device_checks(device: DeviceConfig) -> list[str]:
    problems = []
    if device.dtype not in _DTYPES:
        problems.append(f"[device] dtype must be one of {', '.join(_DTYPES)}, not {device.dtype!r}")
    if device.offload not in _OFFLOADS:
        problems.append(f"[device] offload must be one of {', '.join(_OFFLOADS)}, not {device.offload!r}")
    for size in device.compile_sizes:
        match = re.fullmatch(r"(\d+)x(\d+)", size)
        if not match or any(int(side) % 8 or int(side) < 64 for side in match.groups()):
            problems.append(f"[device] compile_sizes: {size!r} is not WIDTHxHEIGHT in multiples of 8, at least 64")
    if device.compile and device.offload in ("model", "sequential"):
        problems.append("[device] compile needs offload = \"none\" or \"auto\" (an offloaded UNet is not compiled)")
    return problems


def _cross_checks(config: Config) -> list[str]:
    problems = []
    lim, dflt = config.limits, config.defaults
    if config.device.device not in _DEVICES and not re.fullmatch(r"cuda:\d+", config.device.device):
        problems.append(f"[device] device must be one of {', '.join(_DEVICES)}, not {config.device.device!r}")
    problems += _device_checks(config.device)
    if not 1 <= lim.min_steps <= lim.max_steps:
        problems.append("[limits] need 1 <= min_steps <= max_steps")
    if not lim.min_steps <= dflt.steps <= lim.max_steps:
        problems.append(f"[defaults] steps must be within {lim.min_steps}-{lim.max_steps}")
    for name in ("min_size", "max_width", "max_height"):
        if getattr(lim, name) % 8 or getattr(lim, name) == 0:
            problems.append(f"[limits] {name} must be a positive multiple of 8")
    for name in ("width", "height"):
        value = getattr(dflt, name)
        if value % 8 or value < lim.min_size:
            problems.append(f"[defaults] {name} must be a multiple of 8 and at least min_size")
    if dflt.width * dflt.height > lim.max_pixels:
        problems.append("[defaults] width x height exceeds [limits] max_pixels")
    if not 1 <= dflt.count <= lim.max_count:
        problems.append(f"[defaults] count must be within 1-{lim.max_count}")
    if not 0.0 <= dflt.strength <= 1.0:
        problems.append("[defaults] strength must be within 0-1")
    from .requests import MASKED_CONTENT, MAX_MASK_BLUR, MAX_ONLY_MASKED_PADDING

    if not 0 <= dflt.mask_blur <= MAX_MASK_BLUR or not 0 <= dflt.only_masked_padding <= MAX_ONLY_MASKED_PADDING:
        problems.append(f"[defaults] mask_blur must be within 0-{MAX_MASK_BLUR} and only_masked_padding "
                        f"within 0-{MAX_ONLY_MASKED_PADDING}")
    if dflt.masked_content not in MASKED_CONTENT:
        problems.append(f"[defaults] masked_content must be one of {', '.join(MASKED_CONTENT)}")
    if not 1 <= dflt.clip_skip <= lim.max_clip_skip:
        problems.append("[defaults] clip_skip must be within 1-[limits] max_clip_skip")
    if lim.max_prompt_chunks < 1:
        problems.append("[limits] max_prompt_chunks must be at least 1")
    if lim.max_prompt_parts < 1:
        problems.append("[limits] max_prompt_parts must be at least 1")
    if lim.max_prompt_chars < 1 or lim.max_schedule_texts < 1 or lim.max_prompt_weight <= 0:
        problems.append("[limits] max_prompt_chars, max_schedule_texts and max_prompt_weight must be positive")
    if config.device.cpu_threads < 0:
        problems.append("[device] cpu_threads must be 0 (every core but one) or more")
    if not 0 < config.workers.heartbeat_s < config.workers.lease_s:
        problems.append("[workers] need 0 < heartbeat_s < lease_s")
    if config.workers.broker_url and not config.workers.broker_url.startswith(("redis://", "rediss://")):
        problems.append("[workers] broker_url must be a redis:// or rediss:// URL")
    if lim.check_deadline_s <= 0:
        problems.append("[limits] check_deadline_s must be positive")
    if not 0.0 <= config.models.inpainting_mask_weight <= 1.0:
        problems.append("[models] inpainting_mask_weight must be within 0-1")
    if not (0.0 <= dflt.vary_subtle_strength <= 1.0 and 0.0 <= dflt.vary_strong_strength <= 1.0):
        problems.append("[defaults] vary_subtle_strength and vary_strong_strength must be within 0-1")
    if lim.max_hires_scale < 1 or lim.max_hires_side < lim.min_size or lim.max_hires_pixels < lim.min_size ** 2:
        problems.append("[limits] max_hires_scale must be at least 1, max_hires_side and max_hires_pixels at least "
                        "min_size (squared)")
    if not 1.0 <= dflt.hr_scale <= lim.max_hires_scale:
        problems.append("[defaults] hr_scale must be within 1-[limits] max_hires_scale")
    if lim.max_upscale_by < 1 or lim.max_upscale_pixels < 64:
        problems.append("[limits] max_upscale_by must be at least 1 and max_upscale_pixels at least 64")
    if not 1.0 <= dflt.upscale_by <= lim.max_upscale_by:
        problems.append("[defaults] upscale_by must be within 1-[limits] max_upscale_by")
    models = config.models
    if models.upscaler_cache_size < 1 or models.upscaler_tile < 0 or \
            (models.upscaler_tile and not 0 <= models.upscaler_tile_overlap < models.upscaler_tile):
        problems.append("[models] upscaler_cache_size must be at least 1, upscaler_tile 0 or more, and "
                        "upscaler_tile_overlap below upscaler_tile")
    if "/" in models.default_file or "\\" in models.default_file or models.default_file in ("", ".", ".."):
        problems.append("[models] default_file must be a file name, without any folder")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", models.default_repo) or ".." in models.default_repo:
        problems.append("[models] default_repo must be a Hugging Face repo id, org/name")
    if models.default_sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", models.default_sha256):
        problems.append("[models] default_sha256 must be 64 hex digits (a sha256), or empty to not check it")
    if config.models.pipeline_cache_size < 1:
        problems.append("[models] pipeline_cache_size must be at least 1")
    if config.previews.every_n_steps < 1:
        problems.append("[previews] every_n_steps must be at least 1")
    if config.queue.max_batch < 1 or config.queue.max_attempts < 1:
        problems.append("[queue] max_batch and max_attempts must be at least 1")
    if not 0 <= config.metrics.port <= 65535:
        problems.append("[metrics] port must be within 0-65535 (0: off)")
    try:
        from .samplers import resolve_sampler

        resolve_sampler(dflt.sampler, dflt.schedule)
    except EaselError as exc:
        problems.append(f"[defaults] sampler: {exc}")
    return problems


def config_from_mapping(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Build a validated Config from parsed TOML and environment variables."""
    env = os.environ if env is None else env
    problems: list[str] = []
    sections: dict[str, Any] = {}
    section_types = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "discord_token"}
    hints = get_type_hints(Config)
    for section, raw in data.items():
        if section not in section_types:
            problems.append(f"unknown section [{section}] (known: {', '.join(section_types)})")
            continue
        if not isinstance(raw, Mapping):
            problems.append(f"[{section}] must be a table")
            continue
        cls = hints[section]
        known = {f.name: get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}
        values = {}
        for key, value in raw.items():
            if key not in known:
                problems.append(f"unknown key [{section}] {key} (known: {', '.join(known)})")
                continue
            value, problem = _check_value(section, key, value, known[key])
            if problem:
                problems.append(problem)
            else:
                values[key] = value
        sections[section] = cls(**values)
    config = Config(**sections)
    overrides: dict[str, Any] = {}
    if env.get("EASEL_DATA_DIR"):
        overrides.setdefault("paths", {})["data_dir"] = env["EASEL_DATA_DIR"]
    if env.get("EASEL_MODELS_DIR"):
        overrides.setdefault("paths", {})["models_dir"] = env["EASEL_MODELS_DIR"]
    if env.get("EASEL_DEVICE"):
        overrides["device"] = {"device": env["EASEL_DEVICE"].strip().lower()}
    if env.get("EASEL_BROKER_URL"):
        overrides["workers"] = {"broker_url": env["EASEL_BROKER_URL"].strip()}
    for section, changes in overrides.items():
        config = dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **changes)})
    config = dataclasses.replace(config, discord_token=env.get("DISCORD_TOKEN", "").strip())
    problems += _cross_checks(config)
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))
    return config


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read config.toml (EASEL_CONFIG or ./config.toml; built-in defaults when absent)."""
    env = os.environ if env is None else env
    if path is None:
        path = Path(env.get("EASEL_CONFIG", "config.toml"))
        if not path.exists():
            return config_from_mapping({}, env)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return config_from_mapping(data, env)
