"""A1111 prompt language: emphasis, prompt editing / alternation, AND."""

from __future__ import annotations

import random
import re
import sys
import time

import pytest

from generation.errors import PromptError
from generation.prompt_parser import (
    BREAK,
    entry_for_step,
    extra_network_tags,
    parse_attention,
    plain_text,
    prompt_schedule,
    schedule_texts,
    split_and,
    without_extra_networks,
)


def assert_fragments(actual: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [text for text, _ in actual] == [text for text, _ in expected]
    assert [weight for _, weight in actual] == pytest.approx([weight for _, weight in expected])


# -- emphasis: A1111's docstring examples -----------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.4641), (".", 1.1),
    ]),
])
def test_attention_matches_a1111_docstring(text, expected):
    assert_fragments(parse_attention(text), expected)


def test_nested_weights_multiply_exactly_like_a1111():
    # A1111 keeps raw floats; these are its exact values, not rounded ones.
    weights = dict(parse_attention("a (((house:1.3)) b (((sky)))"))
    assert weights["house"] == 1.5730000000000004
    assert weights["sky"] == 1.4641000000000006


@pytest.mark.parametrize(("text", "expected"), [
    ("[x]", [("x", 1 / 1.1)]),
    ("[[x]]", [("x", 1 / 1.1 / 1.1)]),
    ("(x:1.5)", [("x", 1.5)]),
    ("(x: 1.5 )", [("x", 1.5)]),
    ("(x:0)", [("x", 0.0)]),
    ("(x:-1)", [("x", -1.0)]),
    ("((x:2))", [("x", 2.2)]),
    ("[(x:2)]", [("x", 2 / 1.1)]),
    ("[unclosed", [("unclosed", 1 / 1.1)]),
    ("a (b [c", [("a ", 1.0), ("b ", 1.1), ("c", 1.1 / 1.1)]),
    ("closing) only]", [("closing) only]", 1.0)]),
    ("x:1.5) y", [("x:1.5) y", 1.0)]),  # a weight with no open bracket is text
    ("a: b", [("a: b", 1.0)]),
    ("\\\\ and \\)", [("\\ and )", 1.0)]),
    ("(\\(x\\))", [("(x)", 1.1)]),
    ("a\\b", [("ab", 1.0)]),  # a backslash before an ordinary character vanishes, as in A1111
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
])
def test_attention_cases(text, expected):
    assert_fragments(parse_attention(text), expected)


def test_break_is_an_upper_case_whole_word():
    assert parse_attention("a BREAK b") == [("a", 1.0), BREAK, ("b", 1.0)]
    assert parse_attention("a\nBREAK\nb") == [("a", 1.0), BREAK, ("b", 1.0)]
    assert parse_attention("a break b") == [("a break b", 1.0)]
    assert parse_attention("BREAKING news") == [("BREAKING news", 1.0)]
    assert parse_attention("a BREAK") == [("a", 1.0), BREAK, ("", 1.0)]


def test_break_inside_brackets_stays_a_break():
    fragments = parse_attention("(a BREAK b)")
    assert fragments == [("a", pytest.approx(1.1)), BREAK, ("b", pytest.approx(1.1))]
    assert parse_attention("(x BREAK:-1)").count(BREAK) == 1  # never merged with a -1 text


def test_invalid_weight_number_is_a_prompt_error():
    with pytest.raises(PromptError, match="not a number"):
        parse_attention("(x:1.2.3)")


# -- prompt editing and alternation ------------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "expected"), [
    # A1111's docstring examples (10 steps)
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)]),
    ("[fe|||]male", [(step, "female" if step % 4 == 1 else "male") for step in range(1, 11)]),
])
def test_schedule_matches_a1111_docstring(prompt, expected):
    assert prompt_schedule(prompt, 10) == expected


def test_alternation_over_four_steps():
    assert prompt_schedule("[fe|]male", 4) == [(1, "female"), (2, "male"), (3, "female"), (4, "male")]


@pytest.mark.parametrize(("prompt", "steps", "expected"), [
    ("[cat:dog:0.25]", 20, [(5, "cat"), (20, "dog")]),  # fraction of the steps
    ("[cat:dog:5]", 20, [(5, "cat"), (20, "dog")]),  # absolute step
    ("[cat:dog:0.5]", 7, [(3, "cat"), (7, "dog")]),  # fractions round down
    ("[cat:dog:30]", 20, [(20, "cat")]),  # past the end: never switches
    ("[cat:dog:0]", 20, [(20, "dog")]),  # step 0: the second text from the start
    ("[cat:dog:1.0]", 20, [(20, "cat")]),  # a decimal point means a fraction (A1111 1.8+): 1.0 = all steps
    ("[cat::4]", 10, [(4, "cat"), (10, "")]),
    ("[:cat:4]", 10, [(4, ""), (10, "cat")]),
    ("[a:b:3] [c:d:0.6]", 10, [(3, "a c"), (6, "b c"), (10, "b d")]),
    ("[a:[b:c:0.5]:2]", 10, [(2, "a"), (5, "b"), (10, "c")]),
    ("[x|[a:b:2]]", 4, [(1, "x"), (2, "a"), (3, "x"), (4, "b")]),
])
def test_schedule_timing(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


@pytest.mark.parametrize("prompt", [
    "a [b:c",  # unclosed edit, kept as text (A1111 parses it as stray brackets)
    "a | b",  # a `|` outside brackets cannot be parsed
    "[a|b:3]",
    "trailing backslash \\",
    "[a:b:c:3]",
    "[a:b:x]",
])
def test_unparsable_or_plain_prompts_come_back_unchanged(prompt):
    assert prompt_schedule(prompt, 10) == [(10, prompt)]


@pytest.mark.parametrize("prompt", [
    "a [on] (b:1.2) ((c)) [[d]] (e:0.5) \\(x\\) [f ]",
    "masterpiece, (best quality:1.2), [lowres]",
])
def test_emphasis_passes_through_untouched(prompt):
    assert prompt_schedule(prompt, 20) == [(20, prompt)]


def test_edit_inside_emphasis_keeps_the_emphasis():
    assert prompt_schedule("(a [b:c:2]:1.3) [d]", 5) == [(2, "(a b:1.3) [d]"), (5, "(a c:1.3) [d]")]


def test_schedule_rejects_zero_steps():
    with pytest.raises(ValueError):
        prompt_schedule("a", 0)


def test_pathological_prompts_stay_fast():
    started = time.perf_counter()
    for prompt in ("[" * 3000, "[a:" * 1000 + "2]" * 1000, "(" * 3000 + "x", "[a|" * 500):
        prompt_schedule(prompt, 30)
        parse_attention(prompt)
    assert time.perf_counter() - started < 2.0


def test_entry_for_step_follows_a1111_zero_based_rule():
    # A1111's denoiser counts steps from 0 and uses the first entry with step <= end.
    ends = [end for end, _ in prompt_schedule("a [b:3]", 10)]
    assert [entry_for_step(ends, i) for i in range(10)] == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert entry_for_step(ends, 25) == 1  # extra model calls of second-order samplers keep the last text
    alternation = [end for end, _ in prompt_schedule("[fe|]male", 4)]
    assert [entry_for_step(alternation, i) for i in range(4)] == [0, 0, 1, 2]


# -- AND ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "expected"), [
    ("a cat", [("a cat", 1.0)]),
    ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
    ("a cat:1.2 AND a dog : 0.5", [("a cat", 1.2), (" a dog", 0.5)]),
    ("a cat AND a dog:-.5", [("a cat", 1.0), (" a dog", -0.5)]),
    ("sand AND and ANDY", [("sand", 1.0), (" and ANDY", 1.0)]),
    ("(a:1.2)", [("(a:1.2)", 1.0)]),
    ("a AND", [("a", 1.0), ("", 1.0)]),
    ("one\ntwo AND three", [("one\ntwo", 1.0), (" three", 1.0)]),
])
def test_split_and(prompt, expected):
    assert split_and(prompt) == expected


def test_extra_network_tags_follow_a1111s_pattern():
    prompt = "a cat <lora:fluffy:0.8>, <lyco:x:1:0.5> <notatag> <a:b"
    assert extra_network_tags(prompt) == ["<lora:fluffy:0.8>", "<lyco:x:1:0.5>"]
    assert without_extra_networks(prompt) == "a cat ,  <notatag> <a:b"


# -- the encoder's words, for moderation ---------------------------------------------------------------

def test_plain_text_applies_emphasis_syntax():
    assert plain_text("a c[]at") == "a cat"
    assert plain_text("a c()at") == "a cat"
    assert plain_text("a c\\at") == "a cat"


def test_schedule_texts_give_every_text_the_encoder_reads():
    assert [plain_text(text) for text in schedule_texts("a c[a|a]t", 20)] == ["a cat"]
    assert [plain_text(text) for text in schedule_texts("a [c:ca:0]t", 20)] == ["a cat"]


def test_schedule_texts_cover_every_and_part_once_in_order():
    assert schedule_texts("[cat|dog] AND [dog:bird:2]", 4) == ["cat", "dog", " dog", " bird"]
    assert schedule_texts("a (cat:1.2)", 10) == ["a (cat:1.2)"]
    assert plain_text("a BREAK b") == "a b"


# -- hostile numbers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", ["(cat:" + "9" * 400 + ")", "(cat:" + "9" * 5000 + ")", "(cat:-" + "1" * 400 + ".5)"])
def test_a_weight_that_is_not_finite_is_a_short_prompt_error(prompt):
    with pytest.raises(PromptError, match="too large") as caught:
        parse_attention(prompt)
    assert len(str(caught.value)) < 120
    with pytest.raises(PromptError):
        plain_text(prompt)


def test_an_unreadable_weight_message_stays_short():
    with pytest.raises(PromptError, match="not a number") as caught:
        parse_attention("(cat:" + "1." * 3000 + ")")
    assert len(str(caught.value)) < 120


def test_an_exponent_is_not_weight_syntax_as_in_a1111():
    # A1111's weight pattern takes digits and dots only: `1e400` is text, the bracket a plain 1.1.
    assert parse_attention("(cat:1e400)") == [("cat:1e400", 1.1)]


def test_huge_edit_steps_and_part_weights_do_not_crash():
    assert prompt_schedule("a [b:c:" + "9" * 5000 + "]", 10) == [(10, "a b")]
    assert prompt_schedule("a [b:c:" + "9" * 400 + ".5]", 10) == [(10, "a b")]
    assert split_and("a AND b:" + "9" * 5000) == [("a", 1.0), (" b", float("inf"))]  # the engine refuses it


# -- the same results as A1111's quadratic patterns ----------------------------------------------------

def reference_parse_attention(text: str) -> list[tuple[str, float]]:
    """easel's previous parse_attention: A1111's algorithm, which multiplies every entry since a
    bracket opened whenever one closes (quadratic), and A1111's BREAK pattern."""
    entries: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def multiply_since(start: int, multiplier: float) -> None:
        for entry in entries[start:]:
            if not entry[2]:
                entry[1] *= multiplier

    def add_text(run: str) -> None:
        for index, part in enumerate(re.split(r"\s*\bBREAK\b\s*", run)):
            if index:
                entries.append([BREAK[0], BREAK[1], True])
            entries.append([part, 1.0, False])

    position = 0
    while position < len(text):
        char = text[position]
        if char == "\\":
            following = text[position + 1:position + 2]
            escaped = bool(following) and following in "()[]\\"
            entries.append([following if escaped else "", 1.0, False])
            position += 2 if escaped else 1
        elif char == "(":
            open_round.append(len(entries))
            position += 1
        elif char == "[":
            open_square.append(len(entries))
            position += 1
        elif char == ":":
            weight_close = re.compile(r":\s*([+-]?[.\d]+)\s*\)").match(text, position)
            if weight_close and open_round:
                multiply_since(open_round.pop(), float(weight_close.group(1)))
                position = weight_close.end()
            elif weight_close:
                add_text(weight_close.group(0))
                position = weight_close.end()
            else:
                add_text(":")
                position += 1
        elif char == ")" and open_round:
            multiply_since(open_round.pop(), 1.1)
            position += 1
        elif char == "]" and open_square:
            multiply_since(open_square.pop(), 1 / 1.1)
            position += 1
        elif char in ")]":
            add_text(char)
            position += 1
        else:
            run = re.compile(r"[^\\()\[\]:]+").match(text, position)
            add_text(run.group(0))
            position = run.end()
    for start in open_round:
        multiply_since(start, 1.1)
    for start in open_square:
        multiply_since(start, 1 / 1.1)
    if not entries:
        return [("", 1.0)]
    merged = [entries[0]]
    for entry in entries[1:]:
        if not merged[-1][2] and not entry[2] and merged[-1][1] == entry[1]:
            merged[-1][0] += entry[0]
        else:
            merged.append(entry)
    return [(entry_text, weight) for entry_text, weight, _ in merged]


A1111_PART_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
A1111_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def reference_split_and(prompt: str) -> list[tuple[str, float]]:
    return [(text, float(weight) if weight is not None else 1.0)
            for text, weight in (A1111_PART_WEIGHT.match(part).groups() for part in re.split(r"\bAND\b", prompt))]


# Pieces that meet each rule's edge cases: brackets of both kinds, weights, escapes, BREAK and AND
# next to whitespace of several kinds (\x1c and \u2003 are whitespace to both `\s` and str.strip).
PIECES = ["(", ")", "[", "]", ":", "\\", "a", "b ", "1", ".5", " ", "\n", "\t", "\u2003", "\x1c",
          "BREAK", "AND", ":1.5)", ": 2 )", "<", ">", "<lora:x:1>", "|", "e", "-"]


# Mostly brackets: deep nesting, crossed spans and weights, where the order of multiplication shows.
BRACKETS = ["(", ")", "[", "]", "a", " ", ":1.3)", ":0.7)", "BREAK "]


def random_prompts(count: int, pieces: int, seed: int, alphabet: list[str] = PIECES):
    rng = random.Random(seed)
    for _ in range(count):
        yield "".join(rng.choice(alphabet) for _ in range(rng.randrange(pieces)))


def test_whitespace_is_the_same_to_re_and_str_strip():
    """The scans that replace A1111's patterns strip whitespace with str methods."""
    every_character = "".join(map(chr, range(sys.maxunicode + 1)))
    assert re.findall(r"\s", every_character) == [char for char in every_character if char.isspace()]


def test_attention_equals_the_quadratic_reference_bit_for_bit():
    compared = 0
    for text in [*random_prompts(20000, 12, seed=1), *random_prompts(10000, 16, seed=5, alphabet=BRACKETS)]:
        try:
            expected = reference_parse_attention(text)
        except ValueError:  # float("1.5.5"): ours says so in a PromptError
            with pytest.raises(PromptError):
                parse_attention(text)
            continue
        assert parse_attention(text) == expected, text
        compared += 1
    assert compared > 25000


def test_attention_deeper_than_the_exact_depth_stays_within_rounding():
    """Inside more than 16 brackets weights are multiplied in another order than A1111's: equal
    up to rounding, which may also merge or split neighbours, so compare weights per character."""
    def per_character(fragments):
        return [(char, weight) for fragment, weight in fragments if (fragment, weight) != BREAK
                for char in fragment]

    rng = random.Random(2)
    for _ in range(300):
        text = "(" * 9 + "[" * 8 + "".join(rng.choice(["(", "[", "a", "b ", ")", "]", ":1.5)", "BREAK "])
                                            for _ in range(60))
        ours, reference = per_character(parse_attention(text)), per_character(reference_parse_attention(text))
        assert [char for char, _ in ours] == [char for char, _ in reference]
        assert [weight for _, weight in ours] == pytest.approx([weight for _, weight in reference], rel=1e-12)
        assert parse_attention(text).count(BREAK) == reference_parse_attention(text).count(BREAK)


def test_crossed_round_and_square_spans_keep_a1111_weights():
    assert_fragments(parse_attention("( [ a ) b ]"), [(" ", 1.1), (" a ", 1.0), (" b ", 1 / 1.1)])
    assert parse_attention("([a)b]c") == reference_parse_attention("([a)b]c")


def test_split_and_equals_a1111_pattern():
    for text in random_prompts(20000, 10, seed=3):
        assert split_and(text) == reference_split_and(text), text


def test_extra_network_tags_equal_a1111_pattern():
    for text in random_prompts(20000, 12, seed=4):
        assert extra_network_tags(text) == [m.group(0) for m in A1111_EXTRA_NETWORK.finditer(text)], text
        assert without_extra_networks(text) == A1111_EXTRA_NETWORK.sub("", text), text


# -- linear time ---------------------------------------------------------------------------------------

# 30,000 to 60,000 characters of each: A1111's patterns take seconds to minutes on these (they are quadratic);
# a linear parser takes milliseconds. The bound is generous, for a loaded CI machine.
HOSTILE_PROMPTS = {
    "unclosed round, stray square": "(a]" * 10_000,
    "nested": "(" * 15_000 + "a" + ")" * 14_999,
    "open then closed": "(a" * 10_000 + ")" * 10_000,
    "spaces": "a" + " " * 30_000 + "b",
    "spaces and colon": "a:" + " " * 30_000,
    "tag starts": "<a:" * 20_000,
    "alternation": "[a|b]" * 6_000,
    "edits": "[a:" * 10_000,
}


@pytest.mark.parametrize("name", HOSTILE_PROMPTS)
def test_hostile_prompts_parse_in_linear_time(name):
    prompt = HOSTILE_PROMPTS[name]
    started = time.perf_counter()
    for part, _ in split_and(prompt):
        for _, text in prompt_schedule(part, 20):
            parse_attention(text)
    extra_network_tags(prompt)
    without_extra_networks(prompt)
    assert time.perf_counter() - started < 2.0
