"""Exemplar sets: a few images that share one relation, each with caption templates.

A template is a coarse description with exactly one `{}` where the relation goes:
"a cat {} a dog". Two sources:

- a folder in the ReVersion Benchmark layout: images plus `text.json`
  (`{"0.jpg": ["cat {} dog", "a cat {} a dog"], ...}`), or images plus one shared template;
- an image batch plus templates (one shared, or one per image).

Images are resized to a square with bicubic filtering, as the paper does (optionally after a
centre crop), and never flipped: a flip can change the relation ("left of"). Before that they
are put upright by their EXIF orientation (as stock LoadImage does: a phone photo stored
sideways would otherwise teach "left of" for "above"), 16-bit greyscale is scaled to 8 bits,
and transparent pixels are composited onto white.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ExemplarError
from .words import SLOT

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
TEXT_FILE = "text.json"
MAX_NAMED = 3             # error messages name at most this many files, never a listing


@dataclass
class Exemplars:
    images: torch.Tensor                  # [N, H, W, 3] float32 in [0, 1] (ComfyUI IMAGE layout)
    templates: list[list[str]]            # templates[i]: the captions of image i, one "{}" each
    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ExemplarError(f"exemplar images must be [N, H, W, 3], got {tuple(self.images.shape)}")
        if len(self.templates) != self.images.shape[0]:
            raise ExemplarError(f"{self.images.shape[0]} images but {len(self.templates)} template lists")
        if not self.names:
            self.names = [f"image {i}" for i in range(len(self.templates))]
        for name, templates in zip(self.names, self.templates):
            if not templates:
                raise ExemplarError(f"{name} has no template; give at least one like 'a cat {{}} a dog'")
            for t in templates:
                check_template(t, name)

    def __len__(self) -> int:
        return len(self.templates)


def check_template(template: str, where: str = "template") -> str:
    """Exactly one `{}`, standing as its own word ("circle{}a" would glue <R> to the words)."""
    count = template.count(SLOT)
    if count != 1:
        problem = "has no" if count == 0 else f"has {count}"
        raise ExemplarError(
            f"{where}: template {template!r} {problem} '{{}}' slot; write exactly one '{{}}' where "
            f"the relation goes, e.g. 'a cat {{}} a dog'")
    i = template.index(SLOT)
    before, after = template[i - 1:i], template[i + 2:i + 3]
    if before.isalnum() or after.isalnum():
        raise ExemplarError(
            f"{where}: template {template!r} glues '{{}}' to a word; put spaces around it, "
            f"e.g. 'a cat {{}} a dog'")
    return template


def name_some(names: list[str]) -> str:
    """'a, b, c and 4 more': enough to find the files, never a directory listing."""
    shown = ", ".join(names[:MAX_NAMED])
    return shown + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")


def parse_templates(text: str) -> list[str]:
    """One template per non-empty line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def to_rgb(image):
    """Any PIL image -> 8-bit RGB as a person sees it: EXIF orientation applied, 16/32-bit
    greyscale scaled (Pillow's convert() clips it to white), transparency over white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" and values.max() <= 1.0 else (255.0 if values.max() <= 255 else 65535.0)
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def to_square(image, size: int, center_crop: bool = False):
    """PIL image -> size x size RGB, bicubic (aspect ratio not kept unless centre-cropped)."""
    image = to_rgb(image)
    if center_crop:
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return image


def _to_tensor(images) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images]))


def load_folder(folder: str | Path, size: int = 512, center_crop: bool = False,
                template: str = "") -> Exemplars:
    """Exemplars from a folder of images plus `text.json`, or plus one shared `template`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExemplarError(f"exemplar folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    others = [p.name for p in files if p not in images and p.name != TEXT_FILE]
    if others:
        raise ExemplarError(
            f"{folder} holds {len(others)} file(s) that are not images ({name_some(others)}); move them "
            f"out (allowed: {', '.join(IMAGE_EXTENSIONS)} and {TEXT_FILE})")
    if not images:
        raise ExemplarError(f"no images in {folder}; add 4-10 exemplar images ({', '.join(IMAGE_EXTENSIONS)})")

    text_file = folder / TEXT_FILE
    template = template.strip()
    if text_file.exists():
        if template:
            raise ExemplarError(
                f"{folder} has {TEXT_FILE} and a template was given too; clear the template "
                f"(to use {TEXT_FILE}) or remove {TEXT_FILE}")
        templates = _read_text_json(text_file, [p.name for p in images])
    elif template:
        templates = {p.name: [check_template(template, "shared template")] for p in images}
    else:
        raise ExemplarError(
            f"no {TEXT_FILE} in {folder} and no template given; add {TEXT_FILE} "
            f'({{"0.jpg": ["a cat {{}} a dog"]}}) or give one template like \'a cat {{}} a dog\'')

    pil = []
    for p in images:
        try:
            with Image.open(p) as im:
                im.load()
                pil.append(to_square(im, size, center_crop))
        except Image.DecompressionBombError as e:
            raise ExemplarError(
                f"image {p.name} has more pixels than Pillow's safety limit ({Image.MAX_IMAGE_PIXELS * 2 // 10**6} "
                f"megapixels, a guard against decompression bombs); downscale it, e.g. to {size} x {size}") from e
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ExemplarError(f"cannot read image {p.name} ({e}); replace or remove the file") from e
    return Exemplars(_to_tensor(pil), [templates[p.name] for p in images], [p.name for p in images])


def _read_text_json(path: Path, image_names: list[str]) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))   # tolerate a BOM (Windows editors)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExemplarError(f"{path} is not valid JSON ({e}); expected {{\"0.jpg\": [\"cat {{}} dog\"]}}") from e
    if not isinstance(data, dict):
        raise ExemplarError(f"{path} must map image file names to template lists, e.g. {{\"0.jpg\": [\"cat {{}} dog\"]}}")
    missing = sorted(set(data) - set(image_names))
    if missing:
        raise ExemplarError(f"{path} names {len(missing)} image(s) that are not in the folder "
                            f"({name_some(missing)}); fix the names or add the images")
    unlisted = [n for n in image_names if n not in data]
    if unlisted:
        raise ExemplarError(f"{path} has no templates for {name_some(unlisted)}; add them "
                            f"(\"{unlisted[0]}\": [\"a cat {{}} a dog\"]) or remove the images")
    out = {}
    for name, value in data.items():
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items) or not items:
            raise ExemplarError(f"{path}: \"{name}\" must be a list of template strings")
        out[name] = [check_template(t, f"{path.name} \"{name}\"") for t in items]
    return out


def from_images(images: torch.Tensor, templates: list[str], size: int | None = None,
                center_crop: bool = False) -> Exemplars:
    """Exemplars from an IMAGE batch [N, H, W, C] and templates: one shared, or one per image."""
    if images.ndim != 4:
        raise ExemplarError(f"expected an IMAGE batch [N, H, W, C], got shape {tuple(images.shape)}")
    n = images.shape[0]
    if len(templates) == 1:
        per_image = [[templates[0]] for _ in range(n)]
    elif len(templates) == n:
        per_image = [[t] for t in templates]
    else:
        raise ExemplarError(f"{n} images but {len(templates)} templates; give one template for all "
                            f"images or one line per image")
    images = images[..., :3].float().clamp(0, 1)
    if size is not None and (images.shape[1] != size or images.shape[2] != size or center_crop):
        pil = [Image.fromarray((im.cpu().numpy() * 255).round().astype(np.uint8)) for im in images]
        images = _to_tensor([to_square(im, size, center_crop) for im in pil])
    return Exemplars(images.contiguous(), per_image, [f"image {i}" for i in range(n)])
