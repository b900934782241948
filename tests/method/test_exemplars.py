"""Exemplar sets (reversion/exemplars.py), without ComfyUI: folders in the ReVersion
Benchmark layout, image batches, and bad input that names the fix."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_reversion.reversion import exemplars as ex


def make_folder(path, names=("0.jpg", "1.png"), text=None, size=(40, 30)):
    path.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[:, : size[0] // 2] = (200, 30 * i, 10)       # left half coloured: flips would show
        Image.fromarray(img).save(path / name)
    if text is not None:
        (path / "text.json").write_text(json.dumps(text))
    return path


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
