"""What Train Relation shows while it trains (reversion_comfy/progress.py, loss_plot.py): the
progress bar with a loss-curve picture every update, console lines, the summary on the
node, the times, and a loss curve that stays readable."""
from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from conftest import run_node, train_inputs


def test_progress_bar_and_loss_preview_every_update(host, tiny):
    import comfy.utils
    model, clip, vae = tiny("sd1")
    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, **kw: seen.append((value, total, preview)))
    try:
        run_node(host, "ReVersionTrainRelation", "train", **train_inputs(model, clip, vae, "progress", steps=4))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    ours = [s for s in seen if s[1] == 4]
    assert [v for v, _, _ in ours] == [1, 2, 3, 4]
    assert all(p is not None and p[0] == "PNG" for _, _, p in ours)


def test_previews_never_move_the_training_bar_back(host, tiny):
    """A preview samples with its own progress bar; it used to report on the same node (33%
    -> 8% -> 100% -> 33%), as if training restarted. Now every report during training is
    the training bar's, and it never goes backwards."""
    import comfy.utils
    model, clip, vae = tiny("sd1")
    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, **kw: seen.append((value, total)))
    try:
        run_node(host, "ReVersionTrainRelation", "train",
                 **train_inputs(model, clip, vae, "held_bar", steps=4, preview_every=2, preview_steps=3))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    during = seen[:seen.index((4, 4)) + 1]
    assert {t for _, t in during} == {4}                               # no report of the sampler's 3 steps
    assert [v for v, _ in during] == sorted(v for v, _ in during)      # never backwards
    assert (2, 4) in during and len(during) > 4                        # the previews' reports hold it at 2 and 4


def test_time_per_update_counts_updates_only(host, monkeypatch):
    """The clock starts when the first update starts (not at the exemplars' encode), and a
    resumed run divides by the updates it ran, not by the absolute update number."""
    from comfyui_reversion.reversion_comfy import progress as mod
    now = {"t": 1000.0}
    monkeypatch.setattr(mod.time, "monotonic", lambda: now["t"])
    lines = []
    monkeypatch.setattr(mod.log, "info", lambda fmt, *args: lines.append(fmt % args))
    callback = mod.progress_callback(4)
    now["t"] += 60                                 # encoding the exemplars, loading the model
    callback.begin(2)                              # resumed after 2 updates
    now["t"] += 7
    callback(3, 4, {"loss": 1.0, "denoise": 1.0, "steer": 1.0}, {})
    assert lines[-1].endswith("update 3/4 (75%), loss 1 (denoise 1, steer 1), 7.00 s/update, 7 s left")


def test_training_logs_progress_and_reports_on_the_node(host, tiny, caplog):
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
                        r"loss [0-9.e-]+, (fast|lean) memory; 2 exemplars \(the paper uses 4-10: .*\)", text), text
    relation, curve, samples = out["result"]
    assert curve.shape[0] == 1 and curve.shape[-1] == 3


@pytest.mark.parametrize("seconds,text", [(5, "5 s"), (59.6, "1 min 00 s"), (125, "2 min 05 s"),
                                          (3 * 3600 + 65, "3 h 01 min")])
def test_times_read_as_seconds_minutes_and_hours(host, seconds, text):
    from comfyui_reversion.reversion_comfy import progress as mod
    assert mod.format_seconds(seconds) == text


def test_progress_line(host):
    from comfyui_reversion.reversion_comfy import progress as mod
    line = mod.progress_line(50, 300, 100.0, {"loss": 0.1, "denoise": 0.09, "steer": 1.5})
    assert line == "update 50/300 (16%), loss 0.1 (denoise 0.09, steer 1.5), 2.00 s/update, 8 min 20 s left"


def test_loss_curve_shares_one_log_axis_and_has_a_legend(host):
    from comfyui_reversion.reversion_comfy import loss_plot as plot
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


def test_loss_curve_draws_the_swap_term_and_its_zeros_on_the_floor(host):
    """With the swapped-object term on, a fourth series; once satisfied it is 0, drawn on the
    floor of the plot without stretching the axis to 1e-12 (denoising and steering stay
    about 1.3 decades apart, as without it)."""
    from comfyui_reversion.reversion_comfy import loss_plot as plot
    n = 200
    history = [{"loss": 0.12, "denoise": 0.1, "steer": 2.0, "swap": 0.01 if i < n // 2 else 0.0} for i in range(n)]
    img = plot.loss_curve(history)

    def rows_of(colour):
        mask = np.all(np.abs(img.astype(int) - colour) < 30, axis=-1)
        rows = np.nonzero(mask.any(axis=1))[0]
        return rows[rows > 50]                    # the plot, not the legend
    steer, denoise, swap = (rows_of(plot.COLOURS[k]) for k in ("steer", "denoise", "swap"))
    assert len(swap) and swap.max() > denoise.max() + 50        # below denoising, down to the floor
    assert denoise.min() - steer.max() > 80                      # the axis was not squashed by the zeros
