"""infra/serve.yaml against Serve's config schema, importable, and buildable from its args."""
from __future__ import annotations

import subprocess
import sys

import yaml

import check

from .conftest import REPO, read_yaml


def test_serve_yaml_passes_schema_and_builds():
    report = check.check_serve_config(REPO / "infra" / "serve.yaml", build=True)
    assert report.ok, report.errors
    assert any("['Encoder', 'Speech', 'Video', 'Decoder']" in n for n in report.notes), report.notes


def test_import_path_is_the_serving_app_builder():
    (app,) = read_yaml("infra/serve.yaml")["applications"]
    assert app["import_path"] == "serving.app:build_app"
    from ray._common.utils import import_attr
    from serving.app import build_app

    assert import_attr(app["import_path"]) is build_app


def test_built_deployments_get_the_configured_resources():
    (app,) = read_yaml("infra/serve.yaml")["applications"]
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app
    from ray._common.utils import import_attr

    built = build_app(call_user_app_builder_with_args_if_necessary(import_attr(app["import_path"]), app["args"]),
                      name=app["name"])
    by_name = {d.name: d for d in built.deployments}
    args = app["args"]
    assert by_name["Encoder"].ray_actor_options["num_gpus"] == args["encoder"]["num_gpus"]
    assert by_name["Decoder"].ray_actor_options["num_gpus"] == args["decoder"]["num_gpus"]
    scaling = by_name["Decoder"]._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (args["autoscaling"]["min_replicas"],
                                                            args["autoscaling"]["max_replicas"])
    assert built.ingress_deployment_name == "Decoder"  # one hop: the decoder is the HTTP ingress


def test_schema_violation_is_rejected(mutated):
    path = mutated("infra/serve.yaml", lambda c: c["http_options"].__setitem__("port", "eighty"))
    errors = check.check_serve_config(path, build=False).errors
    assert any("Serve config schema" in e and "port" in e for e in errors), errors


def test_missing_import_path_is_rejected(mutated):
    path = mutated("infra/serve.yaml", lambda c: c["applications"][0].pop("import_path"))
    errors = check.check_serve_config(path, build=False).errors
    assert any("import_path" in e for e in errors), errors


def test_unimportable_import_path_is_rejected(mutated):
    path = mutated("infra/serve.yaml", lambda c: c["applications"][0].__setitem__("import_path", "serving.app:no_such"))
    assert check.check_serve_config(path, build=False).errors


def test_bad_args_fail_the_build(mutated):
    # `stor` is not a ServeConfig field: the builder refuses it, as `serve deploy` would.
    path = mutated("infra/serve.yaml", lambda c: c["applications"][0]["args"].__setitem__("stor", "s3://x/y"))
    errors = check.check_serve_config(path, build=True).errors
    assert any("does not build" in e and "stor" in e for e in errors), errors


def test_override_of_an_unknown_deployment_is_rejected(mutated):
    path = mutated("infra/serve.yaml",
                   lambda c: c["applications"][0].__setitem__("deployments", [{"name": "Decodr", "num_replicas": 2}]))
    errors = check.check_serve_config(path, build=True).errors
    assert any("'Decodr'" in e for e in errors), errors


def test_cli_exit_status(mutated):
    good = subprocess.run([sys.executable, "infra/check.py", "serve", "infra/serve.yaml", "--no-build"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr
    bad_path = mutated("infra/serve.yaml", lambda c: c.__setitem__("proxy_location", "Everywhere"))
    bad = subprocess.run([sys.executable, "infra/check.py", "serve", str(bad_path), "--no-build"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "FAIL" in bad.stdout, bad.stdout + bad.stderr
    assert yaml.safe_load(bad_path.read_text())["proxy_location"] == "Everywhere"
