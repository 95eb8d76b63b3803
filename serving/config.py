"""Configuration of the serving application: the `args` of `build_app` (serve.yaml, KubeRay).

One validated object built from a plain dict, so the same keys work in `infra/serve.yaml`
(`args:`), in a RayService spec and from `seem serve`. Unknown keys are an error: a typo in
a deployment file must not silently fall back to a default.

    build_app({"store": "s3://bucket/features", "api_keys": ["k1"],
               "limits": {"max_body_bytes": 10485760}, "autoscaling": {"max_replicas": 8}})
"""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from store.formats import DEFAULT_STORE_CODEC

__all__ = ["Limits", "DecoderOptions", "EncoderOptions", "SpeechOptions", "ServeConfig", "DEFAULT_STORE",
           "API_KEYS_ENV"]

#: The embedded default feature store: a local directory (one node). Use s3:// on a cluster.
DEFAULT_STORE = str(Path.home() / ".cache" / "seem-ray" / "store")
#: Comma-separated API keys read by the ingress replicas from their environment, so keys can
#: come from a Kubernetes secret instead of the deployment file.
API_KEYS_ENV = "SEEM_API_KEYS"


def _is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine (a name other than
    localhost may resolve to anything: not loopback)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """Request limits enforced by the ingress (status codes in docs/api.md / serving/errors.py)."""

    max_body_bytes: int = Field(20 << 20, gt=0, description="request body bytes (413)")
    max_pixels: int = Field(40_000_000, gt=0, description="width * height of an image (413)")
    max_prompts: int = Field(32, gt=0, description="prompts in one segment request (422)")
    max_points: int = Field(2048, gt=0, description="points of one scribble or polygon (422)")
    max_vocabulary: int = Field(512, gt=0, description="names in a request vocabulary (422)")
    max_masks: int = Field(10, gt=0, description="largest max_masks a request may ask for (422)")
    max_text_chars: int = Field(500, gt=0, description="characters of a text prompt or vocabulary name (422)")
    # Text encoding costs in proportion to characters (tokens); a new vocabulary is encoded on a
    # decoder replica, in front of every request queued there, so its total is bounded.
    max_vocabulary_chars: int = Field(8192, gt=0, description="characters of all vocabulary names together (422)")
    max_rle_chars: int = Field(1 << 20, gt=0, description="characters (or runs) of one RLE mask's counts (422)")
    max_audio_bytes: int = Field(4 << 20, gt=0, description="bytes of one audio prompt's file, decoded base64 (422)")
    max_audio_seconds: float = Field(30.0, gt=0, description="seconds of one audio prompt (422)")
    requests_per_s: float | None = Field(None, gt=0, description="per-client rate (429); None: no rate limit")
    burst: int = Field(20, gt=0, description="requests a client may send at once before the rate applies")


class DecoderOptions(_Strict):
    """The Decoder deployment (the HTTP ingress): the feature LRU and per-replica resources.
    No batching: it is the interactive path, and a lone click must not wait for company."""

    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0, ge=0)
    cache_size: int = Field(32, gt=0, description="ImageFeatures held per replica (LRU)")
    decoder_cache_mb: float = Field(256, ge=0, description="MB per replica of the decoder's prompt-independent "
                                                           "work kept for the images decoded last (a phrase's key "
                                                           "and value projections; ~100 MB per Focal-T image); 0: none")
    warm_images: bool = Field(True, description="compute a newly loaded image's decoder projections while the "
                                                  "replica has no request, one layer at a time, so that its first "
                                                  "phrase skips them (within decoder_cache_mb)")
    max_ongoing_requests: int = Field(16, gt=0)
    # Requests wait in Serve's proxy (not in a replica) until a replica has a free slot.
    max_queued_requests: int = Field(256, description="-1: unbounded; beyond it requests get 503")
    max_replicas_per_node: int | None = Field(None, gt=0, description="spread replicas over nodes (1: one per node, "
                                                                       "so a lost node takes one replica's cache)")


class EncoderOptions(_Strict):
    """The Encoder deployment. num_gpus "auto": one GPU per replica when the cluster has GPUs."""

    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float | Literal["auto"] = "auto"
    num_replicas: int = Field(1, gt=0)
    max_batch_size: int = Field(4, gt=0)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    max_ongoing_requests: int = Field(8, gt=0)


class SpeechOptions(_Strict):
    """The Speech deployment (transcribes audio prompts for the decoder replicas)."""

    num_cpus: float = Field(0.25, ge=0)
    num_replicas: int = Field(1, gt=0)


_DEFAULT_AUTOSCALING: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 4,
    "target_ongoing_requests": 4,
    "upscale_delay_s": 5.0,
    "downscale_delay_s": 60.0,
}


class ServeConfig(_Strict):
    """Everything `build_app(args)` accepts. `args` keys are the field names."""

    model: str = "seem-tiny"
    weights: str | None = "default"
    store: str = DEFAULT_STORE
    endpoint_url: str | None = None
    store_dtype: str = Field("float16", description="format of the features the encoder stores: one of "
                                                    "store.formats.STORE_DTYPES (docs/benchmarks.md)")
    store_codec: str = Field(DEFAULT_STORE_CODEC, description="compression of the stored features: one of "
                                                         "store.formats.STORE_CODECS; the default is `seem encode`'s")
    api_keys: tuple[str, ...] = ()
    allowed_uri_prefixes: tuple[str, ...] = ()
    limits: Limits = Limits()
    autoscaling: dict[str, Any] = Field(default_factory=lambda: dict(_DEFAULT_AUTOSCALING))
    decoder: DecoderOptions = DecoderOptions()
    encoder: EncoderOptions = EncoderOptions()
    speech: SpeechOptions = SpeechOptions()
    request_timeout_s: float = Field(60.0, gt=0)
    asr: str = Field("pocketsphinx", description="speech recogniser of audio prompts, run by Speech: "
                                                 "'pocketsphinx' (offline, bundled) or 'whisper:PATH' (local or s3://)")
    seed: int = Field(0, description="seed of random weights (weights 'random' or None): equal in every replica")
    insecure: bool = Field(False, description="serve without API keys although the HTTP proxy listens beyond "
                                              "loopback (otherwise the ingress refuses to start)")

    @field_validator("store_dtype")
    @classmethod
    def _store_dtype(cls, value: str) -> str:
        from store.formats import check_store_dtype

        return check_store_dtype(value)

    @field_validator("store_codec")
    @classmethod
    def _store_codec(cls, value: str) -> str:
        from store.formats import check_store_codec

        return check_store_codec(value)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        if isinstance(value, str):  # "k1,k2" from an environment variable or a CLI flag
            value = [k for k in value.split(",")]
        keys = tuple(str(k).strip() for k in (value or ()))
        if any(not k for k in keys):
            raise ValueError("api_keys must not contain empty keys")
        return keys

    @field_validator("allowed_uri_prefixes", mode="before")
    @classmethod
    def _prefixes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        prefixes = tuple(str(p) for p in (value or ()))
        for p in prefixes:
            if not p or (not p.startswith(("s3://", "file://", "/"))):
                raise ValueError(f"allowed_uri_prefixes: {p!r} must be an s3://, file:// or absolute path prefix")
            if p.startswith("s3://") and len(p.rstrip("/")) <= len("s3://"):
                raise ValueError(f"allowed_uri_prefixes: {p!r} names no bucket")
        return prefixes

    @field_validator("autoscaling", mode="before")
    @classmethod
    def _autoscaling(cls, value: Any) -> Any:
        # Keys not given keep our defaults (Serve's own defaults scale too slowly for a demo).
        merged = dict(_DEFAULT_AUTOSCALING)
        merged.update(dict(value or {}))
        return merged

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> "ServeConfig":
        """Validate `build_app` args (None or {} gives the embedded defaults)."""
        return cls.model_validate(dict(args or {}))

    def model_spec(self, device: str | None = None) -> Any:
        """The `model.loading.ModelSpec` every replica loads (same spec: same model id)."""
        from model.loading import ModelSpec

        return ModelSpec(name=self.model, weights=self.weights, device=device, seed=self.seed)

    def open_to_network_refusal(self, host: str | None) -> str | None:
        """Why the ingress must not start behind a proxy bound to `host` (fail closed:
        no API keys on a non-loopback address without `insecure`), or None."""
        if self.insecure or self.effective_api_keys() or host is None or _is_loopback(host):
            return None
        return (f"the HTTP proxy listens on {host} and no API keys are configured (api_keys or ${API_KEYS_ENV}); "
                "set keys, bind 127.0.0.1, or set insecure: true to serve openly")

    def effective_api_keys(self) -> tuple[str, ...]:
        """Configured keys plus those in $SEEM_API_KEYS of this process."""
        extra = tuple(k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip())
        return tuple(dict.fromkeys(self.api_keys + extra))
