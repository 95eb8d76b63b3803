"""What labelling prompted masks by object-query match costs, and what it buys (seem-tiny).

`InferenceConfig.prompted_mask_labels="object_match"` (seem-tiny's setting) runs the object
queries in a prompt's decoder pass so a clicked or grounded mask can take the label of the
object query that segments the same object; "query" (the reference's) labels it with its own
query's class head. In one process, on held-out Shapes World scenes with the shipped
weights, this prints for both settings: the median decode time of a click and of a phrase
on cached features, and how often a click's label names the clicked thing's shape.

    .venv/bin/python bench/prompted_labels.py [--scenes 12] [--repeats 50] [--threads 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import Prompts, SeemPredictor  # noqa: E402
from tests.support import median_ms  # noqa: E402
from training.prompt_sampling import sample_point  # noqa: E402
from training.shapes_world import default_vocabulary, generate_scene, split_seeds  # noqa: E402

MODES = ("query", "object_match")


def set_mode(predictor: SeemPredictor, mode: str) -> None:
    predictor.cfg = predictor.cfg.replace(inference=dataclasses.replace(predictor.cfg.inference,
                                                                        prompted_mask_labels=mode))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=12, help="held-out scenes for the label accuracy")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a decoder replica uses 1)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = SeemPredictor.from_pretrained("seem-tiny")
    vocab = default_vocabulary()
    scenes = [generate_scene(seed) for seed in split_seeds("test", args.scenes)]
    features = predictor.encode([s.image for s in scenes])
    thing = max(scenes[0].things, key=lambda t: t.area)
    click = Prompts(spatial=(sample_point(scenes[0].mask(thing.id), np.random.default_rng(0)),))
    phrase = Prompts(text=scenes[0].phrases_for(thing.id)[0])
    results = {}
    for mode in MODES:
        set_mode(predictor, mode)
        row = {"click_ms": median_ms(lambda: predictor.decode(features[0], click, vocabulary=vocab), args.repeats, 5),
               "phrase_ms": median_ms(lambda: predictor.decode(features[0], phrase, vocabulary=vocab), args.repeats, 5)}
        rng = np.random.default_rng(0)
        right = total = 0
        for scene, f in zip(scenes, features):
            for t in scene.things:
                prompt = Prompts(spatial=(sample_point(scene.mask(t.id), rng),))
                right += predictor.decode(f, prompt, vocabulary=vocab).masks[0].label == t.category
                total += 1
        row.update(click_labels_right=right, things=total)
        results[mode] = row
    print(f"seem-tiny, {args.threads} torch thread(s), medians of {args.repeats} decodes on cached features")
    print("| prompted_mask_labels | click ms | phrase ms | click labels right |")
    print("|---|---:|---:|---:|")
    for mode, r in results.items():
        print(f"| {mode} | {r['click_ms']:.1f} | {r['phrase_ms']:.1f} | {r['click_labels_right']}/{r['things']} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2))


if __name__ == "__main__":
    main()
