"""The deployment file parses and its entrypoints resolve to the gcmine flows."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_entrypoints_resolve_to_flows() -> None:
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    assert spec["deployments"], "no deployment defined"
    for dep in spec["deployments"]:
        path, name = dep["entrypoint"].split(":")
        flow = load_flow_from_entrypoint(f"{ROOT / path}:{name}")
        assert flow.name == "gcmine"
        params = set(flow.parameters.properties)
        assert set(dep.get("parameters", {})) <= params, (dep["name"], params)
        assert {"images", "out", "labels", "settings"} <= params
