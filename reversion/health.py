"""Is this update sane? The checks the training loop runs on every update, so that a run
that goes wrong stops at the update where it did, with a message that says why, instead of
running on and writing a broken relation (or a NaN checkpoint) at the end.

- Before the optimizer step: the loss parts (denoise, steer) and the vector's gradient are
  finite. A NaN/Inf here would poison the vector and AdamW's moments.
- After the step: the vector is finite, within what a relation file may hold
  (relation_file.MAX_ABS_VALUE), and its norm has not run away (more than
  DIVERGENCE_FACTOR x its starting norm: a learning rate far too high).

Either failure raises `TrainingDiverged` (`.step`: the update that went wrong); the loop
first puts back the last good vector and optimizer state, so the checkpoint it keeps is
the one before the bad update, and nothing non-finite is ever written.
"""
from __future__ import annotations

import math

import torch

from .errors import TrainingDiverged
from .relation_file import MAX_ABS_VALUE

# A relation vector whose norm grows past 50x its start has left the region of token
# embeddings far behind (CLIP-L rows: norm ~0.4, about 0.015 per element; 50x is 0.7 per
# element), so no healthy run is stopped, while a runaway one (a learning rate far too high
# grows it by orders of magnitude in a few updates) is stopped within an update or two. At
# the paper's settings <R> moves by far less: on the toy model, 300 updates of "above",
# "left of" and "inside" took its norm to at most 1.05x its start ("and", 11.6) (measured
# once with a throwaway script: training.train_relation, TrainConfig(steps=300), 8 toy
# exemplars, scene_seed 0; no project command reproduces it).
DIVERGENCE_FACTOR = 50.0


class UpdateHealth:
    """The checks for one run: `losses(...)` before each optimizer step, `vectors(...)`
    after it. `vectors`: where the run began; `config`: its TrainConfig (steps and learning
    rate in messages)."""

    def __init__(self, vectors: dict[str, torch.Tensor], config):
        self.config = config
        self.start_norms = {k: float(v.detach().float().norm()) for k, v in vectors.items()}

    def losses(self, step: int, totals: dict, vectors: dict[str, torch.Tensor]) -> None:
        """Update `step`'s loss parts and gradient are finite, or TrainingDiverged."""
        bad = [k for k in ("denoise", "steer", "swap", "loss") if k in totals and not math.isfinite(totals[k])]
        # one read for all encoders (tolist: no per-value sync; the loss figures are read already)
        keys = [k for k, v in vectors.items() if v.grad is not None]
        finite = torch.stack([torch.isfinite(vectors[k].grad).all() for k in keys]).tolist() if keys else []
        grads = [k for k, ok in zip(keys, finite) if not ok]
        if not bad and not grads:
            return
        what = (f"the loss became {_value(totals[bad[0]])} ({_parts(totals)})" if bad
                else f"the gradient of the vector [{', '.join(grads)}] became NaN/Inf ({_parts(totals)})")
        if bad and "denoise" not in bad and "swap" not in bad:
            cause = ("the steering loss: check temperature (now {t:g}) and steering_weight (now {w:g})"
                     .format(t=self.config.temperature, w=self.config.steering_weight))
        else:
            cause = ("16-bit overflow in the model (fp16 weights or compute: use bf16 or fp32, e.g. "
                     "--bf16-unet) or " + self._lr_cause())
        raise self._stop(step, what, cause)

    def vectors(self, step: int, vectors: dict[str, torch.Tensor]) -> None:
        """After update `step`'s optimizer step: finite, in range, not running away."""
        figures = torch.stack([torch.stack([torch.isfinite(v).all().float(), v.norm(), v.abs().max()])
                               for v in (x.detach().float() for x in vectors.values())]).tolist()   # one read
        for k, (finite, norm, largest) in zip(vectors, figures):
            if not finite or not math.isfinite(norm):
                raise self._stop(step, f"the vector [{k}] became NaN/Inf", self._lr_cause())
            start = self.start_norms[k]
            if largest > MAX_ABS_VALUE or norm > DIVERGENCE_FACTOR * start:
                what = (f"the vector [{k}] is running away: norm {norm:.3g}, {norm / max(start, 1e-12):.0f}x its "
                        f"start ({start:.3g}), largest value {largest:.3g} (token embeddings stay within about +-1)")
                raise self._stop(step, what, self._lr_cause())

    def _lr_cause(self) -> str:
        c = self.config
        lr = (f"{c.lr:g} = {c.base_lr:g} x batch {c.batch_size} x accumulation {c.grad_accum} with scale_lr"
              if c.scale_lr else f"{c.lr:g}")
        return f"a learning rate too high (now {lr}; the paper's is 2e-3 in all): lower it"

    def _stop(self, step: int, what: str, cause: str) -> TrainingDiverged:
        error = TrainingDiverged(f"training stopped at update {step} of {self.config.steps}: {what}. Likely cause: {cause}")
        error.step = step
        return error


def _value(x: float) -> str:
    return "NaN" if math.isnan(x) else ("Inf" if x > 0 else "-Inf")


def _parts(totals: dict) -> str:
    return ", ".join(f"{k} {totals[k]:.4g}" for k in ("denoise", "steer", "swap") if k in totals)
