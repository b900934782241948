"""Beyond the paper (issue 25), in the method layer: swapped-object negatives (swap.py) and
relations of several vectors, on the small pure-torch backend of test_trainer.py; values
computed here independently of the loop."""
from __future__ import annotations

import pytest
import torch

from comfyui_reversion.reversion import errors, swap, trainer
from tests.method.test_trainer import LinearBackend, latents_of

SWAPPABLE = [["a red circle {} a blue square"], ["A cat {} a dog", "{} between a cat and a dog"], ["a dog {} a cat"]]


@pytest.mark.parametrize("template,swapped", [
    ("a red circle {} a blue square", "a blue square {} a red circle"),
    ("A cat {} a dog.", "A dog {} a cat."),             # the capital stays first, the full stop last
    ("cat {} dog", "dog {} cat"),
    ("an apple {} the table!", "the table {} an apple!"),
    ("{} between a cat and a dog", None),                # no object before the slot
    ("a cat and a dog {}", None),
    ("a cat {} a cat", None),                            # swapping changes nothing
    ("a cat {} a dog {}", None),
])
def test_swap_template(template, swapped):
    assert swap.swap_template(template) == swapped


class SwapBackend(LinearBackend):
    """The linear backend with per-exemplar errors and the swap term's pieces (one forward per
    `piece_size` exemplars, as ComfyBackend splits an update when memory is short)."""

    def __init__(self, piece_size=None, **kw):
        super().__init__(**kw)
        self.piece_size = piece_size
        self.swap_calls = []               # (own captions, swapped captions) per update

    def errors(self, vectors, latents, captions, noise):
        target = noise.mean(dim=1).flatten(1).mean(1, keepdim=True) + latents.flatten(1).mean(1, keepdim=True)
        return ((self.predict(vectors, captions) - target) ** 2).mean(1)

    def denoising_loss(self, vectors, latents, captions, timesteps, noise, swap=None):
        if swap is None:
            return super().denoising_loss(vectors, latents, captions, timesteps, noise)
        self.swap_calls.append((list(captions), list(swap.captions)))
        vector = vectors["clip_l"]
        if vector.requires_grad and not getattr(vector, "recorded", False):    # as LinearBackend does
            vector.register_hook(lambda g: self.gradients.append(g.clone()))
            vector.recorded = True
        n = len(captions)
        size = self.piece_size or n
        total = 0
        for start in range(0, n, size):
            piece = range(start, min(start + size, n))
            rows = list(piece) + swap.rows(piece)
            texts = [captions[i] for i in piece] + [swap.captions[i] for i in swap.rows(piece)]
            total = total + swap.piece_loss(self.errors(vectors, latents[rows], texts, noise[rows]), piece, n)
        return total


def reference_gradient(backend, config, start, own, swapped, latents, noise):
    """d/dv [ mean_i e(own_i) + w * mean_{i swappable} relu(e_i - e(swapped_i) + m * e_i) + 0.01 * steer ],
    with the steering part taken from the loop's record (it has its own test)."""
    v = {"clip_l": start.clone().requires_grad_(True)}
    e_own = backend.errors(v, latents, own, noise)
    rows = [i for i, c in enumerate(swapped) if c is not None]
    e_swap = backend.errors(v, latents[rows], [swapped[i] for i in rows], noise[rows])
    rank = torch.relu(e_own[rows] - e_swap + config.swap_margin * e_own[rows].detach())
    (e_own.mean() + config.swap_weight * rank.mean()).backward()
    return v["clip_l"].grad, e_own.mean().item(), rank.mean().item()


@pytest.mark.parametrize("piece_size", [None, 1, 3])
def test_the_ranking_term_adds_its_gradient_in_any_split(piece_size):
    """One update with swap_weight 2: the vector's gradient equals denoising + 2 x the hinge on
    (own error - swapped error + margin x own error) over the exemplars whose drawn template
    swaps, whether the update runs in one forward or in pieces; steering off to isolate it."""
    backend = SwapBackend(piece_size)
    config = trainer.TrainConfig(steps=1, batch_size=3, grad_accum=2, seed=4, steering_weight=0.0,
                                 swap_weight=2.0, swap_margin=0.5)
    result = trainer.train(backend, latents_of(3), SWAPPABLE, config)
    own, swapped = backend.swap_calls[0]
    assert len(own) == 6 and any(c is None for c in swapped) and any(c is not None for c in swapped)
    for caption, other in zip(own, swapped):
        if other is not None:        # the stand-in stays in the slot, the objects trade places
            parts = lambda c: sorted(c.lower().split(" <x> "))
            assert other != caption and parts(other) == parts(caption)
    draws = draws_of(backend, config)
    expected, denoise, rank = reference_gradient(backend, config, backend.initial_vectors("and")["clip_l"], own,
                                                 swapped, draws["latents"], draws["noise"])
    assert rank > 0 and expected.norm() > 0
    torch.testing.assert_close(backend.gradients[0], expected, rtol=1e-5, atol=1e-7)
    record = result.history[0]
    assert record["swap"] == pytest.approx(rank, rel=1e-5) and record["denoise"] == pytest.approx(denoise, rel=1e-5)
    assert record["loss"] == pytest.approx(denoise + 2.0 * rank, rel=1e-5)


def draws_of(backend, config):
    """The latents and noise of the first update, drawn again by a run without the swap term:
    the term takes no random draws, so the two runs draw the same."""
    plain = LinearBackend()
    trainer.train(plain, latents_of(3), SWAPPABLE, trainer.TrainConfig(**{**config.__dict__, "swap_weight": 0.0}))
    latents, captions, _, noise = plain.denoise_calls[0]
    assert captions == backend.swap_calls[0][0]
    return {"latents": latents, "noise": noise}


def test_swap_weight_zero_is_the_paper_and_a_template_that_cannot_swap_leaves_the_term_out():
    a = trainer.train(LinearBackend(), latents_of(3), SWAPPABLE, trainer.TrainConfig(steps=3, batch_size=2, seed=1))
    b = trainer.train(LinearBackend(), latents_of(3), SWAPPABLE,
                      trainer.TrainConfig(steps=3, batch_size=2, seed=1, swap_weight=0.0))
    assert torch.equal(a.vectors["clip_l"], b.vectors["clip_l"])
    backend = SwapBackend()
    unswappable = [["{} between a cat and a dog"]] * 3
    trainer.train(backend, latents_of(3), unswappable, trainer.TrainConfig(steps=2, batch_size=2, swap_weight=1.0))
    assert backend.swap_calls == [] and len(backend.denoise_calls) == 2     # nothing to swap: the plain loss
    with pytest.raises(errors.ConfigError, match="swap weight"):
        trainer.TrainConfig(swap_weight=-1.0).check()
    with pytest.raises(errors.ConfigError, match="swap_weight must be a finite number"):
        trainer.TrainConfig(swap_weight=float("nan")).check()


class MultiBackend(LinearBackend):
    """The linear backend with <R> as several tokens: the k-th stand-in of a caption reads row k
    (scaled by k + 1: each token's place matters, as position embeddings make it in CLIP)."""

    def __init__(self, count):
        super().__init__()
        self.standin = " ".join(["<x>"] * count)

    def predict(self, vectors, captions):
        v = vectors["clip_l"].reshape(-1, vectors["clip_l"].shape[-1])
        out = []
        for c in captions:
            k, rows = 0, []
            for w in c.split():
                rows.append(v[k] * (k + 1) if w == "<x>" else self.table[self.words[w]])
                k += w == "<x>"
            out.append(torch.stack(rows).mean(0))
        return torch.stack(out) @ self.proj


def test_several_vectors_start_at_the_init_word_and_learn_apart():
    backend = MultiBackend(3)
    config = trainer.TrainConfig(steps=4, batch_size=2, seed=2, num_vectors=3)
    result = trainer.train(backend, latents_of(3), [["a cat {} a dog"]] * 3, config)
    v = result.vectors["clip_l"]
    init = backend.initial_vectors("and")["clip_l"]
    assert v.shape == (3, init.shape[0])
    assert all(c.count("<x>") == 3 for c in backend.denoise_calls[0][1])
    assert not torch.allclose(v[0], init) and not torch.allclose(v[0], v[1])
    with pytest.raises(errors.ConfigError, match="num_vectors must be 1 to 4"):
        trainer.TrainConfig(num_vectors=5).check()
    with pytest.raises(errors.ConfigError, match="starting relation has 3 vectors, num_vectors is 2"):
        trainer.train(MultiBackend(2), latents_of(3), [["a cat {} a dog"]] * 3,
                      trainer.TrainConfig(steps=1, num_vectors=2), start_vectors={"clip_l": v})
