"""Prompt conditioning for a whole batch: one schedule per request, padded to one shape, swapped mid-run.

TEMPORARY: plain encode_prompt until the A1111 prompt encoder lands.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BatchConditioning:
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor

    @classmethod
    def build(cls, pipe, prompts: list[tuple[str, str, int]], *, steps: int, clip_skip: int, max_chunks: int) -> "BatchConditioning":
        positives, negatives = [], []
        for prompt, negative, count in prompts:
            pos, neg = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative,
                                          clip_skip=clip_skip - 1 if clip_skip > 1 else None)
            positives += [pos] * count
            negatives += [neg] * count
        return cls(torch.cat(positives), torch.cat(negatives))

    def at_step(self, step_index: int):
        return self.prompt_embeds, self.negative_embeds

    def replacement_for(self, step_index: int, current, *, guidance: bool):
        return None
