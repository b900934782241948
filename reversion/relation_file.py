"""The relation file format: the learned token(s), loadable by stock ComfyUI as `embedding:name`.

Layout (safetensors), N = the relation's vectors (1 in the paper; up to MAX_VECTORS, as
A1111/kohya multi-vector embeddings, which stock ComfyUI expands to N tokens):
- one text encoder (SD1.x, SD2.x, toy): `emb_params` [N, D], the ComfyUI/A1111 key that
  every host version reads whatever the encoder's own embedding key is;
- SDXL: `clip_l` [N, 768] and `clip_g` [N, 1280];
- metadata (strings): placeholder, init word, model family and encoder widths, steps,
  hyperparameters, final losses, the vocabulary words nearest to the vector, pack version.

`to_bytes` serialises a relation (the same relation, the same bytes); where files go and
whether one may be replaced is `reversion_comfy/store.py`'s business. `load` also reads the
official ReVersion `learned_embeds.bin` (`{"<R>": tensor[768]}`) and A1111 `.pt`
embeddings, with `torch.load(weights_only=True)`: plain tensors only, no arbitrary unpickling.
"""
from __future__ import annotations

import json
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import RelationFileError
from .words import PLACEHOLDER

PACK_VERSION = "0.1.0"
SINGLE_KEY = "emb_params"
META = "reversion."
# Token embeddings of real text encoders stay within about +-1 (CLIP-L rows: norm ~0.4); a
# vector far outside that is a broken file and samples as noise or black, so it is refused.
MAX_ABS_VALUE = 100.0
MAX_VECTORS = 16          # tokens per relation this pack reads (trains: 1-4)

# encoder key -> width of the real model families (keys are ComfyUI's file keys)
FAMILIES = {
    "SD1.x": {"clip_l": 768},
    "SD2.x": {"clip_h": 1024},
    "SDXL": {"clip_l": 768, "clip_g": 1280},
    "toy world": {"clip_l": 128},
}


def family_name(widths: dict[str, int]) -> str:
    for name, w in FAMILIES.items():
        if w == widths:
            return name
    return "custom (" + ", ".join(f"{k} {v}-d" for k, v in sorted(widths.items())) + ")"


@dataclass
class Relation:
    vectors: dict[str, torch.Tensor]          # encoder key ("clip_l", "clip_g", "clip_h") -> [D], or [N, D] for N > 1
    name: str = "relation"
    placeholder: str = PLACEHOLDER
    init_word: str = ""
    steps: int = 0
    hyperparameters: dict = field(default_factory=dict)
    final_losses: dict = field(default_factory=dict)
    nearest_words: dict = field(default_factory=dict)   # encoder key -> closest vocabulary words
    pack_version: str = PACK_VERSION
    # what this process measured while training (the memory plan): shown, never written to the
    # file, whose bytes depend only on the result
    measured: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if not self.vectors:
            raise RelationFileError("a relation needs at least one vector")
        self.vectors = {k: check_vector(v, f"{self.name} [{k}]") for k, v in self.vectors.items()}
        counts = {k: vector_count(v) for k, v in self.vectors.items()}
        if len(set(counts.values())) > 1:
            raise RelationFileError(f"{self.name}: its encoders hold different numbers of vectors ({counts}); "
                                    f"a relation has as many for every encoder")

    @property
    def widths(self) -> dict[str, int]:
        return {k: int(v.shape[-1]) for k, v in self.vectors.items()}

    @property
    def count(self) -> int:
        """Token vectors per encoder: 1 (the paper) or more (num_vectors)."""
        return vector_count(next(iter(self.vectors.values())))

    @property
    def family(self) -> str:
        return family_name(self.widths)


def vector_count(v: torch.Tensor) -> int:
    return 1 if v.ndim == 1 else int(v.shape[0])


def check_vector(t, where: str) -> torch.Tensor:
    """Token vector(s): shape [D] or [N, D] (N <= MAX_VECTORS), floating point, finite, of
    sane size -> [D] float32 for one vector, [N, D] for several.

    Anything else (a [2, 2, 32] block, 300 rows, NaN/Inf, huge values) is refused rather
    than flattened or passed on to sample black images.
    """
    if not isinstance(t, torch.Tensor):
        raise RelationFileError(f"{where}: expected a tensor, got {type(t).__name__}")
    if not (t.ndim == 1 or (t.ndim == 2 and 1 <= t.shape[0] <= MAX_VECTORS)) or t.shape[-1] < 1:
        what = f"{t.shape[0]} vectors" if t.ndim == 2 else f"a tensor of shape {list(t.shape)}"
        raise RelationFileError(f"{where} holds {what}; a relation is 1 to {MAX_VECTORS} token vectors, "
                                f"of shape [D] or [N, D]")
    if not t.is_floating_point():
        raise RelationFileError(f"{where} holds {t.dtype} values; a token vector is floating point")
    t = t.detach().float().cpu().contiguous()
    t = t.reshape(-1) if t.ndim == 1 or t.shape[0] == 1 else t
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise RelationFileError(f"{where} holds {bad} NaN/Inf value(s): the file is broken; re-train or "
                                f"re-download the relation")
    if t.abs().max() > MAX_ABS_VALUE:
        raise RelationFileError(f"{where} holds values up to {float(t.abs().max()):.3g} (token embeddings stay "
                                f"within about +-1; this pack refuses beyond +-{MAX_ABS_VALUE:g}): the file is "
                                f"broken or not an embedding")
    return t


def to_bytes(relation: Relation) -> bytes:
    """The relation as a safetensors file whose bytes depend only on its content."""
    if len(relation.vectors) == 1:
        tensors = {SINGLE_KEY: next(iter(relation.vectors.values())).reshape(relation.count, -1)}
    else:
        tensors = {k: v.reshape(relation.count, -1) for k, v in relation.vectors.items()}
    meta = {
        META + "name": relation.name,
        META + "placeholder": relation.placeholder,
        META + "init_word": relation.init_word,
        META + "encoders": json.dumps(relation.widths),
        META + "family": relation.family,
        META + "steps": str(relation.steps),
        META + "hyperparameters": json.dumps(relation.hyperparameters, sort_keys=True),
        META + "final_losses": json.dumps(relation.final_losses, sort_keys=True),
        META + "nearest_words": json.dumps(relation.nearest_words, sort_keys=True),
        META + "pack_version": relation.pack_version,
    }
    return _safetensors_bytes(tensors, meta)


def _safetensors_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    """A safetensors file whose bytes depend only on its content (the safetensors library
    writes the metadata in hash order, which differs from run to run): sorted JSON header,
    padded to 8 bytes, then the float32 data little-endian, in key order."""
    header: dict = {"__metadata__": meta}
    blobs, offset = [], 0
    for key in sorted(tensors):
        blob = tensors[key].detach().to(torch.float32).contiguous().cpu().numpy().astype("<f4").tobytes()
        header[key] = {"dtype": "F32", "shape": list(tensors[key].shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


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
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:   # safetensors raises its own SafetensorError, OSError, or ValueError
        raise RelationFileError(
            f"{path.name} is not a readable safetensors file (corrupt or truncated: {e}); re-save or "
            f"re-download it") from e
    tensors = {k: check_vector(t, f"{path.name} '{k}'") for k, t in tensors.items()}
    if META + "encoders" in meta:
        widths = _meta_json(path, meta, "encoders", {})
        if not widths or not all(isinstance(w, int) for w in widths.values()):
            raise RelationFileError(f"{path.name}: metadata '{META}encoders' should name the text encoders "
                                    f"(e.g. {{\"clip_l\": 768}}); remove or fix it")
        if SINGLE_KEY in tensors:
            vectors = {next(iter(widths)): tensors[SINGLE_KEY]}
        else:
            missing = [k for k in widths if k not in tensors]
            if missing:
                raise RelationFileError(
                    f"{path.name}: metadata lists encoder(s) {', '.join(missing)} but the file holds only "
                    f"{', '.join(tensors) or 'no tensors'}; the file is inconsistent: re-save it")
            vectors = {k: tensors[k] for k in widths}
        wrong = [k for k, v in vectors.items() if widths.get(k) != v.shape[-1]]
        if wrong:
            raise RelationFileError(f"{path.name}: metadata widths {widths} do not match the stored vectors "
                                    f"({', '.join(f'{k} {vectors[k].shape[-1]}-d' for k in wrong)}); re-save it")
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
    steps = get("steps", "0") or "0"
    if not steps.isdigit():
        raise RelationFileError(f"{path.name}: metadata '{META}steps' is {steps!r}, not a whole number; "
                                f"fix or remove it")
    return Relation(vectors, name=get("name", path.stem), placeholder=get("placeholder", PLACEHOLDER),
                    init_word=get("init_word"), steps=int(steps),
                    hyperparameters=_meta_json(path, meta, "hyperparameters", {}),
                    final_losses=_meta_json(path, meta, "final_losses", {}),
                    nearest_words=_meta_json(path, meta, "nearest_words", {}),
                    pack_version=get("pack_version", "unknown"))


def _meta_json(path: Path, meta: dict, key: str, default):
    """A JSON metadata field, or a clear error naming the field (not json's bare message)."""
    raw = meta.get(META + key)
    if raw is None:
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise RelationFileError(f"{path.name}: metadata '{META}{key}' is not valid JSON ({e.msg}); fix or "
                                f"remove that field") from e
    if not isinstance(value, type(default)):
        raise RelationFileError(f"{path.name}: metadata '{META}{key}' should be a JSON "
                                f"{type(default).__name__}, got {type(value).__name__}; fix or remove it")
    return value


def _load_pickled(path: Path) -> Relation:
    """Official ReVersion `learned_embeds.bin` ({"<R>": [768]}) or an A1111 `.pt` embedding."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
        # a text file read as a legacy pickle fails with a bare KeyError (its first byte)
        raise RelationFileError(
            f"{path.name} is not a plain tensor file: damaged, not an embedding, or holding objects (refusing to "
            f"unpickle arbitrary objects) ({type(e).__name__}: {str(e)[:160]}); re-save or re-download it") from e
    if isinstance(data, dict) and "string_to_param" in data:
        data = {str(k): v for k, v in data["string_to_param"].items()}
    if not isinstance(data, dict) or len(data) != 1 or not isinstance(next(iter(data.values())), torch.Tensor):
        raise RelationFileError(f"{path.name}: expected one learned token such as {{'<R>': tensor[768]}}")
    token, t = next(iter(data.items()))
    t = check_vector(t, f"{path.name} '{token}'")
    return Relation({_single_key(t.shape[-1]): t}, name=path.stem, placeholder=str(token))
