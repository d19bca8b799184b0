"""Prompt conditioning for a whole batch: one A1111 schedule per image and composable part, padded
to one shape, swapped mid-run when a prompt's editing or alternation says so."""

from __future__ import annotations

from dataclasses import dataclass

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
              max_chunks: int) -> "BatchConditioning":
        """`prompts`: (prompt, negative prompt, image count) per request, in batch order."""
        encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder, max_chunks=max_chunks, clip_skip=clip_skip)
        images: list[tuple[PromptPart, ...]] = []
        with torch.inference_mode():
            for prompt, negative, count in prompts:
                schedules = [(encoder.encode_schedule(text, negative, steps), weight)
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

    def at_step(self, step_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return stack_at(self.schedules, step_index), stack_negative_at(self.schedules, step_index)

    def replacement_for(self, step_index: int, current: torch.Tensor | None) -> torch.Tensor | None:
        """What the pipeline's prompt_embeds must become after step `step_index` (None: no change)."""
        if current is None or self.is_static:
            return None
        replacement = replace_for_step({"prompt_embeds": current}, step_index, self.schedules)
        return None if replacement is current else replacement

    def composable_states_at(self, step_index: int) -> torch.Tensor:
        """UNet conditioning for composable guidance at `step_index`: every image's negative, then
        every part of every image in order; [images + parts, 77*n, dim], padded to the longest."""
        tensors = [parts[0].schedule.negative_embeds_at(step_index) for parts in self.parts]
        tensors += [part.schedule.embeds_at(step_index) for parts in self.parts for part in parts]
        empty = self.parts[0][0].schedule.empty_chunk
        return pad_chunks(tensors, empty)
