"""Prometheus config, PodMonitor and Grafana dashboard: structure and PromQL (static checks).
Whether the queried series are exported is tests/infra/test_metrics_exported.py."""
from __future__ import annotations

import copy
import json

import pytest

import check

from .conftest import REPO

DASHBOARD = REPO / "infra/grafana/dashboards/seem-ray.json"


@pytest.mark.parametrize("relpath", ["infra/prometheus.yml", "infra/kuberay/podmonitor.yaml",
                                     "infra/grafana/dashboards/seem-ray.json"])
def test_monitoring_files_pass(relpath):
    reports = check.run_checks("monitoring", [REPO / relpath], None)
    assert all(r.ok for r in reports), [r.errors for r in reports]


def test_parse_promql():
    sel, grouping = check.parse_promql(
        'histogram_quantile(0.95, sum by (le, route) (rate(ray_seem_request_latency_ms_bucket{status=~"5..", '
        'route!="/x"}[$__rate_interval]))) / on() group_left sum(ray_resources{Name="CPU"}) offset 5m')
    assert [(s.metric, s.labels) for s in sel] == [("ray_seem_request_latency_ms_bucket", ("status", "route")),
                                                   ("ray_resources", ("Name",))]
    assert grouping == {"le", "route"}
    selectors, _ = check.parse_promql("sum(rate(a_total[5m])) / sum(rate(b_total[1h:5m]))")
    assert [s.metric for s in selectors] == ["a_total", "b_total"]
    with pytest.raises(ValueError):
        check.parse_promql('sum({__name__=~"ray_.*"})')


def test_dashboard_covers_the_issue_list():
    series = {s.metric for _, expr in check.dashboard_queries(json.loads(DASHBOARD.read_text()))
              for s in check.parse_promql(expr)[0]}
    assert any(m.startswith("ray_seem_") for m in series)            # the app's own metrics
    assert "ray_data_pool_utilization" in series                      # actor pool utilisation
    assert "ray_object_store_memory" in series                        # object store
    assert "ray_serve_deployment_replica_healthy" in series           # Serve replicas
    assert "ray_serve_http_request_latency_ms_bucket" in series       # Serve latency


def _dashboard_errors(tmp_path, change):
    dash = copy.deepcopy(json.loads(DASHBOARD.read_text()))
    change(dash)
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dash))
    return check.check_dashboard(path).errors


def _first_query_panel(dash):
    return next(p for p in dash["panels"] if p.get("targets"))


def test_dashboard_with_a_foreign_series_is_rejected(tmp_path):
    errors = _dashboard_errors(tmp_path, lambda d: _first_query_panel(d)["targets"][0].__setitem__("expr", "up"))
    assert any("up is not a Ray-exported series" in e for e in errors), errors


def test_dashboard_with_duplicate_panel_ids_is_rejected(tmp_path):
    def change(d):
        d["panels"][2]["id"] = d["panels"][1]["id"]

    assert any("duplicate id" in e for e in _dashboard_errors(tmp_path, change))


def test_dashboard_with_a_fixed_datasource_is_rejected(tmp_path):
    errors = _dashboard_errors(tmp_path, lambda d: _first_query_panel(d).__setitem__("datasource", {"uid": "abc"}))
    assert any("datasource" in e for e in errors), errors


def test_dashboard_with_unbalanced_query_is_rejected(tmp_path):
    errors = _dashboard_errors(
        tmp_path, lambda d: _first_query_panel(d)["targets"][0].__setitem__("expr", "sum(rate(ray_x_total[5m])"))
    assert any("unbalanced" in e for e in errors), errors


def test_prometheus_with_bad_relabel_is_rejected(mutated):
    def change(c):
        c["scrape_configs"][0]["relabel_configs"] = [{"action": "keepp", "regex": "("}]

    errors = check.check_prometheus(mutated("infra/prometheus.yml", change)).errors
    assert any("unknown relabel action" in e for e in errors) and any("bad regex" in e for e in errors), errors


def test_prometheus_without_targets_is_rejected(mutated):
    path = mutated("infra/prometheus.yml", lambda c: c["scrape_configs"][0].pop("file_sd_configs"))
    errors = check.check_prometheus(path).errors
    assert any("no targets" in e for e in errors), errors


def test_podmonitor_must_match_the_pods(mutated):
    def change(pm):
        pm["spec"]["podMetricsEndpoints"][0]["port"] = "prometheus"
        pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "other"

    errors = check.check_podmonitor(mutated("infra/kuberay/podmonitor.yaml", change)).errors
    assert any("no container port named 'prometheus'" in e for e in errors), errors
    assert any("do not match" in e for e in errors), errors


def test_missing_series_reports_unknown_series_and_labels():
    dash = {"panels": [{"title": "t", "targets": [
        {"expr": "sum by (deployment) (rate(ray_serve_num_http_requests_total[5m]))"},
        {"expr": 'ray_object_store_memory{Locaton="SPILLED"}'},
        {"expr": "ray_seem_nonexistent_total"},
        {"expr": "ray_node_gpus_utilization"}]}]}
    exported = {"ray_serve_num_http_requests_total": {"application", "route"}, "ray_object_store_memory": {"Location"}}
    problems = check.missing_series(dash, exported, absent_ok=check.RAY_GPU_ONLY_SERIES)
    assert any("grouping label 'deployment'" in p for p in problems)
    assert any("no label 'Locaton'" in p for p in problems)
    assert any("ray_seem_nonexistent_total is not exported" in p for p in problems)
    assert not any("gpus" in p for p in problems)
    assert len(problems) == 3
