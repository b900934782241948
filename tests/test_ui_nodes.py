"""What the ComfyUI window does with the node definitions (issue 8): exact float widgets in
both front ends, no randomised seeds, Markdown-safe descriptions, help pages, status text
on the node, console log lines while training, a readable loss curve."""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import run_node

REPO = Path(__file__).resolve().parent.parent
LEARNING_RATES = [2.5e-4, 6.25e-4, 3.125e-5, 1.25e-4, 1e-6, 2e-3, 1e-2]


def pack_nodes(host):
    return {k: v for k, v in host.nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("ReVersion")}


def widget_inputs(cls):
    spec = cls.INPUT_TYPES()
    for group in ("required", "optional"):
        for name, entry in spec.get(group, {}).items():
            yield name, entry[0], (entry[1] if len(entry) > 1 else {})


def js_round(v: float, ndigits: int) -> float:
    """Number(x.toFixed(n)) for the values used here (half away from zero on the decimal)."""
    return float(f"{v:.{ndigits}f}")


def new_frontend_value(v: float, step: float) -> float:
    """What front end 1.32.x stores for a FLOAT widget set to v (useFloatWidget + onFloatValueChange)."""
    precision = max(0, -math.floor(math.log10(step)))
    rnd = 10.0 ** -precision
    return js_round(round(v / rnd) * rnd, precision) if precision else v


def old_frontend_value(v: float, step: float) -> float:
    """What the 2024 front end stores (widgets.js getNumberDefaults + FLOAT callback)."""
    precision = max(0, -math.floor(math.log10(step)))
    rnd = round(1e6 * 0.1 ** precision) / 1e6
    return round(v / rnd) * rnd if rnd else v


def test_pack_nodes_loaded(host):
    assert len(pack_nodes(host)) == 8


def test_no_widget_is_randomised_after_a_run(host):
    for node_id, cls in pack_nodes(host).items():
        for name, kind, opts in widget_inputs(cls):
            # both front ends add "control after generate: randomize" to an INT named seed/noise_seed
            assert name not in ("seed", "noise_seed"), (node_id, name)
            if kind == "INT" and "seed" in name:
                assert opts.get("control_after_generate") is False, (node_id, name)


def test_float_widgets_keep_the_values_workflows_hold(host):
    train = pack_nodes(host)["ReVersionTrainRelation"]
    floats = {name: opts for name, kind, opts in widget_inputs(train) if kind == "FLOAT"}
    for lr in LEARNING_RATES + [floats["learning_rate"]["min"]]:
        step = floats["learning_rate"]["step"]
        assert new_frontend_value(lr, step) == lr, lr
        assert old_frontend_value(lr, step) == pytest.approx(lr, rel=1e-12, abs=0), lr
    assert new_frontend_value(6.25e-4, 1e-5) != 6.25e-4         # the old step lost it (0.00062)
    for node_id, cls in pack_nodes(host).items():
        for name, kind, opts in widget_inputs(cls):
            if kind == "FLOAT":
                assert "round" not in opts, (node_id, name)     # a round option overrides the exact default
                assert new_frontend_value(opts["default"], opts["step"]) == opts["default"], (node_id, name)
                assert new_frontend_value(opts["min"], opts["step"]) == opts["min"], (node_id, name)
    for v in (0.01, 0.001, 1e-4):
        assert new_frontend_value(v, floats["weight_decay"]["step"]) == v
        assert new_frontend_value(v, floats["steering_weight"]["step"]) == v


def test_descriptions_render_as_markdown_without_losing_text(host):
    for node_id, cls in pack_nodes(host).items():
        texts = [getattr(cls, "DESCRIPTION", "")]
        for text in texts:
            outside_code = re.sub(r"`[^`]*`", "", text)
            assert "<" not in outside_code and ">" not in outside_code, (node_id, text)
            assert text.count("`") % 2 == 0, (node_id, text)
    assert "`<R>`" in pack_nodes(host)["ReVersionTrainRelation"].DESCRIPTION


def test_help_pages_and_front_end_extension_are_served_from_web_directory(host):
    init = (REPO / "__init__.py").read_text()
    assert 'WEB_DIRECTORY = "./web"' in init
    for node_id in pack_nodes(host):
        page = REPO / "web" / "docs" / f"{node_id}.md"
        assert page.is_file(), page                               # /extensions/<pack>/docs/<NodeClass>.md
        assert page.read_text().startswith("# "), page
    js = (REPO / "web" / "js" / "reversion_ui.js").read_text()
    assert "maxFractionDigits" in js and "onExecuted" in js


def test_display_names_are_short(host):
    for node_id, name in host.nodes.NODE_DISPLAY_NAME_MAPPINGS.items():
        if node_id.startswith("ReVersion"):
            assert len(name) <= 24, name


def test_load_relation_with_no_files_explains_itself(host, monkeypatch):
    import folder_paths
    from reversion import relation_file as rf
    monkeypatch.setattr(folder_paths, "get_filename_list", lambda kind: [])
    cls = pack_nodes(host)["ReVersionLoadRelation"]
    choices = cls.INPUT_TYPES()["required"]["relation_file"][0]
    assert choices == ["(no relation files yet)"]
    with pytest.raises(rf.RelationFileError, match="Train Relation"):
        cls().load(choices[0])


def test_save_relation_confirms_on_the_node(host, tiny):
    import torch
    from reversion import relation_file as rf
    rel = rf.Relation({"clip_l": torch.randn(768)}, name="confirm")
    out = run_node(host, "ReVersionSaveRelation", "save", relation=rel, name="ui_confirm", overwrite=True)
    assert out["ui"]["text"] == ["saved ui_confirm.safetensors (embedding:ui_confirm)"]
    assert (host.embeddings / "ui_confirm.safetensors").stat().st_mode & 0o044 == 0o044   # readable by others


def test_training_logs_progress_and_reports_on_the_node(host, tiny, caplog):
    from conftest import train_inputs
    model, clip, vae = tiny("sd1")
    node = host.node("ReVersionTrainRelation")
    import torch
    with caplog.at_level(logging.INFO, logger="ReVersion"), torch.inference_mode():
        out = node.train(**train_inputs(model, clip, vae, "ui_logged", steps=4))
    lines = [r.getMessage() for r in caplog.records if r.name == "ReVersion"]
    progress = [line for line in lines if "update " in line and " left" in line]
    assert [line.split("update ")[1].split(" ")[0] for line in progress] == ["1/4", "2/4", "3/4", "4/4"]
    assert re.search(r"update 4/4 \(100%\), loss [0-9.e-]+ \(denoise [0-9.e-]+, steer [0-9.e-]+\), "
                     r"[0-9.]+ s/update, 0 s left", progress[-1])
    assert any("saved ui_logged.safetensors" in line for line in lines)
    text = out["ui"]["text"][0]
    assert re.fullmatch(r"saved ui_logged\.safetensors \(embedding:ui_logged\): 4 updates, \d+ s \(\+\d+ s for \d+ previews\), "
                        r"loss [0-9.e-]+, (fast|lean) memory", text), text
    relation, curve, samples = out["result"]
    assert curve.shape[0] == 1 and curve.shape[-1] == 3


@pytest.mark.parametrize("seconds,text", [(5, "5 s"), (59.6, "1 min 00 s"), (125, "2 min 05 s"),
                                          (3 * 3600 + 65, "3 h 01 min")])
def test_progress_line_and_times(host, seconds, text):
    import sys
    mod = sys.modules[host.nodes.NODE_CLASS_MAPPINGS["ReVersionTrainRelation"].__module__]
    assert mod.format_seconds(seconds) == text
    line = mod.progress_line(50, 300, 100.0, {"loss": 0.1, "denoise": 0.09, "steer": 1.5})
    assert line == "update 50/300 (16%), loss 0.1 (denoise 0.09, steer 1.5), 2.00 s/update, 8 min 20 s left"


def test_loss_curve_shares_one_log_axis_and_has_a_legend():
    from reversion import plot
    n = 200
    history = [{"loss": 0.12, "denoise": 0.1, "steer": 2.0 * (1 - i / (2 * n))} for i in range(n)]
    img = plot.loss_curve(history)
    assert img.shape == (480, 640, 3) and img.dtype == np.uint8

    def rows_of(colour):
        mask = np.all(np.abs(img.astype(int) - colour) < 30, axis=-1)
        return np.nonzero(mask.any(axis=1))[0]
    steer, denoise = rows_of(plot.COLOURS["steer"]), rows_of(plot.COLOURS["denoise"])
    plot_rows = lambda rows: rows[rows > 50]      # noqa: E731 (skip the legend row)
    # one shared log axis: steering (~20x larger) is drawn well above denoising
    assert plot_rows(steer).max() < plot_rows(denoise).min() - 100
    # a legend row above the plot in each colour
    assert steer.min() < 50 and denoise.min() < 50
    # axis labels: dark-grey tick text left of the plot frame
    left_strip = img[60:400, :85]
    assert (left_strip.sum(axis=-1) < 400).sum() > 50
    # smoothing: EMA of a constant is the constant; of a step, it is monotone between the levels
    s = plot.smooth_ema(np.array([1.0] * 10 + [2.0] * 10), span=5)
    assert s[0] == 1.0 and np.all(np.diff(s) >= 0) and 1.9 < s[-1] < 2.0
    assert plot.loss_curve([]).shape == (480, 640, 3)
