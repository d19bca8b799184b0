"""Tiny LoRA/LyCORIS files for tests and benchmarks: random small weights, layer names taken from
a pipeline's real modules, in the key layouts trainers write (kohya/A1111 LoRA and LoCon, LyCORIS
LoHa and LoKr, diffusers/peft). Nothing here imports generation.lora_networks: tests use these
files to check that module against their own merge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["KINDS", "TinyLora", "write_tiny_lora"]

KINDS = ("lora", "locon", "loha", "lokr", "peft")


@dataclass(frozen=True)
class TinyLora:
    path: Path
    kind: str
    tensors: dict[str, torch.Tensor]  # exactly what was written
    # Layer name as written (key up to the part) -> (pipeline component, module path in it).
    layers: dict[str, tuple[str, str]]
    # Layer name -> {part ("lora_up.weight", "hada_w1_a", "lora_A.weight", "alpha", ...): tensor}.
    parts: dict[str, dict[str, torch.Tensor]]


def _file_text_path(path: str) -> str:
    # Files name CLIP layers with the `text_model.` level, which transformers 5's CLIPTextModel lacks.
    if path.startswith("text_model.") or path == "text_projection":
        return path
    return "text_model." + path


def _factor(n: int) -> int:
    return 2 if n % 2 == 0 else 1


def write_tiny_lora(
    path: Path,
    pipe,
    *,
    kind: str = "lora",
    seed: int = 0,
    rank: int = 4,
    alpha: float = 2.0,
    std: float = 0.2,
    text_encoders: bool = True,
    unet: bool = True,
    select: Callable[[str, str], bool] | None = None,
    unet_name: Callable[[str], str] | None = None,
    dtype: torch.dtype = torch.float32,
    extra: Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> TinyLora:
    """Write a LoRA for every Linear/Conv2d of the pipeline's text encoders and UNet.

    kind: "lora" (kohya, convs with full kernels in lora_down), "locon" (3x3 convs as lora_down 1x1 +
    lora_mid kxk + lora_up), "loha" (3x3 convs with Tucker hada_t1/hada_t2), "lokr" (layers cycle
    through whole/decomposed w1 and w2, 3x3 convs with lokr_t2), "peft" (diffusers keys `unet.` /
    `text_encoder.` / `text_encoder_2.` + module path + `.lora_A.weight`/`.lora_B.weight`, alpha on
    every other layer). `select(component, path)` keeps a subset; `unet_name(path)` gives the
    UNet's name in kohya files (default: the diffusers path; SDXL trainers write sgm names).
    `extra` tensors are added as they are. The suffix of `path` picks safetensors or torch.save.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * std

    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    components = []
    if text_encoders:
        components.append(("text_encoder", "lora_te1_" if sdxl else "lora_te_", "text_encoder."))
        if sdxl:
            components.append(("text_encoder_2", "lora_te2_", "text_encoder_2."))
    if unet:
        components.append(("unet", "lora_unet_", "unet."))

    layers: dict[str, tuple[str, str]] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    index = 0
    for component, kohya_prefix, peft_prefix in components:
        for module_path, module in getattr(pipe, component).named_modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            if select is not None and not select(component, module_path):
                continue
            file_path = module_path if component == "unet" else _file_text_path(module_path)
            if kind == "peft":
                name = peft_prefix + file_path
            else:
                if component == "unet" and unet_name is not None:
                    file_path = unet_name(module_path)
                name = kohya_prefix + file_path.replace(".", "_")
            out_f, in_f = module.weight.shape[:2]
            kernel = tuple(module.weight.shape[2:])
            big_kernel = bool(kernel) and kernel != (1, 1)
            layer = _layer(kind, index, rand, out_f, in_f, kernel, big_kernel, rank)
            if kind != "peft" or index % 2 == 0:
                layer["alpha"] = torch.tensor(alpha)
            layers[name] = (component, module_path)
            parts[name] = layer
            index += 1
    tensors = {f"{name}.{part}": value.to(dtype).contiguous() for name, layer in parts.items()
               for part, value in layer.items()}
    parts = {name: {part: tensors[f"{name}.{part}"] for part in layer} for name, layer in parts.items()}
    for key, value in (extra or {}).items():
        tensors[key] = value
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path), metadata=dict(metadata or {}))
    else:
        torch.save(tensors, path)
    return TinyLora(path=path, kind=kind, tensors=tensors, layers=layers, parts=parts)


def _layer(kind: str, index: int, rand, out_f: int, in_f: int, kernel: tuple[int, ...], big_kernel: bool,
           rank: int) -> dict[str, torch.Tensor]:
    one = (1, 1) if kernel else ()
    if kind == "peft":
        return {"lora_A.weight": rand(rank, in_f, *kernel), "lora_B.weight": rand(out_f, rank, *one)}
    if kind == "lora" or (kind == "locon" and not big_kernel):
        return {"lora_down.weight": rand(rank, in_f, *kernel), "lora_up.weight": rand(out_f, rank, *one)}
    if kind == "locon":
        return {"lora_down.weight": rand(rank, in_f, 1, 1), "lora_mid.weight": rand(rank, rank, *kernel),
                "lora_up.weight": rand(out_f, rank, 1, 1)}
    flat_in = in_f * (kernel[0] * kernel[1] if kernel else 1)
    if kind == "loha":
        if big_kernel:
            return {"hada_w1_a": rand(rank, out_f), "hada_w1_b": rand(rank, in_f), "hada_t1": rand(rank, rank, *kernel),
                    "hada_w2_a": rand(rank, out_f), "hada_w2_b": rand(rank, in_f), "hada_t2": rand(rank, rank, *kernel)}
        return {"hada_w1_a": rand(out_f, rank), "hada_w1_b": rand(rank, flat_in),
                "hada_w2_a": rand(out_f, rank), "hada_w2_b": rand(rank, flat_in)}
    # LoKr: W = kron(w1, w2), w1 (a, b), w2 (out/a, in/b[, kh, kw]).
    a, b = _factor(out_f), _factor(in_f)
    o2, i2 = out_f // a, in_f // b
    variant = index % 4
    layer = {}
    if variant == 2 or (variant == 3 and not big_kernel):
        # Another inner size than w2's: A1111 divides alpha by w2's when both are decomposed.
        inner = rank if variant == 2 else rank + 2
        layer |= {"lokr_w1_a": rand(a, inner), "lokr_w1_b": rand(inner, b)}
    else:
        layer["lokr_w1"] = rand(a, b)
    if variant in (0, 2):
        layer["lokr_w2"] = rand(o2, i2, *kernel)
    elif variant == 3 and big_kernel:
        layer |= {"lokr_w2_a": rand(rank, o2), "lokr_w2_b": rand(rank, i2), "lokr_t2": rand(rank, rank, *kernel)}
    else:  # decomposed flat, as LyCORIS stores convs without Tucker
        layer |= {"lokr_w2_a": rand(o2, rank), "lokr_w2_b": rand(rank, i2 * (kernel[0] * kernel[1] if kernel else 1))}
    return layer
