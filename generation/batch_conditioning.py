"""Prompt conditioning for a whole batch: one A1111 schedule per image, padded to one shape,
swapped mid-run when a prompt's editing or alternation says so."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .conditioning import ConditioningSchedule, PromptEncoder, replace_for_step, stack_at, stack_negative_at


@dataclass(frozen=True)
class BatchConditioning:
    schedules: tuple[ConditioningSchedule, ...]  # one per image, in batch order

    @classmethod
    def build(cls, pipe, prompts: list[tuple[str, str, int]], *, steps: int, clip_skip: int,
              max_chunks: int) -> "BatchConditioning":
        """`prompts`: (prompt, negative prompt, image count) per request, in batch order."""
        encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder, max_chunks=max_chunks, clip_skip=clip_skip)
        schedules: list[ConditioningSchedule] = []
        with torch.inference_mode():
            for prompt, negative, count in prompts:
                schedules += [encoder.encode_schedule(prompt, negative, steps)] * count
        return cls(tuple(schedules))

    @property
    def is_static(self) -> bool:
        return all(schedule.is_static for schedule in self.schedules)

    def at_step(self, step_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return stack_at(self.schedules, step_index), stack_negative_at(self.schedules, step_index)

    def replacement_for(self, step_index: int, current: torch.Tensor | None) -> torch.Tensor | None:
        """What the pipeline's prompt_embeds must become after step `step_index` (None: no change)."""
        if current is None or self.is_static:
            return None
        replacement = replace_for_step({"prompt_embeds": current}, step_index, self.schedules)
        return None if replacement is current else replacement
