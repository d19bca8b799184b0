"""generation/moderation.py: normalization, compiled word lists, the shipped NSFW list, the policy."""

from __future__ import annotations

import random
import time

import pytest

from generation.moderation import (
    ModerationPolicy,
    WordList,
    find_in_texts,
    load_nsfw_words,
    normalize,
    nsfw_word_list,
)


# ------------------------------------------------------------------------------------------- normalize


@pytest.mark.parametrize(("text", "expected"), [
    ("A CAT", "a cat"),
    ("a ｃａｔ", "a cat"),  # fullwidth
    ("a c\u200bat", "a cat"),  # zero-width space
    ("c\u200c\u200d\u2060\ufeffat", "cat"),  # joiners, word joiner, BOM
    ("c\u00adat", "cat"),  # soft hyphen
    ("c\u202eat", "cat"),  # bidi override
    ("c\x00a\x07t", "cat"),  # control characters
    ("cät", "cat"),  # accents
    ("c\u0336a\u0336t\u0336", "cat"),  # strike-through overlay
    ("c\ufe0fat", "cat"),  # variation selector
    ("ＣＡＴ\u3000dog", "cat dog"),  # fullwidth capitals, ideographic space
    ("Straße", "strasse"),
    ("ﬁsh", "fish"),  # ligature
    ("İstanbul", "istanbul"),
    ("a\tb\nc", "a\tb\nc"),  # whitespace stays
    ("が", "が"),  # kana voicing marks are part of the word: kept
    ("한국어", "한국어"),
    ("", ""),
])
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_normalize_is_a_fixed_point():
    rng = random.Random(5)
    alphabet = [chr(c) for c in (*range(0x20, 0x250), *range(0x300, 0x370), *range(0x1e00, 0x1f00),
                                 *range(0x2000, 0x2070), *range(0x3040, 0x3100), *range(0xac00, 0xac40),
                                 *range(0xfb00, 0xfb10), *range(0xfe00, 0xfe10), *range(0xff00, 0xff70))]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        once = normalize(text)
        assert normalize(once) == once, ascii(text)


# ------------------------------------------------------------------------------------------- word lists


@pytest.mark.parametrize("text", ["a cat", "A CAT", "a ｃａｔ", "a c\u200bat", "cats", "CATS!", "the cat's toy",
                                  "(cat:1.3)", "cat_ears", "2cat", "cat2", "cät", "c\u0336at"])
def test_a_banned_word_is_found_however_it_is_spelled(text):
    assert WordList.compile(["cat"]).find(text) == "cat"


@pytest.mark.parametrize("text", ["concatenate", "catalog", "a dog", "scat", "c at", "c-a-t", ""])
def test_a_banned_word_matches_whole_words_only(text):
    assert WordList.compile(["cat"]).find(text) is None


def test_a_stem_matches_every_word_it_begins():
    words = WordList.compile(["cat*"])
    for text in ("cat", "cats", "catgirl", "a Catalog", "CATGIRL"):
        assert words.find(text) == "cat*"
    for text in ("concatenate", "scatter", "a dog"):
        assert words.find(text) is None


@pytest.mark.parametrize(("entry", "text"), [
    ("cat", "cats"), ("box", "boxes"), ("box", "a box"), ("kiss", "kisses"), ("church", "churches"),
    ("puppy", "puppies"), ("puppy", "a puppy"), ("boy", "boys"), ("tomato", "tomatoes"), ("red cat", "red cats"),
])
def test_a_plain_entry_matches_its_plural(entry, text):
    assert WordList.compile([entry]).find(text) == entry


@pytest.mark.parametrize(("entry", "text"), [("cat", "catss"), ("puppy", "puppys"), ("box", "boxer")])
def test_plurals_do_not_open_other_words(entry, text):
    assert WordList.compile([entry]).find(text) is None


def test_phrases_match_across_any_whitespace():
    words = WordList.compile(["red cat"])
    for text in ("a red cat", "a red   cat", "red\tcat", "red\ncat", "RED\u3000CAT", "red_cat", "red\u200b cat"):
        assert words.find(text) == "red cat", repr(text)
    for text in ("red", "cat", "redcat", "red dog cat", "bored cat"):
        assert words.find(text) is None, repr(text)
    assert WordList.compile(["red   cat"]).find("red cat") == "red   cat"  # the entry as the admin wrote it


def test_entries_are_normalized_and_returned_as_written():
    words = WordList.compile(["  ＣＡＴ  ", "Dög", "", "   ", "*", "c\u200bow"])
    assert words.entries == ("ＣＡＴ", "Dög", "c\u200bow")
    assert words.find("a cat") == "ＣＡＴ"
    assert words.find("DOG") == "Dög"
    assert words.find("cow") == "c\u200bow"
    assert len(WordList.compile(["cat", "CAT", "ｃａｔ"])) == 1  # duplicates once


def test_the_first_match_in_the_text_is_reported():
    words = WordList.compile(["dog", "cat", "red cat", "cat*"])
    assert words.find("a dog and a cat") == "dog"
    assert words.find("a cat and a dog") == "cat"  # at the same place, the admin's first entry
    assert words.find("a red cat") == "red cat"
    assert words.find("catgirl") == "cat*"


def test_entries_with_punctuation_and_other_scripts():
    words = WordList.compile(["c++", "猫", "кот", "18+"])
    assert words.find("hello c++ world") == "c++"
    assert words.find("黒い猫です") == "猫"  # no spaces between words there
    assert words.find("большой КОТ") == "кот"
    assert words.find("котлета") is None
    assert words.find("rated 18+ only") == "18+"
    assert words.find("118+") is None


def test_hostile_entries_are_literal():
    words = WordList.compile(["(a+)+", ".*", "x|y", "[a-z]", "\\d", "a{2,}"])
    started = time.perf_counter()
    assert words.find("a" * 5000 + "!") is None
    assert time.perf_counter() - started < 1
    assert words.find("literally (a+)+ here") == "(a+)+"
    assert words.find("anything") is None
    assert words.find("x or y") is None
    assert words.find("x|y") == "x|y"
    assert words.find("7") is None
    assert words.find("a{2,}") == "a{2,}"


def test_an_empty_list_finds_nothing():
    words = WordList.compile([])
    assert len(words) == 0 and words.find("anything") is None
    assert find_in_texts(["anything"], words) is None


def test_a_long_text_and_many_entries_in_one_pass():
    rng = random.Random(3)
    letters = "abcdefghijklmnopqrstuvwxyz"
    entries = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 12))) for _ in range(150)]
    entries += [f"{a} {b}" for a, b in zip(entries[:25], entries[25:50])] + [e + "*" for e in entries[50:75]]
    assert len(entries) == 200
    text = " ".join("".join(rng.choice(letters) for _ in range(rng.randint(1, 9))) for _ in range(1200))[:6000]
    assert len(text) == 6000
    started = time.perf_counter()
    words = WordList.compile(entries)
    compiled = time.perf_counter()
    found = words.find(text)
    missing = words.find("zz " * 2000)
    done = time.perf_counter()
    assert compiled - started < 1 and done - compiled < 1  # generous: both are milliseconds
    assert missing is None
    assert found is None or found in entries
    assert words.find(text + " " + entries[100]) in entries


def test_compiled_lists_are_shared():
    assert WordList.compile(["cat", "dog"]) is WordList.compile(("cat", "dog"))


def test_find_in_texts_reports_the_first_text_with_a_match():
    words = WordList.compile(["cat", "dog"])
    assert find_in_texts(["a bird", "a DOG", "a cat"], words) == "dog"
    assert find_in_texts(iter(["a bird", "a ｃａｔ"]), words) == "cat"
    assert find_in_texts([], words) is None


# ------------------------------------------------------------------------------------------- NSFW list


def test_the_shipped_nsfw_list():
    words = load_nsfw_words()
    assert 40 <= len(words) <= 80
    assert words is load_nsfw_words()  # read once
    assert all(w == w.strip() and not w.startswith("#") for w in words)
    assert len(set(words)) == len(words)
    nsfw = nsfw_word_list()
    assert len(nsfw) == len(words)
    for text in ("a nude woman", "NUDES", "ｎｕｄｅ", "n\u200bude", "pornography", "blow  job"):
        assert nsfw.find(text) is not None, text
    for text in ("a cat in a hat", "chicken breast", "a rooster", "a sexton in essex", "concatenate",
                 "bottomless pit", "sussex", "analysis", "document", "scumbag"):
        assert nsfw.find(text) is None, text


# ------------------------------------------------------------------------------------------- policy


def test_banned_words_are_checked_in_prompts_and_negative_prompts():
    policy = ModerationPolicy(banned=WordList.compile(["cat"]), nsfw=None, nsfw_allowed=False)
    assert policy.check(["a dog"], ["blurry"]) is None
    assert policy.check(["a dog", "a CATS party"], []) == \
        'your prompt contains "cat", which this server does not allow'
    assert policy.check(["a dog"], ["a c\u200bat"]) == \
        'your negative prompt contains "cat", which this server does not allow'


def test_nsfw_words_only_in_prompts_and_only_where_not_allowed():
    nsfw = nsfw_word_list()
    empty = WordList.compile([])
    strict = ModerationPolicy(banned=empty, nsfw=nsfw, nsfw_allowed=False)
    assert strict.check(["a nude figure"], []) == \
        'NSFW prompts are allowed only in age-restricted channels here ("nude")'
    assert strict.check(["a landscape"], ["nsfw, nude"]) is None  # negative prompts are left alone
    assert strict.check(["a landscape", "an ｅｒｏｔｉｃ novel cover"], []) is not None
    assert ModerationPolicy(banned=empty, nsfw=nsfw, nsfw_allowed=True).check(["a nude figure"], []) is None
    assert ModerationPolicy(banned=empty, nsfw=None, nsfw_allowed=False).check(["a nude figure"], []) is None


def test_banned_words_apply_in_age_restricted_channels_too():
    policy = ModerationPolicy(banned=WordList.compile(["gore"]), nsfw=nsfw_word_list(), nsfw_allowed=True)
    assert policy.check(["a nude figure, gore"], []) == \
        'your prompt contains "gore", which this server does not allow'
    assert policy.check(["a nude figure"], []) is None
