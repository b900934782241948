"""Every update is checked (reversion/health.py): a NaN/Inf loss or gradient, or a vector
that runs away, stops the run at that update with a message naming it, the loss parts and
the likely cause; the checkpoint it keeps is the last good state, never a non-finite one;
NaN settings are refused before anything runs."""
from __future__ import annotations

import math

import pytest
import torch

from comfyui_reversion.reversion import checkpoint, errors, health, trainer
from test_trainer import TEMPLATES, LinearBackend, latents_of


class PoisonedBackend(LinearBackend):
    """LinearBackend whose denoising loss becomes `value` from update `at` on (e.g. a 16-bit
    overflow in the model)."""

    def __init__(self, at: int, value: float = math.nan):
        super().__init__()
        self.at, self.value, self.updates = at, value, 0

    def denoising_loss(self, *args):
        self.updates += 1
        loss = super().denoising_loss(*args)
        return loss * self.value if self.updates >= self.at else loss


class RunawayBackend(LinearBackend):
    """LinearBackend whose loss falls as the vector grows: with a large learning rate AdamW
    walks it out of any sane range (what a diverging run looks like)."""

    def denoising_loss(self, vectors, *args):
        return super().denoising_loss(vectors, *args) - vectors["clip_l"].norm()


def run(backend, cfg, saves):
    keep = checkpoint.Checkpointing(save=lambda state, when: saves.append((state, when)), every=2, fingerprint="fp")
    return trainer.train(backend, latents_of(3), TEMPLATES, cfg, checkpointing=keep)


@pytest.mark.parametrize("value,shown", [(math.nan, "NaN"), (math.inf, "Inf")])
def test_a_non_finite_loss_stops_at_its_update_and_keeps_the_last_finite_state(value, shown):
    cfg = trainer.TrainConfig(steps=8, batch_size=2, grad_accum=1, seed=4)
    saves = []
    with pytest.raises(errors.TrainingDiverged) as stop:
        run(PoisonedBackend(at=4, value=value), cfg, saves)
    message = str(stop.value)
    assert f"training stopped at update 4 of 8: the loss became {shown} (denoise {shown.lower()}, steer " in message
    assert "16-bit overflow" in message and "learning rate too high (now 0.0005 = 0.00025 x batch 2 x accumulation 1 with scale_lr" in message
    assert stop.value.step == 4
    # checkpoints at 2 (on schedule) and 3 (when stopped); both finite, the last is update 3
    assert [(s["step"], when) for s, when in saves] == [(2, checkpoint.PERIODIC), (3, checkpoint.STOPPED)]
    last = saves[-1][0]
    assert all(torch.isfinite(v).all() for v in last["vectors"].values())
    assert all(torch.isfinite(t).all() for st in last["optimizer"]["state"].values() for t in st.values())
    assert "stopped at update 4 of 8" in last["stopped"]
    # the kept state is exactly the uninterrupted run's after 3 updates
    clean = trainer.train(LinearBackend(), latents_of(3), TEMPLATES, trainer.TrainConfig(steps=3, batch_size=2,
                                                                                        grad_accum=1, seed=4))
    assert torch.equal(last["vectors"]["clip_l"], clean.vectors["clip_l"])
    # and it is not offered for resuming with the settings that stopped it
    with pytest.raises(errors.CheckpointError, match="stopped itself .* would stop there again.*'overwrite' on"):
        checkpoint.check_compatible(last, cfg.as_dict(), "fp")


def test_a_runaway_vector_is_stopped_while_it_happens_not_after_the_run():
    """lr 1.0 x 4 without weight decay (inside the widget limits): the vector leaves the
    token-embedding range within a few updates; the run stops there, the vector put back."""
    cfg = trainer.TrainConfig(steps=50, batch_size=2, grad_accum=2, base_lr=1.0, scale_lr=True, weight_decay=0.0,
                              seed=4)
    saves, backend = [], RunawayBackend()
    start = backend.initial_vectors("and")["clip_l"]
    with pytest.raises(errors.TrainingDiverged, match=r"the vector \[clip_l\] is running away: norm .*x its start"
                                                      r".*learning rate too high \(now 4 = 1 x batch 2 x accumulation 2 with scale_lr"):
        run(backend, cfg, saves)
    state = saves[-1][0]
    assert 1 <= state["step"] < 30 and saves[-1][1] == checkpoint.STOPPED
    assert float(state["vectors"]["clip_l"].norm()) <= health.DIVERGENCE_FACTOR * float(start.norm())


def test_an_ordinary_run_is_never_stopped():
    """The paper's settings on the linear backend, 200 updates: no false alarm."""
    result = trainer.train(LinearBackend(), latents_of(3), TEMPLATES,
                           trainer.TrainConfig(steps=200, batch_size=2, grad_accum=2, seed=1))
    assert result.steps_done == 200


@pytest.mark.parametrize("field", ["base_lr", "weight_decay", "steering_weight", "temperature", "focal_alpha"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_settings_are_refused_before_anything_runs(field, value):
    backend = LinearBackend()
    with pytest.raises(errors.ConfigError, match=f"{field} must be a finite number"):
        trainer.train(backend, latents_of(3), TEMPLATES, trainer.TrainConfig(steps=2, **{field: value}))
    assert backend.denoise_calls == []
