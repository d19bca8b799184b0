"""Single-file checkpoints: architecture detection from headers, shipped configs, offline loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from generation import architectures
from generation.architectures import (
    ARCHITECTURES,
    config_dir,
    detect_architecture,
    detect_architecture_from_shapes,
    family,
    load_single_file,
    pipeline_class,
    read_safetensors_shapes,
)
from generation.errors import ModelLoadError, ModelNotFound
from generation.testing import ldm_state_dict, write_test_model

REPO = Path(__file__).resolve().parents[1]
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"

# The smallest headers that look like real files: key names as in the originals, widths where they count.
SD1 = {
    CONV_IN: (320, 4, 1, 1),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (1, 768),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (1, 768),
    "first_stage_model.encoder.conv_in.weight": (1, 3, 1, 1),
}
SD2 = {
    CONV_IN: (320, 4, 1, 1),
    "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (1, 1024),
    "cond_stage_model.model.token_embedding.weight": (1, 1024),
    "first_stage_model.encoder.conv_in.weight": (1, 3, 1, 1),
}
SDXL = {
    CONV_IN: (320, 4, 1, 1),
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (1, 2048),
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (1, 768),
    "conditioner.embedders.1.model.token_embedding.weight": (1, 1280),
    "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,),
    "first_stage_model.encoder.conv_in.weight": (1, 3, 1, 1),
}

# Parameter counts of the official models, so a wrong number in a shipped config shows up.
OFFICIAL_PARAMETERS = {
    "sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


def _write(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    save_file({key: torch.zeros(shape, dtype=torch.float16) for key, shape in shapes.items()}, str(path))
    return path


def _meta(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def _empty_models(architecture: str) -> dict[str, torch.nn.Module]:
    """Full-size models of a shipped config, without memory for their weights."""
    from accelerate import init_empty_weights

    def make(name, model_class):
        import transformers

        if issubclass(model_class, transformers.PreTrainedModel):
            return model_class(model_class.config_class.from_pretrained(config_dir(architecture), subfolder=name))
        return model_class.from_config(model_class.load_config(config_dir(architecture), subfolder=name))

    with init_empty_weights():
        components = architectures.build_components(architecture, make)
    return {name: value for name, value in components.items() if isinstance(value, torch.nn.Module)}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    return write_test_model(tmp_path_factory.mktemp("model") / "tiny")


# --- detection -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shapes", "expected", "diffusers_type"),
    [(SD1, "sd1", "v1"), (SD2, "sd2", "v2"), (SDXL, "sdxl", "xl_base")],
    ids=["sd1", "sd2", "sdxl"],
)
def test_detects_each_family_from_the_header(tmp_path, shapes, expected, diffusers_type):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    # The fixture itself must look like that family to diffusers too, or the test proves nothing.
    assert infer_diffusers_model_type(_meta(shapes)) == diffusers_type
    assert detect_architecture(_write(tmp_path / "model.safetensors", shapes)) == expected
    assert detect_architecture_from_shapes(shapes) == expected


def test_detects_the_tiny_model(tiny_files):
    assert detect_architecture(tiny_files.single_file) == "tiny-sd1"


def test_old_sd1_text_encoder_keys_are_accepted():
    shapes = dict(SD1)
    shapes["cond_stage_model.transformer.embeddings.token_embedding.weight"] = shapes.pop(
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    )
    assert detect_architecture_from_shapes(shapes) == "sd1"


def test_detection_reads_only_the_header(tmp_path):
    # A header promising gigabytes of tensors but no data at all: only a header reader can answer.
    header = {
        key: {"dtype": "F16", "shape": [10**6, *shape[1:]] if key != CONV_IN else list(shape), "data_offsets": [0, 0]}
        for key, shape in SD1.items()
    }
    raw = json.dumps(header).encode()
    path = tmp_path / "hollow.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)
    with pytest.raises(Exception):
        safe_open(str(path), framework="pt")  # a real load would refuse this file
    assert detect_architecture(path) == "sd1"
    assert read_safetensors_shapes(path)[CONV_IN] == (320, 4, 1, 1)


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"foo.weight": (2, 2), "bar": (3,)}, r"not a Stable Diffusion checkpoint .*2 tensors, e\.g\. bar, foo\.weight"),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, r"LoRA"),
        ({"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3)}, r"VAE"),
        ({"emb_params": (2, 768)}, r"textual inversion embedding"),
        ({**SD2, CONV_IN: (320, 9, 1, 1)}, r"SD 2\.x inpainting checkpoint"),
        ({CONV_IN: (320, 4, 1, 1), "conditioner.embedders.0.model.token_embedding.weight": (1, 1280)}, r"SDXL refiner"),
        ({**SD1, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (1, 512)},
         r"unknown checkpoint architecture: a CLIP text encoder of width 512"),
        ({**SD1, "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (1, 1024)},
         r"cross-attention of width 1024 \(Stable Diffusion 1\.x has 768\)"),
        ({**SD1, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (1, 32)},
         r"UNet with 320 base channels"),
        ({CONV_IN: (320, 4, 1, 1)}, r"no text encoder"),
    ],
    ids=["random", "lora", "vae", "embedding", "inpainting", "refiner", "width", "cross", "channels", "no-text"],
)
def test_unknown_files_get_a_clear_reason(tmp_path, shapes, message):
    path = _write(tmp_path / "thing.safetensors", shapes)
    with pytest.raises(ModelLoadError, match=message):
        detect_architecture(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 4, b"PK\x03\x04 this is a zip, not safetensors", (5).to_bytes(8, "little") + b"[1,2]",
     (10**12).to_bytes(8, "little") + b"{}"],
    ids=["empty", "short", "zip", "not-a-dict", "huge-length"],
)
def test_non_safetensors_files_are_rejected(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=r"broken\.safetensors is not a valid \.safetensors file"):
        detect_architecture(path)


def test_missing_file_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound):
        detect_architecture(tmp_path / "nope.safetensors")


# --- shipped configs -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_config_folder_matches_its_architecture(name):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    folder = config_dir(name)
    spec = ARCHITECTURES[name]
    assert {p.suffix for p in folder.rglob("*") if p.is_file()} == {".json"}, "configs only, never weights"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == pipeline_class(name).__name__
    assert index.get("safety_checker", [None])[0] is None
    unet = UNet2DConditionModel.load_config(folder, subfolder="unet")
    assert unet["cross_attention_dim"] == spec.cross_attention_width
    assert unet["block_out_channels"][0] == spec.unet_base_channels
    assert AutoencoderKL.load_config(folder, subfolder="vae")["latent_channels"] == 4
    encoders = [key for key in sorted(index) if key.startswith("text_encoder")]
    widths = tuple(CLIPTextConfig.from_pretrained(folder, subfolder=key).hidden_size for key in encoders)
    assert widths == spec.text_widths
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["timestep_spacing"] == "leading"
    assert scheduler["prediction_type"] == ("v_prediction" if name == "sd2" else "epsilon")


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMETERS))
def test_full_size_configs_have_the_official_parameter_counts(name):
    models = _empty_models(name)
    counts = {key: sum(p.numel() for p in model.parameters()) for key, model in models.items()}
    assert counts == OFFICIAL_PARAMETERS[name]


def test_pipeline_classes_and_families():
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    assert pipeline_class("sd1") is StableDiffusionPipeline
    assert pipeline_class("sd2") is StableDiffusionPipeline
    assert pipeline_class("sdxl") is StableDiffusionXLPipeline
    assert pipeline_class("tiny-sdxl") is StableDiffusionXLPipeline
    assert [family(name) for name in ("sd1", "sd2", "sd2-base", "sdxl", "tiny-sd1", "tiny-sdxl")] == [
        "sd1", "sd2", "sd2", "sdxl", "sd1", "sdxl",
    ]
    with pytest.raises(ModelLoadError, match=r"unknown model architecture 'sd3'"):
        config_dir("sd3")


@pytest.mark.parametrize(("name", "diffusers_type"), [("sd1", "v1"), ("sdxl", "xl_base")])
def test_ldm_writer_inverts_diffusers_converters_at_full_size(name, diffusers_type):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        infer_diffusers_model_type,
    )

    models = _empty_models(name)
    ldm = ldm_state_dict(
        unet=models["unet"], vae=models["vae"], text_encoder=models["text_encoder"],
        text_encoder_2=models.get("text_encoder_2"),
    )
    for key, convert in (("unet", convert_ldm_unet_checkpoint), ("vae", convert_ldm_vae_checkpoint)):
        expected = models[key].state_dict()
        converted = convert(ldm, models[key].config)
        assert converted.keys() == expected.keys(), key
        assert all(converted[k].shape == expected[k].shape for k in expected), key
    assert infer_diffusers_model_type(ldm) == diffusers_type
    assert detect_architecture_from_shapes({k: tuple(v.shape) for k, v in ldm.items()}) == name
    # Spot checks against key names of the original files.
    known = {
        "sd1": ["model.diffusion_model.output_blocks.2.1.conv.weight", "model.diffusion_model.output_blocks.8.2.conv.bias",
                "model.diffusion_model.input_blocks.9.0.op.weight", "model.diffusion_model.middle_block.1.proj_in.weight",
                "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
                "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.bias"],
        "sdxl": ["model.diffusion_model.label_emb.0.2.weight", "model.diffusion_model.output_blocks.2.2.conv.weight",
                 "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight",
                 "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight",
                 "conditioner.embedders.1.model.text_projection"],
    }[name]
    assert set(known) <= ldm.keys()


# --- loading ---------------------------------------------------------------------------------------


def test_state_dict_of_a_training_checkpoint_loads_like_the_file(tiny_files):
    from_file = load_single_file(tiny_files.single_file, dtype=torch.float32)
    nested = {"state_dict": load_file(str(tiny_files.single_file)), "global_step": torch.tensor(5)}
    from_dict = load_single_file(Path("tiny.ckpt"), dtype=torch.float32, state_dict=nested)
    a, b = from_file.unet.state_dict(), from_dict.unet.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert type(from_dict).__name__ == "StableDiffusionPipeline"


def test_old_sd1_text_encoder_layout_loads(tiny_files):
    new, old = "cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."
    weights = {key.replace(new, old): value for key, value in load_file(str(tiny_files.single_file)).items()}
    assert not any(key.startswith(new) for key in weights)
    pipe = load_single_file(tiny_files.single_file, dtype=torch.float32, state_dict=weights)
    expected = load_file(str(tiny_files.single_file))[new + "embeddings.token_embedding.weight"]
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, expected)


def test_ckpt_loads_with_the_restricted_unpickler(tmp_path, tiny_files):
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(tiny_files.single_file)), "epoch": 3}, path)
    pipe = load_single_file(path, dtype=torch.float32)
    assert pipe.text_encoder.get_input_embeddings().weight.shape == (49408, 32)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_ckpt_with_code_in_it_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Exploit(marker)}, path)
    with pytest.raises(ModelLoadError, match=r"evil\.ckpt"):
        load_single_file(path, dtype=torch.float32)
    assert not marker.exists()


def test_half_precision_load(tiny_files):
    pipe = load_single_file(tiny_files.single_file, dtype=torch.float16)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float16}


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("first_stage_model.", r"tiny\.safetensors: checkpoint has no weights for the vae"),
        ("model.diffusion_model.output_blocks.3", r"checkpoint lacks some weights of the unet"),
        ("cond_stage_model.transformer.text_model.encoder.layers.1.", r"lacks 16 weights of the text encoder"),
    ],
    ids=["vae", "unet", "text-encoder"],
)
def test_incomplete_checkpoint_names_the_missing_part(tiny_files, drop, message):
    weights = {k: v for k, v in load_file(str(tiny_files.single_file)).items() if not k.startswith(drop)}
    with pytest.raises(ModelLoadError, match=message):
        load_single_file(tiny_files.single_file, dtype=torch.float32, state_dict=weights)


def test_load_errors_name_the_file(tmp_path):
    lora = _write(tmp_path / "my-lora.safetensors", {"lora_unet_x.lora_up.weight": (4, 4)})
    with pytest.raises(ModelLoadError, match=r"^my-lora\.safetensors: not a Stable Diffusion checkpoint .*LoRA"):
        load_single_file(lora, dtype=torch.float32)
    other = tmp_path / "model.bin"
    other.write_bytes(b"\x80\x04")
    with pytest.raises(ModelLoadError, match=r"must end in \.safetensors or \.ckpt"):
        load_single_file(other, dtype=torch.float32)
    with pytest.raises(ModelNotFound):
        load_single_file(tmp_path / "gone.safetensors", dtype=torch.float32)


def test_loads_with_the_hub_switched_off(tiny_files, tmp_path):
    script = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from generation.architectures import load_single_file\n"
        "pipe = load_single_file(Path(sys.argv[1]), dtype=torch.float32)\n"
        "print(type(pipe).__name__, pipe.tokenizer('a photo of a cat').input_ids)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home"), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tiny_files.single_file)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "StableDiffusionPipeline [49406, 320, 1125, 539, 320, 2368, 49407]" in result.stdout
