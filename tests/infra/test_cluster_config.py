"""ray_cluster.yaml against Ray's own cluster-config schema and Ray's validate_config."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray.autoscaler

import check

from .conftest import REPO


def test_ray_cluster_yaml_passes_rays_checks():
    report = check.check_cluster(REPO / "ray_cluster.yaml")
    assert report.ok, report.errors


def test_the_schema_is_the_one_shipped_with_ray():
    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert check.ray_cluster_schema() == schema
    assert {"cluster_name", "provider"} <= set(schema["required"])


def test_shape_cpu_head_and_gpu_workers_from_zero():
    cfg = check.load_yaml(REPO / "ray_cluster.yaml")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]["node_config"]["InstanceType"]
    assert not head.startswith(("g", "p"))
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert gpu and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu)
    assert all(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in gpu)


def _errors(mutated, change) -> list[str]:
    return check.check_cluster(mutated("ray_cluster.yaml", change)).errors


def test_missing_required_field_is_rejected(mutated):
    errors = _errors(mutated, lambda c: c.pop("provider"))
    assert any("'provider' is a required property" in e for e in errors), errors


def test_wrong_type_is_rejected(mutated):
    errors = _errors(mutated, lambda c: c.__setitem__("max_workers", "eight"))
    assert any("max_workers" in e and "is not of type 'integer'" in e for e in errors), errors


def test_unknown_node_type_field_is_rejected(mutated):
    errors = _errors(mutated, lambda c: c["available_node_types"]["gpu"].__setitem__("min_worker", 0))
    assert any("'min_worker' was unexpected" in e for e in errors), errors


def test_head_node_type_must_exist(mutated):
    # Passes the JSON schema; Ray's validate_config is what catches it.
    errors = _errors(mutated, lambda c: c.__setitem__("head_node_type", "no-such-type"))
    assert any("validate_config" in e for e in errors), errors


def test_gpu_workers_must_start_at_zero(mutated):
    errors = _errors(mutated, lambda c: c["available_node_types"]["gpu"].__setitem__("min_workers", 2))
    assert any("min_workers 0" in e for e in errors), errors


def test_setup_must_install_with_the_readme_step(mutated):
    errors = _errors(mutated, lambda c: c.__setitem__("setup_commands", ["cd ~/seem-ray && pip install -e ."]))
    assert any("install step" in e for e in errors), errors


def test_image_ray_version_must_match(mutated):
    errors = _errors(mutated, lambda c: c["docker"].__setitem__("worker_image", "rayproject/ray:2.9.0-py311-gpu"))
    assert any("Ray 2.9.0" in e for e in errors), errors
