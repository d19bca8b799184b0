"""Offline fixtures: tiny random-weight SD-1.x / SDXL pipelines (plain and inpainting) and their
single-file (A1111/LDM) twins.

No real weights can be downloaded where tests run, so tests and offline demos use models with the real
layouts (same blocks, real tokenizer, real scheduler, VAE scale factor 8) but tiny widths, built
deterministically from a seed. `write_test_model` saves one as a diffusers folder and as one
`.safetensors` file in the LDM key layout that A1111 and Civitai checkpoints use, so the single-file
loader can be checked against the very same weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .architectures import build_components, config_dir, pipeline_class, sd_clip_tokenizer

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

__all__ = [
    "TestModelPaths",
    "build_tiny_pipeline",
    "ldm_state_dict",
    "sd_clip_tokenizer",
    "write_test_model",
]

TINY_ARCHITECTURES = ("tiny-sd1", "tiny-sdxl", "tiny-sd1-inpaint", "tiny-sdxl-inpaint")


@dataclass(frozen=True)
class TestModelPaths:
    __test__ = False  # not a pytest test class despite its name

    folder: Path
    single_file: Path


def build_tiny_pipeline(seed: int = 0, *, architecture: str = "tiny-sd1") -> DiffusionPipeline:
    """A tiny pipeline with random weights; the same seed gives the same weights, always.

    "tiny-sd1" is a StableDiffusionPipeline, "tiny-sdxl" a StableDiffusionXLPipeline (two text
    encoders, size conditioning); "tiny-sd1-inpaint" and "tiny-sdxl-inpaint" are their dedicated
    inpainting twins (Inpaint pipelines, a 9-channel UNet input: latents + mask + masked image).
    Configs come from `generation/configs/<architecture>/`, the folder that also lets the
    single-file form load offline. The global RNG is left untouched.
    """
    import torch
    import transformers

    if architecture not in TINY_ARCHITECTURES:
        raise ValueError(f"architecture must be one of {TINY_ARCHITECTURES}, not {architecture!r}")
    folder = config_dir(architecture)

    def random_model(name: str, model_class: type) -> torch.nn.Module:
        if issubclass(model_class, transformers.PreTrainedModel):
            model = model_class(model_class.config_class.from_pretrained(folder, subfolder=name))
        else:
            model = model_class.from_config(model_class.load_config(folder, subfolder=name))
        return model.eval()

    # Modules are created on the CPU, so only the CPU generator needs seeding (and restoring).
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        components = build_components(architecture, random_model)
    return pipeline_class(architecture)(**components)


# ---------------------------------------------------------------------------------------------------
# diffusers -> LDM key layout (the inverse of diffusers.loaders.single_file_utils' converters)

_UNET_FIXED = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
)
_VAE_ATTENTION = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


def _rename(rest: str, table: tuple[tuple[str, str], ...]) -> str:
    for diffusers_name, ldm_name in table:
        if rest.startswith(diffusers_name):
            return ldm_name + rest[len(diffusers_name):]
    raise ValueError(f"no LDM name for {rest!r}")


def _unet_ldm_key(key: str, *, layers_per_block: int, up_blocks_with_attention: set[int]) -> str:
    for diffusers_name, ldm_name in _UNET_FIXED.items():
        if key.startswith(diffusers_name):
            return ldm_name + key[len(diffusers_name):]
    # LDM numbers the UNet's layers flat: each down block takes layers_per_block resnet slots plus one
    # for its downsampler; each up block has one resnet more than a down block, its upsampler rides
    # along in the last slot. Inside a slot, .0 is the resnet and .1 the attention.
    slots = layers_per_block + 1
    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        prefix = f"input_blocks.{1 + block * slots + layer}"
        return f"{prefix}.0.{_rename(rest, _UNET_RESNET)}" if kind == "resnets" else f"{prefix}.1.{rest}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(match[1]) + 1) * slots}.0.op.{match[2]}"
    if match := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(match[1])}.{_rename(match[2], _UNET_RESNET)}"
    if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{match[1]}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        prefix = f"output_blocks.{block * slots + layer}"
        return f"{prefix}.0.{_rename(rest, _UNET_RESNET)}" if kind == "resnets" else f"{prefix}.1.{rest}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(match[1])
        position = 2 if block in up_blocks_with_attention else 1  # after the resnet (and attention)
        return f"output_blocks.{block * slots + layers_per_block}.{position}.conv.{match[2]}"
    raise ValueError(f"no LDM name for UNet weight {key!r}")


def _vae_ldm_key(key: str, *, up_block_count: int) -> str:
    for part in ("encoder", "decoder"):
        if not key.startswith(part + "."):
            continue
        rest = key[len(part) + 1:]
        if rest.startswith("conv_norm_out."):
            return f"{part}.norm_out.{rest[len('conv_norm_out.'):]}"
        if rest.startswith(("conv_in.", "conv_out.")):
            return key
        if match := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
            return f"{part}.mid.block_{int(match[1]) + 1}.{match[2].replace('conv_shortcut.', 'nin_shortcut.')}"
        if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
            return f"{part}.mid.attn_1.{_rename(match[1], _VAE_ATTENTION)}"
        if match := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            return f"{part}.down.{match[1]}.block.{match[2]}.{match[3].replace('conv_shortcut.', 'nin_shortcut.')}"
        if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", rest):
            return f"{part}.down.{match[1]}.downsample.conv.{match[2]}"
        # The decoder's up blocks are numbered from the lowest resolution in LDM, from the highest in diffusers.
        if match := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            level = up_block_count - 1 - int(match[1])
            return f"{part}.up.{level}.block.{match[2]}.{match[3].replace('conv_shortcut.', 'nin_shortcut.')}"
        if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", rest):
            return f"{part}.up.{up_block_count - 1 - int(match[1])}.upsample.conv.{match[2]}"
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    raise ValueError(f"no LDM name for VAE weight {key!r}")


def _ldm_schedule_buffers(scheduler_config: dict) -> dict[str, torch.Tensor]:
    """The noise-schedule buffers LDM's DDPM wrapper stores in every SD-1.x checkpoint."""
    import torch

    steps = scheduler_config["num_train_timesteps"]
    start, end = scheduler_config["beta_start"] ** 0.5, scheduler_config["beta_end"] ** 0.5
    betas = torch.linspace(start, end, steps, dtype=torch.float64) ** 2  # "scaled_linear"
    alphas = 1.0 - betas
    cumprod = torch.cumprod(alphas, dim=0)
    cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), cumprod[:-1]])
    posterior_variance = betas * (1.0 - cumprod_prev) / (1.0 - cumprod)
    buffers = {
        "betas": betas,
        "alphas_cumprod": cumprod,
        "alphas_cumprod_prev": cumprod_prev,
        "sqrt_alphas_cumprod": cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / cumprod - 1.0).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * cumprod_prev.sqrt() / (1.0 - cumprod),
        "posterior_mean_coef2": (1.0 - cumprod_prev) * alphas.sqrt() / (1.0 - cumprod),
    }
    return {name: value.to(torch.float32) for name, value in buffers.items()}


def _open_clip_state_dict(text_encoder: CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model under OpenCLIP's names (SDXL's second encoder, SD 2.x)."""
    import torch

    weights = {key.removeprefix("text_model."): value for key, value in text_encoder.state_dict().items()}
    result = {
        "token_embedding.weight": weights.pop("embeddings.token_embedding.weight"),
        "positional_embedding": weights.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": weights.pop("final_layer_norm.weight"),
        "ln_final.bias": weights.pop("final_layer_norm.bias"),
        "text_projection": weights.pop("text_projection.weight").T,  # OpenCLIP multiplies from the right
    }
    for layer in range(text_encoder.config.num_hidden_layers):
        old, new = f"encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            # OpenCLIP keeps query, key and value as one stacked projection.
            result[f"{new}attn.in_proj_{kind}"] = torch.cat(
                [weights.pop(f"{old}self_attn.{part}_proj.{kind}") for part in ("q", "k", "v")]
            )
            for old_name, new_name in (
                ("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
            ):
                result[f"{new}{new_name}.{kind}"] = weights.pop(f"{old}{old_name}.{kind}")
    if weights:
        raise ValueError(f"no OpenCLIP name for {sorted(weights)[:3]}")
    return result


def ldm_state_dict(
    *,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    text_encoder_2: CLIPTextModelWithProjection | None = None,
    scheduler_config: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Pipeline weights under the key names of an A1111/LDM single-file checkpoint.

    Layout as in the original files: `model.diffusion_model.*` and `first_stage_model.*` (attention
    projections as 1x1 convolutions); then for SD 1.x `cond_stage_model.transformer.text_model.*`
    and, given `scheduler_config`, LDM's noise-schedule buffers; for SDXL (`text_encoder_2` given)
    `conditioner.embedders.0.transformer.text_model.*` and `conditioner.embedders.1.model.*`.
    Tensors are fresh contiguous copies on the models' device (meta works, for checking the key
    layout of full-size models without their weights).
    """
    import torch

    config = unet.config
    up_with_attention = {i for i, kind in enumerate(config.up_block_types) if "CrossAttn" in kind}
    result: dict[str, torch.Tensor] = {}

    def put(key: str, tensor: torch.Tensor) -> None:
        if key in result:
            raise ValueError(f"two weights map to {key!r}")
        result[key] = tensor.detach().clone().contiguous()

    for key, tensor in unet.state_dict().items():
        ldm_key = _unet_ldm_key(
            key, layers_per_block=config.layers_per_block, up_blocks_with_attention=up_with_attention
        )
        put("model.diffusion_model." + ldm_key, tensor)
    up_block_count = len(vae.config.up_block_types)
    for key, tensor in vae.state_dict().items():
        ldm_key = _vae_ldm_key(key, up_block_count=up_block_count)
        if ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM's VAE attention uses 1x1 convolutions
        put("first_stage_model." + ldm_key, tensor)
    clip_prefix = "cond_stage_model.transformer." if text_encoder_2 is None else "conditioner.embedders.0.transformer."
    # CLIPTextModel lost its `text_model.` level in transformers 5.6; checkpoints keep it.
    for key, tensor in text_encoder.state_dict().items():
        put(f"{clip_prefix}text_model.{key.removeprefix('text_model.')}", tensor)
    positions = torch.arange(text_encoder.config.max_position_embeddings).unsqueeze(0)
    put(f"{clip_prefix}text_model.embeddings.position_ids", positions)
    if text_encoder_2 is not None:
        for key, tensor in _open_clip_state_dict(text_encoder_2).items():
            put("conditioner.embedders.1.model." + key, tensor)
    if scheduler_config is not None:
        for key, tensor in _ldm_schedule_buffers(dict(scheduler_config)).items():
            put(key, tensor)
    return result


def write_test_model(target: Path, *, seed: int = 0, architecture: str = "tiny-sd1") -> TestModelPaths:
    """Write a tiny model twice, byte for byte the same every time for a given seed.

    `target` becomes a diffusers folder (safetensors weights, tokenizers included) and
    `<target>.safetensors` beside it the same weights as an A1111/LDM single-file checkpoint.
    """
    from safetensors.torch import save_file

    target = Path(target)
    single_file = target.parent / (target.name + ".safetensors")
    pipe = build_tiny_pipeline(seed, architecture=architecture)
    pipe.save_pretrained(target, safe_serialization=True)
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    tensors = ldm_state_dict(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        text_encoder_2=pipe.text_encoder_2 if sdxl else None,
        # SD-1.x files carry LDM's noise schedule; SDXL files do not.
        scheduler_config=None if sdxl else pipe.scheduler.config,
    )
    save_file(tensors, single_file, metadata={"format": "pt"})
    return TestModelPaths(folder=target, single_file=single_file)
