"""The relation-steering contrastive loss and its word sets (reversion/steering.py)."""
from __future__ import annotations

import math
import random

import pytest
import torch

from comfyui_reversion.reversion import steering, words


def reference_steering_loss(anchor, pos, neg, temperature):
    """Independent float64 computation from the paper's formula:
    -log( sum_P exp(a.p/T) / (sum_P exp(a.p/T) + sum_N exp(a.n/T)) ), unit vectors."""
    a = anchor.double() / anchor.double().norm()
    num = sum(math.exp(float(a @ (p.double() / p.double().norm())) / temperature) for p in pos)
    den = num + sum(math.exp(float(a @ (n.double() / n.double().norm())) / temperature) for n in neg)
    return -math.log(num / den)


@pytest.mark.parametrize("seed,temperature", [(0, 0.07), (1, 0.07), (2, 0.5)])
def test_steering_loss_equals_float64_reference(seed, temperature):
    g = torch.Generator().manual_seed(seed)
    anchor, pos, neg = torch.randn(768, generator=g), torch.randn(8, 768, generator=g), torch.randn(5, 768, generator=g)
    got = steering.steering_loss(anchor, pos, neg, temperature=temperature)
    assert got.item() == pytest.approx(reference_steering_loss(anchor, pos, neg, temperature), rel=1e-5)


def test_steering_loss_prefers_prepositions():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(4, 64, generator=g), torch.randn(6, 64, generator=g)
    near_positive = steering.steering_loss(pos.mean(0), pos, neg)
    near_negative = steering.steering_loss(neg.mean(0), pos, neg)
    assert near_positive < near_negative


def test_steering_gradient_is_the_formulas_and_moves_the_vector_toward_the_positives():
    """The gradient reaching the relation vector is the derivative of the paper's formula
    (finite differences of the float64 reference), and a step against it lowers the loss."""
    g = torch.Generator().manual_seed(4)
    pos, neg = torch.randn(4, 32, generator=g), torch.randn(6, 32, generator=g)
    vec = torch.randn(32, generator=g).requires_grad_(True)
    steering.steering_loss(vec, pos, neg).backward()
    direction = torch.randn(32, generator=g)
    h = 1e-4
    numeric = (reference_steering_loss(vec.detach() + h * direction, pos, neg, 0.07)
               - reference_steering_loss(vec.detach() - h * direction, pos, neg, 0.07)) / (2 * h)
    assert float(vec.grad @ direction) == pytest.approx(numeric, rel=1e-3)
    stepped = vec.detach() - 0.01 * vec.grad / vec.grad.norm()
    assert steering.steering_loss(stepped, pos, neg) < steering.steering_loss(vec.detach(), pos, neg)


def test_steering_vocabulary_excludes_stop_words_prepositions_placeholder_and_padding():
    ids = {w: i for i, w in enumerate(["a", "red", "cat", "on", "the", "mat", "zzz", ",", "!"])}
    ids.update({w: 100 + i for i, w in enumerate(words.stop_words() + words.relation_words()) if w not in ids})
    tokenize = lambda text: [ids[w] for w in text.split()]  # noqa: E731 (content ids only: no pad)
    v = steering.SteeringVocabulary(tokenize, placeholder_ids=[ids["zzz"]])
    caption = tokenize("a red cat zzz the mat ,")
    assert v.negative_ids([caption, tokenize("red cat")]) == [ids["red"], ids["cat"], ids["mat"], ids[","],
                                                             ids["red"], ids["cat"]]   # duplicates kept
    assert v.positive_ids([["on", "the"]]) == [ids["on"], ids["the"]]


def test_positive_words_are_distinct_prepositions():
    rng = random.Random(0)
    for _ in range(50):
        drawn = steering.sample_positive_words(rng, 4)
        assert len(set(drawn)) == 4 and set(drawn) <= set(words.relation_words())
    with pytest.raises(ValueError, match="num_positives"):
        steering.sample_positive_words(rng, 57)
