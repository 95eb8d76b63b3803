"""The prompted segment stage and its outputs (`seem segment --prompts`), without Ray.

`PromptedWorker` (actor pool) takes one row per image with that image's prompt entries,
reads the image's stored features once and decodes its entries together: many targets
per decoder call (`SeemPredictor.decode` runs all box/click targets of a call in one
multi-object pass and all phrases in one grounding pass). Entries that already have a
result (from the results cache of an earlier run) are passed through untouched; with
overlays on they are drawn too.

Results are keyed by `prompt_files.result_key` and kept in OUT's results cache
(`ResultCache`), so a re-run with a changed prompts file decodes only changed entries.
"""
from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.stages import SegmenterWorker, _exception_reason, _stage_error, _vocabulary, error_text, overlay_name

log = logging.getLogger(__name__)

__all__ = ["PROMPT_RESULT", "PROMPTED_INPUT_SCHEMA", "PROMPTED_SCHEMA", "PromptedWorker", "ResultCache"]

PROMPT_RESULT = pa.struct([
    ("key", pa.string()),
    ("status", pa.string()),  # "ok" | "error"
    ("error", pa.string()),  # "<stage>: <reason>"
    ("score", pa.float64()),
    ("class_label", pa.string()),
    ("label_score", pa.float64()),
    ("bbox", pa.list_(pa.int32(), 4)),
    ("area", pa.int64()),
    ("rle_counts", pa.string()),
])
PROMPT_ENTRY = pa.struct([
    ("key", pa.string()),
    ("prompts", pa.string()),  # canonical JSON of the prompt list
    ("refs", pa.string()),  # JSON {referring image name: sha256}
    ("caption", pa.string()),
    ("result", PROMPT_RESULT),  # set when the cache had it
])
PROMPTED_INPUT_SCHEMA = pa.schema([
    ("uri", pa.string()), ("sha256", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("entries", pa.list_(PROMPT_ENTRY)),
])
PROMPTED_SCHEMA = pa.schema([
    ("uri", pa.string()), ("sha256", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("reencoded", pa.bool_()), ("overlay", pa.string()), ("results", pa.list_(PROMPT_RESULT)),
])
#: Errors that come from the entry itself, so they repeat on the same input and are cached.
CACHED_ERROR_STAGES = ("prompts",)


def failed(key: str, error: str) -> dict[str, Any]:
    return {"key": key, "status": "error", "error": error}


class PromptedWorker(SegmenterWorker):
    """Decodes prompt entries from stored features (one per actor); same constructor as
    `SegmenterWorker` (its features, re-encode and overlay handling are reused) plus
    `prompts_per_call`, the most targets given to one decoder call."""

    def __init__(self, *, prompts_per_call: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prompts_per_call = max(1, int(prompts_per_call))

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.prompt_one(r) for r in batch.to_pylist()], schema=PROMPTED_SCHEMA)

    def prompt_one(self, row: dict[str, Any]) -> dict[str, Any]:
        entries = row["entries"]
        out = {"uri": row["uri"], "sha256": row["sha256"], "status": "ok", "reencoded": False}
        try:
            features, out["reencoded"] = self._features(row)
        except Exception as e:
            error = _stage_error(e, "store")
            out.update(status="error", error=error,
                       results=[e_["result"] or failed(e_["key"], error) for e_ in entries])
            return out
        targets = self._targets(entries, features)
        todo = [i for i, e in enumerate(entries) if e["result"] is None and not isinstance(targets[i], str)]
        decoded = dict(zip(todo, self._decode(features, [targets[i] for i in todo])))
        results = []
        for i, e in enumerate(entries):
            if e["result"] is not None:
                results.append(e["result"])
            elif isinstance(targets[i], str):
                results.append(failed(e["key"], targets[i]))
            else:
                results.append(_result_row(e["key"], decoded[i]))
        out["results"] = results
        if self.out is not None:
            try:
                out["overlay"] = self._prompted_overlay(row, targets, results)
            except Exception as e:
                out.update(status="error", error=_stage_error(e, "overlay"))
        return out

    def _targets(self, entries: Sequence[dict[str, Any]], features: Any) -> list[Any]:
        """Each entry as a `Prompts` target, or the reason it is not one ("<stage>: ...")."""
        from model.prompt_json import to_prompts
        from model.prompt_schema import PromptSchemaError, parse_prompt_list

        referred: dict[str, Any] = {}
        size = tuple(features.original_size)
        targets: list[Any] = []
        for e in entries:
            try:
                refs = {name: self._referred(sha, referred) for name, sha in json.loads(e["refs"] or "{}").items()}
            except Exception as exc:
                targets.append(error_text("store", f"features of a referred image: {_exception_reason(exc)}"))
                continue
            try:
                targets.append(to_prompts(parse_prompt_list(json.loads(e["prompts"])), size, refs)[0])
            except (PromptSchemaError, ValueError) as exc:  # PromptJsonError is a ValueError
                targets.append(error_text("prompts", exc))
        return targets

    def _referred(self, sha256: str, loaded: dict[str, Any]) -> Any:
        if sha256 not in loaded:
            loaded[sha256] = self.store.get(self.model_id, sha256)
        return loaded[sha256]

    def _decode(self, features: Any, targets: list[Any]) -> list[Any]:
        """One `MaskResult` (or an error text) per target, `prompts_per_call` targets per call;
        a failing call is retried target by target so one bad target fails alone."""
        vocab = _vocabulary(self.predictor, self.spec)
        out: list[Any] = []
        for start in range(0, len(targets), self.prompts_per_call):
            chunk = targets[start:start + self.prompts_per_call]
            try:
                segs = self.predictor.decode_many(features, chunk, vocabulary=vocab, max_masks=1)
                out.extend(s.masks[0] if s.masks else error_text("segment", "no mask") for s in segs)
            except Exception as e:
                if len(chunk) == 1:
                    stage = "prompts" if isinstance(e, ValueError) else "segment"  # PromptError: the entry's fault
                    out.append(error_text(stage, _exception_reason(e) if stage == "segment" else e))
                else:
                    out.extend(r for t in chunk for r in self._decode(features, [t]))
        return out

    def _prompted_overlay(self, row: dict[str, Any], targets: list[Any], results: list[dict[str, Any]]) -> str:
        from model.rle import decode_mask
        from pipeline.exports import render_overlay

        image = self._source_image(row)
        size = [row["height"], row["width"]]
        shown = [(r, t, e) for r, t, e in zip(results, targets, row["entries"]) if r["status"] == "ok"]
        masks = [decode_mask({"size": size, "counts": r["rle_counts"]}) for r, _, _ in shown]
        png = render_overlay(image, masks, [e["caption"] or "" for _, _, e in shown],
                             prompts=[t.spatial if not isinstance(t, str) else () for _, t, _ in shown])
        name = f"overlays/{overlay_name(row['uri'], row['sha256'])}"
        self.out.put_atomic(name, png)
        return name


def _result_row(key: str, mask_or_error: Any) -> dict[str, Any]:
    from model.rle import encode_mask

    if isinstance(mask_or_error, str):
        return failed(key, mask_or_error)
    m = mask_or_error
    mask = np.asarray(m.mask, dtype=bool)
    return {
        "key": key, "status": "ok",
        # Rounded so that tiny float differences between runs cannot change outputs.
        "score": round(float(m.score), 6) if np.isfinite(m.score) else 0.0,
        "class_label": m.label,
        "label_score": None if m.label_score is None else round(float(m.label_score), 6),
        "bbox": list(m.bbox), "area": int(mask.sum()), "rle_counts": encode_mask(mask)["counts"],
    }


# --------------------------------------------------------------------------- results cache
class ResultCache:
    """Decoded entries of earlier runs, by result key, as Parquet parts under OUT/.cache/.

    Parts are written while the job runs (a killed job keeps what it finished) and folded
    into one part holding only this run's keys at the end."""

    PREFIX = ".cache/prompt-results/"

    def __init__(self, out: Any) -> None:
        self.out = out
        self.parts = [key for key, _ in out.list(self.PREFIX) if key.endswith(".parquet")]

    def read(self) -> dict[str, dict[str, Any]]:
        results: dict[str, dict[str, Any]] = {}
        for key in self.parts:
            try:
                table = pq.read_table(pa.BufferReader(self.out.get(key)))
            except Exception as e:  # a damaged part only costs its entries a decode
                log.warning("results cache part %s unreadable (%s); its entries are decoded again", key, e)
                continue
            for r in table.cast(pa.schema(list(PROMPT_RESULT))).to_pylist():
                results[r["key"]] = r
        return results

    def write(self, rows: Iterable[dict[str, Any]]) -> str | None:
        """Publish `rows` (results worth keeping) as a new part; returns its key."""
        keep = [r for r in rows if r["status"] == "ok" or
                (r.get("error") or "").partition(": ")[0] in CACHED_ERROR_STAGES]
        if not keep:
            return None
        table = pa.Table.from_pylist(keep, schema=pa.schema(list(PROMPT_RESULT)))
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        key = f"{self.PREFIX}part-{uuid.uuid4().hex}.parquet"
        self.out.put_atomic(key, sink.getvalue().to_pybytes())
        self.parts.append(key)
        return key

    def compact(self, rows: Iterable[dict[str, Any]]) -> None:
        """Replace every part with one holding `rows` (write first, then delete)."""
        old = list(self.parts)
        new = self.write(rows)
        for key in old:
            if key != new:
                self.out.delete(key)
        self.parts = [new] if new else []
