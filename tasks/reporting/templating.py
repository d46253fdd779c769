"""The Jinja2 environment of the report: templates and static files shipped with the package.

Autoescaping is on for every template: a value printed with ``{{ ... }}`` is HTML-escaped
unless it is ``Markup`` (an already rendered fragment). The `finalize` hook spells the escape as
``html.escape(..., quote=True)`` does (``&quot;``, ``&#x27;``; MarkupSafe would write ``&#34;``,
``&#39;``), so the page keeps the exact text of the f-string report it replaced, and prints None
as nothing.
"""

from __future__ import annotations

import html
from functools import cache, lru_cache
from importlib.resources import files
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from gcmine.tasks.reporting.format import fmt_num, fmt_seconds

__all__ = ["Markup", "environment", "render", "static_text"]


def _finalize(value: Any) -> Any:
    if value is None:
        return ""
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value), quote=True))


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The shared environment (templates compiled once per process)."""
    env = Environment(
        loader=PackageLoader("gcmine.tasks.reporting", "templates"),
        autoescape=True,
        finalize=_finalize,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt_num
    env.filters["seconds"] = fmt_seconds
    return env


def render(template: str, **context: Any) -> str:
    """Render `template` (a name under tasks/reporting/templates) to a string."""
    return environment().get_template(template).render(**context)


@cache
def static_text(name: str) -> str:
    """The text of a file under tasks/reporting/static (the CSS and the hover script)."""
    return files("gcmine.tasks.reporting").joinpath("static", name).read_text(encoding="utf-8")
