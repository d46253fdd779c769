"""Python scripts run as `python SCRIPT ARGS` would run them, several in one fresh interpreter.

Each script of `run_scripts` runs as ``__main__`` (`runpy.run_path`) with its own ``sys.argv``, its
own folder first on ``sys.path`` and its own standard output and error; a script's exit code is the
interpreter's (``sys.exit(n)``, 1 after an uncaught exception with its traceback on stderr). Between
scripts, ``sys.path`` is restored and the modules imported from the scripts' folders are forgotten,
so that no script finds what another one imported from there. What they share is the interpreter
with the libraries the earlier scripts imported: torch, diffusers, sklearn are imported once
(10-20 s of CPU each time on 2 busy cores) rather than once per script."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_DRIVER = r"""
import contextlib, io, json, os, runpy, sys, time, traceback

jobs, results_path = json.loads(sys.argv[1]), sys.argv[2]
results = {}
for name, script, args in jobs:
    folder = os.path.dirname(os.path.abspath(script))
    path_before, modules_before = list(sys.path), set(sys.modules)
    sys.argv = [script, *args]
    sys.path[0] = folder
    out, err, start = io.StringIO(), io.StringIO(), time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as stop:
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
    sys.path[:] = path_before
    for module in set(sys.modules) - modules_before:
        where = getattr(sys.modules[module], "__file__", None) or ""
        if os.path.abspath(where).startswith(folder + os.sep):
            del sys.modules[module]
    results[name] = {
        "returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "seconds": time.perf_counter() - start
    }
    with open(results_path, "w") as fh:
        json.dump(results, fh)
"""


@dataclass(frozen=True)
class ScriptRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_scripts(
    jobs: dict[str, tuple[Path, list[str]]], results: Path, *, cwd: Path, env: dict[str, str], timeout: float
) -> dict[str, ScriptRun]:
    """Run each job (name -> (script, arguments)), in order, in one fresh interpreter; name -> its run.
    `results` is the file the interpreter reports through. An interpreter that dies before reporting
    every job raises RuntimeError with its own stderr (a timeout: subprocess.TimeoutExpired)."""
    payload = json.dumps([[name, str(script), list(args)] for name, (script, args) in jobs.items()])
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, payload, str(results)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    found = json.loads(results.read_text()) if results.is_file() else {}
    if done.returncode != 0 or set(found) != set(jobs):
        raise RuntimeError(
            f"the script runner exited {done.returncode} after {sorted(found)} of {list(jobs)}:\n{done.stderr[-3000:]}"
        )
    return {name: ScriptRun(**found[name]) for name in jobs}
