"""A1111 sampler names and schedule types, mapped onto diffusers schedulers.

Users speak A1111: "Euler a", "DPM++ 2M Karras", "k_dpmpp_2m", plus a separate schedule type
("Automatic", "Karras", ...). `resolve_sampler` turns any of those spellings into a validated
`SamplerChoice`; `make_scheduler` builds a fresh diffusers scheduler for it.

Name resolution needs neither torch nor diffusers: diffusers is imported only when a scheduler
is built, so the Discord frontend can validate and autocomplete cheaply.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from generation.errors import UnknownSampler

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

__all__ = [
    "SAMPLER_NAMES",
    "SCHEDULE_TYPES",
    "SamplerChoice",
    "describe_samplers",
    "make_scheduler",
    "resolve_sampler",
    "resolve_schedule",
    "schedules_for",
]

AUTOMATIC = "Automatic"
KARRAS = "Karras"
EXPONENTIAL = "Exponential"
BETA = "Beta"
SGM_UNIFORM = "SGM Uniform"

SCHEDULE_TYPES: tuple[str, ...] = (AUTOMATIC, KARRAS, EXPONENTIAL, BETA, SGM_UNIFORM)

# The config flag each sigma schedule switches on. SGM Uniform is a timestep spacing instead.
_SIGMA_FLAGS: Mapping[str, str] = MappingProxyType(
    {
        KARRAS: "use_karras_sigmas",
        EXPONENTIAL: "use_exponential_sigmas",
        BETA: "use_beta_sigmas",
    }
)

# Extra spellings of schedule types. A1111's API uses the lower-case ids; A1111's "Simple"
# schedule picks evenly spaced sigmas counted from the end, which diffusers expresses the
# same way as SGM Uniform (timestep_spacing="trailing"), so both resolve to SGM Uniform.
_SCHEDULE_ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        AUTOMATIC: ("automatic", "auto"),
        KARRAS: ("karras",),
        EXPONENTIAL: ("exponential",),
        BETA: ("beta",),
        SGM_UNIFORM: ("sgm_uniform", "simple"),
    }
)

_ALL_SCHEDULES = (AUTOMATIC, KARRAS, EXPONENTIAL, BETA, SGM_UNIFORM)


@dataclass(frozen=True)
class _SamplerSpec:
    """How one A1111 sampler is built in diffusers."""

    name: str
    scheduler_class: str  # looked up in diffusers lazily
    schedules: tuple[str, ...]  # schedule types this scheduler class can build
    automatic_schedule: str | None = None  # A1111's default for "Automatic"; None: plain
    options: Mapping[str, Any] = field(default_factory=dict)
    # Other names: k-diffusion / A1111 API ids, A1111's internal function names, ComfyUI ids.
    aliases: tuple[str, ...] = ()
    # Legacy ids that also pick a schedule (A1111's old "_ka" = Karras names).
    schedule_aliases: Mapping[str, str] = field(default_factory=dict)


# Which schedules each class supports was read from the diffusers 0.42.1 __init__ signatures
# (use_*_sigmas, timestep_spacing); LCMScheduler takes timestep_spacing but its set_timesteps
# ignores it, and DPMSolverSinglestepScheduler has no timestep_spacing at all.
_SPECS: tuple[_SamplerSpec, ...] = (
    _SamplerSpec(
        name="Euler a",
        scheduler_class="EulerAncestralDiscreteScheduler",
        schedules=(AUTOMATIC, SGM_UNIFORM),
        aliases=("k_euler_a", "k_euler_ancestral", "sample_euler_ancestral", "euler_ancestral"),
    ),
    _SamplerSpec(
        name="Euler",
        scheduler_class="EulerDiscreteScheduler",
        schedules=_ALL_SCHEDULES,
        aliases=("k_euler", "sample_euler"),
    ),
    _SamplerSpec(
        name="LMS",
        scheduler_class="LMSDiscreteScheduler",
        schedules=_ALL_SCHEDULES,
        aliases=("k_lms", "sample_lms", "lms_discrete"),
        schedule_aliases={"k_lms_ka": KARRAS},
    ),
    _SamplerSpec(
        name="Heun",
        scheduler_class="HeunDiscreteScheduler",
        schedules=_ALL_SCHEDULES,
        aliases=("k_heun", "sample_heun"),
    ),
    _SamplerSpec(
        name="DPM2",
        scheduler_class="KDPM2DiscreteScheduler",
        schedules=_ALL_SCHEDULES,
        automatic_schedule=KARRAS,
        aliases=("k_dpm_2", "sample_dpm_2", "dpm_2"),
        schedule_aliases={"k_dpm_2_ka": KARRAS},
    ),
    _SamplerSpec(
        name="DPM2 a",
        scheduler_class="KDPM2AncestralDiscreteScheduler",
        schedules=_ALL_SCHEDULES,
        automatic_schedule=KARRAS,
        aliases=("k_dpm_2_a", "sample_dpm_2_ancestral", "dpm_2_ancestral"),
        schedule_aliases={"k_dpm_2_a_ka": KARRAS},
    ),
    _SamplerSpec(
        name="DPM++ 2M",
        scheduler_class="DPMSolverMultistepScheduler",
        schedules=_ALL_SCHEDULES,
        automatic_schedule=KARRAS,
        # Set explicitly so a model config that ships another DPM variant cannot leak in.
        options={"algorithm_type": "dpmsolver++", "solver_order": 2},
        aliases=("k_dpmpp_2m", "sample_dpmpp_2m", "dpmpp_2m"),
        schedule_aliases={"k_dpmpp_2m_ka": KARRAS},
    ),
    _SamplerSpec(
        name="DPM++ SDE",
        scheduler_class="DPMSolverSDEScheduler",
        schedules=_ALL_SCHEDULES,
        automatic_schedule=KARRAS,
        aliases=("k_dpmpp_sde", "sample_dpmpp_sde", "dpmpp_sde"),
        schedule_aliases={"k_dpmpp_sde_ka": KARRAS},
    ),
    _SamplerSpec(
        name="DPM++ 2M SDE",
        scheduler_class="DPMSolverMultistepScheduler",
        schedules=_ALL_SCHEDULES,
        automatic_schedule=EXPONENTIAL,
        options={"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        aliases=("k_dpmpp_2m_sde", "sample_dpmpp_2m_sde", "dpmpp_2m_sde"),
        schedule_aliases={"k_dpmpp_2m_sde_ka": KARRAS},
    ),
    _SamplerSpec(
        name="DPM++ 2S a",
        scheduler_class="DPMSolverSinglestepScheduler",
        schedules=(AUTOMATIC, KARRAS, EXPONENTIAL, BETA),
        # A1111 v1.10 gives DPM++ 2S a a Karras default too (sd_samplers_kdiffusion.py).
        automatic_schedule=KARRAS,
        # Without lower_order_final diffusers warns on every odd step count.
        options={"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "lower_order_final": True},
        aliases=("k_dpmpp_2s_a", "sample_dpmpp_2s_ancestral", "dpmpp_2s_ancestral"),
        schedule_aliases={"k_dpmpp_2s_a_ka": KARRAS},
    ),
    _SamplerSpec(
        name="DDIM",
        scheduler_class="DDIMScheduler",
        schedules=(AUTOMATIC, SGM_UNIFORM),
    ),
    _SamplerSpec(
        name="PLMS",
        scheduler_class="PNDMScheduler",
        schedules=(AUTOMATIC, SGM_UNIFORM),
        options={"skip_prk_steps": True},
        aliases=("pndm",),
    ),
    _SamplerSpec(
        name="UniPC",
        scheduler_class="UniPCMultistepScheduler",
        schedules=_ALL_SCHEDULES,
        aliases=("uni_pc", "uni_pc_bh2"),
    ),
    _SamplerSpec(
        name="LCM",
        scheduler_class="LCMScheduler",
        schedules=(AUTOMATIC,),
        aliases=("k_lcm", "sample_lcm"),
    ),
)

SAMPLER_NAMES: tuple[str, ...] = tuple(spec.name for spec in _SPECS)
_SPEC_BY_NAME: Mapping[str, _SamplerSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})

# LCM raises if asked for more steps than its distillation schedule had.
_LCM_MIN_ORIGINAL_STEPS = 50


def _compact(text: str) -> str:
    """Case- and whitespace-insensitive key: "DPM++  2m karras" -> "dpm++2mkarras"."""
    return "".join(text.split()).casefold()


def _build_name_index() -> Mapping[str, tuple[str, str | None]]:
    index: dict[str, tuple[str, str | None]] = {}

    def add(spelling: str, target: tuple[str, str | None]) -> None:
        key = _compact(spelling)
        if index.setdefault(key, target) != target:
            raise RuntimeError(f"sampler alias {spelling!r} is ambiguous")

    for spec in _SPECS:
        add(spec.name, (spec.name, None))
        for alias in spec.aliases:
            add(alias, (spec.name, None))
        for alias, schedule in spec.schedule_aliases.items():
            add(alias, (spec.name, schedule))
    return MappingProxyType(index)


def _build_schedule_index() -> Mapping[str, str]:
    index: dict[str, str] = {}
    for schedule in SCHEDULE_TYPES:
        for spelling in (schedule, *_SCHEDULE_ALIASES[schedule]):
            index[_compact(spelling)] = schedule
    return MappingProxyType(index)


# compact spelling -> (canonical sampler, schedule implied by the spelling or None)
_NAME_INDEX = _build_name_index()
# compact spelling -> canonical schedule type
_SCHEDULE_INDEX = _build_schedule_index()
# Suffixes tried on combined names such as "DPM++ 2M Karras"; longest first.
_SCHEDULE_SUFFIXES = tuple(sorted(_SCHEDULE_INDEX, key=len, reverse=True))


def _list(names: Sequence[str]) -> str:
    return ", ".join(names)


def _unknown_sampler_message(name: str) -> str:
    message = f"Unknown sampler {name.strip()!r}."
    close = difflib.get_close_matches(_compact(name), list(_NAME_INDEX), n=1, cutoff=0.6)
    if close:
        message += f" Did you mean {_NAME_INDEX[close[0]][0]!r}?"
    return f"{message} Choose one of: {_list(SAMPLER_NAMES)}."


def _check_supported(sampler: str, schedule: str) -> None:
    spec = _SPEC_BY_NAME.get(sampler)
    if spec is None:
        raise UnknownSampler(_unknown_sampler_message(sampler))
    if schedule not in SCHEDULE_TYPES:
        raise UnknownSampler(
            f"Unknown schedule type {schedule!r}. Choose one of: {_list(SCHEDULE_TYPES)}."
        )
    if schedule not in spec.schedules:
        raise UnknownSampler(
            f"{sampler} has no {schedule} schedule. "
            f"Schedule types for {sampler}: {_list(spec.schedules)}."
        )


@dataclass(frozen=True)
class SamplerChoice:
    """A validated sampler + schedule type, both in canonical A1111 spelling.

    `schedule` is what the user chose (possibly "Automatic", as A1111 writes it in infotext);
    `effective_schedule` is what is actually built.
    """

    sampler: str
    schedule: str = AUTOMATIC

    def __post_init__(self) -> None:
        _check_supported(self.sampler, self.schedule)

    @property
    def effective_schedule(self) -> str:
        """The schedule really used: "Automatic" replaced by the sampler's A1111 default."""
        if self.schedule != AUTOMATIC:
            return self.schedule
        return _SPEC_BY_NAME[self.sampler].automatic_schedule or AUTOMATIC


def resolve_schedule(schedule: str) -> str:
    """Canonical schedule type for any accepted spelling ("karras", "sgm_uniform", "Simple")."""
    canonical = _SCHEDULE_INDEX.get(_compact(schedule))
    if canonical is None:
        raise UnknownSampler(
            f"Unknown schedule type {schedule.strip()!r}. Choose one of: {_list(SCHEDULE_TYPES)}."
        )
    return canonical


def _lookup_name(key: str) -> tuple[str, list[str]] | None:
    """Find a sampler by exact spelling, or by splitting a schedule suffix off a combined name.

    Returns the canonical sampler and the schedule types its spelling names (0, 1 or 2).
    """
    found = _NAME_INDEX.get(key)
    if found is not None:
        sampler, implied = found
        return sampler, [implied] if implied else []
    for suffix in _SCHEDULE_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            base = _NAME_INDEX.get(key[: -len(suffix)])
            if base is not None:
                sampler, implied = base
                return sampler, [s for s in (implied, _SCHEDULE_INDEX[suffix]) if s]
    return None


def resolve_sampler(name: str, schedule: str | None = None) -> SamplerChoice:
    """Resolve an A1111-style sampler name and optional schedule type.

    Accepts canonical names ("DPM++ 2M"), combined legacy names ("DPM++ 2M Karras"),
    k-diffusion / API ids ("k_dpmpp_2m", "k_dpmpp_2m_ka") and A1111 internal names
    ("sample_dpmpp_2m"), ignoring case and whitespace. A `schedule` of None, "" or "Automatic"
    defers to a schedule named inside `name` (as A1111 does); two different schedules are an
    error. Raises UnknownSampler with the valid choices in its message.
    """
    key = _compact(name)
    if not key:
        raise UnknownSampler(f"No sampler given. Choose one of: {_list(SAMPLER_NAMES)}.")
    found = _lookup_name(key)
    if found is None:
        raise UnknownSampler(_unknown_sampler_message(name))
    sampler, named = found
    given = f"Sampler {name.strip()!r}"
    if schedule and schedule.strip():
        named.append(resolve_schedule(schedule))
        given += f" with schedule type {schedule.strip()!r}"
    # "Automatic" is no preference; any other schedules named must agree.
    chosen = list(dict.fromkeys(s for s in named if s != AUTOMATIC))
    if len(chosen) > 1:
        raise UnknownSampler(f"{given} names both {chosen[0]} and {chosen[1]}. Pick one.")
    return SamplerChoice(sampler=sampler, schedule=chosen[0] if chosen else AUTOMATIC)


def schedules_for(sampler: str) -> tuple[str, ...]:
    """Schedule types a sampler (any accepted spelling) supports, "Automatic" first."""
    return _SPEC_BY_NAME[resolve_sampler(sampler).sampler].schedules


@cache
def _scheduler_class(class_name: str) -> type[SchedulerMixin]:
    return getattr(importlib.import_module("diffusers"), class_name)


@cache
def _init_keys(scheduler_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(scheduler_class.__init__).parameters) - {"self", "kwargs"}


def make_scheduler(
    choice: SamplerChoice,
    base_config: Mapping[str, Any],
    *,
    seeds: Sequence[int] | None = None,
    steps: int | None = None,
) -> SchedulerMixin:
    """Build a new scheduler for `choice` on the model's noise schedule.

    `base_config` is the model's own scheduler config (e.g. `pipe.scheduler.config`). Its
    model-defining values (betas, prediction_type, steps_offset, clip_sample, ...) carry over;
    the sigma schedule, timestep spacing (except a model's "trailing") and solver options are
    always set here, so nothing of an earlier choice leaks in. Returns a fresh object on every
    call: diffusers schedulers keep per-run state and are not thread safe.

    `seeds`: one per image of the batch, in batch order. DPM++ SDE draws its noise from its own
    Brownian trees, not from the pipeline generator; with seeds each image gets a tree seeded
    by its own seed, so image i of a batch equals that seed generated alone. The batch size
    must then equal len(seeds). Without seeds DPM++ SDE is not reproducible.
    `steps`: the inference steps, needed by LCM (its schedule must have at least as many).
    """
    spec = _SPEC_BY_NAME[choice.sampler]
    scheduler_class = _scheduler_class(spec.scheduler_class)
    init_keys = _init_keys(scheduler_class)

    # Keep only what this class accepts (no "unexpected attributes" warning each run), and drop
    # values the config recorded as mere defaults of its own class, as diffusers' from_config
    # does, so e.g. PNDM's default "leading" spacing does not pass to Euler.
    defaulted = set(base_config.get("_use_default_values", ()))
    model_config = {
        key: value
        for key, value in base_config.items()
        if key in init_keys and key not in defaulted
    }

    # Timestep spacing belongs to the sampler and schedule type, as in A1111, not to the model:
    # a saved config spells out its own class's default ("leading" for PNDM), which would move
    # Euler & co. off their "linspace". Only "trailing" is kept: no SD scheduler has it as a
    # default, so a model config that says it (zero-terminal-SNR, turbo models) means it.
    if model_config.get("timestep_spacing") != "trailing":
        model_config.pop("timestep_spacing", None)

    overrides: dict[str, Any] = dict(spec.options)
    effective = choice.effective_schedule
    for schedule, flag in _SIGMA_FLAGS.items():
        if flag in init_keys:
            overrides[flag] = schedule == effective
    if effective == SGM_UNIFORM:
        overrides["timestep_spacing"] = "trailing"
    if spec.name == "LCM":
        overrides["original_inference_steps"] = max(_LCM_MIN_ORIGINAL_STEPS, steps or 0)
    if spec.name == "DPM++ SDE":
        # A list (even of one) makes diffusers use one Brownian tree per batch item.
        overrides["noise_sampler_seed"] = [int(seed) for seed in seeds] if seeds else None

    return scheduler_class.from_config(model_config, **overrides)


def describe_samplers() -> list[str]:
    """One help line per sampler: its name and the schedule types it accepts."""
    lines = []
    for spec in _SPECS:
        schedules = [
            f"{AUTOMATIC} (= {spec.automatic_schedule})"
            if schedule == AUTOMATIC and spec.automatic_schedule
            else schedule
            for schedule in spec.schedules
        ]
        lines.append(f"{spec.name}: {_list(schedules)}")
    return lines
