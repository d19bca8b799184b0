"""LoRA through the engine and the queue: the image A1111's merge gives, batching, the infotext hash,
refusals, and the scheduler's affinity for the merged set."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
import torch

from conftest import make_config, tiny_request
from generation.engine import BatchItem, Engine
from generation.errors import InvalidRequest
from generation.lora_testing import write_tiny_lora
from generation.registry import ModelRegistry
from generation.testing import build_tiny_pipeline, write_test_model

STEPS, SIZE, SEED = 4, 64, 5


@pytest.fixture(scope="module")
def lora_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-models")
    write_test_model(root / "checkpoints" / "tiny")
    write_test_model(root / "checkpoints" / "xl", architecture="tiny-sdxl")
    sd1 = build_tiny_pipeline(architecture="tiny-sd1")
    (root / "loras").mkdir()
    xl = build_tiny_pipeline(architecture="tiny-sdxl")
    files = {
        "xl-style": write_tiny_lora(root / "loras" / "xl-style.safetensors", xl, kind="lokr", seed=5),
        "x": write_tiny_lora(root / "loras" / "x.safetensors", sd1, kind="lora", seed=1),
        "y": write_tiny_lora(root / "loras" / "y.safetensors", sd1, kind="loha", seed=2),
        "aliased": write_tiny_lora(root / "loras" / "file-name.safetensors", sd1, kind="lora", seed=3,
                                   metadata={"ss_output_name": "nice-name"}),
    }
    return root, files


@pytest.fixture(scope="module")
def lora_engine(lora_models, tmp_path_factory):
    root, _ = lora_models
    config = make_config(root, tmp_path_factory.mktemp("lora-data"))
    registry = ModelRegistry.from_config(config)
    registry.refresh()
    return Engine(config=config, registry=registry)


def image_array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def generate(engine, prompt, **changes):
    fields = dict(prompt=prompt, sampler="Euler a", steps=STEPS, width=SIZE, height=SIZE, seed=SEED)
    return engine.generate(tiny_request(**(fields | changes)))[0]


def hand_merged_raw_pipeline(root, tiny, multiplier):
    """diffusers' own pipeline from the same folder, the LoRA added by the formula, nothing of easel's."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(root / "checkpoints" / "tiny", safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        for layer, (component, path) in tiny.layers.items():
            parts = tiny.parts[layer]
            up, down = parts["lora_up.weight"], parts["lora_down.weight"]
            rank = down.shape[0]
            scale = float(parts["alpha"]) / rank if "alpha" in parts else 1.0
            weight = getattr(pipe, component).get_submodule(path).weight
            delta = (up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)).reshape(weight.shape)
            weight += delta * scale * multiplier
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    return pipe


def test_a_lora_prompt_gives_the_hand_merged_image(lora_models, lora_engine):
    root, files = lora_models
    easel = generate(lora_engine, "a red cat <lora:x:0.8>")
    raw = hand_merged_raw_pipeline(root, files["x"], 0.8)
    with torch.inference_mode():
        expected = raw(prompt="a red cat", num_inference_steps=STEPS, guidance_scale=7.0, width=SIZE, height=SIZE,
                       generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    assert np.abs(image_array(easel.image) - image_array(expected)).max() <= 1
    plain = generate(lora_engine, "a red cat")
    assert np.abs(image_array(easel.image) - image_array(plain.image)).max() > 10  # the LoRA did something


def test_an_sdxl_lora_on_the_sdxl_checkpoint(lora_engine):
    plain = image_array(generate(lora_engine, "a red cat", checkpoint="xl").image)
    styled = generate(lora_engine, "a red cat <lora:xl-style:0.8>", checkpoint="xl")
    assert np.abs(image_array(styled.image) - plain).max() > 10 and "xl-style: " in styled.infotext
    with pytest.raises(InvalidRequest, match="LoRA 'xl-style' was made for"):
        lora_engine.check_request(tiny_request(prompt="a cat <lora:xl-style:1>"))  # on the SD 1.x checkpoint


def test_weight_zero_switching_and_restoring_are_exact(lora_engine):
    plain = image_array(generate(lora_engine, "a red cat").image)
    assert (image_array(generate(lora_engine, "a red cat <lora:x:0>").image) == plain).all()
    first = image_array(generate(lora_engine, "a red cat <lora:x:0.8> <lora:y:0.5>").image)
    generate(lora_engine, "a red cat <lora:y:1:0.2>")  # another set in between
    again = image_array(generate(lora_engine, "a red cat <lora:y:0.5> <lora:x:0.8>").image)  # same set, other order
    assert (first == again).all()
    assert (image_array(generate(lora_engine, "a red cat").image) == plain).all()


def test_text_encoder_and_unet_weights_act_apart(lora_engine):
    plain = image_array(generate(lora_engine, "a red cat").image)
    te_only = image_array(generate(lora_engine, "a red cat <lora:x:1:0>").image)
    unet_only = image_array(generate(lora_engine, "a red cat <lora:x:0:1>").image)
    both = image_array(generate(lora_engine, "a red cat <lora:x:1>").image)
    assert not (te_only == plain).all() and not (unet_only == plain).all()
    assert not (te_only == both).all() and not (unet_only == both).all()


def test_batched_jobs_get_their_alone_images(lora_engine):
    requests = [tiny_request(prompt="a red cat <lora:x:0.8>", seed=11, sampler="Euler a", steps=STEPS),
                tiny_request(prompt="a blue dog <lora:x:0.8>", seed=12, sampler="Euler a", steps=STEPS)]
    plain = tiny_request(prompt="a red cat", seed=11, sampler="Euler a", steps=STEPS)
    assert lora_engine.batch_key(requests[0]) == lora_engine.batch_key(requests[1])
    assert lora_engine.batch_key(requests[0]) != lora_engine.batch_key(plain)  # one UNet call, one LoRA set
    assert lora_engine.batch_key(requests[0]) != lora_engine.batch_key(
        tiny_request(prompt="a red cat <lora:x:0.7>", seed=11, sampler="Euler a", steps=STEPS))
    together = lora_engine.run_batch([BatchItem(key=i, request=r) for i, r in enumerate(requests)])
    for index, request in enumerate(requests):
        alone = lora_engine.generate(request)[0]
        assert np.abs(image_array(together[index][0].image) - image_array(alone.image)).max() <= 1


def addnet_hash(path) -> str:
    data = path.read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    return hashlib.sha256(data[8 + header:]).hexdigest()


def test_the_infotext_carries_a1111s_lora_hashes(lora_models, lora_engine):
    root, files = lora_models
    result = generate(lora_engine, "a red cat <lora:x:0.8>, <lyco:nice-name:0.3>")
    hashes = f"x: {addnet_hash(files['x'].path)[:12]}, nice-name: {addnet_hash(files['aliased'].path)[:12]}"
    assert f"Lora hashes: {json.dumps(hashes)}" in result.infotext
    assert result.infotext.startswith("a red cat <lora:x:0.8>, <lyco:nice-name:0.3>\n")  # the tags stay


def test_refusals_name_the_lora_and_the_checkpoint(lora_engine):
    with pytest.raises(InvalidRequest, match="there is no LoRA named 'nope'"):
        lora_engine.check_request(tiny_request(prompt="a cat <lora:nope:1>"))
    with pytest.raises(InvalidRequest) as refused:
        lora_engine.check_request(tiny_request(prompt="a cat <lora:x:1>", checkpoint="xl", width=64, height=64))
    assert "LoRA 'x' was made for" in str(refused.value) and "xl is" in str(refused.value)
    with pytest.raises(InvalidRequest, match="LoRA weights must stay between"):
        lora_engine.check_request(tiny_request(prompt="a cat <lora:x:50>"))
    lora_engine.check_request(tiny_request(prompt="a cat", negative_prompt="<lora:nope:1>"))  # plain text there
    many = "a cat" + " <lora:x:0.01>" * 250  # each tag is a merge on the GPU thread: capped
    with pytest.raises(InvalidRequest, match="250 LoRA tags; the limit is 8"):
        lora_engine.check_request(tiny_request(prompt=many))


async def test_the_queue_prefers_jobs_whose_lora_set_is_merged(lora_models, tmp_path):
    from generation.executor import LocalExecutor
    from generation.service import GenerationService
    from storage import open_store

    root, _ = lora_models
    config = make_config(root, tmp_path / "data")
    registry = ModelRegistry.from_config(config)
    registry.refresh()
    engine = Engine(config=config, registry=registry)
    store = await open_store(config.data_dir / "easel.db")
    executor = LocalExecutor(engine)
    service = GenerationService(config=config, store=store, engine=engine, executor=executor)
    try:
        generate(engine, "a cat <lora:x:0.8>")
        assert executor.loaded_checkpoint == "tiny <lora:x:0.8:0.8>"
        same = await service.submit(tiny_request(prompt="a dog <lora:x:0.8>"), owner_id=1)
        other = await service.submit(tiny_request(prompt="a dog <lora:y:0.8>"), owner_id=2)
        jobs = {job.job_id: job for job in service.queued_jobs()}
        assert jobs[same.id].checkpoint == executor.loaded_checkpoint != jobs[other.id].checkpoint
    finally:
        executor.shutdown()
        await store.close()


def test_a_file_the_merger_refuses_is_listed_as_skipped_and_refused_before_queueing(tmp_path, lora_models):
    from safetensors.torch import save_file

    root, _ = lora_models
    folder = tmp_path / "loras"
    folder.mkdir()
    save_file({"lora_unet_conv_in.lora_down.weight": torch.zeros(4, 4, 3, 3),
               "lora_unet_conv_in.lora_up.weight": torch.zeros(32, 4, 1, 1),
               "lora_unet_conv_in.dora_scale": torch.ones(1, 4, 1, 1)}, str(folder / "dora.safetensors"))
    config = make_config(root, tmp_path / "data")
    registry = ModelRegistry(checkpoints_dir=root / "checkpoints", embeddings_dir=root / "embeddings",
                             loras_dir=folder, default_checkpoint="tiny")
    registry.refresh()
    assert "DoRA" in registry.lora("dora").skip_reason
    with pytest.raises(InvalidRequest, match="LoRA 'dora' cannot be used: it is a DoRA file"):
        Engine(config=config, registry=registry).check_request(tiny_request(prompt="a cat <lora:dora:1>"))
