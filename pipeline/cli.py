"""`seem encode`, `seem segment`, `seem demo`: the bulk jobs from the command line.

Registered into the `seem` dispatcher (seem_cli.py) with `register(subparsers)`. Heavy
imports (torch, Ray, pyarrow) happen inside the command functions so `seem --help` stays
instant.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["register", "SAMPLES_DIR"]

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
DEFAULT_STORE = os.path.join("out", "store")
DEFAULT_DEMO_OUT = os.path.join("out", "demo")


# --------------------------------------------------------------------------- options
def _pair(text: str) -> tuple[int, int]:
    """"2" -> (2, 2); "1,4" -> (1, 4)."""
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN,MAX, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 1 <= parts[0] <= parts[1]:
        raise argparse.ArgumentTypeError(f"expected N or MIN,MAX with 1 <= MIN <= MAX, got {text!r}")
    return parts[0], parts[1]


def _names(text: str) -> list[str]:
    """"a,b,c" or "@file" (one name per line) -> names."""
    if text.startswith("@"):
        lines = Path(text[1:]).read_text(encoding="utf-8").splitlines()
        names = [line.strip() for line in lines]
    else:
        names = [part.strip() for part in text.split(",")]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise argparse.ArgumentTypeError(f"no names in {text!r}")
    return names


def _add_common(p: argparse.ArgumentParser) -> None:
    from pipeline import defaults
    from store.formats import STORE_DTYPES

    g = p.add_argument_group("model and cluster")
    g.add_argument("--model", default="seem-tiny", help="registered model or config file (default: seem-tiny)")
    g.add_argument("--weights", default="default",
                   help="'default' (shipped weights), 'random' (seeded random weights) or a checkpoint path / s3:// URI")
    g.add_argument("--address", help="address of an existing Ray cluster (default: start a local one)")
    g.add_argument("--endpoint-url",
                   help="S3 endpoint for s3:// sources, stores and outputs (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS)")
    # --batch-size and --decode-in left out take EncodeOptions' defaults (pipeline.jobs is
    # imported only when a command runs).
    g.add_argument("--batch-size", type=int, help="images per encoder call (default: 16)")
    g.add_argument("--pool", type=_pair, help="encoder actors N or MIN,MAX (default: 1,GPUs on a GPU cluster, else 1,CPUs/4)")
    g.add_argument("--gpus-per-actor", type=float, help="default: 1 when the cluster has GPUs, else 0")
    g.add_argument("--cpus-per-actor", type=float, help="default: 1, or 0.5 on machines with fewer than 4 CPUs")
    g.add_argument("--torch-threads", type=int, help="torch threads per CPU actor (default: the CPUs it holds, at least 1)")
    g.add_argument("--decode-in", choices=("auto", "tasks", "actor"),
                   help="decode images in separate CPU tasks or inside the encoder actors; auto (default): "
                        "tasks when the encoders have GPUs, else inside the actors")
    g.add_argument("--max-pixels", type=int, help="refuse images with more pixels (decompression-bomb cap; default 64M)")
    g.add_argument("--manifest-flush-rows", type=int, default=256,
                   help="record finished images in the manifest at least every N images (default: 256; "
                        "also every 10 s): what a killed job can lose")
    g.add_argument("--storage-retry-minutes", type=float,
                   help="keep retrying a throttled or failing S3 call for up to this long before an image "
                        "fails (default: 5, or SEEM_STORAGE_RETRY_MINUTES)")
    g.add_argument("--retry-failed", action="store_true",
                   help="also retry items whose last attempt failed to decode (they are skipped when unchanged)")
    f = p.add_argument_group("stored features (see docs/benchmarks.md, 'Feature store format')")
    f.add_argument("--feature-stage", choices=("pixel_decoder", "backbone"), default=defaults.FEATURE_STAGE)
    f.add_argument("--feature-dtype", choices=STORE_DTYPES, default=defaults.FEATURE_DTYPE)
    f.add_argument("--feature-codec", default=defaults.FEATURE_CODEC,
                   help=f"none, zlib, zstd, shuffle+zlib, shuffle+zstd (default: {defaults.FEATURE_CODEC})")
    o = p.add_argument_group("output")
    o.add_argument("--progress", dest="progress", action="store_true", default=None, help="force progress bars")
    o.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    o.add_argument("--summary-json", help="also write the summary as JSON to this file")
    o.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def _encode_options(args: argparse.Namespace) -> Any:
    from pipeline.jobs import EncodeOptions
    from pipeline.stages import DecodeOptions, FeatureFormat, ModelSpec

    if args.storage_retry_minutes is not None:
        if args.storage_retry_minutes < 0:
            raise SystemExit("seem: --storage-retry-minutes must be >= 0")
        # The storage layer reads it here and in every Ray worker (jobs.init_ray passes it on).
        os.environ["SEEM_STORAGE_RETRY_MINUTES"] = str(args.storage_retry_minutes)
        from storage import set_retry_policy

        set_retry_policy(None)

    decode = DecodeOptions(endpoint_url=args.endpoint_url)
    if args.max_pixels:
        decode = DecodeOptions(max_pixels=args.max_pixels, endpoint_url=args.endpoint_url)
    return EncodeOptions(
        model=ModelSpec(name=args.model, weights=args.weights),
        feature_format=FeatureFormat(stage=args.feature_stage, dtype=args.feature_dtype, codec=args.feature_codec),
        decode=decode,
        endpoint_url=args.endpoint_url,
        pool=args.pool,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        torch_threads=args.torch_threads,
        retry_failed=args.retry_failed,
        manifest_flush_rows=args.manifest_flush_rows,
        progress=args.progress,
        address=args.address,
        **{k: getattr(args, k) for k in ("batch_size", "decode_in") if getattr(args, k) is not None},
    )


def _setup_logging(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def _finish(summary: Any, args: argparse.Namespace, started_ray: bool) -> int:
    """Print the summary (and its JSON); shut down a Ray that this command started."""
    print("\n".join(summary.lines()))
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary.as_dict(), indent=2, default=str))
    if started_ray:
        import ray

        ray.shutdown()
    return 0


def _ray_running_before() -> bool:
    # Jobs start Ray lazily (a re-run with nothing to encode never starts it); remember
    # whether it was running before, to shut down only what this command started.
    import ray

    return ray.is_initialized()


# --------------------------------------------------------------------------- commands
def cmd_encode(args: argparse.Namespace) -> int:
    """seem encode SRC --store STORE"""
    _setup_logging(args)
    from pipeline.jobs import encode_job

    fresh = not _ray_running_before()
    summary = encode_job(args.src, args.store, _encode_options(args))
    return _finish(summary, args, fresh)


def _segment_options(args: argparse.Namespace) -> Any:
    from pipeline.jobs import SegmentOptions

    return SegmentOptions(
        vocabulary=args.vocabulary,
        stuff=args.stuff,
        texts=tuple(args.text or ()) + _heard(args),
        overlays=args.overlays,
        out_endpoint_url=args.endpoint_url,
        batch_size=args.segment_batch_size,
        pool=args.decoder_pool,
    )


def _heard(args: argparse.Namespace) -> tuple[str, ...]:
    """The transcript of each --audio file of `seem segment` (see `transcribe_files`)."""
    if not getattr(args, "audio", None):
        return ()
    return transcribe_files(args.audio, args.asr, args.model, args.vocabulary, args.stuff, "seem segment")


def transcribe_files(paths: Sequence[str], asr: str, model: str, vocabulary: Sequence[str] | None = None,
                     stuff: Sequence[str] | None = None, command: str = "seem") -> tuple[str, ...]:
    """Each audio file transcribed once, here, constrained by the vocabulary the masks are
    labelled from (default: the model's); a file that cannot be used stops the command."""
    from model.audio_prompt import read_audio
    from model.build import get_config
    from speech import AudioError, load_recognizer, transcribe_bytes

    cfg = get_config(model)
    names = tuple(vocabulary) if vocabulary else tuple(cfg.default_vocabulary)
    stuff = tuple(stuff) if stuff else tuple(cfg.default_stuff)
    heard = []
    for path in paths:
        try:
            text = transcribe_bytes(load_recognizer(asr), read_audio(path), words=names, stuff=stuff)
        except (AudioError, ValueError) as e:
            raise SystemExit(f"{command}: --audio {path}: {e}") from None
        if not text:
            raise SystemExit(f"{command}: --audio {path}: no speech was recognised")
        print(f"--audio {path}: heard {text!r}")
        heard.append(text)
    return tuple(heard)


def cmd_segment(args: argparse.Namespace) -> int:
    """seem segment SRC --out OUT [--store STORE] [--vocabulary ...] [--text ...] [--overlays]
    or seem segment SRC --prompts FILE --out OUT [--with-category-text]"""
    _setup_logging(args)
    fresh = not _ray_running_before()
    if args.prompts:
        from pipeline.prompt_job import PromptOptions, prompted_segment_job

        if args.text or args.audio:
            raise SystemExit("seem segment: --text/--audio and --prompts do not go together "
                             "(put phrases or audio prompts in the prompts file)")
        prompt_options = PromptOptions(prompts=args.prompts, with_category_text=args.with_category_text,
                                       vocabulary=args.vocabulary, stuff=args.stuff, overlays=args.overlays,
                                       out_endpoint_url=args.endpoint_url, batch_size=args.segment_batch_size,
                                       prompts_per_call=args.prompts_per_call, pool=args.decoder_pool)
        summary = prompted_segment_job(args.src, args.out, args.store, prompt_options, _encode_options(args))
    else:
        from pipeline.jobs import segment_job

        summary = segment_job(args.src, args.out, args.store, _segment_options(args), _encode_options(args))
    return _finish(summary, args, fresh)


def cmd_demo(args: argparse.Namespace) -> int:
    """seem demo: the bundled samples through encode + segment on the embedded defaults."""
    _setup_logging(args)
    from pipeline.jobs import segment_job

    print(f"seem demo: segmenting the sample images in {SAMPLES_DIR}")
    print(f"  model {args.model} on {'Ray at ' + args.address if args.address else 'a local Ray cluster'}, "
          f"feature store {os.path.abspath(args.store)}")
    fresh = not _ray_running_before()
    summary = segment_job(str(SAMPLES_DIR), args.out, args.store, _segment_options(args), _encode_options(args))
    rc = _finish(summary, args, fresh)
    files = summary.files
    print()
    print(f"COCO annotations: {files['annotations.json']}")
    print(f"masks (Parquet):  {files['masks.parquet']}")
    if "overlays" in files:
        print(f"overlays:         {files['overlays']}/")
    print(f"errors:           {files['errors.parquet']}")
    if summary.encode.encoded == 0 and summary.encode.listed:
        print("(all features came from the store: no encoder work on this run)")
    return rc


def _add_segment_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("segmentation")
    g.add_argument("--vocabulary", type=_names,
                   help="class names for panoptic segmentation: 'a,b,c' or @file (default: the model's own)")
    g.add_argument("--stuff", type=_names, help="which vocabulary names are stuff (default: those the model knows as stuff)")
    g.add_argument("--text", action="append",
                   help="a text prompt; its best mask in every image (repeatable). Text alone skips panoptic "
                        "segmentation unless --vocabulary is given too")
    g.add_argument("--audio", action="append", metavar="FILE",
                   help="a spoken text prompt (any audio file), transcribed once and used as --text (repeatable)")
    g.add_argument("--asr", default="pocketsphinx",
                   help="speech recogniser for --audio: pocketsphinx (default, offline) or whisper:PATH")
    g.add_argument("--segment-batch-size", type=int, default=4, help="images per decoder call (default: 4)")
    g.add_argument("--decoder-pool", type=_pair, help="decoder actors N or MIN,MAX (default: as --pool)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the pipeline's sub-commands to the `seem` parser."""
    p = subparsers.add_parser("encode", help="encode images into the feature store (incremental)",
                              description="Encode every new or changed image of SRC into the feature store. "
                                          "SRC: a folder, s3://bucket/prefix, or a .txt/.parquet list of URIs.")
    p.add_argument("src")
    p.add_argument("--store", default=DEFAULT_STORE, help=f"feature store: a folder or s3://bucket/prefix (default: {DEFAULT_STORE})")
    _add_common(p)
    p.set_defaults(func=cmd_encode)

    p = subparsers.add_parser("segment", help="segment images (from stored features) into COCO / Parquet",
                              description="Segment every image of SRC: encodes what the store lacks, then writes "
                                          "OUT/masks.parquet, OUT/annotations.json (COCO, RLE), OUT/errors.parquet "
                                          "and, with --overlays, OUT/overlays/*.png.")
    p.add_argument("src")
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    p.add_argument("--store", default=DEFAULT_STORE, help=f"feature store (default: {DEFAULT_STORE})")
    p.add_argument("--overlays", action="store_true", help="also write one overlay PNG per image")
    _add_segment_args(p)
    g = p.add_argument_group("prompts per image (see README, 'Prompt files')")
    g.add_argument("--prompts", metavar="FILE",
                   help="segment the objects a prompts file names instead: a COCO detection file (each annotation's "
                        "box) or JSON lines of {image, id, prompts, object_id}; local or s3://")
    g.add_argument("--with-category-text", action="store_true",
                   help="COCO prompts: add each annotation's category name as a text prompt to its box")
    g.add_argument("--prompts-per-call", type=int, default=32, help="targets per decoder call (default: 32)")
    _add_common(p)
    p.set_defaults(func=cmd_segment)

    p = subparsers.add_parser("demo", help="segment the bundled sample images (the main job on the embedded defaults)",
                              description="Runs `seem segment` over the bundled samples (Shapes World scenes and "
                                          "three photos) with seem-tiny on a local Ray cluster, a local folder as "
                                          "the feature store, and prints where the COCO file and overlays went.")
    p.add_argument("--out", default=DEFAULT_DEMO_OUT, help=f"output folder (default: {DEFAULT_DEMO_OUT})")
    p.add_argument("--store", default=DEFAULT_STORE, help=f"feature store (default: {DEFAULT_STORE})")
    p.add_argument("--no-overlays", dest="overlays", action="store_false", help="skip the overlay PNGs")
    _add_segment_args(p)
    _add_common(p)
    p.set_defaults(func=cmd_demo, overlays=True)


if __name__ == "__main__":  # `python -m pipeline.cli ...` for a checkout without the console script
    parser = argparse.ArgumentParser(prog="seem")
    register(parser.add_subparsers(dest="command"))
    ns = parser.parse_args()
    sys.exit(ns.func(ns) if getattr(ns, "func", None) else 2)
