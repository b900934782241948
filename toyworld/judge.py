"""Read the objects and their relation back out of a toy-world image.

Exact on rendered scenes and tolerant of what a small diffusion model draws (noise, soft
edges, a tinted background, a notched shape):

1. shrink the image to the 32 x 32 scene grid (area average);
2. background = median colour of the border; a pixel belongs to a palette colour when at
   least half of its offset from the background points that colour's way (blur-proof:
   a soft edge crosses 50% where the hard edge was; tint-proof: offsets cancel a tint);
3. per colour the largest 4-connected component is an object candidate, and the two
   largest candidates are the objects; every other component of at least MIN_PIXELS that
   is not a piece of its colour's object (outside that object's convex hull) is an extra
   object. When judging a prompt, the two objects that fit it best play A and B, and any
   other object makes the entities wrong ("a red triangle and a blue circle" drawn as two
   red triangles and a blue circle, or with a third object);
4. shape = the ideal shape (circle, square, triangle) whose mask best matches the object's
   convex hull (all toy shapes are convex, so the hull also closes the hole that an inner
   object leaves in its container);
5. relation of object A to object B from containment, contact and centroid offset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scenes import BACKGROUND, COLOURS, RELATIONS, SHAPES, SIZE, shape_mask, touching

MIN_PIXELS = 6            # smaller colour blobs are noise
MAX_RESIDUAL = 0.35       # how far off a palette colour's line a pixel may be


@dataclass
class Detected:
    colour: str
    shape: str
    mask: np.ndarray        # pixels of this colour (32 x 32 bool)
    hull: np.ndarray        # convex hull of the mask (the whole shape, holes closed)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def centroid(self) -> tuple[float, float]:
        ys, xs = np.nonzero(self.hull)
        return float(ys.mean()), float(xs.mean())


def to_grid(image: np.ndarray) -> np.ndarray:
    """HxWx3 in [0, 1] (H, W multiples of 32) -> 32x32x3 by area averaging."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
    img = img[..., :3]
    h, w = img.shape[:2]
    if h % SIZE or w % SIZE:
        raise ValueError(f"image side must be a multiple of {SIZE}, got {h}x{w}")
    return img.reshape(SIZE, h // SIZE, SIZE, w // SIZE, 3).mean(axis=(1, 3))


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, largest first."""
    seen = np.zeros_like(mask)
    comps = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        comp = np.zeros_like(mask)
        stack = [(y, x)]
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            comp[cy, cx] = True
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        comps.append(comp)
    comps.sort(key=lambda c: -int(c.sum()))
    return comps


def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """Pixels whose centre lies in the convex hull of the mask's pixel centres.

    For a rendered (digitally convex) shape this is the mask itself; it closes holes
    and notches in drawn ones.
    """
    ys, xs = np.nonzero(mask)
    if len(ys) < 3:
        return mask.copy()
    pts = sorted(set(zip(xs.tolist(), ys.tolist())))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:                       # Andrew's monotone chain
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    if len(hull) < 3:                   # a line of pixels
        return mask.copy()
    gy, gx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    inside = np.ones(mask.shape, bool)
    for i in range(len(hull)):
        (x0, y0), (x1, y1) = hull[i], hull[(i + 1) % len(hull)]
        inside &= (x1 - x0) * (gy - y0) - (y1 - y0) * (gx - x0) >= 0
    return inside | mask


def classify_shape(hull: np.ndarray) -> str:
    """Best-matching ideal shape (by IoU) fitted to the hull's bounding box.

    The ideal shapes are stretched to the box's height and width: a generated square is
    often a little taller than wide, and against a square fitted to its longer side it
    matched a circle as well as a square (a hand check caught the judge calling such
    squares circles). Rendered shapes have square boxes, where nothing changes."""
    ys, xs = np.nonzero(hull)
    top, left = int(ys.min()), int(xs.min())
    height, width = int(ys.max() - top) + 1, int(xs.max() - left) + 1
    margin = max(height, width)
    canvas = SIZE + 2 * margin
    pad = np.zeros((canvas, canvas), bool)
    pad[margin:margin + SIZE, margin:margin + SIZE] = hull
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        for d in (-1, 0, 1):
            for dt in (-1, 0):
                for dl in (-1, 0):
                    ideal = shape_mask(shape, top + margin + dt, left + margin + dl, height + d,
                                       canvas=canvas, width=width + d)
                    iou = (ideal & pad).sum() / max(1, (ideal | pad).sum())
                    if iou > best_iou:
                        best, best_iou = shape, iou
    return best


def border_colour(grid: np.ndarray) -> np.ndarray:
    """The background's colour as drawn: the median of the 32 x 32 grid's border pixels
    (objects keep at least 1 px off the border, so it is background wherever drawn right)."""
    border = np.concatenate([grid[0], grid[-1], grid[:, 0], grid[:, -1]])
    return np.median(border, axis=0)


def colour_masks(grid: np.ndarray, background: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per palette colour, the pixels that are at least half that colour.

    Each pixel's offset from the background is projected on every palette colour's offset
    from the background: a share t >= 0.5 with a small residual means "mostly this colour".
    Halfway is where a blurred edge crosses the true edge, and offsets from the estimated
    background (the border's colour) cancel a global tint. `background`: the background
    to read against instead, per pixel (an array that broadcasts to the grid, e.g. one
    colour per row), with the palette's offsets taken from it too.
    """
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], np.float32)
    if background is None:                                  # one background, as drawn by most models
        background = border_colour(grid)                                              # 3
        directions = palette - np.array(BACKGROUND, np.float32)                       # C, 3
    else:
        background = np.asarray(background, np.float32)
        directions = palette - background[..., None, :]                               # ..., C, 3
    offset = (grid - background)[..., None, :]                                        # H, W, 1, 3
    share = (offset * directions).sum(-1) / (directions ** 2).sum(-1)                 # H, W, C
    residual = np.linalg.norm(offset - share[..., None] * directions, axis=-1)
    score = np.where((share >= 0.5) & (residual < MAX_RESIDUAL), residual, np.inf)
    best = score.argmin(-1)
    valid = np.isfinite(score.min(-1))
    return {n: valid & (best == i) for i, n in enumerate(names)}


def detect(image: np.ndarray, background: np.ndarray | None = None) -> list[Detected]:
    """The (at most two) objects in an image, largest first (`background`: see colour_masks)."""
    return detect_all(image, background)[0]


def detect_all(image: np.ndarray, background: np.ndarray | None = None) -> tuple[list[Detected], list[Detected]]:
    """(the two objects, largest first; every extra object): see the module docstring, step 3.

    A smaller component of an object's colour that lies mostly inside that object's convex
    hull is a piece of it (a container split by its inner object, a notch), not an extra."""
    candidates, extras = [], []
    for colour, mask in colour_masks(to_grid(image), background).items():
        comps = [c for c in _components(mask) if c.sum() >= MIN_PIXELS]
        if not comps:
            continue
        hull = convex_hull_mask(comps[0])
        candidates.append((int(comps[0].sum()), colour, comps[0], hull))
        extras += [(int(c.sum()), colour, c, convex_hull_mask(c)) for c in comps[1:] if (c & hull).sum() < 0.5 * c.sum()]
    candidates.sort(key=lambda t: -t[0])
    extras += candidates[2:]                     # a third colour
    extras.sort(key=lambda t: -t[0])
    as_objects = lambda found: [Detected(colour, classify_shape(hull), mask, hull) for _, colour, mask, hull in found]
    return as_objects(candidates[:2]), as_objects(extras)


# The relation drawn with the objects' roles swapped ("A <rel> B" drawn as "B <rel> A"), as
# the judge reads it of A to B: a learned relation's best-known failure (issue 25).
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above",
           "inside": "contains", "on top of": "supports"}


def relation(a: Detected, b: Detected) -> str:
    """Relation of `a` to `b`: one of RELATIONS, or "contains" / "supports" (the converses
    of inside / on top of, which no caption asks for)."""
    if (a.mask & b.hull).sum() >= 0.8 * a.mask.sum() and a.hull.sum() < b.hull.sum():
        return "inside"
    if (b.mask & a.hull).sum() >= 0.8 * b.mask.sum() and b.hull.sum() < a.hull.sum():
        return "contains"
    (ay, ax), (by, bx) = a.centroid, b.centroid
    dy, dx = by - ay, bx - ax           # > 0: a is above / left of b
    if abs(dy) > abs(dx):
        if touching(a.mask, b.mask):
            return "on top of" if dy > 0 else "supports"
        return "above" if dy > 0 else "below"
    return "left of" if dx > 0 else "right of"


@dataclass
class Verdict:
    entities_ok: bool      # exactly the two asked-for objects: right colour and shape, nothing extra
    relation_ok: bool      # the relation between the objects that play A and B is right
    seen: str              # what the judge read, for reports ("red circle above blue square")
    read: tuple[str, str, str] | None = None    # (object playing A, relation, object playing B); None if < 2 objects
    extras: tuple[str, ...] = ()                # objects drawn besides those two ("red triangle")


def _verdict(image: np.ndarray, relation_word: str, match, right, background=None) -> Verdict:
    """The two objects in `image`, the one with the higher `match(a, b)` score playing A;
    their relation; `right(a, b)` says whether they are the asked-for objects, and any
    extra object makes the entities wrong."""
    if relation_word not in RELATIONS:
        raise ValueError(f"unknown relation {relation_word!r}; expected one of {RELATIONS}")
    objs, extra = detect_all(image, background)
    if len(objs) < 2:
        return Verdict(False, False, " + ".join(o.name for o in objs) or "nothing")
    everything = objs + extra
    # the pair that best fits the prompt plays A and B (with two objects: the order that fits
    # better); ties go to the larger pair, then to the earlier order
    size = lambda o: int(o.mask.sum())
    pairs = [(oa, ob) for oa in everything for ob in everything if oa is not ob]
    best = max(range(len(pairs)), key=lambda i: (match(*pairs[i]), size(pairs[i][0]) + size(pairs[i][1]), -i))
    oa, ob = pairs[best]
    extras = tuple(o.name for o in everything if o is not oa and o is not ob)
    rel = relation(oa, ob)
    seen = f"{oa.name} {rel} {ob.name}" + "".join(f" + {e}" for e in extras)
    return Verdict(right(oa, ob) and not extras, rel == relation_word, seen, (oa.name, rel, ob.name), extras)


def judge(image: np.ndarray, name_a: str, relation_word: str, name_b: str,
          background: np.ndarray | None = None) -> Verdict:
    """Score one image against the prompt "A <relation> B" (relation in RELATIONS)."""
    def match(oa, ob):  # colour is what tells the objects apart; shape breaks ties
        return sum(2 * (o.colour == n.split()[0]) + (o.shape == n.split()[1])
                   for o, n in ((oa, name_a), (ob, name_b)))
    return _verdict(image, relation_word, match, lambda oa, ob: oa.name == name_a and ob.name == name_b, background)


class ShapeVerdict(Verdict):
    """A Verdict on a colourless prompt: entities_ok means both shapes are right."""

    @property
    def shapes_ok(self) -> bool:
        return self.entities_ok

    @property
    def colours(self) -> tuple[str, str] | None:
        """Colours of the objects that play A and B, as drawn."""
        return None if self.read is None else (self.read[0].split()[0], self.read[2].split()[0])


def judge_shapes(image: np.ndarray, shape_a: str, relation_word: str, shape_b: str) -> ShapeVerdict:
    """Score one image against a colourless prompt "a <shape_a> <relation> a <shape_b>"
    (two different shapes): the objects are told apart by shape, and their colours are
    read, not scored (the confounded-exemplar test counts them)."""
    if shape_a == shape_b or {shape_a, shape_b} - set(SHAPES):
        raise ValueError(f"need two different shapes of {SHAPES}, got {shape_a!r} and {shape_b!r}")
    v = _verdict(image, relation_word, lambda oa, ob: (oa.shape == shape_a) + (ob.shape == shape_b),
                 lambda oa, ob: oa.shape == shape_a and ob.shape == shape_b)
    return ShapeVerdict(**vars(v))
