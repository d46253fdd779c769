"""Report sections of what was measured after mining: the typicality maps against the user's
boxes (`gcmine evaluate`: `evaluation_summary.parquet`, `evaluation.parquet`).

Pure rendering (no file I/O): each function takes tables and returns one `<section>` of HTML
for `ReportData.extra_sections`.
"""

from __future__ import annotations

import math

import pandas as pd

from tasks.reporting.format import fmt_num
from tasks.reporting.templating import render

__all__ = ["EVALUATION_MEASURES", "evaluation_section"]

#: (column of evaluation_summary.parquet, header, tooltip), in the order shown
EVALUATION_MEASURES = [
    ("aucpr_paper", "AUC-PR (paper)", "the paper's X-ray AUC-PR: 1000 thresholds 2e-s, s in [2, 7], trapezoid over recall"),
    ("ap", "AP", "average precision of the pixels ranked by typicality (scale-free)"),
    ("pointing", "pointing", "share of maps whose maximum lies inside a box"),
    ("inside", "inside", "mean typicality inside the boxes"),
    ("outside", "outside", "mean typicality outside the boxes"),
]
POOLED = "(all)"


def _pct(value: float) -> str:
    return "—" if value is None or not math.isfinite(float(value)) else f"{100 * float(value):.1f}%"


def evaluation_section(summary: pd.DataFrame, table: pd.DataFrame | None = None, stale: bool = False) -> str:
    """Per model and label, and pooled over every evaluated (image, label) pair (`(all)`, the
    micro-average, shown first): the number of pairs and the mean of every measure.

    summary: `evaluation_summary.parquet` (model, label, pairs, aucpr_paper, ap, pointing,
    inside, outside); table: `evaluation.parquet` (for the count of skipped box pairs by reason),
    or None; stale: the evaluation was made on the maps of an earlier run of this root."""
    rows = []
    if not summary.empty:
        s = summary.assign(_pooled=summary["label"].astype(str) != POOLED)
        s = s.sort_values(["model", "_pooled", "label"], kind="stable", key=lambda c: c.astype(str))
        for _, r in s.iterrows():
            pooled = str(r["label"]) == POOLED
            rows.append({
                "model": str(r["model"]), "label": "all labels (micro-average)" if pooled else str(r["label"]),
                "pooled": pooled, "pairs": fmt_num(int(r["pairs"])),
                "values": [
                    _pct(r[m]) if m in ("aucpr_paper", "ap", "pointing") else fmt_num(float(r[m]), 3)
                    for m, _, _ in EVALUATION_MEASURES
                ],
            })
    skipped = []
    if table is not None and not table.empty and "status" in table.columns:
        bad = table[table["status"] != "ok"].drop_duplicates(["filename", "label"])  # once, not once per model
        if len(bad):
            kinds = bad["reason"].fillna("").astype(str).str.replace(r"^row \d+: ", "", regex=True).str.split(":").str[0]
            skipped = [(k, fmt_num(int(v))) for k, v in kinds.value_counts().sort_index().items()]
    return render(
        "evaluation.html", rows=rows, measures=[(h, tip) for _, h, tip in EVALUATION_MEASURES], skipped=skipped, stale=stale,
    )
