"""HTTP inference on Ray Serve (docs/architecture.md, "An HTTP request"; docs/api.md).

    app.py        the deployments (Decoder, the HTTP ingress -> Encoder; Speech) and build_app(args)
    api.py        the FastAPI app of each decoder replica: routes, auth, limits, validation, errors
    proxy_guard.py  limits and retries inside Serve's HTTP proxy
    schemas.py    request/response models (the OpenAPI contract)
    limits.py     configurable request limits that need no image (no torch imported)
    prompts.py    JSON prompts -> model.types, checked against the image
    inference.py  what a decoder replica does with one request (no Ray)
    sources.py    reading images by URI under allowed prefixes
    metrics.py    ray.serve.metrics of each deployment; GET /metrics across nodes
    errors.py     the JSON error model and its status codes
    config.py     ServeConfig: the args of build_app (serve.yaml, KubeRay, seem serve)
    cli.py        `seem serve`
    static/       the web page

Ray is imported only by app.py, metrics.py and cli.py (inside functions where it can be),
so the rest is usable and testable without a cluster.
"""
