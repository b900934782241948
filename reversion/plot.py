"""A loss-curve picture without a plotting library (PIL only)."""
from __future__ import annotations

import numpy as np

COLOURS = {"loss": (40, 90, 200), "denoise": (60, 160, 80), "steer": (220, 120, 30)}


def loss_curve(history: list[dict], width: int = 512, height: int = 256, smooth: int = 20) -> np.ndarray:
    """HxWx3 uint8 plot of the per-update losses (moving average over `smooth` updates).

    Each series is scaled to its own range (the steering loss is ~100x the denoising
    loss), with its first and last values written in the legend.
    """
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = 8, 8, width - 8, height - 40
    draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    if not history:
        draw.text((left + 4, top + 4), "no updates yet", fill=(0, 0, 0))
        return np.array(img)
    legend_x = left
    for key, colour in COLOURS.items():
        values = np.array([r[key] for r in history], dtype=np.float64)
        if smooth > 1 and len(values) > 1:
            kernel = np.ones(min(smooth, len(values))) / min(smooth, len(values))
            values = np.convolve(values, kernel, mode="valid")
        lo, hi = float(values.min()), float(values.max())
        span = hi - lo or 1.0
        xs = np.linspace(left, right, num=len(values)) if len(values) > 1 else np.array([left, right])
        ys = bottom - (values - lo) / span * (bottom - top) if len(values) > 1 else np.array([bottom, bottom])
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colour, width=2)
        label = f"{key} {values[0]:.4g} -> {values[-1]:.4g}"
        draw.text((legend_x, bottom + 6), label, fill=colour)
        legend_x += (right - left) // 3
    draw.text((left, bottom + 22), f"{len(history)} updates", fill=(90, 90, 90))
    return np.array(img)
