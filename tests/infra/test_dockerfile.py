"""infra/Dockerfile: CUDA Ray base, the README's install step, the default weights inside."""
from __future__ import annotations

import re

import pytest

import check

from .conftest import REPO

README_STEP = ("-m", "pip", "install", "-c", "constraints.txt", "-e", ".[test]")


def test_dockerfile_passes():
    report = check.check_dockerfile(REPO / "infra" / "Dockerfile")
    assert report.ok, report.errors


def test_install_step_is_the_readmes():
    # The README's set-up is `make` (which installs with the Makefile's pip command); the README
    # also spells the command out. The Dockerfile and ray_cluster.yaml must run the same one.
    assert check.makefile_install_step() == README_STEP
    readme = (REPO / "README.md").read_text()
    assert "pip install -c constraints.txt" in readme
    assert README_STEP in check.pip_commands(re.search(r"`(python -m pip install[^`]*)`", readme).group(1))
    runs = [r for ins, r in check.dockerfile_instructions((REPO / "infra/Dockerfile").read_text()) if ins == "RUN"]
    assert README_STEP in [c for r in runs for c in check.pip_commands(r)]


def test_pip_normalisation_only_drops_quiet_flags():
    assert check.pip_commands(".venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'") == [README_STEP]
    command = "cd x && python -m pip install --no-cache-dir -c constraints.txt -e '.[test]'"
    assert check.pip_commands(command) == [README_STEP]
    assert check.pip_commands("python -m pip install -e '.[test]'") != [README_STEP]


def test_dockerignore_keeps_the_weights_and_drops_the_venv():
    text = (REPO / ".dockerignore").read_text()
    lines = {l.strip() for l in text.splitlines() if l.strip() and not l.startswith("#")}
    assert ".venv" in lines and ".git" in lines
    assert not any(l.startswith(("model", "*.safetensors", "**/*.safetensors")) for l in lines)


def _broken(tmp_path, old: str, new: str):
    text = (REPO / "infra/Dockerfile").read_text()
    assert old in text
    path = tmp_path / "Dockerfile"
    path.write_text(text.replace(old, new))
    return check.check_dockerfile(path).errors


@pytest.mark.parametrize("old,new,message", [
    ("-c constraints.txt -e '.[test]'", "-e '.[test]'", "install step"),
    ("py311-cu128", "py311", "not a CUDA build"),
    ("rayproject/ray:2.60.0", "rayproject/ray:2.9.0", "Ray 2.9.0"),
    ("test -s model/weights/seem-tiny.safetensors", "true", "default weights"),
    ("COPY --chown=ray:users . .", "COPY --chown=ray:users pyproject.toml .", "not copied"),
])
def test_broken_dockerfile_is_rejected(tmp_path, old, new, message):
    errors = _broken(tmp_path, old, new)
    assert any(message in e for e in errors), errors


def test_line_continuations_are_joined():
    text = "FROM a\nRUN python -m pip install \\\n    -c constraints.txt \\\n    -e '.[test]'\n"
    assert check.dockerfile_instructions(text)[1] == ("RUN", "python -m pip install -c constraints.txt -e '.[test]'")
