"""The two word lists of the relation-steering loss, kept as data files in `data/`."""
from __future__ import annotations

import functools
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


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
