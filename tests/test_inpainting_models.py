"""Dedicated inpainting checkpoints (9-channel UNet: latents + mask + masked image), SD 1.x and SDXL.

Detected from their weights (single files) or configs (diffusers folders), loaded as the family's
inpaint pipeline, and usable in every mode as in A1111: inpaint with the member's mask; txt2img and
img2img with a mask that covers everything (A1111's txt2img_image_conditioning and
img2img_image_conditioning), img2img's masked image weighted by "Inpainting conditioning mask strength".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from generation import architectures
from generation.architectures import (
    ARCHITECTURES,
    config_dir,
    detect_architecture,
    detect_architecture_from_shapes,
    family,
    inpainting_variant,
    pipeline_class,
)
from generation.checkpoints import checkpoint_from_path, folder_architecture
from generation.engine import Engine
from generation.errors import ModelLoadError
from generation.pipelines import DeviceSpec, LoadedCheckpoint, full_mask_pipeline_class, load_checkpoint
from generation.registry import TEXT_ENCODER_WIDTH, ModelRegistry
from generation.testing import build_tiny_pipeline, ldm_state_dict, write_test_model

from conftest import make_config, tiny_request, write_embeddings

ROOT = Path(__file__).resolve().parents[1]
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
CPU = DeviceSpec(device="cpu", dtype=torch.float32)

# The smallest headers that look like real files (as in test_architectures.py), with a 9-channel UNet input.
SD1_INPAINT = {
    CONV_IN: (320, 9, 3, 3),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
}
SDXL_INPAINT = {
    CONV_IN: (320, 9, 3, 3),
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
    "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
}
SD2_INPAINT = {
    CONV_IN: (320, 9, 3, 3),
    "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
    "cond_stage_model.model.token_embedding.weight": (49408, 1024),
    "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
}
# The published models' UNets: their base's parameters plus 5 more input channels of the first conv (320 x 5 x 3 x 3).
OFFICIAL_UNET_PARAMETERS = {"sd1-inpaint": 859_520_964 + 14_400, "sdxl-inpaint": 2_567_463_684 + 14_400}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def _empty_models(architecture: str) -> dict[str, torch.nn.Module]:
    from accelerate import init_empty_weights

    def make(name, model_class):
        import transformers

        if issubclass(model_class, transformers.PreTrainedModel):
            return model_class(model_class.config_class.from_pretrained(config_dir(architecture), subfolder=name))
        return model_class.from_config(model_class.load_config(config_dir(architecture), subfolder=name))

    with init_empty_weights():
        components = architectures.build_components(architecture, make)
    return {name: value for name, value in components.items() if isinstance(value, torch.nn.Module)}


# --- architectures and detection -------------------------------------------------------------------


def test_inpainting_architectures_keep_their_family():
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    expected = {"sd1-inpaint": ("sd1", "sd1", 512), "sdxl-inpaint": ("sdxl", "sdxl", 1024),
                "tiny-sd1-inpaint": ("sd1", "tiny-sd1", None), "tiny-sdxl-inpaint": ("sdxl", "tiny-sdxl", None)}
    for name, (base_family, base, native) in expected.items():
        spec, base_spec = ARCHITECTURES[name], ARCHITECTURES[base]
        assert spec.inpainting and spec.unet_in_channels == 9 and not base_spec.inpainting
        assert family(name) == base_family and spec.native_size == native
        assert inpainting_variant(base) == name
        # Embeddings and LoRAs are judged by width: the same as the base model's.
        assert (spec.text_widths, spec.cross_attention_width) == (base_spec.text_widths, base_spec.cross_attention_width)
        assert TEXT_ENCODER_WIDTH[name] == TEXT_ENCODER_WIDTH[base]
    assert pipeline_class("sd1-inpaint") is pipeline_class("tiny-sd1-inpaint") is StableDiffusionInpaintPipeline
    assert pipeline_class("sdxl-inpaint") is pipeline_class("tiny-sdxl-inpaint") is StableDiffusionXLInpaintPipeline
    assert inpainting_variant("sd2") is None and inpainting_variant("sd1-inpaint") is None


def test_width_labels_still_name_the_base_models():
    from generation.engine import _family_label
    from generation.loras import width_label

    assert _family_label(768) == "Stable Diffusion 1.x" and _family_label(2048) == "Stable Diffusion XL"
    assert width_label(32) == "tiny SD 1.x" and width_label(768) == "SD 1.x"


@pytest.mark.parametrize("name", ["sd1-inpaint", "sdxl-inpaint", "tiny-sd1-inpaint", "tiny-sdxl-inpaint"])
def test_shipped_configs_are_their_base_with_a_9_channel_unet(name):
    folder, base = config_dir(name), config_dir(name.removesuffix("-inpaint"))
    assert {p.suffix for p in folder.rglob("*") if p.is_file()} == {".json"}
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == sorted(p.relative_to(base) for p in base.rglob("*"))
    for path in folder.rglob("*.json"):
        mine, theirs = json.loads(path.read_text()), json.loads((base / path.relative_to(folder)).read_text())
        if path.name == "model_index.json":
            assert mine.pop("_class_name") == pipeline_class(name).__name__
            theirs.pop("_class_name")
            if "xl" in name:
                assert mine.pop("requires_aesthetics_score") is False  # as diffusers' SDXL inpainting 0.1
        elif path.parent.name == "unet":
            assert (mine.pop("in_channels"), theirs.pop("in_channels")) == (9, 4)
        assert mine == theirs, path


@pytest.mark.parametrize(("name", "diffusers_type"), [("sd1-inpaint", "inpainting"), ("sdxl-inpaint", "xl_inpaint")])
def test_full_size_inpainting_models_match_the_published_ones(name, diffusers_type):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, infer_diffusers_model_type

    models = _empty_models(name)
    assert sum(p.numel() for p in models["unet"].parameters()) == OFFICIAL_UNET_PARAMETERS[name]
    ldm = ldm_state_dict(unet=models["unet"], vae=models["vae"], text_encoder=models["text_encoder"],
                         text_encoder_2=models.get("text_encoder_2"))
    assert ldm[CONV_IN].shape == (320, 9, 3, 3)
    assert infer_diffusers_model_type(ldm) == diffusers_type  # diffusers' own detection agrees
    assert detect_architecture_from_shapes({k: tuple(v.shape) for k, v in ldm.items()}) == name
    converted = convert_ldm_unet_checkpoint(ldm, models["unet"].config)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in models["unet"].state_dict().items()}


@pytest.mark.parametrize(("shapes", "expected"), [(SD1_INPAINT, "sd1-inpaint"), (SDXL_INPAINT, "sdxl-inpaint")])
def test_9_channel_headers_are_detected_as_inpainting(tmp_path, shapes, expected):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    assert infer_diffusers_model_type({k: torch.empty(s, device="meta") for k, s in shapes.items()}) in (
        "inpainting", "xl_inpaint")
    path = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(shape, dtype=torch.float16) for key, shape in shapes.items()}, str(path))
    assert detect_architecture(path) == expected
    # The same file with 4 channels is the base model.
    assert detect_architecture_from_shapes({**shapes, CONV_IN: (320, 4, 3, 3)}) == expected.removesuffix("-inpaint")


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (SD2_INPAINT, r"SD 2\.x inpainting checkpoint; only SD 1\.x and SDXL inpainting checkpoints are supported"),
        ({**SD1_INPAINT, CONV_IN: (320, 8, 3, 3)}, r"instruct-pix2pix checkpoint"),
        ({**SD1_INPAINT, CONV_IN: (320, 7, 3, 3)}, r"7-channel checkpoint"),
        ({**SD1_INPAINT, "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (1, 1024)},
         r"cross-attention of width 1024 \(Stable Diffusion 1\.x inpainting has 768\)"),
    ],
    ids=["sd2", "pix2pix", "7-channel", "cross"],
)
def test_other_unets_are_refused_clearly(shapes, message):
    with pytest.raises(ModelLoadError, match=message):
        detect_architecture_from_shapes(shapes)


# --- the tiny 9-channel models ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def inpaint_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inpaint-files")
    return {arch: write_test_model(root / arch, architecture=arch) for arch in ("tiny-sd1-inpaint", "tiny-sdxl-inpaint")}


@pytest.mark.parametrize("architecture", ["tiny-sd1-inpaint", "tiny-sdxl-inpaint"])
def test_tiny_inpainting_model_files(inpaint_files, architecture):
    files = inpaint_files[architecture]
    # A1111/original layout: the 9-channel first convolution under its LDM name.
    tensors = load_file(files.single_file)
    assert tensors[CONV_IN].shape[1] == 9
    assert detect_architecture(files.single_file) == architecture
    assert folder_architecture(files.folder) == architecture
    index = json.loads((files.folder / "model_index.json").read_text())
    assert index["_class_name"] == pipeline_class(architecture).__name__
    assert json.loads((files.folder / "unet" / "config.json").read_text())["in_channels"] == 9
    for path in (files.folder, files.single_file):
        info = checkpoint_from_path(path, allow_pickle=False)
        assert (info.architecture, info.inpainting) == (architecture, True)


def test_ckpt_inpainting_model_is_detected_through_the_pickle_rule(inpaint_files, tmp_path):
    from generation.errors import ModelNotFound

    ckpt = tmp_path / "inpaint.ckpt"
    torch.save({"state_dict": load_file(inpaint_files["tiny-sd1-inpaint"].single_file), "global_step": 1}, ckpt)
    with pytest.raises(ModelNotFound, match="pickle"):
        checkpoint_from_path(ckpt, allow_pickle=False)
    info = checkpoint_from_path(ckpt, allow_pickle=True)
    assert (info.format, info.architecture, info.inpainting) == ("ckpt", "tiny-sd1-inpaint", True)
    loaded = load_checkpoint(info, CPU)
    assert type(loaded.base).__name__ == "StableDiffusionInpaintPipeline" and loaded.base.unet.config.in_channels == 9


@pytest.mark.parametrize("architecture", ["tiny-sd1-inpaint", "tiny-sdxl-inpaint"])
def test_loads_as_the_inpaint_pipeline_and_every_mode_shares_its_modules(inpaint_files, architecture):
    files = inpaint_files[architecture]
    loaded = {}
    for path in (files.folder, files.single_file):
        entry = load_checkpoint(checkpoint_from_path(path, allow_pickle=False), CPU)
        assert type(entry.base) is pipeline_class(architecture) and entry.inpainting
        assert entry.pipeline_for("inpaint") is entry.base
        full = entry.pipeline_for("txt2img")
        assert full is entry.pipeline_for("img2img") and isinstance(full, pipeline_class(architecture))
        assert type(full) is full_mask_pipeline_class(pipeline_class(architecture))
        assert full.unet is entry.base.unet and full.vae is entry.base.vae and full.text_encoder is entry.base.text_encoder
        loaded[path.suffix or "folder"] = entry
    # The single file holds the very weights of the folder.
    folder, single = loaded["folder"].base, loaded[".safetensors"].base
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if hasattr(folder, name):
            a, b = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def _inputs(pipe, call):
    """Run `call()`; return what the UNet got at each step and what the VAE encoder was given."""
    unet, vae = [], []

    def keep(into):
        return lambda module, args, kwargs: into.append((args[0] if args else kwargs["sample"]).detach().clone())

    handles = [pipe.unet.register_forward_pre_hook(keep(unet), with_kwargs=True),
               pipe.vae.encoder.register_forward_pre_hook(keep(vae), with_kwargs=True)]
    try:
        call()
    finally:
        for handle in handles:
            handle.remove()
    return unet, vae


def _full_mask_pipe(architecture: str = "tiny-sd1-inpaint"):
    pipe = build_tiny_pipeline(3, architecture=architecture)
    pipe.set_progress_bar_config(disable=True)
    return pipe, LoadedCheckpoint(info=None, base=pipe, architecture=architecture).pipeline_for("txt2img")


@pytest.mark.parametrize("architecture", ["tiny-sd1-inpaint", "tiny-sdxl-inpaint"])
def test_txt2img_conditioning_is_a1111s(architecture):
    """A1111's txt2img_image_conditioning: a mask of ones, the masked image zeros in [-1, 1] through the VAE."""
    pipe, full = _full_mask_pipe(architecture)
    common = dict(prompt="a cat", num_inference_steps=2, width=64, height=64, guidance_scale=1.0)
    unet, vae = _inputs(full, lambda: full(**common, generator=[torch.Generator().manual_seed(5)]))
    assert unet[0].shape == (1, 9, 8, 8)
    assert all(torch.equal(step[:, 4:5], torch.ones(1, 1, 8, 8)) for step in unet)
    assert len(vae) == 1 and vae[0].shape == (1, 3, 64, 64) and not vae[0].any()  # only the masked image
    with torch.no_grad():
        zeros = pipe.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode() * pipe.vae.config.scaling_factor
    assert all(torch.equal(step[:, 5:], zeros) for step in unet)
    # Exactly the inpaint pipeline with a white mask over any image and those masked latents, at strength 1.
    red = Image.new("RGB", (64, 64), (220, 20, 20))
    same, _ = _inputs(pipe, lambda: pipe(**common, image=red, mask_image=Image.new("L", (64, 64), 255), strength=1.0,
                                         masked_image_latents=zeros, generator=[torch.Generator().manual_seed(5)]))
    assert all(torch.equal(a, b) for a, b in zip(unet, same, strict=True))
    with pytest.raises(ValueError, match="strength 1"):
        full(**common, strength=0.5)


def test_img2img_conditioning_mask_weight_is_a1111s():
    """img2img_image_conditioning: a full mask; the masked image lerp(image, 0, weight) = image * (1 - weight)."""
    pipe, full = _full_mask_pipe()
    red, blue = Image.new("RGB", (64, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))

    def run(image, **options):
        unet, vae = _inputs(full, lambda: full(prompt="a cat", image=[image], strength=0.5, num_inference_steps=4,
                                               guidance_scale=1.0, generator=[torch.Generator().manual_seed(5)],
                                               **options))
        assert unet and all(torch.equal(step[:, 4:5], torch.ones(1, 1, 8, 8)) for step in unet)
        assert len(vae) == 2  # the masked image, then the init image (strength < 1)
        return unet[0][:, 5:], vae

    hidden, vae = run(red)  # weight 1, A1111's default: nothing of the image shows
    assert torch.equal(vae[1], full.image_processor.preprocess(red, height=64, width=64)) and not vae[0].any()
    assert torch.equal(hidden, run(blue)[0]) and torch.equal(hidden, run(red, inpainting_mask_weight=1.0)[0])
    for weight in (0.0, 0.25):
        latents, vae = run(red, inpainting_mask_weight=weight)
        torch.testing.assert_close(vae[0], vae[1] * (1 - weight))
        assert not torch.equal(latents, hidden)
    assert not torch.equal(run(red, inpainting_mask_weight=0.0)[0], run(blue, inpainting_mask_weight=0.0)[0])
    with pytest.raises(ValueError, match="inpainting_mask_weight"):
        full(prompt="a cat", image=[red], inpainting_mask_weight=1.5)
    with pytest.raises(TypeError, match="own mask"):
        full(prompt="a cat", image=[red], mask_image=red)


# --- through the engine -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inpaint_engine(tmp_path_factory) -> Engine:
    root = tmp_path_factory.mktemp("inpaint-models")
    write_test_model(root / "checkpoints" / "tiny")
    write_test_model(root / "checkpoints" / "inpaint", seed=1, architecture="tiny-sd1-inpaint")
    write_test_model(root / "checkpoints" / "xl-inpaint", seed=2, architecture="tiny-sdxl-inpaint")
    write_embeddings(root / "embeddings")
    config = make_config(root, tmp_path_factory.mktemp("inpaint-data"))
    registry = ModelRegistry.from_config(config)
    registry.refresh()
    return Engine(config=config, registry=registry)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("inpaint-images")
    init = Image.new("RGB", (64, 64), (30, 160, 40))
    init.paste((200, 40, 40), (0, 0, 64, 20))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half only
    paths = {"init": folder / "init.png", "mask": folder / "mask.png", "white": folder / "white.png",
             "other": folder / "other.png"}
    init.save(paths["init"])
    mask.save(paths["mask"])
    Image.new("L", (64, 64), 255).save(paths["white"])
    Image.new("RGB", (64, 64), (10, 10, 200)).save(paths["other"])
    return {name: str(path) for name, path in paths.items()}


def test_registry_lists_the_inpainting_checkpoints(inpaint_engine):
    found = {c.name: (c.format, c.architecture, c.inpainting) for c in inpaint_engine.registry.checkpoints}
    assert found == {
        "tiny": ("diffusers", "tiny-sd1", False), "tiny.safetensors": ("safetensors", "tiny-sd1", False),
        "inpaint": ("diffusers", "tiny-sd1-inpaint", True),
        "inpaint.safetensors": ("safetensors", "tiny-sd1-inpaint", True),
        "xl-inpaint": ("diffusers", "tiny-sdxl-inpaint", True),
        "xl-inpaint.safetensors": ("safetensors", "tiny-sdxl-inpaint", True),
    }


def _inpaint(checkpoint: str, images: dict[str, str], **changes):
    fields = dict(checkpoint=checkpoint, mode="inpaint", init_image=images["init"], mask=images["mask"],
                  strength=1.0, seed=3, steps=4)
    return tiny_request(**{**fields, **changes})


@pytest.mark.parametrize("name", ["inpaint", "xl-inpaint"])
def test_inpaints_with_a_mask_and_the_single_file_matches_its_folder(inpaint_engine, images, name):
    from generation.errors import InvalidRequest

    # Embeddings are judged by the family's width: the SD 1.x one (32) fits the SD 1.x inpainting model only.
    prompt = "a cat a1111st" if name == "inpaint" else "a cat"
    if name == "xl-inpaint":
        with pytest.raises(InvalidRequest, match=r"a1111st has width 32; xl-inpaint needs 96"):
            inpaint_engine.generate(_inpaint(name, images, prompt="a cat a1111st"))
    events = []
    folder = inpaint_engine.generate(_inpaint(name, images, prompt=prompt), on_progress=events.append)[0]
    single = inpaint_engine.generate(_inpaint(f"{name}.safetensors", images, prompt=prompt))[0]
    assert folder.image.size == (64, 64) and pixels(folder.image).std() > 1
    assert max_diff(folder.image, single.image) == 0
    assert [e.step for e in events] == [1, 2, 3, 4]
    # The mask is read: another mask, another image; the run is reproducible.
    again = inpaint_engine.generate(_inpaint(name, images, prompt=prompt))[0]
    other_mask = inpaint_engine.generate(_inpaint(name, images, prompt=prompt, mask=images["white"]))[0]
    assert max_diff(folder.image, again.image) == 0 and max_diff(folder.image, other_mask.image) > 0
    loaded = inpaint_engine.cache.get(inpaint_engine.registry.resolve(name))
    assert loaded.pipeline_for("inpaint") is loaded.base and loaded.base.unet.config.in_channels == 9


def test_a_regular_checkpoint_still_inpaints(inpaint_engine, images):
    painted = inpaint_engine.generate(_inpaint("tiny", images))[0]
    loaded = inpaint_engine.cache.get(inpaint_engine.registry.resolve("tiny"))
    assert not loaded.inpainting and loaded.base.unet.config.in_channels == 4
    assert type(loaded.pipeline_for("inpaint")).__name__ == "StableDiffusionInpaintPipeline"
    assert painted.image.size == (64, 64)
    assert "Conditional mask weight" not in painted.infotext


def test_every_run_on_an_inpainting_checkpoint_notes_the_mask_weight_as_a1111(inpaint_engine, images):
    for request in (_inpaint("inpaint", images), tiny_request(checkpoint="inpaint", seed=1, steps=2)):
        assert "Conditional mask weight: 1.0, " in inpaint_engine.generate(request)[0].infotext


@pytest.mark.parametrize("name", ["inpaint", "xl-inpaint"])
def test_txt2img_on_an_inpainting_checkpoint_is_a1111s_full_mask(inpaint_engine, name):
    """A1111 generates with a mask over everything and a grey masked image; so does easel."""
    loaded = inpaint_engine.cache.get(inpaint_engine.registry.resolve(name))
    events = []
    unet, _ = _inputs(loaded.base, lambda: events.append(inpaint_engine.generate(
        tiny_request(checkpoint=name, seed=11, steps=4), on_progress=events.append)[0]))
    plain = events.pop()
    assert plain.image.size == (64, 64) and pixels(plain.image).std() > 1 and [e.step for e in events] == [1, 2, 3, 4]
    assert "Denoising strength" not in plain.infotext
    assert unet[0].shape[1] == 9 and all(bool((step[:, 4] == 1).all()) for step in unet)
    again = inpaint_engine.generate(tiny_request(checkpoint=name, seed=11, steps=4))[0]
    single = inpaint_engine.generate(tiny_request(checkpoint=f"{name}.safetensors", seed=11, steps=4))[0]
    assert max_diff(plain.image, again.image) == 0 and max_diff(plain.image, single.image) == 0
    # Batched images match the same seeds alone.
    batch = inpaint_engine.generate(tiny_request(checkpoint=name, seed=11, steps=4, count=2, sampler="Euler a"))
    alone = inpaint_engine.generate(tiny_request(checkpoint=name, seed=12, steps=4, sampler="Euler a"))[0]
    assert max_diff(batch[1].image, alone.image) <= 1


def test_img2img_on_an_inpainting_checkpoint(inpaint_engine, images):
    def img2img(**changes):
        fields = dict(checkpoint="inpaint", mode="img2img", init_image=images["init"], strength=0.5, seed=3, steps=6)
        return inpaint_engine.generate(tiny_request(**{**fields, **changes}))[0]

    low = img2img()
    assert low.image.size == (64, 64) and "Denoising strength: 0.5" in low.infotext
    assert max_diff(low.image, img2img().image) == 0
    assert max_diff(low.image, img2img(init_image=images["other"]).image) > 0  # the init latents count
    assert max_diff(low.image, img2img(strength=0.9).image) > 0
    # At strength 1 nothing of the image is left (mask weight 1 hides it from the UNet too): txt2img's image.
    assert max_diff(img2img(strength=1.0, seed=11, steps=4).image,
                    inpaint_engine.generate(tiny_request(checkpoint="inpaint", seed=11, steps=4))[0].image) == 0


# --- easel make-test-model --inpaint, easel models ----------------------------------------------------


def _easel(*args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_make_test_model_inpaint_and_models_listing(tmp_path):
    checkpoints = tmp_path / "models" / "checkpoints"
    for args, name, architecture in ((["--inpaint"], "paint", "tiny-sd1-inpaint"),
                                     (["--sdxl", "--inpaint"], "xlpaint", "tiny-sdxl-inpaint")):
        result = _easel("make-test-model", *args, str(checkpoints / name))
        assert result.returncode == 0, result.stderr
        assert architecture in result.stdout
        folder, single = checkpoints / name, checkpoints / f"{name}.safetensors"
        assert json.loads((folder / "model_index.json").read_text())["_class_name"] == pipeline_class(architecture).__name__
        assert json.loads((folder / "unet" / "config.json").read_text())["in_channels"] == 9
        assert detect_architecture(single) == architecture  # the single file is in the A1111 layout
        # Byte for byte what the writer makes for that architecture.
        again = write_test_model(tmp_path / "again" / name, architecture=architecture)
        assert again.single_file.read_bytes() == single.read_bytes()
    env = {"EASEL_MODELS_DIR": str(tmp_path / "models"), "EASEL_DATA_DIR": str(tmp_path / "data"),
           "EASEL_DEVICE": "cpu", "EASEL_CONFIG": str(tmp_path / "none.toml")}
    models = _easel("models", env_extra=env)
    assert models.returncode == 0, models.stderr
    lines = {line.split()[0]: line for line in models.stdout.splitlines() if line.startswith("  ")}
    assert lines["paint"].endswith("tiny-sd1-inpaint") and lines["paint.safetensors"].endswith("tiny-sd1-inpaint")
    assert lines["xlpaint"].endswith("tiny-sdxl-inpaint")
    # --inpaint without --sdxl is SD 1.x; plain make-test-model stays the plain model.
    plain = _easel("make-test-model", str(tmp_path / "plain"))
    assert plain.returncode == 0 and detect_architecture(tmp_path / "plain.safetensors") == "tiny-sd1"



def test_the_conditioning_mask_strength_is_the_operators_setting(inpaint_engine, images, tmp_path):
    """A1111's "Inpainting conditioning mask strength": lerp(image, image * (1 - mask), w) shown to
    the model, in img2img and inpaint alike, and noted in the infotext."""
    root = inpaint_engine.registry.checkpoints_dir.parent
    half = Engine(config=make_config(root, tmp_path / "data", models={"inpainting_mask_weight": 0.5}),
                  registry=inpaint_engine.registry)
    for request in (_inpaint("inpaint", images),
                    tiny_request(checkpoint="inpaint", mode="img2img", init_image=images["init"], strength=0.5,
                                 seed=3, steps=4)):
        full, halfway = inpaint_engine.generate(request)[0], half.generate(request)[0]
        assert "Conditional mask weight: 0.5, " in halfway.infotext
        assert max_diff(full.image, halfway.image) > 0
