"""generation/lora_networks.py against a merge written out plainly here (A1111's formulas, no code shared).

Files come from generation/lora_testing.py (random weights, names of the tiny models' real modules);
the expected weights are computed from the file's tensors and added by module path to a deep copy.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from generation.lora_networks import LoraError, LoraMerger, lora_targets, read_lora_file
from generation.lora_testing import TinyLora, write_tiny_lora
from generation.testing import build_tiny_pipeline

COMPONENTS = ("text_encoder", "text_encoder_2", "unet")


@pytest.fixture(scope="module")
def plain_pipes():
    return {arch: build_tiny_pipeline(architecture=arch) for arch in ("tiny-sd1", "tiny-sdxl")}


@pytest.fixture
def sd1(plain_pipes):
    return copy.deepcopy(plain_pipes["tiny-sd1"])


@pytest.fixture
def sdxl(plain_pipes):
    return copy.deepcopy(plain_pipes["tiny-sdxl"])


# ----------------------------------------------------------------------------- the independent merge

def _tucker(t, a, b):
    # W[o, i, h, w] = sum over x, y of t[x, y, h, w] * a[x, o] * b[y, i]
    return torch.einsum("xyhw,xo,yi->oihw", t, a, b)


def expected_delta(parts: dict[str, torch.Tensor], weight_shape: torch.Size) -> torch.Tensor:
    p = {key: value.float() for key, value in parts.items()}
    alpha = p["alpha"].item() if "alpha" in p else None
    if "lora_down.weight" in p or "lora_A.weight" in p:
        down = p.get("lora_down.weight", p.get("lora_A.weight"))
        up = p.get("lora_up.weight", p.get("lora_B.weight"))
        rank = down.shape[0]
        if "lora_mid.weight" in p:
            delta = torch.einsum("on,nmhw,mi->oihw", up.flatten(1), p["lora_mid.weight"], down.flatten(1))
        else:
            delta = up.flatten(1) @ down.flatten(1)
    elif "hada_w1_a" in p:
        rank = p["hada_w1_b"].shape[0]
        half1 = (_tucker(p["hada_t1"], p["hada_w1_a"], p["hada_w1_b"]) if "hada_t1" in p
                 else p["hada_w1_a"] @ p["hada_w1_b"])
        half2 = (_tucker(p["hada_t2"], p["hada_w2_a"], p["hada_w2_b"]) if "hada_t2" in p
                 else p["hada_w2_a"] @ p["hada_w2_b"])
        delta = half1 * half2
    else:
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        if "lokr_w2" in p:
            w2 = p["lokr_w2"]
        elif "lokr_t2" in p:
            w2 = _tucker(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"]).contiguous()  # kron needs it
        else:
            w2 = p["lokr_w2_a"] @ p["lokr_w2_b"]
        delta = torch.kron(w1[:, :, None, None], w2) if w2.ndim == 4 else torch.kron(w1, w2)
        # Alpha counts only for a decomposed side; rank = w2's inner size, else w1's.
        rank = p["lokr_w2_b"].shape[0] if "lokr_w2_b" in p else p["lokr_w1_b"].shape[0] if "lokr_w1_b" in p else None
        if rank is None:
            alpha = None
    scale = alpha / rank if alpha is not None else 1.0
    return delta.reshape(weight_shape) * scale


def hand_merge(pipe, uses: list[tuple[TinyLora, float, float]]):
    """A deep copy of `pipe` with W + m * ΔW added by module path, in float32."""
    merged = copy.deepcopy(pipe)
    with torch.no_grad():
        for lora, te, unet in uses:
            for name, (component, path) in lora.layers.items():
                multiplier = unet if component == "unet" else te
                weight = getattr(merged, component).get_submodule(path).weight
                weight += multiplier * expected_delta(lora.parts[name], weight.shape)
    return merged


def weights(pipe) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.clone() for name in COMPONENTS if getattr(pipe, name, None) is not None
            for key, value in getattr(pipe, name).state_dict().items()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((x.float() - b[key].float()).abs().max().item() for key, x in a.items())


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    changed = [key for key, value in a.items() if not torch.equal(value, b[key])]
    assert not changed, f"{len(changed)} tensors differ, e.g. {changed[:3]}"


def image(pipe):
    return pipe("a red fox in the snow", negative_prompt="blurry", num_inference_steps=2, height=64, width=64,
                guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(5), output_type="np").images[0]


# ------------------------------------------------------------------------------- SDXL's sgm names

# The tiny SDXL UNet (layers_per_block 1; blocks: Down, CrossAttnDown | CrossAttnUp, Up) under the
# names of the original sgm/LDM model, which SDXL kohya files use.
TINY_SDXL_SGM = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "down_blocks.0.resnets.0": "input_blocks.1.0",
    "down_blocks.0.downsamplers.0.conv": "input_blocks.2.0.op",
    "down_blocks.1.resnets.0": "input_blocks.3.0",
    "down_blocks.1.attentions.0": "input_blocks.3.1",
    "mid_block.resnets.0": "middle_block.0",
    "mid_block.attentions.0": "middle_block.1",
    "mid_block.resnets.1": "middle_block.2",
    "up_blocks.0.resnets.0": "output_blocks.0.0",
    "up_blocks.0.attentions.0": "output_blocks.0.1",
    "up_blocks.0.resnets.1": "output_blocks.1.0",
    "up_blocks.0.attentions.1": "output_blocks.1.1",
    "up_blocks.0.upsamplers.0.conv": "output_blocks.1.2.conv",
    "up_blocks.1.resnets.0": "output_blocks.2.0",
    "up_blocks.1.resnets.1": "output_blocks.3.0",
    "conv_out": "out.2",
}
SGM_RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
              "conv_shortcut": "skip_connection"}


def tiny_sdxl_sgm(path: str) -> str:
    if path in TINY_SDXL_SGM:
        return TINY_SDXL_SGM[path]
    block = max((b for b in TINY_SDXL_SGM if path.startswith(b + ".")), key=len)
    rest = path[len(block) + 1:]
    return f"{TINY_SDXL_SGM[block]}.{SGM_RESNET[rest] if '.resnets.' in block else rest}"


# ------------------------------------------------------------------------------------------ formats

CASES = [
    ("tiny-sd1", "lora", None),
    ("tiny-sd1", "locon", None),
    ("tiny-sd1", "loha", None),
    ("tiny-sd1", "lokr", None),
    ("tiny-sd1", "peft", None),
    ("tiny-sdxl", "lora", tiny_sdxl_sgm),
    ("tiny-sdxl", "locon", tiny_sdxl_sgm),
    ("tiny-sdxl", "loha", None),
    ("tiny-sdxl", "lokr", tiny_sdxl_sgm),
    ("tiny-sdxl", "peft", None),
]


@pytest.mark.parametrize(("arch", "kind", "unet_name"), CASES,
                         ids=[f"{a}-{k}{'-sgm' if n else ''}" for a, k, n in CASES])
def test_each_format_merges_as_written_out_by_hand(plain_pipes, tmp_path, arch, kind, unet_name):
    pipe = copy.deepcopy(plain_pipes[arch])
    plain = weights(pipe)
    tiny = write_tiny_lora(tmp_path / f"{kind}.safetensors", pipe, kind=kind, seed=3, unet_name=unet_name)
    lora = read_lora_file(tiny.path)
    assert len(lora.modules) == len(tiny.layers)
    merger = LoraMerger(pipe)
    assert merger.check(lora) == []

    merger.apply([(lora, 0.8, 0.6)])
    expected = hand_merge(plain_pipes[arch], [(tiny, 0.8, 0.6)])
    assert max_difference(weights(pipe), weights(expected)) <= 1e-6
    assert max_difference(weights(pipe), plain) > 1e-2  # the LoRA did change something
    assert merger.applied == ((lora, 0.8, 0.6),)

    merged_image = image(pipe)
    assert abs(merged_image - image(expected)).max() <= 1 / 255
    assert abs(merged_image - image(plain_pipes[arch])).max() > 4 / 255

    merger.apply([])
    assert_identical(weights(pipe), plain)


def test_sdxl_sgm_names_reach_the_right_modules(sdxl):
    targets = lora_targets(sdxl)
    for path, module in sdxl.unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            name = "lora_unet_" + tiny_sdxl_sgm(path).replace(".", "_")
            assert targets[name] == ("unet", module), path
            assert targets["lora_unet_" + path.replace(".", "_")] == ("unet", module)
    for prefix, encoder in (("lora_te1_", sdxl.text_encoder), ("lora_te2_", sdxl.text_encoder_2)):
        assert targets[prefix + "text_model_encoder_layers_1_mlp_fc2"] == ("te", encoder.get_submodule(
            "text_model.encoder.layers.1.mlp.fc2" if hasattr(encoder, "text_model") else "encoder.layers.1.mlp.fc2"))
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" not in targets  # SD 1.x naming: not on SDXL


def test_full_size_sdxl_and_sd1_names_match_a1111s(tmp_path):
    from diffusers import UNet2DConditionModel

    from generation.architectures import config_dir

    def unet(arch):
        with torch.device("meta"):
            return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir(arch), subfolder="unet"))

    xl = unet("sdxl")
    targets = lora_targets(SimpleNamespace(unet=xl))
    for kohya, path in [
        ("input_blocks_4_1_transformer_blocks_0_attn1_to_q", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
        ("input_blocks_7_1_transformer_blocks_9_attn2_to_v", "down_blocks.2.attentions.0.transformer_blocks.9.attn2.to_v"),
        ("input_blocks_3_0_op", "down_blocks.0.downsamplers.0.conv"),
        ("input_blocks_1_0_in_layers_2", "down_blocks.0.resnets.0.conv1"),
        ("middle_block_1_transformer_blocks_0_ff_net_0_proj", "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj"),
        ("middle_block_2_emb_layers_1", "mid_block.resnets.1.time_emb_proj"),
        ("output_blocks_2_2_conv", "up_blocks.0.upsamplers.0.conv"),
        ("output_blocks_5_2_conv", "up_blocks.1.upsamplers.0.conv"),
        ("output_blocks_8_0_skip_connection", "up_blocks.2.resnets.2.conv_shortcut"),
        ("output_blocks_3_1_proj_out", "up_blocks.1.attentions.0.proj_out"),
        ("label_emb_0_2", "add_embedding.linear_2"),
    ]:
        assert targets["lora_unet_" + kohya][1] is xl.get_submodule(path), kohya
    sd1 = unet("sd1")
    targets = lora_targets(SimpleNamespace(unet=sd1))
    # A1111's convert_diffusers_name_to_compvis: up block 0 has no attention, so its upsampler is slot 1.
    assert targets["lora_unet_output_blocks_2_1_conv"][1] is sd1.get_submodule("up_blocks.0.upsamplers.0.conv")
    assert targets["lora_unet_output_blocks_5_2_conv"][1] is sd1.get_submodule("up_blocks.1.upsamplers.0.conv")
    assert targets["lora_unet_input_blocks_11_0_out_layers_3"][1] is sd1.get_submodule("down_blocks.3.resnets.1.conv2")


# ----------------------------------------------------------------------------------- multipliers

def test_te_and_unet_multipliers_act_apart(sd1, plain_pipes, tmp_path):
    plain_pipe = plain_pipes["tiny-sd1"]
    tiny = write_tiny_lora(tmp_path / "a.safetensors", sd1, kind="lora", seed=1)
    lora = read_lora_file(tiny.path)
    merger = LoraMerger(sd1)

    merger.apply([(lora, 0.0, 1.0)])
    assert_identical(_component(sd1, "text_encoder"), _component(plain_pipe, "text_encoder"))
    assert max_difference(weights(sd1), weights(hand_merge(plain_pipe, [(tiny, 0.0, 1.0)]))) <= 1e-6

    merger.apply([(lora, 1.0, 0.0)])
    assert_identical(_component(sd1, "unet"), _component(plain_pipe, "unet"))
    assert max_difference(weights(sd1), weights(hand_merge(plain_pipe, [(tiny, 1.0, 0.0)]))) <= 1e-6


def _component(pipe, name):
    return {key: value.clone() for key, value in getattr(pipe, name).state_dict().items()}


def test_multiplier_zero_is_no_lora_bit_for_bit(sdxl, plain_pipes, tmp_path):
    plain_pipe = plain_pipes["tiny-sdxl"]
    lora = read_lora_file(write_tiny_lora(tmp_path / "a.safetensors", sdxl, kind="loha").path)
    merger = LoraMerger(sdxl)
    merger.apply([(lora, 0.0, 0.0)])
    assert_identical(weights(sdxl), weights(plain_pipe))
    assert (image(sdxl) == image(plain_pipe)).all()


def test_two_loras_sum_in_order(sd1, plain_pipes, tmp_path):
    a = write_tiny_lora(tmp_path / "a.safetensors", sd1, kind="locon", seed=1)
    b = write_tiny_lora(tmp_path / "b.safetensors", sd1, kind="lokr", seed=2,
                        select=lambda component, path: component == "text_encoder" or "attn" in path)
    merger = LoraMerger(sd1)
    merger.apply([(read_lora_file(a.path), 1.0, 0.7), (read_lora_file(b.path), -0.5, 1.3)])
    expected = hand_merge(plain_pipes["tiny-sd1"], [(a, 1.0, 0.7), (b, -0.5, 1.3)])
    assert max_difference(weights(sd1), weights(expected)) <= 1e-6
    assert abs(image(sd1) - image(expected)).max() <= 1 / 255


def test_switching_restores_bit_identical_weights_and_image(sdxl, plain_pipes, tmp_path):
    plain = weights(plain_pipes["tiny-sdxl"])
    a = read_lora_file(write_tiny_lora(tmp_path / "a.safetensors", sdxl, kind="lora", seed=1).path)
    b = read_lora_file(write_tiny_lora(tmp_path / "b.safetensors", sdxl, kind="peft", seed=2,
                                       select=lambda component, path: "attn" in path or "proj" in path).path)
    merger = LoraMerger(sdxl)
    merger.apply([(a, 1.0, 1.0)])
    with_a, image_a = weights(sdxl), image(sdxl)
    merger.apply([(b, 1.0, 0.5)])
    assert max_difference(weights(sdxl), with_a) > 1e-2
    merger.apply([(a, 1.0, 1.0)])
    assert_identical(weights(sdxl), with_a)
    assert (image(sdxl) == image_a).all()
    merger.apply([(a, 1.0, 1.0), (b, 1.0, 1.0)])
    merger.apply([])
    assert_identical(weights(sdxl), plain)
    assert merger.applied == ()


def test_the_same_set_again_is_a_no_op_and_identity_counts(sd1, tmp_path):
    path = write_tiny_lora(tmp_path / "a.safetensors", sd1, kind="lora",
                           select=lambda component, path: path == "conv_in").path
    lora = read_lora_file(path)
    merger = LoraMerger(sd1)
    merger.apply([(lora, 1.0, 1.0)])
    merged = sd1.unet.conv_in.weight.clone()
    with torch.no_grad():
        sd1.unet.conv_in.weight[0, 0, 0, 0] = 123.0  # a marker only a real merge would overwrite
    merger.apply([(lora, 1.0, 1.0)])
    assert sd1.unet.conv_in.weight[0, 0, 0, 0] == 123.0
    with torch.no_grad():
        sd1.unet.conv_in.weight.copy_(merged)
    merger.apply([(read_lora_file(path), 1.0, 1.0)])  # an equal file, another object: merged again
    assert torch.equal(sd1.unet.conv_in.weight, merged)


def test_half_precision_weights_merge_in_float32_and_restore_exactly(sd1, plain_pipes, tmp_path):
    sd1.text_encoder.to(torch.float16)
    sd1.unet.to(torch.float16)
    plain = weights(sd1)
    tiny = write_tiny_lora(tmp_path / "a.safetensors", sd1, kind="loha", dtype=torch.float16)
    merger = LoraMerger(sd1)
    merger.apply([(read_lora_file(tiny.path), 1.0, 1.0)])
    expected = hand_merge(plain_pipes["tiny-sd1"], [(tiny, 1.0, 1.0)])
    for key, value in weights(sd1).items():
        assert value.dtype == torch.float16
        torch.testing.assert_close(value, weights(expected)[key].half(), atol=1e-3, rtol=1e-3)
    merger.apply([])
    assert_identical(weights(sd1), plain)


def test_inpaint_conv_in_gets_a_zero_padded_delta(sd1, tmp_path):
    from diffusers import UNet2DConditionModel

    tiny = write_tiny_lora(tmp_path / "a.safetensors", sd1, kind="lora", select=lambda c, path: path == "conv_in")
    inpaint_unet = UNet2DConditionModel.from_config({**sd1.unet.config, "in_channels": 9})
    plain = inpaint_unet.conv_in.weight.detach().clone()
    merger = LoraMerger(SimpleNamespace(unet=inpaint_unet, text_encoder=None))
    lora = read_lora_file(tiny.path)
    assert merger.check(lora) == []
    merger.apply([(lora, 1.0, 0.5)])
    [name] = tiny.layers
    delta = expected_delta(tiny.parts[name], torch.Size([plain.shape[0], 4, *plain.shape[2:]]))
    merged = inpaint_unet.conv_in.weight
    assert (merged[:, :4] - (plain[:, :4] + 0.5 * delta)).abs().max() <= 1e-6
    assert torch.equal(merged[:, 4:], plain[:, 4:])


# ------------------------------------------------------------------------------ fit and refusals

def test_an_sd1_lora_on_sdxl_is_refused_clearly_and_leaves_the_model_plain(sd1, sdxl, plain_pipes, tmp_path):
    sd1_lora = read_lora_file(write_tiny_lora(tmp_path / "for_sd1.safetensors", sd1).path)
    xl_lora = read_lora_file(write_tiny_lora(tmp_path / "for_xl.safetensors", sdxl).path)
    assert sd1_lora.width() == 32 and xl_lora.width() == 96
    merger = LoraMerger(sdxl)
    problems = merger.check(sd1_lora)
    assert problems
    assert all(p.startswith('LoRA "for_sd1" does not fit this checkpoint: ') for p in problems)
    assert "(made for tiny SD 1.x test model?)" in problems[0]
    assert "layers have no match here" in problems[0]

    merger.apply([(xl_lora, 1.0, 1.0)])
    with pytest.raises(LoraError, match="for_sd1"):
        merger.apply([(xl_lora, 1.0, 1.0), (sd1_lora, 1.0, 1.0)])
    assert_identical(weights(sdxl), weights(plain_pipes["tiny-sdxl"]))
    assert merger.applied == ()
    assert "made for tiny SDXL test model?" in " ".join(LoraMerger(sd1).check(xl_lora))


def test_shape_mismatch_is_named(sd1, tmp_path):
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    path = tmp_path / "wide.safetensors"
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 768), f"{name}.lora_up.weight": torch.zeros(64, 4)}, str(path))
    lora = read_lora_file(path)
    assert lora.width() == 768
    [problem] = LoraMerger(sd1).check(lora)
    assert "1 layers have other shapes" in problem and name in problem and "LoRA 64x768" in problem
    assert "(made for Stable Diffusion 1.x?)" in problem


def test_width(sd1, sdxl, tmp_path):
    te_only = write_tiny_lora(tmp_path / "te.safetensors", sd1, unet=False)
    assert read_lora_file(te_only.path).width() == 32
    xl_te = write_tiny_lora(tmp_path / "xlte.safetensors", sdxl, unet=False)
    assert read_lora_file(xl_te.path).width() == 32 + 64
    path = tmp_path / "convs.safetensors"
    save_file({"lora_unet_conv_in.lora_down.weight": torch.zeros(4, 4, 3, 3),
               "lora_unet_conv_in.lora_up.weight": torch.zeros(32, 4, 1, 1)}, str(path))
    assert read_lora_file(path).width() is None


@pytest.mark.parametrize("key", ["lora_unet_conv_in.dora_scale", "unet.conv_in.lora_magnitude_vector"])
def test_dora_is_refused_by_name(sd1, tmp_path, key):
    kind = "peft" if key.startswith("unet.") else "lora"
    tiny = write_tiny_lora(tmp_path / "d.safetensors", sd1, kind=kind, extra={key: torch.ones(32, 1, 1, 1)})
    with pytest.raises(LoraError, match=r'LoRA "d" is a DoRA file; easel does not apply DoRA yet'):
        read_lora_file(tiny.path)


@pytest.mark.parametrize(("parts", "what"), [
    ({"weight": torch.ones(32), "on_input": torch.tensor(0.0)}, "an IA3 network"),
    ({"diff": torch.ones(32, 4, 3, 3)}, "a full-weight"),
    ({"w_norm": torch.ones(32), "b_norm": torch.ones(32)}, "a norm-layer network"),
    ({"oft_blocks": torch.ones(4, 8, 8), "alpha": torch.tensor(1.0)}, "an OFT network"),
])
def test_other_network_types_are_refused_by_name(tmp_path, parts, what):
    path = tmp_path / "other.safetensors"
    save_file({f"lora_unet_conv_in.{part}": value for part, value in parts.items()}, str(path))
    with pytest.raises(LoraError, match=f'LoRA "other" is {what}'):
        read_lora_file(path)


@pytest.mark.parametrize(("tensors", "offending"), [
    ({"lora_unet_conv_in.lora_down.weight": torch.ones(4, 4, 3, 3), "lora_unet_conv_in.lora_up.weight": torch.ones(32, 4, 1, 1),
      "lora_unet_conv_in.lora_gate.weight": torch.ones(4)}, "lora_unet_conv_in.lora_gate.weight"),
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.ones(32, 4, 3, 3)}, "model.diffusion_model.input_blocks.0.0.weight"),
    ({"lora_unet_conv_in.lora_down.weight": torch.ones(4, 4, 3, 3)}, "lora_unet_conv_in.lora_down.weight"),
])
def test_unknown_keys_are_named(tmp_path, tensors, offending):
    path = tmp_path / "odd.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(LoraError, match=f"understand: {offending}$"):
        read_lora_file(path)


def test_bundled_embeddings_are_listed_not_loaded(sd1, tmp_path):
    tiny = write_tiny_lora(tmp_path / "b.safetensors", sd1, extra={"bundle_emb.sparkle.string_to_param.*": torch.ones(2, 32)})
    lora = read_lora_file(tiny.path)
    assert lora.bundled_embeddings == ("sparkle",)
    assert len(lora.modules) == len(tiny.layers)
    only = tmp_path / "only.safetensors"
    save_file({"bundle_emb.sparkle.emb_params": torch.ones(2, 32)}, str(only))
    with pytest.raises(LoraError, match="only bundled embeddings"):
        read_lora_file(only)


def test_pickles_only_when_allowed(sd1, tmp_path):
    tiny = write_tiny_lora(tmp_path / "p.pt", sd1, kind="loha")
    with pytest.raises(LoraError, match=r'LoRA "p" is a pickle'):
        read_lora_file(tiny.path)
    lora = read_lora_file(tiny.path, allow_pickle=True)
    assert lora.modules.keys() == tiny.layers.keys()
    for name, module in lora.modules.items():
        assert all(torch.equal(module.tensors[part], value) for part, value in tiny.parts[name].items())
    assert LoraMerger(sd1).check(lora) == []


def test_a_stored_scale_and_bias_count_as_in_a1111(sd1, plain_pipes, tmp_path):
    name = "lora_unet_down_blocks_0_resnets_0_time_emb_proj"
    layer = sd1.unet.down_blocks[0].resnets[0].time_emb_proj
    g = torch.Generator().manual_seed(0)
    up, down, bias = torch.randn(32, 2, generator=g), torch.randn(2, 128, generator=g), torch.randn(32, 128, generator=g)
    path = tmp_path / "s.safetensors"
    save_file({f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down, f"{name}.bias": bias,
               f"{name}.alpha": torch.tensor(8.0), f"{name}.scale": torch.tensor(0.25)}, str(path))
    LoraMerger(sd1).apply([(read_lora_file(path), 1.0, 2.0)])
    plain = plain_pipes["tiny-sd1"].unet.down_blocks[0].resnets[0].time_emb_proj.weight
    assert (layer.weight - (plain + 2.0 * 0.25 * (up @ down + bias))).abs().max() <= 1e-6


def test_old_diffusers_key_layouts(sd1, plain_pipes, tmp_path):
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(shape, generator=g) * 0.2  # noqa: E731
    attention = "down_blocks.1.attentions.0.transformer_blocks.0.attn1"
    te_layer = "text_model.encoder.layers.1.self_attn.q_proj"
    tensors = {
        f"unet.{attention}.processor.to_out_lora.down.weight": rand(4, 64),
        f"unet.{attention}.processor.to_out_lora.up.weight": rand(64, 4),
        f"text_encoder.{te_layer}.lora_linear_layer.down.weight": rand(4, 32),
        f"text_encoder.{te_layer}.lora_linear_layer.up.weight": rand(32, 4),
        f"text_encoder.{te_layer}.alpha": torch.tensor(2.0),
    }
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path))
    lora = read_lora_file(path)
    assert set(lora.modules) == {"lora_unet_" + f"{attention}.to_out.0".replace(".", "_"),
                                 "lora_te1_" + te_layer.replace(".", "_")}
    LoraMerger(sd1).apply([(lora, 1.0, 1.0)])
    plain = plain_pipes["tiny-sd1"]
    out = f"{attention}.to_out.0"
    assert (sd1.unet.get_submodule(out).weight - plain.unet.get_submodule(out).weight
            - tensors[f"unet.{attention}.processor.to_out_lora.up.weight"]
            @ tensors[f"unet.{attention}.processor.to_out_lora.down.weight"]).abs().max() <= 1e-6
    q = lambda pipe: pipe.text_encoder.get_submodule(  # noqa: E731
        te_layer if hasattr(pipe.text_encoder, "text_model") else te_layer.removeprefix("text_model."))
    assert (q(sd1).weight - q(plain).weight - 0.5 * tensors[f"text_encoder.{te_layer}.lora_linear_layer.up.weight"]
            @ tensors[f"text_encoder.{te_layer}.lora_linear_layer.down.weight"]).abs().max() <= 1e-6
