"""The package import rules of docs/architecture.md, checked on the source."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("storage", "rayinit", "speech", "model", "store", "pipeline", "serving", "training")


def _imports(path: Path) -> set[str]:
    """Top-level names of every module imported anywhere in the file (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _sources() -> dict[str, list[Path]]:
    found = {pkg: sorted((ROOT / pkg).rglob("*.py")) for pkg in PACKAGES}
    found["(top level, bench, infra)"] = [ROOT / "seem_cli.py", *(ROOT / "bench").rglob("*.py"),
                                         *(ROOT / "infra").rglob("*.py")]
    return found


def test_only_storage_imports_boto3():
    offenders = [str(path.relative_to(ROOT)) for pkg, paths in _sources().items() if pkg != "storage"
                 for path in paths if _imports(path) & {"boto3", "botocore"}]
    assert offenders == []
    assert {"boto3", "botocore"} <= set().union(*map(_imports, (ROOT / "storage").rglob("*.py")))


def test_storage_is_the_bottom_package():
    ours = set(PACKAGES) | {"seem_cli", "bench", "tests"}
    for path in (ROOT / "storage").rglob("*.py"):
        assert not (_imports(path) & ours), path


#: What each package may import of ours (docs/architecture.md, "Packages").
ALLOWED = {
    "storage": set(),
    "rayinit": set(),  # starting or joining Ray, below the three packages that use Ray
    "speech": {"storage"},  # lazily, for whisper weights on s3://
    "model": {"storage", "speech"},
    "store": {"storage", "model"},
    "pipeline": {"storage", "rayinit", "speech", "model", "store"},
    "serving": {"storage", "rayinit", "speech", "model", "store"},
    "training": {"storage", "rayinit", "model"},
}

#: Scripts inside a package that the package never imports.
SCRIPTS = {"pipeline/samples/make_samples.py": {"training"}}  # regenerates the bundled sample images


def test_packages_import_only_what_the_architecture_allows():
    ours = set(PACKAGES)
    wrong = {}
    for pkg, allowed in ALLOWED.items():
        for path in (ROOT / pkg).rglob("*.py"):
            script_may = SCRIPTS.get(str(path.relative_to(ROOT)), set())
            extra = (_imports(path) & ours) - allowed - script_may - {pkg}
            if extra:
                wrong[str(path.relative_to(ROOT))] = sorted(extra)
    assert wrong == {}
