"""The tint confound: an attribute no object word carries (unfinished; NOTES.md).

Exemplars that share something their captions never say test the paper's claim that the
steering loss keeps `<R>` from soaking it up. The colours of the confounded exemplars bind
to the object words in the toy world, so this experiment tries a tint of the sky (the upper
half of the background): a tint model is trained with skies of grey, pink or mint, the tint
named in some captions ("a red circle pink above a blue square") and unsaid in the others;
`tinted_exemplars` are the diverse exemplars under a pink sky no caption names, and the leak
is the share of images drawn on pink. No toy model has yet learned to follow the tint word,
so the leak is unmeasured.

Why a sky and not the whole background: the toy UNet normalises each of its 32 top-level
channels over the image (GroupNorm with 32 groups), which erases a uniform shift, so a tint
of the whole background never followed its word; a top/bottom contrast survives.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from comfyui_reversion.reversion.exemplars import Exemplars
from comfyui_reversion.toyworld import evaluate, judge, scenes

BACKGROUNDS = {"grey": scenes.BACKGROUND, "pink": (0.98, 0.55, 0.78), "mint": (0.55, 0.96, 0.78)}
TINTED_ROWS = scenes.SIZE // 2          # the tint covers rows 0..15
BACKGROUND_WEIGHTS = {"grey": 0.5, "pink": 0.25, "mint": 0.25}     # how often each is drawn
BACKGROUND_SAID = 0.5                   # share of (non-empty) captions that name the tint
SKY_CONTRAST = 0.12                     # sky and ground further apart: read each against its own


def render(scene: scenes.Scene, background: str = "grey") -> np.ndarray:
    """`scenes.render` under a sky tinted `background`."""
    img = scenes.render(scene)
    sky = np.zeros((scenes.SIZE, scenes.SIZE), bool)
    sky[:TINTED_ROWS] = True
    bare = sky & ~np.any([scenes.obj_mask(o) for o in (scene.a, scene.b)], axis=0)
    img[bare] = BACKGROUNDS[background]
    return img


def with_background(caption: str, background: str) -> str:
    """The caption with its scene's tint said right after the first object's shape, just
    before the relation word: "a red circle pink above a blue square".

    Where the word goes matters to the toy text encoder, which is causal: said last
    (", pink background") the tint reached only positions the UNet had learned to ignore;
    said first ("pink a red circle ...") its identity faded to 0.01-0.02 by the third token.
    Next to the relation word, the position the UNet reads most, is the latest try."""
    words = caption.split()
    first_shape = next(i for i, w in enumerate(words) if w in scenes.SHAPES)
    return " ".join(words[:first_shape + 1] + [background] + words[first_shape + 1:])


def training_example(rng: np.random.Generator, backgrounds: dict[str, float] = BACKGROUND_WEIGHTS,
                     background_said: float = BACKGROUND_SAID, **mix) -> tuple[scenes.Scene, str, str]:
    """(scene, tint, caption): `scenes.training_example(rng, **mix)`, then a tint drawn by
    `backgrounds` (name -> weight) and named in a `background_said` share of captions."""
    scene, caption = scenes.training_example(rng, **mix)
    names = list(backgrounds)
    weights = np.array([backgrounds[n] for n in names], np.float64)
    background = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    if rng.random() < background_said:
        caption = with_background(caption, background)
    return scene, background, caption


def all_training_captions(backgrounds) -> list[str]:
    """Every caption of the tint mix: the plain ones, and each with each tint said."""
    plain = scenes.all_training_captions()
    return plain + [with_background(c, bg) for bg in backgrounds for c in plain]


def tinted_exemplars(relation: str, count: int = 8, seed: int = 0, background: str = "pink") -> Exemplars:
    """The diverse exemplars of `toyworld.exemplars(relation, count, seed)` (the same scenes),
    all under a sky tinted `background` their captions never name."""
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; expected one of {tuple(BACKGROUNDS)}")
    chosen = scenes.exemplar_scenes(relation, count, seed)
    images = np.stack([scenes.upscale(render(s, background)) for s in chosen])
    templates = [[scenes.template(s.a.name, s.b.name, articles) for articles in (True, False)] for s in chosen]
    return Exemplars(torch.from_numpy(images), templates, [f"{s.a.name} / {s.b.name}" for s in chosen])


# ------------------------------------------------------------------------------ reading

def sky_and_ground(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median colours of the border pixels in the upper half (rows < TINTED_ROWS) and in the
    lower half: a tinted sky and the grey ground, or the same colour twice."""
    h = TINTED_ROWS
    sky = np.concatenate([grid[0], grid[:h, 0], grid[:h, -1]])
    ground = np.concatenate([grid[-1], grid[h:, 0], grid[h:, -1]])
    return np.median(sky, axis=0), np.median(ground, axis=0)


def read_background(image: np.ndarray) -> str:
    """Which of BACKGROUNDS tints the image's sky: the nearest to the sky's border colour
    (the tints are 0.3-0.4 apart from grey in one channel, a generator's noise far less)."""
    sky, _ground = sky_and_ground(judge.to_grid(image))
    return min(BACKGROUNDS, key=lambda n: float(np.sum((sky - np.asarray(BACKGROUNDS[n])) ** 2)))


def background_of(image: np.ndarray) -> np.ndarray | None:
    """What the judge should read `image` against: each half's own background where sky and
    ground differ by more than SKY_CONTRAST (a tinted sky), else None (the judge's own)."""
    sky, ground = sky_and_ground(judge.to_grid(image))
    if np.abs(sky - ground).max() < SKY_CONTRAST:
        return None
    return np.where((np.arange(scenes.SIZE) < TINTED_ROWS)[:, None], sky, ground)[:, None]   # H, 1, 3


def judge_tinted(image: np.ndarray, name_a: str, relation_word: str, name_b: str) -> judge.Verdict:
    """`judge.judge` for an image that may have a tinted sky."""
    return judge.judge(image, name_a, relation_word, name_b, background=background_of(np.asarray(image)))


def score(images, prompts: list[evaluate.Prompt]) -> dict:
    """`evaluate.score`, tinted skies read against their own background."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    return evaluate.summarise([judge_tinted(np.asarray(img), p.a, p.relation, p.b)
                               for img, p in zip(images, prompts)], prompts)


def score_tinted(images, prompts: list[evaluate.Prompt], background: str) -> dict:
    """`score`, plus the leak rate: the share of images drawn on `background` (against its
    share with the true word, the model's own rate when no caption names a tint), and how
    often each background was read."""
    report = score(images, prompts)
    read = [read_background(np.asarray(img)) for img in images]
    return {**report, "leak_rate": float(np.mean([r == background for r in read])),
            "backgrounds_read": dict(Counter(read).most_common())}
