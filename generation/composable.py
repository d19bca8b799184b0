"""A1111's composable diffusion (`a cat AND a dog:0.5`) around a diffusers SD or SDXL pipeline's UNet.

The pipeline runs as usual, given each image's first part. Two hooks widen every UNet call so
that it evaluates the negative prompt and every part of every image, then hand the pipeline one
prediction per image: ``uncond + sum_i w_i (cond_i - uncond)``. The pipeline's own guidance turns
that into ``uncond + cfg * sum_i w_i (cond_i - uncond)``, which is A1111's `combine_denoised`.
(The combination is linear, so it is the same in epsilon, v and x0 space.)
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from .batch_conditioning import BatchConditioning


class ComposableGuidance:
    def __init__(self, conditioning: BatchConditioning):
        self.conditioning = conditioning
        self.step_index = 0  # the sampling step the next UNet call belongs to; the step callback moves it
        self._rows = torch.tensor([image for image, parts in enumerate(conditioning.parts) for _ in parts])
        self._weights = torch.tensor([part.weight for parts in conditioning.parts for part in parts])
        self._guided: bool | None = None

    @contextlib.contextmanager
    def attached(self, unet: torch.nn.Module) -> Iterator[None]:
        widen = unet.register_forward_pre_hook(self._widen, with_kwargs=True)
        combine = unet.register_forward_hook(self._combine, with_kwargs=True)
        try:
            yield
        finally:
            widen.remove()
            combine.remove()

    def _widen(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        args = list(args)
        sample = args[0] if args else kwargs["sample"]
        images = len(self.conditioning.parts)
        if sample.shape[0] not in (images, 2 * images):
            raise ValueError(f"the UNet got {sample.shape[0]} rows for {images} images")
        added = kwargs.get("added_cond_kwargs")
        if added and set(added) != {"text_embeds", "time_ids"}:
            raise ValueError(f"composable prompts cannot widen {sorted(added)}")
        # With classifier-free guidance the pipeline sends [uncond rows; cond rows] of the same latents.
        self._guided = sample.shape[0] == 2 * images
        rows = self._rows.to(sample.device)
        latents = sample[images:] if self._guided else sample
        wide = torch.cat([latents, latents[rows]])
        states = self.conditioning.composable_states_at(self.step_index).to(sample.device, sample.dtype)
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if torch.is_tensor(timestep) and timestep.ndim == 1 and timestep.shape[0] == sample.shape[0]:
            per_image = timestep[images:] if self._guided else timestep
            timestep = torch.cat([per_image, per_image[rows]])
        if added:  # SDXL: the pooled embedding goes with each row's prompt; the size ids are the image's
            time_ids = added["time_ids"][images:] if self._guided else added["time_ids"]
            kwargs["added_cond_kwargs"] = {
                "text_embeds": self.conditioning.composable_pooled_at(self.step_index).to(sample.device, sample.dtype),
                "time_ids": torch.cat([time_ids, time_ids[rows]]),
            }
        for position, name, value in ((0, "sample", wide), (1, "timestep", timestep), (2, "encoder_hidden_states", states)):
            if len(args) > position:
                args[position] = value
            else:
                kwargs[name] = value
        return tuple(args), kwargs

    def _combine(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        prediction = output[0] if isinstance(output, tuple) else output.sample
        images = len(self.conditioning.parts)
        uncond, conds = prediction[:images], prediction[images:]
        rows = self._rows.to(prediction.device)
        weights = self._weights.to(prediction.device, prediction.dtype).view(-1, *[1] * (prediction.dim() - 1))
        combined = uncond.index_add(0, rows, weights * (conds - uncond[rows]))
        result = torch.cat([uncond, combined]) if self._guided else combined
        return (result,) if isinstance(output, tuple) else type(output)(sample=result)


class PerImageGuidance:
    """Classifier-free guidance of its own for each image of a batch, so jobs that differ only in
    CFG scale share one pipeline call. The pipeline runs with the batch's largest scale `g`; a hook
    on the UNet's output turns each image's conditional prediction into
    ``uncond + (g_i / g) (cond - uncond)``, so the pipeline's ``uncond + g (cond' - uncond)`` is
    ``uncond + g_i (cond - uncond)``: what the image gets alone. Attach it after ComposableGuidance
    (it then scales the combined prediction, which is A1111's order too)."""

    def __init__(self, scales: list[float]):
        self.scale = max(scales)
        self._ratios = torch.tensor([scale / self.scale for scale in scales])

    @contextlib.contextmanager
    def attached(self, unet: torch.nn.Module) -> Iterator[None]:
        handle = unet.register_forward_hook(self._rescale, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def _rescale(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        prediction = output[0] if isinstance(output, tuple) else output.sample
        images = self._ratios.shape[0]
        if prediction.shape[0] != 2 * images:
            raise ValueError(f"per-image guidance needs [uncond; cond] rows for {images} images, "
                             f"got {prediction.shape[0]}")
        uncond, cond = prediction[:images], prediction[images:]
        ratios = self._ratios.to(prediction.device, prediction.dtype).view(-1, *[1] * (prediction.dim() - 1))
        result = torch.cat([uncond, uncond + ratios * (cond - uncond)])
        return (result,) if isinstance(output, tuple) else type(output)(sample=result)
