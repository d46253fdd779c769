"""The report's "collection at a glance" section: which labels condition the model (given, or
the discovered clusters), a 2-D map of the collection coloured by cluster and by label, a few
thumbnails per cluster, and - for small collections - an interactive map (hover a point: its
image).

`map_section(...)` returns an HTML fragment; it reads no file (images come through the
`load_image` callable). Every string from the data is escaped by the template; the interactive
map's only script is the fixed static/map_hover.js (no data is ever interpolated into it), and
images are inline data URIs, so the page still needs no network.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from PIL import Image

from gcmine.tasks.reporting.charts import scatter_svg
from gcmine.tasks.reporting.images import jpeg_thumbnail
from gcmine.tasks.reporting.templating import Markup, render, static_text
from gcmodels.clustering.collection import cluster_name
from gcmodels.labels import count_labels

__all__ = ["GREY", "MAX_MAP_POINTS", "PALETTE", "map_section"]

#: points drawn in a static map (a seeded random subset beyond)
MAX_MAP_POINTS = 5000
#: colours of the first clusters / labels (tab20); more reuse them; noise and unlabelled are grey
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
)
GREY = "#b0b0b0"


def _colors(keys: list) -> dict:
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def _name(cluster: int, k: int) -> str:
    return "noise (-1)" if cluster < 0 else cluster_name(cluster, k)


def _decision(conditioning: dict | None) -> str | None:
    """The sentence saying what conditions the model, or None without a decision."""
    if not conditioning:
        return None
    source = conditioning.get("source")
    reason = conditioning.get("reason", "")
    labels = conditioning.get("labels") or {}
    unl = int(conditioning.get("unlabelled") or 0)
    noise = int(conditioning.get("noise") or 0)
    if source == "clusters":
        text = (
            f"Mined without labels ({reason}): the {len(labels)} discovered clusters condition the model and name "
            f"the label sections below"
        )
        if noise:
            text += f"; {noise:,} noise image(s) (cluster -1) are left unlabelled: they train the unconditional branch only and are not scored"
    else:
        text = f"The given labels condition the model ({reason}); {count_labels(labels)}"
        if unl:
            text += f", {unl:,} unlabelled image(s) train the unconditional branch only"
    return text + "."


def map_section(
    points: pd.DataFrame | None,
    clusters: pd.DataFrame | None,
    conditioning: dict | None,
    load_image: Callable[[str], Image.Image],
    *,
    method: str = "pca",
    interactive_max: int = 1000,
    thumbnails_per_cluster: int = 4,
    seed: int = 0,
) -> str:
    """The section ``<section id="glance">``.

    points: the collection map (image_id, x, y, cluster, and label: the given label or null);
    clusters: clusters.parquet (image_id, cluster, distance) for the thumbnails (the
    `thumbnails_per_cluster` images nearest their cluster mean); conditioning: the decision of
    the condition stage (source, reason, labels, unlabelled, noise). The maps are interactive
    (hover: the image) when there are at most `interactive_max` points; beyond `MAX_MAP_POINTS`
    a seeded random subset is drawn.
    """
    decision = _decision(conditioning)
    if points is None or points.empty or not {"image_id", "x", "y", "cluster"} <= set(points.columns):
        return render("glance.html", decision=decision, maps=None)
    pts = points.reset_index(drop=True)
    n = len(pts)
    live = 0 < n <= interactive_max
    shown = pts
    if n > MAX_MAP_POINTS:
        rows = np.sort(np.random.default_rng(seed).permutation(n)[:MAX_MAP_POINTS])
        shown = pts.iloc[rows].reset_index(drop=True)
    cl = shown["cluster"].astype(np.int64)
    k = int(pts["cluster"].max()) + 1 if len(pts) else 0
    ids = sorted(int(c) for c in pts["cluster"].unique() if c >= 0)
    ccolor = _colors(ids)
    counts = pts["cluster"].value_counts()
    cluster_legend = [(_name(c, k), ccolor[c], f"{int(counts.get(c, 0)):,}") for c in ids]
    if -1 in counts.index:
        cluster_legend.append((_name(-1, k), GREY, f"{int(counts[-1]):,}"))
    has_label = "label" in shown.columns and shown["label"].map(lambda v: isinstance(v, str)).any()
    labels = sorted({v for v in pts["label"] if isinstance(v, str)}) if has_label else []
    lcolor = _colors(labels)
    captions = None
    if live:
        captions = [
            f"{iid} · {_name(int(c), k)}" + (f" · {lab}" if isinstance(lab, str) else "")
            for iid, c, lab in zip(shown["image_id"], cl, shown["label"] if "label" in shown else [None] * len(shown))
        ]
    facts = f"{n:,} images, {method} of the embeddings"
    if len(shown) < n:
        facts += f"; {len(shown):,} random points drawn"
    facts += (
        "; hover a point to see its image" if live else f"; interactive above no more than {interactive_max:,} images"
    )

    x, y = shown["x"].to_numpy(np.float64), shown["y"].to_numpy(np.float64)
    by_cluster = scatter_svg(x, y, [ccolor.get(int(c), GREY) for c in cl], "map by cluster", captions=captions)
    by_label = label_legend = None
    if has_label:
        lcounts = pts["label"].value_counts()
        label_legend = [(lab, lcolor[lab], f"{int(lcounts.get(lab, 0)):,}") for lab in labels]
        unl = int(pts["label"].map(lambda v: not isinstance(v, str)).sum())
        if unl:
            label_legend.append(("unlabelled", GREY, f"{unl:,}"))
        colors = [lcolor.get(v, GREY) if isinstance(v, str) else GREY for v in shown["label"]]
        by_label = Markup(scatter_svg(x, y, colors, "map by label", captions=captions))

    thumbnails = None
    if thumbnails_per_cluster > 0 and clusters is not None and not clusters.empty:
        thumbnails = []
        cd = clusters.assign(_d=pd.to_numeric(clusters.get("distance"), errors="coerce"))
        for c in ids + ([-1] if -1 in counts.index else []):
            members = cd[cd["cluster"] == c].sort_values("_d", kind="stable", na_position="last")
            images = [
                (iid, jpeg_thumbnail(load_image, iid)) for iid in members["image_id"].head(thumbnails_per_cluster)
            ]
            thumbnails.append((_name(c, k), ccolor.get(c, GREY), f"{int(counts.get(c, 0)):,}", images))

    hover = None
    if live:
        uris = [(i, uri) for i, iid in enumerate(shown["image_id"]) if (uri := jpeg_thumbnail(load_image, iid))]
        hover = {"thumbs": uris, "script": Markup(static_text("map_hover.js"))}
    return render(
        "glance.html",
        decision=decision,
        maps=True,
        facts=facts,
        cluster_legend=cluster_legend,
        by_cluster=Markup(by_cluster),
        label_legend=label_legend,
        by_label=by_label,
        thumbnails=thumbnails,
        hover=hover,
    )
