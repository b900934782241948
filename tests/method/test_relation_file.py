"""The relation file format (reversion/relation_file.py), without ComfyUI: what is stored,
the layouts stock ComfyUI reads, the official ReVersion and A1111 files, and files refused."""
from __future__ import annotations

import pickle

import pytest
import torch

from comfyui_reversion.reversion import relation_file as rf


def save(relation, path):
    path.write_bytes(rf.to_bytes(relation))
    return path


def test_relation_file_round_trip_keeps_vector_and_metadata(tmp_path):
    vec = torch.randn(768)
    rel = rf.Relation({"clip_l": vec}, name="painted_on", init_word="and", steps=3000,
                      hyperparameters={"lr": 2e-3}, final_losses={"loss": 0.1})
    path = save(rel, tmp_path / "painted_on.safetensors")
    back = rf.load(path)
    assert torch.equal(back.vectors["clip_l"], vec)
    assert (back.name, back.init_word, back.steps, back.family) == ("painted_on", "and", 3000, "SD1.x")
    assert back.hyperparameters == {"lr": 2e-3} and back.final_losses == {"loss": 0.1}
    assert back.pack_version == rf.PACK_VERSION and back.placeholder == "<R>"


def test_stock_layouts(tmp_path):
    """One encoder -> `emb_params` [1, D] (read by every ComfyUI); SDXL -> clip_l + clip_g."""
    from safetensors.torch import load_file
    save(rf.Relation({"clip_h": torch.randn(1024)}), tmp_path / "sd2.safetensors")
    save(rf.Relation({"clip_l": torch.randn(768), "clip_g": torch.randn(1280)}), tmp_path / "xl.safetensors")
    assert {k: tuple(v.shape) for k, v in load_file(tmp_path / "sd2.safetensors").items()} == {"emb_params": (1, 1024)}
    assert {k: tuple(v.shape) for k, v in load_file(tmp_path / "xl.safetensors").items()} == \
        {"clip_l": (1, 768), "clip_g": (1, 1280)}
    assert rf.load(tmp_path / "sd2.safetensors").family == "SD2.x"
    assert rf.load(tmp_path / "xl.safetensors").family == "SDXL"


def test_official_learned_embeds_bin_loads(tmp_path):
    vec = torch.randn(768)
    torch.save({"<R>": vec}, tmp_path / "learned_embeds.bin")     # the official ReVersion format
    rel = rf.load(tmp_path / "learned_embeds.bin")
    assert torch.equal(rel.vectors["clip_l"], vec) and rel.placeholder == "<R>" and rel.family == "SD1.x"


def test_arbitrary_pickles_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"<R>": Evil()}, f)
    with pytest.raises(rf.RelationFileError, match="refusing to unpickle"):
        rf.load(tmp_path / "evil.bin")


def test_the_same_relation_gives_the_same_bytes():
    """Sorted header, no timings: a relation file is a function of its content (safetensors'
    own writer orders the metadata by hash, which differs between runs)."""
    def relation():
        return rf.Relation({"clip_l": torch.arange(768.0) / 768}, name="same", steps=3,
                           hyperparameters={"lr": 2e-3, "b": [1, 2]}, final_losses={"loss": 0.5})
    first = rf.to_bytes(relation())
    assert first == rf.to_bytes(relation())
    assert first != rf.to_bytes(rf.Relation({"clip_l": torch.arange(768.0) / 768}, name="same", steps=4))
    header_length = int.from_bytes(first[:8], "little")
    assert header_length % 8 == 0 and first[8:8 + header_length].rstrip().endswith(b"}")


def test_multi_vector_embeddings_are_not_relations(tmp_path):
    from safetensors.torch import save_file
    save_file({"emb_params": torch.randn(3, 768)}, tmp_path / "ti.safetensors")
    with pytest.raises(rf.RelationFileError, match="holds 3 vectors"):
        rf.load(tmp_path / "ti.safetensors")
