"""Load Exemplars (nodes/exemplar_nodes.py) with what users actually have: photos stored
sideways, CMYK and 16-bit files, transparency, unicode names, a BOM; and what must be
refused with the fix, changing nothing: broken folders, folders outside ComfyUI's input
folder (no listing of the server's files), decompression bombs."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from comfyui_reversion.reversion import exemplars as ex
from conftest import run_node, snapshot


def two_colour(w=40, h=20, mode="RGB"):
    """Left half red, right half black: a flip or rotation shows."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (220, 20, 20)
    return Image.fromarray(img).convert(mode)


def folder_with(path, images: dict, text=None, raw_text: bytes | None = None):
    """A folder of `images` ({file name: PIL image or bytes}) plus text.json."""
    path.mkdir(parents=True, exist_ok=True)
    for name, img in images.items():
        if isinstance(img, bytes):
            (path / name).write_bytes(img)
        else:
            img.save(path / name)
    if raw_text is not None:
        (path / "text.json").write_bytes(raw_text)
    elif text is not False:
        (path / "text.json").write_text(json.dumps(text or {n: ["a cat {} a dog"] for n in images}),
                                        encoding="utf-8")
    return path


def exif_rotated_jpeg() -> bytes:
    """A 40x20 photo stored sideways with EXIF orientation 6 ('rotate 90 clockwise to view')."""
    img = two_colour()
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def grey16(value=32768) -> Image.Image:
    return Image.fromarray(np.full((20, 20), value, np.uint16))


def palette_with_transparency() -> Image.Image:
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)   # index 0 black (transparent), 1 red
    img.paste(1, (0, 0, 10, 20))                          # left half red
    img.info["transparency"] = 0
    return img


def _load_ok_cases():
    return [
        ("exif_rotated_photo_is_upright",
         lambda p: folder_with(p, {"0.jpg": exif_rotated_jpeg()}),
         # stored 40x20 with the red half on the left; shown upright it is 20x40, red on top
         lambda e: e.images[0, :12, :, 0].mean() > 0.7 and e.images[0, 20:, :, 0].mean() < 0.2),
        ("cmyk_jpeg",
         lambda p: folder_with(p, {"0.jpg": two_colour(mode="CMYK")}),
         lambda e: e.images[0, :, :12, 0].mean() > 0.7 and e.images[0, :, 20:].mean() < 0.2),
        ("grey_16_bit_png_is_grey_not_white",
         lambda p: folder_with(p, {"0.png": grey16(32768)}),
         lambda e: abs(float(e.images.mean()) - 0.5) < 0.02),
        ("palette_with_alpha_on_white",
         lambda p: folder_with(p, {"0.png": palette_with_transparency()}),
         lambda e: e.images[0, :, :12, 0].mean() > 0.7 and e.images[0, :, 20:].mean() > 0.95),
        ("unicode_file_names",
         lambda p: folder_with(p, {"кошка.png": two_colour(), "猫 1.png": two_colour()}),
         lambda e: sorted(e.names) == sorted(["кошка.png", "猫 1.png"])),
        ("text_json_with_utf8_bom",
         lambda p: folder_with(p, {"0.png": two_colour()},
                               raw_text=b"\xef\xbb\xbf" + json.dumps({"0.png": ["a cat {} a dog"]}).encode()),
         lambda e: e.templates == [["a cat {} a dog"]]),
        ("punctuation_next_to_the_slot",
         lambda p: folder_with(p, {"0.png": two_colour()}, text={"0.png": ["a cat {}, a dog", "({}) x"]}),
         lambda e: e.templates == [["a cat {}, a dog", "({}) x"]]),
    ]


@pytest.mark.parametrize("case,build,check", _load_ok_cases(), ids=[c[0] for c in _load_ok_cases()])
def test_awkward_but_valid_exemplars_load_as_a_person_sees_them(host, case, build, check):
    build(host.input / case)
    exemplars, images = run_node(host, "ReVersionLoadExemplars", "load", folder=case, size=32, center_crop=False)
    assert images.shape[1:] == (32, 32, 3)
    assert check(exemplars), case


BAD_FOLDERS = [
    ("missing_folder", lambda p: None, "not found"),
    ("empty_folder", lambda p: p.mkdir(), "no images in"),
    ("truncated_png",
     lambda p: folder_with(p, {"0.png": two_colour(), "1.png": b"\x89PNG\r\n\x1a\n\x00\x00"}),
     r"cannot read image 1.png .*replace or remove"),
    ("many_stray_files_named_only_a_few",
     lambda p: (folder_with(p, {"0.png": two_colour()}),
                [(p / f"notes{i}.txt").write_text("x") for i in range(10)]),
     r"10 file\(s\) that are not images \(notes0.txt, notes1.txt, notes2.txt and 7 more\)"),
    ("glued_slot", lambda p: folder_with(p, {"0.png": two_colour()}, text={"0.png": ["circle{}a"]}),
     r"glues '\{\}' to a word; put spaces around it"),
    ("two_slots", lambda p: folder_with(p, {"0.png": two_colour()}, text={"0.png": ["a {} b {}"]}),
     "has 2 '{}' slot"),
    ("no_slot", lambda p: folder_with(p, {"0.png": two_colour()}, text={"0.png": ["a cat a dog"]}),
     "has no '{}' slot"),
    ("text_json_not_json", lambda p: folder_with(p, {"0.png": two_colour()}, raw_text=b"{nope"), "not valid JSON"),
    ("text_json_names_missing_image",
     lambda p: folder_with(p, {"0.png": two_colour()}, text={"0.png": ["a {} b"], "9.png": ["a {} b"]}),
     r"not in the folder \(9.png\); fix the names or add the images"),
    ("no_templates_at_all", lambda p: folder_with(p, {"0.png": two_colour()}, text=False), "no text.json .* and no template"),
]


@pytest.mark.parametrize("case,build,message", BAD_FOLDERS, ids=[c[0] for c in BAD_FOLDERS])
def test_bad_exemplar_folders_fail_with_the_fix_and_change_nothing(host, case, build, message):
    build(host.input / case)
    before = snapshot(host.input, host.embeddings)
    with pytest.raises(ex.ExemplarError, match=message):
        run_node(host, "ReVersionLoadExemplars", "load", folder=case, size=32, center_crop=False)
    assert snapshot(host.input, host.embeddings) == before


def test_oversized_image_is_refused_by_name(host, monkeypatch):
    """Pillow's decompression-bomb guard, with the file's name and the fix (limit lowered so
    the test needs no giant file)."""
    folder_with(host.input / "bomb", {"0.png": two_colour(), "huge.png": two_colour(100, 100)})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    with pytest.raises(ex.ExemplarError, match=r"image huge.png has more pixels than Pillow's safety limit.*downscale it"):
        run_node(host, "ReVersionLoadExemplars", "load", folder="bomb", size=32, center_crop=False)


@pytest.mark.parametrize("folder", ["../../../../etc", "/etc", "..", "ok/../../.."])
def test_exemplar_folders_outside_the_input_folder_are_refused_without_a_listing(host, folder):
    with pytest.raises(ex.ExemplarError, match="outside ComfyUI's input folder.*REVERSION_EXEMPLAR_ROOTS") as err:
        run_node(host, "ReVersionLoadExemplars", "load", folder=folder, size=32, center_crop=False)
    assert "passwd" not in str(err.value) and "hostname" not in str(err.value)


def test_a_symlink_out_of_the_input_folder_is_refused(host, tmp_path):
    outside = folder_with(tmp_path / "secret", {"0.png": two_colour()})
    (host.input / "sneaky").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ex.ExemplarError, match="outside ComfyUI's input folder"):
        run_node(host, "ReVersionLoadExemplars", "load", folder="sneaky", size=32, center_crop=False)


def test_the_server_can_allow_other_exemplar_folders(host, tmp_path, monkeypatch):
    outside = folder_with(tmp_path / "shared" / "hugs", {"0.png": two_colour()})
    monkeypatch.setenv("REVERSION_EXEMPLAR_ROOTS", str(tmp_path / "shared"))
    exemplars, _ = run_node(host, "ReVersionLoadExemplars", "load", folder=str(outside), size=32, center_crop=False)
    assert exemplars.names == ["0.png"]


def test_load_exemplars_node_resolves_folders_in_the_input_folder(host):
    folder = host.input / "rel_in_input"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    exemplars, images = run_node(host, "ReVersionLoadExemplars", "load", folder="rel_in_input", size=32,
                                 center_crop=False, template="a {} b")
    assert images.shape == (2, 32, 32, 3) and exemplars.templates == [["a {} b"]] * 2
    with pytest.raises(ex.ExemplarError, match="not found"):
        run_node(host, "ReVersionLoadExemplars", "load", folder="missing_folder", size=32, center_crop=False)
