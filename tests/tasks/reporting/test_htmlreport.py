import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gcmine.tasks.reporting import (
    BOX_COLOR,
    ReportData,
    colorize_typicality,
    loss_curve_svg,
    overlay_typicality,
    patch_crop,
    render_report,
)

EVIL = "<script>alert(1)</script>"
WEIRD = '"a,b"/../x ü'


def _make_data(labels=("cat", EVIL, WEIRD), n_images=6, size=32, seed=0, n_steps=40):
    rng = np.random.default_rng(seed)
    imgs, maps = {}, {}
    t_rows, p_rows, e_rows, c_rows = [], [], [], []
    for _li, lab in enumerate(labels):
        for j in range(n_images):
            iid = f"{lab}/{j}.png"
            imgs[iid] = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            maps[iid] = rng.normal(0, 1, (16, 16)).astype(np.float32)
            t_rows.append((iid, lab, float(rng.normal())))
            c_rows.append((iid, j % 3, float(rng.random()), lab))
            for r in range(2):
                x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
                p_rows.append((iid, lab, r, x0, y0, x0 + 8, y0 + 8, float(rng.normal()), int(rng.integers(-1, 3))))
        for e in range(3):
            e_rows.append((lab, e, e, 1.0 - 0.1 * e, 4))
    return ReportData(
        title=f"report {EVIL}",
        summary={
            "images": len(imgs) + 2,
            "ok": len(imgs),
            "rejected": 2,
            "labels": len(labels),
            "unlabeled": 1,
            "missing_files": 3,
            "rejected_by_reason": {"unreadable": 1, EVIL: 1},
            "timings": {"train": 12.5, "score": 3.25, EVIL: 0.5},
            "device": "cpu",
            "config": {"data": {"resolution": 32, "evil": EVIL}},
        },
        labels=list(labels),
        elements=pd.DataFrame(e_rows, columns=["label", "element", "rank", "score", "size"]),
        patches=pd.DataFrame(
            p_rows, columns=["image_id", "label", "rank", "x0", "y0", "x1", "y1", "typicality", "element"]
        ),
        typicality=pd.DataFrame(t_rows, columns=["image_id", "label", "typicality"]),
        clusters=pd.DataFrame(c_rows, columns=["image_id", "cluster", "distance", "label"]),
        cluster_metrics=pd.DataFrame({"metric": ["k", "silhouette", EVIL], "value": [3.0, 0.25, 1.0]}),
        training=pd.DataFrame(
            {
                "step": np.arange(n_steps) * 10,
                "loss": np.linspace(1.0, 0.1, n_steps),
                "lr": 1e-4,
                "seconds": np.arange(n_steps) * 0.5,
            }
        ),
        rejected=pd.DataFrame({"source": [WEIRD, "x.jpg"], "reason": [EVIL, "unreadable"]}),
        load_image=lambda i: imgs[i],
        load_map=lambda i: maps[i],
    )


def _empty_data():
    def no_image(_):
        raise FileNotFoundError("nope")

    return ReportData(
        title="empty",
        summary={},
        labels=["lonely"],
        elements=pd.DataFrame(),
        patches=pd.DataFrame(),
        typicality=pd.DataFrame(),
        clusters=pd.DataFrame(),
        cluster_metrics=pd.DataFrame(),
        training=pd.DataFrame(),
        rejected=pd.DataFrame(),
        load_image=no_image,
        load_map=no_image,
    )


def _decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


def test_escaping_everywhere():
    out = render_report(_make_data())
    assert EVIL not in out
    assert "<script" not in out.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&quot;a,b&quot;/../x ü" in out
    assert WEIRD not in out  # the raw quote never reaches the page
    # ids and anchors are slugs, never raw labels
    ids = re.findall(r'\sid="([^"]*)"', out)
    assert ids and all(re.fullmatch(r"[a-z0-9-]+", i) for i in ids)
    assert len(ids) == len(set(ids))
    for href in re.findall(r'href="#([^"]*)"', out):
        assert href in ids


def test_all_sections_present():
    data = _make_data()
    out = render_report(data)
    for sid in ("summary", "collection", "training", "rejected"):
        assert f'id="{sid}"' in out
    assert out.count('<section class="label"') == len(data.labels)
    for text in (
        "Run summary",
        "Timings",
        "Rejections by reason",
        "Cluster metrics",
        "Cluster sizes",
        "Labels × clusters",
        "Visual elements",
        "Most typical images",
        "Rejected inputs",
    ):
        assert text in out
    assert "missing files" in out and "unlabeled" in out
    # labels in display order
    positions = [out.index(f"<h2>{lab}</h2>") for lab in ("cat", "&lt;script&gt;alert(1)&lt;/script&gt;")]
    assert positions == sorted(positions)


@pytest.mark.parametrize("rivals", ["all", "cycled"])
def test_label_contrast_maps_are_named_as_such(rivals):
    """With score.contrast the caption says the maps and patch numbers are label contrast, not typicality."""
    plain = render_report(_make_data())
    assert "number = patch typicality" in plain and "label contrast" not in plain
    data = _make_data()
    data.maps_kind = f"label contrast ({rivals})"
    out = render_report(data)
    assert "Maps are <b>label contrast</b> (" + rivals + ")" in out
    assert "number = patch contrast" in out and "number = patch typicality" not in out
    assert "median image contrast" in out and "median image typicality" not in out and "<br>contrast " in out


def test_images_embedded_only():
    out = render_report(_make_data())
    srcs = re.findall(r'src="([^"]*)"', out)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert 'src="http' not in out and 'src="/' not in out
    assert "<link" not in out and "@import" not in out and "url(" not in out
    for s in srcs[:5]:
        _decode(s)


def test_limits_respected():
    data = _make_data(n_images=8)
    out = render_report(data, elements_per_label=2, patches_per_element=3, heatmaps_per_label=2)
    n_labels = len(data.labels)
    assert out.count('class="element"') <= 2 * n_labels
    assert out.count('class="crop"') <= 2 * 3 * n_labels
    assert out.count('class="over"') == 2 * n_labels


def test_empty_inputs_do_not_crash():
    out = render_report(_empty_data())
    assert "No visual elements" in out
    assert "No training log" in out
    assert "No clustering results" in out
    assert "No inputs were rejected" in out
    assert "No run summary" in out
    assert "No image scores" in out


def test_no_labels_and_missing_images():
    data = _make_data()
    data.labels = []
    data.load_image = lambda i: (_ for _ in ()).throw(OSError("gone"))
    out = render_report(data)  # labels come from the tables; unloadable images become placeholders
    assert "image unavailable" in out
    assert out.count('<section class="label"') == 3


def test_patch_crop_box_position():
    img = Image.new("RGB", (64, 64), (0, 0, 0))
    crop, (bx0, by0, bx1, by1) = patch_crop(img, (16, 16, 32, 32))
    # crop covers [8, 40) (margin 8 each side) = 32 px, upscaled x3 to 96
    assert crop.size == (96, 96)
    assert (bx0, by0, bx1, by1) == (24, 24, 72, 72)
    a = np.asarray(crop)
    for x, y in [(24, 48), (25, 48), (70, 48), (71, 48), (48, 24), (48, 71)]:
        assert tuple(a[y, x]) == BOX_COLOR, (x, y)
    for x, y in [(23, 48), (26, 48), (48, 48), (72, 48), (10, 10)]:
        assert tuple(a[y, x]) == (0, 0, 0), (x, y)


def test_patch_crop_clipped_at_border():
    img = Image.new("RGB", (32, 32), (10, 20, 30))
    crop, (bx0, by0, bx1, by1) = patch_crop(img, (0, 0, 8, 8))
    # margin of 4 clipped on the top/left: crop [0, 12) -> 12 px, x8 -> 96
    assert crop.size == (96, 96)
    assert (bx0, by0) == (0, 0) and (bx1, by1) == (64, 64)
    a = np.asarray(crop)
    assert tuple(a[30, 0]) == BOX_COLOR and tuple(a[30, 63]) == BOX_COLOR
    assert tuple(a[30, 30]) == (10, 20, 30)


def test_patch_crop_large_image_downscaled():
    img = Image.new("RGB", (1000, 800), (0, 0, 0))
    crop, _ = patch_crop(img, (100, 100, 300, 300))
    assert crop.height == 96


def test_embedded_crop_has_box():
    data = _make_data(labels=("only",), n_images=1)
    img = Image.new("RGB", (64, 64), (0, 0, 0))
    data.load_image = lambda i: img
    data.patches = pd.DataFrame(
        [("only/0.png", "only", 0, 16, 16, 32, 32, 0.9, 0)],
        columns=["image_id", "label", "rank", "x0", "y0", "x1", "y1", "typicality", "element"],
    )
    out = render_report(data)
    m = re.search(r'<img class="crop" src="([^"]+)"[^>]*title="([^"]*)"', out)
    assert m
    assert "only/0.png" in m.group(2) and "0.9" in m.group(2)
    a = np.asarray(_decode(m.group(1)))
    assert a.shape == (96, 96, 3)
    assert tuple(a[48, 24]) == BOX_COLOR and tuple(a[24, 48]) == BOX_COLOR
    assert tuple(a[48, 48]) == (0, 0, 0) and tuple(a[5, 5]) == (0, 0, 0)


def test_svg_curve_points():
    out = render_report(_make_data(n_steps=37))
    svg = out[out.index("<svg") : out.index("</svg>")]
    raw = re.search(r'<polyline class="raw"[^>]*points="([^"]*)"', svg).group(1)
    assert len(raw.split()) == 37
    smooth = re.search(r'<polyline class="smooth"[^>]*points="([^"]*)"', svg).group(1)
    assert len(smooth.split()) == 37
    assert ">step<" in svg and "loss" in svg
    assert ">360<" in svg and ">0<" in svg  # min/max step ticks


def test_svg_curve_edge_cases():
    assert loss_curve_svg(np.array([]), np.array([])) == ""
    one = loss_curve_svg(np.array([5.0]), np.array([0.3]))
    assert 'class="raw"' in one
    with_nan = loss_curve_svg(np.arange(5.0), np.array([1, np.nan, 0.5, np.inf, 0.2]))
    pts = re.search(r'class="raw"[^>]*points="([^"]*)"', with_nan).group(1)
    assert len(pts.split()) == 3
    long = loss_curve_svg(np.arange(10_000.0), np.linspace(1, 0.5, 10_000), max_points=500)
    pts = re.search(r'class="raw"[^>]*points="([^"]*)"', long).group(1)
    assert len(pts.split()) <= 501


def test_colorize_and_overlay():
    m = np.array([[-1.0, 0.0, 0.5, 1.0, 4.0]], dtype=np.float32)
    rgba = colorize_typicality(m, vmax=1.0)
    assert rgba.shape == (1, 5, 4)
    assert rgba[0, 1, 3] == 0.0  # zero is transparent
    assert 0 < rgba[0, 2, 3] < rgba[0, 3, 3] == rgba[0, 4, 3]  # opacity grows, saturates
    assert rgba[0, 3, 0] > rgba[0, 3, 2]  # warm
    assert rgba[0, 0, 2] > rgba[0, 0, 0]  # negative is cool
    img = Image.new("RGB", (40, 30), (128, 128, 128))
    over = overlay_typicality(img, np.ones((8, 8), np.float32))
    assert over.size == (40, 30)
    r, _g, b = np.asarray(over)[15, 20]
    assert r > 128 and b < 128
    same = overlay_typicality(img, np.zeros((8, 8), np.float32))
    assert (np.asarray(same) == 128).all()


def test_render_decodes_each_image_once():
    """A large report (10 labels x 6 elements x 8 crops) decodes each image once (its speed is a
    benchmark matter, not a test's)."""
    labels = [f"label{i}" for i in range(10)]
    data = _make_data(labels=labels, n_images=12, size=48)
    rng = np.random.default_rng(1)
    # 6 elements x 8 members per label
    p = data.patches
    rows = []
    for lab in labels:
        for e in range(6):
            for k in range(8):
                rows.append((f"{lab}/{k % 12}.png", lab, 0, 4, 4, 20, 20, float(rng.random()), e))
    data.patches = pd.concat([p, pd.DataFrame(rows, columns=p.columns)], ignore_index=True)
    data.elements = pd.DataFrame(
        [(lab, e, e, 1.0, 8) for lab in labels for e in range(6)], columns=["label", "element", "rank", "score", "size"]
    )
    calls: dict[str, int] = {}
    load = data.load_image

    def counting(i):
        calls[i] = calls.get(i, 0) + 1
        return load(i)

    data.load_image = counting
    out = render_report(data)
    assert out.count('class="crop"') == 10 * 6 * 8
    assert out.count('class="over"') == 40
    assert max(calls.values()) == 1


@pytest.mark.parametrize("missing", ["timings", "rejected_by_reason", "config", "device", "images"])
def test_missing_summary_keys(missing):
    data = _make_data()
    del data.summary[missing]
    out = render_report(data)
    assert 'id="summary"' in out


def test_elements_say_how_certain_they_are():
    """Issue 19: each element's score with its 95 % interval and the draws (and, adaptive, the
    Monte Carlo SE) of its patches; an elements table without them (older runs) shows none."""
    import dataclasses

    data = _make_data(labels=("cat",))
    certain = data.elements.assign(
        score_lo=0.5, score_hi=1.25, draws=[16.0, 9.5, 16.0], patch_se=[np.nan, 0.03, np.nan]
    )
    out = render_report(dataclasses.replace(data, elements=certain))
    assert out.count("95 % interval 0.5 to 1.25") == 3
    assert "16 draws a patch" in out and "9.5 draws a patch · Monte Carlo SE 0.03" in out
    assert "95 % interval" not in render_report(data)


def test_a_shared_element_says_so():
    """rank.shared_elements: an element flagged shared with other labels says it, with its
    specificity; the others, and an elements table without the columns (older runs), say nothing."""
    import dataclasses

    data = _make_data(labels=("cat",))
    flagged = data.elements.assign(specificity=[1.0, np.nan, 0.25], shared=[False, True, True])
    out = render_report(dataclasses.replace(data, elements=flagged))
    assert out.count("shared with other labels") == 2  # one without a measured specificity: no share given
    assert out.count("only 25 % of its patches") == 1 and out.count("% of its patches") == 1
    assert "shared with other labels" not in render_report(data)
