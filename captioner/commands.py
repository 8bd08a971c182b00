"""One function per CLI subcommand: turn parsed flags into library calls and print results."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from .config import ModelConfig, TrainConfig


def prepare(args) -> int:
    from .data.prepare import FeatureSpec, prepare as run_prepare

    progress = not args.no_progress
    min_count = args.min_count
    if args.source == "shapes":
        from .data.shapes import generate

        counts = {"train": args.train, "val": args.val, "test": args.test}
        records = generate(args.out, counts, args.seed, args.size, progress)
        min_count = 1 if min_count is None else min_count
    elif args.source == "karpathy":
        from .data.karpathy import read_karpathy

        records = read_karpathy(args.json, args.images)
    else:
        from .data.coco import read_coco

        split = args.split or next((s for s in ("train", "val", "test")
                                    if s in Path(args.annotations).name), "train")
        records = read_coco(args.annotations, args.images, split)
    spec = None
    if args.features:
        spec = FeatureSpec(args.features, args.grid, args.image_size, args.batch_size, args.workers)
    report = run_prepare(records, args.out, args.source, 5 if min_count is None else min_count,
                         args.max_len, spec, progress)
    for line in report.skipped[:20]:
        print(f"skipped {line}", file=sys.stderr)
    if len(report.skipped) > 20:
        print(f"... and {len(report.skipped) - 20} more skipped (see meta.json)", file=sys.stderr)
    print(f"prepared {args.out}: {report.summary()}")
    return 0


def model_config_from_args(args) -> tuple[ModelConfig, bool]:
    """The ModelConfig the flags describe, and whether --encoder was given."""
    config = ModelConfig(vocab_size=0, encoder=args.encoder or "tiny", attention=args.attention,
                         fine_tune_blocks=args.fine_tune, embed_dim=args.embed_dim,
                         hidden_dim=args.hidden_dim, attention_dim=args.attention_dim,
                         dropout=args.dropout, alpha_c=args.alpha_c,
                         hard_inference=args.hard_inference, hard_entropy=args.hard_entropy,
                         hard_reward_scale=args.hard_reward_scale, gate=not args.no_gate,
                         deep_output=args.deep_output)
    if args.grid:
        config = replace(config, grid_size=args.grid)
    return config, args.encoder is not None


def train(args) -> int:
    from .train import train as run_train

    if not args.resume and not args.data:
        raise ValueError("--data is required (a folder written by `captioner prepare`)")
    model_config, encoder_given = model_config_from_args(args)
    data = args.data
    if args.resume and not data:
        from .checkpoint import load_checkpoint

        data = load_checkpoint(Path(args.out) / "last.safetensors").train["train_config"]["data"]
    names = {f for f in TrainConfig.__dataclass_fields__} - {"data", "out", "progress"}
    train_config = TrainConfig(data=data, out=args.out, progress=not args.no_progress,
                               **{k: getattr(args, k) for k in names})
    result = run_train(model_config, train_config, args.resume, encoder_given)
    if result.rank == 0:
        print(f"trained {result.step} steps ({result.epoch} epochs, stopped by {result.stopped}); "
              f"best val {result.select_by} {result.best_score:.4f}; "
              f"checkpoints in {result.run_dir}")
    return 0


def evaluate(args) -> int:
    from .data.prepared import PreparedData
    from .evaluate import evaluate_checkpoint
    from .inference import Captioner

    cap = Captioner.load(args.model)
    metrics = evaluate_checkpoint(cap.model, cap.vocab, PreparedData(args.data), args.split,
                                  args.beam_size, args.results, args.metrics, args.length_penalty,
                                  args.max_images, meteor=not args.no_meteor)
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"{k:<{width}}  {v:.4f}" if v != int(v) else f"{k:<{width}}  {int(v)}")
    return 0


def caption(args) -> int:
    from .data.images import ImageError
    from .inference import Captioner

    cap = Captioner.load(args.model)
    failed = 0
    for path in args.images:  # one at a time, so a bad file never stops the others
        try:
            results = cap.caption(path, beam_size=args.beam_size, n_best=args.n_best,
                                  length_penalty=args.length_penalty)
        except ImageError as exc:
            print(f"captioner caption: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps({"image": path, "captions": [
                {"caption": c.text, "score": round(c.score, 4)} for c in results]}))
        else:
            for c in results:
                print(f"{path}\t{c.text}" + (f"\t{c.score:.3f}" if args.n_best > 1 else ""))
    return 1 if failed else 0


def attend(args) -> int:
    from .inference import Captioner
    from .visualize import caption_figure

    cap = Captioner.load(args.model)
    best = caption_figure(cap, args.image, args.out, beam_size=args.beam_size,
                          length_penalty=args.length_penalty)
    print(f"{args.out}: {best.text}")
    return 0


def demo(args) -> int:
    from .demo import run_demo

    run_demo(home=args.home, minutes=args.minutes, attention=args.attention, fresh=args.fresh)
    return 0
