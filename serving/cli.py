"""`seem serve`: run the HTTP service on Ray Serve until SIGINT / SIGTERM.

Heavy imports (Ray, torch) stay inside the command so `seem --help` is instant.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator


#: The default store of `seem encode` / `seem segment` / `seem demo` (pipeline/cli.py), so that
#: features they computed are found here. Repeated, not imported: serving never imports pipeline.
LOCAL_STORE = os.path.join("out", "store")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `seem serve` to the `seem` command (called by seem_cli)."""
    p = subparsers.add_parser(
        "serve", help="run the HTTP service (Ray Serve) until Ctrl-C / SIGTERM",
        description="Runs Decoder (the HTTP ingress, autoscaled) -> Encoder, and Speech, on Ray Serve with the embedded defaults "
                    "(model seem-tiny, a local feature store). Options override the defaults; --config takes "
                    "the same keys as infra/serve.yaml's args.")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--store", help=f"feature store: a directory or s3://bucket/prefix (default: {LOCAL_STORE}, "
                                   "the one `seem encode` / `seem demo` fill)")
    p.add_argument("--endpoint-url", help="S3 endpoint for the store and s3:// image URIs (MinIO, ...)")
    p.add_argument("--model", help="registered model name or config file (default seem-tiny)")
    p.add_argument("--weights", help="checkpoint path or s3:// URI (default: the model's shipped weights)")
    p.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY",
                   help="require this Bearer key (repeatable; $SEEM_API_KEYS adds comma-separated keys)")
    p.add_argument("--allow-uri-prefix", action="append", dest="allowed_uri_prefixes", metavar="PREFIX",
                   help="allow image URIs under this s3:// or path prefix (repeatable)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without API keys (anyone who reaches the port may use it)")
    p.add_argument("--config", help="JSON or YAML file of build_app args (serve.yaml's args block)")
    p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a new local one)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a new local Ray (default: all)")
    p.add_argument("--metrics-port", type=int, help="Ray metrics export port of a new local Ray (default: any)")
    p.set_defaults(func=_serve)


def _load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping of build_app args")
    return data


def _app_args(args: argparse.Namespace) -> dict[str, Any]:
    """build_app args: --config, then the flags over it; a local store made absolute."""
    app_args = _load_config(args.config)
    for key in ("store", "endpoint_url", "model", "weights", "api_keys", "allowed_uri_prefixes"):
        value = getattr(args, key)
        if value is not None:
            app_args[key] = value
    app_args.setdefault("store", LOCAL_STORE)
    # Replicas run in another working directory (see _in_package_root): local paths go absolute.
    if "://" not in app_args["store"]:
        app_args["store"] = os.path.abspath(app_args["store"])
    for key in ("weights", "model"):  # a checkpoint file or a config file, when they name one here
        value = app_args.get(key)
        if isinstance(value, str) and "://" not in value and os.path.isfile(value):
            app_args[key] = os.path.abspath(value)
    return app_args


def _bind_refusal(config: Any, host: str, insecure: bool) -> str | None:
    """Why binding `host` is refused (fail closed), or None."""
    from .config import API_KEYS_ENV

    if insecure or config.open_to_network_refusal(host) is None:
        return None
    return (f"refusing to serve on {host} without API keys: anyone who reaches the port could use the service. "
            f"Give --api-key KEY (or ${API_KEYS_ENV}), bind 127.0.0.1, or pass --insecure to accept the risk")


@contextlib.contextmanager
def _in_package_root() -> Iterator[None]:
    """Run the block with the working directory set to the folder holding our packages.

    Ray puts the driver's working directory at the *front* of every worker's import path
    (`JobConfig._py_driver_sys_path`), so a user folder named `store/` or `model/` where
    `seem serve` was started would shadow our packages in every replica. Ray records the
    directory at `ray.init`; started from here, workers only ever find our own packages.
    """
    previous = os.getcwd()
    os.chdir(Path(__file__).resolve().parents[1])
    try:
        yield
    finally:
        os.chdir(previous)


def _guard_the_proxy() -> None:
    """Make Serve's HTTP proxy run serving.proxy_guard (limits where bytes enter). The
    proxy of a new local cluster inherits this process's environment."""
    from .proxy_guard import CALLBACK_ENV, CALLBACK_PATH, GuardLimits

    GuardLimits.from_env()  # a bad SEEM_* limit fails here, not in the proxy
    os.environ.setdefault(CALLBACK_ENV, CALLBACK_PATH)


#: Serve settings for the interactive path, a subset of what RAY_SERVE_THROUGHPUT_OPTIMIZED
#: sets (not direct ingress or gRPC, which would bypass the proxy and serving.proxy_guard):
#: user code on the replica's own event loop (no thread hop per request; a click decodes
#: inline on it, serving.app.Decoder._on_model), and request logs to files only, flushed
#: in batches (an ERROR line flushes at once). Measured in docs/benchmarks.md, "Issue 17:
#: one hop over HTTP". Values already in the environment win.
SERVE_LATENCY_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}


def _tune_serve() -> None:
    """Serve's latency settings (SERVE_LATENCY_ENV) for a new local cluster, whose
    controller, proxy and replicas inherit this process's environment."""
    for name, value in SERVE_LATENCY_ENV.items():
        os.environ.setdefault(name, value)


def _init_ray(args: argparse.Namespace) -> bool:
    """Start or join Ray (rayinit's rule); True when this process owns the cluster."""
    from rayinit import start_or_join, target_address

    local: dict[str, Any] = {"include_dashboard": False}
    if args.num_cpus is not None:
        local["num_cpus"] = args.num_cpus
    if args.metrics_port is not None:
        local["_metrics_export_port"] = args.metrics_port
    if target_address(args.address) in (None, "local"):
        # A new local cluster's proxy and replicas inherit this process's environment.
        _guard_the_proxy()
        _tune_serve()
    with _in_package_root():
        return start_or_join(args.address, local_options=local)


def _local_ray_damaged(own_cluster: bool) -> bool:
    """Whether a process of the Ray this command started has died (a signal to the whole
    process group reaches them too): a graceful Serve shutdown would then wait in vain."""
    if not own_cluster:
        return False
    try:
        from ray._private import worker

        node = worker._global_node
        return node is not None and bool(node.dead_processes())
    except Exception:  # noqa: BLE001 - private API: not knowing means trying gracefully
        return False


def _stop(own_cluster: bool, timeout_s: float = 15.0) -> None:
    """Remove the application (all of Serve on our own cluster), then leave Ray.

    Bounded: after a signal to the whole process group Ray's own processes die with us,
    and a graceful Serve shutdown would wait for a controller that cannot answer; then
    ray.shutdown() just ends what is left.
    """
    import ray
    from ray import serve

    from .app import APP_NAME

    def graceful() -> None:
        try:
            if own_cluster:
                serve.shutdown()
            else:  # someone else's cluster: remove only our application
                serve.delete(APP_NAME)
        except Exception as e:  # noqa: BLE001 - shutting down anyway
            print(f"seem serve: shutdown: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    time.sleep(0.5)  # a group signal reaches Ray's processes at the same moment; let them show it
    if not _local_ray_damaged(own_cluster):
        worker = threading.Thread(target=graceful, daemon=True)
        worker.start()
        deadline = time.monotonic() + timeout_s
        while worker.is_alive() and time.monotonic() < deadline and not _local_ray_damaged(own_cluster):
            worker.join(0.5)
    ray.shutdown()


def _serve(args: argparse.Namespace) -> int:
    from ray import serve

    from .app import APP_NAME, build_app
    from .config import ServeConfig

    app_args = _app_args(args)
    try:
        config = ServeConfig.from_args(app_args)  # fail on bad options before starting anything
    except Exception as e:
        print(f"seem serve: invalid configuration: {e}", file=sys.stderr)
        return 2
    refusal = _bind_refusal(config, args.host, args.insecure)
    if refusal:
        print(f"seem serve: {refusal}", file=sys.stderr)
        return 2
    if args.insecure:
        app_args["insecure"] = True
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        print(f"seem serve: {signal.Signals(signum).name}, shutting down", flush=True)
        stop.set()

    def _install() -> None:
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)

    _install()  # before Ray starts, so a signal during start-up also ends in a clean shutdown
    own_cluster = _init_ray(args)
    # ray.init installs its own fatal-signal handler for SIGTERM (it logs and aborts the
    # process); ours must be the one that runs, so put it back.
    _install()
    code = 0
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        if not stop.is_set():
            serve.run(build_app(app_args), name=APP_NAME, route_prefix="/", blocking=False)
            print(f"seem serve: listening on http://{args.host}:{args.port}/ (web page at /, API docs at /docs); "
                  "Ctrl-C to stop", flush=True)
        stop.wait()
    except Exception as e:
        print(f"seem serve: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        code = 1
    finally:
        _stop(own_cluster)
        print("seem serve: stopped", flush=True)
    return code
