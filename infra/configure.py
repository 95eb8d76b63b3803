"""Render the deployment files for your bucket, image and region, then check them.

    python infra/configure.py --bucket my-bucket --image 123456789012.dkr.ecr.us-west-2.amazonaws.com/seem-ray:0.1.0

writes out/deploy/{serve.yaml, rayservice.yaml, rayjob.yaml, ray_cluster.yaml}: the files of this
repository (infra/serve.yaml, infra/kuberay/*.yaml, ray_cluster.yaml) with

- the feature store, the images to segment, the output and the image URIs the service may read
  under s3://BUCKET/ (or exactly the URIs given with --store / --images / --output),
- the container image of both KubeRay manifests (and --service-account for IRSA on EKS),
- the AWS region of the cluster launcher,

and the RayService's serveConfigV2 set to the rendered serve.yaml, so the service is the same
wherever it runs. Every rendered file then goes through infra/check.py's checks.
"""
from __future__ import annotations

import argparse
import copy
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "infra"))

import check  # noqa: E402  (infra/check.py)

SOURCES = {
    "serve.yaml": REPO / "infra" / "serve.yaml",
    "rayservice.yaml": REPO / "infra" / "kuberay" / "rayservice.yaml",
    "rayjob.yaml": REPO / "infra" / "kuberay" / "rayjob.yaml",
    "ray_cluster.yaml": REPO / "ray_cluster.yaml",
}


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings (serveConfigV2, the entrypoint) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def _set_images(cluster: dict, image: str, service_account: str | None) -> None:
    for _, template in check._pod_templates(cluster):
        spec = template.setdefault("spec", {})
        for c in spec.get("containers", []):
            c["image"] = image
        if service_account:
            spec["serviceAccountName"] = service_account


def _replace_option(tokens: list[str], option: str, value: str) -> None:
    i = tokens.index(option)
    tokens[i + 1] = value


def render(bucket: str, image: str, region: str, images: str | None = None, output: str | None = None,
           store: str | None = None, service_account: str | None = None) -> dict[str, str]:
    """File name -> rendered YAML text."""
    images = images or f"s3://{bucket}/images/"
    output = output or f"s3://{bucket}/segmented/"
    store = store or f"s3://{bucket}/features"
    src = {name: check.load_yaml(path) for name, path in SOURCES.items()}

    serve = copy.deepcopy(src["serve.yaml"])
    for app in serve["applications"]:
        app["args"]["store"] = store
        app["args"]["allowed_uri_prefixes"] = [f"s3://{bucket}/"]

    service = copy.deepcopy(src["rayservice.yaml"])
    service["spec"]["serveConfigV2"] = dump(serve)
    _set_images(service["spec"]["rayClusterConfig"], image, service_account)

    job = copy.deepcopy(src["rayjob.yaml"])
    tokens = shlex.split(job["spec"]["entrypoint"])
    tokens[2] = images  # seem segment SRC …
    _replace_option(tokens, "--out", output)
    _replace_option(tokens, "--store", store)
    job["spec"]["entrypoint"] = shlex.join(tokens)
    _set_images(job["spec"]["rayClusterSpec"], image, service_account)

    cluster = copy.deepcopy(src["ray_cluster.yaml"])
    cluster["provider"]["region"] = region

    header = "# Rendered by infra/configure.py from {} — edit the source and render again.\n"
    return {
        "serve.yaml": header.format("infra/serve.yaml") + dump(serve),
        "rayservice.yaml": header.format("infra/kuberay/rayservice.yaml") + dump(service),
        "rayjob.yaml": header.format("infra/kuberay/rayjob.yaml") + dump(job),
        "ray_cluster.yaml": header.format("ray_cluster.yaml") + dump(cluster),
    }


def check_rendered(out_dir: Path, build: bool = True) -> list[check.Report]:
    return [
        check.check_cluster(out_dir / "ray_cluster.yaml"),
        check.check_serve_config(out_dir / "serve.yaml", build=build),
        check.check_kuberay(out_dir / "rayjob.yaml", serve_config=out_dir / "serve.yaml"),
        check.check_kuberay(out_dir / "rayservice.yaml", serve_config=out_dir / "serve.yaml"),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bucket", required=True, help="S3 bucket for images, features and outputs")
    parser.add_argument("--image", default="seem-ray:0.1.0", help="container image built from infra/Dockerfile")
    parser.add_argument("--region", default="us-west-2", help="AWS region of the cluster launcher")
    parser.add_argument("--images", help="images to segment (default s3://BUCKET/images/)")
    parser.add_argument("--output", help="output of the bulk job (default s3://BUCKET/segmented/)")
    parser.add_argument("--store", help="feature store (default s3://BUCKET/features)")
    parser.add_argument("--service-account", help="Kubernetes service account of the Ray pods (IRSA on EKS)")
    parser.add_argument("-o", "--out-dir", type=Path, default=REPO / "out" / "deploy")
    parser.add_argument("--no-build", action="store_true", help="check the Serve config without building the app")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bucket.startswith("s3://") or "/" in args.bucket:
        parser.error("--bucket takes a bucket name, not a URI")
    sys.path.insert(0, str(REPO))
    files = render(args.bucket, args.image, args.region, args.images, args.output, args.store, args.service_account)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out_dir / name).write_text(text, encoding="utf-8")
    reports = check_rendered(args.out_dir, build=not args.no_build)
    for r in reports:
        print(r.line())
    failed = [r for r in reports if not r.ok]
    print(f"rendered {len(files)} files into {args.out_dir}: {len(reports) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
