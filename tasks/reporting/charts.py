"""The report's charts as inline SVG: the training loss curve and the scatter map of the
collection. The geometry is computed here; the markup is in templates/charts/."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gcmine.tasks.reporting.format import fmt_num
from gcmine.tasks.reporting.templating import render

__all__ = ["MAX_CURVE_POINTS", "loss_curve_svg", "scatter_svg"]

#: at most this many points are drawn per training curve (longer logs are strided)
MAX_CURVE_POINTS = 2000


def loss_curve_svg(
    steps: np.ndarray,
    loss: np.ndarray,
    *,
    width: int = 760,
    height: int = 280,
    max_points: int = MAX_CURVE_POINTS,
) -> str:
    """An inline SVG of loss vs step: the raw polyline (class ``raw``), a moving average over it
    (class ``smooth``), axis labels and min/max ticks. A log y axis is used when the loss is
    positive and spans more than a factor of 20. Non-finite points are dropped; logs longer
    than ``max_points`` are strided (the last point is always kept). "" when nothing is left."""
    steps = np.asarray(steps, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    ok = np.isfinite(steps) & np.isfinite(loss)
    steps, loss = steps[ok], loss[ok]
    if steps.size == 0:
        return ""
    order = np.argsort(steps, kind="stable")
    steps, loss = steps[order], loss[order]
    n = steps.size
    window = min(200, max(3, n // 20)) if n >= 5 else 1
    smooth = pd.Series(loss).rolling(window, center=True, min_periods=1).mean().to_numpy()
    if n > max_points:
        idx = np.unique(np.append(np.linspace(0, n - 1, max_points).astype(int), n - 1))
        steps, loss, smooth = steps[idx], loss[idx], smooth[idx]

    log_y = bool(loss.min() > 0 and loss.max() / loss.min() > 20)
    ty = np.log10 if log_y else (lambda a: a)
    lo_v, hi_v = float(loss.min()), float(loss.max())
    y_lo, y_hi = float(ty(lo_v)), float(ty(hi_v))
    if y_hi - y_lo < 1e-12:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    s_lo, s_hi = float(steps.min()), float(steps.max())

    left, right, top, bottom = 70, 18, 14, 46
    pw, ph = width - left - right, height - top - bottom

    def px(s: np.ndarray) -> np.ndarray:
        return left + (np.full_like(s, 0.5) if s_hi == s_lo else (s - s_lo) / (s_hi - s_lo)) * pw

    def py(v: np.ndarray) -> np.ndarray:
        return top + (1.0 - (ty(v) - y_lo) / (y_hi - y_lo)) * ph

    def points(xs: np.ndarray, ys: np.ndarray) -> str:
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(px(xs), py(ys)))

    x_axis_y = top + ph
    x_ticks = [(f"{float(px(np.array([s]))[0]):.1f}", fmt_num(s)) for s in sorted({s_lo, s_hi})]
    y_ticks = [
        (f"{float(py(np.array([v]))[0]):.1f}", f"{float(py(np.array([v]))[0]) + 4:.1f}", fmt_num(v))
        for v in sorted({lo_v, hi_v})
    ]
    return render(
        "charts/loss_curve.svg",
        width=width,
        height=height,
        left=left,
        top=top,
        pw=pw,
        ph=ph,
        x_axis_y=x_axis_y,
        raw=points(steps, loss),
        smooth=points(steps, smooth) if n >= 5 and window > 1 else None,
        window=window,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        x_label_x=f"{left + pw / 2:.0f}",
        y_label_y=f"{top + ph / 2:.0f}",
        y_label="loss (log scale)" if log_y else "loss",
    )


def scatter_svg(
    x: np.ndarray,
    y: np.ndarray,
    colors: list[str],
    title: str,
    *,
    captions: list[str] | None = None,
    size: tuple[int, int] = (560, 420),
) -> str:
    """Points (x, y) as circles filled with `colors` (one CSS colour each), scaled to `size`
    with a margin (y up). With `captions`, the map is live: each circle carries its row
    position (``data-i``) and caption (``data-cap``) for the hover script. Non-finite points
    are left out."""
    w, h = size
    pad = 12
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    lo_x, hi_x = (float(x[ok].min()), float(x[ok].max())) if ok.any() else (0.0, 1.0)
    lo_y, hi_y = (float(y[ok].min()), float(y[ok].max())) if ok.any() else (0.0, 1.0)
    sx = (w - 2 * pad) / (hi_x - lo_x) if hi_x > lo_x else 0.0
    sy = (h - 2 * pad) / (hi_y - lo_y) if hi_y > lo_y else 0.0
    px = pad + (x - lo_x) * sx if sx else np.full_like(x, w / 2)
    py = h - pad - (y - lo_y) * sy if sy else np.full_like(y, h / 2)
    radius = 4 if len(x) <= 500 else 2.5 if len(x) <= 2000 else 1.6
    circles = [
        (int(i), f"{px[i]:.1f}", f"{py[i]:.1f}", colors[i], None if captions is None else captions[i])
        for i in np.flatnonzero(ok)
    ]
    return render(
        "charts/scatter.svg", width=w, height=h, title=title, live=captions is not None, radius=radius, circles=circles
    )
