"""The deployment file parses, its entrypoints resolve to the gcmine flows, its parameters are
the flows' own, and the production pieces (schedule, one-at-a-time, event trigger) are there.
tests/flows/test_deploy_server.py deploys it on a real server."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _spec() -> dict:
    return yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())


def test_entrypoints_resolve_to_flows() -> None:
    from prefect.flows import load_flow_from_entrypoint

    spec = _spec()
    assert {d["name"] for d in spec["deployments"]} == {"production", "reprocess", "watch"}
    for dep in spec["deployments"]:
        path, name = dep["entrypoint"].split(":")
        flow = load_flow_from_entrypoint(f"{ROOT / path}:{name}")
        assert flow.name in ("gcmine-production", "gcmine-watch"), flow.name
        params = set(flow.parameters.properties)
        given = set(dep.get("parameters", {})) | {k for t in dep.get("triggers", []) for k in t.get("parameters", {})}
        assert given <= params, (dep["name"], given - params)
        assert set(flow.parameters.required or ()) <= given, (dep["name"], flow.parameters.required)


def test_production_pieces() -> None:
    deps = {d["name"]: d for d in _spec()["deployments"]}
    prod, reprocess = deps["production"], deps["reprocess"]
    assert prod["schedules"][0]["cron"] and prod["concurrency_limit"]["limit"] == 1
    assert prod["parameters"]["config"] == "{{ $GCMINE_CONFIG }}"
    (trigger,) = reprocess["triggers"]
    assert trigger["expect"] == ["gcmine.dataset.updated"]
    assert trigger["parameters"] == {"images": "{{ event.payload.uri }}", "out": "{{ event.payload.out }}"}
    assert deps["watch"]["schedules"][0]["interval"] > 0
    assert {d["work_pool"]["name"] for d in deps.values()} == {"gcmine-process"}
    assert (ROOT / "deployments" / "settings.yaml").is_file()


def test_shipped_settings_file_is_valid() -> None:
    from gcmine.flows.config import load_settings

    settings = load_settings(ROOT / "deployments" / "settings.yaml")
    assert settings.runtime.progress is False


def test_a_parameter_left_templated_is_a_clear_error() -> None:
    """`{{ $GCMINE_IMAGES }}` stays as it is when the variable was unset at `prefect deploy`."""
    import pytest

    from gcmine.flows.production import mine_configured, watch
    from gcmodels.config import ConfigError

    with pytest.raises(ConfigError, match=r"parameter images='\{\{ \$GCMINE_IMAGES \}\}' was never filled in"):
        mine_configured.fn(images="{{ $GCMINE_IMAGES }}", out="runs/x")
    with pytest.raises(ConfigError, match=r"parameter config="):
        watch.fn(uri="data", out="runs/x", config="{{ $GCMINE_CONFIG }}")
