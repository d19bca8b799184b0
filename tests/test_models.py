"""Checkpoints and embeddings on disk: scanning, names, hashes, pickles, VAEs, the pipeline cache, DB sync."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import make_config, tiny_request, write_embeddings
from generation.catalog import refresh_models
from generation.checkpoints import safe_child, scan_checkpoints
from generation.engine import Engine
from generation.errors import InvalidRequest, ModelLoadError, ModelNotFound
from generation.hashing import MemoryHashCache, sha256_file
from generation.pipelines import DeviceSpec, PipelineCache
from generation.registry import ModelRegistry
from generation.testing import build_tiny_pipeline, ldm_state_dict


def image_array(engine, **changes):
    return np.asarray(engine.generate(tiny_request(**changes))[0].image, dtype=np.int16)


@pytest.fixture
def models_copy(tmp_path, models_dir):
    """A private copy of the model folder that a test may add files to."""
    target = tmp_path / "models"
    shutil.copytree(models_dir, target)
    return target


def test_scan_names_formats_hashes_and_skips(models_copy):
    folder = models_copy / "checkpoints"
    (folder / "notes.txt").write_text("not a model")
    (folder / "empty_dir").mkdir()
    shutil.copy(folder / "tiny.safetensors", folder / "old.ckpt")
    found, skipped = scan_checkpoints(folder, allow_pickle=False)
    assert [(c.name, c.format, c.architecture) for c in found] == [
        ("tiny", "diffusers", "tiny-sd1"), ("tiny.safetensors", "safetensors", "tiny-sd1")]
    single = found[1]
    assert single.sha256 == hashlib.sha256((folder / "tiny.safetensors").read_bytes()).hexdigest()
    assert single.short_hash == single.sha256[:10]
    assert [s.reason for s in skipped] == [".ckpt is a pickle; set [models] allow_pickle_checkpoints = true to load it"]


def test_pickle_checkpoint_loads_only_when_allowed_and_matches(models_copy, tmp_path, engine):
    from safetensors.torch import load_file

    folder = models_copy / "checkpoints"  # the operator's own folder: the only place a pickle may come from
    torch.save({"state_dict": load_file(str(folder / "tiny.safetensors"))}, folder / "legacy.ckpt")
    config = make_config(models_copy, tmp_path / "data", models={"allow_pickle_checkpoints": True})
    registry = ModelRegistry.from_config(config)
    registry.refresh()
    assert (registry.resolve("legacy").format, registry.resolve("legacy").architecture) == ("ckpt", "tiny-sd1")
    legacy = Engine(config=config, registry=registry)
    assert np.array_equal(image_array(legacy, checkpoint="legacy", seed=3), image_array(engine, checkpoint="tiny", seed=3))


def test_a_vae_beside_a_checkpoint_is_used(models_copy, tmp_path, engine):
    folder = models_copy / "checkpoints"
    shutil.copy(folder / "tiny.safetensors", folder / "withvae.safetensors")
    other = build_tiny_pipeline(seed=1)
    weights = ldm_state_dict(unet=other.unet, vae=other.vae, text_encoder=other.text_encoder)
    vae = {k.removeprefix("first_stage_model."): v for k, v in weights.items() if k.startswith("first_stage_model.")}
    save_file(vae, str(folder / "withvae.vae.safetensors"))
    config = make_config(models_copy, tmp_path / "data")
    registry = ModelRegistry.from_config(config)
    registry.refresh()
    info = registry.resolve("withvae")
    assert info.vae_path and info.vae_path.endswith("withvae.vae.safetensors")
    assert "withvae.vae" not in [c.name for c in registry.checkpoints]  # a VAE is not a checkpoint
    with_vae = Engine(config=config, registry=registry)
    assert not np.array_equal(image_array(with_vae, checkpoint="withvae", seed=3),
                              image_array(engine, checkpoint="tiny.safetensors", seed=3))


def test_names_from_users_never_leave_their_folder(tmp_path, registry):
    for bad in ("../secret", "a/b", "..", "", "x\x00y"):
        with pytest.raises(ModelNotFound):
            safe_child(tmp_path, bad)
    assert safe_child(tmp_path, "ok.safetensors") == (tmp_path / "ok.safetensors").resolve()
    for bad in ("../checkpoints/tiny", "/etc/passwd", "tiny/../../x"):
        with pytest.raises(ModelNotFound):
            registry.resolve(bad)


async def test_hashes_are_cached_by_path_size_and_mtime(tmp_path):
    import asyncio

    from generation.catalog import StoreHashCache
    from storage import open_store

    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x" * 1000)
    store = await open_store(tmp_path / "easel.db")
    try:
        cache = StoreHashCache(store.hash_cache, asyncio.get_running_loop())
        first = await asyncio.to_thread(sha256_file, path, cache)  # scans hash in a thread, as refresh does
        stat = path.stat()
        assert await store.hash_cache.get(path, stat.st_size, stat.st_mtime_ns) == first
        await store.hash_cache.put(path, stat.st_size, stat.st_mtime_ns, "cached-value")
        assert await asyncio.to_thread(sha256_file, path, cache) == "cached-value"  # not recomputed
        path.write_bytes(b"y" * 1001)  # changed: size and mtime differ, so it is hashed again
        assert await asyncio.to_thread(sha256_file, path, cache) == hashlib.sha256(b"y" * 1001).hexdigest()
    finally:
        await store.close()


def test_pipeline_cache_is_a_bounded_lru(registry):
    loaded = []

    def loader(info, device):
        loaded.append(info.name)
        return type("Loaded", (), {"info": info})()

    cache = PipelineCache(capacity=1, device=DeviceSpec.choose("cpu"), loader=loader)
    folder, single = registry.resolve("tiny"), registry.resolve("tiny.safetensors")
    cache.get(folder), cache.get(folder), cache.get(single), cache.get(folder)
    assert loaded == ["tiny", "tiny.safetensors", "tiny"] and cache.loads == 3
    two = PipelineCache(capacity=2, device=DeviceSpec.choose("cpu"), loader=loader)
    two.get(folder), two.get(single), two.get(folder)
    assert two.loads == 2 and two.most_recent == "tiny"


def test_cpu_runs_fp32():
    assert DeviceSpec.choose("cpu").dtype == torch.float32


async def test_refresh_mirrors_the_folders_into_the_database(models_copy, tmp_path):
    from storage import open_store

    config = make_config(models_copy, tmp_path / "data")
    registry = ModelRegistry.from_config(config, hash_cache=MemoryHashCache())
    store = await open_store(tmp_path / "easel.db")
    try:
        await refresh_models(registry, store)
        assert [c.name for c in await store.checkpoints.list()] == ["tiny", "tiny.safetensors"]
        assert await store.checkpoints.set_enabled("tiny.safetensors", False)
        embeddings = {e.trigger: e for e in await store.embeddings.list()}
        assert embeddings["widewidth"].status == "skipped" and "width 768" in embeddings["widewidth"].skip_reason
        assert embeddings["a1111pt"].status == "loaded" and embeddings["a1111pt"].vectors == 2
        (models_copy / "checkpoints" / "tiny.safetensors").unlink()
        await refresh_models(registry, store)
        assert [c.name for c in await store.checkpoints.list()] == ["tiny"]
        assert (await store.checkpoints.get("tiny")).enabled
    finally:
        await store.close()


def test_sdxl_checkpoints_are_listed_and_their_embeddings_judged_by_width(tmp_path):
    from generation.testing import write_test_model

    write_test_model(tmp_path / "models" / "checkpoints" / "xl", architecture="tiny-sdxl")
    write_embeddings(tmp_path / "models" / "embeddings")
    config = make_config(tmp_path / "models", tmp_path / "data", models={"default_checkpoint": "xl"})
    registry = ModelRegistry.from_config(config)
    registry.refresh()
    assert [c.architecture for c in registry.checkpoints] == ["tiny-sdxl", "tiny-sdxl"]  # folder, single file
    # clip_l (32) + clip_g (64) for the tiny SDXL model; SD 1.x files are skipped against it
    assert "width 32 does not match the text encoder's 96" in registry.embedding("a1111st").skip_reason
    assert Engine(config=config, registry=registry).check_request(tiny_request(checkpoint="xl")).checkpoint == "xl"


@pytest.mark.parametrize("name", ["sd1", "sd2", "sd2-base", "sdxl", "tiny-sd1", "tiny-sdxl"])
def test_diffusers_folders_are_told_apart_by_their_configs(name):
    from generation.architectures import config_dir
    from generation.checkpoints import folder_architecture

    # the shipped configs have a diffusers folder's layout (no weights); the scheduler tells SD 2.x v from base
    assert folder_architecture(config_dir(name)) == name


def test_embeddings_are_judged_against_every_checkpoint_family_present(tmp_path):
    from safetensors.torch import save_file

    from generation.testing import write_test_model

    models = tmp_path / "models"
    write_test_model(models / "checkpoints" / "tiny")
    write_test_model(models / "checkpoints" / "xl", architecture="tiny-sdxl")
    write_embeddings(models / "embeddings")
    save_file({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 64)}, str(models / "embeddings" / "xlemb.safetensors"))
    registry = ModelRegistry.from_config(make_config(models, tmp_path / "data"))
    registry.refresh()
    assert registry.embedding("a1111st").usable and registry.embedding("xlemb").usable
    assert registry.embedding("widewidth").skip_reason == "width 768 fits none of the checkpoints here (they need 32 or 96)"
    engine = Engine(config=make_config(models, tmp_path / "data"), registry=registry)
    engine.check_request(tiny_request(prompt="a1111st", checkpoint="tiny"))
    engine.check_request(tiny_request(prompt="xlemb", checkpoint="xl"))
    with pytest.raises(InvalidRequest, match="embedding xlemb has width 96; tiny needs 32"):
        engine.check_request(tiny_request(prompt="xlemb", checkpoint="tiny"))


def test_pickle_checkpoints_are_told_apart_without_reading_their_weights(tmp_path):
    from generation.architectures import detect_architecture
    from generation.checkpoints import scan_checkpoints
    from generation.testing import build_tiny_pipeline, ldm_state_dict

    pipe = build_tiny_pipeline(architecture="tiny-sdxl")
    weights = ldm_state_dict(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2)
    torch.save({"state_dict": weights}, tmp_path / "xl.ckpt")  # zip format: memory-mapped
    torch.save(weights, tmp_path / "old.ckpt", _use_new_zipfile_serialization=False)  # read whole
    found, skipped = scan_checkpoints(tmp_path, allow_pickle=True)
    assert [(c.name, c.format, c.architecture) for c in found] == [("old", "ckpt", "tiny-sdxl"), ("xl", "ckpt", "tiny-sdxl")]
    torch.save({"step": 3}, tmp_path / "junk.ckpt")
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion checkpoint"):
        detect_architecture(tmp_path / "junk.ckpt")


def test_an_a1111_yaml_beside_an_sd2_file_tells_base_from_v(tmp_path):
    from generation.checkpoints import with_sd2_config

    model = tmp_path / "model.safetensors"
    assert with_sd2_config("sd2", model) == "sd2"  # no config: the 768 v-prediction model, the common one
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n    linear_start: 0.00085\n")
    assert with_sd2_config("sd2", model) == "sd2"
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")  # v2-inference.yaml
    assert with_sd2_config("sd2", model) == "sd2-base"
    assert with_sd2_config("sd1", model) == "sd1"
