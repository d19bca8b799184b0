"""Inpainting as A1111's inpaint tab (v1.10): mask rules, blur, crop boxes, fill, overlay, and the engine.

Pure rules are checked against values worked out by hand or by an independent computation in the
test; the mask blur against outputs of OpenCV 4.10's cv2.GaussianBlur (what A1111 calls). Engine
tests run the tiny random-weights model: its pictures mean nothing, so they check what must hold
whatever the weights: pixels outside the mask are the source's exactly, the masked content reaches
the initial latents as A1111 makes them, the crop is pasted where A1111 pastes it, batches equal
single runs, and the infotext carries A1111's keys.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from generation.engine import BatchItem, _LatentBlend, _pixels
from generation.pipelines import encode_image_mean
from generation.infotext import parse_infotext, to_request_fields
from generation.inpainting import (
    apply_overlay,
    blur_kernel_size,
    blur_mask,
    create_binary_mask,
    expand_crop_region,
    fill,
    flatten,
    gaussian_kernel_q8,
    get_crop_region,
    latent_mask,
    make_overlay,
    prepare_inpaint,
    resize_image,
)

from conftest import tiny_request


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    """Per pixel, the largest channel difference."""
    return np.abs(pixels(a) - pixels(b)).max(axis=2)


def pattern(width: int, height: int, seed: int = 0) -> Image.Image:
    """A picture with structure everywhere (so any change shows)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([(xs * 255) // max(width - 1, 1), (ys * 255) // max(height - 1, 1), (xs + ys) % 256], axis=2)
    noise = rng.integers(0, 40, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


@pytest.fixture
def files(tmp_path):
    """save(name, image) -> path string, in this test's folder."""

    def save(name: str, image: Image.Image) -> str:
        path = tmp_path / name
        image.save(path)
        return str(path)

    return save


# --------------------------------------------------------------------------- the mask


def test_binary_mask_follows_a1111():
    # An RGBA mask that is not fully opaque: its alpha, thresholded above 128.
    rgba = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    for x, alpha in enumerate((0, 128, 129, 255)):
        rgba.putpixel((x, 0), (0, 0, 0, alpha))
    assert list(create_binary_mask(rgba).get_flattened_data()) == [0, 0, 255, 255]
    # A fully opaque RGBA, an RGB or an L mask: its gray levels, not thresholded (white = repaint).
    opaque = Image.new("RGBA", (2, 1), (100, 100, 100, 255))
    assert list(create_binary_mask(opaque).get_flattened_data()) == [100, 100]
    gray = Image.new("L", (2, 1), 77)
    assert list(create_binary_mask(gray).get_flattened_data()) == [77, 77]
    assert create_binary_mask(Image.new("RGB", (1, 1), (255, 255, 255))).getpixel((0, 0)) == 255


def test_transparent_parts_of_the_init_image_become_white():
    image = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    image.putpixel((1, 0), (10, 20, 30, 0))
    assert list(flatten(image).get_flattened_data()) == [(10, 20, 30), (255, 255, 255)]


# A 1 x 24 step edge and a point image blurred by cv2.GaussianBlur (OpenCV 4.10) as A1111 does.
CV2_STEP_EDGE = {
    1: [255, 255, 255, 255, 255, 255, 255, 255, 255, 254, 240, 178, 77, 15, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    2: [255, 255, 255, 255, 255, 255, 255, 253, 246, 229, 198, 153, 102, 57, 26, 9, 2, 0, 0, 0, 0, 0, 0, 0],
    4: [255, 255, 254, 252, 248, 243, 234, 223, 207, 188, 165, 140, 115, 90, 67, 48, 32, 21, 12, 7, 3, 1, 0, 0],
}
CV2_POINTS_BLUR_1 = [[41, 25, 6, 1, 1, 0, 0, 0, 0], [25, 15, 4, 4, 6, 3, 1, 0, 0], [6, 4, 4, 15, 25, 15, 3, 0, 0],
                     [0, 1, 6, 25, 41, 25, 6, 0, 0], [0, 0, 3, 15, 25, 15, 3, 0, 0], [0, 0, 1, 3, 6, 3, 1, 0, 0],
                     [0, 0, 0, 0, 1, 0, 0, 0, 0]]


@pytest.mark.parametrize("radius", sorted(CV2_STEP_EDGE))
def test_mask_blur_is_opencvs_to_the_bit(radius):
    edge = np.zeros((1, 24), np.uint8)
    edge[:, :12] = 255
    assert np.array(blur_mask(Image.fromarray(edge), radius)).tolist()[0] == CV2_STEP_EDGE[radius]


def test_mask_blur_runs_along_both_axes_with_reflected_borders():
    points = np.zeros((7, 9), np.uint8)
    points[3, 4] = points[0, 0] = 255
    assert np.array(blur_mask(Image.fromarray(points), 1)).tolist() == CV2_POINTS_BLUR_1


def test_blur_kernel_and_width():
    assert [blur_kernel_size(r) for r in (1, 2, 4, 8, 64)] == [7, 11, 21, 41, 321]
    for radius in (1, 3, 4, 16, 64):
        kernel = gaussian_kernel_q8(blur_kernel_size(radius), radius)
        assert kernel.sum() == 256 and list(kernel) == list(kernel[::-1])  # (OpenCV: not always peaked)
    mask = box_mask((96, 96), (40, 40, 56, 56))
    assert blur_mask(mask, 0) is mask
    widths = []
    for radius in (1, 2, 4, 8):
        row = np.array(blur_mask(mask, radius))[48]
        soft = np.flatnonzero((row > 0) & (row < 255))
        widths.append(len(soft))
        # The blur reaches at most the kernel's half width past the edge.
        half = blur_kernel_size(radius) // 2
        assert row[: 40 - half].max() == 0 and row[56 + half:].max() == 0
    assert widths == sorted(widths) and widths[0] < widths[-1]


# --------------------------------------------------------------------------- only masked: boxes


def reference_box(mask: np.ndarray, pad: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The crop box written from A1111's description, not its code: the bounding box of the
    non-zero pixels grown by `pad` inside the image, then the short side grown (by the truncated
    difference, the odd pixel after) to width:height, moved back inside, the far edge clamped."""
    rows, cols = np.nonzero(mask)
    image_h, image_w = mask.shape
    left, right = max(int(cols.min()) - pad, 0), min(int(cols.max()) + 1 + pad, image_w)
    top, bottom = max(int(rows.min()) - pad, 0), min(int(rows.max()) + 1 + pad, image_h)

    def grow(lo, hi, length, limit):
        extra = int(length - (hi - lo))
        lo, hi = lo - extra // 2, hi + (extra - extra // 2)
        over = max(hi - limit, 0)
        lo, hi = lo - over, hi - over
        if lo < 0:
            lo, hi = 0, hi - lo
        return lo, min(hi, limit)

    if (right - left) / (bottom - top) > width / height:
        top, bottom = grow(top, bottom, (right - left) / (width / height), image_h)
    else:
        left, right = grow(left, right, (bottom - top) * (width / height), image_w)
    return left, top, right, bottom


@pytest.mark.parametrize("box, pad, size, image, expected", [
    # a 20 x 10 mask in the middle of 256 x 256, square processing: the height grows to 20
    ((100, 100, 120, 110), 0, (64, 64), (256, 256), (100, 95, 120, 115)),
    # the same with 8 px padding: 36 x 26, grown to 36 x 36
    ((100, 100, 120, 110), 8, (64, 64), (256, 256), (92, 87, 128, 123)),
    # 2:1 processing: a 20 x 20 mask becomes 40 x 20
    ((100, 100, 120, 120), 0, (128, 64), (256, 256), (90, 100, 130, 120)),
    # 1:2 processing: becomes 20 x 40
    ((100, 100, 120, 120), 0, (64, 128), (256, 256), (100, 90, 120, 130)),
    # at the right edge: shifted back inside
    ((240, 100, 256, 140), 0, (128, 64), (256, 256), (176, 100, 256, 140)),
    # at the top edge with padding: clamped to 0, then grown downwards
    ((10, 0, 60, 10), 4, (64, 64), (200, 100), (6, 0, 64, 58)),
    # wider than the image allows: the far edge is clamped, the ratio stays off
    ((0, 10, 200, 20), 0, (64, 64), (200, 100), (0, 0, 200, 100)),
])
def test_crop_region_examples(box, pad, size, image, expected):
    mask = box_mask(image, box)
    region = expand_crop_region(get_crop_region(mask, pad), *size, *image)
    assert region == expected == reference_box(np.array(mask), pad, *size)


def test_crop_regions_of_random_masks_match_the_reference():
    rng = np.random.default_rng(3)
    for _ in range(200):
        image_w, image_h = (int(v) for v in rng.integers(16, 300, size=2))
        mask = np.zeros((image_h, image_w), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            x, y = int(rng.integers(0, image_w)), int(rng.integers(0, image_h))
            mask[y:y + int(rng.integers(1, 60)), x:x + int(rng.integers(1, 60))] = int(rng.integers(1, 256))
        width, height = (int(v) * 8 for v in rng.integers(8, 40, size=2))
        pad = int(rng.choice([0, 4, 32, 100]))
        region = expand_crop_region(get_crop_region(Image.fromarray(mask), pad), width, height, image_w, image_h)
        assert region == reference_box(mask, pad, width, height)


def test_a_blank_mask_has_no_crop_region():
    assert get_crop_region(Image.new("L", (32, 32), 0), 8) is None


def test_resize_modes():
    tall = pattern(20, 40)
    assert resize_image(0, tall, 30, 30).size == (30, 30)
    covered = resize_image(1, tall, 40, 40)  # scaled to 40 x 80, the middle 40 rows kept
    assert np.array_equal(pixels(covered), pixels(tall.resize((40, 80), Image.LANCZOS).crop((0, 20, 40, 60))))
    filled = np.array(resize_image(2, box_mask((20, 40), (0, 0, 20, 40)), 40, 40))  # 20 x 40 centred, sides stretched
    assert filled.shape == (40, 40, 3) and filled.min() == 255


# --------------------------------------------------------------------------- fill and overlay


def test_fill_takes_the_colours_around_the_mask():
    image = Image.new("RGB", (64, 32), (200, 30, 30))
    image.paste((20, 40, 220), (32, 0, 64, 32))
    mask = box_mask((64, 32), (32, 0, 64, 32))
    filled = pixels(fill(image, mask))
    assert np.array_equal(filled[:, :32], pixels(image)[:, :32])  # unmasked: unchanged
    assert np.abs(filled[:, 32:] - np.array([200, 30, 30])).max() <= 6  # masked: the red around it


def test_overlay_keeps_the_source_outside_the_mask():
    source, generated = pattern(48, 40, 1), pattern(48, 40, 2)
    mask = blur_mask(box_mask((48, 40), (10, 10, 30, 30)), 3)
    result = apply_overlay(generated, None, make_overlay(source, mask))
    soft = np.array(mask)
    diff_source, diff_generated = changed(result, source), changed(result, generated)
    assert diff_source[soft == 0].max() == 0
    assert diff_generated[soft == 255].max() == 0
    assert diff_source[soft == 255].max() > 0


def test_latent_mask_is_bicubic_then_rounded():
    # Latent column 4 covers pixels 32-39; the mask's edge falls inside it.
    rows = {edge: latent_mask(box_mask((64, 64), (0, 0, edge, 64)), 8, 8)[0].tolist() for edge in (34, 36)}
    assert rows[34] == [1, 1, 1, 1, 0, 0, 0, 0]  # bicubic gives 67 / 255: rounds to 0
    assert rows[36] == [1, 1, 1, 1, 1, 0, 0, 0]  # 128 / 255: rounds to 1
    assert set(np.unique(latent_mask(blur_mask(box_mask((64, 64), (0, 0, 36, 64)), 8), 8, 8))) <= {0.0, 1.0}


def test_prepare_inpaint_whole_picture():
    source = pattern(96, 80)
    mask = box_mask((96, 80), (30, 20, 60, 50))
    job = prepare_inpaint(source, mask, width=64, height=64, mask_blur=4, masked_content="original")
    assert job.image.size == job.image_mask.size == (64, 64) and job.paste_to is None
    assert np.array_equal(pixels(job.image), pixels(source.resize((64, 64), Image.LANCZOS)))
    expected_mask = blur_mask(mask, 4).resize((64, 64), Image.LANCZOS)
    assert np.array_equal(np.array(job.image_mask), np.array(expected_mask))
    # the overlay's alpha is 255 - min(2 x mask, 255)
    doubled = np.minimum(np.array(expected_mask).astype(int) * 2, 255)
    assert np.array_equal(np.array(job.overlay)[..., 3], 255 - doubled)
    assert job.extra == (("Mask blur", 4),)

    filled = prepare_inpaint(source, mask, width=64, height=64, mask_blur=0, masked_content="fill")
    resized = source.resize((64, 64), Image.LANCZOS)
    outside = np.array(filled.image_mask) == 0
    assert np.array_equal(pixels(filled.image)[outside], pixels(resized)[outside])
    assert changed(filled.image, resized)[~outside].mean() > 10  # the model starts from the fill
    assert filled.extra == (("Masked content", "fill"),)


def test_prepare_inpaint_inverts_the_mask():
    source, mask = pattern(64, 64), box_mask((64, 64), (16, 16, 48, 48))
    job = prepare_inpaint(source, mask, width=64, height=64, mask_blur=0, mask_invert=True)
    assert np.array_equal(np.array(job.image_mask), 255 - np.array(mask))
    assert job.extra == (("Mask mode", "Inpaint not masked"),)


# --------------------------------------------------------------------------- the engine


def inpaint(engine, **fields):
    return engine.generate(tiny_request(mode="inpaint", strength=0.75, steps=6, **fields))


@pytest.fixture
def spy(monkeypatch):
    """Records the arguments and raw output images of every pipeline call."""
    from diffusers import StableDiffusionImg2ImgPipeline

    calls = []
    original = StableDiffusionImg2ImgPipeline.__call__

    def record(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        calls.append((kwargs, list(output.images)))
        return output

    monkeypatch.setattr(StableDiffusionImg2ImgPipeline, "__call__", record)
    return calls


@pytest.mark.parametrize("blur", [0, 4, 12])
def test_outside_the_blurred_mask_the_source_is_kept_exactly(engine, files, blur):
    source = pattern(64, 64)
    mask = box_mask((64, 64), (16, 24, 40, 48))
    result = inpaint(engine, init_image=files("src.png", source), mask=files("mask.png", mask), mask_blur=blur,
                     seed=4)[0]
    soft, hard = np.array(blur_mask(mask, blur)), np.array(mask)
    diff = changed(result.image, source)
    assert diff[soft == 0].max() == 0  # untouched, to the byte
    assert diff[hard == 255].mean() > 20  # repainted
    if blur:  # the blur lets the new paint fade out past the mask's edge
        assert (soft > 0).sum() > (hard > 0).sum() and diff[(soft > 0) & (hard == 0)].max() > 0


def test_inverted_mask_repaints_the_rest(engine, files):
    source, mask = pattern(64, 64), box_mask((64, 64), (16, 16, 48, 48))
    result = inpaint(engine, init_image=files("src.png", source), mask=files("mask.png", mask), mask_blur=0,
                     mask_invert=True, seed=4)[0]
    diff = changed(result.image, source)
    assert diff[16:48, 16:48].max() == 0
    assert diff[np.array(mask) == 0].mean() > 20
    assert "Mask mode: Inpaint not masked" in result.infotext


def test_masked_content_reaches_the_initial_latents_as_in_a1111(engine, registry, files, spy):
    from diffusers.utils.torch_utils import randn_tensor

    source = pattern(64, 64)
    mask = box_mask((64, 64), (16, 16, 48, 40))
    paths = dict(init_image=files("src.png", source), mask=files("mask.png", mask))
    results = {}
    for content in ("original", "fill", "latent noise", "latent nothing"):
        results[content] = inpaint(engine, masked_content=content, mask_blur=4, seed=21, **paths)[0].image
    initial = {content: kwargs["image"][0] for content, (kwargs, _) in zip(results, spy)}
    pipe = engine.cache.get(registry.resolve("tiny")).pipeline_for("img2img")
    job = prepare_inpaint(source, mask, width=64, height=64, mask_blur=4, masked_content="fill")
    paint = torch.from_numpy(latent_mask(job.image_mask, 8, 8)).bool().expand(4, 8, 8)
    with torch.inference_mode():
        original = encode_image_mean(pipe, _pixels(source))[0]
        filled = encode_image_mean(pipe, _pixels(job.image))[0]
    noise = randn_tensor((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(21))[0]
    assert torch.equal(initial["original"], original)  # the picture as it is
    assert torch.equal(initial["fill"], filled)  # the filled picture
    assert torch.equal(initial["latent noise"][paint], noise[paint])  # the seed's own noise in the mask
    assert torch.equal(initial["latent noise"][~paint], filled[~paint])  # (after the fill, as in A1111)
    assert initial["latent nothing"][paint].abs().max() == 0
    assert torch.equal(initial["latent nothing"][~paint], filled[~paint])
    inside = np.array(mask) == 255
    for content in ("fill", "latent noise", "latent nothing"):
        assert changed(results[content], results["original"])[inside].max() > 0, content


def test_only_masked_pastes_the_crop_back_into_the_large_picture(engine, files, spy):
    source = pattern(200, 120, 5)
    mask = box_mask((200, 120), (140, 30, 160, 60))  # 20 x 30, near the right edge
    result = inpaint(engine, init_image=files("src.png", source), mask=files("mask.png", mask), mask_blur=4,
                     only_masked=True, only_masked_padding=8, width=64, height=64, seed=6)[0]
    assert result.image.size == (200, 120)  # A1111 returns the init image's size
    soft = np.array(blur_mask(mask, 4))
    x1, y1, x2, y2 = reference_box(soft, 8, 64, 64)
    # the blur reaches 10 px (130-170 x 20-70), padded by 8 (122-178 x 12-78), widened to 66 x 66
    assert (x1, y1, x2, y2) == (117, 12, 183, 78)
    diff = changed(result.image, source)
    outside_box = np.ones(diff.shape, bool)
    outside_box[y1:y2, x1:x2] = False
    assert diff[outside_box].max() == 0 and diff[soft == 0].max() == 0
    assert diff[np.array(mask) == 255].mean() > 20
    # What the model painted (64 x 64) goes back at the box, through A1111's overlay of the blurred mask.
    (kwargs, raw), = spy
    assert raw[0].size == (64, 64)
    canvas = Image.new("RGBA", source.size)
    canvas.paste(resize_image(1, raw[0], x2 - x1, y2 - y1), (x1, y1))
    canvas.alpha_composite(make_overlay(source, Image.fromarray(soft)))
    assert changed(result.image, canvas.convert("RGB")).max() == 0
    text = result.infotext
    assert "Mask blur: 4, Inpaint area: Only masked, Masked area padding: 8, Version" in text


def test_only_masked_with_another_aspect_ratio(engine, files):
    source = pattern(160, 160, 7)
    mask = box_mask((160, 160), (60, 60, 80, 80))
    job = prepare_inpaint(source, mask, width=128, height=64, mask_blur=0, only_masked=True, only_masked_padding=4)
    assert job.paste_to == (42, 56, 56, 28)  # 56-84 padded: 28 x 28, grown by 14 on each side to 2:1
    assert job.image.size == job.image_mask.size == (128, 64)
    result = inpaint(engine, init_image=files("src.png", source), mask=files("mask.png", mask), mask_blur=0,
                     only_masked=True, only_masked_padding=4, width=128, height=64, seed=2)[0]
    diff = changed(result.image, source)
    assert result.image.size == (160, 160) and diff[np.array(mask) == 0].max() == 0 and diff[60:80, 60:80].mean() > 20


def test_only_masked_on_a_blank_mask_is_img2img_as_in_a1111(engine, files):
    source = pattern(64, 64)
    result = inpaint(engine, init_image=files("src.png", source), mask=files("mask.png", Image.new("L", (64, 64), 0)),
                     only_masked=True, masked_content="fill", seed=3)[0]
    assert result.image.size == (64, 64)
    assert changed(result.image, source).mean() > 20  # no mask, no overlay: the whole picture redrawn
    assert "Inpaint area" not in result.infotext and "Masked content" not in result.infotext


def test_a_batch_of_inpaint_jobs_equals_each_alone(engine, files):
    source, other = pattern(64, 64), pattern(96, 80, 9)
    mask, other_mask = box_mask((64, 64), (8, 8, 40, 40)), box_mask((96, 80), (50, 10, 70, 30))
    variants = [
        dict(seed=100),
        dict(seed=200, count=2, masked_content="latent noise", mask_blur=8),
        dict(seed=300, mask_invert=True, mask_blur=0, masked_content="fill"),
        dict(seed=400, masked_content="latent nothing", only_masked=True, only_masked_padding=16,
             init_image=files("other.png", other), mask=files("other-mask.png", other_mask)),
    ]
    paths = dict(init_image=files("src.png", source), mask=files("mask.png", mask))
    requests = [tiny_request(mode="inpaint", strength=0.75, steps=6, **{**paths, **changes}) for changes in variants]
    keys = {engine.check(request).batch_key for request in requests}
    assert len(keys) == 1  # the inpaint options do not split batches
    items = [BatchItem(key=i, request=request) for i, request in enumerate(requests)]
    batch = engine.run_batch(items)
    for i, request in enumerate(requests):
        alone = engine.generate(request)
        assert [image.seed for image in batch[i]] == [image.seed for image in alone]
        for together, single in zip(batch[i], alone):
            assert together.image.size == single.image.size
            assert changed(together.image, single.image).max() <= 1  # within 1/255
            assert together.infotext == single.infotext


def test_the_blend_is_diffusers_inpaint_blend(engine, registry):
    """Between steps the kept latents are re-noised to the next step exactly as diffusers' inpaint
    pipeline does for a 4-channel UNet (which is A1111's for Euler); checked on the tiny model
    against that pipeline, given the same latents, mask and noise."""
    from diffusers.utils.torch_utils import randn_tensor

    from generation.samplers import make_scheduler, resolve_sampler

    loaded = engine.cache.get(registry.resolve("tiny"))
    img2img, inpaint_pipe = loaded.pipeline_for("img2img"), loaded.pipeline_for("inpaint")
    seeds = [5, 6]
    init = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    paint = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    noise = torch.cat([randn_tensor((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])
    common = dict(prompt=["a red cat", "a red cat"], num_inference_steps=6, strength=0.7, guidance_scale=7.0,
                  output_type="np")
    for sampler in ("Euler", "Euler a", "DPM++ 2M", "DDIM", "DPM++ 2M SDE", "Heun"):
        choice = resolve_sampler(sampler)
        blend = _LatentBlend(init=init, noise=noise, keep=1 - paint)
        img2img.scheduler = make_scheduler(choice, loaded.scheduler_config, seeds=seeds, steps=6)
        blend.watch(img2img.scheduler)
        ours = img2img(image=init, generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                       callback_on_step_end=lambda pipe, i, t, k: {"latents": blend.after_step(pipe, i, k["latents"])},
                       **common).images
        inpaint_pipe.scheduler = make_scheduler(choice, loaded.scheduler_config, seeds=seeds, steps=6)
        theirs = inpaint_pipe(image=init, masked_image_latents=init, width=64, height=64,
                              mask_image=paint.repeat_interleave(8, 2).repeat_interleave(8, 3),
                              generator=[torch.Generator("cpu").manual_seed(s) for s in seeds], **common).images
        assert np.abs(ours - theirs).max() < 1e-5, sampler


def test_the_blend_keeps_the_init_latents_in_the_end():
    from generation.samplers import make_scheduler, resolve_sampler

    from diffusers import EulerDiscreteScheduler

    scheduler = make_scheduler(resolve_sampler("Euler"), dict(EulerDiscreteScheduler().config))
    scheduler.set_timesteps(4)
    init, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., :4] = 1
    blend = _LatentBlend(init=init, noise=noise, keep=keep)
    pipe = type("Pipe", (), {"scheduler": scheduler, "num_timesteps": 4})()
    latents = torch.randn(1, 4, 8, 8)
    middle = blend.after_step(pipe, 0, latents)
    assert torch.allclose(middle[..., :4], (init + scheduler.sigmas[1] * noise)[..., :4])
    assert torch.equal(middle[..., 4:], latents[..., 4:])
    final = blend.after_step(pipe, 3, latents)
    assert torch.equal(final[..., :4], init[..., :4]) and torch.equal(final[..., 4:], latents[..., 4:])


# --------------------------------------------------------------------------- infotext


@pytest.mark.parametrize("options, written", [
    (dict(), "Denoising strength: 0.75, Mask blur: 4, Version"),
    (dict(mask_blur=0), "Denoising strength: 0.75, Version"),
    (dict(mask_invert=True, mask_blur=0, masked_content="fill"),
     "Denoising strength: 0.75, Mask mode: Inpaint not masked, Masked content: fill, Version"),
    (dict(mask_blur=2, only_masked=True, only_masked_padding=8, masked_content="latent noise"),
     "Denoising strength: 0.75, Mask blur: 2, Inpaint area: Only masked, Masked area padding: 8, "
     "Masked content: latent noise, Version"),
    (dict(mask_blur=1, masked_content="latent nothing", only_masked=True, only_masked_padding=0),
     "Denoising strength: 0.75, Mask blur: 1, Inpaint area: Only masked, Masked area padding: 0, "
     "Masked content: latent nothing, Version"),
])
def test_infotext_has_a1111s_keys_and_reads_back(engine, files, options, written):
    source, mask = pattern(64, 64), box_mask((64, 64), (16, 16, 48, 48))
    result = inpaint(engine, init_image=files("src.png", source), mask=files("mask.png", mask), seed=8,
                     **options)[0]
    assert written in result.infotext
    fields = to_request_fields(parse_infotext(result.infotext))
    expected = {"mask_blur": options.get("mask_blur", 4), "mask_invert": options.get("mask_invert", False),
                "masked_content": options.get("masked_content", "original"),
                "only_masked": options.get("only_masked", False),
                "only_masked_padding": options.get("only_masked_padding", 32)}
    # What A1111 leaves out is the plain case; the request's defaults say the same.
    from generation.requests import GenerationRequest

    defaults = GenerationRequest(prompt="x")
    for name, value in expected.items():
        assert fields.get(name, 0 if name == "mask_blur" else getattr(defaults, name)) == value, name
    assert not {"Mask blur", "Mask mode", "Masked content", "Inpaint area", "Masked area padding"} & set(fields["extra"])


def test_reading_a1111s_inpaint_keys():
    text = ("a cat\nSteps: 20, Sampler: Euler, Seed: 1, Size: 512x512, Denoising strength: 0.5, "
            "Mask blur: 6, Mask mode: Inpaint masked, Inpaint area: Whole picture, Masked area padding: 40, "
            "Masked content: original")
    fields = to_request_fields(parse_infotext(text))
    assert (fields["mask_blur"], fields["mask_invert"], fields["only_masked"], fields["only_masked_padding"],
            fields["masked_content"]) == (6, False, False, 40, "original")
    bad = to_request_fields(parse_infotext("a cat\nSteps: 20, Seed: 1, Mask mode: sideways, Masked content: paint, "
                                           "Inpaint area: most, Mask blur: soft"))
    assert not {"mask_invert", "masked_content", "only_masked", "mask_blur"} & set(bad)
    assert len(bad["warnings"]) == 4


# --------------------------------------------------------------------------- other checkpoints


def check_checkpoint(engine, checkpoint, source, mask, files):
    """Mixed inpaint options in one batch equal their single runs; the source is kept outside the
    mask, at strength 0.75 and 1 (where A1111 still starts from the noised init latents)."""
    soft = np.array(blur_mask(mask, 4))
    for strength in (0.75, 1.0):
        requests = [tiny_request(checkpoint=checkpoint, mode="inpaint", strength=strength, steps=4, seed=seed,
                                 mask_blur=4, init_image=files("src.png", source), mask=files("mask.png", mask),
                                 **changes)
                    for seed, changes in ((1, {}), (2, dict(masked_content="latent noise")),
                                          (3, dict(masked_content="fill", only_masked=True, only_masked_padding=4)))]
        batch = engine.run_batch([BatchItem(key=i, request=r) for i, r in enumerate(requests)])
        for i, request in enumerate(requests):
            alone = engine.generate(request)[0]
            assert changed(batch[i][0].image, alone.image).max() <= 1
            diff = changed(alone.image, source)
            assert diff[soft == 0].max() == 0 and diff[np.array(mask) == 255].mean() > 20


def engine_with(tmp_path_factory, name: str, architecture: str):
    """An engine whose only (and default) checkpoint is a tiny model of `architecture`."""
    from generation.engine import Engine
    from generation.registry import ModelRegistry
    from generation.testing import write_test_model

    from conftest import make_config

    root = tmp_path_factory.mktemp(f"{name}-models")
    write_test_model(root / "checkpoints" / name, architecture=architecture)
    config = make_config(root, tmp_path_factory.mktemp(f"{name}-data"), models={"default_checkpoint": name})
    registry = ModelRegistry.from_config(config)
    registry.refresh()
    return Engine(config=config, registry=registry)


def test_sdxl_inpaint(tmp_path_factory, files):
    engine = engine_with(tmp_path_factory, "xl", "tiny-sdxl")
    source, mask = pattern(64, 64), box_mask((64, 64), (8, 8, 40, 56))
    check_checkpoint(engine, "xl", source, mask, files)


def test_inpainting_checkpoint(tmp_path_factory, files, monkeypatch):
    """A 9-channel inpainting checkpoint gets the same inputs A1111 gives it."""
    engine = engine_with(tmp_path_factory, "inp", "tiny-sd1-inpaint")
    source, mask = pattern(64, 64), box_mask((64, 64), (8, 8, 40, 56))
    check_checkpoint(engine, "inp", source, mask, files)

    # At full strength the run starts, as A1111's does, from the init latents noised to the first
    # step (diffusers' inpaint pipeline alone would start from noise only).
    from diffusers.utils.torch_utils import randn_tensor

    from generation.samplers import make_scheduler, resolve_sampler

    loaded = engine.cache.get(engine.registry.resolve("inp"))
    pipe = loaded.pipeline_for("inpaint")
    inputs, calls = [], []
    original = type(pipe).__call__

    def record(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", record)
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: inputs.append(args[0][:1, :4].clone()))
    try:
        engine.generate(tiny_request(checkpoint="inp", mode="inpaint", strength=1.0, steps=4, seed=2, sampler="Euler",
                                     init_image=files("src.png", source), mask=files("mask.png", mask)))
    finally:
        hook.remove()
    scheduler = make_scheduler(resolve_sampler("Euler"), loaded.scheduler_config)
    scheduler.set_timesteps(4)
    sigma = scheduler.sigmas[0]
    noise = randn_tensor((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(2))
    expected = (calls[0]["image"] + sigma * noise) / (sigma ** 2 + 1) ** 0.5  # Euler's scaled model input
    assert torch.allclose(inputs[0], expected, atol=1e-5)
