"""Cost of one watch comparison (no Prefect): list a local folder of N image files, compare it with
the previous listing, for an unchanged folder and after adding/changing/removing 1% of the files.
Nothing is read but the directory entries (change = size or mtime), so the cost grows with the
number of files, not with their bytes.

    .venv/bin/python benchmarks/watch_listing.py                # 10000 files
    .venv/bin/python benchmarks/watch_listing.py --files 50000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gcmine.tasks.watch import diff_listings, listing_table

EXTS = (".png", ".jpg")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--folders", type=int, default=20, help="label folders the files are spread over")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gcmine-watch-bench-") as tmp:
        root = Path(tmp)
        paths = [root / f"label{i % args.folders:03d}" / f"{i:07d}.png" for i in range(args.files)]
        for folder in {p.parent for p in paths}:
            folder.mkdir()
        for p in paths:
            p.write_bytes(b"x" * 64)
        t = time.perf_counter()
        first = listing_table(str(root), EXTS)
        t_list = time.perf_counter() - t
        t = time.perf_counter()
        same = diff_listings(first, listing_table(str(root), EXTS))
        t_same = time.perf_counter() - t
        k = max(1, args.files // 100)
        for p in paths[:k]:
            p.unlink()
        for p in paths[k : 2 * k]:
            p.write_bytes(b"y" * 65)
        for i in range(k):
            (root / "label000" / f"new-{i:07d}.png").write_bytes(b"z" * 64)
        t = time.perf_counter()
        diff = diff_listings(first, listing_table(str(root), EXTS))
        t_diff = time.perf_counter() - t
    counts = {key: len(v) for key, v in diff.items()}
    assert not any(same.values()) and counts == {"added": k, "changed": k, "removed": k}, counts
    print(f"{args.files} files in {args.folders} folders (local disk)")
    print(f"  first listing:                {t_list:6.2f} s")
    print(f"  listing + compare, unchanged: {t_same:6.2f} s")
    print(f"  listing + compare, 1% each added/changed/removed: {t_diff:6.2f} s  {counts}")


if __name__ == "__main__":
    main()
