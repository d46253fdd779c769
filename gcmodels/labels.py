"""Label sets: an image may carry several labels (multi-label collections, e.g. chest X-rays with
several findings). Pure string code, importable without torch.

A set of labels is written as ONE string, its labels sorted and joined by `LABEL_JOIN` (``"|"``):
``"effusion|nodule"``. That is how the manifest stores an image's labels and how a model's
conditioning vocabulary names a set (`ConditionalDiffusion`: the single labels first, then the
sets it was trained on); a label itself never contains `LABEL_JOIN` (ingest splits on it)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["LABEL_JOIN", "count_labels", "join_labels", "split_labels", "vocabulary"]

LABEL_JOIN = "|"


def split_labels(label: str) -> tuple[str, ...]:
    """The labels of a label string: ``"a|b"`` -> ``("a", "b")``, ``"a"`` -> ``("a",)``."""
    return tuple(label.split(LABEL_JOIN))


def join_labels(labels: Iterable[str]) -> str:
    """The canonical string of a set of labels: distinct, sorted, joined by `LABEL_JOIN`.

    ValueError for no label, an empty label or one that contains `LABEL_JOIN`."""
    found = sorted(set(labels))
    if not found:
        raise ValueError("a label set needs at least one label")
    bad = [lab for lab in found if not isinstance(lab, str) or not lab.strip() or LABEL_JOIN in lab]
    if bad:
        raise ValueError(f"labels must be non-empty strings without {LABEL_JOIN!r}, got {bad[:5]!r}")
    return LABEL_JOIN.join(found)


def vocabulary(labels: Iterable[str | None]) -> list[str]:
    """The conditioning vocabulary of a model trained on images with `labels` (label strings,
    None = unlabelled): every single label, sorted, then every label set of two or more labels
    that an image carries, sorted (`ConditionalDiffusion.conditions`). For single-label images:
    the sorted labels."""
    given = {lab for lab in labels if isinstance(lab, str)}
    singles = sorted({one for lab in given for one in split_labels(lab)})
    return singles + sorted(lab for lab in given if LABEL_JOIN in lab)


def count_labels(labels: Iterable[str | None]) -> str:
    """How many labels `labels` (label strings, None = unlabelled) hold, for messages: ``"3
    label(s)"``, or with multi-label images ``"3 label(s) (+ 2 label set(s) of multi-label images)"`` (the distinct sets
    of two or more labels)."""
    given = {lab for lab in labels if isinstance(lab, str)}
    singles = {one for lab in given for one in split_labels(lab)}
    sets = sum(LABEL_JOIN in lab for lab in given)
    return f"{len(singles)} label(s)" + (f" (+ {sets} label set(s) of multi-label images)" if sets else "")
