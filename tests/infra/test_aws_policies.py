"""infra/aws/*.json: IAM policy documents that fit ray_cluster.yaml's instance profile and AMI."""
from __future__ import annotations

import fnmatch
import json
import re

import pytest

from .conftest import REPO, read_yaml

POLICIES = sorted((REPO / "infra" / "aws").glob("*.json"))


def _statements(path):
    doc = json.loads(path.read_text())
    assert doc["Version"] == "2012-10-17"
    assert isinstance(doc["Statement"], list) and doc["Statement"]
    for st in doc["Statement"]:
        assert st["Effect"] in ("Allow", "Deny")
        assert "Action" in st and ("Resource" in st or "Principal" in st)
    return doc["Statement"]


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_policy_documents_are_well_formed(path):
    _statements(path)


def test_policies_fit_the_cluster_config():
    cluster = read_yaml("ray_cluster.yaml")
    nodes = [t["node_config"] for t in cluster["available_node_types"].values()]
    profiles = {n["IamInstanceProfile"]["Name"] for n in nodes}
    assert len(profiles) == 1
    (profile,) = profiles
    trust = _statements(REPO / "infra/aws/ec2-trust-policy.json")
    assert trust[0]["Principal"] == {"Service": "ec2.amazonaws.com"} and trust[0]["Action"] == "sts:AssumeRole"
    launch = _statements(REPO / "infra/aws/launch-workers-policy.json")
    pass_role = next(s for s in launch if s["Action"] == "iam:PassRole")
    assert pass_role["Resource"].endswith(f":role/{profile}")
    ssm = next(s for s in launch if "ssm:GetParameters" in s["Action"])
    for node in nodes:
        image = node["ImageId"]
        if image.startswith("resolve:ssm:"):
            arn = "arn:aws:ssm:us-west-2::parameter" + image.removeprefix("resolve:ssm:")
            assert fnmatch.fnmatch(arn, ssm["Resource"]), (arn, ssm["Resource"])
    # The documented IAM commands create that role and profile from these files.
    doc = (REPO / "docs/deploy.md").read_text()
    for path in POLICIES:
        assert f"file://infra/aws/{path.name}" in doc
    assert re.search(rf"create-instance-profile --instance-profile-name {profile}\b", doc)
