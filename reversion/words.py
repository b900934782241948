"""Words and literals of the method, in one place.

- `PLACEHOLDER` "<R>": where a user writes the relation in a prompt ("a cat <R> a dog");
- `SLOT` "{}": where the relation goes in an exemplar's template ("a cat {} a dog");
- `STANDIN` "wexmondays": the single CLIP token that stands for the relation while a
  caption is tokenised (a hashtag from CLIP's BPE merges that no prompt uses, unlike
  trigger words such as "ohwx"; text that contains it is refused by token id);
- the two word lists of the steering loss, kept as data files in `data/`.
"""
from __future__ import annotations

import functools
from pathlib import Path

PLACEHOLDER = "<R>"
PLACEHOLDERS = ("<R>", "<r>")        # both spellings are read in prompts
SLOT = "{}"
STANDIN = "wexmondays"

DATA = Path(__file__).resolve().parent / "data"


def standins(count: int = 1) -> str:
    """The stand-in once per relation vector: a relation of N vectors takes N token places."""
    return " ".join([STANDIN] * count)


def fill(template: str, word: str) -> str:
    """The template with `word` in its relation slot: fill("a cat {} a dog", "<R>")."""
    return template.replace(SLOT, word)


def _words(name: str) -> tuple[str, ...]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return tuple(w.strip() for w in lines if w.strip() and not w.startswith("#"))


@functools.lru_cache(maxsize=None)
def relation_words() -> tuple[str, ...]:
    """ReVersion's 56 basis prepositions: positives of the steering loss."""
    return _words("relation_words.txt")


@functools.lru_cache(maxsize=None)
def stop_words() -> tuple[str, ...]:
    """127 English stop words: neither positive nor negative."""
    return _words("stop_words.txt")
