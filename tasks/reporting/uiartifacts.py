"""The Prefect UI's view of a finished run: what a person on the run's page sees.

- a markdown summary: each label's top visual elements with pictures (strips of their most typical
  patches, embedded as small data: URIs the UI renders inline), scores, and links into the report;
- a table of every element;
- a link to the report that a browser can follow: for an S3 run root a presigned https link
  (valid `report.link_hours`), for a local one `http://127.0.0.1:<report.serve_port>/<dataset>/`,
  answered by `gcmine serve RUN` (browsers refuse file:// links from web pages).

Keys and titles carry the dataset (run root) name (`gcmine.tasks.infra.artifacts.artifact_key`), and the
artifacts are attached to the flow run the user opened: the deployment's run (`production-cars`)
or the CLI's (`mine-cars`), not to a task run.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw
from prefect import task

from gcmine.tasks.infra.artifacts import (
    ELEMENTS,
    MANIFEST,
    PATCHES,
    REPORT,
    TYPICALITY,
    artifact_key,
    dataset_name,
    dataset_slug,
    live_rows,
)
from gcmine.tasks.infra.storage import RunStore, is_local, open_fs
from gcmine.tasks.report import own_label_rows
from gcmine.tasks.reporting import label_anchors
from gcmodels.config import ReportConfig
from gcmodels.data.images import decode_image

__all__ = [
    "TOP_ELEMENTS",
    "element_strips",
    "publish_ui_artifacts",
    "report_link",
    "served_path",
    "summary_markdown",
    "ui_summary",
]

TOP_ELEMENTS = 3  # elements per label in the summary
STRIP_PATCHES = 4  # most typical patches pictured per element
THUMB = 64  # height in pixels of a patch picture (the patch and some context)
PICTURE_BUDGET = 600_000  # bytes of data: URIs in one summary; labels past it get no pictures (the report has them all)

_log = logging.getLogger("gcmine.uiartifacts")


def served_path(out: str) -> str:
    """The URL path under which `gcmine serve` shows the report of run root `out`."""
    return f"/{dataset_slug(out)}/"


def report_link(store: RunStore, config: ReportConfig) -> dict[str, str]:
    """A link to the report a browser follows, and a note on how it works: a presigned https URL
    of `report/index.html` for an object store (served as text/html), `gcmine serve`'s URL for a
    local run root (and where a presigned URL cannot be made)."""
    served = {
        "url": f"http://127.0.0.1:{config.serve_port}{served_path(store.root_uri)}",
        "note": (
            f"start `gcmine serve {store.root_uri}` on the machine that holds the run root (from another machine, "
            f"forward the port first: `ssh -L {config.serve_port}:127.0.0.1:{config.serve_port} HOST`)"
        ),
    }
    if is_local(store.fs):
        served["note"] += f"; or open {store.path(REPORT)} from disk"
        return served
    if config.link_hours == 0:
        return served
    seconds = config.link_hours * 3600
    try:
        url = store.fs.url(store.path(REPORT), expires=seconds, ResponseContentType="text/html; charset=utf-8")
    except Exception as err:
        _log.warning(
            "no presigned link for %s (%s: %s); the UI points at gcmine serve",
            store.uri(REPORT),
            type(err).__name__,
            err,
        )
        return served
    until = (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M UTC")
    return {"url": url, "note": f"a presigned link, valid until {until}; after that, `gcmine serve {store.root_uri}`"}


def _image_loader(store: RunStore, storage_options: dict | None) -> Callable[[str], Image.Image | None]:
    """image_id -> the original image (None if it cannot be read any more)."""
    sources = live_rows(store.read_parquet(MANIFEST, ["image_id", "source", "status"]))["source"]

    @lru_cache(maxsize=64)
    def load(image_id: str) -> Image.Image | None:
        try:
            fs, path = open_fs(str(sources.loc[image_id]), storage_options)
            return decode_image(fs.cat_file(path), max_pixels=10**12)
        except Exception as err:
            _log.warning("no picture of image %s: %s", image_id, err)
            return None

    return load


def _patch(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """The patch `box` (x0, y0, x1, y1; exclusive; original pixels) with a quarter of its size of
    context on each side (clipped to the image), THUMB pixels high, the patch outlined in green as
    in the report."""
    x0, y0, x1, y1 = box
    mx, my = max(1, (x1 - x0) // 4), max(1, (y1 - y0) // 4)
    cx0, cy0 = max(0, x0 - mx), max(0, y0 - my)
    cx1, cy1 = min(img.width, max(cx0 + 1, x1 + mx)), min(img.height, max(cy0 + 1, y1 + my))
    crop = img.convert("RGB").crop((cx0, cy0, cx1, cy1))
    scale = THUMB / crop.height
    # small patches are scaled up by whole pixels (sharp), large ones down smoothly
    crop = crop.resize(
        (max(1, round(crop.width * scale)), THUMB), Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    )
    bx0, by0 = round((max(x0, cx0) - cx0) * scale), round((max(y0, cy0) - cy0) * scale)
    bx1, by1 = round((min(x1, cx1) - cx0) * scale) - 1, round((min(y1, cy1) - cy0) * scale) - 1
    ImageDraw.Draw(crop).rectangle((bx0, by0, max(bx0, bx1), max(by0, by1)), outline=(0, 255, 0), width=1)
    return crop


def _data_uri(picture: Image.Image) -> str:
    """The smaller of PNG and JPEG (quality 85) as a data: URI."""
    encoded = {}
    for fmt, mime, options in (("PNG", "image/png", {"optimize": True}), ("JPEG", "image/jpeg", {"quality": 85})):
        buf = io.BytesIO()
        picture.save(buf, fmt, **options)
        encoded[mime] = buf.getvalue()
    mime, data = min(encoded.items(), key=lambda kv: len(kv[1]))
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def element_strips(
    elements: pd.DataFrame,
    patches: pd.DataFrame,
    load_image: Callable[[str], Image.Image | None],
    labels: list[str],
    *,
    top: int = TOP_ELEMENTS,
    per_element: int = STRIP_PATCHES,
    budget: int = PICTURE_BUDGET,
) -> dict[tuple[str, int], str]:
    """(label, element) -> data: URI of a strip of the element's `per_element` most typical
    patches, for the `top` elements of each label in `labels` order, until `budget` bytes of URIs."""
    strips: dict[tuple[str, int], str] = {}
    used = 0
    for label in labels:
        for _, e in elements[(elements["label"] == label) & (elements["rank"] < top)].sort_values("rank").iterrows():
            members = patches[(patches["label"] == label) & (patches["element"] == e["element"])]
            pictures = []
            for _, p in members.nlargest(per_element, "typicality").iterrows():
                img = load_image(p["image_id"])
                if img is not None:
                    pictures.append(_patch(img, (int(p["x0"]), int(p["y0"]), int(p["x1"]), int(p["y1"]))))
            if not pictures:
                continue
            gap = 2
            strip = Image.new("RGB", (sum(p.width for p in pictures) + gap * (len(pictures) - 1), THUMB), "white")
            x = 0
            for p in pictures:
                strip.paste(p, (x, 0))
                x += p.width + gap
            uri = _data_uri(strip)
            if used + len(uri) > budget:
                return strips
            strips[(label, int(e["element"]))] = uri
            used += len(uri)
    return strips


def _md(text: Any) -> str:
    """`text` safe in a markdown table cell or link text."""
    return re.sub(r"([|\[\]\\`*_])", r"\\\1", str(text)).replace("<", "&lt;").replace(">", "&gt;")


def summary_markdown(
    out: str,
    elements: pd.DataFrame,
    strips: dict[tuple[str, int], str],
    link: dict[str, str],
    labels: list[str],
    *,
    top: int = TOP_ELEMENTS,
) -> str:
    """The summary: a heading naming the dataset, the report link, and one table row per top
    element of each label with its pictures, score and a link to its label's section."""
    anchors = dict(zip(labels, label_anchors(labels)))
    name = dataset_name(out)
    lines = [
        f"# gcmine: what is typical of each label in {_md(name)}",
        "",
        f"Run root `{out}`: {len(labels)} labels, {len(elements)} visual elements.",
        "",
        f"**[Open the full report of {_md(name)}]({link['url']})** ({link['note']})",
        "",
        "Each label links to its section of the report. Score: the median typicality of the element's patches; "
        "pictures: its most typical patches (green box) with some context.",
        "",
        "| label | element rank | score | patches | most typical patches |",
        "|---|---|---|---|---|",
    ]
    shown = elements[elements["rank"] < top]
    pictured = {label for label, _ in strips}
    for label in labels:
        for _, e in shown[shown["label"] == label].sort_values("rank").iterrows():
            uri = strips.get((label, int(e["element"])))
            picture = f"![{_md(label)}, element {int(e['rank'])}]({uri})" if uri else ""
            section = f"[{_md(label)}]({link['url']}#{anchors[label]})"
            lines.append(f"| {section} | {int(e['rank'])} | {e['score']:.4g} | {int(e['size'])} | {picture} |")
    missing = [lab for lab in labels if lab not in pictured and (shown["label"] == lab).any()]
    if missing:
        lines += [
            "",
            f"Pictures of {len(missing)} more label(s) are in the report (the summary keeps to {PICTURE_BUDGET // 1000} kB).",
        ]
    return "\n".join(lines)


@task(name="ui-artifacts", task_run_name="ui-artifacts")
def ui_summary(out: str, config: ReportConfig, storage_options: dict | None = None) -> dict:
    """What the Prefect UI shows of run root `out` (see the module docstring): keys, titles,
    markdown, element table and report link, for `publish_ui_artifacts`."""
    store = RunStore(out, storage_options)
    elements = store.read_parquet(ELEMENTS)
    patches = store.read_parquet(PATCHES)
    # the report's labels, in its order: the anchors of its sections depend on it
    labels = sorted(own_label_rows(store.read_parquet(TYPICALITY))["label"].dropna().unique().tolist())
    link = report_link(store, config)
    strips = element_strips(elements, patches, _image_loader(store, storage_options), labels)
    name = dataset_name(out)
    table = elements.sort_values(["label", "rank"]).astype({"score": float}).round({"score": 6})
    table = table.astype(object).where(table.notna(), None)  # NaN (patch_se of plain scoring) is not JSON
    return {
        "summary": {
            "key": artifact_key(out, "summary"),
            "description": f"{name}: top visual elements per label ({out})",
            "markdown": summary_markdown(out, elements, strips, link, labels),
        },
        "elements": {
            "key": artifact_key(out, "elements"),
            "description": f"{name}: ranked visual elements ({out})",
            "table": table.to_dict(orient="records"),
        },
        "report": {
            "key": artifact_key(out, "report"),
            "description": f"{name}: the HTML report ({link['note']})",
            "link": link["url"],
            "link_text": f"gcmine report of {name}",
        },
    }


def publish_ui_artifacts(summary: dict, flow_run_id: Any) -> None:
    """Create the artifacts of `ui_summary` on flow run `flow_run_id` (not on a task run)."""
    try:
        from prefect.artifacts import LinkArtifact, MarkdownArtifact, TableArtifact

        MarkdownArtifact(flow_run_id=flow_run_id, **summary["summary"]).create()
        TableArtifact(flow_run_id=flow_run_id, **summary["elements"]).create()
        LinkArtifact(flow_run_id=flow_run_id, **summary["report"]).create()
    except Exception as err:
        _log.warning("Prefect UI artifacts not created: %s", err)
