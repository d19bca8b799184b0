"""Prompt conditioning for a whole batch: one A1111 schedule per image and composable part, padded
to one shape, swapped mid-run when a prompt's editing or alternation says so."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from .conditioning import (ConditioningSchedule, PromptEncoder, pad_chunks, replace_for_step, stack_at,
                           stack_negative_at)
from .prompt_parser import prompt_parts


@dataclass(frozen=True)
class PromptPart:
    """One part of a composable prompt (`a cat AND a dog:0.5`): its schedule and weight."""

    schedule: ConditioningSchedule
    weight: float


@dataclass(frozen=True)
class BatchConditioning:
    parts: tuple[tuple[PromptPart, ...], ...]  # per image, in batch order; one part for a plain prompt

    @classmethod
    def build(cls, pipe, prompts: list[tuple[str, str, int]], *, steps: int, clip_skip: int,
              max_chunks: int, first_pass_steps: int | None = None) -> "BatchConditioning":
        """`prompts`: (prompt, negative prompt, image count) per request, in batch order.
        `first_pass_steps`: a hires pass's conditioning (prompt editing counts on from there)."""
        encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder, max_chunks=max_chunks, clip_skip=clip_skip,
                                tokenizer_2=getattr(pipe, "tokenizer_2", None),
                                text_encoder_2=getattr(pipe, "text_encoder_2", None))
        images: list[tuple[PromptPart, ...]] = []
        with torch.inference_mode():
            for prompt, negative, count in prompts:
                schedules = [(encoder.encode_schedule(text, negative, steps, first_pass_steps=first_pass_steps), weight)
                             for text, weight in prompt_parts(prompt)]
                chunks = max(schedule.chunk_count for schedule, _ in schedules)  # one shape for all parts
                images += [tuple(PromptPart(schedule.padded(chunks), weight) for schedule, weight in schedules)] * count
        return cls(tuple(images))

    @property
    def schedules(self) -> tuple[ConditioningSchedule, ...]:
        """Each image's first part: what the pipeline itself is given."""
        return tuple(parts[0].schedule for parts in self.parts)

    @property
    def is_static(self) -> bool:
        return all(part.schedule.is_static for parts in self.parts for part in parts)

    @property
    def is_composable(self) -> bool:
        """True when some image needs composable guidance (several parts, or one weighted part)."""
        return any(len(parts) > 1 or parts[0].weight != 1.0 for parts in self.parts)

    @property
    def has_pooled(self) -> bool:
        """SDXL conditioning: pooled embeddings go with the per-token ones."""
        return self.parts[0][0].schedule.pooled is not None

    def at_step(self, step_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return stack_at(self.schedules, step_index), stack_negative_at(self.schedules, step_index)

    def pooled_at(self, step_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL: (pooled, negative pooled) of every image at `step_index`, each [images, proj]."""
        return (torch.cat([schedule.pooled_at(step_index) for schedule in self.schedules]),
                torch.cat([schedule.negative_pooled_at(step_index) for schedule in self.schedules]))

    def replacements_after(self, step_index: int, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The pipeline tensors (`prompt_embeds`, for SDXL also `add_text_embeds`) to swap in after
        step `step_index`; empty when nothing changes."""
        current = tensors.get("prompt_embeds")
        if current is None or self.is_static:
            return {}
        replacement = replace_for_step({"prompt_embeds": current}, step_index, self.schedules)
        if replacement is current:
            return {}
        changed = {"prompt_embeds": replacement}
        pooled = tensors.get("add_text_embeds")
        if pooled is not None:
            positive, negative = self.pooled_at(step_index + 1)
            guided = pooled.shape[0] == 2 * len(self.parts)  # [negative; positive] under CFG
            changed["add_text_embeds"] = (torch.cat([negative, positive]) if guided else positive).to(pooled)
        return changed

    def composable_states_at(self, step_index: int) -> torch.Tensor:
        """UNet conditioning for composable guidance at `step_index`: every image's negative, then
        every part of every image in order; [images + parts, 77*n, dim], padded to the longest."""
        tensors = [parts[0].schedule.negative_embeds_at(step_index) for parts in self.parts]
        tensors += [part.schedule.embeds_at(step_index) for parts in self.parts for part in parts]
        empty = self.parts[0][0].schedule.empty_chunk
        return pad_chunks(tensors, empty)

    def composable_pooled_at(self, step_index: int) -> torch.Tensor:
        """SDXL's pooled embeddings in the rows of `composable_states_at`."""
        rows = [parts[0].schedule.negative_pooled_at(step_index) for parts in self.parts]
        rows += [part.schedule.pooled_at(step_index) for parts in self.parts for part in parts]
        return torch.cat(rows)
