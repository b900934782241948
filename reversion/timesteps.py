"""Relation-focal importance sampling of diffusion timesteps (ReVersion, section 3.3).

p(t) is proportional to 1 - alpha * cos(pi * t / T) for t = 0..T-1, where t = 0 is the
least noisy step: high-noise steps, which decide layout and relations, are drawn more
often (p(999)/p(0) = 3 for alpha = 0.5; mean t ~ 601). alpha = 0 is uniform. Plain biased
sampling: the loss is *not* re-weighted by 1/p(t).
"""
from __future__ import annotations

import math

import torch

NUM_TIMESTEPS = 1000
ALPHA = 0.5


def focal_probabilities(alpha: float = ALPHA, num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"focal alpha must be in [0, 1], got {alpha}")
    t = torch.arange(num_timesteps, dtype=torch.float64)
    w = 1.0 - alpha * torch.cos(math.pi * t / num_timesteps)
    return w / w.sum()


class FocalTimestepSampler:
    """Independent categorical draws of timestep indices, one per batch item."""

    def __init__(self, alpha: float = ALPHA, num_timesteps: int = NUM_TIMESTEPS,
                 generator: torch.Generator | None = None):
        self.probabilities = focal_probabilities(alpha, num_timesteps)
        self.generator = generator

    def sample(self, n: int) -> torch.Tensor:
        return torch.multinomial(self.probabilities, n, replacement=True, generator=self.generator)
