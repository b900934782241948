"""Bad, hostile and unlucky input, as a user (or anyone who can reach /prompt) sends it.

Every row runs through the pack's real nodes inside a real ComfyUI; a representative subset
runs again over HTTP at the end. Each failing row asserts that the message names the fix and
that no file in the embeddings or input folder was written or changed; each row that should
load asserts what was loaded.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_node, run_node_ui
from conftest import train_inputs as shared_train_inputs
from reversion import exemplars as ex
from reversion import relation_file as rf


def snapshot(*folders) -> dict:
    """Every file under `folders` with its content hash: 'nothing written or changed'."""
    out = {}
    for folder in folders:
        for root, _, files in os.walk(folder):
            for f in files:
                p = os.path.join(root, f)
                out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


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


# ------------------------------------------------------------------ exemplar folders
# (case, build(folder) -> load kwargs, check(loaded exemplars) or None, error regex or None)

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


# ------------------------------------------------------------------ relation files

def write_safetensors(path, tensors, metadata=None):
    from safetensors.torch import save_file
    save_file(tensors, str(path), metadata=metadata)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/reversion_pwned",))


BAD_RELATIONS = [
    ("nan.safetensors", lambda p: write_safetensors(p, {"emb_params": torch.full((1, 768), float("nan"))}),
     r"768 NaN/Inf value\(s\): the file is broken"),
    ("inf.safetensors", lambda p: write_safetensors(p, {"emb_params": torch.tensor([[float("inf")] + [0.0] * 767])}),
     r"NaN/Inf"),
    ("huge.safetensors", lambda p: write_safetensors(p, {"emb_params": torch.full((1, 768), 1e6)}),
     r"values up to 1e\+06 .*broken or not an embedding"),
    ("block.safetensors", lambda p: write_safetensors(p, {"emb_params": torch.randn(2, 2, 32)}),
     r"shape \[2, 2, 32\]; a relation is one token vector"),
    ("three_tokens.safetensors", lambda p: write_safetensors(p, {"emb_params": torch.randn(3, 768)}),
     r"holds 3 vectors; a relation is one token"),
    ("integers.safetensors", lambda p: write_safetensors(p, {"emb_params": torch.ones(1, 768, dtype=torch.int32)}),
     r"torch.int32 values; a token vector is floating point"),
    ("corrupt.safetensors", lambda p: p.write_bytes(b"\xff" * 64),
     r"not a readable safetensors file \(corrupt or truncated"),
    ("truncated.safetensors", lambda p: (write_safetensors(p, {"emb_params": torch.randn(1, 768)}),
                                         p.write_bytes(p.read_bytes()[:100])),
     r"not a readable safetensors file"),
    ("missing_encoder.safetensors",
     lambda p: write_safetensors(p, {"clip_g": torch.randn(1, 1280)}, {"reversion.encoders": '{"clip_l": 768, "clip_g": 1280}'}),
     r"metadata lists encoder\(s\) clip_l but the file holds only clip_g"),
    ("number_encoders.safetensors",
     lambda p: write_safetensors(p, {"clip_l": torch.randn(1, 768)}, {"reversion.encoders": "101"}),
     r"'reversion.encoders' should be a JSON dict, got int"),
    ("bad_steps.safetensors",
     lambda p: write_safetensors(p, {"emb_params": torch.randn(1, 768)}, {"reversion.steps": "many"}),
     r"'reversion.steps' is 'many', not a whole number"),
    ("bad_json.safetensors",
     lambda p: write_safetensors(p, {"emb_params": torch.randn(1, 768)}, {"reversion.hyperparameters": "{lr:"}),
     r"'reversion.hyperparameters' is not valid JSON"),
    ("evil.bin", lambda p: p.write_bytes(pickle.dumps({"<R>": Evil()})), "refusing to unpickle"),
    ("nan_official.bin", lambda p: torch.save({"<R>": torch.full((768,), float("nan"))}, str(p)), "NaN/Inf"),
]


@pytest.mark.parametrize("name,build,message", BAD_RELATIONS, ids=[c[0] for c in BAD_RELATIONS])
def test_bad_relation_files_are_refused_on_load(host, name, build, message):
    build(host.embeddings / name)
    before = snapshot(host.input, host.embeddings)
    with pytest.raises(rf.RelationFileError, match=message):
        run_node(host, "ReVersionLoadRelation", "load", relation_file=name)
    assert snapshot(host.input, host.embeddings) == before
    assert not os.path.exists("/tmp/reversion_pwned")


# ------------------------------------------------------------- names and templates

def toy_exemplars(templates=("a cat {} a dog",)):
    return ex.from_images(torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0)), list(templates))


def train_inputs(model, clip, vae, name, **overrides):
    """conftest's inputs, but one update on 32 px exemplars and never overwriting."""
    return shared_train_inputs(model, clip, vae, name,
                               **{"exemplars": toy_exemplars(), "steps": 1, "overwrite": False, **overrides})


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if an update starts: the error must come before training."""
    from reversion import trainer

    def refuse(*a, **k):
        raise AssertionError("training started although the input was bad")
    monkeypatch.setattr(trainer, "train", refuse)


@pytest.mark.parametrize("name,message", [
    ("my rel", "no spaces"),
    ("x" * 65, "1-64 characters"),
    ("../escape", "no folders"),
    ("rel/sub", "no folders"),
    ("", "1-64 characters"),
    ("кошка", "ASCII"),
])
def test_bad_names_are_refused_at_queue_time(host, name, message):
    for node in ("ReVersionTrainRelation", "ReVersionSaveRelation"):
        verdict = host.nodes.NODE_CLASS_MAPPINGS[node].VALIDATE_INPUTS(name=name, overwrite=False)
        assert isinstance(verdict, str) and message in verdict, (node, verdict)


def test_taken_names_are_refused_at_queue_time_before_anything_runs(host):
    (host.embeddings / "taken.safetensors").write_bytes(b"someone else's file")
    for node in ("ReVersionTrainRelation", "ReVersionSaveRelation"):
        cls = host.nodes.NODE_CLASS_MAPPINGS[node]
        verdict = cls.VALIDATE_INPUTS(name="taken", overwrite=False)
        assert isinstance(verdict, str) and "already exists" in verdict and "overwrite" in verdict
        assert cls.VALIDATE_INPUTS(name="taken", overwrite=True) is True
        assert cls.VALIDATE_INPUTS(name="free_name", overwrite=False) is True
    assert (host.embeddings / "taken.safetensors").read_bytes() == b"someone else's file"


@pytest.mark.parametrize("template,message", [
    (" ".join(["a big red cat"] * 20) + " {} a dog", r"is \d+ tokens for the clip_[lg] tokenizer; .*at most 75.*shorten it"),
    ("a wexmondays cat {} a dog", "contains 'wexmondays', the word this pack uses internally"),
])
def test_templates_are_checked_against_every_tokenizer_before_the_first_update(host, tiny, no_training, template,
                                                                               message):
    from reversion_comfy.adapter import RelationError
    for family in ("sd1", "sdxl"):
        model, clip, vae = tiny(family)
        exemplars = toy_exemplars(["a cat {} a dog", template])   # the bad one is not drawn first
        before = snapshot(host.embeddings)
        with pytest.raises(RelationError, match=message) as err:
            run_node(host, "ReVersionTrainRelation", "train",
                     **train_inputs(model, clip, vae, f"never_{family}", exemplars=exemplars))
        assert "{}" in str(err.value) or "wexmondays" in str(err.value)   # quotes the user's template
        assert snapshot(host.embeddings) == before


def test_prompts_with_the_stand_in_word_are_refused_not_turned_into_the_relation(host, tiny):
    from reversion_comfy.adapter import RelationError
    _, clip, _ = tiny("sd1")
    relation = rf.Relation({"clip_l": torch.randn(768) * 0.1})
    with pytest.raises(RelationError, match="contains 'wexmondays'"):
        run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, relation=relation,
                 text="wexmondays, a cat <R> a dog")
    # the common trigger word 'ohwx' is an ordinary word now
    (cond,) = run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, relation=relation,
                       text="ohwx, a cat <R> a dog")
    (plain,) = run_node(host, "CLIPTextEncode", "encode", clip=clip, text="ohwx, a cat and a dog")
    assert cond[0][0].shape == plain[0][0].shape and not torch.equal(cond[0][0], plain[0][0])


# -------------------------------------------------------------- after training

def test_same_seed_gives_a_byte_identical_file(host, tiny):
    model, clip, vae = tiny("sd1")
    path = host.embeddings / "bytes_same.safetensors"
    run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "bytes_same", steps=2, train_seed=5))
    first = path.read_bytes()
    time.sleep(1.1)            # a wall-clock field would now differ
    run_node(host, "ReVersionTrainRelation", "train",
             **train_inputs(model, clip, vae, "bytes_same", steps=2, train_seed=5, overwrite=True))
    assert path.read_bytes() == first
    run_node(host, "ReVersionTrainRelation", "train",
             **train_inputs(model, clip, vae, "bytes_same", steps=2, train_seed=6, overwrite=True))
    assert path.read_bytes() != first


def test_a_failed_write_after_training_keeps_the_relation_and_says_where(host, tiny, monkeypatch):
    import errno
    import folder_paths
    model, clip, vae = tiny("sd1")
    real_save = rf.save
    target = host.embeddings / "disk_full.safetensors"

    def full_disk(relation, path, overwrite=False):
        if os.path.abspath(path) == os.path.abspath(target):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(relation, path, overwrite)
    monkeypatch.setattr(rf, "save", full_disk)
    with pytest.raises(rf.RelationFileError, match=r"could not write .*No space left on device.*kept at (\S+):") as err:
        run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "disk_full", steps=2))
    kept = str(err.value).split("kept at ")[1].split(": move it")[0]
    assert kept.startswith(os.path.join(folder_paths.get_output_directory(), "reversion_recovered"))
    relation = rf.load(kept)
    assert relation.steps == 2 and torch.isfinite(relation.vectors["clip_l"]).all()
    assert not target.exists()


def test_relation_files_get_ordinary_permissions(host, tiny):
    relation = rf.Relation({"clip_l": torch.randn(768) * 0.1})
    run_node_ui(host, "ReVersionSaveRelation", "save", relation=relation, name="perm_check", overwrite=False)
    mask = os.umask(0)
    os.umask(mask)
    assert (host.embeddings / "perm_check.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_deleted_relation_file_makes_the_node_run_again(host, tiny):
    """IS_CHANGED: stable while the file is as the last run wrote it, new once it is deleted."""
    model, clip, vae = tiny("sd1")
    cls = host.nodes.NODE_CLASS_MAPPINGS["ReVersionTrainRelation"]
    first = cls.IS_CHANGED(name="requeued")
    run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "requeued"))
    assert cls.IS_CHANGED(name="requeued") == first                 # cached: the file is ours
    assert cls.VALIDATE_INPUTS(name="requeued", overwrite=False) is True
    (host.embeddings / "requeued.safetensors").unlink()
    changed = cls.IS_CHANGED(name="requeued")
    assert changed != first                                        # deleted: run again
    run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "requeued"))
    assert cls.IS_CHANGED(name="requeued") == changed              # and cached again afterwards


# ------------------------------------------------------------------- interrupt

def test_cancel_is_honoured_within_one_unet_block(host, tiny, monkeypatch):
    """Cancel (ComfyUI's interrupt flag) mid-update stops training at the next UNet block,
    even when memory=auto sends the whole update (16 micro-batches of 2) through the model
    in one forward. Prints the latency."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as om
    import comfy.model_management as mm
    model, clip, vae = tiny("sd1")
    blocks = []            # (time, exemplars) of every UNet block run with grad
    real = om.forward_timestep_embed

    def counted(ts, x, *a, **k):
        if torch.is_grad_enabled():
            blocks.append((time.perf_counter(), x.shape[0]))
        return real(ts, x, *a, **k)
    monkeypatch.setattr(om, "forward_timestep_embed", counted)
    state = {}

    def press_cancel():
        while sum(n == 32 for _, n in blocks) < 3:      # three blocks into the update's forward
            time.sleep(0.0005)
        state["t"], state["blocks"] = time.perf_counter(), len(blocks)
        mm.interrupt_current_processing(True)
    presser = threading.Thread(target=press_cancel, daemon=True)
    presser.start()
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_node(host, "ReVersionTrainRelation", "train",
                     **train_inputs(model, clip, vae, "cancelled", steps=5, grad_accum=16, batch_size=2,
                                    memory="auto"))
        stopped = time.perf_counter()
    finally:
        mm.interrupt_current_processing(False)
        presser.join(5)
    per_forward = sum(n == 1 for _, n in blocks)         # the memory probe's forward of one exemplar
    training = [t for t, n in blocks if n == 32]          # auto chose one forward of the whole update
    assert per_forward > 5 and 3 <= len(training) < per_forward   # stopped inside that forward...
    assert len(blocks) - state["blocks"] <= 1                     # ...at most the block under way
    assert not (host.embeddings / "cancelled.safetensors").exists()
    print(f"\ninterrupt latency: {stopped - state['t']:.3f} s (one block of 32 exemplars "
          f"~{(training[-1] - training[0]) / max(1, len(training) - 1):.3f} s)")


# ------------------------------------------------------------------- over HTTP

def toy_training(name: str, **overrides) -> dict:
    """API-format graph: toy model + 2 exemplars -> Train Relation (1 update)."""
    train = dict(model=["1", 0], clip=["1", 1], vae=["1", 2], exemplars=["2", 0], name=name, overwrite=False,
                 steps=1, batch_size=2, grad_accum=1, learning_rate=1e-3, scale_lr=False, weight_decay=0.01,
                 steering_weight=0.01, num_positives=4, temperature=0.07, focal_alpha=0.5, init_word="and", train_seed=1)
    train.update(overrides)
    return {"1": {"class_type": "ReVersionToyWorldModel", "inputs": {}},
            "2": {"class_type": "ReVersionToyWorldExemplars", "inputs": {"relation": "above", "count": 2, "scene_seed": 0}},
            "3": {"class_type": "ReVersionTrainRelation", "inputs": train}}


def error_of(entry: dict) -> str:
    messages = dict((m[0], m[1]) for m in entry["status"]["messages"])
    return messages["execution_error"]["exception_message"]


def test_http_directory_escape_is_refused_without_a_listing(server):
    graph = {"1": {"class_type": "ReVersionLoadExemplars",
                   "inputs": {"folder": "../../../../etc", "size": 64, "center_crop": False}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}}}
    entry = server.wait(server.queue(graph), timeout=120)
    message = error_of(entry)
    assert "outside ComfyUI's input folder" in message and "REVERSION_EXEMPLAR_ROOTS" in message
    assert "passwd" not in json.dumps(entry)


def test_http_bad_and_taken_names_are_refused_when_queued(server):
    (server.embeddings / "taken_http.safetensors").write_bytes(b"keep me")
    with pytest.raises(RuntimeError, match="no spaces"):
        server.queue(toy_training("my rel"))
    graph = toy_training("fresh_http")
    graph["4"] = {"class_type": "ReVersionSaveRelation",
                  "inputs": {"relation": ["3", 0], "name": "taken_http", "overwrite": False}}
    # ComfyUI answers /prompt with the Save node's error at once (the front end marks the node
    # before anything runs) and queues only the outputs that validated: the training still
    # writes its own file, and the taken file is left alone.
    answer = server.post("/prompt", {"prompt": graph, "client_id": server.client_id})
    errors = json.dumps(answer.get("node_errors", {}).get("4", {}))
    assert "taken_http.safetensors already exists" in errors and "overwrite" in errors
    entry = server.wait(answer["prompt_id"], timeout=300)
    assert entry["status"]["status_str"] == "success" and "4" not in entry.get("outputs", {})
    assert (server.embeddings / "taken_http.safetensors").read_bytes() == b"keep me"


def cached_nodes(entry: dict) -> list[str]:
    return [n for m in entry["status"]["messages"] if m[0] == "execution_cached" for n in m[1]["nodes"]]


def test_http_requeue_is_cached_until_the_relation_file_is_deleted(server):
    path = server.embeddings / "requeue_http.safetensors"
    server.run(toy_training("requeue_http"), timeout=300)
    written = path.stat().st_mtime_ns
    entry = server.run(toy_training("requeue_http"), timeout=300)       # unchanged graph: from the cache
    assert "3" in cached_nodes(entry) and path.stat().st_mtime_ns == written
    path.unlink()
    entry = server.run(toy_training("requeue_http"), timeout=300)       # deleted: trained and written again
    assert "3" not in cached_nodes(entry)
    assert path.exists() and rf.load(path).steps == 1
    assert "3" in cached_nodes(server.run(toy_training("requeue_http"), timeout=300))   # and cached again


def test_http_broken_relation_file_fails_with_the_reason(server):
    write_safetensors(server.embeddings / "nan_http.safetensors", {"emb_params": torch.full((1, 128), float("nan"))})
    graph = {"1": {"class_type": "ReVersionToyWorldModel", "inputs": {}},
             "2": {"class_type": "ReVersionLoadRelation", "inputs": {"relation_file": "nan_http.safetensors"}},
             "3": {"class_type": "ReVersionRelationTextEncode",
                   "inputs": {"clip": ["1", 1], "relation": ["2", 0], "text": "a red circle <R> a blue square"}},
             "4": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
             "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
             "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                        "latent_image": ["5", 0], "seed": 0, "steps": 1, "cfg": 1.0,
                                                        "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
             "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
             "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}}
    entry = server.wait(server.queue(graph), timeout=300)
    assert entry["status"]["status_str"] == "error"
    assert "NaN/Inf value(s): the file is broken" in error_of(entry)
