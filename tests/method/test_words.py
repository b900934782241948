"""reversion/words.py and errors.py: the literals, the word lists, the error hierarchy."""
from __future__ import annotations

import pytest

from comfyui_reversion.reversion import errors, words


def test_word_lists_are_the_papers():
    preps, stops = words.relation_words(), words.stop_words()
    assert len(preps) == 56 and len(set(preps)) == 56
    assert len(stops) == 127 and len(set(stops)) == 127
    assert {"above", "inside", "astride", "within", "versus"} <= set(preps)
    assert len(set(preps) & set(stops)) == 23          # of, at, by, with, in, on, over, ...
    assert "and" in stops                               # the default init word is a stop word


def test_a_template_is_filled_in_its_one_slot():
    assert words.fill("a cat {} a dog", words.PLACEHOLDER) == "a cat <R> a dog"
    assert words.fill("a cat {} a dog", words.STANDIN) == "a cat wexmondays a dog"
    assert words.fill("no slot", "x") == "no slot"
    assert words.SLOT == "{}" and words.PLACEHOLDER in words.PLACEHOLDERS


@pytest.mark.parametrize("kind", [errors.ConfigError, errors.ExemplarError, errors.RelationError,
                                  errors.RelationFileError, errors.CheckpointError, errors.NotEnoughMemory])
def test_every_user_error_is_one_family(kind):
    """One hierarchy: a caller can catch ReVersionError (or ValueError) for any bad input."""
    assert issubclass(kind, errors.ReVersionError) and issubclass(kind, ValueError)


def test_running_out_of_memory_is_its_own_error():
    assert not issubclass(errors.NotEnoughMemory, errors.RelationError)
