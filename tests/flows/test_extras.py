"""The optional parts (pyproject's extras): the default path runs without them, and a setting that
needs one that is missing fails before any work, naming the extra to install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from tiny import tiny_settings

from gcmodels.data.synthetic import motif_dataset

REPO = Path(__file__).resolve().parents[2]
OPTIONAL = ("transformers", "peft", "prefect_dask", "umap")


def _without_extras(tmp_path: Path) -> dict[str, str]:
    """The environment of a Python where the optional packages are not found (a `sitecustomize`
    replaces the path finder by one that does not see them: imports and find_spec fail as when
    they are not installed)."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sitecustomize.py").write_text(
        "import sys\n"
        "from importlib.machinery import PathFinder\n"
        f"HIDDEN = {set(OPTIONAL)!r}\n"
        "class HidingFinder(PathFinder):\n"
        "    @classmethod\n"
        "    def find_spec(cls, name, path=None, target=None):\n"
        "        if name.split('.')[0] in HIDDEN:\n"
        "            return None\n"
        "        return PathFinder.find_spec(name, path, target)\n"
        "sys.meta_path[sys.meta_path.index(PathFinder)] = HidingFinder\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(shadow), str(REPO)])
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return env


# What the tests below check, in one Python without the extras (each Python costs 10-20 s of imports on 2
# busy cores): first the default pipeline as `gcmine run` does it (nothing else imported before), then every
# module of the default path, then each setting that needs a missing extra. Each part's outcome (or its
# traceback) is reported on its own.
_CHECKS = """
import contextlib, importlib, io, json, pkgutil, sys, traceback
args = json.loads(sys.argv[1])
found = {}

def part(name, check):
    try:
        found[name] = {"result": check()}
    except BaseException:
        found[name] = {"error": traceback.format_exc()}
    with open(args["results"], "w") as fh:
        json.dump(found, fh)

def pipeline():
    from gcmine.flows.cli import main
    return main(args["pipeline"])

def imports():
    import gcmodels, gcmine.tasks, gcmine.flows
    from gcmodels.diffusion.families import families, unavailable_families
    optional_families = {"gcmodels.diffusion.sd", "gcmodels.diffusion.sdxl", "gcmodels.diffusion.sd3"}
    failed = {}
    for package in (gcmodels, gcmine.tasks, gcmine.flows):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name in optional_families:
                continue
            try:
                importlib.import_module(info.name)
            except Exception as err:
                failed[info.name] = repr(err)
    return {"failed": failed, "families": sorted(families()), "why": unavailable_families()}

def missing_extras():
    from gcmine.flows.cli import main
    results = []
    for argv in args["missing"]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(argv)
        results.append([code, err.getvalue()])
    return results

part("pipeline", pipeline)
part("imports", imports)
part("missing", missing_extras)
"""

MISSING = [  # settings that need an extra, and the extra named
    (["runtime.runner=dask"], "dask"),
    (["runtime.gpus=all"], "dask"),
    (["embed.method=clip", "embed.clip_path={tmp}"], "clip"),
    (["cluster.reduce=umap"], "umap"),
    (["model.base={sd}"], "checkpoints"),
]


@pytest.fixture(scope="module")
def without_extras(tmp_path_factory, tiny_sd_dir, prefect_database) -> dict:
    """The checks of _CHECKS in one Python where the optional packages are not found: part -> its
    result ({"result": ...} or {"error": traceback}); `paths`: the folders the parts used. Its Prefect
    home holds the migrated database when one is published (tests/support/prefect_db.py): the
    pipeline's temporary server then starts without migrating."""
    tmp = tmp_path_factory.mktemp("extras")
    env = _without_extras(tmp)
    prefect_database.copy_to(Path(env["PREFECT_HOME"]) / "prefect.db")
    images = tmp / "images"
    images.mkdir()
    rows = []
    for i, item in enumerate(motif_dataset(n_per_label=4, size=16, labels=("circle", "cross"), seed=1)):
        item.image.save(images / f"img{i:02d}.png")
        rows.append({"filename": f"img{i:02d}.png", "label": item.label})
    pd.DataFrame(rows).to_csv(tmp / "labels.csv", index=False)
    out = tmp / "run"
    pipeline = ["run", str(images), "--labels", str(tmp / "labels.csv"), "--out", str(out)]
    for item in tiny_settings():
        pipeline += ["--set", item]
    refused, elsewhere = tmp / "refused", tmp / "elsewhere"
    elsewhere.mkdir()
    missing = []
    for settings, _ in MISSING:
        argv = ["run", str(elsewhere), "--out", str(refused)]
        for item in settings:
            argv += ["--set", item.format(tmp=elsewhere, sd=tiny_sd_dir)]
        missing.append(argv)
    results = tmp / "results.json"
    args = json.dumps({"pipeline": pipeline, "missing": missing, "results": str(results)})
    proc = subprocess.run(
        [sys.executable, "-c", _CHECKS, args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    found = json.loads(results.read_text()) if results.is_file() else {}
    assert proc.returncode == 0 and len(found) == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {**found, "paths": {"out": out, "refused": refused}, "output": proc.stdout[-3000:] + proc.stderr[-3000:]}


def _result(found: dict, part: str):
    assert "error" not in found[part], found[part]["error"] + found["output"]
    return found[part]["result"]


def test_every_module_of_the_default_path_imports_without_the_extras(without_extras) -> None:
    found = _result(without_extras, "imports")
    assert found["failed"] == {}
    assert found["families"] == ["dit"]  # DiT needs diffusers only
    assert "sd, sd3, sdxl need transformers" in found["why"] and "pip install 'gcmine[checkpoints]'" in found["why"]


def test_a_setting_that_needs_a_missing_extra_names_it_before_any_work(without_extras) -> None:
    found = _result(without_extras, "missing")
    for (settings, extra), (code, stderr) in zip(MISSING, found, strict=True):
        assert code == 2, (settings, stderr)
        assert f"pip install 'gcmine[{extra}]'" in stderr and "Traceback" not in stderr, (settings, stderr)
    assert not without_extras["paths"]["refused"].exists()  # nothing was done


def test_the_default_pipeline_runs_without_the_extras(without_extras) -> None:
    assert _result(without_extras, "pipeline") == 0, without_extras["output"]
    out = without_extras["paths"]["out"]
    assert (out / "report" / "index.html").is_file() and (out / "elements.parquet").is_file()
