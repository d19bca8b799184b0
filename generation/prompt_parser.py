"""The AUTOMATIC1111 (v1.10) prompt language, without torch.

Three independent layers, applied in this order by the encoder:

1. `split_and`: composable-diffusion parts, ``a cat AND a dog:0.5``.
2. `prompt_schedule`: prompt editing ``[from:to:when]`` and alternation ``[a|b]``, giving the plain
   text to use at each sampling step.
3. `parse_attention`: emphasis ``(x)``, ``[x]``, ``(x:1.3)`` and ``BREAK`` on one such text, giving
   weighted fragments.

Each function reproduces A1111's results (including its tolerance for unbalanced brackets); the
few deliberate differences are noted where they occur. Every function here is linear in the
length of its text (`prompt_schedule`: in length x steps), so member text cannot stall the bot;
A1111's own regular expressions are not, and are replaced by equivalent scans.

`schedule_texts` and `plain_text` give the words the text encoder actually reads, for moderation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple, Union

from .errors import PromptError

__all__ = [
    "BREAK",
    "EXTRA_NETWORK",
    "LORA_TYPES",
    "LoraTag",
    "lora_tags",
    "extra_network_tags",
    "parse_attention",
    "plain_text",
    "prompt_parts",
    "prompt_schedule",
    "schedule_texts",
    "split_and",
    "without_extra_networks",
]

# The marker fragment `parse_attention` emits for the BREAK keyword.
BREAK: tuple[str, float] = ("BREAK", -1.0)

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# ---------------------------------------------------------------------------------------------
# Emphasis
# ---------------------------------------------------------------------------------------------

_ESCAPABLE = "()[]\\"
# A weight that closes a round bracket: `:1.5)`, `: 1.5 )`. A1111 accepts any run of digits and dots.
_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
# Ordinary text: everything up to the next character with a meaning.
_TEXT_RUN = re.compile(r"[^\\()\[\]:]+")
_BREAK_WORD = re.compile(r"\bBREAK\b")
# Up to this many brackets around a fragment, its weight is multiplied in A1111's order, bit for bit.
_EXACT_DEPTH = 16


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into (fragment, weight) pairs following A1111's emphasis rules.

    ``(x)`` multiplies by 1.1, ``[x]`` divides by 1.1, ``(x:1.5)`` multiplies by 1.5; nesting
    multiplies; a bracket left open applies to the end of the text; a closing bracket with nothing
    open is literal; ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters. ``BREAK`` (upper
    case, whole word) becomes the marker ``("BREAK", -1.0)``. Neighbours of equal weight merge.
    A weight that is not a finite number raises PromptError.

    >>> parse_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]

    Differences from A1111: a BREAK inside brackets stays a BREAK (A1111 multiplies the marker's
    weight and then encodes the word "break" with a negative weight). Inside more than
    `_EXACT_DEPTH` brackets a weight may differ from A1111's in the last bit of the float (and
    neighbours that A1111 merges may then stay apart, or the other way round).
    """
    # A1111 multiplies every entry since a bracket opened each time one closes: quadratic for
    # `(a]` repeated. Pass 1 reads the text into pieces and decides each bracket's multiplier and
    # when A1111 applies it; pass 2 gives each piece the product of the brackets around it.
    pieces: list[tuple[str, object]] = []  # ("text", str), ("break", None), ("open" | "close", bracket)
    multipliers: list[float] = []
    is_square: list[bool] = []
    closed: list[int] = []  # brackets in the order they close
    open_round: list[int] = []
    open_square: list[int] = []

    def add_text(run: str) -> None:
        for index, part in enumerate(_split_breaks(run)):
            if index:
                pieces.append(("break", None))
            pieces.append(("text", part))

    def open_bracket(stack: list[int], square: bool) -> None:
        stack.append(len(multipliers))
        pieces.append(("open", len(multipliers)))
        multipliers.append(SQUARE_MULTIPLIER if square else ROUND_MULTIPLIER)
        is_square.append(square)

    def close_bracket(stack: list[int], multiplier: float) -> None:
        bracket = stack.pop()
        multipliers[bracket] = multiplier
        pieces.append(("close", bracket))
        closed.append(bracket)

    position = 0
    length = len(text)
    while position < length:
        char = text[position]
        if char == "\\":
            following = text[position + 1 : position + 2]
            if following and following in _ESCAPABLE:
                pieces.append(("text", following))
                position += 2
            else:
                # A lone backslash vanishes (A1111 keeps the character after it as ordinary text).
                pieces.append(("text", ""))
                position += 1
        elif char == "(":
            open_bracket(open_round, square=False)
            position += 1
        elif char == "[":
            open_bracket(open_square, square=True)
            position += 1
        elif char == ":":
            weight_close = _WEIGHT_CLOSE.match(text, position)
            if weight_close and open_round:
                close_bracket(open_round, _weight_value(weight_close.group(1)))
                position = weight_close.end()
            elif weight_close:
                add_text(weight_close.group(0))
                position = weight_close.end()
            else:
                add_text(":")
                position += 1
        elif char == ")" and open_round:
            close_bracket(open_round, ROUND_MULTIPLIER)
            position += 1
        elif char == "]" and open_square:
            close_bracket(open_square, SQUARE_MULTIPLIER)
            position += 1
        elif char in ")]":
            add_text(char)
            position += 1
        else:
            run = _TEXT_RUN.match(text, position)
            assert run is not None  # every other character starts a text run
            add_text(run.group(0))
            position = run.end()

    # A1111 applies each bracket as it closes, then those left open: round ones, then square ones,
    # outermost first. A float product depends on that order: within `_EXACT_DEPTH` brackets it is
    # followed; deeper, where following it costs the depth for every piece, the running products
    # of the open round and of the open square brackets are used.
    turn = [0] * len(multipliers)
    for index, bracket in enumerate(closed + open_round + open_square):
        turn[bracket] = index
    # Round and square brackets are separate stacks, as in A1111, so their spans may cross: `( [ a ) b ]`.
    around: dict[bool, list[int]] = {False: [], True: []}  # the open round / square brackets
    products = {False: [1.0], True: [1.0]}  # their running products
    entries: list[list] = []  # [text, weight, is_break]
    for kind, value in pieces:
        if kind == "open":
            square = is_square[value]
            around[square].append(value)
            products[square].append(products[square][-1] * multipliers[value])
        elif kind == "close":
            around[is_square[value]].pop()
            products[is_square[value]].pop()
        elif kind == "break":
            entries.append([BREAK[0], BREAK[1], True])
        elif len(around[False]) + len(around[True]) <= _EXACT_DEPTH:
            weight = 1.0
            for bracket in sorted(around[False] + around[True], key=turn.__getitem__):
                weight *= multipliers[bracket]
            entries.append([value, weight, False])
        else:
            entries.append([value, products[False][-1] * products[True][-1], False])

    if not entries:
        return [("", 1.0)]

    merged: list[list] = [entries[0]]
    for entry in entries[1:]:
        previous = merged[-1]
        if not previous[2] and not entry[2] and previous[1] == entry[1]:
            previous[0] += entry[0]
        else:
            merged.append(entry)
    return [(entry_text, float(weight)) for entry_text, weight, _ in merged]


def _split_breaks(run: str) -> list[str]:
    r"""`run` split at each upper-case word BREAK, whitespace next to it dropped: what A1111's
    ``re.split(r"\s*\bBREAK\b\s*", run)`` gives, without rescanning a whitespace run from each of
    its characters (quadratic). str.strip drops exactly the characters ``\s`` matches."""
    parts = _BREAK_WORD.split(run)
    for index in range(len(parts) - 1):
        parts[index] = parts[index].rstrip()
        parts[index + 1] = parts[index + 1].lstrip()
    return parts


def _weight_value(number: str) -> float:
    shown = _shorten(number)
    try:
        value = float(number)
    except ValueError:
        raise PromptError(f"`{shown}` in `(text:{shown})` is not a number: "
                          "write a weight like `(text:1.2)`.") from None
    if not math.isfinite(value):  # float() reads 400 digits as infinity
        raise PromptError(f"`{shown}` in `(text:{shown})` is too large: write a weight like `(text:1.2)`.")
    return value


def _shorten(text: str, limit: int = 20) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Prompt editing and alternation
# ---------------------------------------------------------------------------------------------

# lark's SIGNED_NUMBER, which A1111's grammar uses for the `when` of `[from:to:when]`.
_SIGNED_NUMBER = re.compile(r"[+-]?(?:\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)")
_WHEN = re.compile(r"\s*(" + _SIGNED_NUMBER.pattern + r")\s*")


@dataclass(frozen=True)
class _Literal:
    text: str


@dataclass(frozen=True)
class _Scheduled:
    before: tuple[_Node, ...] | None
    after: tuple[_Node, ...]
    when: str


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple[_Node, ...], ...]


@dataclass(frozen=True)
class _Group:
    """An emphasis bracket kept verbatim: its delimiters and separators are literal children."""

    children: tuple[_Node, ...]


_Node = Union[_Literal, _Scheduled, _Alternate, _Group]


class _NoParse(Exception):
    """The text is not valid prompt-editing syntax at this point."""


class _TooDeep(Exception):
    """Brackets nest deeper than `_ScheduleParser.MAX_DEPTH`."""


class _ScheduleParser:
    """Recursive descent over A1111's prompt-editing grammar.

    Inside any bracket every ``[ ] ( ) : |`` must be part of well-formed syntax; at the top level a
    bracket or colon that does not start well-formed syntax is kept as literal text (that is how
    A1111 tolerates emphasis such as ``((a]`` around edits), while a stray ``|`` or a trailing
    backslash makes the whole prompt unparsable.
    """

    # Deeper nesting than this is treated as unparsable rather than risking Python's recursion limit.
    MAX_DEPTH = 100

    def __init__(self, text: str):
        self.text = text
        # A bracket parses the same way wherever it is reached from: remember each outcome, which
        # keeps prompts full of unclosed brackets linear instead of quadratic.
        self._brackets: dict[int, tuple[_Node, int] | None] = {}
        self._depth = 0

    def parse(self) -> tuple[_Node, ...]:
        text = self.text
        nodes: list[_Node] = []
        position = 0
        while position < len(text):
            char = text[position]
            if char in "[(":
                try:
                    node, position = self._bracket(position)
                    nodes.append(node)
                    continue
                except _NoParse:
                    pass
            if char in "[]():":
                nodes.append(_Literal(char))
                position += 1
            else:
                node, position = self._plain(position)
                nodes.append(node)
        return tuple(nodes)

    def _plain(self, position: int) -> tuple[_Literal, int]:
        """Text without syntax characters; a backslash takes the next character (not a newline) literally."""
        text = self.text
        start = position
        while position < len(text):
            char = text[position]
            if char == "\\":
                if position + 1 >= len(text) or text[position + 1] == "\n":
                    raise _NoParse
                position += 2
            elif char in "[]():|":
                break
            else:
                position += 1
        if position == start:
            raise _NoParse  # a `|` outside alternation
        return _Literal(text[start:position]), position

    def _sequence(self, position: int) -> tuple[tuple[_Node, ...], int]:
        """Text and nested brackets up to the next separator or closing bracket at this level."""
        text = self.text
        nodes: list[_Node] = []
        while position < len(text):
            char = text[position]
            if char in "[(":
                node, position = self._bracket(position)
            elif char in "]):|":
                break
            else:
                node, position = self._plain(position)
            nodes.append(node)
        return tuple(nodes), position

    def _bracket(self, position: int) -> tuple[_Node, int]:
        if position in self._brackets:
            known = self._brackets[position]
            if known is None:
                raise _NoParse
            return known
        if self._depth >= self.MAX_DEPTH:
            raise _TooDeep
        self._depth += 1
        try:
            result = self._bracket_uncached(position)
        except _NoParse:
            self._brackets[position] = None
            raise
        finally:
            self._depth -= 1
        self._brackets[position] = result
        return result

    def _bracket_uncached(self, position: int) -> tuple[_Node, int]:
        text = self.text
        opening = text[position]
        closing = "]" if opening == "[" else ")"
        segments: list[tuple[tuple[_Node, ...], int, int]] = []
        separators: list[str] = []
        position += 1
        while True:
            start = position
            nodes, position = self._sequence(position)
            segments.append((nodes, start, position))
            if position >= len(text):
                raise _NoParse
            char = text[position]
            position += 1
            if char == closing:
                break
            if char == ":" or (char == "|" and opening == "["):
                separators.append(char)
                continue
            raise _NoParse

        if opening == "(":
            if len(separators) > 1:
                raise _NoParse
            return self._group(opening, segments, separators, closing), position
        if not separators:
            return self._group(opening, segments, separators, closing), position
        if all(separator == "|" for separator in separators):
            return _Alternate(tuple(nodes for nodes, _, _ in segments)), position
        if all(separator == ":" for separator in separators) and len(separators) <= 2:
            _, when_start, when_end = segments[-1]
            when = _WHEN.fullmatch(text, when_start, when_end)
            if when is None:
                raise _NoParse
            before = segments[0][0] if len(separators) == 2 else None
            return _Scheduled(before=before, after=segments[-2][0], when=when.group(1)), position
        raise _NoParse

    @staticmethod
    def _group(opening: str, segments, separators: list[str], closing: str) -> _Group:
        children: list[_Node] = [_Literal(opening)]
        for index, (nodes, _, _) in enumerate(segments):
            if index:
                children.append(_Literal(separators[index - 1]))
            children.extend(nodes)
        children.append(_Literal(closing))
        return _Group(tuple(children))


class _Clock(NamedTuple):
    """How `when` numbers read: A1111 counts a hires pass's schedule on from the first pass."""

    steps: int  # steps of this pass
    int_offset: int = 0  # the first pass's steps, in a hires pass
    fraction_offset: float = 0.0  # 1.0 in a hires pass: 1.5 is half-way through it


def _end_step(when: str, clock: _Clock) -> int:
    """The last step of the `from` part: a number with a decimal point is a fraction of the steps
    (A1111 v1.8+ rule; `[a:b:1.0]` never switches), anything else an absolute step."""
    value = float(when)
    if "." in when:
        value = (value - clock.fraction_offset) * clock.steps
    else:
        value -= clock.int_offset
    if math.isinf(value):
        return clock.steps if value > 0 else -1
    return min(clock.steps, int(value))


def _collect_steps(nodes: tuple[_Node, ...], clock: _Clock, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            end = _end_step(node.when, clock)
            if end >= 1:
                found.add(end)
            if node.before is not None:
                _collect_steps(node.before, clock, found)
            _collect_steps(node.after, clock, found)
        elif isinstance(node, _Alternate):
            found.update(range(1, clock.steps + 1))
            for option in node.options:
                _collect_steps(option, clock, found)
        elif isinstance(node, _Group):
            _collect_steps(node.children, clock, found)


def _text_at(nodes: tuple[_Node, ...], step: int, clock: _Clock) -> str:
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, _Literal):
            parts.append(node.text)
        elif isinstance(node, _Group):
            parts.append(_text_at(node.children, step, clock))
        elif isinstance(node, _Scheduled):
            if step <= _end_step(node.when, clock):
                parts.append(_text_at(node.before or (), step, clock))
            else:
                parts.append(_text_at(node.after, step, clock))
        else:
            parts.append(_text_at(node.options[(step - 1) % len(node.options)], step, clock))
    return "".join(parts)


def prompt_schedule(prompt: str, steps: int, *, first_pass_steps: int | None = None) -> list[tuple[int, str]]:
    """(last step, text) pairs for prompt editing and alternation, as A1111's
    get_learned_conditioning_prompt_schedules gives them (steps counted from 1).

    ``[from:to:when]``, ``[to:when]``, ``[from::when]``: `when` with a decimal point is a fraction
    of `steps`, otherwise a step number. ``[a|b|c]`` cycles every step. Emphasis brackets are kept
    as they are. An unparsable prompt comes back unchanged as ``[(steps, prompt)]``.

    >>> prompt_schedule("a [b:3]", 10)
    [(3, 'a '), (10, 'a b')]

    For a hires pass of `steps` after a first pass of `first_pass_steps`, A1111 counts on: a step
    number n means step n - first_pass_steps of this pass, a fraction f means (f - 1) of it.

    >>> prompt_schedule("a [b:25]", 10, first_pass_steps=20)
    [(5, 'a '), (10, 'a b')]

    At 0-based sampling step i, A1111 uses the first entry whose last step >= i (see
    `entry_for_step`).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    clock = _Clock(steps) if first_pass_steps is None else _Clock(steps, first_pass_steps, 1.0)
    try:
        nodes = _ScheduleParser(prompt).parse()
    except (_NoParse, _TooDeep):
        return [(steps, prompt)]
    end_steps = {steps}
    _collect_steps(nodes, clock, end_steps)
    return [(end, _text_at(nodes, end, clock)) for end in sorted(end_steps)]


def entry_for_step(end_steps: list[int], step_index: int) -> int:
    """Index of the schedule entry that A1111 uses at 0-based sampling step `step_index`.

    A1111 compares its 0-based step counter with each entry's last step (`step <= end`), so with
    10 steps ``a [b:3]`` samples 'a ' at steps 0-3 and 'a b' at steps 4-9. Past the last entry
    (second-order samplers call the model more often than `steps`) the last entry stays in use;
    A1111 falls back to the first one there, which is a bug.
    """
    for index, end in enumerate(end_steps):
        if step_index <= end:
            return index
    return len(end_steps) - 1


# ---------------------------------------------------------------------------------------------
# Composable diffusion
# ---------------------------------------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
# The number of A1111's part pattern `^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$`.
_PART_NUMBER = re.compile(r"[-+]?(?:\d+\.?|\d*\.\d+)")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Split a prompt on the word ``AND`` (upper case, whole word) into (text, weight) parts;
    each part may end with ``:weight`` (default 1.0). Like A1111, the split happens before any
    other parsing, even inside brackets, and leading whitespace of a part is kept.

    >>> split_and("a cat AND a dog:0.5")
    [('a cat', 1.0), (' a dog', 0.5)]
    """
    return [_part_weight(part) for part in _AND.split(prompt)]


def _part_weight(part: str) -> tuple[str, float]:
    r"""A1111's part pattern (see `_PART_NUMBER`) read from the end, where its lazy start tries
    every length and rescans the whitespace after it (quadratic on a run of spaces): trailing
    whitespace goes; then ``: number`` after the last colon, if that is all there is, is the
    weight and the whitespace before the colon goes too. str.strip drops what ``\s`` matches."""
    text = part.rstrip()
    colon = text.rfind(":")
    if colon != -1 and _PART_NUMBER.fullmatch(number := text[colon + 1:].lstrip()):
        return text[:colon].rstrip(), float(number)
    return text, 1.0


def prompt_parts(prompt: str) -> list[tuple[str, float]]:
    """The composable parts a prompt is sampled with: `split_and`, except that a prompt with one
    part of weight 1 comes back exactly as written (plain classifier-free guidance)."""
    parts = split_and(prompt)
    if len(parts) == 1 and parts[0][1] == 1.0:
        return [(prompt, 1.0)]
    return parts


# ---------------------------------------------------------------------------------------------
# What the text encoder reads
# ---------------------------------------------------------------------------------------------

def schedule_texts(prompt: str, steps: int) -> list[str]:
    """Every text the encoder is given for `prompt` over `steps` steps, once each, in order of
    first appearance: each AND part (`prompt_parts`) at each entry of its `prompt_schedule`.
    Emphasis syntax is still in them (see `plain_text`).

    >>> schedule_texts("a [cat|dog] AND a bird", 4)
    ['a cat', 'a dog', ' a bird']
    """
    return list(dict.fromkeys(text for part, _ in prompt_parts(prompt)
                              for _, text in prompt_schedule(part, steps)))


def plain_text(text: str) -> str:
    """The words the encoder reads from one scheduled text: emphasis syntax and escapes applied
    (`parse_attention`'s fragments joined), each BREAK a space. Raises PromptError as
    `parse_attention` does.

    >>> plain_text("a ((red:1.2)) c[]at BREAK on a mat")
    'a red cat on a mat'
    """
    return "".join(" " if fragment == BREAK else fragment[0] for fragment in parse_attention(text))


# ---------------------------------------------------------------------------------------------
# Extra networks
# ---------------------------------------------------------------------------------------------

# A1111's extra-network syntax (`<lora:name:0.8>`, `<hypernet:name:1>`, `<lyco:...>`), its own pattern.
EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def _tag_region(prompt: str) -> int:
    """Where the text that can hold tags ends: after the last `>`. Past it every `<name:` would
    read to the end of the text and fail, from each `<` again (quadratic for `<a:` repeated)."""
    return prompt.rfind(">") + 1


def extra_network_tags(prompt: str) -> list[str]:
    """The A1111 extra-network tags in `prompt`, as written (A1111 removes these tags before
    encoding, so they must never be read as words).

    >>> extra_network_tags("a cat <lora:fluffy:0.8>, <hypernet:x:1>")
    ['<lora:fluffy:0.8>', '<hypernet:x:1>']
    """
    return [match.group(0) for match in EXTRA_NETWORK.finditer(prompt, 0, _tag_region(prompt))]


def without_extra_networks(prompt: str) -> str:
    """`prompt` with its extra-network tags removed (as A1111 does before encoding)."""
    end = _tag_region(prompt)
    return EXTRA_NETWORK.sub("", prompt[:end]) + prompt[end:]


# Network types read as LoRA (A1111: `lyco` is an alias of `lora`).
LORA_TYPES = ("lora", "lyco")


@dataclass(frozen=True)
class LoraTag:
    """One `<lora:NAME:...>` tag: the name as typed and its text-encoder and UNet multipliers."""

    tag: str
    name: str
    te: float
    unet: float


def lora_tags(prompt: str) -> list[LoraTag]:
    """The LoRA tags of a (positive) prompt, in order, with A1111's weight rules:
    `<lora:x>` 1/1, `<lora:x:W>` W/W, `<lora:x:TE:UNET>`, named `te=` and `unet=`; a `te=` alone
    sets the UNet weight too, as in A1111. Raises PromptError for a weight that is not a finite
    number and for `dyn` (a rank limit easel does not apply).

    >>> [(t.name, t.te, t.unet) for t in lora_tags("a <lora:x:0.5:1> <lyco:y:te=0.2>")]
    [('x', 0.5, 1.0), ('y', 0.2, 0.2)]
    """
    tags = []
    for match in EXTRA_NETWORK.finditer(prompt, 0, _tag_region(prompt)):
        if match.group(1) not in LORA_TYPES:
            continue
        items = match.group(2).split(":")
        positional = [item for item in items if "=" not in item]
        named = dict(item.split("=", 1) for item in items if "=" in item)
        if not positional or not positional[0]:
            raise PromptError(f"`{_shorten(match.group(0))}` names no LoRA: write `<lora:name:0.8>`.")
        if len(positional) > 3 or "dyn" in named:
            raise PromptError(f"`{_shorten(match.group(0))}`: easel does not apply `dyn` (a rank limit); "
                              "write `<lora:name:weight>` or `<lora:name:te:unet>`.")
        te = _lora_weight(positional[1], match.group(0)) if len(positional) > 1 else 1.0
        te = _lora_weight(named["te"], match.group(0)) if "te" in named else te
        unet = _lora_weight(positional[2], match.group(0)) if len(positional) > 2 else te
        unet = _lora_weight(named["unet"], match.group(0)) if "unet" in named else unet
        tags.append(LoraTag(tag=match.group(0), name=positional[0], te=te, unet=unet))
    return tags


def _lora_weight(text: str, tag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PromptError(f"`{_shorten(text)}` in `{_shorten(tag)}` is not a number: write `<lora:name:0.8>`.") from None
    if not math.isfinite(value):
        raise PromptError(f"`{_shorten(text)}` in `{_shorten(tag)}` is too large: write `<lora:name:0.8>`.")
    return value

