"""Prompt moderation that sees what the model sees: banned words and the NSFW filter.

The texts checked are the ones the text encoder receives (each scheduled prompt text and each AND
part, emphasis syntax already applied), normalized so that look-alike spellings the tokenizer reads
as the same word (fullwidth letters, zero-width characters, accents, upper case) are caught.

A word list is compiled once into one regex alternation of escaped entries (shaped as a trie, so a
few hundred entries cost about what one does), checking a text is one pass over it, and no admin
entry can make a slow pattern. Pure: no discord, no torch.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from typing import Iterable, Sequence

__all__ = [
    "ModerationPolicy",
    "WordList",
    "find_in_texts",
    "load_nsfw_words",
    "normalize",
    "nsfw_word_list",
]

# Combining marks dropped by normalize(): the general-purpose diacritic blocks, used on Latin,
# Greek and Cyrillic letters (accents: "nüde" -> "nude") and for "Zalgo"/strike-through disguises
# ("c̶a̶t̶" -> "cat"), plus variation selectors (invisible). Script-specific marks (Devanagari
# vowel signs, Arabic harakat, the kana voicing marks U+3099/U+309A, ...) are kept: there they
# change the word itself, and dropping them would make distinct words collide.
_DROPPED_MARKS = (
    (0x0300, 0x036F),  # Combining Diacritical Marks (includes U+034F combining grapheme joiner)
    (0x1AB0, 0x1AFF),  # Combining Diacritical Marks Extended
    (0x1DC0, 0x1DFF),  # Combining Diacritical Marks Supplement
    (0x20D0, 0x20FF),  # Combining Diacritical Marks for Symbols (enclosing circles, overlays)
    (0xFE00, 0xFE0F),  # Variation Selectors
    (0xFE20, 0xFE2F),  # Combining Half Marks
    (0xE0100, 0xE01EF),  # Variation Selectors Supplement
)
# Invisible letters (category Lo, so not caught as format characters) used to split words.
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")


def _dropped(char: str) -> bool:
    category = unicodedata.category(char)
    if category == "Cf":  # zero-width space/joiners, word joiner, BOM, soft hyphen, bidi controls, tags
        return True
    if category == "Cc":  # control characters; CLIP's tokenizer drops them too. Whitespace stays.
        return not char.isspace()
    if category in ("Mn", "Me"):
        code = ord(char)
        return any(low <= code <= high for low, high in _DROPPED_MARKS)
    return char in _INVISIBLE_LETTERS or char == "\ufffd"


def normalize(text: str) -> str:
    """The form both word lists and prompts are compared in: NFKC (fullwidth, ligatures,
    compatibility forms), casefold, then invisible characters and general diacritics removed.

    Decomposing (NFKD) before removing is what exposes an accent as its own combining mark;
    composing again afterwards restores what is kept (Hangul, kana with voicing marks). Linear
    time; the result is a fixed point (normalize(normalize(t)) == normalize(t)).
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    if folded.isascii():  # the usual prompt: only control characters can need removing
        return "".join(c for c in folded if c.isprintable() or c.isspace()) if not folded.isprintable() else folded
    decomposed = unicodedata.normalize("NFKD", folded)
    kept = "".join(c for c in decomposed if not _dropped(c))
    # a last NFKC + casefold: recomposition can meet a character casefold or NFKC would change
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", kept).casefold())


# ---------------------------------------------------------------------------------------------------
# Word lists

# Scripts written without spaces between words: an entry in them matches inside a longer run too.
_UNSPACED = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]"
)
_SEPARATOR = r"[\s_]+"  # words of a phrase: any whitespace, or underscores (booru-style tags)
_LETTER = r"[^\W\d_]"
_ALNUM = r"[^\W_]"


def _before(char: str) -> str:
    """What may not come before an entry starting with `char` for it to be a whole word; a
    lookbehind over two characters, placed after `char` itself so that every alternative of the
    combined pattern starts with a literal (re then skips ahead to possible first characters in C).

    A letter only needs a non-letter before it: CLIP splits letters from digits, so in "2cat" the
    model reads the word "cat". Underscores are separators for the same reason.
    """
    if _UNSPACED.match(char):
        return ""
    return f"(?<!{_LETTER if re.match(_LETTER, char) else _ALNUM}{re.escape(char)})"


def _after(char: str) -> str:
    if _UNSPACED.match(char):
        return ""
    return f"(?!{_LETTER})" if re.match(_LETTER, char) else f"(?!{_ALNUM})"


def _plural(word: str) -> tuple[str, str]:
    """(the part of `word` matched as written, a regex atom for its ending) so that an English word
    also matches its regular plural: cat/cats, box/boxes, kiss/kisses, puppy/puppies."""
    if not "a" <= word[-1] <= "z":  # English rules, for English-looking words only
        return word, ""
    if len(word) > 2 and word[-1] == "y" and "a" <= word[-2] <= "z" and word[-2] not in "aeiou":
        return word[:-1], "(?:y|ies)"
    if word.endswith(("s", "x", "z", "ch", "sh", "o")):
        return word, "(?:e?s)?"
    return word, "s?"


def _entry_atoms(entry: str) -> tuple[str, ...] | None:
    """One admin entry (already normalized) as a sequence of regex atoms, each complete on its own
    (an escaped character, a separator, a plural ending, a boundary); None when nothing is left."""
    text = entry.strip()
    stem = text.endswith("*")
    text = text.rstrip("*").strip()
    words = [w for w in re.split(_SEPARATOR, text) if w]
    if not words:
        return None
    atoms: list[str] = []
    for index, word in enumerate(words):
        if index:
            atoms.append(_SEPARATOR)
        ending = ""
        if index == len(words) - 1 and not stem:
            word, ending = _plural(word)
        atoms.extend(re.escape(char) for char in word)
        if ending:
            atoms.append(ending)
    if before := _before(words[0][0]):
        atoms.insert(1, before)
    if not stem and (after := _after(words[-1][-1])):
        atoms.append(after)
    return tuple(atoms)


def _trie_pattern(sequences: Sequence[tuple[str, ...]]) -> str:
    """One alternation of all sequences with common prefixes shared, so that at each position of a
    text the regex follows one path instead of trying every entry in turn."""
    end = ""  # key of "an entry ends here"; no atom is empty
    root: dict = {}
    for atoms in sequences:
        node = root
        for atom in atoms:
            node = node.setdefault(atom, {})
        node[end] = {}

    def render(node: dict) -> str:
        parts = []
        while len(node) == 1:  # a chain without branches: no group, no recursion
            atom, node = next(iter(node.items()))
            parts.append(atom)
        if node:
            # entries ending here come last, so a longer entry is preferred; either is a match
            branches = [atom + render(child) for atom, child in node.items() if atom != end]
            branches += [end] if end in node else []
            parts.append("(?:" + "|".join(branches) + ")")
        return "".join(parts)

    return render(root)


@dataclass(frozen=True, eq=False)
class WordList:
    """Entries compiled into one alternation; `find` returns the entry as the admin wrote it."""

    entries: tuple[str, ...] = ()  # as written (stripped), deduplicated, in the admin's order
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)  # all entries, one pass
    _each: tuple[re.Pattern[str], ...] = field(default=(), repr=False)  # per entry: which one matched

    @classmethod
    def compile(cls, entries: Iterable[str]) -> "WordList":
        """One whole-word entry per item: plain words also match their plural, `word*` is a stem,
        phrases match across any whitespace. Identical lists share one compiled instance."""
        return _compile(tuple(entries))

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, text: str) -> str | None:
        """The first entry found in `text` (normalized here), else None."""
        return self._search(normalize(text))

    def _search(self, normalized: str) -> str | None:
        if self._pattern is None:
            return None
        match = self._pattern.search(normalized)
        if match is None:
            return None
        # Some entry matches at match.start(); name the first one in the admin's order (lookbehinds
        # still see the characters before `pos`).
        start = match.start()
        return next((entry for entry, one in zip(self.entries, self._each) if one.match(normalized, start)),
                    self.entries[0])


@functools.lru_cache(maxsize=128)
def _compile(entries: tuple[str, ...]) -> WordList:
    kept: list[str] = []
    sequences: dict[tuple[str, ...], None] = {}  # ordered set
    for entry in entries:
        written = str(entry).strip()
        atoms = _entry_atoms(normalize(written))
        if atoms is None or atoms in sequences:
            continue
        kept.append(written)
        sequences[atoms] = None
    if not sequences:
        return WordList()
    each = tuple(re.compile("".join(atoms)) for atoms in sequences)
    try:
        pattern = re.compile(_trie_pattern(list(sequences)))
    except (RecursionError, re.error, OverflowError):  # absurdly nested entry sets: a flat alternation
        pattern = re.compile("|".join(f"(?:{one.pattern})" for one in each))
    return WordList(tuple(kept), pattern, each)


def find_in_texts(texts: Iterable[str], words: WordList) -> str | None:
    """The first entry of `words` found in any of `texts` (each normalized once), else None."""
    if not len(words):
        return None
    for text in texts:
        found = words._search(normalize(text))
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------------------------------------
# The shipped NSFW list


@functools.lru_cache(maxsize=1)
def load_nsfw_words() -> tuple[str, ...]:
    """generation/data/nsfw_words.txt: one entry per line, `#` starts a comment, `word*` is a stem."""
    text = resources.files("generation").joinpath("data/nsfw_words.txt").read_text(encoding="utf-8")
    entries = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return tuple(entry for entry in entries if entry)


def nsfw_word_list() -> WordList:
    """The shipped NSFW list, compiled (once)."""
    return WordList.compile(load_nsfw_words())


# ---------------------------------------------------------------------------------------------------
# Policy


@dataclass(frozen=True)
class ModerationPolicy:
    """What one request in one channel must pass.

    `nsfw` is None when the server did not turn the NSFW filter on; `nsfw_allowed` is True in an
    age-restricted channel. NSFW words are looked for in prompts only: negative prompts name what
    is unwanted ("nsfw, nude" there is the opposite of a request for it).
    """

    banned: WordList
    nsfw: WordList | None = None
    nsfw_allowed: bool = False

    def check(self, prompt_texts: Sequence[str], negative_texts: Sequence[str]) -> str | None:
        """A member-facing reason the request is refused, or None when it may run."""
        prompts = [normalize(text) for text in prompt_texts]
        if len(self.banned):
            for texts, what in ((prompts, "prompt"), (map(normalize, negative_texts), "negative prompt")):
                for text in texts:
                    word = self.banned._search(text)
                    if word is not None:
                        return f'your {what} contains "{word}", which this server does not allow'
        if self.nsfw is not None and not self.nsfw_allowed:
            for text in prompts:
                word = self.nsfw._search(text)
                if word is not None:
                    return f'NSFW prompts are allowed only in age-restricted channels here ("{word}")'
        return None
