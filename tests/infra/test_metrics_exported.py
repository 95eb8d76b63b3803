"""Every series a dashboard query uses is one that this Ray version or the app really exports.

One local Ray (in a subprocess: tests/infra/metrics_probe.py) runs a Serve deployment that
records the application's metrics (serving.metrics) and a Ray Data job with an actor pool;
its metrics endpoint is scraped and every query of infra/grafana/dashboards/seem-ray.json is
checked against what was scraped: series names and the labels the queries filter and group on.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray

import check

from .conftest import REPO, read_yaml

DASHBOARD = REPO / "infra/grafana/dashboards/seem-ray.json"


@pytest.fixture(scope="module")
def scraped(tmp_path_factory) -> dict:
    """The scrape, made once per test run: pytest may tear a module fixture down between
    this file's tests when xdist interleaves them (CI set it up twice, 66-77 s each), so the
    result is kept in the run's temporary root, which every worker of this run shares."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # root is .../pytest-N/popen-gwK: share pytest-N
        root = root.parent
    shared = root / "metrics-scrape.json"
    with FileLock(str(shared) + ".lock"):
        if not shared.exists():
            _scrape(shared)
        return json.loads(shared.read_text())


def _scrape(out: Path) -> None:
    # The probe's Ray start is retried by rayinit when a loaded machine misses Ray's 30 s.
    proc = subprocess.run([sys.executable, "-m", "tests.infra.metrics_probe", str(out), "--timeout-s", "120"],
                          cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _relabelled_labels() -> set[str]:
    """Labels our scrape configs add (they may be used by queries too)."""
    pm = read_yaml("infra/kuberay/podmonitor.yaml")
    labels = {r["targetLabel"] for ep in pm["spec"]["podMetricsEndpoints"] for r in ep.get("relabelings", [])}
    prom = read_yaml("infra/prometheus.yml")
    labels |= {r["target_label"] for job in prom["scrape_configs"] for r in job.get("relabel_configs", [])
               if "target_label" in r}
    return labels


def gpu_only_series() -> dict[str, set[str]]:
    """Ray's GPU series (absent from a CPU machine's scrape) with their labels, read from Ray's
    own source: each must be a Gauge of the metrics agent tagged with GPU_TAG_KEYS."""
    from ray.dashboard.consts import GPU_TAG_KEYS

    source = (Path(ray.__file__).parent / "dashboard/modules/reporter/reporter_agent.py").read_text()
    out = {}
    for series in check.RAY_GPU_ONLY_SERIES:
        name = series.removeprefix("ray_")
        assert re.search(rf'Gauge\(\s*"{name}",[^)]*?\bGPU_TAG_KEYS\b', source, re.S), \
            f"{series} is not a GPU_TAG_KEYS gauge of Ray's reporter_agent.py"
        out[series] = set(GPU_TAG_KEYS)
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_dashboard_series_is_exported(scraped):
    exported = {name: set(labels) for name, labels in scraped["series"].items()}
    exported.update(gpu_only_series())
    problems = check.missing_series(json.loads(DASHBOARD.read_text()), exported, extra_labels=_relabelled_labels())
    assert not problems, "\n".join(problems)
    # Every metric object of the app was recorded, and its series are among the scraped ones.
    assert scraped["recorded"], "serving.metrics defines no metric"
    assert any(name.startswith("ray_seem_") for name in exported)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_unknown_series_or_label_is_reported(scraped):
    exported = {name: set(labels) for name, labels in scraped["series"].items()}
    dash = json.loads(DASHBOARD.read_text())
    dash["panels"][1]["targets"].append({"refId": "Z", "expr": "sum(rate(ray_seem_requests_totl[5m]))"})
    dash["panels"][1]["targets"].append(
        {"refId": "Y", "expr": "sum by (deploymnt) (ray_serve_deployment_replica_healthy)"})
    exported.update(gpu_only_series())
    problems = check.missing_series(dash, exported)
    assert any("ray_seem_requests_totl is not exported" in p for p in problems), problems
    assert any("grouping label 'deploymnt'" in p for p in problems), problems


def test_gpu_only_series_are_defined_by_rays_metrics_agent():
    series = gpu_only_series()
    assert set(series) == set(check.RAY_GPU_ONLY_SERIES)
    assert all({"ip", "GpuIndex"} <= labels for labels in series.values())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_prometheus_service_discovery_lists_the_metrics_port(scraped):
    # infra/prometheus.yml scrapes what Ray's service-discovery file lists.
    discovery = scraped["service_discovery"]
    assert discovery, "Ray wrote no Prometheus service-discovery file"
    targets = [t for group in discovery for t in group["targets"]]
    assert any(t.endswith(f":{scraped['metrics_port']}") for t in targets), targets
    files = read_yaml("infra/prometheus.yml")["scrape_configs"][0]["file_sd_configs"][0]["files"]
    assert files == ["/tmp/ray/prom_metrics_service_discovery.json"]
