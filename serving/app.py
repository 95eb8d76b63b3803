"""The Ray Serve application (docs/architecture.md, "An HTTP request"): Decoder (HTTP) -> Encoder.

    Decoder   the HTTP ingress itself (FastAPI, serving.api: auth, limits, validation, the
              web page) and the model: an LRU of ImageFeatures per replica that *is* Serve's
              model multiplexing (the "model" is one image's features, the LRU size
              max_num_models_per_replica). Clients send `Serve-Multiplexed-Model-Id:
              <image_id>`, so Serve's proxy sends a request straight to the replica holding
              that image: one hop, proxy -> replica. Without the header, serving.proxy_guard
              (in the proxy) derives it from the body. Autoscaled; no batching on this
              interactive path.
    Encoder   decodes image bytes, encodes them (batched; one GPU per replica when the
              cluster has GPUs) and writes the features to the store. Uploads only.
    Speech    transcribes audio prompts (serving.audio), so no decoder replica loads a
              recogniser or spends its cores on one.
    Video     video sessions (serving.video_api), behind POST /v1/video/segment.

`build_app(args)` is the import path of infra/serve.yaml and KubeRay (`serving.app:build_app`);
`args` keys are the fields of `serving.config.ServeConfig`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ray import serve
from ray.serve.handle import DeploymentHandle

from .config import ServeConfig
from .errors import ApiError, as_api_error
from .schemas import PanopticRequest, SegmentRequest
from .video_api import video_deployment

__all__ = ["build_app", "Decoder", "Encoder", "Speech", "APP_NAME", "DECODER"]

log = logging.getLogger("seem.serving")

APP_NAME = "seem"
#: The HTTP ingress deployment (holds the image features).
DECODER = "Decoder"
#: Freshly encoded features waiting for the loader; more than this means requests were
#: cancelled between encode and load, and the oldest entries are dropped (they are in the store).
_MAX_INCOMING = 64
#: How often a waiting warm-up looks whether the replica is idle, and how long it waits at most.
_WARM_POLL_S = 0.01
_WARM_PATIENCE_S = 60.0

def _internal(exc: BaseException, where: str) -> ApiError:
    """Client errors pass through; anything else is logged and becomes a generic error."""
    api = as_api_error(exc)
    if api is not None:
        return api
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, BackPressureError):
        return ApiError("overloaded", "the service is at capacity; retry shortly", headers={"Retry-After": "1"})
    if isinstance(exc, DeploymentUnavailableError) or _replica_lost(exc):
        return ApiError("unavailable", "a replica of the service is unavailable; retry shortly",
                        headers={"Retry-After": "1"})
    log.error("%s failed: %s", where, exc, exc_info=exc)
    return ApiError("internal_error", "internal server error")


def _replica_lost(exc: BaseException) -> bool:
    """Whether `exc` says the replica serving a call died or became unreachable (an outage
    of our own: 503, not 500)."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.exceptions import ReplicaUnavailableError

    return isinstance(exc, (ActorDiedError, ActorUnavailableError, RayActorError, ReplicaUnavailableError))


def _device() -> str:
    """CUDA when Ray gave this replica a GPU, else CPU (never a GPU it was not given)."""
    import ray
    import torch

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- encoder
@serve.deployment(name="Encoder")
class Encoder:
    """Image bytes -> ImageFeatures, written to the feature store."""

    def __init__(self, config: dict[str, Any]) -> None:
        from store import FeatureStore

        from model.loading import load_predictor

        from .inference import warm_up
        from .metrics import EncoderMetrics

        self.config = ServeConfig.model_validate(config)
        self.predictor = load_predictor(self.config.model_spec(_device()))
        # Encoded features leave this process for the decoder replicas: keeping their decoder
        # projections here (the object pass makes them) would only hold memory.
        self.predictor.decoder_caches.max_bytes = 0
        warm_up(self.predictor, decode=False)
        self.store = FeatureStore(self.config.store, self.config.endpoint_url)
        self.metrics = EncoderMetrics()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="encode")
        self._encode_batch.set_max_batch_size(self.config.encoder.max_batch_size)
        self._encode_batch.set_batch_wait_timeout_s(self.config.encoder.batch_wait_timeout_s)

    async def model_id(self) -> str:
        """The feature store's model id of this encoder."""
        return self.predictor.model_id

    async def encode(self, image_id: str, data: bytes) -> Any:
        """Features of the image (as the store gives them back in `store_dtype`), or the
        ApiError (returned, not raised: Serve logs a traceback for every raised error,
        which a client's bad image does not deserve)."""
        return await self._encode_batch((image_id, data))

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _encode_batch(self, items: list[tuple[str, bytes]]) -> list[Any]:
        self.metrics.batch_size.observe(len(items))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._encode_items, items)

    def _encode_items(self, items: list[tuple[str, bytes]]) -> list[Any]:
        from model.image_io import ImageDecodeError, ImageTooLarge, decode_image
        from store import StoreError

        started = time.perf_counter()
        model_id = self.predictor.model_id
        out: list[Any] = [None] * len(items)
        todo: list[tuple[int, str, Any]] = []
        for i, (image_id, data) in enumerate(items):
            try:
                if self.store.has(model_id, image_id):  # another replica got there first
                    out[i] = self.store.get(model_id, image_id, dtype=None)
                    continue
                image = decode_image(data, max_pixels=self.config.limits.max_pixels)
                todo.append((i, image_id, image))
            except ImageTooLarge as e:
                out[i] = ApiError("too_many_pixels", str(e))
            except ImageDecodeError as e:
                out[i] = ApiError("invalid_image", f"cannot decode the image: {e}")
            except ApiError as e:
                out[i] = e
            except StoreError as e:
                out[i] = ApiError("unavailable", f"feature store: {e}")
            except Exception as e:
                out[i] = _internal(e, "encoder read")
        if todo:
            try:
                features = self.predictor.encode([image for _, _, image in todo])
            except Exception as e:
                error = _internal(e, "encode")
                for i, _, _ in todo:
                    out[i] = error
            else:
                for (i, image_id, _), feats in zip(todo, features):
                    try:
                        dtype = self.config.store_dtype
                        axes = self.store.writing_axes(model_id, self.predictor.mask_axes) if dtype == "axes" else None
                        # What a cache miss would load (put_and_read: a quantised dtype's quantiser runs once).
                        _, out[i] = self.store.put_and_read(feats, image_id, dtype=dtype,
                                                            compress=self.config.store_codec, mask_axes=axes)
                    except StoreError as e:
                        out[i] = ApiError("unavailable", f"feature store: {e}")
                    except Exception as e:
                        out[i] = _internal(e, "store write")
        self.metrics.encode_latency.observe((time.perf_counter() - started) * 1000)
        return out


# --------------------------------------------------------------------------- speech
@serve.deployment(name="Speech")
class Speech:
    """Audio prompts -> their transcripts (serving.audio), for the decoder replicas."""

    def __init__(self, config: dict[str, Any]) -> None:
        from .audio import Transcriber

        self.transcriber = Transcriber(ServeConfig.model_validate(config))  # loads in the background

    async def resolve(self, request: SegmentRequest) -> tuple[SegmentRequest, list[str]] | ApiError:
        """The request with its audio prompts replaced by text, and what was heard (or the
        ApiError, returned: see Encoder.encode)."""
        try:
            return await self.transcriber.resolve(request)
        except Exception as e:
            return _internal(e, "transcribe")


# --------------------------------------------------------------------------- decoder
def _proxy_host() -> str | None:
    """The address Serve's HTTP proxies listen on, or None when it cannot be told."""
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client().http_config.host
    except Exception:  # noqa: BLE001 - not knowing must not stop a loopback service
        log.warning("could not read Serve's HTTP options; the bind-address check is skipped", exc_info=True)
        return None


def _routed_id() -> str:
    """The `Serve-Multiplexed-Model-Id` this request came with ('' for none)."""
    try:
        return serve.get_multiplexed_model_id()
    except Exception:  # noqa: BLE001 - outside a request: no routing information
        return ""


@serve.deployment(name=DECODER)
@serve.ingress()
class Decoder:
    """HTTP in (serving.api) and prompts -> masks on cached features. Each replica holds an
    LRU of images; Serve's proxy routes a request by its multiplexed-model-id header to the
    replica holding its image (module doc)."""

    def __init__(self, config: dict[str, Any], encoder: DeploymentHandle, speech: DeploymentHandle,
                 video: DeploymentHandle | None = None) -> None:
        from store import FeatureStore

        from model.loading import load_predictor

        from .inference import warm_up
        from .metrics import DecoderMetrics, IngressMetrics

        self.config = ServeConfig.model_validate(config)
        refusal = self.config.open_to_network_refusal(_proxy_host())
        if refusal:
            raise RuntimeError(f"seem-ray refuses to start: {refusal}")
        self.predictor = load_predictor(self.config.model_spec(_device()))
        self.predictor.decoder_caches.max_bytes = int(self.config.decoder.decoder_cache_mb * 2**20)
        warm_up(self.predictor)
        self.model_id_ = self.predictor.model_id
        self.store = FeatureStore(self.config.store, self.config.endpoint_url)
        self.encoder, self.speech, self.video = encoder, speech, video
        self.metrics, self.http_metrics = DecoderMetrics(), IngressMetrics()
        # The model serves one call at a time: a click decodes inline, longer work (panoptic,
        # materialising backbone features) in `_pool`; `_model_lock` orders both (see `_on_model`).
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="decode")
        self._model_lock = asyncio.Lock()
        self._misrouted = 0  # requests whose routing header named another image than their body
        # Freshly encoded features waiting for the loader (saves reading back what was just written).
        self._incoming: dict[str, Any] = {}
        # One encoder call per image even when several requests for a new image arrive together.
        self._encoding: dict[str, asyncio.Future] = {}
        self._active = 0  # local_* calls in flight: a warm-up step runs only when there are none
        # The image loaded last, waiting to be warmed (`_warm`), and the one task that warms.
        self._warm_next: tuple[str, Any] | None = None
        self._warm_task: asyncio.Task | None = None

        async def load_features(image_id: str) -> Any:
            return await self._load(image_id)

        self._load_fn = load_features
        # Multiplexing wired at init so the LRU size comes from the config (Serve supports this form).
        self._get_features = serve.multiplexed(max_num_models_per_replica=self.config.decoder.cache_size)(
            load_features)

    def __serve_build_asgi_app__(self) -> Any:
        from .api import create_api

        return create_api(self.config, self, observe=self.http_metrics.observe)

    # ---------------------------------------------------------------- features
    def _lru(self) -> Any:
        """Serve's multiplexed LRU (image id -> features) of this replica, or None.

        Serve keeps it on the loader function. If that private layout ever changes this is
        None: every lookup then costs a store existence check, never a wrong answer
        (tests/serving/test_http_api.py notices).
        """
        wrapper = getattr(self._load_fn, "__serve_multiplex_wrapper", None)
        return getattr(wrapper, "models", None)

    def _in_lru(self, image_id: str) -> bool:
        models = self._lru()
        return models is not None and image_id in models

    async def _load(self, image_id: str) -> Any:
        """The multiplexed loader: a fresh encode handed over, else the store."""
        from store import CorruptObject

        from .inference import FEATURE_LOADS

        loads = FEATURE_LOADS.get()
        if image_id in self._incoming:
            if loads is not None:
                loads.append("encoder")
            return self._schedule_warm(image_id, self._incoming.pop(image_id))
        if loads is not None:
            loads.append("store")
        try:
            features = await asyncio.to_thread(self.store.get, self.model_id_, image_id, dtype=None)
        except CorruptObject as e:
            log.error("removing corrupt stored features: %s", e)
            await asyncio.to_thread(self.store.delete, self.model_id_, image_id)
            raise ApiError("unavailable", "the stored features of this image were damaged and have been removed; "
                                          "upload the image again") from None
        if features.stage != "pixel_decoder":
            # A store filled with backbone outputs (smaller objects): run the pixel decoder once
            # here, off the event loop, rather than on every decode.
            full = await self._on_model(False, self.predictor.materialize, features)
            features = full.to(dtype=features.dtype)
        return self._schedule_warm(image_id, features)

    def _schedule_warm(self, image_id: str, features: Any) -> Any:
        """Warm the decoder for a newly loaded image in the background (`_warm_latest`);
        returns `features`."""
        if self.config.decoder.warm_images and self.predictor.decoder_caches.max_bytes > 0:
            self._warm_next = (image_id, features)
            if self._warm_task is None or self._warm_task.done():
                self._warm_task = asyncio.get_running_loop().create_task(self._warm_latest())
        return features

    async def _warm_latest(self) -> None:
        """Warm the images loaded last, one at a time: an image loaded meanwhile takes over
        (the one a user just sent is the one they prompt next; warming each of a burst of
        uploads would only evict the others' work from the bounded decoder cache)."""
        while self._warm_next is not None:
            image_id, features = self._warm_next
            self._warm_next = None
            await self._warm(image_id, features)

    async def _warm(self, image_id: str, features: Any) -> None:
        """The image's prompt-independent decoder work (`SeemPredictor.warm`), so that its first
        phrase skips it: one layer per step, each only while no request is in flight, so a
        request that arrives meanwhile waits for one step at most (73-83 ms of one core measured
        for Focal-T's stride-8 layers at 512 x 683, under 1 ms for seem-tiny). Stops when another image was
        loaded, when this one left the LRU, or when the replica stayed busy for `_WARM_PATIENCE_S`."""
        deadline = time.monotonic() + _WARM_PATIENCE_S
        for layer in range(self.predictor.cfg.decoder.num_layers):
            while self._active or self._model_lock.locked():
                if time.monotonic() > deadline:
                    return
                await asyncio.sleep(_WARM_POLL_S)
            lru = self._lru()
            if self._warm_next is not None or (lru is not None and lru.get(image_id) is not features):
                return  # superseded, or evicted (its work would be dropped with it)
            try:
                await self._on_model(False, self.predictor.warm, features, [layer])
            except Exception:  # an optimisation only: the phrase computes what is missing
                log.exception("warming the decoder for image %s failed", image_id)
                return

    @contextlib.contextmanager
    def _serving(self) -> Any:
        """Counts a request in flight (see `_warm`)."""
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1

    async def _on_model(self, inline: bool, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` with the model to itself: `inline` on this event loop (a click: the hop
        to a thread and back cost 2-6 ms of a ~50 ms decode on a loaded 2-core machine,
        docs/benchmarks.md, and a replica decodes one request at a time anyway), else on
        the model's thread, so long calls leave the loop free for other requests."""
        async with self._model_lock:
            if inline:
                return fn(*args)
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _encode(self, image_id: str, data: bytes) -> None:
        pending = self._encoding.get(image_id)
        if pending is not None:
            await asyncio.shield(pending)
            return
        future = asyncio.get_running_loop().create_future()
        self._encoding[image_id] = future
        try:
            result = await self.encoder.encode.remote(image_id, data)
            if isinstance(result, ApiError):
                raise result
            self._incoming[image_id] = result
            while len(self._incoming) > _MAX_INCOMING:  # only requests cancelled mid-way leave entries
                self._incoming.pop(next(iter(self._incoming)))
            future.set_result(None)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._encoding[image_id]

    async def _features(self, image_id: str, data: bytes | None) -> tuple[Any, bool]:
        """(features, cached): cached is False when this call had to run the encoder."""
        from store import ObjectNotFound, StoreError

        from .inference import FEATURE_LOADS

        encoded = False
        try:
            if not self._in_lru(image_id) and image_id not in self._incoming:
                stored = await asyncio.to_thread(self.store.has, self.model_id_, image_id)
                if not stored:
                    if data is None:
                        raise ApiError("image_not_found",
                                       f"unknown image_id {image_id}: upload the image with POST /v1/images")
                    await self._encode(image_id, data)
                    encoded = True
            loads: list[str] = []
            token = FEATURE_LOADS.set(loads)
            try:
                features = await self._get_features(image_id)
            finally:
                FEATURE_LOADS.reset(token)
        except ObjectNotFound:  # removed between the check and the read
            raise ApiError("image_not_found", f"unknown image_id {image_id}") from None
        except StoreError as e:
            raise ApiError("unavailable", f"feature store: {e}") from None
        if loads:
            self.metrics.cache_misses.inc(tags={"source": loads[0]})
        else:
            self.metrics.cache_hits.inc()
        return features, not encoded

    # ---------------------------------------------------------------- routing
    async def _route(self, method: str, *args: Any) -> Any:
        """`method(*args)` (one of the `local_*` methods) within the request timeout.

        Always on this replica: Serve's proxy chose it by the request's routing header,
        which the client sent or serving.proxy_guard derived from the body (the image id,
        or the sha256 of an upload). Passing a request on to another replica instead
        would hold this replica's slot while waiting for one: with every slot taken that
        deadlocks. A request that arrived without any routing (no header, no guard) is
        answered here all the same, from this replica's LRU or the store.
        """
        from .api import with_timeout

        if _routed_id() not in ("", args[0]):
            self._misrouted += 1  # for info(): routing that did not match the body's image
        result = await with_timeout(getattr(self, method)(*args), self.config.request_timeout_s)
        if isinstance(result, ApiError):
            raise result
        return result

    async def _forward(self, call: Callable[[], Any], where: str) -> Any:
        """A call to another deployment (Speech) within the request timeout, once more when
        the replica that had it died (transcription is idempotent)."""
        from .api import with_timeout

        for attempt in (1, 2):
            response = call()
            try:
                return await with_timeout(response, self.config.request_timeout_s)
            except ApiError as e:
                if e.code == "timeout":
                    response.cancel()
                raise
            except Exception as e:
                if attempt == 1 and _replica_lost(e):
                    log.warning("%s: replica lost (%s); retrying once", where, type(e).__name__)
                    continue
                raise _internal(e, where) from None
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- the API's backend (serving.api.Backend)
    async def ingest(self, image_id: str, data: bytes | None) -> dict[str, Any]:
        """Backend of POST /v1/images: on the replica that will serve this image."""
        return await self._route("local_ingest", image_id, data)

    async def segment(self, image_id: str, data: bytes | None, request: SegmentRequest) -> dict[str, Any]:
        """Backend of POST /v1/segment (audio prompts are transcribed by Speech first)."""
        from .audio import has_audio

        transcripts = None
        if has_audio(request):
            started = time.perf_counter()
            request, transcripts = await self._transcribe(request)
            transcribe_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        body = await self._route("local_segment", image_id, data, request)
        body["timings_ms"]["decoder_call"] = (time.perf_counter() - started) * 1000
        if transcripts is not None:
            body["transcripts"] = transcripts
            body["timings_ms"]["transcribe"] = transcribe_ms
        return body

    async def _transcribe(self, request: SegmentRequest) -> tuple[SegmentRequest, list[str]]:
        result = await self._forward(lambda: self.speech.resolve.remote(request), "transcribe")
        if isinstance(result, ApiError):
            raise result
        return result

    async def panoptic(self, image_id: str, data: bytes | None, request: PanopticRequest) -> dict[str, Any]:
        """Backend of POST /v1/panoptic."""
        return await self._route("local_panoptic", image_id, data, request)

    async def video_segment(self, data: bytes, request: Any) -> dict[str, Any]:
        """Backend of POST /v1/video/segment (serving.video_api): a hop to the Video deployment."""
        from .video_api import call_video

        return await call_video(self.video, data, request)

    async def metrics_text(self) -> str:
        """Backend of GET /metrics (503 when no node's metrics endpoint answers)."""
        from .metrics import gather_metrics_text

        try:
            return await gather_metrics_text()
        except Exception as e:
            raise ApiError("unavailable", f"metrics are unavailable: {e}") from None

    # ---------------------------------------------------------------- on this replica
    async def model_id(self) -> str:
        """The feature store's model id of this decoder (equal to the encoder's)."""
        return self.model_id_

    async def info(self) -> dict[str, Any]:
        """What this replica runs on (for benchmarks and debugging)."""
        import ray
        import torch

        models = self._lru()
        return {"replica": serve.get_replica_context().replica_id.unique_id,
                "node_id": ray.get_runtime_context().get_node_id(), "model_id": self.model_id_, "device": str(self.predictor.device),
                "torch_threads": torch.get_num_threads(), "cache_size": self.config.decoder.cache_size,
                "cached_images": None if models is None else list(models), "misrouted": self._misrouted,
                "decoder_cache_mb": self.predictor.decoder_caches.nbytes / 2**20,
                "decoder_cache_images": len(self.predictor.decoder_caches),
                "warm_images": None if models is None else [i for i, f in list(models.items())
                                                            if self.predictor.decoder_caches.nbytes_of(f) > 0]}

    # The local_* methods return an ApiError instead of raising it (see Encoder.encode).
    async def local_ingest(self, image_id: str, data: bytes | None) -> dict[str, Any] | ApiError:
        """Make sure this replica holds the image's features (encode if new)."""
        try:
            with self._serving():
                features, cached = await self._features(image_id, data)
        except Exception as e:
            return _internal(e, "ingest")
        height, width = features.original_size
        return {"image_id": image_id, "width": int(width), "height": int(height), "cached": cached}

    async def local_segment(self, image_id: str, data: bytes | None,
                            request: SegmentRequest) -> dict[str, Any] | ApiError:
        """Masks for one request, decoded inline (no batching: a lone click is answered at
        once; `_on_model`)."""
        from .inference import segment
        from .limits import referring_image_ids

        started = time.perf_counter()
        try:
            with self._serving():
                features, _ = await self._features(image_id, data)
                referring = {}
                for rid in referring_image_ids(request):
                    referring[rid], _ = await self._features(rid, None)
                features_ms = (time.perf_counter() - started) * 1000
                decode_started = time.perf_counter()
                body = await self._on_model(True, segment, self.predictor, features, request, referring)
            self.metrics.decode_latency.observe((time.perf_counter() - decode_started) * 1000, tags={"op": "segment"})
        except Exception as e:
            return _internal(e, "segment")
        body["timings_ms"]["features"] = features_ms
        body["timings_ms"]["decoder"] = (time.perf_counter() - started) * 1000  # waiting for the model included
        return body

    async def local_panoptic(self, image_id: str, data: bytes | None,
                             request: PanopticRequest) -> dict[str, Any] | ApiError:
        """Every segment of the image."""
        from .inference import panoptic

        try:
            started = time.perf_counter()
            with self._serving():
                features, _ = await self._features(image_id, data)
                features_ms = (time.perf_counter() - started) * 1000
                started = time.perf_counter()
                body = await self._on_model(False, panoptic, self.predictor, features, request)
            self.metrics.decode_latency.observe((time.perf_counter() - started) * 1000, tags={"op": "panoptic"})
        except Exception as e:
            return _internal(e, "panoptic")
        body["timings_ms"]["features"] = features_ms
        return body


# --------------------------------------------------------------------------- build
def _encoder_gpus(value: float | str) -> float:
    if value != "auto":
        return float(value)
    import ray

    try:
        return 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    except Exception:  # not connected: CPU is the safe choice
        return 0.0


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """The application for `serve run serving.app:build_app` / serve.yaml / KubeRay / `seem serve`.

    `args`: see `serving.config.ServeConfig` (model, weights, store, endpoint_url, api_keys,
    allowed_uri_prefixes, limits, autoscaling, decoder, encoder, speech, ...).
    """
    config = ServeConfig.from_args(args)
    plain = config.model_dump(mode="json")
    enc, dec = config.encoder, config.decoder
    encoder = Encoder.options(
        num_replicas=enc.num_replicas,
        max_ongoing_requests=enc.max_ongoing_requests,
        ray_actor_options={"num_cpus": enc.num_cpus, "num_gpus": _encoder_gpus(enc.num_gpus)},
    ).bind(plain)
    speech = Speech.options(
        num_replicas=config.speech.num_replicas,
        ray_actor_options={"num_cpus": config.speech.num_cpus},
    ).bind(plain)
    return Decoder.options(
        autoscaling_config=dict(config.autoscaling),
        max_ongoing_requests=dec.max_ongoing_requests,
        max_queued_requests=dec.max_queued_requests,
        ray_actor_options={"num_cpus": dec.num_cpus, "num_gpus": dec.num_gpus},
        **({"max_replicas_per_node": dec.max_replicas_per_node} if dec.max_replicas_per_node else {}),
    ).bind(plain, encoder, speech, video_deployment(config, _encoder_gpus(enc.num_gpus)).bind(plain))
