"""Sampler name resolution and diffusers scheduler construction (generation/samplers.py)."""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Iterator, Sequence

import pytest
import torch
import diffusers
from diffusers import PNDMScheduler, SchedulerMixin

from generation.errors import EaselError, UnknownSampler
from generation.samplers import (
    SAMPLER_NAMES,
    SCHEDULE_TYPES,
    SamplerChoice,
    describe_samplers,
    make_scheduler,
    resolve_sampler,
    resolve_schedule,
    schedules_for,
)

# The scheduler_config.json shipped with Stable Diffusion 1.5, as written in the file.
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "trained_betas": None,
}

EXPECTED_NAMES = (
    "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ SDE",
    "DPM++ 2M SDE", "DPM++ 2S a", "DDIM", "PLMS", "UniPC", "LCM",
)

# Canonical name -> (diffusers class, config values it must have with the Automatic schedule).
EXPECTED_AUTOMATIC = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}),
    "LMS": ("LMSDiscreteScheduler", {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}),
    "Heun": ("HeunDiscreteScheduler", {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}),
    "DPM2": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True, "use_exponential_sigmas": False}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True, "use_beta_sigmas": False}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True, "use_exponential_sigmas": False}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True, "use_exponential_sigmas": False}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_exponential_sigmas": True, "use_karras_sigmas": False}),
    "DPM++ 2S a": ("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "lower_order_final": True, "use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "leading"}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True, "timestep_spacing": "leading"}),
    "UniPC": ("UniPCMultistepScheduler", {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}),
    "LCM": ("LCMScheduler", {"original_inference_steps": 50}),
}

# Every alias -> (canonical sampler, schedule it implies).
ALIASES = {
    "k_euler_a": ("Euler a", "Automatic"),
    "k_euler_ancestral": ("Euler a", "Automatic"),
    "sample_euler_ancestral": ("Euler a", "Automatic"),
    "euler_ancestral": ("Euler a", "Automatic"),
    "k_euler": ("Euler", "Automatic"),
    "sample_euler": ("Euler", "Automatic"),
    "k_lms": ("LMS", "Automatic"),
    "sample_lms": ("LMS", "Automatic"),
    "lms_discrete": ("LMS", "Automatic"),
    "k_lms_ka": ("LMS", "Karras"),
    "k_heun": ("Heun", "Automatic"),
    "sample_heun": ("Heun", "Automatic"),
    "k_dpm_2": ("DPM2", "Automatic"),
    "sample_dpm_2": ("DPM2", "Automatic"),
    "dpm_2": ("DPM2", "Automatic"),
    "k_dpm_2_ka": ("DPM2", "Karras"),
    "k_dpm_2_a": ("DPM2 a", "Automatic"),
    "sample_dpm_2_ancestral": ("DPM2 a", "Automatic"),
    "dpm_2_ancestral": ("DPM2 a", "Automatic"),
    "k_dpm_2_a_ka": ("DPM2 a", "Karras"),
    "k_dpmpp_2m": ("DPM++ 2M", "Automatic"),
    "sample_dpmpp_2m": ("DPM++ 2M", "Automatic"),
    "dpmpp_2m": ("DPM++ 2M", "Automatic"),
    "k_dpmpp_2m_ka": ("DPM++ 2M", "Karras"),
    "k_dpmpp_sde": ("DPM++ SDE", "Automatic"),
    "sample_dpmpp_sde": ("DPM++ SDE", "Automatic"),
    "dpmpp_sde": ("DPM++ SDE", "Automatic"),
    "k_dpmpp_sde_ka": ("DPM++ SDE", "Karras"),
    "k_dpmpp_2m_sde": ("DPM++ 2M SDE", "Automatic"),
    "sample_dpmpp_2m_sde": ("DPM++ 2M SDE", "Automatic"),
    "dpmpp_2m_sde": ("DPM++ 2M SDE", "Automatic"),
    "k_dpmpp_2m_sde_ka": ("DPM++ 2M SDE", "Karras"),
    "k_dpmpp_2s_a": ("DPM++ 2S a", "Automatic"),
    "sample_dpmpp_2s_ancestral": ("DPM++ 2S a", "Automatic"),
    "dpmpp_2s_ancestral": ("DPM++ 2S a", "Automatic"),
    "k_dpmpp_2s_a_ka": ("DPM++ 2S a", "Karras"),
    "ddim": ("DDIM", "Automatic"),
    "plms": ("PLMS", "Automatic"),
    "pndm": ("PLMS", "Automatic"),
    "unipc": ("UniPC", "Automatic"),
    "uni_pc": ("UniPC", "Automatic"),
    "uni_pc_bh2": ("UniPC", "Automatic"),
    "lcm": ("LCM", "Automatic"),
    "k_lcm": ("LCM", "Automatic"),
    "sample_lcm": ("LCM", "Automatic"),
}

# Combined legacy names and sloppy spellings users type.
LEGACY_NAMES = {
    "DPM++ 2M Karras": ("DPM++ 2M", "Karras"),
    "LMS Karras": ("LMS", "Karras"),
    "DPM2 Karras": ("DPM2", "Karras"),
    "DPM2 a Karras": ("DPM2 a", "Karras"),
    "DPM++ 2S a Karras": ("DPM++ 2S a", "Karras"),
    "DPM++ SDE Karras": ("DPM++ SDE", "Karras"),
    "DPM++ 2M SDE Karras": ("DPM++ 2M SDE", "Karras"),
    "DPM++ 2M SDE Exponential": ("DPM++ 2M SDE", "Exponential"),
    "Euler SGM Uniform": ("Euler", "SGM Uniform"),
    "Euler a SGM Uniform": ("Euler a", "SGM Uniform"),
    "DDIM Simple": ("DDIM", "SGM Uniform"),
    "UniPC Beta": ("UniPC", "Beta"),
    "Heun Automatic": ("Heun", "Automatic"),
    "  dpm++   2m   KARRAS ": ("DPM++ 2M", "Karras"),
    "dpm++2m karras": ("DPM++ 2M", "Karras"),
    "EULER A": ("Euler a", "Automatic"),
    "euler\ta": ("Euler a", "Automatic"),
    "k_dpmpp_2m Karras": ("DPM++ 2M", "Karras"),
    "k_dpmpp_2m_ka Karras": ("DPM++ 2M", "Karras"),
}

SIGMA_FLAGS = {
    "Karras": "use_karras_sigmas",
    "Exponential": "use_exponential_sigmas",
    "Beta": "use_beta_sigmas",
}

# Third-party noise, not ours: diffusers' numpy-2 deprecations, and torchsde's float32
# round-off complaint on every DPM++ SDE step ("Should have ta>=t0").
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Should have ta>=t0:UserWarning"),
]


@pytest.fixture
def diffusers_warnings() -> Iterator[list[str]]:
    """Collects diffusers' log warnings (its logger does not propagate to the root logger)."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def schedule_fingerprint(scheduler: SchedulerMixin) -> tuple[float, ...]:
    values = [*scheduler.timesteps.tolist()]
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None:
        values += sigmas.tolist()
    return tuple(round(float(value), 4) for value in values)


def run_toy_sampling(scheduler: SchedulerMixin, seeds: Sequence[int], steps: int = 6) -> torch.Tensor:
    """A pipeline's denoising loop with an element-wise stand-in for the UNet.

    The stand-in works per element, so batch items cannot influence each other: any difference
    between a batch and its items run alone comes from the scheduler's own noise.
    """
    scheduler.set_timesteps(steps)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    latents = torch.cat([torch.randn((1, 4, 8, 8), generator=g) for g in generators])
    latents = latents * scheduler.init_noise_sigma
    step_kwargs = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for timestep in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, timestep)
        noise_prediction = 0.5 * torch.tanh(model_input)
        latents = scheduler.step(noise_prediction, timestep, latents, **step_kwargs).prev_sample
    return latents


def test_names_and_schedule_types_in_a1111_order():
    assert SAMPLER_NAMES == EXPECTED_NAMES
    assert SCHEDULE_TYPES == ("Automatic", "Karras", "Exponential", "Beta", "SGM Uniform")


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_canonical_name_builds_expected_scheduler(name):
    choice = resolve_sampler(name)
    assert choice == SamplerChoice(sampler=name, schedule="Automatic")
    class_name, expected_config = EXPECTED_AUTOMATIC[name]
    scheduler = make_scheduler(choice, SD15_SCHEDULER_CONFIG, seeds=[1], steps=20)
    assert type(scheduler).__name__ == class_name
    for key, value in expected_config.items():
        assert scheduler.config[key] == value, key
    # The model's noise schedule carries over from the base config.
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_end == 0.012
    scheduler.set_timesteps(6)
    assert len(scheduler.timesteps) >= 6


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_alias_resolves(alias):
    sampler, schedule = ALIASES[alias]
    assert resolve_sampler(alias) == SamplerChoice(sampler=sampler, schedule=schedule)
    assert resolve_sampler(f"  {alias.upper()} ") == SamplerChoice(sampler=sampler, schedule=schedule)


@pytest.mark.parametrize("name", sorted(LEGACY_NAMES))
def test_legacy_combined_name_resolves(name):
    sampler, schedule = LEGACY_NAMES[name]
    assert resolve_sampler(name) == SamplerChoice(sampler=sampler, schedule=schedule)


@pytest.mark.parametrize("sampler", EXPECTED_NAMES)
def test_every_schedule_type_builds_samples_and_changes_the_schedule(sampler, diffusers_warnings):
    fingerprints: dict[str, tuple[float, ...]] = {}
    for schedule in schedules_for(sampler):
        choice = resolve_sampler(sampler, schedule)
        effective = choice.effective_schedule
        scheduler = make_scheduler(choice, SD15_SCHEDULER_CONFIG, seeds=[5, 6], steps=7)
        for flag_schedule, flag in SIGMA_FLAGS.items():
            if flag in scheduler.config:
                assert scheduler.config[flag] == (flag_schedule == effective), (schedule, flag)
            else:
                assert effective != flag_schedule
        if effective == "SGM Uniform":
            assert scheduler.config.timestep_spacing == "trailing"
        elif "timestep_spacing" in scheduler.config:
            assert scheduler.config.timestep_spacing != "trailing", schedule

        scheduler.set_timesteps(6)
        fingerprint = schedule_fingerprint(scheduler)
        if effective in fingerprints:  # "Automatic" standing for e.g. Karras builds the same
            assert fingerprints[effective] == fingerprint, schedule
        fingerprints[effective] = fingerprint

        # An odd step count: DPM++ 2S a without lower_order_final would warn here.
        latents = run_toy_sampling(scheduler, seeds=[5, 6], steps=7)
        assert latents.shape == (2, 4, 8, 8)
        assert torch.isfinite(latents).all(), schedule
    # Each schedule type really produces its own timesteps / sigmas.
    assert len(set(fingerprints.values())) == len(fingerprints)
    assert diffusers_warnings == []


@pytest.mark.parametrize("sampler", EXPECTED_NAMES)
def test_supported_schedules_match_what_the_class_offers(sampler):
    scheduler_class = getattr(diffusers, EXPECTED_AUTOMATIC[sampler][0])
    init_keys = set(inspect.signature(scheduler_class.__init__).parameters)
    offered = set(schedules_for(sampler))
    for schedule, flag in SIGMA_FLAGS.items():
        assert (flag in init_keys) == (schedule in offered), flag
    if "SGM Uniform" in offered:
        assert "timestep_spacing" in init_keys


def test_each_call_returns_a_fresh_scheduler():
    choice = resolve_sampler("DPM++ 2M Karras")
    first = make_scheduler(choice, SD15_SCHEDULER_CONFIG)
    second = make_scheduler(choice, SD15_SCHEDULER_CONFIG)
    assert first is not second
    first.set_timesteps(6)
    assert second.num_inference_steps is None
    run_toy_sampling(first, seeds=[1])
    assert second.step_index is None


def test_choices_from_an_earlier_scheduler_do_not_leak(diffusers_warnings):
    leaky = dict(
        SD15_SCHEDULER_CONFIG,
        _class_name="DPMSolverMultistepScheduler",
        use_karras_sigmas=True,
        algorithm_type="sde-dpmsolver++",
        solver_order=3,
    )
    euler = make_scheduler(resolve_sampler("Euler"), leaky)
    assert euler.config.use_karras_sigmas is False
    dpm = make_scheduler(resolve_sampler("DPM++ 2M", "Exponential"), leaky)
    assert (dpm.config.algorithm_type, dpm.config.solver_order) == ("dpmsolver++", 2)
    assert (dpm.config.use_karras_sigmas, dpm.config.use_exponential_sigmas) == (False, True)
    assert diffusers_warnings == []


def test_timestep_spacing_follows_the_sampler_not_the_saved_config(diffusers_warnings):
    # A loaded config records PNDM's defaults, and a saved one spells them out
    # (timestep_spacing "leading"); neither may move Euler off its own "linspace".
    loaded = PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG).config
    saved = dict(SD15_SCHEDULER_CONFIG, timestep_spacing="leading")
    for base_config in (loaded, saved):
        assert base_config["timestep_spacing"] == "leading"
        assert make_scheduler(resolve_sampler("Euler"), base_config).config.timestep_spacing == "linspace"
        assert make_scheduler(resolve_sampler("UniPC"), base_config).config.timestep_spacing == "linspace"
        assert make_scheduler(resolve_sampler("DDIM"), base_config).config.timestep_spacing == "leading"
        ddim = make_scheduler(resolve_sampler("DDIM"), base_config)
        assert ddim.config.clip_sample is False  # a model value: DDIM's own default is True
    # A model that asks for trailing spacing (zero-terminal-SNR, turbo) keeps it.
    trailing = dict(SD15_SCHEDULER_CONFIG, timestep_spacing="trailing")
    assert make_scheduler(resolve_sampler("Euler"), trailing).config.timestep_spacing == "trailing"
    assert diffusers_warnings == []


def test_lcm_original_steps_cover_the_requested_steps():
    lcm_choice = resolve_sampler("LCM")
    assert make_scheduler(lcm_choice, SD15_SCHEDULER_CONFIG).config.original_inference_steps == 50
    assert make_scheduler(lcm_choice, SD15_SCHEDULER_CONFIG, steps=8).config.original_inference_steps == 50
    scheduler = make_scheduler(lcm_choice, SD15_SCHEDULER_CONFIG, steps=80)
    assert scheduler.config.original_inference_steps == 80
    scheduler.set_timesteps(80)
    with pytest.raises(ValueError):  # what would happen without the adjustment
        make_scheduler(lcm_choice, SD15_SCHEDULER_CONFIG, steps=20).set_timesteps(80)


def test_dpmpp_sde_noise_follows_the_seeds():
    choice = resolve_sampler("DPM++ SDE")
    scheduler = make_scheduler(choice, SD15_SCHEDULER_CONFIG, seeds=[7, 8])
    assert list(scheduler.config.noise_sampler_seed) == [7, 8]
    assert make_scheduler(choice, SD15_SCHEDULER_CONFIG).config.noise_sampler_seed is None

    batch = run_toy_sampling(make_scheduler(choice, SD15_SCHEDULER_CONFIG, seeds=[7, 8]), seeds=[7, 8])
    alone_7 = run_toy_sampling(make_scheduler(choice, SD15_SCHEDULER_CONFIG, seeds=[7]), seeds=[7])
    alone_8 = run_toy_sampling(make_scheduler(choice, SD15_SCHEDULER_CONFIG, seeds=[8]), seeds=[8])
    torch.testing.assert_close(batch[0:1], alone_7)
    torch.testing.assert_close(batch[1:2], alone_8)

    again = run_toy_sampling(make_scheduler(choice, SD15_SCHEDULER_CONFIG, seeds=[7, 8]), seeds=[7, 8])
    assert torch.equal(batch, again)
    # Same starting latents, other Brownian seed: the SDE noise really comes from the seeds.
    other_noise = run_toy_sampling(make_scheduler(choice, SD15_SCHEDULER_CONFIG, seeds=[9]), seeds=[7])
    assert not torch.allclose(other_noise, alone_7)


@pytest.mark.parametrize(
    ("name", "schedule", "needle"),
    [
        ("Euler a Karras", None, "Euler a has no Karras schedule"),
        ("Euler a", "Exponential", "Euler a has no Exponential schedule"),
        ("Euler a Beta", None, "Euler a has no Beta schedule"),
        ("DDIM Karras", None, "DDIM has no Karras schedule"),
        ("DDIM", "Beta", "DDIM has no Beta schedule"),
        ("PLMS", "exponential", "PLMS has no Exponential schedule"),
        ("LCM Karras", None, "LCM has no Karras schedule"),
        ("LCM", "SGM Uniform", "LCM has no SGM Uniform schedule"),
        ("DPM++ 2S a SGM Uniform", None, "DPM++ 2S a has no SGM Uniform schedule"),
    ],
)
def test_impossible_combinations_are_refused(name, schedule, needle):
    with pytest.raises(UnknownSampler) as caught:
        resolve_sampler(name, schedule)
    message = str(caught.value)
    assert needle in message
    sampler = needle.split(" has no ")[0]
    assert f"Schedule types for {sampler}: {', '.join(schedules_for(sampler))}." in message


@pytest.mark.parametrize("name", ["Euler b", "DPM++ 3M SDE", "DPM fast", "k_dpm_fast", "Restart", "karras", "", "   "])
def test_unknown_sampler_lists_valid_names(name):
    with pytest.raises(UnknownSampler) as caught:
        resolve_sampler(name)
    assert isinstance(caught.value, EaselError)
    assert ", ".join(SAMPLER_NAMES) in str(caught.value)


def test_unknown_sampler_suggests_a_close_name():
    with pytest.raises(UnknownSampler, match="Did you mean 'Euler a'"):
        resolve_sampler("Eulr a")


@pytest.mark.parametrize("schedule", ["Polyexponential", "Uniform", "Align Your Steps", "karas"])
def test_unknown_schedule_lists_valid_schedules(schedule):
    with pytest.raises(UnknownSampler) as caught:
        resolve_sampler("Euler", schedule)
    assert ", ".join(SCHEDULE_TYPES) in str(caught.value)


def test_unknown_schedule_suffix_is_an_unknown_sampler():
    with pytest.raises(UnknownSampler, match="Unknown sampler 'DPM\\+\\+ 2M Polyexponential'"):
        resolve_sampler("DPM++ 2M Polyexponential")


@pytest.mark.parametrize(
    ("name", "schedule", "expected"),
    [
        ("DPM++ 2M", "Exponential", "Exponential"),
        ("DPM++ 2M", "sgm_uniform", "SGM Uniform"),
        ("DPM++ 2M", " karras ", "Karras"),
        ("DPM++ 2M", "", "Automatic"),
        ("DPM++ 2M", None, "Automatic"),
        ("DPM++ 2M Karras", "Karras", "Karras"),
        ("DPM++ 2M Karras", "karras", "Karras"),
        # A1111 API clients send scheduler "Automatic" by default: the name's suffix wins.
        ("DPM++ 2M Karras", "Automatic", "Karras"),
        ("k_lms_ka", "automatic", "Karras"),
        ("Euler Automatic", "Beta", "Beta"),
        ("Euler", "Simple", "SGM Uniform"),
    ],
)
def test_schedule_argument_and_name_suffix_combine(name, schedule, expected):
    assert resolve_sampler(name, schedule).schedule == expected


@pytest.mark.parametrize(
    ("name", "schedule"),
    [("DPM++ 2M Karras", "Exponential"), ("k_dpmpp_2m_ka", "Beta"), ("LMS Karras", "SGM Uniform"), ("k_lms_ka Beta", None)],
)
def test_conflicting_schedules_are_an_error(name, schedule):
    with pytest.raises(UnknownSampler, match="Pick one"):
        resolve_sampler(name, schedule)


def test_resolve_schedule_spellings():
    assert resolve_schedule("sgm_uniform") == "SGM Uniform"
    assert resolve_schedule("SGM  uniform") == "SGM Uniform"
    assert resolve_schedule("Simple") == "SGM Uniform"
    assert resolve_schedule("EXPONENTIAL") == "Exponential"
    for schedule in SCHEDULE_TYPES:
        assert resolve_schedule(schedule) == schedule


def test_sampler_choice_keeps_the_users_schedule_and_exposes_the_effective_one():
    automatic = resolve_sampler("DPM++ 2M")
    assert (automatic.schedule, automatic.effective_schedule) == ("Automatic", "Karras")
    assert resolve_sampler("DPM++ 2M SDE").effective_schedule == "Exponential"
    assert resolve_sampler("DPM2 a").effective_schedule == "Karras"
    assert resolve_sampler("DPM++ SDE").effective_schedule == "Karras"
    assert resolve_sampler("Euler a").effective_schedule == "Automatic"
    assert resolve_sampler("DPM++ 2M", "Beta").effective_schedule == "Beta"
    with pytest.raises(dataclasses.FrozenInstanceError):
        automatic.schedule = "Karras"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [("euler a", "Automatic"), ("Euler a", "Karras"), ("Euler", "karras"), ("Nope", "Automatic")],
)
def test_sampler_choice_rejects_invalid_values(sampler, schedule):
    with pytest.raises(UnknownSampler):
        SamplerChoice(sampler=sampler, schedule=schedule)


def test_describe_samplers():
    lines = describe_samplers()
    assert len(lines) == len(SAMPLER_NAMES)
    for name, line in zip(SAMPLER_NAMES, lines, strict=True):
        assert line.startswith(f"{name}: Automatic")
    assert "DPM++ 2M: Automatic (= Karras), Karras, Exponential, Beta, SGM Uniform" in lines
    assert "Euler a: Automatic, SGM Uniform" in lines
    assert "LCM: Automatic" in lines


def test_schedules_for_accepts_any_spelling():
    assert schedules_for("k_euler_a") == ("Automatic", "SGM Uniform")
    assert schedules_for("dpm++ 2s a") == ("Automatic", "Karras", "Exponential", "Beta")
    with pytest.raises(UnknownSampler):
        schedules_for("nope")
