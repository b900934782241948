"""A toy relation world: procedural scenes, a judge, exemplar sets (pure numpy/torch)."""
from __future__ import annotations

import numpy as np
import torch

from ..exemplars import Exemplars
from . import scenes


def exemplars(relation: str, count: int = 8, seed: int = 0) -> Exemplars:
    """Rendered exemplars of one relation, at display size (256 px).

    Templates hold "{}" where the relation word would be; the word itself never appears:
    "a red circle {} a blue square" and "red circle {} blue square".
    """
    chosen = scenes.exemplar_scenes(relation, count, seed)
    images = np.stack([scenes.upscale(scenes.render(s)) for s in chosen])
    return Exemplars(torch.from_numpy(images), [[s.template(True), s.template(False)] for s in chosen],
                     [f"{s.a.name} / {s.b.name}" for s in chosen])
