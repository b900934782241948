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


def test_multi_vector_relations_round_trip_and_one_vector_files_stay_as_they_were(tmp_path):
    """A relation of N vectors is [N, D] per encoder in the file (the layout stock ComfyUI
    expands to N tokens); another program's 3-vector embedding loads too; a one-vector
    relation keeps its [D] shape and exact bytes (older files keep loading)."""
    from safetensors.torch import save_file
    rows = torch.randn(3, 768) * 0.02
    save_file({"emb_params": rows}, tmp_path / "ti.safetensors")
    loaded = rf.load(tmp_path / "ti.safetensors")
    assert loaded.count == 3 and loaded.widths == {"clip_l": 768} and loaded.family == "SD1.x"
    torch.testing.assert_close(loaded.vectors["clip_l"], rows)
    sdxl = rf.Relation({"clip_l": torch.randn(2, 768) * 0.02, "clip_g": torch.randn(2, 1280) * 0.02}, name="two")
    (tmp_path / "two.safetensors").write_bytes(rf.to_bytes(sdxl))
    again = rf.load(tmp_path / "two.safetensors")
    assert again.count == 2 and again.family == "SDXL"
    for k in ("clip_l", "clip_g"):
        assert torch.equal(again.vectors[k], sdxl.vectors[k])
    one = rf.Relation({"clip_l": torch.arange(768.0) / 768}, name="one")
    assert one.count == 1 and one.vectors["clip_l"].shape == (768,)
    assert rf.Relation({"clip_l": (torch.arange(768.0) / 768).reshape(1, 768)}, name="one").vectors["clip_l"].shape == (768,)
    assert rf.to_bytes(one) == rf.to_bytes(rf.Relation({"clip_l": torch.arange(768.0) / 768}, name="one"))
    header = rf.to_bytes(one)[8:8 + int.from_bytes(rf.to_bytes(one)[:8], "little")]
    assert b'"shape":[1,768]' in header


def test_too_many_vectors_or_uneven_encoders_are_refused(tmp_path):
    from safetensors.torch import save_file
    save_file({"emb_params": torch.randn(rf.MAX_VECTORS + 1, 768)}, tmp_path / "long.safetensors")
    with pytest.raises(rf.RelationFileError, match=f"holds {rf.MAX_VECTORS + 1} vectors.*1 to {rf.MAX_VECTORS}"):
        rf.load(tmp_path / "long.safetensors")
    with pytest.raises(rf.RelationFileError, match="different numbers of vectors"):
        rf.Relation({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(1280)}, name="uneven")
