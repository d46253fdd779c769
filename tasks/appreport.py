"""Report sections of the applications: cotypicality and typicality as a classifier,
translation across labels, and the classic baseline side by side with the typicality elements.

Pure rendering (no file I/O): each function takes tables and image loaders and returns one
`<section>` of HTML for `ReportData.extra_sections`. Nothing in the data raises: missing images
are shown as placeholders.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from PIL import Image

from tasks.htmlreport import _crop_figure, _empty, _esc, _fmt_num, _fmt_seconds, _png_uri, _table, patch_crop

__all__ = ["baseline_section", "cotypicality_section", "translation_section"]

COLUMNS_SHOWN = 12  # crops per row in the side-by-side comparison


def _heat_cell(value: float, lo: float, hi: float, bold: bool = False) -> str:
    """A table cell coloured from white (lo) to red (hi)."""
    if not np.isfinite(value):
        return '<td class="n">—</td>'
    f = 0.0 if hi <= lo else float(np.clip((value - lo) / (hi - lo), 0, 1))
    style = f"background: rgba(227, 26, 28, {0.08 + 0.72 * f:.2f});" + (" font-weight: 700;" if bold else "")
    return f'<td class="n" style="{style}" title="{_esc(_fmt_num(value))}">{_esc(_fmt_num(value, 3))}</td>'


def _matrix_table(matrix: pd.DataFrame, corner: str, diagonal_bold: bool = True) -> str:
    values = matrix.to_numpy(np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    head = f"<th>{_esc(corner)}</th>" + "".join(f'<th class="n">{_esc(c)}</th>' for c in matrix.columns)
    rows = []
    for i, (name, row) in enumerate(zip(matrix.index, values)):
        cells = "".join(
            _heat_cell(v, lo, hi, bold=diagonal_bold and matrix.columns[j] == name) for j, v in enumerate(row)
        )
        rows.append(f"<tr><th>{_esc(name)}</th>{cells}</tr>")
    return f'<table class="matrix"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def cotypicality_section(label_matrix: pd.DataFrame, confusion: pd.DataFrame, result: dict) -> str:
    """Cotypicality heat map (mean typicality of the images of label a under label b), the
    classifier's accuracy, confusion matrix and most confused labels.

    label_matrix: `label_matrix.parquet` (image_label, label, typicality); confusion:
    `confusion.parquet` (true, predicted, count); result: what the classify task returned."""
    out = ['<section id="cotypicality"><h2>Cotypicality and typicality as a classifier</h2>']
    labels = [str(v) for v in result.get("labels", [])]
    if label_matrix.empty or not labels:
        out.append(_empty("No cotypicality scores (set score.cotypicality: true).") + "</section>")
        return "".join(out)
    acc = result.get("accuracy")
    split = result.get("split", "")
    chance = 1.0 / max(1, len(labels))
    out.append('<div class="cards">')
    out.append(
        f'<div class="card"><div class="v">{_esc("—" if acc is None else f"{100 * acc:.1f}%")}</div>'
        f'<div class="k">accuracy on {_esc(_fmt_num(result.get("images")))} {_esc(split)} images</div></div>'
    )
    if result.get("train_accuracy") is not None and split == "held-out":
        out.append(
            f'<div class="card"><div class="v">{100 * result["train_accuracy"]:.1f}%</div>'
            '<div class="k">accuracy on the training images</div></div>'
        )
    out.append(f'<div class="card"><div class="v">{100 * chance:.1f}%</div><div class="k">chance</div></div></div>')
    if split != "held-out":
        out.append(
            '<p class="sub">No held-out images: the accuracy is measured on images the model was trained on. '
            "Set score.holdout (e.g. 0.2) to keep a share of each label out of fine-tuning.</p>"
        )
    matrix = label_matrix.pivot_table(index="image_label", columns="label", values="typicality", aggfunc="first")
    matrix = matrix.reindex(index=labels, columns=labels)
    out.append('<div class="grid2"><div><h3>Mean typicality of the images of a label (row) under each label (column)</h3>')
    out.append(_matrix_table(matrix, "images \\ under"))
    out.append(
        '<p class="sub">The diagonal (bold) is each label\'s own typicality; a high value off the diagonal means '
        "the images of the row label look typical of the column label too.</p></div>"
    )
    conf = confusion.pivot_table(index="true", columns="predicted", values="count", aggfunc="sum", fill_value=0)
    conf = conf.reindex(index=labels, columns=labels, fill_value=0)
    out.append(f"<div><h3>Confusion matrix ({_esc(split)} images; rows: true, columns: predicted)</h3>")
    out.append(_matrix_table(conf.astype(np.float64), "true \\ predicted"))
    confused = result.get("confused") or []
    out.append("<h3>Most confused labels</h3>")
    if confused:
        rows = [
            [_esc(c["true"]), _esc(c["predicted"]), _esc(_fmt_num(c["count"])), _esc(f"{100 * c['share']:.1f}%")]
            for c in confused
        ]
        out.append(_table(["true", "predicted as", "images", "share of the true label"], rows))
    else:
        out.append(_empty("No image was predicted as another label."))
    out.append("</div></div></section>")
    return "".join(out)


def _thumb(img: Image.Image | None, caption: str, height: int = 96) -> str:
    if img is None:
        return f'<figure><div class="missing">image unavailable</div><figcaption>{caption}</figcaption></figure>'
    scale = max(1, round(height / max(1, img.height)))
    shown = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img
    return (
        f'<figure><img class="crop" src="{_png_uri(shown)}" width="{shown.width}" height="{shown.height}" alt="">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def translation_section(
    translations: pd.DataFrame, changes: pd.DataFrame, load_png: Callable[[str], Image.Image | None], result: dict,
    per_cluster: int = 8,
) -> str:
    """Sources and their translations to every other label (with typicality under the target
    before and after), then the consistent-change clusters (source patch -> translated patch).

    translations: `translations.parquet`; changes: `translation_changes.parquet`; load_png:
    run-root PNG path -> image (None if unavailable)."""
    out = ['<section id="translation"><h2>Translation across labels</h2>']
    if translations.empty:
        out.append(_empty("No translations.") + "</section>")
        return "".join(out)
    first = translations.iloc[0]
    out.append(
        f'<p class="sub">Each source image noised to strength {_esc(_fmt_num(first["strength"]))} and denoised under '
        f'the target label (guidance {_esc(_fmt_num(first["guidance"]))}, seed {_esc(_fmt_num(first["seed"]))}), '
        f"{_esc(_fmt_seconds(result.get('seconds')))}. Numbers: typicality under the target label, of the source → of "
        f"the translation (mean gain {_esc(_fmt_num(result.get('typicality_gain')))}).</p>"
    )
    rows = []
    for source_file, group in translations.groupby("source_file", sort=True):
        head = group.iloc[0]
        figs = [_thumb(load_png(source_file), f"<b>{_esc(head['label'])}</b><br>{_esc(str(head['image_id'])[:12])}")]
        for _, r in group.iterrows():
            cap = f"→ {_esc(r['target'])}<br>{_esc(_fmt_num(r['typicality_source'], 3))} → {_esc(_fmt_num(r['typicality'], 3))}"
            figs.append(_thumb(load_png(r["file"]), cap))
        rows.append(f'<div class="crops">{"".join(figs)}</div>')
    out.append("<h3>Sources and translations</h3>" + '<div class="translations">' + "".join(rows) + "</div>")
    out.append("<h3>Consistent changes (the most changed patch of each translation, clustered)</h3>")
    if changes.empty:
        out.append(_empty("No changed patches."))
    else:
        files = translations.set_index("pair")[["file", "source_file"]]
        for cluster, members in changes.groupby("change_cluster", sort=True):
            members = members.sort_values("change", ascending=False, kind="stable")
            pairs = members.apply(lambda r: f"{r['label']} → {r['target']}", axis=1).value_counts()
            figs = []
            for _, p in members.head(per_cluster).iterrows():
                box = (int(p["x0"]), int(p["y0"]), int(p["x1"]), int(p["y1"]))
                for which in ("source_file", "file"):
                    img = load_png(files.loc[p["pair"], which]) if p["pair"] in files.index else None
                    crop = None if img is None else patch_crop(img, box)[0]
                    figs.append(_thumb(crop, "before" if which == "source_file" else f"after ({_esc(_fmt_num(p['change'], 2))})"))
            what = ", ".join(f"{_esc(k)} ({v})" for k, v in pairs.head(4).items())
            out.append(
                f'<div class="element"><div class="meta"><div class="rank">#{int(cluster) + 1}</div>'
                f"<div>{len(members)} patches</div><div>median change {_esc(_fmt_num(float(members['change'].median()), 3))}</div>"
                f'<div>{what}</div></div><div class="crops">{"".join(figs)}</div></div>'
            )
    out.append("</section>")
    return "".join(out)


def baseline_section(
    baseline: pd.DataFrame, detectors: pd.DataFrame, elements: pd.DataFrame, patches: pd.DataFrame,
    load_image: Callable[[str], Image.Image | None], timings: dict, per_row: int = COLUMNS_SHOWN,
) -> str:
    """Per label, the typicality rank-0 element's patches beside the baseline's best detector's
    top detections, with the time each miner took (`timings`: typicality, baseline seconds)."""

    class _Loader:  # the interface `_crop_figure` expects
        def image(self, image_id: str) -> Image.Image | None:
            try:
                return load_image(image_id)
            except Exception:  # noqa: BLE001
                return None

    loader = _Loader()
    out = ['<section id="baseline"><h2>Classic baseline: discriminative patches (Doersch et al. 2012)</h2>']
    out.append(
        '<p class="sub">HOG (+ colour) descriptors of patches, linear detectors of label vs rest retrained over '
        f"rounds on held-out folds. Time: typicality (fine-tune + score + rank) {_esc(_fmt_seconds(timings.get('typicality')))}, "
        f"baseline {_esc(_fmt_seconds(timings.get('baseline')))}.</p>"
    )
    if baseline.empty:
        out.append(_empty("No baseline detections.") + "</section>")
        return "".join(out)
    purity = detectors.set_index(["label", "detector"])["purity"] if not detectors.empty else pd.Series(dtype=float)
    for label in sorted(set(baseline["label"].astype(str)) | set(elements["label"].astype(str))):
        out.append(f"<h3>{_esc(label)}</h3>")
        best = elements[(elements["label"].astype(str) == label) & (elements["rank"] == 0)]
        typ = pd.DataFrame()
        if not best.empty:
            typ = patches[(patches["label"].astype(str) == label) & (patches["element"] == best["element"].iloc[0])]
            typ = typ.sort_values("typicality", ascending=False, kind="stable").head(per_row)
        figs = [_crop_figure(loader, r) for _, r in typ.iterrows()]
        out.append('<div class="element"><div class="meta"><div class="rank">typicality</div><div>rank-0 element</div></div>'
                   f'<div class="crops">{"".join(figs) or _empty("none")}</div></div>')
        det = baseline[(baseline["label"].astype(str) == label) & (baseline["detector"] == 0)]
        det = det.sort_values("rank", kind="stable").head(per_row).rename(columns={"score": "typicality"})
        figs = [_crop_figure(loader, r) for _, r in det.iterrows()]
        pur = purity.get((label, 0), float("nan")) if len(purity) else float("nan")
        on_label = float((det["image_label"].astype(str) == label).mean()) if len(det) else float("nan")
        out.append(
            '<div class="element"><div class="meta"><div class="rank">baseline</div><div>best detector</div>'
            f"<div>held-out purity {_esc(_fmt_num(pur, 2))}</div><div>top detections on the label {_esc(_fmt_num(on_label, 2))}</div>"
            f'</div><div class="crops">{"".join(figs) or _empty("none")}</div></div>'
        )
    out.append('<p class="sub">Numbers under the crops: patch typicality (typicality rows), SVM score (baseline rows).</p>')
    out.append("</section>")
    return "".join(out)
