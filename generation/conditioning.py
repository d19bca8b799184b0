"""Text conditioning with AUTOMATIC1111's rules, for diffusers SD-1.x / SD-2.x / SDXL text encoders.

What this reproduces (A1111 v1.10, "Original" emphasis):

- each weighted fragment from `parse_attention` is tokenized on its own (no BOS/EOS);
- tokens fill chunks of 75; BREAK closes the current chunk; when a chunk is full and a comma sits
  within the last 20 tokens, the text after that comma moves to the next chunk; a multi-vector
  textual-inversion embedding is never split between chunks;
- each chunk is encoded as BOS + 75 + EOS (padding with EOS; for SD-2 every token after the first
  EOS becomes the tokenizer's pad token), chunks are concatenated;
- emphasis multiplies each token's embedding by its weight, then rescales so the mean over the
  chunk equals the unweighted mean. Like A1111, the mean is taken over all texts of one prompt's
  schedule together (A1111 encodes them as one batch), counting each schedule entry once;
- clip skip N > 1 takes the hidden state N layers from the end, then the final layer norm;
- SDXL: each chunk goes through both text encoders (penultimate layer, no final norm, as A1111 and
  diffusers do; clip skip N moves both N-1 layers further back), emphasis is applied to each
  encoder's output on its own, the two are concatenated, and the pooled embedding is the second
  encoder's projection of the first chunk, unweighted. An empty negative prompt is all zeros.

Prompt editing and alternation (`prompt_schedule`) give one encoding per distinct text; a
`ConditioningSchedule` hands out the right one for each sampling step, all padded with empty-prompt
chunks to one length so they can be swapped mid-run.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch

from .errors import InvalidRequest, PromptError
from .prompt_parser import BREAK, entry_for_step, parse_attention, prompt_schedule

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "CHUNK_TOKENS",
    "ConditioningSchedule",
    "PromptChunk",
    "PromptEncoder",
    "TokenizedText",
    "make_step_callback",
    "pad_chunks",
    "replace_for_step",
    "stack_at",
    "stack_negative_at",
]

CHUNK_TOKENS = 75  # tokens a user can place in one chunk; +BOS +EOS = the encoder's 77 positions
CHUNK_LENGTH = CHUNK_TOKENS + 2
COMMA_BACKTRACK = 20  # A1111's default "comma padding backtrack"
_ENCODER_BATCH = 32  # chunks per text-encoder call, to bound memory for long schedules
_MIN_RELATIVE_MEAN = 1e-4  # below this |mean| / mean(|z|), the emphasis rescale is meaningless
_TOKENIZE_CACHE_SIZE = 512  # texts whose chunks a PromptEncoder keeps (checks, counts and encoding reuse them)


@dataclass(frozen=True)
class PromptChunk:
    """One encoder input: BOS + 75 tokens (EOS-padded) + EOS, with a weight per position."""

    token_ids: tuple[int, ...]
    multipliers: tuple[float, ...]


@dataclass(frozen=True)
class TokenizedText:
    chunks: tuple[PromptChunk, ...]
    token_count: int  # as A1111's counter shows it: a chunk closed early (BREAK, comma) counts 75


class _ChunkBuilder:
    """Fills 75-token chunks the way A1111's tokenize_line does."""

    def __init__(self, *, bos: int, eos: int, comma: int | None, backtrack: int):
        self.bos, self.eos, self.comma, self.backtrack = bos, eos, comma, backtrack
        self.chunks: list[PromptChunk] = []
        self.token_count = 0
        self.ids: list[int] = []
        self.weights: list[float] = []
        self.last_comma = -1

    def close(self, *, last: bool = False) -> None:
        self.token_count += len(self.ids) if last else CHUNK_TOKENS
        padding = CHUNK_TOKENS - len(self.ids)
        self.chunks.append(PromptChunk(
            token_ids=(self.bos, *self.ids, *[self.eos] * padding, self.eos),
            multipliers=(1.0, *self.weights, *[1.0] * padding, 1.0),
        ))
        self.ids, self.weights, self.last_comma = [], [], -1

    def add(self, unit: tuple[int, ...], weight: float) -> None:
        """Add one token, or one multi-vector embedding's tokens as an indivisible unit."""
        if len(unit) > CHUNK_TOKENS:
            raise PromptError(f"An embedding with {len(unit)} vectors does not fit in a {CHUNK_TOKENS}-token chunk.")
        if unit == (self.comma,):
            self.last_comma = len(self.ids)
        elif (self.backtrack and len(self.ids) == CHUNK_TOKENS and self.last_comma != -1
              and CHUNK_TOKENS - self.last_comma <= self.backtrack):
            # Full chunk, comma nearby: move the words after the comma into the next chunk.
            cut = self.last_comma + 1
            moved_ids, moved_weights = self.ids[cut:], self.weights[cut:]
            del self.ids[cut:], self.weights[cut:]
            self.close()
            self.ids, self.weights = moved_ids, moved_weights
        if len(self.ids) == CHUNK_TOKENS or len(self.ids) + len(unit) > CHUNK_TOKENS:
            self.close()
        self.ids.extend(unit)
        self.weights.extend([weight] * len(unit))

    def finish(self) -> TokenizedText:
        if self.ids or not self.chunks:
            self.close(last=True)
        return TokenizedText(chunks=tuple(self.chunks), token_count=self.token_count)


def _embedding_groups(tokenizer: PreTrainedTokenizerBase) -> dict[int, tuple[int, ...]]:
    """Multi-vector textual-inversion tokens as diffusers adds them (`name`, `name_1`, ...), by first id."""
    added = tokenizer.added_tokens_encoder
    groups: dict[int, tuple[int, ...]] = {}
    for token, token_id in added.items():
        if f"{token}_1" not in added:
            continue
        ids = [token_id]
        while f"{token}_{len(ids)}" in added:
            ids.append(added[f"{token}_{len(ids)}"])
        groups[token_id] = tuple(ids)
    return groups


def _units(ids: list[int], groups: dict[int, tuple[int, ...]]) -> list[tuple[int, ...]]:
    units: list[tuple[int, ...]] = []
    position = 0
    while position < len(ids):
        group = groups.get(ids[position])
        if group is not None and tuple(ids[position:position + len(group)]) == group:
            units.append(group)
            position += len(group)
        else:
            units.append((ids[position],))
            position += 1
    return units


class PromptEncoder:
    """Encodes prompts for one SD-1.x / SD-2.x tokenizer + CLIP text encoder pair, or SDXL's two
    (`text_encoder_2` and `tokenizer_2` given; the tokenizers split text alike and differ in padding).

    Cheap to create (one per request is fine). Textual-inversion embeddings must already be loaded
    into the tokenizer and text encoder (diffusers' `load_textual_inversion`); their trigger words
    then work anywhere, weighted or not. Not thread-safe: callers that share one lock it.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, text_encoder: PreTrainedModel, *, max_chunks: int,
                 clip_skip: int = 1, comma_backtrack: int = COMMA_BACKTRACK,
                 tokenizer_2: PreTrainedTokenizerBase | None = None, text_encoder_2: PreTrainedModel | None = None):
        from diffusers.loaders import TextualInversionLoaderMixin

        layers = text_encoder.config.num_hidden_layers
        if not 1 <= clip_skip <= layers:
            raise InvalidRequest([f"clip skip must be from 1 to {layers} for this model"])
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be at least 1, got {max_chunks}")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_chunks = max_chunks
        self.clip_skip = clip_skip
        self.comma_backtrack = comma_backtrack
        # diffusers' own expansion of multi-vector triggers ("name" -> "name name_1 ..."); the mixin
        # needs no state, so a bare instance gives access to it without a pipeline.
        self._ti_converter = TextualInversionLoaderMixin()
        self._bos = tokenizer.bos_token_id
        self._eos = tokenizer.eos_token_id
        self._pad = _pad_id(tokenizer)
        self.text_encoder_2 = text_encoder_2
        self._pad_2 = _pad_id(tokenizer_2) if tokenizer_2 is not None else None
        if (tokenizer_2 is None) != (text_encoder_2 is None):
            raise ValueError("SDXL needs both tokenizer_2 and text_encoder_2")
        # convert_tokens_to_ids, not get_vocab(): copying the 49k-entry vocabulary costs ~20 ms per request.
        comma = tokenizer.convert_tokens_to_ids(",</w>")
        self._comma = None if comma is None or comma == tokenizer.unk_token_id else comma
        # text -> its chunks, least recently used first; valid while the tokenizer keeps this size
        self._tokenized: OrderedDict[str, TokenizedText] = OrderedDict()
        self._tokenized_size = len(tokenizer)

    # -- tokens ---------------------------------------------------------------------------------

    def tokenize(self, text: str) -> TokenizedText:
        """Chunks of one text (emphasis and BREAK applied; no prompt-editing syntax).

        The last `_TOKENIZE_CACHE_SIZE` texts are remembered until the tokenizer's size changes
        (textual inversion adds tokens), so checking, counting and encoding tokenize a text once.
        """
        if len(self.tokenizer) != self._tokenized_size:
            self._tokenized.clear()
            self._tokenized_size = len(self.tokenizer)
        if (known := self._tokenized.get(text)) is not None:
            self._tokenized.move_to_end(text)
            return known
        tokenized = self._tokenize(text)
        self._tokenized[text] = tokenized
        if len(self._tokenized) > _TOKENIZE_CACHE_SIZE:
            self._tokenized.popitem(last=False)
        return tokenized

    def _tokenize(self, text: str) -> TokenizedText:
        fragments = parse_attention(text)
        texts = [fragment for fragment, weight in fragments if (fragment, weight) != BREAK]
        groups = _embedding_groups(self.tokenizer)
        if groups:  # diffusers' conversion rewrites only multi-vector triggers; else it would just tokenize twice
            texts = [self._ti_converter.maybe_convert_prompt(fragment, self.tokenizer) for fragment in texts]
        token_ids = iter(self.tokenizer(texts, add_special_tokens=False, truncation=False,
                                        verbose=False).input_ids if texts else [])
        builder = _ChunkBuilder(bos=self._bos, eos=self._eos, comma=self._comma, backtrack=self.comma_backtrack)
        for fragment, weight in fragments:
            if (fragment, weight) == BREAK:
                builder.close()
                continue
            for unit in _units(next(token_ids), groups):
                builder.add(unit, weight)
        return builder.finish()

    def token_count(self, prompt: str, *, steps: int = 20) -> int:
        """The count A1111 shows under a prompt ("80/150" shows 80): tokens without BOS/EOS, a
        chunk closed early by BREAK counting 75; for prompt editing, the longest text at `steps`."""
        return max(self.tokenize(text).token_count for text in {text for _, text in prompt_schedule(prompt, steps)})

    def _checked(self, text: str, what: str) -> TokenizedText:
        tokenized = self.tokenize(text)
        if len(tokenized.chunks) > self.max_chunks:
            raise PromptError(f"The {what} is {tokenized.token_count} tokens; the limit is "
                              f"{self.max_chunks * CHUNK_TOKENS}. Shorten it.")
        return tokenized

    # -- encoding -------------------------------------------------------------------------------

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    def _padded_ids(self, chunks: list[PromptChunk], pad: int) -> list[list[int]]:
        rows = []
        for chunk in chunks:
            ids = list(chunk.token_ids)
            if pad != self._eos:  # SD-2, SDXL's second encoder: pad after the first EOS with the pad token
                first_eos = ids.index(self._eos)
                ids[first_eos + 1:] = [pad] * (len(ids) - first_eos - 1)
            rows.append(ids)
        return rows

    def _run_encoder(self, chunks: list[PromptChunk]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Per text encoder, [len(chunks), 77, dim] float32 hidden states before emphasis; and for
        SDXL the pooled projections [len(chunks), proj] (else None)."""
        if not self.is_sdxl:
            return [self._run_text_encoder(self.text_encoder, self._padded_ids(chunks, self._pad))[0]], None
        first, _ = self._run_text_encoder(self.text_encoder, self._padded_ids(chunks, self._pad))
        second, pooled = self._run_text_encoder(self.text_encoder_2, self._padded_ids(chunks, self._pad_2))
        return [first, second], pooled

    def _run_text_encoder(self, encoder: PreTrainedModel, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One encoder's chosen layer for every row, and its pooled projection if it has one."""
        hidden, pooled = [], []
        with torch.no_grad():
            for start in range(0, len(rows), _ENCODER_BATCH):
                input_ids = torch.tensor(rows[start:start + _ENCODER_BATCH], dtype=torch.long, device=encoder.device)
                result = encoder(input_ids=input_ids, output_hidden_states=self.is_sdxl or self.clip_skip > 1)
                if self.is_sdxl:  # the penultimate layer (further back with clip skip), no final norm
                    layer = result.hidden_states[-(self.clip_skip + 1)]
                elif self.clip_skip > 1:
                    # transformers 5 flattened CLIPTextModel; older versions nest it under text_model.
                    final_norm = getattr(encoder, "text_model", encoder).final_layer_norm
                    layer = final_norm(result.hidden_states[-self.clip_skip])
                else:
                    layer = result.last_hidden_state
                hidden.append(layer.float())
                if getattr(result, "text_embeds", None) is not None:
                    pooled.append(result.text_embeds.float())
        return torch.cat(hidden), (torch.cat(pooled) if pooled else None)

    def _empty_chunk_ids(self) -> PromptChunk:
        return _ChunkBuilder(bos=self._bos, eos=self._eos, comma=None, backtrack=0).finish().chunks[0]

    def _encode_texts(self, counts: Mapping[str, int], what: str) -> _EncodedTexts:
        """Encodings ([chunks*77, dim], encoder dtype) of the distinct texts of one schedule, all
        with the schedule's longest chunk count, plus the empty chunk ([77, dim]) used for padding
        and, for SDXL, each text's pooled embedding ([1, proj]).

        `counts`: how many schedule entries use each text, which weights the emphasis mean as
        A1111's batch of one entry per schedule step does."""
        tokenized = {text: self._checked(text, what) for text in counts}
        chunk_count = max(len(t.chunks) for t in tokenized.values())
        empty = self._empty_chunk_ids()

        # One encoder pass for every chunk; row 0 is the empty chunk.
        all_chunks = [empty]
        row_of: dict[str, list[int]] = {}
        for text, tokens in tokenized.items():
            rows = []
            for index in range(chunk_count):
                if index < len(tokens.chunks):
                    rows.append(len(all_chunks))
                    all_chunks.append(tokens.chunks[index])
                else:
                    rows.append(0)
            row_of[text] = rows
        hiddens, pooled = self._run_encoder(all_chunks)
        device = hiddens[0].device

        texts = list(tokenized)
        weights = torch.tensor([counts[text] for text in texts], dtype=torch.float32, device=device)
        per_chunk: dict[str, list[torch.Tensor]] = {text: [] for text in texts}
        for index in range(chunk_count):
            rows = [row_of[text][index] for text in texts]
            multipliers = torch.tensor([all_chunks[row].multipliers for row in rows],
                                       dtype=torch.float32, device=device)
            emphasized = bool((multipliers != 1.0).any())
            # each encoder's output gets its own emphasis (A1111 weights each SDXL embedder alone)
            z = torch.cat([_emphasize(hidden[rows], multipliers, weights) if emphasized else hidden[rows]
                           for hidden in hiddens], dim=-1)  # [texts, 77, dim]
            for text, text_z in zip(texts, z):
                per_chunk[text].append(text_z)
        dtype = self.text_encoder.dtype
        return _EncodedTexts(
            embeds={text: torch.cat(parts).to(dtype) for text, parts in per_chunk.items()},
            empty=torch.cat([hidden[0] for hidden in hiddens], dim=-1).to(dtype),
            pooled=None if pooled is None else {text: pooled[row_of[text][0]][None].to(dtype) for text in texts},
        )

    def encode(self, prompt: str, negative: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds, negative_prompt_embeds), each [1, 77*n, dim] with the same n.

        The texts are used as they are: prompt-editing syntax is not expanded (use
        `encode_schedule` for that)."""
        schedule = self.encode_schedule(prompt, negative, 1, parse=False)
        return schedule.embeds[0], schedule.negative_embeds[0]

    def encode_schedule(self, prompt: str, negative: str, steps: int, *, parse: bool = True,
                        first_pass_steps: int | None = None) -> ConditioningSchedule:
        """Encodings for every step of a `steps`-step run, with prompt editing and alternation
        (in the negative prompt too, as A1111 does); `parse=False` takes both texts as they are.
        `first_pass_steps`: this is a hires pass after a first pass of that many steps."""
        prompt_entries = prompt_schedule(prompt, steps, first_pass_steps=first_pass_steps) if parse \
            else [(steps, prompt)]
        negative_entries = prompt_schedule(negative, steps, first_pass_steps=first_pass_steps) if parse \
            else [(steps, negative)]
        positive = self._encode_texts(Counter(text for _, text in prompt_entries), "prompt")
        negatives = self._encode_texts(Counter(text for _, text in negative_entries), "negative prompt")
        chunks = max(_chunks_of(next(iter(positive.embeds.values()))), _chunks_of(next(iter(negatives.embeds.values()))))
        empty = positive.empty
        prompt_embeds = {text: _pad(z, chunks, empty)[None] for text, z in positive.embeds.items()}
        negative_embeds = {text: _pad(z, chunks, empty)[None] for text, z in negatives.embeds.items()}
        negative_pooled = negatives.pooled
        if self.is_sdxl and all(text == "" for _, text in negative_entries):
            # A1111 (and diffusers' force_zeros_for_empty_prompt): SDXL's empty negative is zeros
            negative_embeds = {text: torch.zeros_like(z) for text, z in negative_embeds.items()}
            negative_pooled = {text: torch.zeros_like(p) for text, p in negative_pooled.items()}
        return ConditioningSchedule(
            end_steps=tuple(end for end, _ in prompt_entries),
            texts=tuple(text for _, text in prompt_entries),
            embeds=tuple(prompt_embeds[text] for _, text in prompt_entries),
            negative_end_steps=tuple(end for end, _ in negative_entries),
            negative_texts=tuple(text for _, text in negative_entries),
            negative_embeds=tuple(negative_embeds[text] for _, text in negative_entries),
            empty_chunk=empty[None],
            pooled=None if positive.pooled is None else tuple(positive.pooled[text] for _, text in prompt_entries),
            negative_pooled=None if negative_pooled is None else tuple(negative_pooled[text] for _, text in negative_entries),
        )


@dataclass(frozen=True)
class _EncodedTexts:
    embeds: dict[str, torch.Tensor]  # text -> [chunks*77, dim]
    empty: torch.Tensor  # [77, dim]
    pooled: dict[str, torch.Tensor] | None  # SDXL: text -> [1, proj]


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _emphasize(z: torch.Tensor, multipliers: torch.Tensor, entry_counts: torch.Tensor) -> torch.Tensor:
    """A1111 "Original" emphasis for one chunk position across a schedule's texts.

    z: [texts, 77, dim]; multipliers: [texts, 77]; entry_counts: [texts] (the mean is over the batch
    A1111 would encode, in which each text appears once per schedule entry)."""
    share = entry_counts / entry_counts.sum()
    original_mean = (z.mean(dim=(1, 2)) * share).sum()
    weighted = z * multipliers[:, :, None]
    new_mean = (weighted.mean(dim=(1, 2)) * share).sum()
    # Real CLIP encoders end in a LayerNorm with a bias, so the mean is well away from zero. An
    # encoder whose mean is ~0 (random test weights) would turn the ratio into inf/NaN: skip it.
    if new_mean.abs() <= _MIN_RELATIVE_MEAN * weighted.abs().mean():
        return weighted
    return weighted * (original_mean / new_mean)


def _chunks_of(embeds: torch.Tensor) -> int:
    return embeds.shape[-2] // CHUNK_LENGTH


def _pad(embeds: torch.Tensor, chunks: int, empty: torch.Tensor) -> torch.Tensor:
    """Append empty-prompt chunks to [tokens, dim] (or [batch, tokens, dim]) embeddings."""
    missing = chunks - _chunks_of(embeds)
    if missing <= 0:
        return embeds
    filler = empty.reshape(CHUNK_LENGTH, -1).repeat(missing, 1)
    if embeds.dim() == 3:
        filler = filler[None].expand(embeds.shape[0], -1, -1)
    return torch.cat([embeds, filler.to(embeds.dtype)], dim=-2)


@dataclass(frozen=True, eq=False)
class ConditioningSchedule:
    """One image's prompt and negative encodings over a run, from `PromptEncoder.encode_schedule`.

    Entries follow `prompt_schedule` (last 1-based step, text); every tensor is [1, 77*n, dim] with
    one n for the whole schedule, so any entry can replace any other mid-run.
    """

    end_steps: tuple[int, ...]
    texts: tuple[str, ...]
    embeds: tuple[torch.Tensor, ...]
    negative_end_steps: tuple[int, ...]
    negative_texts: tuple[str, ...]
    negative_embeds: tuple[torch.Tensor, ...]
    empty_chunk: torch.Tensor  # [1, 77, dim]: the empty prompt's encoding, for padding
    pooled: tuple[torch.Tensor, ...] | None = None  # SDXL: [1, proj] per entry of `embeds`
    negative_pooled: tuple[torch.Tensor, ...] | None = None

    @property
    def chunk_count(self) -> int:
        return _chunks_of(self.embeds[0])

    @property
    def is_static(self) -> bool:
        """True when every step uses the same prompt and negative encodings."""
        return (all(e is self.embeds[0] for e in self.embeds)
                and all(e is self.negative_embeds[0] for e in self.negative_embeds))

    def entry_at(self, step_index: int) -> int:
        """Index into `embeds` used at 0-based sampling step `step_index` (A1111's rule, see
        `prompt_parser.entry_for_step`)."""
        return entry_for_step(list(self.end_steps), step_index)

    def negative_entry_at(self, step_index: int) -> int:
        return entry_for_step(list(self.negative_end_steps), step_index)

    def text_at(self, step_index: int) -> str:
        return self.texts[self.entry_at(step_index)]

    def embeds_at(self, step_index: int) -> torch.Tensor:
        """Prompt embeddings [1, 77*n, dim] for 0-based step `step_index`."""
        return self.embeds[self.entry_at(step_index)]

    def negative_embeds_at(self, step_index: int) -> torch.Tensor:
        return self.negative_embeds[self.negative_entry_at(step_index)]

    def pooled_at(self, step_index: int) -> torch.Tensor:
        """SDXL's pooled prompt embedding [1, proj] for 0-based step `step_index`."""
        if self.pooled is None:
            raise ValueError("only SDXL conditioning has pooled embeddings")
        return self.pooled[self.entry_at(step_index)]

    def negative_pooled_at(self, step_index: int) -> torch.Tensor:
        if self.negative_pooled is None:
            raise ValueError("only SDXL conditioning has pooled embeddings")
        return self.negative_pooled[self.negative_entry_at(step_index)]

    def padded(self, chunk_count: int) -> ConditioningSchedule:
        """The same schedule with every encoding padded to `chunk_count` chunks."""
        if chunk_count <= self.chunk_count:
            return self
        cache: dict[int, torch.Tensor] = {}

        def pad(tensor: torch.Tensor) -> torch.Tensor:  # keeps shared tensors shared
            if id(tensor) not in cache:
                cache[id(tensor)] = _pad(tensor, chunk_count, self.empty_chunk)
            return cache[id(tensor)]

        return ConditioningSchedule(
            end_steps=self.end_steps, texts=self.texts, embeds=tuple(pad(e) for e in self.embeds),
            negative_end_steps=self.negative_end_steps, negative_texts=self.negative_texts,
            negative_embeds=tuple(pad(e) for e in self.negative_embeds), empty_chunk=self.empty_chunk,
            pooled=self.pooled, negative_pooled=self.negative_pooled,
        )


# diffusers callback_on_step_end: (pipeline, step index, timestep, tensors) -> tensors to replace
StepCallback = Callable[[Any, int, Any, dict], dict]


def _stack(schedules: Sequence[ConditioningSchedule],
           pick: Callable[[ConditioningSchedule], torch.Tensor]) -> torch.Tensor:
    if not schedules:
        raise ValueError("no schedules to stack")
    return pad_chunks([pick(schedule) for schedule in schedules], schedules[0].empty_chunk)


def pad_chunks(tensors: Sequence[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    """[1, 77*n_i, dim] encodings (all from one text encoder) stacked into [len, 77*max(n), dim],
    the shorter ones padded with the empty prompt's chunk."""
    chunks = max(_chunks_of(tensor) for tensor in tensors)
    return torch.cat([_pad(tensor, chunks, empty) for tensor in tensors])


def stack_at(schedules: Sequence[ConditioningSchedule], step_index: int) -> torch.Tensor:
    """Prompt embeddings of a batch (one schedule per image) at `step_index`: [batch, 77*n, dim],
    every image padded with empty chunks to the longest."""
    return _stack(schedules, lambda schedule: schedule.embeds_at(step_index))


def stack_negative_at(schedules: Sequence[ConditioningSchedule], step_index: int) -> torch.Tensor:
    return _stack(schedules, lambda schedule: schedule.negative_embeds_at(step_index))


def replace_for_step(callback_kwargs: Mapping[str, Any], step: int,
                     schedules: Sequence[ConditioningSchedule]) -> torch.Tensor:
    """The `prompt_embeds` a diffusers `callback_on_step_end` should return after step `step`.

    diffusers calls the callback at the end of step `step` and uses what it returns from step
    `step + 1` on, so this gives the embeddings for `step + 1`. With classifier-free guidance
    StableDiffusionPipeline holds ``cat([negative, positive])`` (2*batch rows) in `prompt_embeds`;
    without it, the positive rows only: both are recognised from the tensor's batch size. The
    result has the current tensor's device and dtype; when nothing changes the current tensor
    itself comes back.
    """
    current = callback_kwargs["prompt_embeds"]
    batch = len(schedules)
    if current.shape[0] not in (batch, 2 * batch):
        raise ValueError(f"prompt_embeds has {current.shape[0]} rows; expected {batch} or {2 * batch} "
                         "(one schedule per image)")
    guided = current.shape[0] == 2 * batch
    unchanged = all(s.entry_at(step + 1) == s.entry_at(step) for s in schedules)
    if guided:
        unchanged = unchanged and all(s.negative_entry_at(step + 1) == s.negative_entry_at(step) for s in schedules)
    if unchanged:
        return current
    positive = stack_at(schedules, step + 1)
    replacement = torch.cat([stack_negative_at(schedules, step + 1), positive]) if guided else positive
    if replacement.shape[1:] != current.shape[1:]:
        raise ValueError(f"schedule embeddings {tuple(replacement.shape)} do not match prompt_embeds "
                         f"{tuple(current.shape)}: start the run with stack_at(schedules, 0)")
    return replacement.to(device=current.device, dtype=current.dtype)


def make_step_callback(schedules: Sequence[ConditioningSchedule], then: StepCallback | None = None) -> StepCallback:
    """A `callback_on_step_end` that swaps prompt embeddings on schedule (needs
    ``callback_on_step_end_tensor_inputs`` to include "prompt_embeds"). `then`, if given, runs
    first with the same arguments (previews, cancelling) and may return its own tensors."""

    def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        outputs = dict(then(pipe, step, timestep, callback_kwargs) or {}) if then is not None else {}
        if "prompt_embeds" in callback_kwargs:
            outputs["prompt_embeds"] = replace_for_step(callback_kwargs, step, schedules)
        return outputs

    return on_step_end
