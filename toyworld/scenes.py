"""Procedural two-object scenes whose relation is decided by geometry alone.

A scene is two objects (shape x colour) on a plain background, drawn at 32 x 32 pixels
with hard edges. Each scene is generated *for* a relation ("a red circle above a blue
square"), so the caption is true by construction, and `judge.py` reads the same relation
back out of the pixels. Everything is deterministic given a `numpy.random.Generator`.

Shown at 256 x 256 (nearest-neighbour x8) so that the toy VAE's 8x downscale maps one
scene pixel onto one latent pixel.
"""
from __future__ import annotations

from dataclasses import dataclass
import functools
import itertools

import numpy as np

from ..reversion.words import fill

SIZE = 32                 # scene resolution in pixels (= the toy model's latent resolution)
DISPLAY_SCALE = 8         # IMAGE outputs are SIZE * DISPLAY_SCALE pixels wide
SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.10, 0.68, 0.20),
    "blue": (0.15, 0.25, 0.92),
    "yellow": (0.96, 0.82, 0.08),
}
BACKGROUND = (0.90, 0.90, 0.90)
# The relation of the *first* object to the second one, in caption order.
RELATIONS = ("above", "below", "left of", "right of", "inside", "on top of")

# Caption words per relation. Most are basis prepositions of ReVersion's steering loss, so
# the toy text encoder learns a "preposition region" for the steering loss to pull toward.
SYNONYMS = {
    "above": ("above", "over"),
    "below": ("below", "under", "beneath", "underneath"),
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "inside": ("inside", "in", "within", "into"),
    "on top of": ("on top of", "on", "atop", "upon", "onto"),
}
# Side by side in either order ("left of" or "right of" geometry): true whichever side,
# so these words say "beside" without a direction and never contradict a scene.
SIDE_BY_SIDE = ("beside", "next to", "near", "by", "alongside")
# Scenes for the word "and": two objects anywhere, no stated relation. "and" is
# ReVersion's default init word, so it gets a meaning here too ("some arrangement").
UNRELATED = "and"


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    top: int
    left: int
    size: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    a: Obj            # first object in the caption
    b: Obj            # second object
    relation: str     # one of RELATIONS, or UNRELATED

    def caption(self, word: str | None = None, articles: bool = True) -> str:
        return fill(template(self.a.name, self.b.name, articles), word or self.relation)


def template(name_a: str, name_b: str, articles: bool = True) -> str:
    return f"a {name_a} {{}} a {name_b}" if articles else f"{name_a} {{}} {name_b}"


OBJECT_NAMES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)


@functools.lru_cache(maxsize=None)
def object_pairs() -> tuple[tuple[str, str], ...]:
    """Ordered pairs of object names with different colours (colour tells them apart)."""
    return tuple((a, b) for a, b in itertools.permutations(OBJECT_NAMES, 2)
            if a.split()[0] != b.split()[0])


@functools.lru_cache(maxsize=None)
def held_out_pairs(relation: str) -> frozenset[tuple[str, str]]:
    """Object pairs never shown *with this relation* while the toy model trains.

    A fixed quarter of the pairs per relation, different for every relation, so each
    held-out pair is still seen with other relations: generalisation, not new words.
    """
    pairs = object_pairs()
    rng = np.random.default_rng(1000 + RELATIONS.index(relation))
    picked = rng.permutation(len(pairs))[: len(pairs) // 4]
    return frozenset(pairs[i] for i in picked)


@functools.lru_cache(maxsize=None)
def training_pairs(relation: str) -> tuple[tuple[str, str], ...]:
    held = held_out_pairs(relation)
    return tuple(p for p in object_pairs() if p not in held)


# ---------------------------------------------------------------------------- drawing

def shape_mask(shape: str, top: int, left: int, size: int, canvas: int = SIZE, width: int | None = None) -> np.ndarray:
    """Boolean mask of one shape whose bounding box is `size` pixels square (or `size` high
    and `width` wide: the judge fits stretched shapes to what a generator drew)."""
    height, width = size, size if width is None else width
    ys = np.arange(canvas)[:, None] + 0.5
    xs = np.arange(canvas)[None, :] + 0.5
    cy, cx = top + height / 2, left + width / 2
    if shape == "square":
        m = (ys >= top) & (ys < top + height) & (xs >= left) & (xs < left + width)
    elif shape == "circle":
        m = ((ys - cy) / (height / 2)) ** 2 + ((xs - cx) / (width / 2)) ** 2 <= 1
    elif shape == "triangle":   # apex up, base at the bottom
        rel = (ys - top) / height
        m = (rel >= 0) & (rel < 1) & (np.abs(xs - cx) <= rel * width / 2 + 0.25)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return np.broadcast_to(m, (canvas, canvas)).copy()


def obj_mask(o: Obj) -> np.ndarray:
    return shape_mask(o.shape, o.top, o.left, o.size)


def box_mask(o: Obj, grow: int = 1) -> np.ndarray:
    """The object's bounding box grown by `grow` px, clipped to the canvas: where its shape
    is decided (the corners that tell a small square from a disc, and the ring around them)."""
    m = np.zeros((SIZE, SIZE), bool)
    m[max(0, o.top - grow):o.top + o.size + grow, max(0, o.left - grow):o.left + o.size + grow] = True
    return m


def render(scene: Scene) -> np.ndarray:
    """HxWx3 float32 in [0, 1]. The second object is drawn first (it is the container
    for "inside"), then the first on top of it."""
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[:] = BACKGROUND
    for o in (scene.b, scene.a):
        img[obj_mask(o)] = COLOURS[o.colour]
    return img


def upscale(img: np.ndarray, factor: int = DISPLAY_SCALE) -> np.ndarray:
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def degrade(img: np.ndarray, rng: np.random.Generator, noise: float = 0.0, blur: int = 0,
            tint=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A rendered scene made to look like a small diffusion model's output: upscaled, soft
    edges (box blur of `blur` px), a tinted background and Gaussian noise. For judge checks."""
    big = upscale(img).astype(np.float32)
    if blur:
        k = 2 * blur + 1
        pad = np.pad(big, ((blur, blur), (blur, blur), (0, 0)), mode="edge")
        big = sum(pad[dy:dy + big.shape[0], dx:dx + big.shape[1]] for dy in range(k) for dx in range(k)) / k ** 2
    big = big + np.asarray(tint, np.float32) + rng.normal(0, noise, big.shape).astype(np.float32)
    return np.clip(big, 0, 1)


# The degradations the judge must survive (tests/toyworld/test_judge.py, lab/judge/bench_judge.py)
DEGRADATIONS = {
    "noise": {"noise": 0.08},
    "soft edges": {"blur": 6},
    "tinted background": {"tint": (0.06, -0.04, 0.07)},
    "all three": {"noise": 0.05, "blur": 4, "tint": (-0.05, 0.03, 0.05)},
}


# -------------------------------------------------------------------------- placement

# Geometry (the calibration run's, lab/toy_model/NOTES.md): object sizes 9/11/13 px (odd, so
# circles and triangles are symmetric about a centre pixel); gaps 3-7 px; "inside": the
# container 19-23 px, the inner object 7-9 px near the container's centre (a triangle's:
# its incircle) with at least 1 px of the container all round; "on top of": touching.
OBJECT_SIZES = (9, 11, 13)
GAP = (3, 7)
CONTAINER_SIZE = (19, 23)
INNER_SIZE = (7, 9)

def _in_canvas(o: Obj, margin: int = 1) -> bool:
    return o.top >= margin and o.left >= margin and o.top + o.size <= SIZE - margin \
        and o.left + o.size <= SIZE - margin


def touching(ma: np.ndarray, mb: np.ndarray) -> bool:
    """True when some pixel of `ma` is 8-adjacent to a pixel of `mb`."""
    grown = ma.copy()
    grown[1:] |= ma[:-1]
    grown[:-1] |= ma[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    return bool((grown & mb).any())


def _erode(m: np.ndarray) -> np.ndarray:
    e = m.copy()
    e[1:] &= m[:-1]
    e[:-1] &= m[1:]
    e[:, 1:] &= m[:, :-1]
    e[:, :-1] &= m[:, 1:]
    e[0] = e[-1] = False
    e[:, 0] = e[:, -1] = False
    return e


def _drop_onto(a: Obj, b: Obj) -> Obj | None:
    """Move `a` vertically so that it rests on `b`: touching, not overlapping."""
    ma0 = shape_mask(a.shape, 0, a.left, a.size, canvas=SIZE * 2)[:, :SIZE]
    mb = obj_mask(b)
    shift = None
    for x in range(SIZE):
        rows_b = np.flatnonzero(mb[:, x])
        rows_a = np.flatnonzero(ma0[:, x])
        if len(rows_b) and len(rows_a):
            s = rows_b[0] - 1 - rows_a[-1]     # a's lowest pixel sits just above b's highest
            shift = s if shift is None else min(shift, s)
    if shift is None:
        return None
    return Obj(a.shape, a.colour, int(shift), a.left, a.size)


def _place(rng: np.random.Generator, relation: str, sa: str, ca: str, sb: str, cb: str):
    """One attempt at placing A (shape sa, colour ca) and B for `relation`; None if invalid."""
    r = lambda lo, hi: int(rng.integers(lo, hi + 1))  # noqa: E731 (inclusive range)
    if relation == "inside":
        size_b, size_a = r(*CONTAINER_SIZE), r(*INNER_SIZE)
        b = Obj(sb, cb, r(1, SIZE - 1 - size_b), r(1, SIZE - 1 - size_b), size_b)
        cy, cx = b.top + size_b / 2, b.left + size_b / 2
        if sb == "triangle":            # centre of the incircle (apex up, base at the bottom)
            cy = b.top + size_b - size_b * size_b / (size_b + 2 * np.hypot(size_b, size_b / 2))
        a = Obj(sa, ca, int(round(cy - size_a / 2)) + r(-1, 1), int(round(cx - size_a / 2)) + r(-1, 1), size_a)
        if not (obj_mask(a) <= _erode(obj_mask(b))).all():
            return None
        return a, b
    sizes = OBJECT_SIZES
    size_a, size_b = sizes[int(rng.integers(len(sizes)))], sizes[int(rng.integers(len(sizes)))]
    if relation in ("above", "below", "on top of"):
        upper, lower = (sa, ca, size_a), (sb, cb, size_b)
        if relation == "below":
            upper, lower = lower, upper
        lo = Obj(lower[0], lower[1], r(14, SIZE - 1 - lower[2]), r(1, SIZE - 1 - lower[2]), lower[2])
        cx = lo.left + lo.size / 2 + (r(-2, 2) if relation == "on top of" else r(-3, 3))
        up = Obj(upper[0], upper[1], 0, int(round(cx - upper[2] / 2)), upper[2])
        up = _drop_onto(up, lo)
        if up is None:
            return None
        if relation != "on top of":       # lift it off: a clear gap
            up = Obj(up.shape, up.colour, up.top - r(*GAP), up.left, up.size)
        first, second = (up, lo) if relation != "below" else (lo, up)
        return first, second
    if relation in ("left of", "right of"):
        left_o, right_o = (sa, ca, size_a), (sb, cb, size_b)
        if relation == "right of":
            left_o, right_o = right_o, left_o
        lft = Obj(left_o[0], left_o[1], r(1, SIZE - 1 - left_o[2]), r(1, 10), left_o[2])
        gap = r(*GAP)
        cy = lft.top + lft.size / 2 + r(-3, 3)
        rgt = Obj(right_o[0], right_o[1], int(round(cy - right_o[2] / 2)), lft.left + lft.size + gap, right_o[2])
        return (lft, rgt) if relation == "left of" else (rgt, lft)
    if relation == UNRELATED:
        a = Obj(sa, ca, r(1, SIZE - 1 - size_a), r(1, SIZE - 1 - size_a), size_a)
        b = Obj(sb, cb, r(1, SIZE - 1 - size_b), r(1, SIZE - 1 - size_b), size_b)
        if touching(obj_mask(a), obj_mask(b)):
            return None
        return a, b
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS} or {UNRELATED!r}")


def make_scene(rng: np.random.Generator, relation: str, name_a: str | None = None,
               name_b: str | None = None) -> Scene:
    """A random scene of `relation`; objects random unless named ("red circle")."""
    if name_a is None or name_b is None:
        pairs = object_pairs()
        name_a, name_b = pairs[int(rng.integers(len(pairs)))]
    ca, sa = name_a.split()
    cb, sb = name_b.split()
    if ca == cb:
        raise ValueError(f"objects need different colours: {name_a!r} and {name_b!r}")
    for _ in range(1000):
        placed = _place(rng, relation, sa, ca, sb, cb)
        if placed is not None:
            a, b = placed
            overlap = (obj_mask(a) & obj_mask(b)).any()
            if _in_canvas(a) and _in_canvas(b) and (relation == "inside" or not overlap):
                return Scene(a, b, relation)
    raise RuntimeError(f"could not place {name_a} {relation} {name_b}")  # pragma: no cover


def _pick_word(rng: np.random.Generator, words) -> str:
    """The first (canonical) word half the time, else one of the others: synonyms give the
    text encoder a preposition region without starving the word that prompts use."""
    if len(words) == 1 or rng.random() < 0.5:
        return words[0]
    return words[1 + int(rng.integers(len(words) - 1))]


def random_caption(rng: np.random.Generator, scene: Scene, words=None, colourless: float = 0.0) -> str:
    """A training caption for the toy model: a relation word (canonical or a synonym), with
    or without articles, and with probability `colourless` without colour words
    ("a circle above a square": the colours are left unsaid)."""
    words = words or SYNONYMS.get(scene.relation, (UNRELATED,))
    word = _pick_word(rng, words)
    articles = bool(rng.random() < 0.7)
    if rng.random() < colourless:
        return fill(template(scene.a.shape, scene.b.shape, articles), word)
    return scene.caption(word, articles=articles)


# The training mix: relation scenes (inside and on top of, the finest geometry, drawn 1.5x
# as often as the others), side-by-side scenes captioned with SIDE_BY_SIDE words, scenes
# captioned "and", and 15% of all captions without colour words.
RELATION_WEIGHTS = {"above": 1.0, "below": 1.0, "left of": 1.0, "right of": 1.0, "inside": 1.5, "on top of": 1.5}
UNRELATED_FRACTION = 0.08
SIDE_BY_SIDE_FRACTION = 0.04
COLOURLESS_FRACTION = 0.15


def training_example(rng: np.random.Generator, unrelated_fraction: float = UNRELATED_FRACTION,
                     side_by_side_fraction: float = SIDE_BY_SIDE_FRACTION,
                     colourless: float = COLOURLESS_FRACTION,
                     relation_weights: dict[str, float] | None = None) -> tuple[Scene, str]:
    """One (scene, caption) for training the toy model from scratch; `relation_weights`
    (default RELATION_WEIGHTS) says how often each relation's scenes are drawn.

    A (pair, relation) in `held_out_pairs(relation)` is never drawn (not even captioned
    "beside" or without colours), so the quality gate tests generalisation to unseen
    combinations.
    """
    u = rng.random()
    if u < unrelated_fraction:
        scene = make_scene(rng, UNRELATED)
        return scene, random_caption(rng, scene, (UNRELATED,), colourless)
    if u < unrelated_fraction + side_by_side_fraction:
        relation = ("left of", "right of")[int(rng.integers(2))]
        words = SIDE_BY_SIDE
    else:
        weights = np.array([(relation_weights or RELATION_WEIGHTS)[r] for r in RELATIONS])
        relation = RELATIONS[int(rng.choice(len(RELATIONS), p=weights / weights.sum()))]
        words = SYNONYMS[relation]
    pairs = training_pairs(relation)
    a, b = pairs[int(rng.integers(len(pairs)))]
    scene = make_scene(rng, relation, a, b)
    return scene, random_caption(rng, scene, words, colourless)


def all_training_captions() -> list[str]:
    """Every caption `training_example` can produce (the toy text encoder's vocabulary)."""
    relation_words = [w for syn in SYNONYMS.values() for w in syn] + list(SIDE_BY_SIDE) + [UNRELATED]
    names = list(object_pairs()) + [(a, b) for a in SHAPES for b in SHAPES]
    return [fill(template(a, b, art), w) for w in relation_words for a, b in names for art in (True, False)]


def exemplar_scenes(relation: str, count: int, seed: int) -> list[Scene]:
    """`count` scenes of one relation, each with a different object pair where possible."""
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")
    rng = np.random.default_rng(seed)
    pairs = object_pairs()
    order = rng.permutation(len(pairs))
    return [make_scene(rng, relation, *pairs[order[i % len(pairs)]]) for i in range(count)]


def confounded_scenes(relation: str, count: int, seed: int, colours=("red", "blue")) -> list[Scene]:
    """`count` scenes of one relation whose objects always have the same two colours
    (the first object colours[0], the second colours[1]) while their shapes vary: the
    exemplars of the confounded test, whose captions leave the colours unsaid."""
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")
    rng = np.random.default_rng(seed)
    shape_pairs = list(itertools.permutations(SHAPES, 2))
    order = rng.permutation(len(shape_pairs))
    shapes = [shape_pairs[order[i % len(order)]] for i in range(count)]
    return [make_scene(rng, relation, f"{colours[0]} {a}", f"{colours[1]} {b}") for a, b in shapes]
