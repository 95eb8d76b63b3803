"""infra/configure.py renders checked deployment files for a bucket, an image and a region."""
from __future__ import annotations

import shlex
import subprocess
import sys

import yaml

import check
import configure

from .conftest import REPO, read_yaml


def test_render_with_the_committed_values_reproduces_the_committed_files():
    files = {name: yaml.safe_load(text) for name, text in
             configure.render("seem-ray-data", "seem-ray:0.1.0", "us-west-2").items()}
    assert files["serve.yaml"] == read_yaml("infra/serve.yaml")
    assert files["rayjob.yaml"] == read_yaml("infra/kuberay/rayjob.yaml")
    assert files["ray_cluster.yaml"] == read_yaml("ray_cluster.yaml")
    service = read_yaml("infra/kuberay/rayservice.yaml")
    rendered = files["rayservice.yaml"]
    assert yaml.safe_load(rendered["spec"].pop("serveConfigV2")) == yaml.safe_load(service["spec"].pop("serveConfigV2"))
    assert rendered == service


def test_render_for_another_bucket_image_and_region(tmp_path):
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/seem-ray:9.9"
    proc = subprocess.run([sys.executable, "infra/configure.py", "--bucket", "other-bucket", "--image", image,
                           "--region", "eu-west-1", "--service-account", "seem-ray", "-o", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed, 0 failed" in proc.stdout
    serve = yaml.safe_load((tmp_path / "serve.yaml").read_text())
    args = serve["applications"][0]["args"]
    assert args["store"] == "s3://other-bucket/features"
    assert args["allowed_uri_prefixes"] == ["s3://other-bucket/"]
    service = yaml.safe_load((tmp_path / "rayservice.yaml").read_text())
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == serve
    job = yaml.safe_load((tmp_path / "rayjob.yaml").read_text())
    tokens = shlex.split(job["spec"]["entrypoint"])
    assert tokens[:3] == ["seem", "segment", "s3://other-bucket/images/"]
    assert tokens[tokens.index("--out") + 1] == "s3://other-bucket/segmented/"
    assert tokens[tokens.index("--store") + 1] == "s3://other-bucket/features"
    for manifest, key in ((service, "rayClusterConfig"), (job, "rayClusterSpec")):
        for _, template in check._pod_templates(manifest["spec"][key]):
            assert template["spec"]["serviceAccountName"] == "seem-ray"
            assert {c["image"] for c in template["spec"]["containers"]} == {image}
    assert yaml.safe_load((tmp_path / "ray_cluster.yaml").read_text())["provider"]["region"] == "eu-west-1"


def test_a_uri_instead_of_a_bucket_name_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, "infra/configure.py", "--bucket", "s3://b", "-o", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "bucket name" in proc.stderr
