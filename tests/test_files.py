"""Exemplar folders and relation files, without ComfyUI: formats and bad-input errors."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from reversion import exemplars as ex
from reversion import relation_file as rf


def make_folder(path, names=("0.jpg", "1.png"), text=None, size=(40, 30)):
    path.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[:, : size[0] // 2] = (200, 30 * i, 10)       # left half coloured: flips would show
        Image.fromarray(img).save(path / name)
    if text is not None:
        (path / "text.json").write_text(json.dumps(text))
    return path


# ----------------------------------------------------------------------- exemplars

def test_folder_with_text_json_in_benchmark_format(tmp_path):
    folder = make_folder(tmp_path / "rel", text={"0.jpg": ["cat {} dog", "a cat {} a dog"], "1.png": "x {} y"})
    e = ex.load_folder(folder, size=64)
    assert e.images.shape == (2, 64, 64, 3) and e.images.dtype == torch.float32
    assert e.templates == [["cat {} dog", "a cat {} a dog"], ["x {} y"]]
    assert e.names == ["0.jpg", "1.png"]
    # resized without flipping: the left half stays the coloured half
    assert e.images[0, :, :24, 0].mean() > 0.7 and e.images[0, :, 40:, 0].mean() < 0.05


def test_folder_with_one_shared_template_and_centre_crop(tmp_path):
    folder = make_folder(tmp_path / "rel", size=(60, 20))
    e = ex.load_folder(folder, size=32, center_crop=True, template="a {} b")
    assert e.templates == [["a {} b"], ["a {} b"]]
    # the centre 20x20 crop of a 60x20 image that is coloured on its left half: left 10 px coloured
    assert e.images[0, :, :12, 0].mean() > 0.7 and e.images[0, :, 20:, 0].mean() < 0.05


def test_images_plus_templates():
    imgs = torch.rand(3, 50, 70, 3)
    e = ex.from_images(imgs, ["one {} two"], size=32)
    assert e.images.shape == (3, 32, 32, 3) and e.templates == [["one {} two"]] * 3
    e = ex.from_images(imgs, ["a {}", "b {}", "c {}"])
    assert e.templates == [["a {}"], ["b {}"], ["c {}"]] and e.images.shape == (3, 50, 70, 3)
    with pytest.raises(ex.ExemplarError, match="3 images but 2 templates"):
        ex.from_images(imgs, ["a {}", "b {}"])


@pytest.mark.parametrize("setup,message", [
    (lambda p: p.mkdir(), "no images in"),
    (lambda p: make_folder(p, text={"0.jpg": ["a {} b"]}), "no templates for 1.png"),
    (lambda p: make_folder(p, text={"0.jpg": ["a {} b"], "1.png": ["c {} d"], "9.jpg": ["e {} f"]}),
     r"not in the folder \(9.jpg\)"),
    (lambda p: make_folder(p, text={"0.jpg": ["a b"], "1.png": ["c {} d"]}), "has no '{}' slot"),
    (lambda p: make_folder(p, text={"0.jpg": ["a {} b {}"], "1.png": ["c {} d"]}), "has 2 '{}' slot"),
    (lambda p: make_folder(p), "no text.json .* and no template given"),
    (lambda p: (make_folder(p, text={"0.jpg": ["a {} b"], "1.png": ["c {} d"]}), (p / "notes.txt").write_text("x")),
     r"not images \(notes.txt\)"),
    (lambda p: (make_folder(p, text={"0.jpg": ["a {} b"], "1.png": ["c {} d"]}), (p / "1.png").write_bytes(b"broken")),
     "cannot read image .*1.png"),
    (lambda p: (make_folder(p), (p / "text.json").write_text("{not json")), "not valid JSON"),
])
def test_bad_exemplar_folders_name_the_fix(tmp_path, setup, message):
    folder = tmp_path / "rel"
    setup(folder)
    with pytest.raises(ex.ExemplarError, match=message):
        ex.load_folder(folder, size=32)


def test_missing_folder_and_conflicting_template(tmp_path):
    with pytest.raises(ex.ExemplarError, match="not found"):
        ex.load_folder(tmp_path / "nope")
    folder = make_folder(tmp_path / "rel", text={"0.jpg": ["a {} b"], "1.png": ["c {} d"]})
    with pytest.raises(ex.ExemplarError, match="clear the template"):
        ex.load_folder(folder, template="x {} y")


# ------------------------------------------------------------------- relation files

def test_relation_file_round_trip_keeps_vector_and_metadata(tmp_path):
    vec = torch.randn(768)
    rel = rf.Relation({"clip_l": vec}, name="painted_on", init_word="and", steps=3000,
                      hyperparameters={"lr": 2e-3}, final_losses={"loss": 0.1})
    path = rf.save(rel, tmp_path / "painted_on.safetensors")
    back = rf.load(path)
    assert torch.equal(back.vectors["clip_l"], vec)
    assert (back.name, back.init_word, back.steps, back.family) == ("painted_on", "and", 3000, "SD1.x")
    assert back.hyperparameters == {"lr": 2e-3} and back.final_losses == {"loss": 0.1}
    assert back.pack_version == rf.PACK_VERSION and back.placeholder == "<R>"



def test_relation_file_mode_follows_umask(tmp_path):
    import os
    import stat
    rel = rf.Relation({"clip_l": torch.randn(768)}, name="perm")
    old = os.umask(0o022)
    try:
        path = rf.save(rel, tmp_path / "perm.safetensors")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644       # safetensors alone gives 0600
        os.umask(0o027)
        path = rf.save(rel, tmp_path / "perm.safetensors", overwrite=True)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)

def test_stock_layouts(tmp_path):
    """One encoder -> `emb_params` [1, D] (read by every ComfyUI); SDXL -> clip_l + clip_g."""
    from safetensors.torch import load_file
    rf.save(rf.Relation({"clip_h": torch.randn(1024)}), tmp_path / "sd2.safetensors")
    rf.save(rf.Relation({"clip_l": torch.randn(768), "clip_g": torch.randn(1280)}), tmp_path / "xl.safetensors")
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


def test_no_silent_overwrite_and_no_escaping_names(tmp_path):
    rel = rf.Relation({"clip_l": torch.randn(768)})
    path = rf.path_in(tmp_path, "mine")
    rf.save(rel, path)
    first = path.read_bytes()
    with pytest.raises(rf.RelationFileError, match="already exists.*overwrite"):
        rf.save(rf.Relation({"clip_l": torch.randn(768)}), path)
    assert path.read_bytes() == first
    rf.save(rf.Relation({"clip_l": torch.randn(768)}), path, overwrite=True)
    assert path.read_bytes() != first
    for bad in ("../escape", "sub/dir", "..", "", "/abs", "a\\b"):
        with pytest.raises(rf.RelationFileError, match="invalid relation name"):
            rf.path_in(tmp_path, bad)


def test_multi_vector_embeddings_are_not_relations(tmp_path):
    from safetensors.torch import save_file
    save_file({"emb_params": torch.randn(3, 768)}, tmp_path / "ti.safetensors")
    with pytest.raises(rf.RelationFileError, match="holds 3 vectors"):
        rf.load(tmp_path / "ti.safetensors")
