"""Outpainting: the canvas geometry, masks, rounding and limits (pure PIL), and a real outpaint on the
tiny model through the submission path and the engine, whose original area must come back pixel-exact."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation.errors import EaselError
from generation.outpainting import (DIRECTIONS, OUTPAINT_MASK_BLUR, OutpaintError, check_move, extend_canvas,
                                    outpaint_fields, plan_canvas)

MOVES = [dict(zoom=1.5), dict(zoom=2.0), *(dict(direction=d) for d in DIRECTIONS)]


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def assert_canvas(image: Image.Image, canvas: Image.Image, mask: Image.Image, box) -> None:
    left, top, right, bottom = box
    assert canvas.mode == "RGB" and mask.mode == "L" and canvas.size == mask.size
    assert canvas.width % 8 == 0 and canvas.height % 8 == 0
    pixels, white = np.asarray(canvas), np.asarray(mask)
    assert np.array_equal(pixels[top:bottom, left:right], np.asarray(image.convert("RGB")))  # pixel-exact
    expected = np.full(white.shape, 255, np.uint8)
    expected[top:bottom, left:right] = 0
    assert np.array_equal(white, expected)  # white exactly over the new area, binary


@pytest.mark.parametrize("zoom, size, box", [
    (2.0, (128, 128), (32, 32, 96, 96)),
    (1.5, (96, 96), (16, 16, 80, 80)),
])
def test_zoom_out_centres_the_picture_on_a_canvas_that_many_times_larger(zoom, size, box):
    image = noise(64, 64)
    plan = plan_canvas(64, 64, zoom=zoom)
    assert (plan.width, plan.height) == size and plan.box == box
    canvas, mask = extend_canvas(image, zoom=zoom)
    assert canvas.size == size
    assert_canvas(image, canvas, mask, box)


@pytest.mark.parametrize("direction, size, box", [
    ("left", (96, 64), (32, 0, 96, 64)),
    ("right", (96, 64), (0, 0, 64, 64)),
    ("up", (64, 96), (0, 32, 64, 96)),
    ("down", (64, 96), (0, 0, 64, 64)),
])
def test_pan_grows_the_canvas_by_half_the_picture_on_that_side(direction, size, box):
    image = noise(64, 64, seed=1)
    canvas, mask = extend_canvas(image, direction=direction)
    assert canvas.size == size and plan_canvas(64, 64, direction=direction).box == box
    assert_canvas(image, canvas, mask, box)


def test_sizes_round_up_to_multiples_of_8_and_the_remainder_goes_to_the_new_area():
    # 72 * 1.5 = 108 -> 112; centred at 20, to the nearest multiple of 8 (a tie: down) 16: 24 px on the right
    plan = plan_canvas(72, 72, zoom=1.5)
    assert (plan.width, plan.height, plan.left, plan.top) == (112, 112, 16, 16)
    # a picture whose sides are no multiple of 8 (an upload): never scaled, every extra pixel is new area
    plan = plan_canvas(50, 30, direction="right")
    assert (plan.width, plan.height, plan.left, plan.top) == (80, 32, 0, 0)  # 75 -> 80, 30 -> 32 (rows below)
    plan = plan_canvas(50, 30, direction="left")
    assert (plan.width, plan.left) == (80, 30)  # the picture against the right edge
    plan = plan_canvas(50, 30, direction="up")
    assert (plan.width, plan.height, plan.left, plan.top) == (56, 48, 0, 18)  # 45 -> 48, against the bottom
    image = noise(50, 30, seed=2)
    canvas, mask = extend_canvas(image, direction="up")
    assert_canvas(image, canvas, mask, plan.box)


def test_every_move_of_any_size_keeps_the_picture_exact_inside_a_multiple_of_8_canvas():
    rng = random.Random(5)
    for _ in range(25):
        width, height = rng.randint(1, 120), rng.randint(1, 120)
        image = noise(width, height, seed=rng.randint(0, 1000))
        for move in MOVES:
            plan = plan_canvas(width, height, **move)
            left, top, right, bottom = plan.box
            assert 0 <= left and 0 <= top and right <= plan.width and bottom <= plan.height
            factor = move.get("zoom") or 1.5
            grows_x = "zoom" in move or move.get("direction") in ("left", "right")
            grows_y = "zoom" in move or move.get("direction") in ("up", "down")
            wanted_width = width * factor if grows_x else width
            wanted_height = height * factor if grows_y else height
            assert 0 <= plan.width - wanted_width < 8 and 0 <= plan.height - wanted_height < 8  # rounded up
            if "zoom" in move:  # centred, within 4 px, on an 8 px grid
                assert left % 8 == 0 and top % 8 == 0
                assert abs(left - (plan.width - width) / 2) <= 4 and abs(top - (plan.height - height) / 2) <= 4
            canvas, mask = extend_canvas(image, **move)
            assert_canvas(image, canvas, mask, plan.box)


def test_the_new_area_is_prefilled_with_blurred_edge_colours():
    image = Image.new("RGB", (64, 64), (220, 20, 20))
    image.paste((20, 20, 220), (32, 0, 64, 64))  # left half red, right half blue
    canvas, _ = extend_canvas(image, direction="right")
    pixels = np.asarray(canvas).astype(int)
    beside = pixels[:, 64:72].reshape(-1, 3).mean(axis=0)
    assert beside[2] > 150 and beside[0] < 80  # the blue edge spreads to the right
    canvas, _ = extend_canvas(image, direction="left")
    pixels = np.asarray(canvas).astype(int)
    beside = pixels[:, 24:32].reshape(-1, 3).mean(axis=0)
    assert beside[0] > 150 and beside[2] < 80  # the red edge spreads to the left
    canvas, _ = extend_canvas(image, zoom=2.0)
    corner = np.asarray(canvas)[:8, :8].reshape(-1, 3).mean(axis=0)
    assert corner.sum() > 100  # not left black


def test_a_canvas_over_the_limits_is_refused_naming_the_size_and_the_limit():
    limits = dict(max_width=1536, max_height=1536, max_pixels=1024 * 1024, min_size=64)
    with pytest.raises(EaselError, match=r"zooming out 2x makes the 1024x1024 image 2048x2048; "
                                         r"the limit here is 1536x1536"):
        plan_canvas(1024, 1024, zoom=2.0, **limits)
    with pytest.raises(OutpaintError, match=r"zooming out 2x makes the 768x768 image 1536x1536, 2,359,296 pixels; "
                                            r"the limit here is 1,048,576 pixels"):
        plan_canvas(768, 768, zoom=2.0, **limits)
    with pytest.raises(OutpaintError, match=r"panning left makes the 1200x512 image 1800x512; "
                                            r"the limit here is 1536x1536"):
        extend_canvas(noise(1200, 512), direction="left", **limits)
    with pytest.raises(OutpaintError, match=r"at least 64x64"):
        plan_canvas(32, 32, direction="up", **limits)
    plan = plan_canvas(512, 512, zoom=2.0, **limits)  # exactly the pixel limit
    assert plan.width * plan.height == 1024 * 1024


def test_the_move_is_exactly_one_zoom_or_one_direction():
    for bad in (dict(), dict(zoom=2.0, direction="left")):
        with pytest.raises(OutpaintError, match="either a zoom"):
            check_move(**bad)
    with pytest.raises(OutpaintError, match="direction must be one of left, right, up, down"):
        check_move(direction="sideways")
    with pytest.raises(OutpaintError, match="zoom must be 1.5 or 2"):
        check_move(zoom=3)
    assert check_move(zoom=2) == (None, 2.0) and check_move(direction="Left") == ("left", None)


def test_outpaint_options_keep_the_picture_exact():
    fields = outpaint_fields(plan_canvas(64, 64, zoom=2.0))
    assert fields == dict(mode="inpaint", width=128, height=128, strength=1.0, masked_content="fill",
                          mask_blur=0, mask_invert=False, only_masked=False)
    assert OUTPAINT_MASK_BLUR == 0


# --------------------------------------------------------------------------- through the engine


def requester(user_id: int):
    from generation.service import ReplyTarget
    from generation.submission import Requester

    return Requester(user_id=user_id, target=ReplyTarget(frontend="discord", guild_id=10, channel_id=11))


async def test_an_outpaint_of_a_finished_job_keeps_the_original_area_pixel_exact(models_dir, tmp_path):
    """The action's request through the submission path, the queue and the real engine (tiny model):
    outside the mask the result is the source picture, pixel for pixel; the new area is painted."""
    from bot import actions
    from bot.app import open_app
    from conftest import make_config
    from generation.requests import GenerationRequest
    from generation.submission import Ask

    config = make_config(models_dir, tmp_path)
    async with open_app(config) as app:
        await app.service.start()
        source_job = await app.submissions.submit(Ask(prompt="a red cat", seed=7, steps=3), requester(1))
        await app.service.wait_idle()
        (source,) = await app.store.images.list_for_job(source_job.id)
        original = np.asarray(Image.open(source.path).convert("RGB"))
        assert original.shape == (64, 64, 3)

        changed = []
        for move, box in ((dict(zoom=2.0), (32, 32, 96, 96)), (dict(direction="left"), (32, 0, 96, 64))):
            job = await actions.outpaint(app, source_job.id, requester(2), **move)  # another member's own job
            request = GenerationRequest.from_dict(job.request)
            assert job.owner_id == 2 and request.mode == "inpaint" and request.prompt == "a red cat"
            assert request.masked_content == "fill" and request.strength == 1.0 and request.mask_blur == 0
            assert request.steps == 3 and request.seed not in (7, -1)  # a new seed, as Reroll
            uploads = (app.uploads.folder / "2").resolve()
            assert {Path(request.init_image).parent, Path(request.mask).parent} == {uploads}
            await app.service.wait_idle()
            done = await app.store.jobs.get(job.id)
            assert done.status == "done", done.error
            (image,) = await app.store.images.list_for_job(job.id)
            result = np.asarray(Image.open(image.path).convert("RGB"))
            left, top, right, bottom = box
            assert result.shape[:2] == (request.height, request.width)
            canvas = np.asarray(Image.open(request.init_image).convert("RGB"))
            new_area = np.asarray(Image.open(request.mask).convert("L")) > 127
            assert np.abs(result.astype(int) - canvas.astype(int))[new_area].mean() > 1  # the new area was painted
            assert np.array_equal(canvas[top:bottom, left:right], original)  # what the engine was given
            # The same request straight through Engine.generate: the same guarantee.
            (direct,) = await asyncio.to_thread(app.engine.generate, request)
            for how, pixels in (("queued job", result), ("Engine.generate", np.asarray(direct.image.convert("RGB")))):
                if not np.array_equal(pixels[top:bottom, left:right], original):
                    changed.append(f"{move} via {how}: max difference "
                                   f"{np.abs(pixels[top:bottom, left:right].astype(int) - original).max()}")
        files, _ = await app.store.uploads.usage(2)
        assert files == 4  # canvas and mask of each outpaint, kept as the member's uploads
    # Last, so that everything above is checked either way: the engine's A1111 overlay keeps it exact.
    assert not changed, f"the original area changed: {changed}"


async def test_an_outpaint_over_the_limits_is_refused_before_anything_is_kept(models_dir, tmp_path):
    from bot import actions
    from bot.app import open_app
    from conftest import make_config
    from generation.submission import Ask

    config = make_config(models_dir, tmp_path, limits={"max_width": 96, "max_height": 96})
    async with open_app(config) as app:
        await app.service.start()
        job = await app.submissions.submit(Ask(prompt="a red cat", steps=2), requester(1))
        await app.service.wait_idle()
        with pytest.raises(OutpaintError, match="128x128; the limit here is 96x96"):
            await actions.outpaint(app, job.id, requester(1), zoom=2.0)
        await app.store.guilds.update_settings(10, max_width=64)  # a server's own lower limit counts too
        with pytest.raises(OutpaintError, match="96x64; the limit here is 64x96"):
            await actions.outpaint(app, job.id, requester(1), direction="right")
        assert (await app.store.uploads.usage(1))[0] == 0
        assert len(await app.store.jobs.list_for_owner(1)) == 1
