"""infra/kuberay/*.yaml: parse, carry what the RayJob/RayService CRDs require, match serve.yaml."""
from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

import check

from .conftest import REPO, read_yaml
from .extract_crd_schema import prune

MANIFESTS = ["infra/kuberay/rayjob.yaml", "infra/kuberay/rayservice.yaml"]
CLUSTER_KEY = {"infra/kuberay/rayjob.yaml": "rayClusterSpec", "infra/kuberay/rayservice.yaml": "rayClusterConfig"}


@pytest.mark.parametrize("relpath", MANIFESTS)
def test_manifest_passes(relpath):
    report = check.check_kuberay(REPO / relpath, build=relpath.endswith("rayservice.yaml"))
    assert report.ok, report.errors


def test_extracted_schema_names_its_source_and_keeps_the_crd_requirements():
    schemas = json.loads(check.CRD_SCHEMA.read_text())
    assert "ray-project/kuberay v1.7.0" in schemas["$comment"]
    for kind, key in (("RayJob", "rayClusterSpec"), ("RayService", "rayClusterConfig")):
        schema = schemas[kind]
        jsonschema.Draft7Validator.check_schema(schema)
        cluster = schema["properties"]["spec"]["properties"][key]
        assert cluster["required"] == ["headGroupSpec"]
        group = cluster["properties"]["workerGroupSpecs"]["items"]
        assert set(group["required"]) == {"groupName", "maxReplicas", "minReplicas", "template"}
        head = cluster["properties"]["headGroupSpec"]
        assert head["required"] == ["template"]
        pod = head["properties"]["template"]["properties"]["spec"]
        assert pod["required"] == ["containers"]
        assert pod["properties"]["containers"]["items"]["required"] == ["name"]
    assert schemas["RayService"]["properties"]["spec"]["required"] == ["rayClusterConfig"]


def test_serve_config_v2_is_infra_serve_yaml():
    service = read_yaml("infra/kuberay/rayservice.yaml")
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == read_yaml("infra/serve.yaml")


def test_versions_agree_with_the_dockerfile_and_the_installed_ray():
    for relpath in MANIFESTS:
        cluster = read_yaml(relpath)["spec"][CLUSTER_KEY[relpath]]
        assert cluster["rayVersion"] == check.ray_version()
    base = [rest for ins, rest in check.dockerfile_instructions((REPO / "infra/Dockerfile").read_text())
            if ins == "ARG" and rest.startswith("BASE_IMAGE=")]
    assert base and f":{check.ray_version()}-" in base[0]


def test_rayjob_entrypoint_is_a_valid_seem_command():
    entry = read_yaml("infra/kuberay/rayjob.yaml")["spec"]["entrypoint"]
    assert entry.startswith("seem segment s3://")
    assert check.check_seem_command(entry) is None
    assert "--gpus-per-actor" in entry  # GPU workers start at 0: the actors must ask for GPUs


def _errors(mutated, relpath, change, serve_config=REPO / "infra/serve.yaml"):
    return check.check_kuberay(mutated(relpath, change), serve_config=serve_config).errors


def _group(data, relpath):
    return data["spec"][CLUSTER_KEY[relpath]]["workerGroupSpecs"][0]


def _head_container(data, relpath):
    return data["spec"][CLUSTER_KEY[relpath]]["headGroupSpec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("relpath", MANIFESTS)
def test_missing_required_field_is_rejected(mutated, relpath):
    errors = _errors(mutated, relpath, lambda d: _group(d, relpath).pop("maxReplicas"))
    assert any("'maxReplicas' is a required property" in e for e in errors), errors


@pytest.mark.parametrize("relpath", MANIFESTS)
def test_wrong_type_is_rejected(mutated, relpath):
    errors = _errors(mutated, relpath, lambda d: _group(d, relpath).__setitem__("minReplicas", "zero"))
    assert any("'zero' is not of type 'integer'" in e for e in errors), errors


@pytest.mark.parametrize("relpath", MANIFESTS)
def test_misspelt_field_is_rejected(mutated, relpath):
    errors = _errors(mutated, relpath, lambda d: _head_container(d, relpath).__setitem__("imagePullPolicyy", "Always"))
    assert any("'imagePullPolicyy' was unexpected" in e for e in errors), errors


def test_container_without_name_is_rejected(mutated):
    relpath = MANIFESTS[0]
    errors = _errors(mutated, relpath, lambda d: _head_container(d, relpath).pop("name"))
    assert any("'name' is a required property" in e for e in errors), errors


def test_rayservice_without_cluster_config_is_rejected(mutated):
    errors = _errors(mutated, MANIFESTS[1], lambda d: d["spec"].pop("rayClusterConfig"))
    assert any("'rayClusterConfig' is a required property" in e for e in errors), errors


def test_min_above_max_replicas_is_rejected(mutated):
    relpath = MANIFESTS[0]
    errors = _errors(mutated, relpath, lambda d: _group(d, relpath).update(minReplicas=9, maxReplicas=8))
    assert any("minReplicas 9 > maxReplicas 8" in e for e in errors), errors


def test_invalid_name_is_rejected(mutated):
    errors = _errors(mutated, MANIFESTS[0], lambda d: d["metadata"].__setitem__("name", "Seem_Segment"))
    assert any("metadata/name" in e for e in errors), errors


def test_ray_version_mismatch_is_rejected(mutated):
    relpath = MANIFESTS[1]
    errors = _errors(mutated, relpath, lambda d: d["spec"]["rayClusterConfig"].__setitem__("rayVersion", "2.9.0"))
    assert any("rayVersion '2.9.0'" in e for e in errors), errors


def test_serve_config_v2_drift_is_rejected(mutated):
    def change(d):
        cfg = yaml.safe_load(d["spec"]["serveConfigV2"])
        cfg["applications"][0]["args"]["autoscaling"]["max_replicas"] = 3
        d["spec"]["serveConfigV2"] = yaml.safe_dump(cfg)

    errors = _errors(mutated, MANIFESTS[1], change)
    assert any("differs from infra/serve.yaml" in e for e in errors), errors


def test_invalid_serve_config_v2_is_rejected(mutated):
    errors = _errors(mutated, MANIFESTS[1], lambda d: d["spec"].__setitem__("serveConfigV2", "applications: 3\n"),
                     serve_config=None)
    assert any(e.startswith("serveConfigV2: Serve config schema") for e in errors), errors


def test_bad_entrypoint_option_is_rejected(mutated):
    errors = _errors(mutated, MANIFESTS[0],
                     lambda d: d["spec"].__setitem__("entrypoint", d["spec"]["entrypoint"] + " --gpus-per-actr 1"))
    assert any("does not parse" in e and "--gpus-per-actr" in e for e in errors), errors


def test_prune_keeps_requirements_and_closes_objects():
    crd = {"type": "object", "required": ["a"], "properties": {
        "a": {"type": "object", "properties": {"n": {"x-kubernetes-int-or-string": True}, "m": {"type": "string"}}},
        "b": {"type": "array", "items": {"type": "object", "required": ["k"], "properties": {"k": {"type": "string"}}}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"z": {"type": "string"}}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    }}
    schema = prune(crd, {"a": {"n": 1}, "b": [{"k": "x"}], "labels": {"x": "y"}})
    v = jsonschema.Draft7Validator(schema)
    assert not list(v.iter_errors({"a": {"n": "1Gi", "m": "s"}, "b": [{"k": "y"}], "labels": {"p": "q"},
                                   "free": {"anything": 1}}))
    assert list(v.iter_errors({"b": []}))                         # a required
    assert list(v.iter_errors({"a": {"typo": 1}}))                # unknown field
    assert list(v.iter_errors({"a": {"n": 1.5}}))                 # int-or-string
    assert list(v.iter_errors({"a": {}, "b": [{}]}))              # items' required
    assert list(v.iter_errors({"a": {}, "labels": {"p": 1}}))     # map values
    assert schema["properties"]["free"].get("additionalProperties") is None


def _env(container, name):
    return next(e for e in container["env"] if e["name"] == name)


def test_service_api_key_secret_is_required(mutated):
    relpath = MANIFESTS[1]
    container = lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]  # noqa: E731
    assert not check.check_kuberay(REPO / relpath).errors
    errors = _errors(mutated, relpath, lambda d: _env(container(d), "SEEM_API_KEYS")["valueFrom"]["secretKeyRef"]
                     .__setitem__("optional", True))
    assert any("must not be optional" in e for e in errors), errors
    errors = _errors(mutated, relpath, lambda d: container(d)["env"].remove(
        _env(container(d), "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH")))
    assert any("serving.proxy_guard:middlewares" in e for e in errors), errors


def test_service_pods_get_seem_serves_serve_latency_settings():
    # The settings docs/benchmarks.md measured for the one-click path, in every pod as in `seem serve`.
    from serving.cli import SERVE_LATENCY_ENV

    spec = yaml.safe_load((REPO / MANIFESTS[1]).read_text())["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
        assert {k: env.get(k) for k in SERVE_LATENCY_ENV} == SERVE_LATENCY_ENV, group.get("groupName", "head")
