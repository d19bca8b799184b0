"""Upscalers: detection and loading of ESRGAN/Compact files, A1111's tiling, BGR feeding and size
rules. Every model is a tiny one written by generation.upscaler_testing; nothing is mocked."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from generation.errors import Canceled
from generation.upscaler_archs import detect_architecture
from generation.upscaler_testing import make_compact_state_dict, make_esrgan_state_dict, write_test_upscaler
from generation.upscalers import (
    LATENT_MODES,
    UpscalerCache,
    UpscalerError,
    UpscalerInfo,
    load_upscaler_model,
    postprocess_infotext,
    scan_upscalers,
    upscale_with_model,
    upscaler_names,
)

LANCZOS = Image.Resampling.LANCZOS


def _image(width: int, height: int, seed: int = 0, smooth: bool = True) -> Image.Image:
    rng = np.random.default_rng(seed)
    if smooth:  # photo-like: low-frequency content with some texture
        small = Image.fromarray(rng.integers(0, 256, (max(2, height // 10), max(2, width // 10), 3), dtype=np.uint8))
        base = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC)).astype(int)
        noise = rng.integers(-12, 13, (height, width, 3))
        return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _info(path, scan_dir=None, allow_pickle=False) -> UpscalerInfo:
    infos = scan_upscalers(scan_dir or path.parent, allow_pickle=allow_pickle)
    return next(i for i in infos if i.path == path)


def _reference_patch(model, image: Image.Image) -> np.ndarray:
    """A1111's upscale_pil_patch written out independently: RGB->BGR, /255, model, clamp, round."""
    array = np.asarray(image.convert("RGB"))[:, :, ::-1].transpose(2, 0, 1) / 255
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(array)).float().unsqueeze(0))
    out = 255.0 * np.moveaxis(out[0].clamp(0, 1).numpy(), 0, 2)
    return out.round().astype(np.uint8)[:, :, ::-1]


def _a1111_tiled(model, image: Image.Image, tile: int, overlap: int) -> np.ndarray:
    """A1111's split_grid + per-tile pass + combine_grid, holding every tile like A1111 does."""
    w, h = image.size
    cols = math.ceil((w - overlap) / (tile - overlap))
    rows = math.ceil((h - overlap) / (tile - overlap))
    dx = (w - tile) / (cols - 1) if cols > 1 else 0
    dy = (h - tile) / (rows - 1) if rows > 1 else 0
    grid = []
    for row in range(rows):
        y = int(row * dy)
        y = h - tile if y + tile >= h else y
        cells = []
        for col in range(cols):
            x = int(col * dx)
            x = w - tile if x + tile >= w else x
            out = Image.fromarray(np.ascontiguousarray(_reference_patch(model, image.crop((x, y, x + tile, y + tile)))))
            cells.append((x, out))
        grid.append((y, cells))
    s = grid[0][1][0][1].width // tile
    tw, ov, iw, ih = tile * s, overlap * s, w * s, h * s
    ramp = lambda n: (np.arange(n, dtype=np.float32) * 255 / n).astype(np.uint8)  # noqa: E731
    mask_w = Image.fromarray(np.ascontiguousarray(np.tile(ramp(ov).reshape(1, ov), (tw, 1))), "L")
    mask_h = Image.fromarray(np.ascontiguousarray(np.tile(ramp(ov).reshape(ov, 1), (1, iw))), "L")
    combined = Image.new("RGB", (iw, ih))
    for y, cells in grid:
        strip = Image.new("RGB", (iw, tw))
        for x, out in cells:
            if x * s == 0:
                strip.paste(out, (0, 0))
                continue
            strip.paste(out.crop((0, 0, ov, tw)), (x * s, 0), mask=mask_w)
            strip.paste(out.crop((ov, 0, tw, tw)), (x * s + ov, 0))
        if y * s == 0:
            combined.paste(strip, (0, 0))
            continue
        combined.paste(strip.crop((0, 0, iw, ov)), (0, y * s), mask=mask_h)
        combined.paste(strip.crop((0, ov, iw, tw)), (0, y * s + ov))
    return np.asarray(combined)


def _count_calls(model) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# ---------------------------------------------------------------------------------------------------
# Detection and loading


@pytest.mark.parametrize(
    ("kind", "options", "architecture", "scale", "first_in"),
    [
        ("esrgan-old", {}, "ESRGAN", 4, 3),
        ("esrgan-old", {"scale": 2}, "ESRGAN", 2, 3),
        ("esrgan-old", {"scale": 1, "num_blocks": 2}, "ESRGAN", 1, 3),
        ("esrgan-new", {}, "ESRGAN", 4, 3),
        ("esrgan-new", {"scale": 2}, "ESRGAN", 2, 12),  # RealESRGAN_x2plus: pixel unshuffle 2
        ("esrgan-new", {"scale": 1}, "ESRGAN", 1, 48),  # pixel unshuffle 4
        ("compact", {}, "Compact", 4, 3),
        ("compact", {"scale": 2, "num_conv": 3, "num_feat": 6}, "Compact", 2, 3),
    ],
)
def test_detects_architecture_and_scale(tmp_path, kind, options, architecture, scale, first_in):
    path = tmp_path / "model.safetensors"
    state = write_test_upscaler(path, kind, **options)
    first = "body.0.weight" if kind == "compact" else ("model.0.weight" if kind == "esrgan-old" else "conv_first.weight")
    assert state[first].shape[1] == first_in
    spec = detect_architecture({k: tuple(v.shape) for k, v in state.items()})
    assert (spec.architecture, spec.scale) == (architecture, scale)
    info = _info(path)
    assert (info.usable, info.architecture, info.scale, info.name) == (True, architecture, scale, "model")
    model = load_upscaler_model(path, allow_pickle=False)
    assert (model.architecture, model.scale) == (architecture, scale)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 10, 7))  # odd sizes: pixel-unshuffle models pad and crop
    assert out.shape == (1, 3, 10 * scale, 7 * scale)


def test_old_and_new_esrgan_layouts_are_the_same_network(tmp_path):
    write_test_upscaler(tmp_path / "old.safetensors", "esrgan-old", seed=3)
    write_test_upscaler(tmp_path / "new.safetensors", "esrgan-new", seed=3)
    old = load_upscaler_model(tmp_path / "old.safetensors", allow_pickle=False)
    new = load_upscaler_model(tmp_path / "new.safetensors", allow_pickle=False)
    x = torch.rand(1, 3, 12, 9)
    with torch.no_grad():
        assert torch.equal(old(x), new(x))


def test_unknown_architecture_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "swinir.safetensors"
    save_file({"layers.0.attn.qkv.weight": torch.zeros(4, 4), "conv_first.weight": torch.zeros(8, 3, 3, 3)}, str(path))
    info = _info(path)
    assert not info.usable
    assert "is not an ESRGAN or Real-ESRGAN Compact model" in info.skip_reason
    assert "spandrel" in info.skip_reason
    with pytest.raises(UpscalerError, match="not an ESRGAN or Real-ESRGAN Compact model"):
        load_upscaler_model(path, allow_pickle=False)


def test_wrong_shapes_and_channels_are_refused(tmp_path):
    from safetensors.torch import save_file

    state = make_compact_state_dict()
    state["body.1.weight"] = torch.ones(5)  # PReLU of 5 features after a 4-feature conv
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UpscalerError, match=r"body\.1\.weight has shape \[5\], expected \[4\]"):
        load_upscaler_model(tmp_path / "bad.safetensors", allow_pickle=False)
    state = make_esrgan_state_dict(layout="new")
    state["conv_last.weight"] = state["conv_last.weight"][:1].clone()
    state["conv_last.bias"] = state["conv_last.bias"][:1].clone()
    save_file(state, str(tmp_path / "gray.safetensors"))
    assert "only RGB" in _info(tmp_path / "gray.safetensors").skip_reason


def test_pickles_only_when_allowed(tmp_path):
    state = write_test_upscaler(tmp_path / "realesr.pth", "esrgan-new", wrap="params_ema", prefix="module.")
    info = _info(tmp_path / "realesr.pth")
    assert not info.usable and "pickle" in info.skip_reason
    with pytest.raises(UpscalerError, match="pickle"):
        load_upscaler_model(tmp_path / "realesr.pth", allow_pickle=False)
    with pytest.raises(UpscalerError, match="pickle"):
        UpscalerCache().upscale(_image(8, 8), info, 4)
    info = _info(tmp_path / "realesr.pth", allow_pickle=True)
    assert (info.usable, info.architecture, info.scale) == (True, "ESRGAN", 4)
    pickled = load_upscaler_model(tmp_path / "realesr.pth", allow_pickle=True)
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "same.safetensors"))
    flat = load_upscaler_model(tmp_path / "same.safetensors", allow_pickle=False)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(pickled(x), flat(x))
    # a pickle holding something other than tensors is refused by the restricted unpickler
    torch.save({"conv_first.weight": "text"}, tmp_path / "odd.pt")
    assert not _info(tmp_path / "odd.pt", allow_pickle=True).usable


def test_broken_files_are_listed_unusable_with_a_reason(tmp_path):
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    (tmp_path / "garbage.safetensors").write_bytes((40).to_bytes(8, "little") + b"{not json" + b" " * 40)
    write_test_upscaler(tmp_path / "cut.safetensors", "compact")
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    header = json.dumps({"x": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "ints.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    (tmp_path / "notes.txt").write_text("not a model")
    infos = {i.name: i for i in scan_upscalers(tmp_path, allow_pickle=False)}
    assert set(infos) == {"Lanczos", "Nearest", "short", "garbage", "cut", "ints"}
    assert "bad header" in infos["short"].skip_reason
    assert "unreadable header" in infos["garbage"].skip_reason
    assert "truncated" in infos["cut"].skip_reason
    assert "dtype I64" in infos["ints"].skip_reason
    for name in ("short", "garbage", "cut", "ints"):
        assert not infos[name].usable
        with pytest.raises(UpscalerError):
            load_upscaler_model(infos[name].path, allow_pickle=False)
    assert scan_upscalers(tmp_path / "missing", allow_pickle=False) == scan_upscalers(None, allow_pickle=False)


# ---------------------------------------------------------------------------------------------------
# One model pass: BGR, residual, tiling


@pytest.mark.parametrize(("size", "tile"), [((150, 100), 0), ((150, 100), 48), ((50, 30), 192)])
def test_deterministic_compact_is_nearest_plus_quarter(tmp_path, size, tile):
    path = tmp_path / "shift.safetensors"
    write_test_upscaler(path, "compact-shift")
    model = load_upscaler_model(path, allow_pickle=False)
    image = _image(*size, smooth=False)
    out = upscale_with_model(model, image, tile=tile, overlap=8)
    nearest = np.asarray(image.resize((size[0] * 4, size[1] * 4), Image.Resampling.NEAREST)).astype(int)
    # v/255 + 0.25, times 255 = v + 63.75, rounds to v + 64; clamped at 1.0 -> 255
    np.testing.assert_array_equal(np.asarray(out), np.minimum(nearest + 64, 255))


def test_model_is_fed_bgr_and_flipped_back(tmp_path):
    path = tmp_path / "compact.safetensors"
    write_test_upscaler(path, "compact", seed=5)
    model = load_upscaler_model(path, allow_pickle=False)
    image = _image(40, 30)
    ours = np.asarray(upscale_with_model(model, image, tile=0))
    np.testing.assert_array_equal(ours, _reference_patch(model, image))
    # the model is not channel-symmetric: feeding RGB would give another picture
    rgb = torch.from_numpy(np.asarray(image).transpose(2, 0, 1) / 255).float().unsqueeze(0)
    with torch.no_grad():
        as_rgb = (model(rgb)[0].clamp(0, 1).numpy().transpose(1, 2, 0) * 255.0).round().astype(np.uint8)
    assert np.abs(as_rgb.astype(int) - ours.astype(int)).mean() > 5


@pytest.mark.parametrize(("size", "tile", "overlap"), [((150, 100), 48, 8), ((97, 61), 32, 4), ((40, 30), 64, 8),
                                                       ((70, 50), 32, 0)])
def test_tiling_matches_a1111_grid_exactly(tmp_path, size, tile, overlap):
    path = tmp_path / "compact.safetensors"
    write_test_upscaler(path, "compact", seed=2, num_conv=2)
    model = load_upscaler_model(path, allow_pickle=False)
    image = _image(*size, seed=1)
    ours = np.asarray(upscale_with_model(model, image, tile=tile, overlap=overlap))
    np.testing.assert_array_equal(ours, _a1111_tiled(model, image, tile, overlap))


def test_tiled_esrgan_is_close_to_untiled(tmp_path):
    """Tiles see zero padding at their borders, so pixels within the network's receptive field
    (~18 input px for one RRDB block) of a tile edge differ; A1111 blends only `overlap` px. The
    honest bound: most pixels identical, the mean tiny, the worst pixel a few levels."""
    path = tmp_path / "esrgan.safetensors"
    write_test_upscaler(path, "esrgan-old", seed=1)
    model = load_upscaler_model(path, allow_pickle=False)
    image = _image(300, 200)
    untiled = np.asarray(upscale_with_model(model, image, tile=0)).astype(int)
    tiled = np.asarray(upscale_with_model(model, image, tile=64, overlap=8)).astype(int)
    assert tiled.shape == untiled.shape == (800, 1200, 3)
    diff = np.abs(tiled - untiled)
    assert diff.mean() < 0.5
    assert diff.max() <= 32
    assert (diff == 0).mean() > 0.9


def test_cancel_is_checked_between_tiles(tmp_path):
    path = tmp_path / "compact.safetensors"
    write_test_upscaler(path, "compact")
    model = load_upscaler_model(path, allow_pickle=False)
    calls = _count_calls(model)
    checks = [0]

    def cancel() -> bool:
        checks[0] += 1
        return checks[0] > 3

    with pytest.raises(Canceled):
        upscale_with_model(model, _image(150, 100), tile=48, overlap=8, cancel=cancel)
    assert calls[0] == 2  # one check before starting, then one before each tile


def test_runs_in_another_dtype(tmp_path):
    path = tmp_path / "shift.safetensors"
    write_test_upscaler(path, "compact-shift")
    cache = UpscalerCache(dtype=torch.bfloat16, tile=0)
    image = _image(20, 16)
    out = np.asarray(cache.upscale(image, _info(path), 4)).astype(int)
    nearest = np.asarray(image.resize((80, 64), Image.Resampling.NEAREST)).astype(int)
    assert np.abs(out - np.minimum(nearest + 64, 255)).max() <= 2  # bf16 holds v/255 to ~3 digits


# ---------------------------------------------------------------------------------------------------
# A1111 size rules


def test_upscale_runs_the_model_until_big_enough(tmp_path):
    write_test_upscaler(tmp_path / "two.safetensors", "compact", scale=2)
    write_test_upscaler(tmp_path / "one.safetensors", "compact", scale=1)
    cache = UpscalerCache(tile=0)
    two, one = _info(tmp_path / "two.safetensors"), _info(tmp_path / "one.safetensors")
    calls = _count_calls(cache.model(two))
    image = _image(40, 24)

    assert cache.upscale(image, two, 4).size == (160, 96)
    assert calls[0] == 2

    calls[0] = 0
    out = cache.upscale(image, two, 3)  # 80x48 < 120x72, 160x96 >= it, then LANCZOS down
    assert calls[0] == 2 and out.size == (120, 72)
    twice = upscale_with_model(cache.model(two), upscale_with_model(cache.model(two), image, tile=0), tile=0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(twice.resize((120, 72), resample=LANCZOS)))

    calls[0] = 0
    out = cache.upscale(_image(45, 24), two, 2)  # dest int(90)//8*8 = 88: one pass (90) is enough
    assert calls[0] == 1 and out.size == (88, 48)

    one_calls = _count_calls(cache.model(one))
    out = cache.upscale(image, one, 4)  # a 1x model does not grow the image: one pass, then LANCZOS
    assert one_calls[0] == 1 and out.size == (160, 96)
    once = upscale_with_model(cache.model(one), image, tile=0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(once.resize((160, 96), resample=LANCZOS)))


def test_resize_follows_a1111_resize_image(tmp_path):
    write_test_upscaler(tmp_path / "two.safetensors", "compact", scale=2)
    infos = {i.name: i for i in scan_upscalers(tmp_path, allow_pickle=False)}
    cache = UpscalerCache(tile=0)
    image = _image(40, 24)

    expected = image.resize((100, 60), resample=LANCZOS)
    np.testing.assert_array_equal(np.asarray(cache.resize(image, 100, 60, None)), np.asarray(expected))
    np.testing.assert_array_equal(np.asarray(cache.resize(image, 100, 60, UpscalerInfo("None", None, None, "builtin"))),
                                  np.asarray(expected))

    # Lanczos: scale 2.5 -> do_upscale to 100x60 -> LANCZOS to dest 96x56 -> LANCZOS to 100x60
    for name, resample in (("Lanczos", LANCZOS), ("Nearest", Image.Resampling.NEAREST)):
        step = image.resize((100, 60), resample=resample).resize((96, 56), resample=LANCZOS)
        out = cache.resize(image, 100, 60, infos[name])
        np.testing.assert_array_equal(np.asarray(out), np.asarray(step.resize((100, 60), resample=LANCZOS)))

    calls = _count_calls(cache.model(infos["two"]))
    out = cache.resize(image, 100, 60, infos["two"])
    assert out.size == (100, 60) and calls[0] == 2
    out = cache.resize(image, 30, 20, infos["two"])  # smaller: no model, plain LANCZOS
    assert calls[0] == 2
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image.resize((30, 20), resample=LANCZOS)))
    gray = image.convert("L")  # A1111 never upscales mode L images with a model
    assert cache.resize(gray, 80, 48, infos["two"]).size == (80, 48) and calls[0] == 2


# ---------------------------------------------------------------------------------------------------
# Catalog, cache, infotext


def test_names_in_a1111_order_and_conflicts(tmp_path):
    for name in ("b", "A", "c", "Lanczos", "dup"):
        write_test_upscaler(tmp_path / f"{name}.safetensors", "compact")
    write_test_upscaler(tmp_path / "dup.pth", "compact")
    write_test_upscaler(tmp_path / "zz.pth", "compact")
    infos = scan_upscalers(tmp_path, allow_pickle=True)
    assert [i.name for i in infos[:2]] == ["Lanczos", "Nearest"] and infos[0].path is None
    assert upscaler_names(infos) == ["Lanczos", "Nearest", "A", "b", "c", "dup", "zz"]
    by_file = {i.path.name: i for i in infos if i.path}
    assert not by_file["Lanczos.safetensors"].usable and "built-in" in by_file["Lanczos.safetensors"].skip_reason
    assert by_file["dup.safetensors"].usable and not by_file["dup.pth"].usable
    assert upscaler_names(scan_upscalers(tmp_path, allow_pickle=False)) == ["Lanczos", "Nearest", "A", "b", "c", "dup"]


def test_cache_evicts_least_recently_used(tmp_path):
    for name in ("a", "b", "c"):
        write_test_upscaler(tmp_path / f"{name}.safetensors", "compact")
    infos = {i.name: i for i in scan_upscalers(tmp_path, allow_pickle=False)}
    cache = UpscalerCache(capacity=2)
    first = cache.model(infos["a"])
    cache.model(infos["b"])
    assert cache.model(infos["a"]) is first  # hit, and now most recent
    cache.model(infos["c"])  # evicts b
    assert [p.name for p in cache.loaded] == ["a.safetensors", "c.safetensors"]
    assert cache.model(infos["a"]) is first
    assert cache.model(infos["b"]) is not None and [p.name for p in cache.loaded] == ["a.safetensors", "b.safetensors"]


def test_postprocess_infotext_and_latent_modes():
    assert postprocess_infotext(4, "R-ESRGAN 4x+") == "Postprocess upscale by: 4, Postprocess upscaler: R-ESRGAN 4x+"
    assert postprocess_infotext(4.0, "x") == "Postprocess upscale by: 4, Postprocess upscaler: x"
    assert postprocess_infotext(2.5, "a, b") == 'Postprocess upscale by: 2.5, Postprocess upscaler: "a, b"'
    with pytest.raises(ValueError):
        postprocess_infotext(float("nan"), "x")
    assert LATENT_MODES == {
        "Latent": ("bilinear", False),
        "Latent (antialiased)": ("bilinear", True),
        "Latent (bicubic)": ("bicubic", False),
        "Latent (bicubic antialiased)": ("bicubic", True),
        "Latent (nearest)": ("nearest", False),
        "Latent (nearest-exact)": ("nearest-exact", False),
    }


# --------------------------------------------------------------------------- upscale jobs in the engine


def _upscale_engine(models_dir, tmp_path):
    from conftest import make_config
    from generation.engine import Engine
    from generation.registry import ModelRegistry

    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "tiny").symlink_to(models_dir / "checkpoints" / "tiny")
    write_test_upscaler(root / "upscalers" / "2x-tiny.safetensors", "esrgan-new", scale=2)
    config = make_config(root, tmp_path / "data", models={"upscaler_tile": 24, "upscaler_tile_overlap": 4})
    registry = ModelRegistry.from_config(config)
    registry.refresh()
    return Engine(config=config, registry=registry)


def test_upscale_jobs_check_cost_and_batch_like_their_alone_runs(models_dir, tmp_path):
    """Two same-size upscales in one batch go through the model tile by tile together and get what
    each gets alone; the key, cost and affinity state come from the upscaler, factor and size."""
    from generation.engine import BatchItem, upscaler_state
    from generation.errors import ModelNotFound
    from generation.requests import GenerationRequest
    from generation.scheduler import job_cost

    engine = _upscale_engine(models_dir, tmp_path)
    paths = []
    for index, colour in enumerate(((200, 30, 30), (20, 160, 90))):
        path = tmp_path / f"source{index}.png"
        noise = Image.effect_noise((40, 32), 40).convert("RGB")
        Image.blend(noise, Image.new("RGB", (40, 32), colour), 0.5).save(path)
        paths.append(path)
    requests = [GenerationRequest(prompt="", mode="upscale", init_image=str(path), width=40, height=32,
                                  upscaler="2x-tiny", upscale_by=3.0, seed=1) for path in paths]
    checked = engine.check(requests[0])
    assert checked.batch_key == engine.check(requests[1]).batch_key == ("upscale", "2x-tiny", 3.0, 40, 32)
    assert checked.cost == job_cost(120, 96, 1, 1) and checked.model_state == upscaler_state("2x-tiny")
    together = engine.run_batch([BatchItem(key=i, request=r) for i, r in enumerate(requests)])
    for index, request in enumerate(requests):
        [alone] = engine.generate(request)
        assert alone.image.size == (120, 96)  # a 2x model twice (4x), then LANCZOS to int(40 * 3) // 8 * 8
        # one float rounding apart at most: a batched convolution may sum in another order
        difference = np.abs(np.asarray(alone.image, dtype=np.int16) - np.asarray(together[index][0].image, np.int16))
        assert difference.max() <= 1 and (difference == 0).mean() > 0.99
        assert alone.postprocessing == "Postprocess upscale by: 3, Postprocess upscaler: 2x-tiny"
    with pytest.raises(ModelNotFound, match="unknown upscaler '3x-tiny'; did you mean 2x-tiny"):
        engine.check(GenerationRequest(prompt="", mode="upscale", init_image="x", width=8, height=8,
                                       upscaler="3x-tiny"))
