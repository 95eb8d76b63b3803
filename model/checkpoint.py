"""Loading and saving weights: the official SEEM `.pt` layout and safetensors.

Loading never executes code from the file: safetensors, or `torch.load(weights_only=True)`.
The official checkpoints are a flat state_dict of the reference's `GeneralizedSEEM`; our
module names differ in a few places, and `REFERENCE_TO_OURS` is the one place that maps
them. Loading is strict: a missing key or a shape mismatch is an error naming the key; an
unexpected key is a warning naming it (the reference's training-only buffers are known and
skipped quietly).
"""
from __future__ import annotations

import hashlib
import io
import logging
import warnings
from pathlib import Path

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

log = logging.getLogger(__name__)

# Reference prefix -> our prefix, most specific first.
REFERENCE_TO_OURS: tuple[tuple[str, str], ...] = (
    ("sem_seg_head.predictor.lang_encoder.", "text_encoder."),
    ("sem_seg_head.predictor.decoder_norm.", "decoder.heads.decoder_norm."),
    ("sem_seg_head.predictor.class_embed", "decoder.heads.class_embed"),
    ("sem_seg_head.predictor.mask_embed.", "decoder.heads.mask_embed."),
    ("sem_seg_head.predictor.", "decoder."),
    ("sem_seg_head.pixel_decoder.", "pixel_decoder."),
    ("backbone.", "backbone."),
)
# In the official files but not needed for inference (training loss buffer, click simulator kernel).
KNOWN_UNUSED: tuple[str, ...] = ("criterion.", "dilation_kernel")


class CheckpointError(ValueError):
    """A checkpoint does not fit the model; the message names the offending keys."""


def reference_to_ours(key: str) -> str | None:
    for ref, ours in REFERENCE_TO_OURS:
        if key.startswith(ref):
            return ours + key[len(ref):]
    return None


def ours_to_reference(key: str) -> str:
    for ref, ours in REFERENCE_TO_OURS:
        if key.startswith(ours):
            return ref + key[len(ours):]
    raise KeyError(f"no reference name for {key}")


def read_bytes(path_or_uri: str | Path) -> bytes:
    """Bytes of a local file or an `s3://bucket/key` object, through the storage layer
    (endpoint from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, credentials from the standard
    AWS chain). Imported here, lazily: `storage` sits below model/ and loading a
    bundled checkpoint should not pay for it."""
    import storage

    text = str(path_or_uri)
    if storage.is_s3(text) and not storage.split_s3_uri(text)[1]:
        raise CheckpointError(f"{text}: an S3 checkpoint URI needs a key (s3://bucket/key)")
    return storage.read_bytes(text)


def read_state_dict(data: bytes, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or of a torch file (weights only), unwrapped from
    "model" / "state_dict" containers and a "module." prefix."""
    if _looks_like_safetensors(data):
        try:
            return safetensors_load(data)
        except Exception as exc:  # noqa: BLE001 - rewrap with the file's name
            raise CheckpointError(f"{name}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{name}: not a safetensors or weights-only torch checkpoint ({exc})") from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{name}: expected a flat mapping of names to tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 9:
        return False
    header_len = int.from_bytes(data[:8], "little")
    return 0 < header_len < len(data) and data[8:9] == b"{"


def to_our_names(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Maps reference names to ours (keys already in our naming pass through).

    Returns the mapped dict and the keys that belong to neither naming."""
    ours_prefixes = tuple({o for _, o in REFERENCE_TO_OURS})
    mapped: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key.startswith(KNOWN_UNUSED):
            continue
        new = reference_to_ours(key)
        if new is None and key.startswith(ours_prefixes):
            new = key
        if new is None:
            unknown.append(key)
        else:
            mapped[new] = value
    return mapped, unknown


def load_state(module: nn.Module, state: dict[str, torch.Tensor], name: str = "checkpoint") -> None:
    """Strict load of a state dict in either naming into `module`."""
    mapped, unknown = to_our_names(state)
    expected = module.state_dict()
    missing = [k for k in expected if k not in mapped]
    if missing:
        shown = ", ".join(_ref_name(k) for k in missing[:10])
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise CheckpointError(f"{name}: missing {len(missing)} key(s): {shown}{more}")
    wrong = [(k, tuple(mapped[k].shape), tuple(v.shape)) for k, v in expected.items() if mapped[k].shape != v.shape]
    if wrong:
        shown = "; ".join(f"{_ref_name(k)}: checkpoint {a} vs model {b}" for k, a, b in wrong[:10])
        raise CheckpointError(f"{name}: shape mismatch for {len(wrong)} key(s): {shown}")
    unexpected = unknown + [k for k in mapped if k not in expected]
    if unexpected:
        warnings.warn(f"{name}: ignoring {len(unexpected)} unexpected key(s): {', '.join(unexpected[:10])}",
                      stacklevel=3)
    with torch.no_grad():
        result = module.load_state_dict({k: mapped[k] for k in expected}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def _ref_name(key: str) -> str:
    try:
        return ours_to_reference(key)
    except KeyError:
        return key


def load_checkpoint(module: nn.Module, path_or_uri: str | Path) -> str:
    """Loads an official `.pt`, a torch file or safetensors (local path or s3:// URI) into
    `module`, strictly. Returns the sha256 of the file's bytes (part of the model id)."""
    data = read_bytes(path_or_uri)
    state = read_state_dict(data, name=str(path_or_uri))
    load_state(module, state, name=str(path_or_uri))
    digest = hashlib.sha256(data).hexdigest()
    module.weights_digest = digest  # type: ignore[attr-defined]
    log.info("loaded %s (%d tensors, sha256 %s)", path_or_uri, len(state), digest[:12])
    return digest


def save_checkpoint(module: nn.Module, path: str | Path, *, reference_names: bool = False,
                    dtype: torch.dtype | None = None, metadata: dict[str, str] | None = None) -> None:
    """Writes safetensors (atomically). `reference_names` writes the official key layout;
    `dtype` casts floating tensors (e.g. float16 to halve the shipped file)."""
    state = {}
    for key, value in module.state_dict().items():
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        state[ours_to_reference(key) if reference_names else key] = value.detach().contiguous().cpu()
    data = safetensors_save(state, metadata=metadata)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def state_digest(module: nn.Module) -> str:
    """sha256 over names, shapes and bytes of every tensor (for weights not read from a file)."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
