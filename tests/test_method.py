"""The method in `reversion/`, without ComfyUI: steering loss, timestep sampler, word
lists, trainer loop mechanics."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from reversion import steering, timesteps, trainer, vocab


# ------------------------------------------------------------------------ word lists

def test_word_lists_are_the_papers():
    preps, stops = vocab.relation_words(), vocab.stop_words()
    assert len(preps) == 56 and len(set(preps)) == 56
    assert len(stops) == 127 and len(set(stops)) == 127
    assert {"above", "inside", "astride", "within", "versus"} <= set(preps)
    assert len(set(preps) & set(stops)) == 23          # of, at, by, with, in, on, over, ...
    assert "and" in stops                               # the default init word is a stop word


# --------------------------------------------------------------------- steering loss

def reference_steering_loss(anchor, pos, neg, temperature):
    """Independent float64 computation from the paper's formula:
    -log( sum_P exp(a.p/T) / (sum_P exp(a.p/T) + sum_N exp(a.n/T)) ), unit vectors."""
    a = anchor.double() / anchor.double().norm()
    num = sum(math.exp(float(a @ (p.double() / p.double().norm())) / temperature) for p in pos)
    den = num + sum(math.exp(float(a @ (n.double() / n.double().norm())) / temperature) for n in neg)
    return -math.log(num / den)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_steering_loss_equals_float64_reference(seed):
    g = torch.Generator().manual_seed(seed)
    anchor, pos, neg = torch.randn(768, generator=g), torch.randn(8, 768, generator=g), torch.randn(5, 768, generator=g)
    got = steering.steering_loss(anchor, pos, neg, temperature=0.07)
    assert got.item() == pytest.approx(reference_steering_loss(anchor, pos, neg, 0.07), rel=1e-5)


def test_steering_loss_prefers_prepositions():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(4, 64, generator=g), torch.randn(6, 64, generator=g)
    near_positive = steering.steering_loss(pos.mean(0), pos, neg)
    near_negative = steering.steering_loss(neg.mean(0), pos, neg)
    assert near_positive < near_negative


def test_steering_gradient_reaches_only_the_relation_vector():
    table = torch.nn.Parameter(torch.randn(100, 32))       # a frozen table that should get nothing
    vec = torch.nn.Parameter(torch.randn(32))
    pos, neg = table[[1, 2, 3, 4]].detach(), table[[10, 11]].detach()
    steering.steering_loss(vec, pos, neg).backward()
    assert vec.grad is not None and vec.grad.abs().sum() > 0
    assert table.grad is None


def test_steering_vocabulary_excludes_stop_words_prepositions_placeholder_and_padding():
    ids = {w: i for i, w in enumerate(["a", "red", "cat", "on", "the", "mat", "zzz", ",", "!"])}
    ids.update({w: 100 + i for i, w in enumerate(vocab.stop_words() + vocab.relation_words()) if w not in ids})
    tokenize = lambda text: [ids[w] for w in text.split()]  # noqa: E731 (content ids only: no pad)
    v = steering.SteeringVocabulary(tokenize, placeholder_ids=[ids["zzz"]])
    caption = tokenize("a red cat zzz the mat ,")
    assert v.negative_ids([caption, tokenize("red cat")]) == [ids["red"], ids["cat"], ids["mat"], ids[","],
                                                             ids["red"], ids["cat"]]   # duplicates kept
    assert v.positive_ids([["on", "the"]]) == [ids["on"], ids["the"]]


def test_positive_words_are_distinct_prepositions():
    rng = random.Random(0)
    for _ in range(50):
        words = steering.sample_positive_words(rng, 4)
        assert len(set(words)) == 4 and set(words) <= set(vocab.relation_words())
    with pytest.raises(ValueError, match="num_positives"):
        steering.sample_positive_words(rng, 57)


# ------------------------------------------------------------------- timestep sampler

def test_focal_probabilities_match_the_formula():
    p = timesteps.focal_probabilities(0.5)
    t = torch.arange(1000, dtype=torch.float64)
    assert p.sum().item() == pytest.approx(1.0)
    assert (p[999] / p[0]).item() == pytest.approx(3.0, rel=1e-5)
    assert (p * t).sum().item() == pytest.approx(600.9, abs=0.1)
    assert torch.all(p[1:] >= p[:-1])                  # noisier steps are never less likely
    assert torch.allclose(timesteps.focal_probabilities(0.0), torch.full((1000,), 1e-3, dtype=torch.float64))


def test_sampler_draws_follow_p_of_t():
    """200k draws: mean near 601, P(t >= 500) near 0.659, and a chi-square test over 20
    bins that a wrong distribution (uniform, or alpha = 0.3) fails."""
    from scipy import stats
    draws = timesteps.FocalTimestepSampler(0.5, generator=torch.Generator().manual_seed(0)).sample(200_000)
    draws = draws.double()
    assert draws.min() >= 0 and draws.max() <= 999
    assert draws.mean().item() == pytest.approx(600.9, abs=3.0)       # std of the mean ~0.6
    assert (draws >= 500).double().mean().item() == pytest.approx(0.659, abs=0.005)
    observed = np.histogram(draws.numpy(), bins=20, range=(0, 1000))[0]

    def expected(alpha):
        return timesteps.focal_probabilities(alpha).reshape(20, 50).sum(1).numpy() * len(draws)

    assert stats.chisquare(observed, expected(0.5)).pvalue > 1e-3
    assert stats.chisquare(observed, expected(0.0)).pvalue < 1e-12
    assert stats.chisquare(observed, expected(0.3)).pvalue < 1e-12


# --------------------------------------------------------------------- trainer loop

class LinearBackend:
    """A real (if tiny) differentiable model for the loop: the "denoiser" predicts noise
    from latents and the mean caption embedding. No ComfyUI involved."""

    encoder_keys = ["clip_l"]
    placeholder_text = "<x>"

    def __init__(self, dim=16, latent=8):
        g = torch.Generator().manual_seed(0)
        self.words = {w: i for i, w in enumerate(["and", "cat", "dog", "a", "<x>"] + list(vocab.relation_words()))}
        self.table = torch.randn(len(self.words) + 200, dim, generator=g)
        self.proj = torch.randn(dim, latent, generator=g)
        self.denoise_calls = []

    def initial_vectors(self, word):
        return {"clip_l": self.table[self.words[word]].clone()}

    def tokenize(self, text):
        return [self.words.setdefault(w, len(self.words)) for w in text.split()]

    def steering_vocabulary(self, key):
        return steering.SteeringVocabulary(self.tokenize, placeholder_ids=[self.words["<x>"]])

    def embedding_rows(self, key, ids):
        return self.table[ids]

    def caption_ids(self, key, caption):
        return self.tokenize(caption)

    def denoising_loss(self, vectors, latents, captions, timesteps, noise):
        self.denoise_calls.append((list(captions), timesteps.clone()))
        rows = []
        for c in captions:
            embs = [vectors["clip_l"] if w == "<x>" else self.table[self.words[w]] for w in c.split()]
            rows.append(torch.stack(embs).mean(0))
        pred = torch.stack(rows) @ self.proj
        return ((pred - noise.mean(dim=1).flatten(1).mean(1, keepdim=True)) ** 2).mean() + latents.mean() * 0


def test_one_pass_over_the_update_is_the_papers_accumulated_gradient():
    """The loop sends all micro-batches of an update through the backend at once; the
    gradient equals the paper's: each micro-batch's (denoise + 0.01 x steer) / grad_accum
    backpropagated in turn, on the same random draws."""
    backend, cfg = LinearBackend(), trainer.TrainConfig(batch_size=2, grad_accum=3, seed=9)
    latents = torch.randn(3, 4, 2, 2)
    templates = [["a cat {} a dog"], ["cat {} dog", "a cat {} dog"], ["a dog {} a cat"]]
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    sampler = timesteps.FocalTimestepSampler(cfg.focal_alpha, generator=gen)
    order = trainer.ExemplarOrder(3, gen)
    draws = [trainer.draw_micro_batch(latents, templates, cfg, backend, order, rng, sampler, gen) for _ in range(3)]
    vocab = {"clip_l": backend.steering_vocabulary("clip_l")}

    def gradient(one_pass: bool) -> torch.Tensor:
        v = {"clip_l": backend.table[backend.words["and"]].clone().requires_grad_(True)}
        if one_pass:
            steer = torch.stack([trainer.steering_term(backend, v, vocab, cfg, m) for m in draws]).mean()
            (backend.denoising_loss(v, *trainer.merged(draws)) + cfg.steering_weight * steer).backward()
        else:
            for m in draws:
                loss = backend.denoising_loss(v, m.latents, m.captions, m.timesteps, m.noise) \
                    + cfg.steering_weight * trainer.steering_term(backend, v, vocab, cfg, m)
                (loss / cfg.grad_accum).backward()
        return v["clip_l"].grad
    merged, accumulated = gradient(True), gradient(False)
    assert accumulated.norm() > 0
    torch.testing.assert_close(merged, accumulated, rtol=1e-5, atol=1e-7)


def test_trainer_updates_only_the_relation_vector_and_is_deterministic():
    backend = LinearBackend()
    table_before = backend.table.clone()
    latents = torch.randn(3, 4, 2, 2)
    templates = [["a cat {} a dog"], ["cat {} dog", "a cat {} dog"], ["a dog {} a cat"]]
    cfg = trainer.TrainConfig(steps=20, batch_size=2, grad_accum=2, seed=5)
    r1 = trainer.train(backend, latents, templates, cfg)
    r2 = trainer.train(LinearBackend(), latents, templates, cfg)
    assert torch.equal(backend.table, table_before)
    assert not torch.equal(r1.vectors["clip_l"], table_before[backend.words["and"]])
    assert torch.equal(r1.vectors["clip_l"], r2.vectors["clip_l"])            # same seed, same result
    assert [h["loss"] for h in r1.history] == [h["loss"] for h in r2.history]
    r3 = trainer.train(LinearBackend(), latents, templates, trainer.TrainConfig(steps=20, batch_size=2, grad_accum=2, seed=6))
    assert not torch.equal(r1.vectors["clip_l"], r3.vectors["clip_l"])
    # 20 updates, each one denoising call on its 2 micro-batches x 2 exemplars; every
    # caption has the placeholder in the slot
    assert [len(caps) for caps, _ in backend.denoise_calls] == [4] * 20
    assert all("<x>" in c and "{}" not in c for caps, _ in backend.denoise_calls for c in caps)


def test_trainer_uses_paper_defaults_and_scaled_lr():
    cfg = trainer.TrainConfig()
    assert (cfg.steps, cfg.batch_size, cfg.grad_accum, cfg.init_word, cfg.seed) == (3000, 2, 4, "and", 2023)
    assert cfg.lr == pytest.approx(2e-3)
    assert (cfg.weight_decay, cfg.steering_weight, cfg.num_positives, cfg.temperature, cfg.focal_alpha) == \
        (1e-2, 0.01, 4, 0.07, 0.5)
    assert trainer.TrainConfig(scale_lr=False).lr == pytest.approx(2.5e-4)


def test_trainer_callback_sees_every_update_and_can_stop():
    seen = []
    result = trainer.train(LinearBackend(), torch.randn(2, 4, 2, 2), [["cat {} dog"]] * 2,
                           trainer.TrainConfig(steps=50, grad_accum=1),
                           callback=lambda step, total, rec, vectors: seen.append((step, total)) or step == 7)
    assert seen == [(s, 50) for s in range(1, 8)]
    assert result.stopped_early and result.steps_done == 7


def test_trainer_timesteps_are_focal():
    backend = LinearBackend()
    trainer.train(backend, torch.randn(2, 4, 2, 2), [["cat {} dog"]] * 2,
                  trainer.TrainConfig(steps=500, batch_size=2, grad_accum=1))
    t = torch.cat([ts for _, ts in backend.denoise_calls]).double()
    assert t.mean().item() == pytest.approx(600.9, abs=25)     # 1000 draws, std of the mean ~8


def test_steering_positives_can_be_narrowed_for_experiments():
    """TrainConfig.positive_words (bench_quality --caption-positives) draws the positives from
    those words only; the default, the paper's 56, leaves the config's record as it was (so
    checkpoints and relation files made before still match)."""
    class Recording(LinearBackend):
        def __init__(self):
            super().__init__()
            self.drawn = []

        def steering_vocabulary(self, key):
            v = super().steering_vocabulary(key)
            ids_of = v.positive_ids
            v.positive_ids = lambda words: self.drawn.extend(w for ws in words for w in ws) or ids_of(words)
            return v
    narrow, paper = Recording(), Recording()
    latents, templates = torch.randn(2, 4, 2, 2), [["cat {} dog"]] * 2
    trainer.train(narrow, latents, templates, trainer.TrainConfig(steps=30, grad_accum=1, num_positives=2,
                                                             positive_words=("on", "atop", "upon")))
    assert len(narrow.drawn) == 30 * 2 * 2 and set(narrow.drawn) == {"on", "atop", "upon"}
    trainer.train(paper, latents, templates, trainer.TrainConfig(steps=30, grad_accum=1))
    assert len(set(paper.drawn)) > 40 and set(paper.drawn) <= set(vocab.relation_words())
    assert "positive_words" not in trainer.TrainConfig().as_dict()
    assert trainer.TrainConfig(positive_words=("on", "in")).as_dict()["positive_words"] == ["on", "in"]
    with pytest.raises(ValueError, match="more than the 2 positive words"):
        trainer.TrainConfig(positive_words=("on", "in")).check()


@pytest.mark.parametrize("field,value,message", [
    ("steps", 0, "steps must be at least 1"), ("batch_size", 0, "batch_size"),
    ("focal_alpha", 1.5, "focal alpha"), ("base_lr", 0.0, "learning rate"), ("init_word", " ", "init word")])
def test_trainer_rejects_bad_settings(field, value, message):
    with pytest.raises(ValueError, match=message):
        trainer.TrainConfig(**{field: value}).check()


# ------------------------------------------------------------------- checkpoints

class Cancelled(Exception):
    pass


def cancel_at(check: int):
    """An interrupt hook that raises when the run reaches its `check`-th check."""
    calls = {"n": 0}

    def interrupt():
        calls["n"] += 1
        if calls["n"] == check:
            raise Cancelled()
    return interrupt


def test_cancel_mid_update_then_resume_equals_the_uninterrupted_run(tmp_path):
    from reversion import checkpoint
    latents = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    templates = [["a cat {} a dog"], ["cat {} dog", "a cat {} dog"], ["a dog {} a cat"]]
    cfg = trainer.TrainConfig(steps=9, batch_size=2, grad_accum=3, seed=4)
    whole = trainer.train(LinearBackend(), latents, templates, cfg)

    path = tmp_path / "rel.resume"
    saves = []

    def save(state):
        saves.append(state["step"])
        checkpoint.save(state, path)
    keep = checkpoint.Checkpointing(save=save, every=2, fingerprint="fp")
    # each update checks twice (before its forward, before its backward): check 12 is
    # update 6's, after its forward
    with pytest.raises(Cancelled):
        trainer.train(LinearBackend(), latents, templates, cfg, interrupt=cancel_at(12), checkpointing=keep)
    assert saves == [2, 4, 5]                    # every 2 updates, then the 5 complete ones on Cancel
    state = checkpoint.load(path)
    assert state["step"] == 5 and len(state["history"]) == 5

    resumed = trainer.train(LinearBackend(), latents, templates, cfg,
                            checkpointing=checkpoint.Checkpointing(save=save, every=2, fingerprint="fp",
                                                                   resume_from=state))
    assert torch.equal(resumed.vectors["clip_l"], whole.vectors["clip_l"])      # bit for bit
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    assert resumed.steps_done == 9


@pytest.mark.parametrize("change,message", [
    (dict(fingerprint="other"), "other exemplars"),
    (dict(config=trainer.TrainConfig(steps=9, batch_size=2, grad_accum=3, seed=5)), r"seed 4 -> 5"),
    (dict(config=trainer.TrainConfig(steps=3, batch_size=2, grad_accum=3, seed=4)), "already at update 3 of the 3"),
])
def test_a_checkpoint_only_resumes_the_same_run(tmp_path, change, message):
    from reversion import checkpoint
    cfg = trainer.TrainConfig(steps=3, batch_size=2, grad_accum=3, seed=4)
    states = []
    trainer.train(LinearBackend(), torch.randn(2, 4, 2, 2), [["cat {} dog"]] * 2, cfg,
                  checkpointing=checkpoint.Checkpointing(save=states.append, every=3, fingerprint="fp"))
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.check_compatible(states[-1], change.get("config", cfg).as_dict(), change.get("fingerprint", "fp"))


def test_continue_from_a_saved_relation_starts_from_its_vector():
    start = {"clip_l": torch.full((16,), 0.25)}
    seen = []

    class Spy(LinearBackend):
        def denoising_loss(self, vectors, *a):
            seen.append(vectors["clip_l"].detach().clone())
            return super().denoising_loss(vectors, *a)
    trainer.train(Spy(), torch.randn(2, 4, 2, 2), [["cat {} dog"]] * 2,
                  trainer.TrainConfig(steps=1, grad_accum=1), start_vectors=start)
    assert torch.equal(seen[0], start["clip_l"])
