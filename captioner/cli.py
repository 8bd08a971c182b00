"""Command line: parse, build configs, call the library, print. No model logic here."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from .config import DEEP_OUTPUTS, ModelConfig, TrainConfig

DEFAULT_SHAPES = {"train": 3000, "val": 250, "test": 250}


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="turn a dataset into a prepared folder (vocabulary, "
                       "manifests, optional encoder features)")
    kinds = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    shapes = kinds.add_parser("shapes", help="generate the built-in synthetic shapes dataset")
    shapes.add_argument("--train", type=int, default=DEFAULT_SHAPES["train"], help="train images")
    shapes.add_argument("--val", type=int, default=DEFAULT_SHAPES["val"], help="val images")
    shapes.add_argument("--test", type=int, default=DEFAULT_SHAPES["test"], help="test images")
    shapes.add_argument("--size", type=int, default=64, help="image side in pixels")
    shapes.add_argument("--seed", type=int, default=0)
    karpathy = kinds.add_parser("karpathy", help="a Karpathy split JSON (dataset_coco.json, "
                                "dataset_flickr8k.json, ...) and its image folder")
    karpathy.add_argument("--json", required=True, help="the split JSON file")
    karpathy.add_argument("--images", required=True, help="folder the JSON's filepath/filename "
                          "are relative to")
    coco = kinds.add_parser("coco", help="raw COCO caption annotations (captions_*.json)")
    coco.add_argument("--annotations", required=True, help="captions_train2014.json or similar")
    coco.add_argument("--images", required=True, help="folder with the images it names")
    coco.add_argument("--split", default=None, choices=["train", "val", "test"],
                      help="split to file it under (default: from the file name, else train)")
    for k in (shapes, karpathy, coco):
        k.add_argument("--out", required=True, help="prepared folder to write")
        k.add_argument("--min-count", type=int, default=None,
                       help="keep words seen this often in train (default 5; shapes 1)")
        k.add_argument("--max-len", type=int, default=20, help="longest caption in words")
        k.add_argument("--features", metavar="ENCODER", default=None,
                       help="also compute frozen-encoder features once into a float16 memmap")
        k.add_argument("--grid", type=int, default=None, help="feature grid side (default: the "
                       "encoder's native grid)")
        k.add_argument("--image-size", type=int, default=None,
                       help="encoder input side (default: the encoder's own)")
        k.add_argument("--batch-size", type=int, default=32, help="images per encoder batch")
        k.add_argument("--workers", type=int, default=2, help="image loading processes")
        k.add_argument("--no-progress", action="store_true")


def _add_model_args(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--encoder", default=None, help="tiny, resnet50/101/152, vgg16, "
                   "efficientnet_lite0(_s16), efficientnet_lite1, efficientnet_lite2 (default: the "
                   "data's features, else tiny)")
    g.add_argument("--attention", default="soft", help="soft or hard")
    g.add_argument("--grid", type=int, default=None, help="feature grid side")
    g.add_argument("--fine-tune", type=int, default=None, metavar="N",
                   help="train the encoder's last N blocks (-1: all)")
    for name in ("embed_dim", "hidden_dim", "attention_dim", "dropout", "alpha_c",
                 "hard_inference", "hard_entropy", "hard_reward_scale"):
        default = next(f.default for f in fields(ModelConfig) if f.name == name)
        g.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    g.add_argument("--no-gate", action="store_true", help="drop the beta gate (4.2.1)")
    g.add_argument("--deep-output", choices=DEEP_OUTPUTS, default=ModelConfig.deep_output,
                   help="eq. 7 as printed (linear) or with the tanh of the authors' code")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a captioner on a prepared folder")
    p.add_argument("--data", help="prepared folder")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    _add_model_args(p)
    g = p.add_argument_group("training")
    for f in fields(TrainConfig):
        if f.name in ("data", "out", "progress", "amp"):
            continue
        kind = float if f.name == "encoder_lr" else type(f.default)
        g.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default)
    g.add_argument("--amp", action="store_true", help="bfloat16 mixed precision on CUDA")
    g.add_argument("--no-progress", action="store_true")


def _add_decode_args(p) -> None:
    p.add_argument("--model", default=None, help="checkpoint (default: the demo model)")
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--length-penalty", type=float, default=0.0,
                   help="rank by log p / length ** this (0: plain log-probability)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner", description="Show, Attend and Tell image "
                                     "captioning: prepare data, train, evaluate, caption, attend.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_prepare(sub)
    _add_train(sub)
    ev = sub.add_parser("evaluate", help="BLEU-1..4 and COCO metrics of a checkpoint on a split")
    _add_decode_args(ev)
    ev.add_argument("--data", required=True, help="prepared folder")
    ev.add_argument("--split", default="test")
    ev.add_argument("--results", default=None, help="COCO results JSON to write")
    ev.add_argument("--metrics", default=None, help="metrics JSON to write")
    ev.add_argument("--max-images", type=int, default=0)
    ev.add_argument("--no-meteor", action="store_true", help="skip METEOR (slow; needs Java)")
    cap = sub.add_parser("caption", help="caption image files, one line each")
    _add_decode_args(cap)
    cap.add_argument("images", nargs="+", metavar="IMAGE")
    cap.add_argument("--n-best", type=int, default=1)
    cap.add_argument("--json", action="store_true", help="one JSON object per image")
    att = sub.add_parser("attend", help="write the attention figure of an image's caption")
    _add_decode_args(att)
    att.add_argument("image", metavar="IMAGE")
    att.add_argument("-o", "--out", required=True, help="PNG to write")
    demo = sub.add_parser("demo", help="the whole pipeline on the built-in shapes data: "
                          "prepare, train (~5 min on CPU), evaluate, caption, attention figures")
    demo.add_argument("--home", default=None, help="where to work (default $CAPTIONER_HOME or "
                      "~/.cache/captioner)")
    demo.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    demo.add_argument("--attention", default="soft")
    demo.add_argument("--fresh", action="store_true", help="retrain even if a demo model exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import commands
    from .errors import UserError

    try:
        return getattr(commands, args.command)(args) or 0
    except (ValueError, FileNotFoundError, UserError) as exc:
        # every user-facing error is one line naming the file or flag
        print(f"captioner {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
