"""The report's section of the evaluation against boxes (tasks/reporting/evaluation.py): the
numbers as `gcmine evaluate` wrote them, the pooled row first, escaping, skipped pairs, and the
note on an evaluation of an earlier run's maps."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from gcmine.tasks.reporting import evaluation_section

EVIL = "<script>alert(1)</script>"


def _summary() -> pd.DataFrame:
    rows = [
        ("finetuned", "cross", 3, 0.25, 0.5, 2 / 3, 0.125, -0.0625),
        ("finetuned", "(all)", 7, 0.0961, 0.4375, 0.5714, 0.5, np.nan),
        ("finetuned", EVIL, 4, 0.015, 0.375, 0.5, 1.0, -2.0),
    ]
    return pd.DataFrame(rows, columns=["model", "label", "pairs", "aucpr_paper", "ap", "pointing", "inside", "outside"])


def _cells(html: str) -> list[list[str]]:
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [
        [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body)
    ]


def test_section_shows_every_label_and_the_pooled_row_first() -> None:
    html = evaluation_section(_summary())
    assert html.startswith('<section id="evaluation">')
    rows = _cells(html)
    assert rows[0] == ["finetuned", "all labels (micro-average)", "7", "9.6%", "43.8%", "57.1%", "0.5", "—"]
    assert rows[1][1] == "&lt;script&gt;alert(1)&lt;/script&gt;" and rows[1][3:6] == ["1.5%", "37.5%", "50.0%"]
    assert rows[2] == ["finetuned", "cross", "3", "25.0%", "50.0%", "66.7%", "0.125", "-0.0625"]
    assert EVIL not in html and "earlier run" not in html


def test_skipped_pairs_are_counted_once_per_pair_and_the_stale_note() -> None:
    table = pd.DataFrame(
        {
            "filename": ["a.png", "a.png", "b.png", "b.png", "c.png"],
            "label": ["x", "x", "x", "x", "y"],
            "model": ["finetuned", "base", "finetuned", "base", "finetuned"],
            "status": ["skipped", "skipped", "ok", "ok", "skipped"],
            "reason": ["row 2: unknown image: no image of the run has this file name"] * 2
            + [None, None]
            + ["unknown label: the run has no map under 'y'"],
        }
    )
    html = evaluation_section(_summary(), table, stale=True)
    skipped = html.split("Box pairs not evaluated", 1)[1]
    assert re.findall(r"<td>(.*?)</td><td>(.*?)</td>", skipped) == [("unknown image", "1"), ("unknown label", "1")]
    assert "earlier run of this root" in html
    assert "not the paper's typicality maps" not in html
    contrast = evaluation_section(_summary(), table, maps_kind="label contrast (cycled)")
    assert "The maps of this run are label contrast (cycled)" in contrast and "score.contrast=false" in contrast


def test_no_evaluated_pair() -> None:
    empty = _summary().iloc[0:0]
    html = evaluation_section(empty)
    assert "No (image, label) pair could be evaluated" in html and "<tbody>" not in html
