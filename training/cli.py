"""`seem train` and `seem eval` (heavy imports stay inside the commands)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_train(subparsers)
    _register_eval(subparsers)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    t = subparsers.add_parser(
        "train", help="train SEEM on Ray Train (Shapes World or a COCO dataset)",
        description="Trains (or fine-tunes) SEEM with the seeds' losses on Ray Train. A run with the same "
                    "--name and --storage resumes from its last checkpoint.")
    t.add_argument("--model", default="seem-tiny", help="registered model name or config file")
    t.add_argument("--init-weights", default=None, help="start from these weights (fine-tuning)")
    t.add_argument("--dataset", default="shapes-world", help="'shapes-world' or a COCO annotations JSON")
    t.add_argument("--images", default=None, help="COCO image folder (default: beside the JSON)")
    # Left out, these take TrainConfig's defaults (imported only when training runs).
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--warmup-steps", type=int, help="linear learning-rate warm-up (steps)")
    t.add_argument("--max-rounds", type=int, help="interactive rounds simulated per step (0..N)")
    t.add_argument("--lookalike-fraction", type=float,
                   help="Shapes World: share of scenes drawn with two things of the same shape and colour, "
                        "prompted on those things (teaches a click to pick the thing under it)")
    t.add_argument("--checkpoint-every", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--loss-weights", default=None, help="JSON of loss weights to override, e.g. '{\"grounding_class\": 2}'")
    t.add_argument("--storage", default="runs", help="checkpoint location: a folder or s3://bucket/prefix")
    t.add_argument("--name", default="seem-tiny", help="run name (same name + storage resumes)")
    t.add_argument("--workers", type=int, default=1)
    t.add_argument("--gpu", action="store_true", help="one GPU per worker")
    t.add_argument("--cpus-per-worker", type=float, default=1.0)
    t.add_argument("--max-failures", type=int,
                   help="restarts from the last checkpoint after a worker dies (default: run_training's, 3)")
    t.add_argument("--endpoint-url", default=None, help="S3 endpoint for --storage (default: AWS environment)")
    t.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    t.add_argument("--export", default=None, help="write the final weights (safetensors) here")
    t.set_defaults(func=_train)


def _register_eval(subparsers: argparse._SubParsersAction) -> None:
    e = subparsers.add_parser(
        "eval", help="the paper's metrics on held-out Shapes World scenes",
        description="PQ/mIoU, referring cIoU/mIoU, NoC85/NoC90, 1-IoU per prompt type, text vs text+click.")
    e.add_argument("--model", default="seem-tiny")
    e.add_argument("--weights", default="default", help="checkpoint (default: the model's shipped weights)")
    e.add_argument("--seed", type=int, default=12345, help="first scene of the split (an offset into its seed range)")
    e.add_argument("--images", type=int, default=200)
    e.add_argument("--split", choices=("test", "val"), default="test",
                   help="held-out scenes to use: test (the reported table) or val (for tuning)")
    e.add_argument("--panoptic-thresholds", default=None,
                   help="comma-separated object_mask_threshold values: report PQ at each instead of the table")
    e.add_argument("--inference", default=None,
                   help="JSON of inference settings to override, e.g. '{\"drop_negated_pieces\": false}' "
                        "(the network's masks without seem-tiny's negative-prompt rule)")
    e.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    v = e.add_argument_group("video (--video)")
    v.add_argument("--video", action="store_true",
                   help="DAVIS J, F, J&F and identity switches on held-out Moving Shapes World sequences, "
                        "the authors' per-frame method against ours (docs/video.md)")
    v.add_argument("--sequences", type=int, default=20, help="sequences (one kind of --kinds each in turn)")
    v.add_argument("--kinds", default="motion,scale,occlusion,crossing,exit",
                   help="sequence kinds, each in turn (e.g. 'crossing': identity on crossings only; "
                        "'crossing_in_view': the look-alike already in view on frame 0)")
    v.add_argument("--start", type=int, default=0, help="first sequence of the split (an offset into its seeds)")
    v.add_argument("--frames", type=int, default=16, help="frames per sequence")
    v.add_argument("--prompt-kinds", default="box,click,text", help="frame-0 prompts to score: box, click, text")
    v.add_argument("--methods", default="per_frame,track", help="per_frame (the authors'), track (ours)")
    e.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .losses import LossWeights
    from .train import TrainConfig, run_training

    loss = LossWeights(**json.loads(args.loss_weights)) if args.loss_weights else LossWeights()
    given = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "warmup_steps", "max_rounds", "seed",
                                            "checkpoint_every", "lookalike_fraction")}
    cfg = TrainConfig(model=args.model, init_weights=args.init_weights, dataset=args.dataset, images=args.images,
                      loss=loss, **{k: v for k, v in given.items() if v is not None})
    extra = {} if args.max_failures is None else {"max_failures": args.max_failures}
    result = run_training(cfg, storage_path=args.storage, name=args.name, num_workers=args.workers,
                          use_gpu=args.gpu, cpus_per_worker=args.cpus_per_worker,
                          endpoint_url=args.endpoint_url, address=args.address, **extra)
    if result.error:
        print(f"training failed: {result.error}", file=sys.stderr)
        return 1
    print(f"final metrics: {json.dumps(result.metrics)}")
    if result.checkpoint is not None:
        print(f"last checkpoint: {result.checkpoint.path}")
        if args.export:
            with result.checkpoint.as_directory() as d:
                Path(args.export).write_bytes((Path(d) / "model.safetensors").read_bytes())
            print(f"weights written to {args.export}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from model.predictor import SeemPredictor

    from .evaluate import evaluate, format_table, panoptic_threshold_sweep

    weights = None if args.weights in ("none", "random") else args.weights
    predictor = SeemPredictor.from_pretrained(args.model, weights=weights)
    if args.inference:
        try:
            changes = json.loads(args.inference)
            inference = dataclasses.replace(predictor.cfg.inference, **changes)
        except (ValueError, TypeError) as e:  # bad JSON, an unknown key or a refused value
            print(f"--inference: {e}", file=sys.stderr)
            return 2
        predictor.cfg = predictor.cfg.replace(inference=inference)
    if args.video:
        return _eval_video(args, predictor)
    if args.panoptic_thresholds:
        try:
            thresholds = [float(t) for t in args.panoptic_thresholds.split(",")]
        except ValueError:
            print(f"--panoptic-thresholds: expected numbers separated by commas, got {args.panoptic_thresholds!r}",
                  file=sys.stderr)
            return 2
        sweep = panoptic_threshold_sweep(predictor, thresholds, split=args.split, seed=args.seed, images=args.images)
        for t, r in sweep.items():
            print(f"threshold {t:<6g} PQ {100 * r['pq']:.1f}   SQ {100 * r['sq']:.1f}   RQ {100 * r['rq']:.1f}")
        if args.json:
            print(json.dumps({str(t): r for t, r in sweep.items()}))
        return 0
    result = evaluate(predictor, seed=args.seed, images=args.images, split=args.split)
    print(format_table(result))
    if args.json:
        print(json.dumps(result))
    return 0


def _eval_video(args: argparse.Namespace, predictor) -> int:  # noqa: ANN001 - a SeemPredictor
    from .moving_shapes import ALL_KINDS
    from .video_eval import METHODS, PROMPT_KINDS, evaluate_video, format_video_table

    kinds = [k.strip() for k in args.prompt_kinds.split(",") if k.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seq_kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in PROMPT_KINDS] + [m for m in methods if m not in METHODS] + \
        [k for k in seq_kinds if k not in ALL_KINDS]
    if bad or not kinds or not methods or not seq_kinds or args.sequences < 1 or args.frames < 2:
        print(f"--video: unknown or missing prompt kinds / methods / sequence kinds {bad or ''} (prompt kinds: "
              f"{', '.join(PROMPT_KINDS)}; methods: {', '.join(METHODS)}; sequence kinds: {', '.join(ALL_KINDS)}; "
              "at least 1 sequence of 2 frames)", file=sys.stderr)
        return 2
    result = evaluate_video(predictor, sequences=args.sequences, split=args.split, start=args.start,
                            frames=args.frames, prompt_kinds=kinds, methods=methods, kinds=seq_kinds)
    print(format_video_table(result))
    if args.json:
        print(json.dumps(result))
    return 0
