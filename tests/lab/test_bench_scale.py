"""bench/bench_scale.py's parts (bench/scale_*.py) on tiny models on the CPU, so that the
scripts are known to run when a GPU is lent: the GPU part, one CPU row, the profile, the
text bytes, and the paper's procedure re-implemented for the speed ratio (it must reach our losses)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from bench import measure, reference, scale_cpu, scale_estimate, scale_gpu, scale_profile


def json_file(path):
    return json.loads(path.read_text())


def test_gpu_benchmark_part_runs_on_tiny_models(host, tmp_path):
    """bench/bench_scale.py's GPU part (fp16/bf16 memory, time, gradient cosine to fp32),
    here on tiny models on the CPU so that the script is known to run when a GPU is lent."""
    report = scale_gpu.gpu_part(tmp_path / "gpu.json", tiny=True)
    assert (tmp_path / "gpu.json").is_file()
    rows = report["rows"]
    assert {(r["family"], r["dtype"], r["mode"]) for r in rows} == {
        ("sd1", d, m) for d in ("float32", "bfloat16") for m in ("fast", "lean", "fast, whole update")}
    assert {r["exemplars"] for r in rows if r["mode"] == "fast, whole update"} == {8}
    # whole updates through Train Relation's path, and the paper's procedure on the fp32 weights
    fp32, bf16 = report["updates"]
    assert fp32["losses"] == pytest.approx(fp32["reference_losses"], rel=1e-5)
    assert len(bf16["update_seconds"]) == 4 and bf16["plan"]["requested"] == "auto"
    assert report["complete"] and not report["failed"]
    assert all(r["tflop"] > 0 and r["seconds"] > 0 for r in rows)
    assert all(u["time_ratio_to_fp32_reference_last_update"] > 0 for u in (fp32, bf16))
    for r in rows:
        assert all(0 <= z < 0.5 for z in r["grad_zero_fraction"].values()), r     # a real gradient
        if r["dtype"] != "float32":   # tiny random models in bf16: ~0.93 here; a wrong gradient gives ~0
            assert all(0.8 < c <= 1.0 + 1e-6 for c in r["grad_cosine_to_fp32"].values()), r


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_benchmark_reference_procedure_reaches_our_losses(host, tiny, family):
    """bench_scale's re-implementation of the paper's per-update procedure (VAE every
    micro-batch, whole fp32 token table, other rows restored) gives our trainer's losses."""
    from comfyui_reversion.reversion.trainer import TrainConfig
    from comfyui_reversion.reversion_comfy import training
    model, clip, vae = tiny(family)      # SDXL: two text encoders, two tables, the pooled output
    exemplars = measure.exemplars_for(64)
    config = TrainConfig(steps=2, batch_size=2, grad_accum=2, seed=2023)
    with torch.inference_mode():
        ours = training.train_relation(model, clip, vae, exemplars, config, memory="fast")
        ref_losses, _ = reference.reference_train(model, clip, vae, exemplars, config)
    assert ref_losses == pytest.approx([r["loss"] for r in ours.history], rel=1e-5)
    assert ref_losses[0] != ref_losses[1]


def test_cpu_benchmark_row_measures_a_forced_split(host):
    """One row of bench_scale's CPU table (each runs in its own process there), here in
    this one on a tiny model: the forced micro-batch split is what trained, its peak and
    per-update time are recorded, and the host's choose_memory is put back afterwards."""
    from comfyui_reversion.reversion_comfy import memory
    before = memory.choose_memory
    row = scale_cpu.cpu_row("lean, split 2 -> 1+1", 64, "sd1", threads=1, tiny=True)
    assert memory.choose_memory is before
    assert (row["plan"]["mode"], row["plan"]["chunk"]) == ("lean", 1)
    assert 0 < row["estimate_gib"] < row["plan"]["needed_gib"]["lean"]     # one exemplar's, below a micro-batch's
    assert len(row["losses"]) == 1 and all(math.isfinite(x) for x in row["losses"])
    assert len(row["update_seconds"]) == 1 and row["peak_gib"] > 0 and row["tflops_per_update"] > 0


def test_profile_part_reports_where_an_update_goes(host, tmp_path):
    """bench_scale's profile (run on a GPU to find the gap to the FLOP floor), here on a tiny
    model on the CPU: whole updates through Train Relation's path, the profiled ones' op
    counts, and the forward + backward alone with the in-place guard's hook calls. It also
    pins how often an update reads the device back (each read stalls a GPU pipeline): the
    three loss figures and AdamW's step count, and no value comparison of pooled outputs."""
    report = scale_profile.profile_part(tmp_path / "profile.json", "sd1", 64, "float32", tiny=True, updates=3)
    assert json_file(tmp_path / "profile.json")["per_update"] == report["per_update"]
    assert report["plan"]["requested"] == "auto" and report["plan"]["chunk"] == 8     # the whole update at once
    assert len(report["update_seconds"]) == 3 and report["profiled_update_seconds"] > 0
    per_update = report["per_update"]
    assert per_update["cpu_ops"] > 1000                  # a UNet and a CLIP forward + backward
    assert per_update["item_syncs"] == 4 and per_update["equal_syncs"] == 0
    assert {op["op"] for op in report["top_cpu_ops"]} & {"aten::mm", "aten::addmm", "aten::convolution_backward"}
    for name, variant in report["forward_backward"].items():
        assert len(variant["seconds"]) == 3 and all(s > 0 for s in variant["seconds"]), name
        # every tensor autograd saves passes the guard once, and comes back once in backward
        assert variant["hook_calls"]["pack"] > 100 and variant["hook_calls"]["unpack"] > 100, name
        assert 0 < variant["hook_seconds"] < sum(variant["seconds"]), name


def test_text_bytes_part_measures_lean_text_and_leftovers(host, tmp_path):
    """bench_scale's text-bytes command (the figures docs/results.md quotes for full-size SD1.5
    and SDXL), here on the tiny SD1: lean keeps a fraction of the CLIP bytes fast saves, and
    planning memory leaves no tensor behind."""
    row = scale_estimate.text_bytes_part(tmp_path / "text.json", ("sd1",), tiny=True)["models"]["sd1"]
    assert json_file(tmp_path / "text.json")["models"]["sd1"] == row
    assert 0 < row["text_saved_lean_gib"] < row["text_saved_fast_gib"] / 3
    assert row["left_after_plan_memory_gib"] == 0


def test_emulated_cards_run_on_tiny_models(host, tmp_path):
    """bench/bench_cards.py (GPU: SD1.5 and SDXL on 4-24 GB caps), here on tiny models with
    ComfyUI's free memory capped: on a roomy card auto trains fast; on one too small for
    lean it keeps weights in CPU memory where the host can (0.3.x), else refuses before
    training; on one too small even for that it refuses, with the numbers."""
    import comfy.model_patcher
    from bench import bench_cards
    report = bench_cards.cards_part(tmp_path / "cards.json", caps=(0.01, 0.2, 4), tiny=True, updates=2, timeout=600)
    assert json_file(tmp_path / "cards.json") == report
    rows = {(r["family"], r["cap_gib"]): r for r in report["rows"]}
    assert set(rows) == {(f, c) for f in ("sd1", "sdxl") for c in (0.01, 0.2, 4)}
    offloads = hasattr(comfy.model_patcher.ModelPatcher, "partially_unload")
    for family in ("sd1", "sdxl"):
        roomy, small, tiny_card = rows[(family, 4)], rows[(family, 0.2)], rows[(family, 0.01)]
        assert roomy["result"] == "trained" and roomy["plan"]["mode"] == "fast" and len(roomy["losses"]) == 2
        assert len(roomy["update_seconds"]) == 1 and roomy["first_update_seconds"] > 0
        if offloads:
            assert small["result"] == "trained" and small["plan"]["mode"] == "offload", small
            assert small["plan"]["offload_gib"] > 0 and len(small["losses"]) == 2
        else:
            assert small["result"] == "refused before training", small
        assert tiny_card["result"] == "refused before training" and "not enough memory" in tiny_card["message"]
