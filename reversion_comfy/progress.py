"""What Train Relation shows while it trains: the node's progress bar with a loss-curve
picture (the latest preview sample beside it), and a progress line in the server console."""
from __future__ import annotations

import logging
import time

from PIL import Image

from . import host
from .loss_plot import loss_curve

log = logging.getLogger("ReVersion")


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_line(step: int, total: int, elapsed: float, record: dict, first: int = 0) -> str:
    """'update 50/300 (17%), loss 0.12 (denoise 0.1, steer 2.1), 1.2 s/update, 5 min 00 s left'
    (`elapsed`: seconds since update `first`, where this run began: 0, or a resumed run's)."""
    rate = elapsed / max(step - first, 1)
    losses = ", ".join(f"{k} {record[k]:.4g}" for k in ("denoise", "steer", "swap") if k in record)
    return (f"update {step}/{total} ({100 * step // max(total, 1)}%), loss {record.get('loss', float('nan')):.4g}"
            f"{f' ({losses})' if losses else ''}, {rate:.2f} s/update, {format_seconds(rate * (total - step))} left")


def progress_callback(total: int, preview=None, preview_every: int = 0):
    """Per update: honour Cancel, advance the progress bar, show the loss curve (with the time
    left) and, every `preview_every` updates, a sample drawn with the current vectors beside
    it (`preview(vectors)` -> IMAGE); log a line to the server console about every tenth of
    the run (at most every 100 updates). The callback counts `previews` and their
    `preview_seconds`, and keeps the latest `sample` and the update it was drawn at
    (`sample_step`).

    Call `callback.begin(first_step)` when the first update starts (after the exemplars are
    encoded and the model loaded; `first_step`: the updates a resumed run already has), so
    that the time per update and the time left count updates only. A preview's sampler
    reports its progress as the training bar's (host.progress_held): one bar for the run."""
    bar = host.progress_bar(total)
    history = []
    every = max(1, total // 20)
    log_every = max(1, min(100, total // 10))
    clock = {"start": time.monotonic(), "first": 0}

    def begin(first_step: int = 0) -> None:
        clock.update(start=time.monotonic(), first=first_step)

    def callback(step, total, record, vectors):
        host.check_interrupted()
        history.append(record)
        drawn = preview is not None and step % preview_every == 0
        if drawn:
            began = time.perf_counter()
            with host.progress_held(step, total):
                callback.sample, callback.sample_step = preview(vectors), step
            callback.preview_seconds += time.perf_counter() - began
            callback.previews += 1
        elapsed = time.monotonic() - clock["start"]
        if step % log_every == 0 or step == total:
            log.info("[ReVersion] %s", progress_line(step, total, elapsed, record, clock["first"]))
        shown = None
        if drawn or step % every == 0 or step == total:
            rate = elapsed / max(step - clock["first"], 1)
            short = f"update {step}/{total}, {format_seconds(rate * (total - step))} left"
            shown = ("PNG", side_by_side(loss_curve(history, status=short), callback.sample), 768)
        bar.update_absolute(step, total, shown)
    callback.begin = begin
    callback.preview_seconds = 0.0
    callback.previews = 0
    callback.sample, callback.sample_step = None, None
    return callback


def side_by_side(curve, sample):
    """The loss curve with the latest preview sample to its right, scaled to its height."""
    curve = Image.fromarray(curve)
    if sample is None:
        return curve
    picture = Image.fromarray((sample[0].numpy() * 255).round().astype("uint8")).resize(
        (curve.height, curve.height), Image.NEAREST)
    both = Image.new("RGB", (curve.width + picture.width, curve.height), (255, 255, 255))
    both.paste(curve, (0, 0))
    both.paste(picture, (curve.width, 0))
    return both
