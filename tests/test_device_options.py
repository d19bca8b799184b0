"""[device] options on the CPU with the tiny model: offload hooks, auto offload, VAE tiling and
slicing, attention slicing, the NaN-safe VAE, channels-last / SDPA / TF32, the byte-bounded
pipeline cache with shared VAEs, and torch.compile without recompiles within a size bucket."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from conftest import make_config, tiny_request
from safetensors.torch import save_file

from generation import device_options
from generation.checkpoints import CheckpointInfo, checkpoint_from_path
from generation.config import ConfigError, DeviceConfig, config_from_mapping
from generation.device_options import (
    GIB,
    apply_fast_path,
    apply_memory_options,
    choose_offload,
    compile_unet,
    enable_tf32,
    nan_safe_vae,
    prepare_for_size,
    should_tile,
    warm_up,
)
from generation.engine import Engine
from generation.pipelines import DeviceSpec, PipelineCache, load_checkpoint
from generation.testing import build_tiny_pipeline, ldm_state_dict

CPU = DeviceSpec(device="cpu", dtype=torch.float32)


def tiny(dtype=torch.float32):
    pipe = build_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype) if dtype != torch.float32 else pipe


def run(pipe, seed=3, **kwargs):
    kwargs = dict(prompt="a red cat", num_inference_steps=2, width=64, height=64, output_type="np",
                  generator=torch.Generator().manual_seed(seed)) | kwargs
    with torch.inference_mode():
        return pipe(**kwargs).images


def image_array(engine, **changes):
    return np.asarray(engine.generate(tiny_request(**changes))[0].image, dtype=np.int16)


# ------------------------------------------------------------------------------------------ config

def test_config_choices_are_checked():
    config = config_from_mapping({"device": {"dtype": "bfloat16", "offload": "auto", "compile_sizes": ["64x128"]}}, env={})
    assert (config.device.dtype, config.device.offload, config.device.compile_sizes) == ("bfloat16", "auto", ("64x128",))
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"device": {"dtype": "fp8", "offload": "disk", "compile_sizes": ["512x500", "big"]}}, env={})
    message = str(err.value)
    assert "[device] dtype must be one of auto, float16, bfloat16, float32" in message
    assert "[device] offload must be one of none, model, sequential, auto" in message
    assert "'512x500' is not WIDTHxHEIGHT" in message and "'big' is not WIDTHxHEIGHT" in message
    with pytest.raises(ConfigError, match="compile needs offload"):
        config_from_mapping({"device": {"compile": True, "offload": "model"}}, env={})
    with pytest.raises(ConfigError, match="must be a list of strings"):
        config_from_mapping({"device": {"compile_sizes": [512]}}, env={})


def test_dtype_choice():
    assert DeviceSpec.choose("cpu").dtype == torch.float32
    assert DeviceSpec.choose("cpu", "bfloat16").dtype == torch.bfloat16
    assert DeviceSpec.choose("cpu", "float16").dtype == torch.float16
    assert device_options.resolve_dtype("auto", "cuda:1") == torch.float16


# ------------------------------------------------------------------------------------------ offload

def test_auto_offload_picks_by_free_memory_and_size():
    auto = DeviceConfig(offload="auto")
    sd1 = {"unet": int(1.7 * GIB), "text_encoder": int(0.25 * GIB), "vae": int(0.16 * GIB)}
    sdxl = {"unet": int(4.8 * GIB), "text_encoder": int(0.25 * GIB), "text_encoder_2": int(1.3 * GIB), "vae": int(0.16 * GIB)}
    assert choose_offload(auto, 8 * GIB, sd1) == "none"  # 2.1 GB + 2 GB margin
    assert choose_offload(auto, 4 * GIB, sd1) == "model"  # only the UNet + 1 GB fits
    assert choose_offload(auto, int(2.5 * GIB), sd1) == "sequential"
    assert choose_offload(auto, 11 * GIB, sdxl) == "none"  # 6.5 GB + 4 GB margin
    assert choose_offload(auto, int(7.3 * GIB), sdxl) == "model"  # an 8 GB card: UNet 4.8 GB + 2 GB
    assert choose_offload(auto, 6 * GIB, sdxl) == "sequential"
    assert choose_offload(auto, None, sdxl) == "none"  # the CPU: nothing to measure
    assert choose_offload(DeviceConfig(offload="model"), 100 * GIB, sd1) == "model"  # not auto: as asked


def test_model_offload_installs_hooks_and_generates_the_same():
    reference = run(tiny())
    pipe = tiny()
    assert apply_memory_options(pipe, DeviceConfig(offload="model"), "cpu") == "model"
    models = {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    assert all(hasattr(m, "_hf_hook") for m in models.values()) and len(pipe._all_hooks) == 3
    assert pipe._offload_device == torch.device("cpu:0")
    assert np.allclose(run(pipe), reference, atol=1e-5)


def test_sequential_offload_keeps_weights_off_the_device_and_generates_the_same():
    reference = run(tiny())
    pipe = tiny()
    assert apply_memory_options(pipe, DeviceConfig(offload="sequential"), "cpu") == "sequential"
    assert pipe.unet.conv_in.weight.device.type == "meta"  # brought in layer by layer
    assert pipe.vae.decoder.conv_in.weight.device.type == "meta"
    assert hasattr(pipe.unet.conv_in, "_hf_hook") and hasattr(pipe.text_encoder, "_hf_hook")
    assert pipe.text_encoder.device.type == "cpu"  # moved whole, and back after each use
    assert np.allclose(run(pipe), reference, atol=1e-5)


@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_the_engine_runs_offloaded_checkpoints(offload, models_dir, tmp_path, engine):
    config = make_config(models_dir, tmp_path / "data", device={"offload": offload})
    offloaded = Engine(config=config, registry=engine.registry, cache=PipelineCache.from_config(config))
    # the hires fix with an upscaler decodes and encodes outside the pipeline (decode_latents, encode_image_mean)
    hires = dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Lanczos", hr_second_pass_steps=2, strength=0.5, steps=2)
    for changes in ([{"seed": 5}] if offload == "model" else [hires]):
        assert np.abs(image_array(offloaded, **changes) - image_array(engine, **changes)).max() <= 1
    loaded = offloaded.cache.peek("tiny")
    assert loaded.offload == offload and loaded.device_bytes == {}  # nothing held on the device


# ------------------------------------------------------------------------------------------ VAE tiling / slicing

def test_tiling_turns_on_above_the_threshold_and_off_below():
    options = DeviceConfig(vae_tiling_above=256 * 256)
    assert should_tile(512, 512, options) and not should_tile(256, 256, options)
    assert not should_tile(4096, 4096, DeviceConfig(vae_tiling_above=0))
    pipe = tiny()
    prepare_for_size(pipe, 512, 512, 1, options)
    assert pipe.vae.use_tiling and not pipe.vae.use_slicing
    prepare_for_size(pipe, 64, 64, 2, options)
    assert not pipe.vae.use_tiling and pipe.vae.use_slicing


def test_every_decode_tiles_by_its_own_size(monkeypatch):
    pipe = tiny()
    apply_memory_options(pipe, DeviceConfig(vae_tiling_above=256 * 256), "cpu")
    tiled = []
    original = pipe.vae.tiled_decode
    monkeypatch.setattr(pipe.vae, "tiled_decode", lambda *a, **k: tiled.append(1) or original(*a, **k))
    with torch.inference_mode():
        pipe.vae.decode(torch.randn(1, 4, 8, 8))  # 64 x 64 px
        assert not pipe.vae.use_tiling and not tiled
        pipe.vae.decode(torch.randn(1, 4, 64, 64))  # 512 x 512 px: above 256 x 256, and above the VAE's tile
        assert pipe.vae.use_tiling and tiled


def test_vae_slicing_decodes_a_batch_one_image_at_a_time(monkeypatch):
    pipe = tiny()
    apply_memory_options(pipe, DeviceConfig(vae_slicing=True), "cpu")
    assert pipe.vae.use_slicing
    calls = []
    original = pipe.vae._decode
    monkeypatch.setattr(pipe.vae, "_decode", lambda z, *a, **k: calls.append(z.shape[0]) or original(z, *a, **k))
    with torch.inference_mode():
        pipe.vae.decode(torch.randn(3, 4, 8, 8))
    assert calls == [1, 1, 1]
    apply_memory_options(pipe, DeviceConfig(vae_slicing=False), "cpu")
    assert not pipe.vae.use_slicing


def test_attention_slicing_when_asked():
    pipe = tiny()
    apply_memory_options(pipe, DeviceConfig(), "cpu")
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"AttnProcessor2_0"}
    apply_memory_options(pipe, DeviceConfig(attention_slicing=True), "cpu")
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"SlicedAttnProcessor"}
    assert apply_fast_path(pipe, DeviceConfig(attention_slicing=True), "cpu")["attention"] == "sliced"


# ------------------------------------------------------------------------------------------ fp16 safety

def test_a_vae_decoding_to_nan_in_float16_is_decoded_again_in_float32(caplog):
    pipe = tiny(torch.float16)
    clean = run(pipe)
    nan_safe_vae(pipe, "tiny")
    nan_safe_vae(pipe, "tiny")  # idempotent
    # SDXL's VAE overflows in float16: make this one give NaN whenever it runs in float16.
    dtypes = []
    pipe.vae.decoder.register_forward_hook(
        lambda module, args, output: dtypes.append(output.dtype) or (output * float("nan") if output.dtype == torch.float16 else output))
    with caplog.at_level(logging.WARNING, logger="generation.device_options"):
        first, second = run(pipe), run(pipe, seed=4)
    assert np.isfinite(first).all() and np.isfinite(second).all()
    assert first.mean() > 0.2  # not black
    assert np.abs(first - clean).max() < 0.02  # the picture, decoded in float32
    assert dtypes == [torch.float16, torch.float32, torch.float32]  # after a NaN, float32 straight away
    warnings = [r.getMessage() for r in caplog.records if "VAE produced NaN" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("VAE produced NaN in float16; decoded again in float32")
    assert pipe.vae.dtype == torch.float16  # float32 only during the decode


def test_a_finite_float16_decode_is_kept():
    pipe = tiny(torch.float16)
    nan_safe_vae(pipe)
    dtypes = []
    pipe.vae.decoder.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    run(pipe)
    assert dtypes == [torch.float16]


# ------------------------------------------------------------------------------------------ fast path

def test_channels_last_and_sdpa():
    pipe = tiny()
    applied = apply_fast_path(pipe, DeviceConfig(), "cpu")
    assert applied["channels_last"] and applied["attention"] == "sdpa" and not applied["tf32"]
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    other = tiny()
    apply_fast_path(other, DeviceConfig(channels_last=False), "cpu")
    assert not other.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_the_loader_leaves_gpu_only_options_off_on_the_cpu(models_dir):
    loaded = load_checkpoint(checkpoint_from_path(models_dir / "checkpoints" / "tiny", allow_pickle=False), CPU,
                             options=DeviceConfig(vae_tiling_above=123))
    pipe = loaded.base
    assert not pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not pipe.vae.use_slicing and pipe.vae._easel_options.vae_tiling_above == 123
    assert pipe.vae._easel_nan_safe and loaded.offload == "none"
    assert set(loaded.device_bytes.values()) == {device_options.module_bytes(m) for m in
                                                  (pipe.unet, pipe.vae, pipe.text_encoder)}


def test_tf32_on_ampere_and_later_only(monkeypatch):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
        torch.backends.cuda.matmul.allow_tf32 = False
        assert not enable_tf32("cuda") and not torch.backends.cuda.matmul.allow_tf32
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (8, 6))
        assert enable_tf32("cuda:0") and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not enable_tf32("cpu")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ------------------------------------------------------------------------------------------ byte-bounded cache

def fake_checkpoint(name: str) -> CheckpointInfo:
    return CheckpointInfo(name=name, path=f"/nowhere/{name}.safetensors", format="safetensors", architecture="sd1",
                          sha256=name * 8)


def fake_loader(parts: dict[str, dict], loaded: list[str]):
    def loader(info, device):
        loaded.append(info.name)
        return type("Loaded", (), {"info": info, "device_bytes": parts[info.name]})()

    return loader


def test_the_cache_is_bounded_by_bytes():
    parts = {"a": {"unet-a": 60}, "b": {"unet-b": 30}, "c": {"unet-c": 50}, "d": {"unet-d": 10}}
    loaded: list[str] = []
    cache = PipelineCache(capacity=10, device=CPU, loader=fake_loader(parts, loaded), max_bytes=100,
                          estimate=lambda info: 0)  # sizes unknown before the first load
    a, b, c, d = map(fake_checkpoint, "abcd")
    cache.get(a), cache.get(b)
    assert cache.loaded_names() == ["a", "b"] and cache.held_bytes == 90
    cache.get(c)  # 140 > 100: a (least recently used) goes
    assert cache.loaded_names() == ["b", "c"] and cache.held_bytes == 80
    cache.get(d)  # 90 fits
    assert cache.loaded_names() == ["b", "c", "d"]
    cache.get(b)  # a hit makes b the most recent: c, d, b
    cache.get(a)  # known now: 60 needs c (50) out before loading; d and b stay
    assert cache.loaded_names() == ["d", "b", "a"] and cache.held_bytes == 100
    assert loaded == ["a", "b", "c", "d", "a"]


def test_the_count_still_bounds_and_shared_modules_count_once():
    parts = {"a": {"unet-a": 40, "vae": 20}, "b": {"unet-b": 40, "vae": 20}, "c": {"unet-c": 40, "vae": 20}}
    loaded: list[str] = []
    cache = PipelineCache(capacity=2, device=CPU, loader=fake_loader(parts, loaded), max_bytes=100,
                          estimate=lambda info: 40)
    a, b, c = map(fake_checkpoint, "abc")
    cache.get(a), cache.get(b)  # 40 + 40 + 20 shared = 100 fits
    assert cache.loaded_names() == ["a", "b"] and cache.held_bytes == 100
    cache.get(c)  # the count: a goes
    assert cache.loaded_names() == ["b", "c"]


def test_measured_budget_is_free_memory_plus_held_less_a_margin():
    parts = {"a": {"unet-a": 3 * GIB}, "b": {"unet-b": 3 * GIB}}
    loaded: list[str] = []
    free = {"now": 4 * GIB}
    cache = PipelineCache(capacity=5, device=CPU, loader=fake_loader(parts, loaded), free_bytes=lambda: free["now"],
                          estimate=lambda info: 3 * GIB)
    a, b = map(fake_checkpoint, "ab")
    assert cache.budget(a) == 2 * GIB  # 4 GiB free, less the 2 GiB SD 1.x margin
    cache.get(a)
    free["now"] = 1 * GIB  # a took 3 GiB
    assert cache.budget(b) == 2 * GIB
    cache.get(b)  # 3 + 3 > 2: a goes first
    assert cache.loaded_names() == ["b"]
    assert PipelineCache(capacity=1, device=CPU).budget() is None  # the CPU: count only


def test_two_checkpoints_with_one_vae_file_share_one_vae_module(models_dir, tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    other = build_tiny_pipeline(seed=1)
    weights = ldm_state_dict(unet=other.unet, vae=other.vae, text_encoder=other.text_encoder)
    save_file({k.removeprefix("first_stage_model."): v for k, v in weights.items() if k.startswith("first_stage_model.")},
              str(folder / "shared.vae.file"))
    for name in ("one", "two"):  # two checkpoints, their VAEs symlinks to one file
        shutil.copy(models_dir / "checkpoints" / "tiny.safetensors", folder / f"{name}.safetensors")
        (folder / f"{name}.vae.safetensors").symlink_to(folder / "shared.vae.file")
    one, two = (checkpoint_from_path(folder / f"{name}.safetensors", allow_pickle=False) for name in ("one", "two"))
    assert one.vae_path != two.vae_path
    cache = PipelineCache(capacity=2, device=CPU, options=DeviceConfig())
    first, second = cache.get(one), cache.get(two)
    assert first.base.vae is second.base.vae and first.base.unet is not second.base.unet
    vae = device_options.module_bytes(first.base.vae)
    assert cache.held_bytes == sum(first.device_bytes.values()) + sum(second.device_bytes.values()) - vae
    cache.clear()


# ------------------------------------------------------------------------------------------ compile

class CountingBackend:
    """A torch.compile backend that counts the graphs it is asked to compile and the runs of them."""

    def __init__(self):
        self.graphs = 0
        self.runs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1

        def run(*args):
            self.runs += 1
            return graph_module.forward(*args)

        return run


def test_compile_keeps_one_graph_per_bucket_across_requests(models_dir, tmp_path, engine, monkeypatch):
    backend = CountingBackend()
    monkeypatch.setattr(device_options, "COMPILE_BACKEND", backend)
    config = make_config(models_dir, tmp_path / "data", device={"compile": True, "compile_sizes": ["64x64"]})
    compiled = Engine(config=config, registry=engine.registry, cache=PipelineCache.from_config(config))
    compiled.cache.get(engine.registry.resolve("tiny"))  # loads and warms up: the 64 x 64 graph compiles now
    unet = compiled.cache.peek("tiny").base.unet._easel_compiled
    graphs = backend.graphs
    assert graphs > 0 and len(unet.shapes) == 1 and backend.runs > 0
    runs = backend.runs
    first = image_array(compiled, seed=11)
    second = image_array(compiled, seed=12, prompt="a blue dog, detailed")
    assert backend.graphs == graphs and len(unet.shapes) == 1  # two requests, no recompile
    assert backend.runs > runs  # and they ran the compiled graph
    assert np.abs(first - image_array(engine, seed=11)).max() <= 1  # the same picture as eager
    runs = backend.runs
    image_array(compiled, seed=13, width=128, height=64)  # not a bucket: eager, nothing compiled
    assert backend.graphs == graphs and backend.runs == runs and len(unet.shapes) == 1
    assert second.shape == (64, 64, 3)


def test_compile_unet_dispatches_by_bucket_and_caps_shapes():
    backend = CountingBackend()
    pipe = tiny()
    compiled = compile_unet(pipe, ["64x64", (128, 64)], backend=backend, max_shapes=1)
    assert compile_unet(pipe, ["64x64"]) is compiled and pipe.unet.forward is compiled  # idempotent
    assert warm_up(pipe) == 2  # both sizes run; the cap (1 shape) leaves the second eager
    assert backend.graphs > 0 and len(compiled.shapes) == 1
    graphs = backend.graphs
    run(pipe, num_inference_steps=1)
    assert backend.graphs == graphs
