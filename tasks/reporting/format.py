"""Numbers, durations and HTML ids for the report (plain strings; the templates escape them)."""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

import numpy as np

__all__ = ["flatten", "fmt_num", "fmt_seconds", "int_or", "is_number", "label_anchors", "slug"]


def fmt_num(value: Any, digits: int = 4) -> str:
    """Numbers for humans: ints as ints (thousands separated), floats with `digits` significant
    digits, "—" for None / NaN, "∞" / "−∞" for infinities; anything else as str()."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "—"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        return f"{v:.{digits}g}"
    return str(value)


def fmt_seconds(value: Any) -> str:
    """A duration in seconds as "850 ms", "12.5 s", "3 min 20 s" or "1 h 5 min"."""
    try:
        s = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(s):
        return "—"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {s % 60:.0f} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def is_number(value: Any) -> bool:
    """True for ints and floats (numpy's too), False for bools and everything else."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def int_or(value: Any, default: int) -> int:
    """`value` as an int, or `default` when it is not a finite number."""
    try:
        f = float(value)
        return int(f) if math.isfinite(f) else default
    except (TypeError, ValueError):
        return default


def slug(text: Any, index: int, prefix: str = "label") -> str:
    """A safe HTML id: prefix, index, then an ASCII slug of `text` (never the raw text)."""
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    tail = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:32].strip("-")
    return f"{prefix}-{index}" + (f"-{tail}" if tail else "")


def label_anchors(labels: list[Any]) -> list[str]:
    """The HTML ids of the report's label sections, for `labels` in report order (sorted)."""
    return [slug(lab, i) for i, lab in enumerate(labels)]


def flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings as (dotted key, value text) rows; None shows as "null"."""
    rows: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            rows.extend(flatten(v, key))
        else:
            rows.append((key, "null" if v is None else str(v)))
    return rows


def contrast_rivals(maps_kind: str) -> str | None:
    """The rivals of label-contrast maps from the score stage's `maps_kind` ("label contrast (cycled)"
    -> "(cycled)"), or None for typicality maps."""
    return maps_kind.removeprefix("label contrast").strip() if maps_kind.startswith("label contrast") else None
