"""The training loop (reversion/trainer.py) on a small pure-torch backend: what each setting
does to an update, checked against values computed here independently of the loop."""
from __future__ import annotations

import pytest
import torch

from comfyui_reversion.reversion import errors, steering, timesteps, trainer, words

TEMPLATES = [["a cat {} a dog"], ["cat {} dog", "a cat {} dog"], ["a dog {} a cat"]]


class LinearBackend:
    """A real (if tiny) differentiable model for the loop: the "denoiser" predicts noise
    from latents and the mean caption embedding. No ComfyUI involved. It records every
    call, and the gradient the update sends into the relation vector."""

    encoder_keys = ["clip_l"]
    standin = "<x>"

    def __init__(self, dim=16, latent=8):
        g = torch.Generator().manual_seed(0)
        self.words = {w: i for i, w in enumerate(["and", "cat", "dog", "a", "<x>"] + list(words.relation_words()))}
        self.table = torch.randn(len(self.words) + 200, dim, generator=g)
        self.proj = torch.randn(dim, latent, generator=g)
        self.denoise_calls = []            # (latents, captions, timesteps, noise) per update
        self.positive_words = []           # per micro-batch: the words drawn for its samples
        self.negative_ids = []             # per micro-batch: the caption ids handed to the vocabulary
        self.gradients = []                # per update: d loss / d vector

    def initial_vectors(self, word):
        return {"clip_l": self.table[self.words[word]].clone()}

    def tokenize(self, text):
        return [self.words.setdefault(w, len(self.words)) for w in text.split()]

    def steering_vocabulary(self, key):
        vocabulary = steering.SteeringVocabulary(self.tokenize, placeholder_ids=[self.words["<x>"]])
        positive_ids, negative_ids = vocabulary.positive_ids, vocabulary.negative_ids
        vocabulary.positive_ids = lambda drawn: self.positive_words.append(drawn) or positive_ids(drawn)
        vocabulary.negative_ids = lambda ids: self.negative_ids.append(ids) or negative_ids(ids)
        return vocabulary

    def embedding_rows(self, key, ids):
        return self.table[ids]

    def caption_ids(self, key, caption):
        return self.tokenize(caption)

    def predict(self, vectors, captions):
        rows = [torch.stack([vectors["clip_l"] if w == "<x>" else self.table[self.words[w]]
                             for w in c.split()]).mean(0) for c in captions]
        return torch.stack(rows) @ self.proj

    def denoising_loss(self, vectors, latents, captions, timesteps, noise):
        self.denoise_calls.append((latents.clone(), list(captions), timesteps.clone(), noise.clone()))
        vector = vectors["clip_l"]
        if vector.requires_grad and not getattr(vector, "recorded", False):    # once per parameter
            vector.register_hook(lambda g: self.gradients.append(g.clone()))
            vector.recorded = True
        target = noise.mean(dim=1).flatten(1).mean(1, keepdim=True) + latents.flatten(1).mean(1, keepdim=True)
        return ((self.predict(vectors, captions) - target) ** 2).mean()


def latents_of(n):
    """Exemplar i's latent is filled with i: the recorded latents say which exemplar was drawn."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 4, 2, 2).clone()


def reference_update_gradient(backend, config, start):
    """The paper's accumulated gradient of the first recorded update: each micro-batch's
    denoising loss + steering_weight x its steering loss (its own positives and caption
    words, at the configured temperature), divided by grad_accum and backpropagated in turn."""
    latents, captions, t, noise = backend.denoise_calls[0]
    v = {"clip_l": start.clone().requires_grad_(True)}
    vocabulary = steering.SteeringVocabulary(backend.tokenize, placeholder_ids=[backend.words["<x>"]])
    b, steer_values = config.batch_size, []
    for i in range(config.grad_accum):
        part = slice(i * b, (i + 1) * b)
        denoise = ((backend.predict(v, captions[part])
                    - (noise[part].mean(dim=1).flatten(1).mean(1, keepdim=True)
                       + latents[part].flatten(1).mean(1, keepdim=True))) ** 2).mean()
        steer = steering.steering_loss(
            v["clip_l"], backend.table[vocabulary.positive_ids(backend.positive_words[i])],
            backend.table[vocabulary.negative_ids([backend.tokenize(c) for c in captions[part]])], config.temperature)
        steer_values.append(steer.item() if not steer.requires_grad else steer.detach().item())
        ((denoise + config.steering_weight * steer) / config.grad_accum).backward()
    return v["clip_l"].grad, sum(steer_values) / len(steer_values)


@pytest.mark.parametrize("temperature,steering_weight", [(0.07, 0.01), (0.5, 1.0)])
def test_one_update_is_the_papers_accumulated_gradient(temperature, steering_weight):
    """The loop sends all micro-batches of an update through the backend at once; the
    gradient it backpropagates equals the paper's accumulated one on the same draws, with
    the configured temperature and steering weight, and the recorded losses agree."""
    backend = LinearBackend()
    config = trainer.TrainConfig(steps=1, batch_size=2, grad_accum=3, seed=9, temperature=temperature,
                                 steering_weight=steering_weight)
    result = trainer.train(backend, latents_of(3), TEMPLATES, config)
    expected, steer = reference_update_gradient(backend, config, backend.initial_vectors("and")["clip_l"])
    assert len(backend.gradients) == 1 and expected.norm() > 0
    torch.testing.assert_close(backend.gradients[0], expected, rtol=1e-5, atol=1e-7)
    record = result.history[0]
    assert record["steer"] == pytest.approx(steer, rel=1e-5)
    assert record["loss"] == pytest.approx(record["denoise"] + steering_weight * record["steer"], rel=1e-6)


def test_the_first_update_is_an_adamw_step_with_the_scaled_lr_and_weight_decay():
    """AdamW's first step: v - lr*wd*v - lr * g / (|g| + eps), lr = base_lr x batch x accumulation."""
    backend = LinearBackend()
    config = trainer.TrainConfig(steps=1, batch_size=2, grad_accum=2, base_lr=1e-3, weight_decay=0.3, seed=2)
    start = backend.initial_vectors("and")["clip_l"]
    result = trainer.train(backend, latents_of(3), TEMPLATES, config)
    g, lr = backend.gradients[0], 1e-3 * 2 * 2
    expected = start * (1 - lr * 0.3) - lr * g / (g.abs() + config.adam_eps)
    torch.testing.assert_close(result.vectors["clip_l"], expected, rtol=1e-5, atol=1e-7)
    unscaled = trainer.train(LinearBackend(), latents_of(3), TEMPLATES,
                             trainer.TrainConfig(steps=1, batch_size=2, grad_accum=2, base_lr=1e-3, scale_lr=False,
                                                 weight_decay=0.3, seed=2))
    torch.testing.assert_close(unscaled.vectors["clip_l"],
                               start * (1 - 1e-3 * 0.3) - 1e-3 * g / (g.abs() + config.adam_eps), rtol=1e-5, atol=1e-7)


def test_trainer_updates_only_the_relation_vector_and_is_deterministic():
    """Even a backend that hands out a view into a trainable table as the init vector and
    undetached table rows for the steering loss gets its table back untouched: only the
    relation vector is a parameter of the optimizer."""
    class Careless(LinearBackend):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(self.table)

        def initial_vectors(self, word):
            return {"clip_l": self.table[self.words[word]]}       # a view, not a copy

    backend = Careless()
    table_before = backend.table.detach().clone()
    cfg = trainer.TrainConfig(steps=20, batch_size=2, grad_accum=2, seed=5)
    r1 = trainer.train(backend, latents_of(3), TEMPLATES, cfg)
    r2 = trainer.train(Careless(), latents_of(3), TEMPLATES, cfg)
    assert torch.equal(backend.table.detach(), table_before)
    assert not torch.equal(r1.vectors["clip_l"], table_before[backend.words["and"]])
    assert torch.equal(r1.vectors["clip_l"], r2.vectors["clip_l"])            # same seed, same result
    assert [h["loss"] for h in r1.history] == [h["loss"] for h in r2.history]
    r3 = trainer.train(Careless(), latents_of(3), TEMPLATES, trainer.TrainConfig(steps=20, batch_size=2, grad_accum=2, seed=6))
    assert not torch.equal(r1.vectors["clip_l"], r3.vectors["clip_l"])


def test_each_update_draws_every_exemplar_equally_often_with_its_own_templates():
    """An update is grad_accum micro-batches of batch_size exemplars, in one denoising call;
    the exemplars come in fresh random permutations (each equally often), each caption is
    one of its own exemplar's templates with the stand-in in the slot, and every sample
    gets num_positives distinct basis prepositions."""
    backend = LinearBackend()
    config = trainer.TrainConfig(steps=5, batch_size=2, grad_accum=3, num_positives=3, seed=1)
    trainer.train(backend, latents_of(3), TEMPLATES, config)
    assert len(backend.denoise_calls) == 5
    drawn = []
    for latents, captions, t, noise in backend.denoise_calls:
        assert latents.shape[0] == len(captions) == t.shape[0] == noise.shape[0] == 6
        ids = [int(x) for x in latents[:, 0, 0, 0]]
        drawn += ids
        for i, caption in zip(ids, captions):
            assert caption in [words.fill(tmpl, "<x>") for tmpl in TEMPLATES[i]]
    assert [drawn.count(i) for i in range(3)] == [10, 10, 10]
    assert all(sorted(drawn[k:k + 3]) == [0, 1, 2] for k in range(0, 30, 3))     # one permutation per epoch
    assert len(backend.positive_words) == 5 * 3
    for per_sample in backend.positive_words:
        assert len(per_sample) == 2 and all(len(set(ws)) == 3 and set(ws) <= set(words.relation_words())
                                            for ws in per_sample)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_timesteps_follow_the_configured_focal_alpha(alpha):
    backend = LinearBackend()
    trainer.train(backend, latents_of(2), [["cat {} dog"]] * 2,
                  trainer.TrainConfig(steps=400, batch_size=2, grad_accum=1, focal_alpha=alpha))
    t = torch.cat([call[2] for call in backend.denoise_calls]).double()
    expected = float((timesteps.focal_probabilities(alpha) * torch.arange(1000, dtype=torch.float64)).sum())
    assert abs(expected - 600.9) > 95                           # far from the default's mean
    assert t.mean().item() == pytest.approx(expected, abs=35)    # 800 draws: std of the mean <= 10


def test_default_timesteps_are_focal():
    backend = LinearBackend()
    trainer.train(backend, latents_of(2), [["cat {} dog"]] * 2,
                  trainer.TrainConfig(steps=500, batch_size=2, grad_accum=1))
    t = torch.cat([call[2] for call in backend.denoise_calls]).double()
    assert t.mean().item() == pytest.approx(600.9, abs=25)     # 1000 draws, std of the mean ~8


def test_trainer_uses_paper_defaults_and_scaled_lr():
    cfg = trainer.TrainConfig()
    assert (cfg.steps, cfg.batch_size, cfg.grad_accum, cfg.init_word, cfg.seed) == (3000, 2, 4, "and", 2023)
    assert cfg.lr == pytest.approx(2e-3)
    assert (cfg.weight_decay, cfg.steering_weight, cfg.num_positives, cfg.temperature, cfg.focal_alpha) == \
        (1e-2, 0.01, 4, 0.07, 0.5)
    assert trainer.TrainConfig(scale_lr=False).lr == pytest.approx(2.5e-4)
    assert set(cfg.as_dict()) == {f for f in trainer.TrainConfig.__dataclass_fields__} | {"lr"}


def test_trainer_callback_sees_every_update_and_can_stop():
    seen = []
    result = trainer.train(LinearBackend(), latents_of(2), [["cat {} dog"]] * 2,
                           trainer.TrainConfig(steps=50, grad_accum=1),
                           callback=lambda step, total, rec, vectors: seen.append((step, total)) or step == 7)
    assert seen == [(s, 50) for s in range(1, 8)]
    assert result.stopped_early and result.steps_done == 7


@pytest.mark.parametrize("field,value,message", [
    ("steps", 0, "steps must be at least 1"), ("batch_size", 0, "batch_size"), ("num_positives", 0, "num_positives"),
    ("focal_alpha", 1.5, "focal alpha"), ("base_lr", 0.0, "learning rate"), ("init_word", " ", "init word")])
def test_trainer_rejects_bad_settings(field, value, message):
    with pytest.raises(errors.ConfigError, match=message):
        trainer.TrainConfig(**{field: value}).check()
    with pytest.raises(errors.ConfigError, match=message):          # the loop checks too, before drawing
        trainer.train(LinearBackend(), latents_of(2), [["cat {} dog"]] * 2, trainer.TrainConfig(**{field: value}))


def test_continue_from_a_saved_relation_starts_from_its_vector():
    start = {"clip_l": torch.full((16,), 0.25)}
    seen = []

    class Spy(LinearBackend):
        def denoising_loss(self, vectors, *a):
            seen.append(vectors["clip_l"].detach().clone())
            return super().denoising_loss(vectors, *a)
    trainer.train(Spy(), latents_of(2), [["cat {} dog"]] * 2, trainer.TrainConfig(steps=1, grad_accum=1),
                  start_vectors=start)
    assert torch.equal(seen[0], start["clip_l"]) and torch.equal(start["clip_l"], torch.full((16,), 0.25))
