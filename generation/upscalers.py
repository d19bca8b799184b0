"""Image upscalers as A1111 v1.10 runs them: the catalog, model loading, tiled model passes, and
the `Upscaler.upscale` / `images.resize_image` size rules that hires fix and Extras use.

Semantics copied for pixel parity (A1111 modules/upscaler_utils.py, images.py, upscaler.py):
- A model pass (`upscale_with_model`): the image is cut into `tile`x`tile` PIL crops placed by
  `images.split_grid` (overlap `overlap`; an image smaller than a tile gets a black-padded crop at
  a negative offset, as PIL crops it), each fed to the network as **BGR** float in [0,1]; the
  output is clamped, times 255, rounded, cast to uint8 and flipped back to RGB; tiles are pasted
  as `images.combine_grid` does: the first `overlap`*scale columns (rows) of a tile are blended
  over what is there with PIL's linear mask, the rest replaces it. `tile` 0 runs the whole image.
  Tiles are pasted as soon as they are computed, into the preallocated output and one row strip,
  so memory stays bounded: the output image, one strip of rows, one tile's tensors.
- `UpscalerCache.upscale(img, info, scale)` = `Upscaler.upscale`: dest = int(W*scale)//8*8 (same
  for H); run the upscaler up to 3 times until the image is at least dest, stopping early if a
  pass leaves the size unchanged; then LANCZOS to dest.
- `UpscalerCache.resize(img, w, h, info)` = `images.resize_image(0, img, w, h, name)`: no upscaler
  (or "None", or a mode "L" image) -> LANCZOS to (w, h); otherwise, when max(w/W, h/H) > 1, the
  upscale above with that scale, then LANCZOS to exactly (w, h) if the size differs.

Where this differs from A1111 (on purpose):
- A model that fails to load raises UpscalerError (A1111 logs it and returns the image unscaled).
- An image no wider/taller than the overlap gets one tile (A1111 computes zero tiles and fails);
  a dest size that rounds to 0 becomes 1 (A1111's PIL resize would fail).
- Files are read only from the folder's top level; only usable entries get names in
  `upscaler_names`; a file whose stem repeats another's (or a built-in name) is unusable.

`LATENT_MODES` (from generation.hires) names A1111's latent hires modes; no file may take those names.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .architectures import load_weights_only, read_safetensors_header
from .errors import Canceled, ModelLoadError, ModelNotFound
from .hires import LATENT_MODES
from .upscaler_archs import (
    ArchSpec,
    UpscalerError,
    build_model,
    canonical_state_dict,
    detect_architecture,
    unwrap_state_dict,
)

log = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_UPSCALERS",
    "LATENT_MODES",
    "MAX_UPSCALER_BYTES",
    "UpscalerCache",
    "UpscalerError",
    "UpscalerInfo",
    "load_upscaler_model",
    "postprocess_infotext",
    "scan_upscalers",
    "upscale_with_model",
    "upscaler_names",
    "hires_upscaler_names",
]

BUILTIN_UPSCALERS = ("Lanczos", "Nearest")
_RESERVED_NAMES = {"none", "lanczos", "nearest"} | {name.lower() for name in LATENT_MODES}
BUILTIN_ARCHITECTURE = "builtin"

MAX_UPSCALER_BYTES = 512 * 1024 * 1024  # ESRGAN 4x is ~67 MB; the biggest spandrel archs ~200 MB
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_PICKLE_SUFFIXES = (".pth", ".pt")
_SUFFIXES = (".safetensors",) + _PICKLE_SUFFIXES

_LANCZOS = Image.Resampling.LANCZOS
_NEAREST = Image.Resampling.NEAREST


@dataclass(frozen=True)
class UpscalerInfo:
    name: str
    path: Path | None  # None for the built-ins
    scale: int | None  # None for the built-ins (they scale by whatever is asked)
    architecture: str  # "builtin", "ESRGAN", "Compact", or "spandrel:<id>"
    usable: bool = True
    skip_reason: str = ""


# ---------------------------------------------------------------------------------------------------
# Reading files


def _read_safetensors_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes, checked (float dtypes, offsets inside the file); no data is read."""
    try:
        size = path.stat().st_size
        if size > MAX_UPSCALER_BYTES:
            raise UpscalerError(f"{path.name} is {size // (1024 * 1024)} MiB, over the "
                                f"{MAX_UPSCALER_BYTES // (1024 * 1024)} MiB limit for upscalers")
    except FileNotFoundError:
        raise UpscalerError(f"{path.name} does not exist") from None
    except OSError as exc:
        raise UpscalerError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    try:
        length, header = read_safetensors_header(path)
    except (ModelLoadError, ModelNotFound) as exc:
        raise UpscalerError(str(exc)) from None
    data_size = size - 8 - length
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            shape = tuple(int(dim) for dim in shape)
            if dtype not in _FLOAT_DTYPES:
                raise UpscalerError(f"{path.name}: tensor {name} has dtype {dtype}; upscalers hold "
                                    "float tensors only")
            if not (0 <= int(start) <= int(end) <= data_size) or any(dim < 0 for dim in shape):
                raise UpscalerError(f"{path.name} is truncated or corrupt (tensor {name} lies outside "
                                    "the file)")
            shapes[name] = shape
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UpscalerError(f"{path.name} is not a valid .safetensors file (unreadable header)") from None
    if not shapes:
        raise UpscalerError(f"{path.name} holds no tensors")
    return shapes


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        state = load_weights_only(path)
    except FileNotFoundError:
        raise UpscalerError(f"{path.name} does not exist") from None
    except Exception as exc:  # the restricted unpickler refuses anything but plain tensors
        raise UpscalerError(f"{path.name} could not be read: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(state, Mapping):
        raise UpscalerError(f"{path.name} does not hold a state dict")
    state = unwrap_state_dict(state)
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)
           or not v.is_floating_point()]
    if bad:
        raise UpscalerError(f"{path.name}: entry {str(bad[0])[:80]} is not a float tensor")
    return state


def _check_suffix(path: Path, allow_pickle: bool) -> str:
    suffix = path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UpscalerError(f"{path.name} is a pickle ({suffix}); pickled upscalers are disabled "
                                "(convert it to .safetensors, or allow pickles for this folder)")
    elif suffix != ".safetensors":
        raise UpscalerError(f"{path.name}: upscalers must be .safetensors (or .pth/.pt where allowed)")
    return suffix


def _load_state(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if _check_suffix(path, allow_pickle) != ".safetensors":
        return _load_pickle(path)
    _read_safetensors_header(path)  # size cap, dtypes, offsets: before anything is loaded
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UpscalerError(f"{path.name} is not a readable .safetensors file: {exc}") from None
    return unwrap_state_dict(state)


def _shapes_of(path: Path, allow_pickle: bool) -> dict[str, tuple[int, ...]]:
    if _check_suffix(path, allow_pickle) == ".safetensors":
        return unwrap_state_dict(_read_safetensors_header(path))  # flat: only `module.` can occur
    return {k: tuple(v.shape) for k, v in _load_pickle(path).items()}


# ---------------------------------------------------------------------------------------------------
# spandrel (optional; never required)


def _spandrel():
    try:
        import spandrel  # noqa: PLC0415
    except Exception:  # not installed, or broken (torchvision mismatch)
        return None
    return spandrel


class SpandrelUpscaler(nn.Module):
    """A spandrel ImageModelDescriptor as a module (spandrel pads to its size needs and clamps)."""

    def __init__(self, descriptor):
        super().__init__()
        self.net = descriptor.model
        self._descriptor = descriptor
        self.scale = int(descriptor.scale)
        self.architecture = f"spandrel:{descriptor.architecture.id}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._descriptor(x)


def _spandrel_model(state: dict[str, torch.Tensor], name: str, error: UpscalerError) -> nn.Module:
    spandrel = _spandrel()
    if spandrel is None:
        raise error
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state)
    except Exception as exc:
        raise UpscalerError(f"{name}: spandrel cannot load it either: {str(exc)[:200]}") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.input_channels != 3 \
            or descriptor.output_channels != 3:
        raise UpscalerError(f"{name} is not an RGB image-to-image model")
    return SpandrelUpscaler(descriptor).eval()


# ---------------------------------------------------------------------------------------------------
# Catalog


def _describe(path: Path, allow_pickle: bool) -> UpscalerInfo:
    name = path.stem
    try:
        shapes = _shapes_of(path, allow_pickle)
        try:
            spec = detect_architecture(shapes, path.name)
        except UpscalerError as exc:
            if _spandrel() is None:
                raise
            model = _spandrel_model(_load_state(path, allow_pickle), path.name, exc)
            return UpscalerInfo(name, path, model.scale, model.architecture)
    except UpscalerError as exc:
        return UpscalerInfo(name, path, None, "unknown", usable=False, skip_reason=str(exc))
    return UpscalerInfo(name, path, spec.scale, spec.architecture)


def scan_upscalers(folder: Path | None, *, allow_pickle: bool) -> list[UpscalerInfo]:
    """The built-ins ("Lanczos", "Nearest"), then every .safetensors/.pth/.pt file directly in
    `folder` (sorted by name), each detected from its keys and shapes. A file that cannot be used
    (pickle not allowed, broken, unknown architecture, duplicate name) is listed with usable=False
    and the reason. Safetensors files are read only as far as their header."""
    infos = [UpscalerInfo(name, None, None, BUILTIN_ARCHITECTURE) for name in BUILTIN_UPSCALERS]
    if folder is None or not Path(folder).is_dir():
        return infos
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in _SUFFIXES]
    # .safetensors first among files of the same stem, so it wins the name
    files.sort(key=lambda p: (p.stem.lower(), p.stem, p.suffix.lower() != ".safetensors", p.name))
    taken = {name.lower() for name in _RESERVED_NAMES}
    for path in files:
        if path.stem.lower() in taken:
            reason = (f'"{path.stem}" is a built-in upscaler name' if path.stem.lower() in _RESERVED_NAMES
                      else f'another file is already named "{path.stem}"')
            infos.append(UpscalerInfo(path.stem, path, None, "unknown", usable=False,
                                      skip_reason=f"{path.name}: {reason}; rename the file"))
            continue
        info = _describe(path, allow_pickle)
        if info.usable:
            taken.add(path.stem.lower())
        else:
            log.warning("upscaler %s skipped: %s", path.name, info.skip_reason)
        infos.append(info)
    return infos


def upscaler_names(infos: Iterable[UpscalerInfo]) -> list[str]:
    """Usable names in A1111's order: the built-ins first (Lanczos, Nearest), then the rest sorted
    case-insensitively (modelloader.py:136-140; "None" is added by whoever offers the choice)."""
    usable = [info for info in infos if info.usable]
    builtins = [name for name in BUILTIN_UPSCALERS if any(i.name == name and i.path is None for i in usable)]
    others = sorted((i.name for i in usable if i.path is not None), key=str.lower)
    return builtins + others


def hires_upscaler_names(infos: Iterable[UpscalerInfo]) -> list[str]:
    """What a hires fix may upscale with, as A1111's list: the Latent modes, then the upscalers."""
    return [*LATENT_MODES, *upscaler_names(infos)]


def postprocess_infotext(scale: float, upscaler: str) -> str:
    """A1111 Extras' upscale keys: "Postprocess upscale by: 4, Postprocess upscaler: NAME".

    A1111 writes str() of the slider value; we write whole numbers without ".0" (4, as the UI
    shows) and any other value as Python's shortest repr (2.5). A name holding ',', ':' or a
    newline is quoted as A1111's quote() does (JSON string)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
            or scale <= 0:
        raise ValueError(f"upscale factor must be a positive number, got {scale!r}")
    if isinstance(scale, int):
        by = str(scale)
    else:
        by = str(int(scale)) if float(scale).is_integer() else repr(float(scale))
    name = upscaler
    if any(char in name for char in ",:\n") or name != name.strip() or name.startswith('"') or not name:
        name = json.dumps(name, ensure_ascii=False)
    return f"Postprocess upscale by: {by}, Postprocess upscaler: {name}"


# ---------------------------------------------------------------------------------------------------
# Loading


def load_upscaler_model(path: Path, *, allow_pickle: bool) -> nn.Module:
    """The network in `path` on the CPU in float32, in eval mode, with `.scale` (int) and
    `.architecture` ("ESRGAN", "Compact", or "spandrel:<id>" when spandrel imports and knows it).

    `.safetensors` are size-capped and header-checked before loading; `.pth`/`.pt` only with
    `allow_pickle` (the operator's own folder, never an upload), read with weights_only=True."""
    path = Path(path)
    state = _load_state(path, allow_pickle)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    try:
        spec: ArchSpec = detect_architecture(shapes, path.name)
    except UpscalerError as exc:
        return _spandrel_model(state, path.name, exc)
    state = canonical_state_dict(state, spec, path.name)
    with torch.device("meta"):
        model = build_model(spec)
    try:
        model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as exc:  # shapes were checked; this is a last guard
        raise UpscalerError(f"{path.name} does not fit a {spec.architecture} network: "
                            f"{str(exc).splitlines()[0][:200]}") from None
    model.requires_grad_(False)
    return model.eval()


# ---------------------------------------------------------------------------------------------------
# One model pass (A1111 upscale_with_model)


def _grid_starts(length: int, tile: int, overlap: int) -> list[int]:
    """A1111 images.split_grid's tile origins along one side."""
    count = max(1, math.ceil((length - overlap) / (tile - overlap)))
    step = (length - tile) / (count - 1) if count > 1 else 0
    starts = []
    for index in range(count):
        start = int(index * step)
        if start + tile >= length:
            start = length - tile
        starts.append(start)
    return starts


def _run_patches(model: nn.Module, patches: list[Image.Image], device: torch.device,
                 dtype: torch.dtype) -> list[Image.Image]:
    """One network call for equal-sized patches: RGB PIL -> BGR [0,1] -> model -> clamp, *255,
    round, uint8 -> RGB PIL."""
    arrays = [np.asarray(patch.convert("RGB"))[:, :, ::-1].transpose(2, 0, 1) for patch in patches]
    tensor = torch.from_numpy(np.ascontiguousarray(np.stack(arrays))).to(device).to(torch.float32).div_(255).to(dtype)
    with torch.inference_mode():
        out = model(tensor)
        if out.ndim != 4 or out.shape[0] != len(patches) or out.shape[1] != 3:
            raise UpscalerError(f"the upscaler returned a tensor of shape {list(out.shape)}")
        out = out.to(torch.float32).clamp_(0, 1).mul_(255.0).round_().to(torch.uint8)
        rgb = out.flip(1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(one), "RGB") for one in rgb]


def _blend_mask(width: int, height: int, overlap: int, horizontal: bool) -> Image.Image:
    """combine_grid's mask: 0, 255/o, 2*255/o, ... truncated to uint8, across the overlap."""
    ramp = (np.arange(overlap, dtype=np.float32) * 255 / overlap).astype(np.uint8)
    if horizontal:
        values = np.broadcast_to(ramp.reshape(1, overlap), (height, overlap))
    else:
        values = np.broadcast_to(ramp.reshape(overlap, 1), (overlap, width))
    return Image.fromarray(np.ascontiguousarray(values), "L")


def upscale_with_model(model: nn.Module, image: Image.Image | list[Image.Image], *, tile: int = 192,
                       overlap: int = 8, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                       cancel: Callable[[], bool] | None = None) -> Image.Image | list[Image.Image]:
    """One pass of `model` over `image` with A1111's PIL grid tiling (tile 0 = whole image) and BGR
    feeding; `cancel` is checked before each tile and raises Canceled. Returns an RGB image. A list
    of images of one size runs each tile position as one batch (the same results, fewer calls)."""
    if isinstance(image, list):
        if len({picture.size for picture in image}) > 1:
            raise ValueError("a batch of images to upscale must share one size")
        pictures = image
    else:
        pictures = [image]
    if tile > 0 and not 0 <= overlap < tile:
        raise UpscalerError(f"tile overlap {overlap} must be at least 0 and below the tile size {tile}")
    device = torch.device(device)
    model.to(device=device, dtype=dtype)
    if cancel is not None and cancel():
        raise Canceled()
    if tile <= 0:
        results = _run_patches(model, pictures, device, dtype)
        return results if isinstance(image, list) else results[0]

    width, height = pictures[0].size
    xs, ys = _grid_starts(width, tile, overlap), _grid_starts(height, tile, overlap)
    results: list[Image.Image] = []
    mask_w = mask_h = None
    for y in ys:
        strips: list[Image.Image] = []
        for x in xs:
            if cancel is not None and cancel():
                raise Canceled()
            outs = _run_patches(model, [picture.crop((x, y, x + tile, y + tile)) for picture in pictures],
                                device, dtype)
            if not results:  # the first tile tells the scale
                scale = outs[0].width // tile
                if scale < 1 or outs[0].size != (tile * scale, tile * scale):
                    raise UpscalerError(f"the upscaler turned a {tile}px tile into {outs[0].width}x{outs[0].height}")
                size, ov = tile * scale, overlap * scale
                results = [Image.new("RGB", (width * scale, height * scale)) for _ in pictures]
                if ov:
                    mask_w = _blend_mask(ov, size, ov, horizontal=True)
                    mask_h = _blend_mask(width * scale, ov, ov, horizontal=False)
            if not strips:
                strips = [Image.new("RGB", (width * scale, size)) for _ in pictures]
            sx = x * scale
            for strip, out in zip(strips, outs):
                if sx == 0 or not ov:
                    strip.paste(out, (sx, 0))
                else:
                    strip.paste(out.crop((0, 0, ov, size)), (sx, 0), mask=mask_w)
                    strip.paste(out.crop((ov, 0, size, size)), (sx + ov, 0))
            del outs
        sy = y * scale
        for result, strip in zip(results, strips):
            if sy == 0 or not ov:
                result.paste(strip, (0, sy))
            else:
                result.paste(strip.crop((0, 0, strip.width, ov)), (0, sy), mask=mask_h)
                result.paste(strip.crop((0, ov, strip.width, size)), (0, sy + ov))
        del strips
    return results if isinstance(image, list) else results[0]


# ---------------------------------------------------------------------------------------------------
# A1111 Upscaler.upscale / images.resize_image


class UpscalerCache:
    """Loaded upscaler networks, least recently used evicted beyond `capacity`. Not thread-safe:
    only the GPU thread uses it. `allow_pickle` must be true to load .pth/.pt entries."""

    def __init__(self, capacity: int = 2, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 tile: int = 192, overlap: int = 8, allow_pickle: bool = False):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if tile > 0 and not 0 <= overlap < tile:
            raise ValueError(f"tile overlap {overlap} must be at least 0 and below the tile size {tile}")
        self.capacity = capacity
        self.device = torch.device(device)
        self.dtype = dtype
        self.tile = tile
        self.overlap = overlap
        self.allow_pickle = allow_pickle
        self._models: OrderedDict[tuple, nn.Module] = OrderedDict()

    @property
    def loaded(self) -> list[Path]:
        """Paths of the networks held, least recently used first."""
        return [Path(key[0]) for key in self._models]

    def clear(self) -> None:
        self._models.clear()

    def model(self, info: UpscalerInfo) -> nn.Module:
        if info.path is None:
            raise UpscalerError(f"{info.name} is a built-in upscaler, not a model")
        if not info.usable:
            raise UpscalerError(f'upscaler "{info.name}" cannot be used: {info.skip_reason}')
        try:
            stat = info.path.stat()
        except OSError:
            raise UpscalerError(f'upscaler "{info.name}" is missing ({info.path.name})') from None
        key = (str(info.path), stat.st_mtime_ns, stat.st_size)
        model = self._models.get(key)
        if model is not None:
            self._models.move_to_end(key)
            return model
        for old in [k for k in self._models if k[0] == key[0]]:  # the file changed
            del self._models[old]
        model = load_upscaler_model(info.path, allow_pickle=self.allow_pickle)
        model.to(device=self.device, dtype=self.dtype)
        self._models[key] = model
        while len(self._models) > self.capacity:
            self._models.popitem(last=False)
        return model

    def _do_upscale(self, images: list[Image.Image], info: UpscalerInfo | None, scale: float,
                    cancel: Callable[[], bool] | None) -> list[Image.Image]:
        if info is None or info.name == "None":
            return images
        if info.path is None:
            if info.name not in BUILTIN_UPSCALERS:
                raise UpscalerError(f'unknown upscaler "{info.name}"')
            resample = _LANCZOS if info.name == "Lanczos" else _NEAREST
            return [image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)
                    for image in images]
        return upscale_with_model(self.model(info), images, tile=self.tile, overlap=self.overlap,
                                  device=self.device, dtype=self.dtype, cancel=cancel)

    def upscale(self, image: Image.Image | list[Image.Image], info: UpscalerInfo | None, scale: float, *,
                cancel: Callable[[], bool] | None = None) -> Image.Image | list[Image.Image]:
        """A1111 Upscaler.upscale: up to 3 passes until >= int(W*scale)//8*8, then LANCZOS to it.
        A list of images of one size goes through the model together (tile by tile)."""
        images = image if isinstance(image, list) else [image]
        width, height = images[0].size
        dest_w = max(1, int((width * scale) // 8 * 8))
        dest_h = max(1, int((height * scale) // 8 * 8))
        for _ in range(3):
            shape = images[0].size
            images = self._do_upscale(images, info, scale, cancel)
            if images[0].size == shape:
                break
            if images[0].width >= dest_w and images[0].height >= dest_h:
                break
        images = [picture if picture.size == (dest_w, dest_h) else picture.resize((dest_w, dest_h), resample=_LANCZOS)
                  for picture in images]
        return images if isinstance(image, list) else images[0]

    def resize(self, image: Image.Image, width: int, height: int, info: UpscalerInfo | None, *,
               cancel: Callable[[], bool] | None = None) -> Image.Image:
        """A1111 images.resize_image(0, image, width, height, upscaler_name)."""
        if width < 1 or height < 1:
            raise ValueError(f"cannot resize to {width}x{height}")
        if info is None or info.name == "None" or image.mode == "L":
            return image.resize((width, height), resample=_LANCZOS)
        scale = max(width / image.width, height / image.height)
        if scale > 1.0:
            image = self.upscale(image, info, scale, cancel=cancel)
        if image.size != (width, height):
            image = image.resize((width, height), resample=_LANCZOS)
        return image
