"""AUTOMATIC1111's inpainting (stable-diffusion-webui v1.10, img2img's inpaint tabs), as plain functions.

Each function copies one of A1111's rules; its docstring names where the rule lives in A1111.
`prepare_inpaint` chains them the way A1111's `StableDiffusionProcessingImg2Img.init` does for one
init image, and `finish_inpaint` is A1111's `apply_overlay` for one result. The latent side (the
latent mask, "latent noise" / "latent nothing", the blend of every step) is done by the engine
(`generation/engine.py`) with `latent_mask` below.

Pixel work goes through the same Pillow calls as A1111's (LANCZOS resizes, premultiplied "RGBa"
pastes, `alpha_composite`), so the results are A1111's to the byte. The one OpenCV call A1111 makes,
`cv2.GaussianBlur` on the mask, is reproduced bit-exactly in numpy (`blur_mask`): OpenCV's 8-bit
Gaussian blur is a fixed-point filter with an integer kernel, copied here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

__all__ = [
    "BACKGROUND",
    "InpaintJob",
    "apply_overlay",
    "blur_kernel_size",
    "blur_mask",
    "create_binary_mask",
    "expand_crop_region",
    "fill",
    "finish_inpaint",
    "fix_image",
    "flatten",
    "gaussian_kernel_q8",
    "get_crop_region",
    "latent_mask",
    "make_overlay",
    "mask_for_overlay",
    "prepare_inpaint",
    "resize_image",
]

# opts.img2img_background_color: what transparent parts of an init image become.
BACKGROUND = "#ffffff"
# A1111 resizes with Pillow's LANCZOS (images.resize_image with no img2img upscaler set, the default).
LANCZOS = Image.Resampling.LANCZOS


# --------------------------------------------------------------------------- images in


def fix_image(image: Image.Image) -> Image.Image:
    """images.fix_image: turn the picture as its EXIF orientation says, and make an RGB or palette
    PNG with a transparency chunk (bytes) RGBA, so that its transparency counts."""
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGB", "P") and isinstance(image.info.get("transparency"), bytes):
            image = image.convert("RGBA")
    except Exception:  # A1111 keeps the image as it is when either step fails
        pass
    return image


def flatten(image: Image.Image, bgcolor: str = BACKGROUND) -> Image.Image:
    """images.flatten: an RGBA init image is composited onto `bgcolor` (white); any image then
    becomes RGB."""
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, bgcolor)
        background.paste(image, mask=image)
        image = background
    return image.convert("RGB")


def create_binary_mask(image: Image.Image, round: bool = True) -> Image.Image:  # noqa: A002 (A1111's name)
    """processing.create_binary_mask: an RGBA mask that is not fully opaque is its alpha channel,
    thresholded (alpha > 128 -> 255, else 0; the "mask_round" default); any other mask is its
    grayscale ("L") as it is, not thresholded (white = repaint)."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        alpha = image.split()[-1].convert("L")
        return alpha.point(lambda x: 255 if x > 128 else 0) if round else alpha
    return image.convert("L")


# --------------------------------------------------------------------------- mask blur


def blur_kernel_size(radius: int) -> int:
    """A1111's kernel size for a mask blur of `radius` (processing.py): 2 * int(2.5 * radius + 0.5) + 1."""
    return 2 * int(2.5 * radius + 0.5) + 1


def gaussian_kernel_q8(size: int, sigma: float) -> np.ndarray:
    """OpenCV's 8-bit Gaussian kernel (imgproc/smooth.dispatch.cpp, 4.x): `getGaussianKernelBitExact`
    (exp(-x^2 / (2 sigma^2)) for the outer taps, 1 for the centre, normalised by their sum), then
    `getGaussianKernelFixedPoint_ED`: the outer taps in 1/256 units with error diffusion from the
    edge inwards (round half to even), the centre tap whatever makes the sum exactly 256."""
    if size % 2 != 1 or size < 1 or sigma <= 0:
        raise ValueError("an odd kernel size and a positive sigma are needed")
    half = (size - 1) // 2
    scale = -0.125 / (sigma * sigma)  # OpenCV: -0.5 * 0.25 / sigma^2 with x = 2 * (i - centre)
    values = [np.exp(float(x * x) * scale) for x in range(1 - size, 0, 2)]  # the outer taps, left half
    total = 0.0
    for value in values:
        total += value
    total = total * 2.0 + 1.0
    factor = 1.0 / total
    kernel = np.zeros(size, dtype=np.int64)
    error, side = 0.0, 0
    for i, value in enumerate(values):
        adjusted = (value * factor) * 256.0 + error
        tap = round(adjusted)  # cvRound: half to even, as Python's round
        error = adjusted - tap
        kernel[i] = kernel[size - 1 - i] = tap
        side += tap
    kernel[half] = 256 - 2 * side
    return kernel


def _reflect_101(indices: np.ndarray, length: int) -> np.ndarray:
    """OpenCV's borderInterpolate for BORDER_REFLECT_101 (cv2.GaussianBlur's default border):
    gfedcb|abcdefgh|gfedcba, reflected again as often as a long kernel needs."""
    if length == 1:
        return np.zeros_like(indices)
    period = 2 * (length - 1)
    folded = np.mod(indices, period)
    return np.where(folded < length, folded, period - folded)


def _blur_axis(pixels: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """One pass of OpenCV's fixed-point GaussianBlur along `axis` of an 8-bit image: the sum of the
    integer taps times the reflected neighbours, then (sum + 128) >> 8, as
    `GaussianBlurFixedPoint` does with the other direction's kernel being [1]."""
    length = pixels.shape[axis]
    if length == 1:  # cv2 sets that kernel dimension to 1: a plain copy
        return pixels
    half = len(kernel) // 2
    index = _reflect_101(np.arange(-half, length + half), length)
    padded = np.take(pixels.astype(np.int64), index, axis=axis)
    total = np.zeros(pixels.shape, dtype=np.int64)
    for tap, weight in enumerate(kernel):
        if weight:
            window = [slice(None)] * pixels.ndim
            window[axis] = slice(tap, tap + length)
            total += int(weight) * padded[tuple(window)]
    return np.clip((total + 128) >> 8, 0, 255).astype(np.uint8)


def blur_mask(mask: Image.Image, radius: int) -> Image.Image:
    """A1111's mask blur (processing.py, mask_blur_x = mask_blur_y = `radius`): two 1-D passes,
    `cv2.GaussianBlur(mask, (k, 1), radius)` then `cv2.GaussianBlur(mask, (1, k), radius)` with
    k = `blur_kernel_size(radius)`, each rounded to 8 bits; bit-exact with OpenCV 4.x. 0: no blur."""
    if radius <= 0:
        return mask
    kernel = gaussian_kernel_q8(blur_kernel_size(radius), float(radius))
    pixels = np.array(mask.convert("L"))
    pixels = _blur_axis(pixels, kernel, axis=1)  # (k, 1): along x
    pixels = _blur_axis(pixels, kernel, axis=0)  # (1, k): along y
    return Image.fromarray(pixels, "L")


# --------------------------------------------------------------------------- only masked: the crop


def get_crop_region(mask: Image.Image, pad: int = 0) -> tuple[int, int, int, int] | None:
    """masking.get_crop_region_v2: the box (x1, y1, x2, y2) of the mask's non-zero pixels, grown by
    `pad` on every side and clamped to the mask; None for an all-black mask."""
    box = mask.getbbox()
    if not box:
        return None
    if not pad:
        return box
    x1, y1, x2, y2 = box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.width), min(y2 + pad, mask.height)


def expand_crop_region(crop_region: tuple[int, int, int, int], processing_width: int, processing_height: int,
                       image_width: int, image_height: int) -> tuple[int, int, int, int]:
    """masking.expand_crop_region: grow the box's short side to the processing aspect ratio (the
    difference truncated to whole pixels, split with the odd pixel after), shift it back inside the
    image, then clamp the far edge; so near an edge the ratio can stay off."""
    x1, y1, x2, y2 = crop_region
    ratio_crop_region = (x2 - x1) / (y2 - y1)
    ratio_processing = processing_width / processing_height
    if ratio_crop_region > ratio_processing:
        y1, y2 = _grow_span(y1, y2, (x2 - x1) / ratio_processing, image_height)
    else:
        x1, x2 = _grow_span(x1, x2, (y2 - y1) * ratio_processing, image_width)
    return x1, y1, x2, y2


def _grow_span(low: int, high: int, desired: float, limit: int) -> tuple[int, int]:
    """One side of A1111's expand_crop_region: grow [low, high) to `desired` about its centre, then
    shift back inside [0, limit), clamping the far end."""
    diff = int(desired - (high - low))
    low, high = low - diff // 2, high + diff - diff // 2
    if high >= limit:
        low, high = low - (high - limit), limit
    if low < 0:
        low, high = 0, high - low
    return low, min(high, limit)


def resize_image(resize_mode: int, im: Image.Image, width: int, height: int) -> Image.Image:
    """images.resize_image with no upscaler (LANCZOS). 0 "Just resize": stretch to width x height.
    1 "Crop and resize": scale to cover, centred, the excess cut off. 2 "Resize and fill": scale to
    fit, centred, the empty bands filled by stretching the image's first and last row (column).
    Modes 1 and 2 answer "RGB", whatever `im` was (an "L" mask comes back gray RGB)."""
    if im.mode == "RGBA":
        im = im.convert("RGB")

    def resize(image: Image.Image, w: int, h: int) -> Image.Image:
        return image.resize((w, h), resample=LANCZOS)

    if resize_mode == 0:
        return resize(im, width, height)
    ratio = width / height
    src_ratio = im.width / im.height
    if resize_mode == 1:
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
        resized = resize(im, src_w, src_h)
        result = Image.new("RGB", (width, height))
        result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return result
    src_w = width if ratio < src_ratio else im.width * height // im.height
    src_h = height if ratio >= src_ratio else im.height * width // im.width
    resized = resize(im, src_w, src_h)
    result = Image.new("RGB", (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill_height = height // 2 - src_h // 2
        if fill_height > 0:
            result.paste(resized.resize((width, fill_height), box=(0, 0, width, 0)), box=(0, 0))
            result.paste(resized.resize((width, fill_height), box=(0, resized.height, width, resized.height)),
                         box=(0, fill_height + src_h))
    elif ratio > src_ratio:
        fill_width = width // 2 - src_w // 2
        if fill_width > 0:
            result.paste(resized.resize((fill_width, height), box=(0, 0, 0, height)), box=(0, 0))
            result.paste(resized.resize((fill_width, height), box=(resized.width, 0, resized.width, height)),
                         box=(fill_width + src_w, 0))
    return result


# --------------------------------------------------------------------------- masked content "fill"


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """masking.fill ("Masked content: fill", and done before "latent noise" / "latent nothing" too):
    the unmasked colours, premultiplied by the inverted mask, blurred at radii 256, 64, 16, 4, 2, 0
    and composited over each other (1, 1, 2, 4, 2, 1 times), so the masked part takes the colours
    around it; unmasked pixels keep their values."""
    image_mod = Image.new("RGBA", (image.width, image.height))
    image_masked = Image.new("RGBa", (image.width, image.height))
    image_masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    image_masked = image_masked.convert("RGBa")
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = image_masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            image_mod.alpha_composite(blurred)
    return image_mod.convert("RGB")


# --------------------------------------------------------------------------- the overlay


def mask_for_overlay(image_mask: Image.Image) -> Image.Image:
    """"Whole picture": A1111's mask_for_overlay is the resized blurred mask doubled (x2, clipped to
    255), so the generated pixels show fully from half the blurred edge inwards. ("Only masked"
    uses the blurred mask as it is.)"""
    doubled = np.clip(np.array(image_mask).astype(np.float32) * 2, 0, 255).astype(np.uint8)
    return Image.fromarray(doubled)


def make_overlay(image: Image.Image, overlay_mask: Image.Image) -> Image.Image:
    """The overlay of A1111's init: the init image with alpha = 255 - mask_for_overlay (through a
    premultiplied "RGBa" paste), as RGBA. Composited over a result, it gives back the init pixels
    exactly where the mask is 0."""
    image_masked = Image.new("RGBa", (image.width, image.height))
    image_masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(overlay_mask.convert("L")))
    return image_masked.convert("RGBA")


def apply_overlay(image: Image.Image, paste_loc: tuple[int, int, int, int] | None,
                  overlay: Image.Image | None) -> Image.Image:
    """processing.apply_overlay (with uncrop): for "Only masked" (`paste_loc` = x, y, w, h) the result
    is resized to the crop box with resize mode 1 ("Crop and resize") and pasted there on a
    transparent canvas of the overlay's size; then the overlay goes on top (alpha_composite) and
    the alpha is dropped: the result shows through the mask, the init image everywhere else."""
    if overlay is None:
        return image
    if paste_loc is not None:
        x, y, w, h = paste_loc
        base_image = Image.new("RGBA", (overlay.width, overlay.height))
        base_image.paste(resize_image(1, image, w, h), (x, y))
        image = base_image
    image = image.convert("RGBA")
    image.alpha_composite(overlay)
    return image.convert("RGB")


# --------------------------------------------------------------------------- the latent mask


def latent_mask(image_mask: Image.Image, latent_width: int, latent_height: int) -> np.ndarray:
    """A1111's latent mask (the `nmask` of init): the processing mask as RGB resized to the latent
    size with Pillow's default filter (bicubic), its first channel / 255, rounded to 0 or 1
    (mask_round). 1 = repaint; A1111's `mask` (what is kept) is 1 - this. float32 [h, w]."""
    small = image_mask.convert("RGB").resize((latent_width, latent_height), resample=Image.Resampling.BICUBIC)
    return np.around(np.array(small, dtype=np.float32)[..., 0] / 255)


# --------------------------------------------------------------------------- one init image


@dataclass(frozen=True)
class InpaintJob:
    """What A1111's init makes of one init image and its mask.

    `image`: the request-size RGB picture to encode (the crop for "Only masked"; already filled
    unless the masked content is "original"). `image_mask`: the request-size processing mask the
    latent mask and an inpainting model's conditioning come from; None when "Only masked" found
    nothing in the mask (A1111 then runs plain img2img on the whole picture). `overlay` and
    `paste_to`: what `finish_inpaint` needs. `extra`: A1111's infotext pairs, in A1111's order.
    """

    image: Image.Image
    image_mask: Image.Image | None
    overlay: Image.Image | None
    paste_to: tuple[int, int, int, int] | None
    extra: tuple[tuple[str, str | int], ...]


def prepare_inpaint(source: Image.Image, mask: Image.Image, *, width: int, height: int, mask_blur: int = 4,
                    mask_invert: bool = False, masked_content: str = "original", only_masked: bool = False,
                    only_masked_padding: int = 32) -> InpaintJob:
    """StableDiffusionProcessingImg2Img.init for one init image (resize mode "Just resize").

    The mask: A1111's binary mask, inverted for "Inpaint not masked", blurred at its own size. Then
    "Whole picture": mask and image each resized to width x height; the overlay mask is the
    resized mask doubled. "Only masked": the box around the blurred mask plus the padding,
    expanded to the request's aspect ratio; the mask's box resized into width x height with mode
    2, the overlay mask is the blurred mask itself, and the image keeps its size for the overlay
    while its box is resized like the mask. The masked content other than "original" fills the
    picture first (`fill`), "latent noise" and "latent nothing" included.

    One departure: for "Only masked", a mask of another size than the image is first resized to
    the image (LANCZOS); A1111 would cut the image at the mask's coordinates.
    """
    extra: list[tuple[str, str | int]] = []
    image_mask = create_binary_mask(fix_image(mask))
    source = flatten(fix_image(source))
    if only_masked and image_mask.size != source.size:
        image_mask = image_mask.resize(source.size, resample=LANCZOS)
    if mask_invert:
        image_mask = ImageOps.invert(image_mask)
        extra.append(("Mask mode", "Inpaint not masked"))
    if mask_blur > 0:
        image_mask = blur_mask(image_mask, mask_blur)
        extra.append(("Mask blur", mask_blur))

    crop_region = None
    paste_to = None
    overlay_mask: Image.Image | None
    processing_mask: Image.Image | None
    if only_masked:
        overlay_mask = image_mask
        crop_region = get_crop_region(image_mask, only_masked_padding)
        if crop_region:
            crop_region = expand_crop_region(crop_region, width, height, image_mask.width, image_mask.height)
            x1, y1, x2, y2 = crop_region
            processing_mask = resize_image(2, image_mask.crop(crop_region), width, height)
            paste_to = (x1, y1, x2 - x1, y2 - y1)
            extra += [("Inpaint area", "Only masked"), ("Masked area padding", only_masked_padding)]
        else:  # a blank mask: A1111 falls back to img2img of the whole picture
            crop_region = processing_mask = overlay_mask = None
    else:
        processing_mask = resize_image(0, image_mask, width, height)
        overlay_mask = mask_for_overlay(processing_mask)

    image = source
    if crop_region is None:
        image = resize_image(0, image, width, height)
    overlay = None
    if processing_mask is not None:
        if overlay_mask.size != image.size:
            overlay_mask = resize_image(0, overlay_mask, image.width, image.height)
        overlay = make_overlay(image, overlay_mask)
    if crop_region is not None:
        image = resize_image(2, image.crop(crop_region), width, height)
    if processing_mask is not None and masked_content != "original":
        image = fill(image, processing_mask)
        extra.append(("Masked content", masked_content))
    return InpaintJob(image=image, image_mask=processing_mask, overlay=overlay, paste_to=paste_to, extra=tuple(extra))


def finish_inpaint(job: InpaintJob, generated: Image.Image) -> Image.Image:
    """One result as A1111 returns it: pasted back at the crop box for "Only masked" (the result
    then has the init image's size) and composited under the overlay (`apply_overlay`)."""
    return apply_overlay(generated, job.paste_to, job.overlay)
