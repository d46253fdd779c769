"""The optional parts (pyproject's extras): the default path runs without them, and a setting that
needs one that is missing fails before any work, naming the extra to install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
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


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_every_module_of_the_default_path_imports_without_the_extras(tmp_path) -> None:
    code = """
import importlib, json, pkgutil
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
print(json.dumps({"failed": failed, "families": sorted(families()), "why": unavailable_families()}))
"""
    proc = _python(code, _without_extras(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["failed"] == {}
    assert found["families"] == ["dit"]  # DiT needs diffusers only
    assert "sd, sd3, sdxl need transformers" in found["why"] and "pip install 'gcmine[checkpoints]'" in found["why"]


def test_a_setting_that_needs_a_missing_extra_names_it_before_any_work(tmp_path, tiny_sd_dir) -> None:
    cases = [
        (["runtime.runner=dask"], "dask"),
        (["runtime.gpus=all"], "dask"),
        (["embed.method=clip", f"embed.clip_path={tmp_path}"], "clip"),
        (["cluster.reduce=umap"], "umap"),
        ([f"model.base={tiny_sd_dir}"], "checkpoints"),
    ]
    out = tmp_path / "run"
    code = f"""
import contextlib, io, json
from gcmine.flows.cli import main
found = []
for settings, _ in {cases!r}:
    err = io.StringIO()
    argv = ["run", {str(tmp_path)!r}, "--out", {str(out)!r}]
    for s in settings:
        argv += ["--set", s]
    with contextlib.redirect_stderr(err):
        code = main(argv)
    found.append([code, err.getvalue()])
print(json.dumps(found))
"""
    proc = _python(code, _without_extras(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    for (settings, extra), (code, stderr) in zip(cases, found):
        assert code == 2, (settings, stderr)
        assert f"pip install 'gcmine[{extra}]'" in stderr and "Traceback" not in stderr, (settings, stderr)
    assert not out.exists()  # nothing was done


def test_the_default_pipeline_runs_without_the_extras(tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i, item in enumerate(motif_dataset(n_per_label=4, size=16, labels=("circle", "cross"), seed=1)):
        item.image.save(images / f"img{i:02d}.png")
        rows.append({"filename": f"img{i:02d}.png", "label": item.label})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "gcmine.flows.cli", "run", str(images), "--labels", str(tmp_path / "labels.csv")]
    argv += ["--out", str(out)]
    for item in tiny_settings():
        argv += ["--set", item]
    proc = subprocess.run(argv, cwd=REPO, env=_without_extras(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "report" / "index.html").is_file() and (out / "elements.parquet").is_file()
