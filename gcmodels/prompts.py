"""Prompts of the Stable Diffusion path: one template shared by fine-tuning, scoring and patch
features (the paper's code wrote it three ways for one dataset). Pure string code, importable
without torch (the settings validate the template with it)."""

from __future__ import annotations

import re
import string
import unicodedata

from gcmodels.labels import LABEL_JOIN, split_labels

__all__ = ["render_prompt", "validate_prompt_template"]


def validate_prompt_template(template: str) -> str:
    """Return `template` after checking it has exactly one ``{label}`` field and no other field.

    Literal braces are written ``{{`` and ``}}`` (str.format rules)."""
    if not isinstance(template, str):
        raise ValueError(f"the prompt template must be a string, got {template!r}")
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ValueError(f"prompt template {template!r} is malformed ({err}); use {{label}} once") from None
    labels = [f for f in fields if f == ("label", "", None)]
    others = [f for f in fields if f != ("label", "", None)]
    if len(labels) != 1 or others:
        found = [
            "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            for name, spec, conv in fields
        ]
        raise ValueError(
            f"prompt template {template!r} must contain {{label}} exactly once and no other field, found {found}"
        )
    return template


def _readable_label(label: str) -> str:
    """The label as words: NFC, underscores and runs of 2+ hyphens -> spaces, whitespace collapsed,
    control/format characters dropped. A single hyphen inside a word stays ("X-ray")."""
    text = unicodedata.normalize("NFC", label)
    text = "".join(" " if ch.isspace() else ch for ch in text)
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("C"))
    text = re.sub(r"[\s_-]*(?:_|-{2,})[\s_-]*", " ", text)
    return " ".join(text.split())


def render_prompt(template: str, label: str) -> str:
    """The prompt for `label` under `template` (one ``{label}`` field), e.g.
    ``render_prompt("A photo of {label}.", "new_york__city")`` -> ``"A photo of new york city."``.

    The label is made readable: underscores and runs of two or more hyphens become spaces,
    whitespace (tabs, newlines, runs) collapses to one space, control and invisible format
    characters are dropped; letters of any script, digits and punctuation are kept ("1950s",
    "São Paulo", "Côte d'Ivoire", "X-ray"). ValueError if nothing readable is left.

    A label set (``"effusion|nodule"``, `gcmodels.labels`) renders its labels, each made readable,
    joined by ", ": ``render_prompt("Chest X-Ray with {label}.", "effusion|nodule")`` ->
    ``"Chest X-Ray with effusion, nodule."``."""
    validate_prompt_template(template)
    if not isinstance(label, str):
        raise ValueError(f"a label must be a string, got {label!r}")
    parts = [_readable_label(lab) for lab in split_labels(label)] if LABEL_JOIN in label else [_readable_label(label)]
    if not all(parts):
        raise ValueError(f"label {label!r} has no readable text for a prompt")
    return template.format(label=", ".join(parts))
