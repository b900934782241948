"""Relation-focal timestep sampling (reversion/timesteps.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_reversion.reversion import timesteps


def test_focal_probabilities_match_the_formula():
    p = timesteps.focal_probabilities(0.5)
    t = torch.arange(1000, dtype=torch.float64)
    assert p.sum().item() == pytest.approx(1.0)
    assert (p[999] / p[0]).item() == pytest.approx(3.0, rel=1e-5)
    assert (p * t).sum().item() == pytest.approx(600.9, abs=0.1)
    assert torch.all(p[1:] >= p[:-1])                  # noisier steps are never less likely
    assert torch.allclose(timesteps.focal_probabilities(0.0), torch.full((1000,), 1e-3, dtype=torch.float64))
    with pytest.raises(ValueError, match="focal alpha"):
        timesteps.focal_probabilities(1.5)


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
