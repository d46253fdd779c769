"""Run locations that point nowhere or into the code checkout are refused before any work, naming
the environment variable that was probably unset at `prefect deploy`."""

from __future__ import annotations

from pathlib import Path

import pytest

from gcmine.tasks.infra.errors import InputError
from gcmine.tasks.infra.preflight import check_config_path, check_location, code_checkout, require_exists
from gcmodels.config import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def test_the_checkout_is_the_repository_root() -> None:
    assert code_checkout() == ROOT and (ROOT / "flows").is_dir()


@pytest.mark.parametrize("value", ["", "  ", ".", "./", "file://"])
def test_empty_or_dot_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(
        ConfigError, match=r"out=.* names no location: GCMINE_OUT was probably unset when `prefect deploy` ran"
    ):
        check_location("out", value, "GCMINE_OUT")
    with pytest.raises(ConfigError, match="GCMINE_OUT"):  # a CLI run too: '' or '.' is never meant
        check_location("out", value, "GCMINE_OUT", deployment=False)


def test_unfilled_template_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"parameter images='\{\{ \$GCMINE_IMAGES \}\}' was never filled in: GCMINE_IMAGES"
    ):
        check_location("images", "{{ $GCMINE_IMAGES }}", "GCMINE_IMAGES")


@pytest.mark.parametrize("inside", ["", "flows", ".venv/lib", "runs"])
def test_the_code_checkout_is_refused_in_a_deployment_run(inside: str, monkeypatch) -> None:
    path = str(ROOT / inside) if inside else str(ROOT)
    with pytest.raises(ConfigError, match=rf"images={path!r} is .*inside the code checkout {ROOT} .*GCMINE_IMAGES"):
        check_location("images", path, "GCMINE_IMAGES")
    monkeypatch.chdir(ROOT)  # a relative path is taken in the run's working directory: the checkout
    with pytest.raises(ConfigError, match="inside the code checkout"):
        check_location("out", inside or "flows", "GCMINE_OUT")
    check_location("images", path, "GCMINE_IMAGES", deployment=False)  # `gcmine run` from the checkout: its choice


@pytest.mark.parametrize("value", ["runs/cars", "s3://bucket/runs/cars", "/data/runs/cars", "file:///data/cars"])
def test_locations_outside_the_checkout_or_in_its_runs_folder_pass(value: str, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    check_location("out", value, "GCMINE_OUT")


def test_config_path(tmp_path, monkeypatch) -> None:
    check_config_path(None, "GCMINE_CONFIG")  # the defaults
    for value in ("", ".", "{{ $GCMINE_CONFIG }}"):
        with pytest.raises(ConfigError, match="GCMINE_CONFIG was probably unset"):
            check_config_path(value, "GCMINE_CONFIG")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError, match=rf"config file nope.yaml does not exist \(relative to the working directory {tmp_path}"
    ):
        check_config_path("nope.yaml", "GCMINE_CONFIG")
    with pytest.raises(ConfigError, match="is a directory"):
        check_config_path(str(tmp_path), "GCMINE_CONFIG")
    (tmp_path / "s.yaml").write_text("score: {draws: 4}\n")
    check_config_path("s.yaml", "GCMINE_CONFIG")


def test_require_exists(tmp_path) -> None:
    require_exists(str(tmp_path), "IMAGES")
    with pytest.raises(InputError, match=rf"^IMAGES {tmp_path}/nope does not exist$"):
        require_exists(str(tmp_path / "nope"), "IMAGES")
