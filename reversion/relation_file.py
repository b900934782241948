"""The relation file: one learned token, loadable by stock ComfyUI as `embedding:name`.

Layout (safetensors):
- one text encoder (SD1.x, SD2.x, toy): `emb_params` [1, D], the ComfyUI/A1111 key that
  every host version reads whatever the encoder's own embedding key is;
- SDXL: `clip_l` [1, 768] and `clip_g` [1, 1280];
- metadata (strings): placeholder, init word, model family and encoder widths, steps,
  hyperparameters, final losses, the vocabulary words nearest to the vector, pack version.

Also reads the official ReVersion `learned_embeds.bin` (`{"<R>": tensor[768]}`) and A1111
`.pt` embeddings, with `torch.load(weights_only=True)`: plain tensors only, no arbitrary
unpickling.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

PACK_VERSION = "0.1.0"
PLACEHOLDER = "<R>"
SINGLE_KEY = "emb_params"
META = "reversion."
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,99}$")

# encoder key -> width of the real model families (keys are ComfyUI's file keys)
FAMILIES = {
    "SD1.x": {"clip_l": 768},
    "SD2.x": {"clip_h": 1024},
    "SDXL": {"clip_l": 768, "clip_g": 1280},
    "toy world": {"clip_l": 128},
}


class RelationFileError(ValueError):
    """A relation file or name that cannot be used; the message names the fix."""


def family_name(widths: dict[str, int]) -> str:
    for name, w in FAMILIES.items():
        if w == widths:
            return name
    return "custom (" + ", ".join(f"{k} {v}-d" for k, v in sorted(widths.items())) + ")"


@dataclass
class Relation:
    vectors: dict[str, torch.Tensor]          # encoder key ("clip_l", "clip_g", "clip_h") -> [D]
    name: str = "relation"
    placeholder: str = PLACEHOLDER
    init_word: str = ""
    steps: int = 0
    hyperparameters: dict = field(default_factory=dict)
    final_losses: dict = field(default_factory=dict)
    nearest_words: dict = field(default_factory=dict)   # encoder key -> closest vocabulary words
    pack_version: str = PACK_VERSION

    def __post_init__(self):
        if not self.vectors:
            raise RelationFileError("a relation needs at least one vector")
        self.vectors = {k: v.detach().float().reshape(-1).cpu().contiguous() for k, v in self.vectors.items()}

    @property
    def widths(self) -> dict[str, int]:
        return {k: int(v.shape[0]) for k, v in self.vectors.items()}

    @property
    def family(self) -> str:
        return family_name(self.widths)


def check_name(name: str) -> str:
    """A relation name that stays inside the embeddings folder (no paths, no '..')."""
    name = name.strip()
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not NAME_PATTERN.match(name) or ".." in name:
        raise RelationFileError(
            f"invalid relation name {name!r}: use letters, digits, '_', '-', '.' or spaces "
            f"(no folders, no '..'), e.g. 'painted_on'")
    return name


def path_in(directory: str | Path, name: str) -> Path:
    directory = Path(directory).resolve()
    path = (directory / f"{check_name(name)}.safetensors").resolve()
    if path.parent != directory:
        raise RelationFileError(f"relation name {name!r} escapes {directory}")
    return path


def save(relation: Relation, path: str | Path, overwrite: bool = False) -> Path:
    """Write atomically; refuse to replace an existing file unless `overwrite`."""
    import safetensors.torch
    path = Path(path)
    if path.exists() and not overwrite:
        raise RelationFileError(f"{path} already exists; choose another name or switch 'overwrite' on")
    if len(relation.vectors) == 1:
        tensors = {SINGLE_KEY: next(iter(relation.vectors.values())).reshape(1, -1)}
    else:
        tensors = {k: v.reshape(1, -1) for k, v in relation.vectors.items()}
    meta = {
        META + "name": relation.name,
        META + "placeholder": relation.placeholder,
        META + "init_word": relation.init_word,
        META + "encoders": json.dumps(relation.widths),
        META + "family": relation.family,
        META + "steps": str(relation.steps),
        META + "hyperparameters": json.dumps(relation.hyperparameters),
        META + "final_losses": json.dumps(relation.final_losses),
        META + "nearest_words": json.dumps(relation.nearest_words),
        META + "pack_version": relation.pack_version,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.chmod(tmp, 0o666 & ~_umask())      # safetensors writes 0600; give the file the usual mode
    os.replace(tmp, path)
    return path


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _single_key(width: int) -> str:
    return "clip_h" if width == 1024 else "clip_l"


def load(path: str | Path) -> Relation:
    path = Path(path)
    if not path.is_file():
        raise RelationFileError(f"relation file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        return _load_safetensors(path)
    return _load_pickled(path)


def _load_safetensors(path: Path) -> Relation:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for k, t in tensors.items():
        if t.ndim == 2 and t.shape[0] != 1:
            raise RelationFileError(f"{path.name}: '{k}' holds {t.shape[0]} vectors; a relation is one token")
    if META + "encoders" in meta:
        widths = json.loads(meta[META + "encoders"])
        if SINGLE_KEY in tensors:
            vectors = {next(iter(widths)): tensors[SINGLE_KEY]}
        else:
            vectors = {k: tensors[k] for k in widths}
    elif SINGLE_KEY in tensors:
        t = tensors[SINGLE_KEY]
        vectors = {_single_key(t.shape[-1]): t}
    elif any(k in tensors for k in ("clip_l", "clip_g", "clip_h")):
        vectors = {k: tensors[k] for k in ("clip_l", "clip_g", "clip_h") if k in tensors}
    elif len(tensors) == 1:
        t = next(iter(tensors.values()))
        vectors = {_single_key(t.shape[-1]): t}
    else:
        raise RelationFileError(f"{path.name} is not an embedding file (keys: {', '.join(tensors)})")
    get = lambda k, d="": meta.get(META + k, d)  # noqa: E731
    return Relation(vectors, name=get("name", path.stem), placeholder=get("placeholder", PLACEHOLDER),
                    init_word=get("init_word"), steps=int(get("steps", "0") or 0),
                    hyperparameters=json.loads(get("hyperparameters", "{}")),
                    final_losses=json.loads(get("final_losses", "{}")),
                    nearest_words=json.loads(get("nearest_words", "{}")),
                    pack_version=get("pack_version", "unknown"))


def _load_pickled(path: Path) -> Relation:
    """Official ReVersion `learned_embeds.bin` ({"<R>": [768]}) or an A1111 `.pt` embedding."""
    import pickle
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise RelationFileError(
            f"{path.name} is not a plain tensor file (refusing to unpickle arbitrary objects): {e}") from e
    if isinstance(data, dict) and "string_to_param" in data:
        data = {str(k): v for k, v in data["string_to_param"].items()}
    if not isinstance(data, dict) or len(data) != 1 or not isinstance(next(iter(data.values())), torch.Tensor):
        raise RelationFileError(f"{path.name}: expected one learned token such as {{'<R>': tensor[768]}}")
    token, t = next(iter(data.items()))
    if t.ndim == 2 and t.shape[0] != 1:
        raise RelationFileError(f"{path.name}: '{token}' holds {t.shape[0]} vectors; a relation is one token")
    t = t.reshape(-1)
    return Relation({_single_key(t.shape[0]): t}, name=path.stem, placeholder=str(token))
