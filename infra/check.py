"""Checks of the deployment files against the schemas of the tools that read them.

    python infra/check.py                 # every file below, at its default path
    python infra/check.py cluster ray_cluster.yaml
    python infra/check.py serve infra/serve.yaml [--no-build]
    python infra/check.py kuberay infra/kuberay/rayjob.yaml infra/kuberay/rayservice.yaml [--serve-config FILE]
    python infra/check.py docker infra/Dockerfile
    python infra/check.py monitoring infra/prometheus.yml infra/kuberay/podmonitor.yaml \
        infra/grafana/dashboards/seem-ray.json

What each check holds a file to:
- cluster: Ray's own cluster-config JSON schema (ray/autoscaler/ray-schema.json of the installed
  Ray), then Ray's `prepare_config` + `validate_config` (what `ray up` runs before touching AWS);
  this project's shape (a CPU head, a GPU worker type with min_workers 0), the Ray version of the
  images, and the README's install step in setup_commands.
- serve: Serve's config schema (`ServeDeploySchema`); every import_path imports; with build, the
  application is built from its `args` exactly as `serve run`/`serve deploy` would (the builder's
  own validation included) and `deployments:` overrides must name deployments it has.
- kuberay: the RayJob/RayService CRDs (required fields, types and field names along the paths the
  manifests use, extracted from KubeRay into tests/infra/kuberay_crds.schema.json) and KubeRay's
  own checks (names, min <= max replicas); rayVersion and image tags against the installed Ray;
  a RayService's serveConfigV2 must be a valid Serve config equal to infra/serve.yaml; a RayJob's
  `seem` entrypoint must parse with the `seem` command's own parser.
- docker: a CUDA rayproject base of the installed Ray version, the repository copied in, the
  README's install step (the same pip command as the Makefile's), the default weights checked.
- monitoring: the Prometheus config's structure, the PodMonitor's selectors against the labels
  and port names of the KubeRay pods, the Grafana dashboard's structure and PromQL. Whether each
  queried series is really exported needs a running Ray: tests/infra/test_metrics_exported.py
  scrapes one (`missing_series` below does the comparison).

Exit status 0 when every file passes, 1 otherwise; one line per file.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

REPO = Path(__file__).resolve().parents[1]
CRD_SCHEMA = REPO / "tests" / "infra" / "kuberay_crds.schema.json"
DEFAULTS = {
    "cluster": [REPO / "ray_cluster.yaml"],
    "serve": [REPO / "infra" / "serve.yaml"],
    "kuberay": [REPO / "infra" / "kuberay" / "rayjob.yaml", REPO / "infra" / "kuberay" / "rayservice.yaml"],
    "docker": [REPO / "infra" / "Dockerfile"],
    "monitoring": [REPO / "infra" / "prometheus.yml", REPO / "infra" / "kuberay" / "podmonitor.yaml",
                   REPO / "infra" / "grafana" / "dashboards" / "seem-ray.json"],
}
METRICS_PORT = 8080
# Labels Prometheus itself attaches to every scraped series.
SCRAPE_LABELS = frozenset({"instance", "job"})
# Ray's series that exist only on nodes with GPUs (so a CPU-only scrape lacks them); the test
# checks that Ray's metrics agent source defines each of them.
RAY_GPU_ONLY_SERIES = frozenset({"ray_node_gpus_utilization", "ray_node_gram_used", "ray_node_gram_available",
                                 "ray_node_gpus_available"})


@dataclass
class Report:
    path: str
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def line(self) -> str:
        head = f"{'ok  ' if self.ok else 'FAIL'}  {self.path}"
        body = self.errors if self.errors else self.notes
        return head + "".join(f"\n      {m}" for m in body)


class CheckError(Exception):
    pass


def load_yaml(path: Path | str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise CheckError(f"not valid YAML: {e}") from None


def _open(config: dict | Path | str, dict_label: str = "<config>", label: str | None = None) -> tuple[Report, Any]:
    """A report for `config` (named `label`, else the file, else `dict_label`) and its content:
    a dict as given, a file parsed as YAML (a parse error goes into the report, content None)."""
    report = Report(label or (dict_label if isinstance(config, dict) else _rel(config)))
    if isinstance(config, dict):
        return report, config
    try:
        return report, load_yaml(config)
    except CheckError as e:
        report.errors.append(str(e))
        return report, None


def _rel(path: Path | str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def _schema_errors(validator: Any, instance: Any) -> list[str]:
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in errors]


def _one_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " …"


def ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


# --------------------------------------------------------------------------- install step
def _normalize_pip(tokens: list[str]) -> tuple[str, ...] | None:
    """`[…/]python -m pip install [flags] ARGS` -> ('-m', 'pip', 'install', ARGS…) without the
    flags that change only how pip talks (-q, --no-cache-dir, --progress-bar …)."""
    for i in range(len(tokens) - 2):
        if tokens[i:i + 3] == ["-m", "pip", "install"]:
            rest = [t for t in tokens[i + 3:] if t not in {"-q", "--quiet", "-qq", "--no-cache-dir",
                                                         "--disable-pip-version-check", "--no-input"}]
            return ("-m", "pip", "install", *rest)
    return None


def _shell_commands(text: str) -> list[list[str]]:
    """Simple shell text -> commands (split on && ; |), each as tokens."""
    out = []
    for part in re.split(r"&&|;|\|\|", text):
        try:
            tokens = shlex.split(part)
        except ValueError:
            continue
        if tokens:
            out.append(tokens)
    return out


def pip_commands(text: str) -> list[tuple[str, ...]]:
    """Every `python -m pip install …` in shell text, normalised."""
    found = []
    for tokens in _shell_commands(text):
        norm = _normalize_pip(tokens)
        if norm:
            found.append(norm)
    return found


def makefile_install_step(makefile: Path = REPO / "Makefile") -> tuple[str, ...]:
    """The install command `make demo` / `make test` run (the README's set-up), variables expanded."""
    text = makefile.read_text(encoding="utf-8")
    variables: dict[str, str] = {}
    for m in re.finditer(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?::=|\?=|=)\s*(.*)$", text, re.M):
        variables.setdefault(m.group(1), m.group(2).strip())

    def expand(s: str, depth: int = 0) -> str:
        if depth > 10:
            return s
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: expand(variables.get(m.group(1), ""), depth + 1), s)

    for line in text.splitlines():
        if line.startswith("\t"):
            found = pip_commands(expand(line.strip()))
            if found:
                return found[0]
    raise CheckError(f"{_rel(makefile)}: no `python -m pip install` recipe")


# --------------------------------------------------------------------------- cluster
def ray_cluster_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _image_ray_version(image: str) -> str | None:
    m = re.match(r"^(?:docker\.io/)?rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)", image)
    return m.group(1) if m else None


def check_cluster(config: dict | Path | str) -> Report:
    report, cfg = _open(config, "<cluster config>")
    if not report.ok:
        return report
    import jsonschema

    schema_errors = _schema_errors(jsonschema.Draft7Validator(ray_cluster_schema()), cfg)
    report.errors += [f"Ray cluster schema: {e}" for e in schema_errors]
    if schema_errors:
        return report
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(cfg)))
    except Exception as e:  # noqa: BLE001 - Ray raises ValueError/KeyError/jsonschema errors
        report.errors.append(f"Ray validate_config: {type(e).__name__}: {e}")
        return report
    # This project's shape.
    types = cfg["available_node_types"]
    head = types.get(cfg["head_node_type"], {})
    if _is_gpu_instance(head.get("node_config", {}).get("InstanceType", "")):
        report.errors.append("the head node type should be a CPU instance")
    gpu_workers = [name for name, t in types.items() if name != cfg["head_node_type"]
                   and _is_gpu_instance(t.get("node_config", {}).get("InstanceType", ""))]
    if not gpu_workers:
        report.errors.append("no GPU worker node type (InstanceType of a GPU family: g*, p*)")
    for name in gpu_workers:
        if types[name].get("min_workers", 0) != 0 or types[name].get("max_workers", 0) < 1:
            report.errors.append(f"GPU worker type {name!r} should autoscale from min_workers 0 to max_workers >= 1")
    docker = cfg.get("docker") or {}
    for key in ("image", "head_image", "worker_image"):
        if key in docker:
            v = _image_ray_version(docker[key])
            if v is not None and v != ray_version():
                report.errors.append(f"docker.{key} runs Ray {v}, this checkout's Ray is {ray_version()}")
    setup = " && ".join(cfg.get("setup_commands", []) + cfg.get("head_setup_commands", []))
    readme_step = makefile_install_step()
    if readme_step not in pip_commands(setup):
        report.errors.append(f"setup_commands lack the README's install step `python {' '.join(readme_step)}`")
    report.notes.append(f"Ray cluster schema and validate_config pass; head {cfg['head_node_type']!r}, "
                        f"GPU workers {gpu_workers}")
    return report


def _is_gpu_instance(instance_type: str) -> bool:
    return bool(re.match(r"^(g|p)\d", instance_type))


# --------------------------------------------------------------------------- serve
def build_serve_app(app: dict) -> list[str]:
    """Builds one application of a Serve config the way `serve run/deploy` does; returns its
    deployment names (raises on import or builder errors)."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app

    target = import_attr(app["import_path"])
    application = call_user_app_builder_with_args_if_necessary(target, app.get("args") or {})
    built = build_app(application, name=app["name"])
    return [d.name for d in built.deployments]


def check_serve_config(config: dict | Path | str, build: bool = True, label: str | None = None) -> Report:
    report, cfg = _open(config, "<serve config>", label)
    if not report.ok:
        return report
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        schema = ServeDeploySchema.model_validate(cfg)
    except ValidationError as e:
        for err in e.errors():
            report.errors.append(f"Serve config schema: {'/'.join(map(str, err['loc']))}: {err['msg']}")
        return report
    if not schema.applications:
        report.errors.append("no applications")
    for app in (cfg.get("applications") or []):
        name = app.get("name", "default")
        if build:
            try:
                deployments = build_serve_app(app)
            except Exception as e:  # noqa: BLE001 - import errors, builder validation, ...
                report.errors.append(f"application {name!r}: {app['import_path']} does not build: "
                                     f"{type(e).__name__}: {_one_line(e)}")
                continue
            unknown = [d["name"] for d in app.get("deployments") or [] if d["name"] not in deployments]
            if unknown:
                report.errors.append(f"application {name!r}: deployments {unknown} are not in the app ({deployments})")
            report.notes.append(f"application {name!r} ({app['import_path']}) builds: deployments {deployments}")
        else:
            try:
                from ray._common.utils import import_attr

                import_attr(app["import_path"])
            except Exception as e:  # noqa: BLE001
                report.errors.append(f"application {name!r}: cannot import {app['import_path']}: "
                                     f"{type(e).__name__}: {_one_line(e)}")
    return report


# --------------------------------------------------------------------------- kuberay
def crd_schemas() -> dict[str, dict]:
    return json.loads(CRD_SCHEMA.read_text())


def _cluster_spec(manifest: dict) -> dict | None:
    spec = manifest.get("spec") or {}
    return spec.get("rayClusterSpec") if manifest.get("kind") == "RayJob" else spec.get("rayClusterConfig")


def _pod_templates(cluster: dict) -> list[tuple[str, dict]]:
    out = [("headGroupSpec", (cluster.get("headGroupSpec") or {}).get("template") or {})]
    for g in cluster.get("workerGroupSpecs") or []:
        out.append((f"workerGroupSpecs[{g.get('groupName')}]", g.get("template") or {}))
    return out


def seem_parser() -> argparse.ArgumentParser:
    sys.path.insert(0, str(REPO))
    import seem_cli

    return seem_cli.build_parser()


def check_seem_command(command: str) -> str | None:
    """None when `seem …` parses with the seem CLI's parser, else its error message."""
    tokens = shlex.split(command)
    if not tokens or tokens[0] != "seem":
        return f"not a seem command: {command!r}"
    parser = seem_parser()
    errors: list[str] = []

    def _error(message: str) -> None:
        errors.append(message)
        raise SystemExit(2)

    def _hook(p: argparse.ArgumentParser) -> None:
        p.error = _error  # type: ignore[method-assign]
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    _hook(sub)

    _hook(parser)
    try:
        parser.parse_args(tokens[1:])
    except SystemExit:
        return errors[0] if errors else "does not parse"
    return None


def check_kuberay(path: Path | str, serve_config: Path | str | None = REPO / "infra" / "serve.yaml",
                  build: bool = False) -> Report:
    report, manifest = _open(path)
    if not report.ok:
        return report
    if not isinstance(manifest, dict):
        report.errors.append("not a Kubernetes object")
        return report
    import jsonschema

    schemas = crd_schemas()
    kind = manifest.get("kind")
    if kind not in ("RayJob", "RayService"):
        report.errors.append(f"kind {kind!r}: expected RayJob or RayService")
        return report
    schema_errors = _schema_errors(jsonschema.Draft7Validator(schemas[kind]), manifest)
    report.errors += [f"{kind} CRD: {e}" for e in schema_errors]
    if schema_errors:
        return report
    cluster = _cluster_spec(manifest)
    if cluster is None:
        report.errors.append(f"{kind}: no Ray cluster spec (KubeRay needs rayClusterSpec/rayClusterConfig here)")
        return report
    cluster_errors, gpu_groups = _cluster_errors(cluster)
    report.errors += cluster_errors
    if kind == "RayService":
        text = manifest["spec"].get("serveConfigV2")
        if not isinstance(text, str):
            report.errors.append("RayService: serveConfigV2 (a YAML string) is missing")
        else:
            try:
                embedded = yaml.safe_load(text)
            except yaml.YAMLError as e:
                report.errors.append(f"serveConfigV2 is not YAML: {e}")
                return report
            inner = check_serve_config(embedded, build=build, label="serveConfigV2")
            report.errors += [f"serveConfigV2: {e}" for e in inner.errors]
            report.errors += _service_hardening_errors(cluster)
            if serve_config is not None and embedded != load_yaml(serve_config):
                report.errors.append(f"serveConfigV2 differs from {_rel(serve_config)} (the same application "
                                     "must be deployed everywhere: render both with infra/configure.py)")
    else:
        report.errors += _rayjob_errors(manifest)
    report.notes.append(f"{kind} {manifest['metadata']['name']!r}: CRD fields, KubeRay checks, Ray {ray_version()}, "
                        f"GPU groups {gpu_groups}")
    return report


def _cluster_errors(cluster: dict) -> tuple[list[str], list[str]]:
    """What KubeRay's controller would refuse in a Ray cluster spec
    (ray-operator/controllers/ray/utils/validation.go) and what this project requires of one
    (this checkout's Ray, one image, a GPU worker group); and the names of the GPU groups."""
    errors = []
    for g in cluster.get("workerGroupSpecs") or []:
        lo, hi, n = g.get("minReplicas", 0), g.get("maxReplicas", 0), g.get("replicas")
        if lo > hi:
            errors.append(f"worker group {g['groupName']!r}: minReplicas {lo} > maxReplicas {hi}")
        if n is not None and not lo <= n <= hi:
            errors.append(f"worker group {g['groupName']!r}: replicas {n} outside [{lo}, {hi}]")
    for where, template in _pod_templates(cluster):
        if not ((template.get("spec") or {}).get("containers")):
            errors.append(f"{where}: no container")
    # Versions: rayVersion (the Ray the image runs) must be this checkout's Ray.
    if str(cluster.get("rayVersion")) != ray_version():
        errors.append(f"rayVersion {cluster.get('rayVersion')!r} != this checkout's Ray {ray_version()}")
    images = {c.get("image") for _, t in _pod_templates(cluster) for c in (t.get("spec") or {}).get("containers", [])}
    if len(images) != 1:
        errors.append(f"head and workers should run one image, found {sorted(map(str, images))}")
    gpu_groups = [g["groupName"] for g in cluster.get("workerGroupSpecs") or []
                  if any("nvidia.com/gpu" in ((c.get("resources") or {}).get("limits") or {})
                         for c in (g.get("template") or {}).get("spec", {}).get("containers", []))]
    if not gpu_groups:
        errors.append("no GPU worker group (a container limit on nvidia.com/gpu)")
    return errors, gpu_groups


def _rayjob_errors(manifest: dict) -> list[str]:
    """A RayJob's entrypoint: present, and a seem command that parses."""
    entry = manifest["spec"].get("entrypoint", "")
    if not entry:
        return ["RayJob: empty entrypoint"]
    if entry.split()[0] == "seem":
        problem = check_seem_command(entry)
        if problem:
            return [f"entrypoint does not parse as a seem command: {problem}"]
    return []


def _service_hardening_errors(cluster: dict) -> list[str]:
    """Every Ray container of the HTTP service fails closed and guards its proxy: the API-key
    secret is required (the proxies listen on 0.0.0.0) and Serve's proxy runs
    serving.proxy_guard (body-read timeout, header/body/connection limits)."""
    errors = []
    for where, template in _pod_templates(cluster):
        for c in (template.get("spec") or {}).get("containers", []):
            env = {e.get("name"): e for e in c.get("env") or []}
            ref = ((env.get("SEEM_API_KEYS") or {}).get("valueFrom") or {}).get("secretKeyRef")
            if not ref:
                errors.append(f"{where}: SEEM_API_KEYS must come from a secret (secretKeyRef)")
            elif ref.get("optional", False):
                errors.append(f"{where}: the API-key secret {ref.get('name')!r} must not be optional "
                              "(without it the service would run open on 0.0.0.0)")
            guard = (env.get("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH") or {}).get("value")
            if guard != "serving.proxy_guard:middlewares":
                errors.append(f"{where}: RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH must be "
                              "serving.proxy_guard:middlewares (limits where request bytes enter)")
    return errors


# --------------------------------------------------------------------------- docker
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def check_dockerfile(path: Path | str) -> Report:
    report = Report(_rel(path))
    text = Path(path).read_text(encoding="utf-8")
    instructions = dockerfile_instructions(text)
    args = {}
    for ins, rest in instructions:
        if ins == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k.strip()] = v.strip()
    froms = [re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
             for ins, rest in instructions if ins == "FROM"]
    if not froms:
        report.errors.append("no FROM")
        return report
    base = froms[-1]
    version = _image_ray_version(base)
    if version is None:
        report.errors.append(f"base image {base!r} is not a rayproject/ray image (KubeRay needs Ray in the image)")
    elif version != ray_version():
        report.errors.append(f"base image runs Ray {version}, this checkout's Ray is {ray_version()}")
    if not re.search(r"-(cu\d+|gpu)$", base):
        report.errors.append(f"base image {base!r} is not a CUDA build (tag -cuXXX or -gpu)")
    if not any(ins == "COPY" and rest.split()[-2:-1] == ["."] for ins, rest in instructions):
        report.errors.append("the repository is not copied in (COPY . <dir>)")
    runs = [rest for ins, rest in instructions if ins == "RUN"]
    installs = [c for r in runs for c in pip_commands(r)]
    readme_step = makefile_install_step()
    if readme_step not in installs:
        found = "; ".join(" ".join(c) for c in installs) or "none"
        report.errors.append(f"no RUN with the README's install step `python {' '.join(readme_step)}` (found: {found})")
    if not any("model/weights/seem-tiny.safetensors" in r for r in runs):
        report.errors.append("the default weights (model/weights/seem-tiny.safetensors) are not checked in the image")
    report.notes.append(f"FROM {base}; install step `python {' '.join(readme_step)}`")
    return report


# --------------------------------------------------------------------------- monitoring
_PROMQL_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
    "inf", "nan", "atan2",
})
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


@dataclass
class Selector:
    metric: str
    labels: tuple[str, ...]  # label names used in its {…} matchers


def _strip_grafana_variables(expr: str) -> str:
    expr = re.sub(r"\[\s*\$\{?__\w+\}?\s*\]", "[5m]", expr)  # [$__rate_interval] / [$__interval]
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", "x", expr)


def parse_promql(expr: str) -> tuple[list[Selector], set[str]]:
    """(series selectors with their matcher labels, labels named in by/without/on/ignoring)."""
    expr = _strip_grafana_variables(expr)
    expr = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)  # string literals
    grouping: set[str] = set()
    for m in _GROUPING.finditer(expr):
        grouping |= {x.strip() for x in m.group(2).split(",") if x.strip()}
    expr = _GROUPING.sub(" ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery brackets
    selectors: list[Selector] = []
    pos = 0
    token = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*|\{[^}]*\}|\d+(?:\.\d+)?(?:e[+-]?\d+)?[a-z]*|.", re.S)
    tokens = [t for t in token.findall(expr) if not t.isspace()]
    while pos < len(tokens):
        t = tokens[pos]
        nxt = tokens[pos + 1] if pos + 1 < len(tokens) else ""
        if t.startswith("{"):
            labels = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", t)
            if "__name__" in labels:
                raise ValueError(f"selector by __name__ is not supported (name the series): {t}")
            raise ValueError(f"label matchers without a series name: {t}")
        if re.match(r"[A-Za-z_:]", t) and t not in _PROMQL_KEYWORDS and nxt != "(":
            labels = ()
            if nxt.startswith("{"):
                labels = tuple(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", nxt))
                pos += 1
            selectors.append(Selector(t, labels))
        pos += 1
    return selectors, grouping


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query, rows' nested panels included."""
    out = []

    def walk(panels: list) -> None:
        for p in panels:
            for t in p.get("targets") or []:
                if t.get("expr"):
                    out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels") or [])

    walk(dashboard.get("panels") or [])
    return out


def missing_series(dashboard: dict, exported: dict[str, set[str]], extra_labels: Iterable[str] = (),
                   absent_ok: Iterable[str] = ()) -> list[str]:
    """Problems of the dashboard's queries against `exported` (series name -> label names seen):
    a series that is not exported, or a label (in a matcher, or a grouping) none of the query's
    series carries. `absent_ok` series may be missing (GPU-only ones on a CPU scrape)."""
    absent_ok = set(absent_ok)
    added = SCRAPE_LABELS | set(extra_labels)
    problems = []
    for title, expr in dashboard_queries(dashboard):
        try:
            selectors, grouping = parse_promql(expr)
        except ValueError as e:
            problems.append(f"{title!r}: {e}")
            continue
        if not selectors:
            problems.append(f"{title!r}: no series in {expr!r}")
        known: set[str] = set(added) | {"le"}
        checkable = True
        for s in selectors:
            if s.metric not in exported:
                if s.metric not in absent_ok:
                    problems.append(f"{title!r}: series {s.metric} is not exported")
                checkable = False
                continue
            labels = exported[s.metric] | added
            known |= labels
            for label in s.labels:
                if label not in labels:
                    problems.append(f"{title!r}: {s.metric} has no label {label!r}")
        if checkable:
            for label in sorted(grouping - known):
                problems.append(f"{title!r}: grouping label {label!r} is on none of its series")
    return problems


def scrape_series(text: str) -> dict[str, set[str]]:
    """Prometheus exposition text -> series name -> label names."""
    series: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s", line)
        if not m:
            continue
        labels = set(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', m.group(3) or ""))
        series.setdefault(m.group(1), set()).update(labels)
    return series


def _check_panel_queries(targets: list[dict], title: str, report: Report) -> int:
    """Errors of one panel's queries into `report` (each present, with a unique refId, a
    PromQL expression that parses, balances and selects only Ray-exported series);
    returns how many queries it has."""
    if not targets:
        report.errors.append(f"panel {title!r}: no queries")
    refs = [t.get("refId") for t in targets]
    if len(set(refs)) != len(refs) or not all(refs):
        report.errors.append(f"panel {title!r}: refIds must be present and unique")
    for t in targets:
        try:
            selectors, _ = parse_promql(t.get("expr", ""))
        except ValueError as e:
            report.errors.append(f"panel {title!r}: {e}")
            continue
        if not t.get("expr") or not selectors:
            report.errors.append(f"panel {title!r}: query {t.get('refId')} selects no series")
        if not _balanced(t.get("expr", "")):
            report.errors.append(f"panel {title!r}: unbalanced brackets in {t.get('expr')!r}")
        for s in selectors:
            if not s.metric.startswith("ray_"):
                report.errors.append(f"panel {title!r}: {s.metric} is not a Ray-exported series (ray_ prefix)")
    return len(targets)


def check_dashboard(path: Path | str, dashboard: dict | None = None) -> Report:
    """A Grafana dashboard's errors: required keys, panel ids and grid positions, each panel
    on the dashboard's datasource variable, and its queries (`_check_panel_queries`)."""
    report = Report(_rel(path))
    try:
        dash = dashboard if dashboard is not None else json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        report.errors.append(f"not valid JSON: {e}")
        return report
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dash:
            report.errors.append(f"dashboard has no {key!r}")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list", [])}
    ids: set[int] = set()
    queries = 0
    for panel in _all_panels(dash.get("panels") or []):
        title = panel.get("title", "?")
        if not isinstance(panel.get("id"), int) or panel["id"] in ids:
            report.errors.append(f"panel {title!r}: missing or duplicate id")
        ids.add(panel.get("id"))
        grid = panel.get("gridPos") or {}
        ints = all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y"))
        if not ints or grid.get("x", 0) + grid.get("w", 0) > 24:
            report.errors.append(f"panel {title!r}: bad gridPos {grid}")
        if panel.get("type") == "row":
            continue
        ds = (panel.get("datasource") or {}).get("uid", "")
        m = re.fullmatch(r"\$\{?(\w+)\}?", ds)
        if not m or variables.get(m.group(1), {}).get("type") != "datasource":
            report.errors.append(f"panel {title!r}: datasource {ds!r} is not the dashboard's datasource variable")
        queries += _check_panel_queries(panel.get("targets") or [], title, report)
    report.notes.append(f"{len(ids)} panels, {queries} queries "
                        "(whether the series are exported: tests/infra/test_metrics_exported.py)")
    return report


def _all_panels(panels: list) -> Iterable[dict]:
    for p in panels:
        yield p
        yield from _all_panels(p.get("panels") or [])


def _balanced(expr: str) -> bool:
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    stack = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in expr:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


_RELABEL_ACTIONS = {"replace", "keep", "drop", "keepequal", "dropequal", "hashmod", "labelmap", "labeldrop",
                    "labelkeep", "lowercase", "uppercase"}


def check_prometheus(path: Path | str) -> Report:
    report, cfg = _open(path)
    if not report.ok:
        return report
    jobs = (cfg or {}).get("scrape_configs")
    if not isinstance(jobs, list) or not jobs:
        report.errors.append("no scrape_configs")
        return report
    names = [j.get("job_name") for j in jobs]
    if len(set(names)) != len(names) or not all(names):
        report.errors.append(f"job_name must be present and unique: {names}")
    for job in jobs:
        sd = [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]
        if not sd:
            report.errors.append(f"job {job.get('job_name')!r}: no targets (static_configs or *_sd_configs)")
        for rc in job.get("relabel_configs") or []:
            if rc.get("action", "replace") not in _RELABEL_ACTIONS:
                report.errors.append(f"job {job.get('job_name')!r}: unknown relabel action {rc.get('action')!r}")
            try:
                re.compile(rc.get("regex", "(.*)"))
            except re.error as e:
                report.errors.append(f"job {job.get('job_name')!r}: bad regex {rc.get('regex')!r}: {e}")
        for fs in job.get("file_sd_configs") or []:
            if not fs.get("files"):
                report.errors.append(f"job {job.get('job_name')!r}: file_sd_configs without files")
    for key in ("scrape_interval", "evaluation_interval", "scrape_timeout"):
        value = (cfg.get("global") or {}).get(key)
        if value is not None and not re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", str(value)):
            report.errors.append(f"global.{key}: {value!r} is not a Prometheus duration")
    # The cluster launcher's nodes export on the port Prometheus' discovery file will list.
    cluster = load_yaml(REPO / "ray_cluster.yaml")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        if f"--metrics-export-port={METRICS_PORT}" not in " ".join(cluster.get(key, [])):
            report.errors.append(f"ray_cluster.yaml {key} lack --metrics-export-port={METRICS_PORT}")
    report.notes.append(f"jobs {names}")
    return report


def check_podmonitor(path: Path | str, manifests: Iterable[Path] = tuple(DEFAULTS["kuberay"])) -> Report:
    """The PodMonitor must select the KubeRay pods and a container port they declare."""
    report, pm = _open(path)
    if not report.ok:
        return report
    if pm.get("apiVersion") != "monitoring.coreos.com/v1" or pm.get("kind") != "PodMonitor":
        report.errors.append("expected apiVersion monitoring.coreos.com/v1, kind PodMonitor")
        return report
    spec = pm.get("spec") or {}
    wanted = ((spec.get("selector") or {}).get("matchLabels") or {})
    endpoints = spec.get("podMetricsEndpoints") or []
    if not wanted or not endpoints:
        report.errors.append("spec.selector.matchLabels and spec.podMetricsEndpoints are required")
        return report
    # KubeRay labels every Ray pod with ray.io/is-ray-node: "yes" (and ray.io/cluster, node-type, group).
    kuberay_labels = {"ray.io/is-ray-node": "yes"}
    for manifest_path in manifests:
        cluster = _cluster_spec(load_yaml(manifest_path)) or {}
        for where, template in _pod_templates(cluster):
            labels = {**((template.get("metadata") or {}).get("labels") or {}), **kuberay_labels}
            if any(labels.get(k) != v for k, v in wanted.items()):
                report.errors.append(f"{_rel(manifest_path)} {where}: pod labels {labels} do not match {wanted}")
            ports = {(p.get("name"), p.get("containerPort"))
                     for c in (template.get("spec") or {}).get("containers", []) for p in c.get("ports") or []}
            for ep in endpoints:
                if ep.get("port") not in {name for name, _ in ports}:
                    report.errors.append(f"{_rel(manifest_path)} {where}: no container port named {ep.get('port')!r}")
            if ("metrics", METRICS_PORT) not in ports:
                report.errors.append(f"{_rel(manifest_path)} {where}: port 'metrics' is not {METRICS_PORT}")
    report.notes.append(f"selects {wanted} on port {[e.get('port') for e in endpoints]}")
    return report


# --------------------------------------------------------------------------- CLI
def run_checks(kind: str, paths: list[Path], args: argparse.Namespace) -> list[Report]:
    reports = []
    for path in paths:
        if not Path(path).is_file():
            reports.append(Report(_rel(path), errors=["file not found"]))
            continue
        if kind == "cluster":
            reports.append(check_cluster(path))
        elif kind == "serve":
            reports.append(check_serve_config(path, build=not args.no_build))
        elif kind == "kuberay":
            reports.append(check_kuberay(path, serve_config=args.serve_config, build=not args.no_build))
        elif kind == "docker":
            reports.append(check_dockerfile(path))
        elif kind == "monitoring":
            name = Path(path).name
            if name.endswith(".json"):
                reports.append(check_dashboard(path))
            elif "podmonitor" in name:
                reports.append(check_podmonitor(path))
            else:
                reports.append(check_prometheus(path))
    return reports


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", nargs="?", choices=sorted(DEFAULTS), help="one kind of file (default: all)")
    parser.add_argument("paths", nargs="*", type=Path, help="files of that kind (default: this repository's)")
    parser.add_argument("--serve-config", type=Path, default=REPO / "infra" / "serve.yaml",
                        help="the Serve config a RayService's serveConfigV2 must equal")
    parser.add_argument("--no-build", action="store_true", help="import Serve applications without building them")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sys.path.insert(0, str(REPO))  # import_path serving.app:… from a checkout
    kinds = [args.kind] if args.kind else list(DEFAULTS)
    reports: list[Report] = []
    for kind in kinds:
        paths = args.paths if (args.kind and args.paths) else DEFAULTS[kind]
        reports += run_checks(kind, [Path(p) for p in paths], args)
    for r in reports:
        print(r.line())
    failed = [r for r in reports if not r.ok]
    print(f"{len(reports) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
