"""Relation-steering contrastive loss (ReVersion, section 3.2 of the paper).

A multi-positive InfoNCE in the text encoder's *input* token-embedding space: the relation
vector is pulled toward basis prepositions and pushed away from the other content words
of the caption (entity nouns, adjectives). All vectors are L2-normalised, so each logit is
a cosine similarity over the temperature:

    L = logsumexp([s_P, s_N] / T) - logsumexp(s_P / T)

Positives and negatives are rows of the frozen table: only the relation vector gets a
gradient.
"""
from __future__ import annotations

import random
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from . import words

TEMPERATURE = 0.07
NUM_POSITIVES = 4


def steering_loss(anchor: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                  temperature: float = TEMPERATURE) -> torch.Tensor:
    """anchor [D] or [K, D] (loss averaged over anchors), positives [L, D], negatives [M, D]."""
    if positives.shape[0] == 0:
        raise ValueError("steering loss needs at least one positive word")
    a = F.normalize(anchor.float().reshape(-1, anchor.shape[-1]), dim=-1)
    p = F.normalize(positives.float(), dim=-1)
    n = F.normalize(negatives.float(), dim=-1)
    pos = a @ p.T / temperature
    everything = torch.cat([pos, a @ n.T / temperature], dim=1)
    return (torch.logsumexp(everything, dim=1) - torch.logsumexp(pos, dim=1)).mean()


def sample_positive_words(rng: random.Random, count: int = NUM_POSITIVES) -> list[str]:
    """`count` distinct basis prepositions, uniformly without replacement."""
    basis = words.relation_words()
    if not 1 <= count <= len(basis):
        raise ValueError(f"num_positives must be between 1 and {len(basis)}, got {count}")
    return rng.sample(basis, count)


class SteeringVocabulary:
    """Token ids of the word lists for one tokenizer.

    `tokenize(text) -> list[int]` must return a caption's *content* token ids only (no
    start/end/padding tokens): padding is then excluded by construction whatever id a
    tokenizer pads with (SD2 and SDXL's CLIP-G pad with id 0, a real token).
    """

    def __init__(self, tokenize: Callable[[str], list[int]], placeholder_ids: Iterable[int] = ()):
        self.tokenize = tokenize
        self.excluded = set(tokenize(" ".join(words.stop_words() + words.relation_words())))
        self.excluded |= set(placeholder_ids)
        self._word_cache: dict[str, list[int]] = {}

    def word_ids(self, word: str) -> list[int]:
        if word not in self._word_cache:
            self._word_cache[word] = self.tokenize(word)
        return self._word_cache[word]

    def positive_ids(self, words_per_sample: Sequence[Sequence[str]]) -> list[int]:
        """All tokens of every sample's positive words ("astride" is two BPE tokens)."""
        return [i for sample in words_per_sample for w in sample for i in self.word_ids(w)]

    def negative_ids(self, caption_ids: Sequence[Sequence[int]]) -> list[int]:
        """Every caption token that is not a stop word, preposition or placeholder.
        Duplicates are kept, as in the reference implementation."""
        return [i for ids in caption_ids for i in ids if i not in self.excluded]
