"""The HTML report, rendered from Jinja2 templates with autoescaping.

- `page`: `ReportData` and `render_report` (the whole page); what each section shows.
- `glance`: the collection at a glance (conditioning decision, maps, thumbnails, hover).
- `applications`: the cotypicality / classifier, translation and baseline sections.
- `evaluation`: what was measured on the finished run (the maps against the user's boxes, the
  model's samples against the real images).
- `images`: crops, heat maps, thumbnails and data URIs; `charts`: the SVG loss curve and maps.
- `templating`: the Jinja2 environment; the markup is in `templates/`, the CSS and the hover
  script in `static/` (package data: a wheel installs them).

The stage that reads the run's tables and writes `report/index.html` is `tasks/report.py`.
"""

from gcmine.tasks.reporting.applications import baseline_section, cotypicality_section, translation_section
from gcmine.tasks.reporting.charts import loss_curve_svg
from gcmine.tasks.reporting.evaluation import evaluation_section, samples_section
from gcmine.tasks.reporting.format import label_anchors
from gcmine.tasks.reporting.glance import map_section
from gcmine.tasks.reporting.images import BOX_COLOR, colorize_typicality, overlay_typicality, patch_crop
from gcmine.tasks.reporting.page import ReportData, render_report

__all__ = [
    "BOX_COLOR",
    "ReportData",
    "baseline_section",
    "colorize_typicality",
    "cotypicality_section",
    "evaluation_section",
    "label_anchors",
    "loss_curve_svg",
    "map_section",
    "overlay_typicality",
    "patch_crop",
    "render_report",
    "samples_section",
    "translation_section",
]
