"""Extract, from KubeRay's CRDs, the JSON schema that our RayJob/RayService manifests are checked against.

    python tests/infra/extract_crd_schema.py KUBERAY_CHECKOUT/ray-operator/config/crd/bases \
        --version v1.7.0 --commit <sha> > tests/infra/kuberay_crds.schema.json

The CRDs are ~1 MB each (every PodSpec field spelled out). This keeps only what our
manifests touch: walking the CRD's `openAPIV3Schema` along the paths present in
infra/kuberay/*.yaml, it copies at every visited node its `type`, `required`, `enum`,
`minimum`/`maximum`, the int-or-string rule and, for objects, the names of ALL their
properties (unvisited ones as `{}`), closing the object with `additionalProperties: false`
unless the CRD keeps unknown fields. So the extracted schema rejects what the API server
(with kubectl's default strict field validation) rejects along those paths: a missing
required field, a wrong type, an unknown field name. Adding a new field to a manifest
needs a re-extraction (the checker says "Additional properties are not allowed").

On top, marked in `$comment`s, come two rules that are not in the CRDs: what the API
server needs of every object (apiVersion, kind, metadata.name) and KubeRay's own name
check from ray-operator/controllers/ray/utils/validation.go (DNS-1035 label, at most 47
characters for RayJob and RayService).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = {"RayJob": REPO / "infra/kuberay/rayjob.yaml", "RayService": REPO / "infra/kuberay/rayservice.yaml"}
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}
SCALAR_KEYS = ("type", "enum", "minimum", "maximum", "format")
DNS1035 = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_NAME = 47  # MaxRayJobNameLength = MaxRayServiceNameLength = MaxRayClusterNameLength (53) - 6


def _merge_instances(values: list[Any]) -> Any:
    """Several instance values at one schema node (array items) -> one value whose keys
    are the union (objects) or the concatenation (arrays): the paths to keep."""
    dicts = [v for v in values if isinstance(v, dict)]
    if dicts:
        keys: dict[str, list[Any]] = {}
        for d in dicts:
            for k, v in d.items():
                keys.setdefault(k, []).append(v)
        return {k: _merge_instances(v) for k, v in keys.items()}
    lists = [v for v in values if isinstance(v, list)]
    if lists:
        return [item for lst in lists for item in lst]
    return values[0] if values else None


def prune(node: dict[str, Any], instance: Any) -> dict[str, Any]:
    """The part of CRD schema `node` needed to validate `instance` (see the module doc)."""
    out: dict[str, Any] = {}
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    else:
        out.update({k: node[k] for k in SCALAR_KEYS if k in node})
    if node.get("type") == "object" or "properties" in node:
        if "required" in node:
            out["required"] = list(node["required"])
        props = node.get("properties")
        if props is not None:
            used = instance if isinstance(instance, dict) else {}
            out["properties"] = {name: prune(sub, used[name]) if name in used else {}
                                 for name, sub in props.items()}
            if not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
                out["additionalProperties"] = False
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            values = list(instance.values()) if isinstance(instance, dict) else []
            out["additionalProperties"] = prune(extra, _merge_instances(values))
    if node.get("type") == "array" and "items" in node:
        items = instance if isinstance(instance, list) else []
        out["items"] = prune(node["items"], _merge_instances(items))
    return out


def crd_schema(crd: dict[str, Any], version: str = "v1") -> dict[str, Any]:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"CRD {crd['metadata']['name']} has no version {version}")


def extract(crd_dir: Path, kuberay_version: str, commit: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "$comment": (f"Extracted by tests/infra/extract_crd_schema.py from ray-project/kuberay {kuberay_version} "
                     f"(commit {commit}), ray-operator/config/crd/bases/{{ray.io_rayjobs,ray.io_rayservices}}.yaml, "
                     "API version ray.io/v1, along the paths used by infra/kuberay/*.yaml."),
    }
    for kind, manifest_path in MANIFESTS.items():
        crd = yaml.safe_load((crd_dir / CRD_FILES[kind]).read_text())
        manifest = yaml.safe_load(manifest_path.read_text())
        schema = prune(crd_schema(crd), manifest)
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        schema["$comment"] = ("apiVersion/kind/metadata required by the Kubernetes API server; metadata.name pattern "
                              "and length from KubeRay's validation.go; everything else from the CRD.")
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
        schema["properties"]["apiVersion"] = {"const": "ray.io/v1"}
        schema["properties"]["kind"] = {"const": kind}
        schema["properties"]["metadata"] = {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": DNS1035, "maxLength": MAX_NAME}},
        }
        out[kind] = schema
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("crd_dir", type=Path, help="ray-operator/config/crd/bases of a KubeRay checkout")
    parser.add_argument("--version", required=True, help="the KubeRay release, e.g. v1.7.0")
    parser.add_argument("--commit", required=True, help="the checkout's commit")
    args = parser.parse_args(argv)
    json.dump(extract(args.crd_dir, args.version, args.commit), sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
