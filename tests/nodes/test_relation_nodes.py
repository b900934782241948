"""Relation Text Encode, Save Relation and Load Relation (nodes/relation_nodes.py): the
trained relation through stock CLIPTextEncode with `embedding:name` equals Relation Text
Encode bit for bit (SD1, SD2-v, SDXL); files survive Save and Load; official ReVersion
files work; bad files are refused with the reason and change nothing."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from comfyui_reversion.reversion import relation_file as rf
from conftest import assert_ordinary_mode, run_node, run_node_ui, snapshot, train_inputs

FAMILIES = ["sd1", "sd2v", "sdxl"]


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_file_through_stock_clip_text_encode_equals_relation_text_encode(host, tiny, family):
    model, clip, vae = tiny(family)
    relation, curve, samples = run_node(host, "ReVersionTrainRelation", "train",
                               **train_inputs(model, clip, vae, f"stock_{family}"))
    assert curve.shape[0] == 1 and curve.shape[-1] == 3
    assert samples.shape[0] == 1 and samples.shape[-1] == 3 and torch.isfinite(samples).all()
    assert (host.embeddings / f"stock_{family}.safetensors").is_file()
    for text in ("a cat <R> a dog", "(a cat:1.2) <R>, a dog in a garden"):
        (ours,) = run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, relation=relation, text=text)
        (stock,) = run_node(host, "CLIPTextEncode", "encode", clip=clip,
                            text=text.replace("<R>", f"embedding:stock_{family}"))
        assert torch.equal(ours[0][0], stock[0][0])
        if family == "sdxl":
            assert torch.equal(ours[0][1]["pooled_output"], stock[0][1]["pooled_output"])
    (plain,) = run_node(host, "CLIPTextEncode", "encode", clip=clip, text="a cat and a dog")
    assert not torch.equal(ours[0][0], plain[0][0])     # the relation changed something


def test_relation_survives_save_and_load_nodes(host, tiny):
    model, clip, vae = tiny("sd1")
    relation, _, _ = run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "roundtrip"))
    run_node(host, "ReVersionSaveRelation", "save", relation=relation, name="roundtrip_copy", overwrite=False)
    (loaded,) = run_node(host, "ReVersionLoadRelation", "load", relation_file="roundtrip_copy.safetensors")
    assert torch.equal(loaded.vectors["clip_l"], relation.vectors["clip_l"])
    assert loaded.steps == 2 and loaded.init_word == "and" and loaded.hyperparameters["lr"] == pytest.approx(1e-2)
    assert set(loaded.final_losses) >= {"loss", "denoise", "steer"}
    assert len(loaded.nearest_words["clip_l"]) == 5 and all(w.isalpha() for w in loaded.nearest_words["clip_l"])


def test_official_learned_embeds_bin_works_in_both_routes(host, tiny):
    _, clip, _ = tiny("sd1")
    vec = torch.randn(768, generator=torch.Generator().manual_seed(9))
    torch.save({"<R>": vec}, host.embeddings / "official_rel.bin")
    (relation,) = run_node(host, "ReVersionLoadRelation", "load", relation_file="official_rel.bin")
    (ours,) = run_node(host, "ReVersionRelationTextEncode", "encode", clip=clip, relation=relation, text="cat <R> stone")
    (stock,) = run_node(host, "CLIPTextEncode", "encode", clip=clip, text="cat embedding:official_rel stone")
    assert torch.equal(ours[0][0], stock[0][0])


def test_save_relation_confirms_on_the_node(host, tiny):
    rel = rf.Relation({"clip_l": torch.randn(768)}, name="confirm")
    out = run_node_ui(host, "ReVersionSaveRelation", "save", relation=rel, name="ui_confirm", overwrite=True)
    assert out["ui"]["text"] == ["saved ui_confirm.safetensors (embedding:ui_confirm)"]
    assert_ordinary_mode(host.embeddings / "ui_confirm.safetensors")


def test_load_relation_with_no_files_explains_itself(host, monkeypatch):
    import folder_paths
    monkeypatch.setattr(folder_paths, "get_filename_list", lambda kind: [])
    cls = host.nodes.NODE_CLASS_MAPPINGS["ReVersionLoadRelation"]
    choices = cls.INPUT_TYPES()["required"]["relation_file"][0]
    assert choices == ["(no relation files yet)"]
    with pytest.raises(rf.RelationFileError, match="Train Relation"):
        cls().load(choices[0])


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
     r"shape \[2, 2, 32\]; a relation is 1 to 16 token vectors"),
    ("many_tokens.safetensors", lambda p: write_safetensors(p, {"emb_params": torch.randn(17, 768)}),
     r"holds 17 vectors; a relation is 1 to 16 token vectors"),
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
    # a text file read as a legacy pickle used to fail with a bare "101" (KeyError of its first byte)
    ("text.pt", lambda p: p.write_text("hello, not an embedding"), "text.pt is not a plain tensor file: damaged"),
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
