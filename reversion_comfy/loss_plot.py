"""A loss-curve picture without a plotting library (PIL only), legible at node size.

All series share one logarithmic y axis (the steering loss is ~10-100x the denoising loss,
so a linear shared axis would flatten one of them, and one axis per series made the plot
unreadable). Each series is drawn raw (faint) and smoothed (exponential moving average),
with labelled axes and a legend in a font large enough to read when the front end shrinks
the picture to the node's width (~300 px).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = {"loss": (40, 90, 200), "denoise": (40, 150, 70), "steer": (220, 110, 20), "swap": (150, 60, 170)}
LABELS = {"loss": "total", "denoise": "denoising", "steer": "steering", "swap": "swap ranking"}


def font(size: int):
    """Pillow's bundled FreeType font at `size` px (the small bitmap font on old Pillow)."""
    try:
        return ImageFont.load_default(size=size)     # FreeType font bundled with Pillow >= 10.1
    except TypeError:                                # older Pillow: the small bitmap font
        return ImageFont.load_default()


def smooth_ema(values: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average with a bias-corrected start (no ramp from zero)."""
    if span <= 1 or len(values) < 2:
        return values.astype(np.float64)
    alpha = 2.0 / (span + 1)
    out = np.empty(len(values), dtype=np.float64)
    acc, weight = 0.0, 0.0
    for i, v in enumerate(values):
        acc = (1 - alpha) * acc + alpha * float(v)
        weight = (1 - alpha) * weight + alpha
        out[i] = acc / weight
    return out


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis from lo to hi: 1-2-5 per decade, at most ~6 of them."""
    ticks = []
    for step in ((1,), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
                 for m in step if lo <= m * 10 ** e <= hi]
        if len(ticks) >= 3:
            break
    while len(ticks) > 7:
        ticks = ticks[::2]
    return ticks


def _x_ticks(n: int) -> list[int]:
    if n <= 5:
        return list(range(1, n + 1))
    raw = n / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return list(range(0, n + 1, int(step))) or [0, n]


def loss_curve(history: list[dict], width: int = 640, height: int = 480, smooth: int = 0,
               status: str | None = None) -> np.ndarray:
    """HxWx3 uint8 plot of the per-update losses in `history` (dicts with loss/denoise/steer,
    and swap when the swapped-object term is on: 0 once it is satisfied, drawn on the floor).

    `smooth`: EMA span in updates (0 = about a twentieth of the run). `status`: an extra
    line under the plot (e.g. progress and time left).
    """
    big, small = font(max(12, height // 20)), font(max(11, height // 26))
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    keys = [k for k in COLOURS if history and k in history[0]]
    line_h = big.getbbox("Ag")[3] + 6
    left, right = int(width * 0.14), width - 14
    # legend entries, wrapped into rows that fit the picture
    entries, rows, x = [], 0, left
    for k in keys:
        label = f"{LABELS[k]} {float(history[-1][k]):.3g}"   # replaced by the smoothed value below
        w = 24 + draw.textlength(label + "0", font=big) + 18
        if x + w > width - 4 and x > left:
            rows, x = rows + 1, left
        entries.append((k, x, rows))
        x += w
    legend_rows = rows + 1 if keys else 1
    top = 10 + line_h * legend_rows + 6
    bottom = height - 2 * line_h - (line_h if status else 0) - 4
    if not history or not keys:
        draw.rectangle([left, top, right, bottom], outline=(150, 150, 150))
        draw.text((left + 8, top + 8), "no updates yet", fill=(0, 0, 0), font=big)
        if status:
            draw.text((left, bottom + 2 * line_h), status, fill=(60, 60, 60), font=small)
        return np.array(img)

    n = len(history)
    span = smooth or max(1, n // 20)
    raw = {k: np.array([max(float(r[k]), 1e-12) for r in history]) for k in keys}
    smoothed = {k: smooth_ema(v, span) for k, v in raw.items()}
    positive = [v[v > 1e-12] for v in raw.values() if (v > 1e-12).any()]
    lo = min(float(v.min()) for v in positive) if positive else 1e-12
    hi = max(float(v.max()) for v in raw.values())
    if hi / lo < 10:                                # keep at least one decade visible
        mid = math.sqrt(hi * lo)
        lo, hi = mid / math.sqrt(10), mid * math.sqrt(10)
    llo, lhi = math.log10(lo), math.log10(hi)
    pad = 0.04 * (lhi - llo)                       # keep the curves off the frame
    llo, lhi = llo - pad, lhi + pad

    def x_of(i):
        return left + (right - left) * (i / max(n - 1, 1))

    def y_of(v):        # a zero (a satisfied swap term) sits on the floor of the plot
        return bottom - (bottom - top) * (max(math.log10(max(v, 1e-12)), llo) - llo) / (lhi - llo)

    # grid and axes
    for t in _log_ticks(lo, hi):
        y = y_of(t)
        draw.line([(left, y), (right, y)], fill=(225, 225, 225))
        label = f"{t:g}"
        draw.text((left - 6 - draw.textlength(label, font=small), y - line_h // 3), label, fill=(60, 60, 60), font=small)
    for t in sorted({1, *(t for t in _x_ticks(n) if 1 <= t <= n)}):   # update numbers start at 1
        if 1 < t < 1 + n / 12:                     # too close to the "1" label
            continue
        x = x_of(t - 1)
        draw.line([(x, top), (x, bottom)], fill=(235, 235, 235))
        label = str(t)
        lx = min(x - draw.textlength(label, font=small) / 2, width - 2 - draw.textlength(label, font=small))
        draw.text((lx, bottom + 4), label, fill=(60, 60, 60), font=small)
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    draw.text(((left + right) / 2 - draw.textlength("update", font=small) / 2, bottom + line_h),
              "update", fill=(60, 60, 60), font=small)
    draw.text((4, top - line_h + 4), "loss", fill=(60, 60, 60), font=small)
    draw.text((4, top - line_h // 2 + 6), "(log)", fill=(60, 60, 60), font=small)

    # raw series faint, smoothed bold
    for k in keys:
        colour = COLOURS[k]
        faint = tuple(int(c + (255 - c) * 0.7) for c in colour)
        xs = [x_of(i) for i in range(n)]
        if n > 1:
            draw.line(list(zip(xs, [y_of(v) for v in raw[k]])), fill=faint, width=1)
            draw.line(list(zip(xs, [y_of(v) for v in smoothed[k]])), fill=colour, width=3)
        else:
            y = y_of(raw[k][0])
            draw.ellipse([xs[0] - 4, y - 4, xs[0] + 4, y + 4], fill=colour)

    # legend above the plot: last smoothed value of each series
    for k, x, row in entries:
        label = f"{LABELS[k]} {smoothed[k][-1]:.3g}"
        y = 10 + row * line_h
        draw.rectangle([x, y + line_h // 2 - 3, x + 18, y + line_h // 2 + 3], fill=COLOURS[k])
        draw.text((x + 24, y), label, fill=COLOURS[k], font=big)
    if status:
        draw.text((left, height - line_h - 2), status, fill=(60, 60, 60), font=small)
    return np.array(img)
