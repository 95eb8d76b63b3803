"""`seem video`: follow prompted objects through a video, or through a folder/bucket of videos on Ray.

    seem video clip.mp4 --out out/clip --box 40,30,120,110           # one object, prompted on frame 0
    seem video frames/ --out out/f --point 80,60 --point 90,70 --negative-point 20,20 --frame 3
    seem video clip.mp4 --out out/clip --text "the red circle" --png
    seem video clip.mp4 --out out/clip --prompts objects.json          # several objects
    seem video s3://bucket/videos/ --out s3://bucket/out --prompts prompts.jsonl   # bulk, on Ray

Heavy imports stay inside the command function (`seem --help` stays instant).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _numbers(text: str, n: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n:
        raise argparse.ArgumentTypeError(f"{what}: expected {n} numbers separated by commas, got {text!r}")
    return values


def _box(text: str) -> list[float]:
    return _numbers(text, 4, "--box X0,Y0,X1,Y1")


def _point(text: str) -> list[float]:
    return _numbers(text, 2, "--point X,Y")


def _flag_prompts(args: argparse.Namespace) -> list[dict[str, Any]]:
    prompts: list[dict[str, Any]] = []
    if args.text and args.audio:
        raise SystemExit("seem video: give --text or --audio, not both")
    if args.audio:  # the spoken phrase, transcribed once, is the object's text prompt
        from pipeline.cli import transcribe_files

        prompts.append({"type": "text", "text": transcribe_files([args.audio], args.asr, args.model,
                                                                 command="seem video")[0]})
    if args.text:
        prompts.append({"type": "text", "text": args.text})
    if args.box:
        prompts.append({"type": "box", "xyxy": args.box})
    prompts += [{"type": "point", "xy": p} for p in args.point or ()]
    prompts += [{"type": "point", "xy": p, "positive": False} for p in args.negative_point or ()]
    return prompts


def _objects(args: argparse.Namespace) -> list[Any]:
    """The objects of the command line: --prompts FILE, or one object from the prompt flags."""
    from model.image_io import ImageDecodeError, decode_image
    from pipeline.video import VideoInputError, VideoObject, load_objects_file, parse_objects

    flags = _flag_prompts(args)
    if args.prompts:
        if flags or args.mask:
            raise VideoInputError("give either --prompts FILE or prompt flags (--box, --point, --text, --mask), not both")
        return load_objects_file(args.prompts)
    mask = None
    if args.mask:
        try:
            mask = decode_image(Path(args.mask).read_bytes()).max(axis=2) > 127
        except (OSError, ImageDecodeError) as e:
            raise VideoInputError(f"--mask {args.mask}: {getattr(e, 'strerror', None) or e}") from None
    if not flags and mask is None:
        raise VideoInputError("no prompt: give --box, --point, --text, --mask or --prompts FILE")
    positive = [p for p in flags if p.get("positive", True)]
    if not positive and mask is None:
        raise VideoInputError("only negative points: add a --point, --box, --text or --mask")
    obj = parse_objects([{"object_id": args.object_id, "frame": args.frame, "prompts": flags}])[0] if flags else \
        VideoObject(args.object_id, args.frame)
    obj.mask = mask
    return [obj]


def _is_single(src: str, endpoint_url: str | None = None) -> bool:
    """One video (a video file or s3:// video object) or a folder of frames (local or an
    s3:// prefix); else bulk."""
    from model.video_io import is_frame_folder, is_video_name

    return is_video_name(src) or is_frame_folder(src, endpoint_url)


def cmd_video(args: argparse.Namespace) -> int:
    from model.video_io import VideoDecodeError
    from pipeline.video import VideoInputError

    try:
        if _is_single(args.src, args.endpoint_url):
            return _single(args)
        return _bulk(args)
    except (VideoInputError, VideoDecodeError, FileNotFoundError) as e:
        print(f"seem video: {e}", file=sys.stderr)
        return 2


def _single(args: argparse.Namespace) -> int:
    from model.transforms import PromptError
    from pipeline.stages import ModelSpec, load_predictor
    from pipeline.video import open_source, segment_video
    from store.backends import open_store

    objects = _objects(args)
    predictor = load_predictor(ModelSpec(name=args.model, weights=args.weights), torch_threads=args.torch_threads)
    with open_source(args.src, endpoint_url=args.endpoint_url, fps=args.fps) as source:
        try:
            summary = segment_video(predictor, source, objects, open_store(args.out, endpoint_url=args.endpoint_url),
                                    png=args.png, progress=args.progress)
        except PromptError as e:
            print(f"seem video: {e}", file=sys.stderr)
            return 2
    for warning in summary.warnings:
        print(f"seem video: warning: {warning}", file=sys.stderr)
    print("\n".join(summary.lines()))
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(vars(summary), indent=2, default=str))
    return 0


def _bulk(args: argparse.Namespace) -> int:
    from pipeline.video import VideoInputError
    from pipeline.video_jobs import VideoJobOptions, video_job

    if not args.prompts:
        raise VideoInputError(f"{args.src} is a folder or prefix of videos: give --prompts FILE.jsonl "
                              "(one line per video: {\"video\": URI, \"frame\": N, \"object_id\": K, \"prompts\": [...]})")
    if _flag_prompts(args) or args.mask:
        raise VideoInputError("bulk videos take their prompts from --prompts FILE.jsonl only")
    options = VideoJobOptions(model=args.model, weights=args.weights, endpoint_url=args.endpoint_url,
                              address=args.address, actors=args.actors, png=args.png, progress=args.progress,
                              torch_threads=args.torch_threads)
    summary = video_job(args.src, args.prompts, args.out, options)
    print("\n".join(summary.lines()))
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary.as_dict(), indent=2, default=str))
    return 1 if summary.failed and not summary.done else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "video", help="segment prompted objects through a video (or, on Ray, a folder/bucket of videos)",
        description="Follows objects prompted on one frame through every later frame and writes OUT/masks.parquet, "
                    "OUT/overlay.mp4 (H.264, browser-playable) and with --png DAVIS-style palette PNGs. SRC: a video "
                    "file (.mp4 .webm .mov .avi .mkv), a folder of frames (name order), an s3:// video, or a folder/"
                    "prefix of videos with --prompts FILE.jsonl (bulk, resumable; docs/video.md).")
    p.add_argument("src")
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    g = p.add_argument_group("prompts (one object; or --prompts FILE for several)")
    g.add_argument("--box", type=_box, help="X0,Y0,X1,Y1 in frame pixels")
    g.add_argument("--point", type=_point, action="append", help="X,Y positive click (repeatable)")
    g.add_argument("--negative-point", type=_point, action="append", help="X,Y negative click (repeatable)")
    g.add_argument("--text", help="a referring phrase")
    g.add_argument("--audio", metavar="FILE", help="a spoken referring phrase (any audio file), used as --text")
    g.add_argument("--asr", default="pocketsphinx", help="speech recogniser for --audio (or whisper:PATH)")
    g.add_argument("--mask", help="a mask PNG of the frame's size (white = object)")
    g.add_argument("--frame", type=int, default=0, help="the prompted frame (default 0)")
    g.add_argument("--object-id", type=int, default=1, help="the object's id (default 1)")
    g.add_argument("--prompts", help="JSON objects [{object_id, frame, prompts: [...]}] (JSON lines with 'video' "
                                     "for bulk); prompts as the HTTP API takes them")
    o = p.add_argument_group("model and output")
    o.add_argument("--model", default="seem-tiny")
    o.add_argument("--weights", default="default", help="'default', 'random' or a checkpoint path / s3:// URI")
    o.add_argument("--png", action="store_true", help="also write DAVIS-style palette PNGs (png/NNNNN.png)")
    o.add_argument("--fps", type=float, help="frame rate of a folder of frames (default 24)")
    o.add_argument("--torch-threads", type=int, help="torch threads (default: torch's)")
    o.add_argument("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS)")
    o.add_argument("--address", help="bulk: address of a Ray cluster (default: start a local one)")
    o.add_argument("--actors", type=int, default=1, help="bulk: video actors (default 1)")
    o.add_argument("--progress", dest="progress", action="store_true", default=None, help="force the progress bar")
    o.add_argument("--no-progress", dest="progress", action="store_false")
    o.add_argument("--summary-json", help="also write the summary as JSON to this file")
    p.set_defaults(func=cmd_video)
