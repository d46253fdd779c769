"""The order the suite runs in (tests/conftest.py): the files of LONGEST_FIRST exist and are
collected first, in that order, so that the two xdist workers start on them."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_longest_files_exist_and_are_collected_first(request) -> None:
    longest = sys.modules["conftest"].LONGEST_FIRST  # tests/conftest.py as pytest loaded it
    for path in longest:
        assert (REPO / path).is_file(), f"{path} in LONGEST_FIRST does not exist (renamed? update tests/conftest.py)"
    files = list(dict.fromkeys(item.nodeid.split("::", 1)[0] for item in request.session.items))
    chosen = [path for path in longest if path in files]
    assert files[: len(chosen)] == chosen, files[: len(chosen) + 2]
