"""The elements stage merges the shards' candidates shard by shard: the same patches and
elements as clustering the concatenation of every shard (the former implementation, kept here
as the reference), with ties in typicality, labels missing from some shards, and shards whose
losers carry no feature."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gcmine.tasks.infra.artifacts import ELEMENTS, PATCH_COLUMNS, PATCHES
from gcmine.tasks.infra.storage import RunStore
from gcmine.tasks.rank import _NO_FEATURE, _top_per_label, elements
from gcmodels.config import RankConfig
from gcmodels.mining.elements import label_specificity, median_interval, mine_elements


def _shards(rng: np.random.Generator, n_shards: int, per_shard: int, dim: int) -> list[pd.DataFrame]:
    shards = []
    for s in range(n_shards):
        n = per_shard + int(rng.integers(0, 5))
        labels = rng.choice(["a", "b", "c"] if s % 3 else ["a", "b"], n)
        shards.append(
            pd.DataFrame(
                {
                    "image_id": [f"img{s:02d}{i:03d}" for i in range(n)],
                    "label": labels,
                    "rank": rng.integers(0, 3, n),
                    "x0": rng.integers(0, 10, n),
                    "y0": rng.integers(0, 10, n),
                    "x1": rng.integers(10, 20, n),
                    "y1": rng.integers(10, 20, n),
                    "wx0": 0,
                    "wy0": 0,
                    "wx1": 4,
                    "wy1": 4,
                    "typicality": rng.choice(np.linspace(-1, 1, 7), n).astype(np.float32),  # many ties
                    "draws": rng.integers(2, 17, n),
                    "top_patch_se": rng.random(n),
                    "feature": list(rng.normal(size=(n, dim)).astype(np.float32)),
                }
            )
        )
    return shards


def _reference(shards: list[pd.DataFrame], config: RankConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The former elements stage: every candidate, features included, in one frame."""
    cand = pd.concat(shards, ignore_index=True)
    cand["element"] = -1
    cand["distance"] = np.nan
    rows = []
    tops = {label: g.nlargest(config.per_label, "typicality", keep="first") for label, g in cand.groupby("label")}
    every = pd.concat(tops.values())  # every label's kept patches: what specificity is measured over
    spec = pd.Series(
        label_specificity(
            np.stack(every["feature"].to_numpy()), every["label"].to_numpy(), config.specificity_neighbours
        ),
        index=every.index,
    )
    for label, top in sorted(tops.items()):
        found = mine_elements(
            np.stack(top["feature"].to_numpy()),
            top["typicality"].to_numpy(),
            config.elements,
            seed=config.seed,
            specificity=spec[top.index].to_numpy(),
            chance=len(top) / len(every),
            shared_last=config.shared_elements == "last",
            method=config.clustering,
        )
        cand.loc[top.index, "element"] = found.assignment
        cand.loc[top.index, "distance"] = found.distance
        for e in range(len(found.score)):
            members = cand.loc[top.index][found.assignment == e]
            lo, hi, _ = median_interval(members["typicality"].to_numpy())
            rows.append(
                {
                    "label": label,
                    "element": e,
                    "rank": e,
                    "score": float(found.score[e]),
                    "size": int(found.size[e]),
                    "score_lo": lo,
                    "score_hi": hi,
                    "draws": float(members["draws"].mean()),
                    "patch_se": float(members["top_patch_se"].median()),
                    "specificity": float(found.specificity[e]),
                    "shared": bool(found.shared[e]),
                }
            )
    patches = (
        cand[PATCH_COLUMNS + ["distance"]]
        .sort_values(["label", "image_id", "rank"], kind="stable")
        .reset_index(drop=True)
    )
    return patches, pd.DataFrame(rows)


def _pruned(shard: pd.DataFrame, k: int) -> pd.DataFrame:
    """What rank_shard writes: only the shard's own best `k` per label keep their feature."""
    kept = shard.index.isin(_top_per_label(shard, k))
    return shard.assign(feature=[f if keep else _NO_FEATURE for f, keep in zip(shard["feature"], kept)])


@pytest.mark.parametrize("seed, per_label", [(0, 7), (1, 25), (2, 1000)])
@pytest.mark.parametrize("prune", [False, True])
def test_streamed_elements_equal_the_concatenated_ones(tmp_path, seed: int, per_label: int, prune: bool) -> None:
    rng = np.random.default_rng(seed)
    shards = _shards(rng, n_shards=6, per_shard=30, dim=5)
    config = RankConfig(per_label=per_label, elements=3)
    store = RunStore(str(tmp_path))
    names = []
    for i, shard in enumerate(shards):
        names.append(f"patch_candidates/part-{i:05d}.parquet")
        store.write_parquet(names[-1], _pruned(shard, per_label) if prune else shard)
    result = elements.fn(str(tmp_path), names, config)
    patches, elems = _reference(shards, config)
    pd.testing.assert_frame_equal(store.read_parquet(PATCHES), patches)
    pd.testing.assert_frame_equal(store.read_parquet(ELEMENTS), elems, check_dtype=False)
    assert result["patches"] == len(patches) and result["elements"] == len(elems)


def test_top_per_label_is_nlargest_keep_first() -> None:
    table = pd.DataFrame({"label": list("abababab"), "typicality": [1, 2, 1, 2, 3, 2, 1, 2]})
    got = list(_top_per_label(table, 2))
    expected = [
        i for _, g in table.groupby("label", sort=False) for i in g.nlargest(2, "typicality", keep="first").index
    ]
    assert sorted(got) == sorted(expected)
    assert got == [4, 1, 3, 0]  # typicality descending, ties to the earlier row
