"""A1111 prompt language: emphasis, prompt editing / alternation, AND."""

from __future__ import annotations

import time

import pytest

from generation.errors import PromptError
from generation.prompt_parser import BREAK, entry_for_step, parse_attention, prompt_schedule, split_and


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
    from generation.prompt_parser import extra_network_tags, without_extra_networks

    prompt = "a cat <lora:fluffy:0.8>, <lyco:x:1:0.5> <notatag> <a:b"
    assert extra_network_tags(prompt) == ["<lora:fluffy:0.8>", "<lyco:x:1:0.5>"]
    assert without_extra_networks(prompt) == "a cat ,  <notatag> <a:b"
