"""Command line: parse, build configs, call the library, print. No model logic here."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from . import __version__
from .argtypes import (existing_dir, existing_file, float_range, int_range, output_dir,
                       output_file)
from .config import (BATCH_BY, DEEP_OUTPUTS, SELECT_METRICS, ModelConfig, ServeOptions,
                     TrainConfig)
from .decoding import MAX_BEAM, MAX_CAPTION_WORDS


def _add_prepare(sub) -> None:
    """``prepare <format>``: one subcommand per registered dataset format (``data.readers``),
    each with the format's own flags and the ones every format shares."""
    from .data.readers import readers
    from .models.encoder import ENCODERS

    p = sub.add_parser("prepare", help="turn a dataset into a prepared folder (vocabulary, "
                       "manifests, optional encoder features)")
    kinds = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for reader in readers():
        k = kinds.add_parser(reader.name, help=reader.help)
        reader.add_arguments(k)
        k.add_argument("--out", required=True, type=output_dir,
                       help="prepared folder to write (must be empty or new)")
        k.add_argument("--overwrite", action="store_true",
                       help="replace what an existing --out holds")
        k.add_argument("--min-count", type=int_range(1), default=reader.min_count,
                       help="keep words seen this often in train (default: %(default)s)")
        k.add_argument("--max-len", type=int_range(1, MAX_CAPTION_WORDS), default=20,
                       help="longest caption in words (default: %(default)s)")
        k.add_argument("--features", metavar="ENCODER", default=None, choices=sorted(ENCODERS),
                       help="also compute frozen-encoder features once into a float16 memmap "
                       f"({', '.join(sorted(ENCODERS))})")
        k.add_argument("--grid", type=int_range(1, 64), default=None,
                       help="feature grid side (default: the encoder's native grid)")
        k.add_argument("--image-size", type=int_range(16, 4096), default=None,
                       help="encoder input side (default: the encoder's own)")
        k.add_argument("--batch-size", type=int_range(1), default=32,
                       help="images per encoder batch (default: %(default)s)")
        k.add_argument("--workers", type=int_range(0, 64), default=2,
                       help="image loading processes (default: %(default)s)")
        k.add_argument("--no-progress", action="store_true", help="no progress bar")
        _add_engine_args(k)


def _add_engine_args(p) -> None:
    """--engine and the Ray engine's flags (captioner/engines), for `caption` and `prepare`."""
    from .engines import ENGINES

    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: this process and its --workers; ray: Ray Data, the model in a "
                   "pool of actors, on a local Ray instance or --address's cluster (needs "
                   "pip install -e \".[ray]\") (default: %(default)s)")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="with --engine ray: the cluster's head (HOST:PORT, ray://HOST:PORT or "
                   "auto; default: start a local Ray instance on this machine)")
    g.add_argument("--num-workers", type=int_range(1, 100_000), default=None, metavar="N",
                   help="with --engine ray: model actors (default: one per CPU, or per GPU "
                   "with --worker-gpus, of the instance)")
    g.add_argument("--worker-gpus", type=float_range(0, 64), default=0.0, metavar="G",
                   help="with --engine ray: GPUs each actor reserves (default: 0, CPU only)")


def _add_model_args(p) -> None:
    from .models.attention import ATTENTIONS
    from .models.encoder import ENCODERS

    g = p.add_argument_group("model")
    g.add_argument("--encoder", default=None, choices=sorted(ENCODERS), metavar="NAME",
                   help=f"{', '.join(sorted(ENCODERS))} (default: the data's features, else tiny)")
    g.add_argument("--attention", default=ModelConfig.attention, choices=sorted(ATTENTIONS),
                   help="attention kind (default: %(default)s)")
    g.add_argument("--grid", type=int_range(1, 64), default=None, metavar="N",
                   help="feature grid side, N x N locations (default: the encoder's)")
    g.add_argument("--fine-tune", type=int_range(-1), default=None, metavar="N",
                   help="train the encoder's last N blocks (-1: all; default: tiny all, "
                   "pretrained none)")
    for name, what in (("embed_dim", "word embedding size m"), ("hidden_dim", "LSTM size n"),
                       ("attention_dim", "attention MLP size")):
        g.add_argument("--" + name.replace("_", "-"), type=int_range(1, 65536),
                       default=getattr(ModelConfig, name), help=f"{what} (default: %(default)s)")
    g.add_argument("--dropout", type=float_range(0, 1, max_exclusive=True),
                   default=ModelConfig.dropout, help="before the output layer (default: "
                   "%(default)s)")
    g.add_argument("--alpha-c", type=float_range(0), default=ModelConfig.alpha_c,
                   help="lambda of the doubly stochastic term, eq. 14 (default: %(default)s)")
    g.add_argument("--no-gate", action="store_true", help="drop the beta gate (4.2.1)")
    g.add_argument("--deep-output", choices=DEEP_OUTPUTS, default=ModelConfig.deep_output,
                   help="eq. 7 as printed (linear) or with the tanh of the authors' code "
                   "(default: %(default)s)")
    for kind, cls in sorted(ATTENTIONS.items()):  # each kind's own options: --KIND-OPTION
        for f in fields(cls.Options):
            g.add_argument(f"--{kind}-{f.name.replace('_', '-')}", dest=f"{kind}_{f.name}",
                           type=type(f.default), default=f.default,
                           choices=f.metadata.get("choices"),
                           help=f"{kind} attention: {f.metadata.get('help', f.name)} "
                           "(default: %(default)s)")


def _add_train(sub) -> None:
    from .objectives import OBJECTIVES

    p = sub.add_parser("train", help="train a captioner on a prepared folder")
    p.add_argument("--data", type=existing_dir, help="prepared folder (`captioner prepare`)")
    p.add_argument("--out", required=True, type=output_dir,
                   help="run folder (checkpoints, metrics.jsonl); one run per folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly (a larger --epochs/--max-steps "
                   "extends a finished one)")
    _add_model_args(p)
    g = p.add_argument_group("training")
    t = TrainConfig
    g.add_argument("--init", type=existing_file, default=None, metavar="CKPT",
                   help="start from this checkpoint's model with a fresh optimizer")
    g.add_argument("--objective", choices=sorted(OBJECTIVES), default=t.objective,
                   help="likelihood (xe) or self-critical CIDEr-D (scst) (default: %(default)s)")
    g.add_argument("--epochs", type=int_range(1), default=t.epochs, help="(default: %(default)s)")
    g.add_argument("--max-steps", type=int_range(0), default=t.max_steps,
                   help="stop after this many steps (default 0: no limit)")
    g.add_argument("--max-minutes", type=float_range(0), default=t.max_minutes,
                   help="stop after this much wall time (default 0: no limit)")
    g.add_argument("--batch-size", type=int_range(1), default=t.batch_size,
                   help="images (or captions, --batch-by caption) per step (default: %(default)s)")
    g.add_argument("--batch-by", choices=BATCH_BY, default=t.batch_by,
                   help="a batch is images with all their captions, or (image, caption) pairs "
                   "(default: %(default)s)")
    g.add_argument("--lr", type=float_range(0, min_exclusive=True), default=t.lr,
                   help="Adam learning rate (default: %(default)s)")
    g.add_argument("--encoder-lr", type=float_range(0, min_exclusive=True), default=None,
                   help="for the encoder blocks trained (default: --lr)")
    g.add_argument("--weight-decay", type=float_range(0), default=t.weight_decay,
                   help="on weight matrices only (default: %(default)s)")
    g.add_argument("--grad-clip", type=float_range(0), default=t.grad_clip,
                   help="gradient norm clip, 0: none (default: %(default)s)")
    g.add_argument("--label-smoothing", type=float_range(0, 1, max_exclusive=True),
                   default=t.label_smoothing, help="(default: %(default)s)")
    g.add_argument("--scst-samples", type=int_range(2, 100), default=t.scst_samples,
                   help="captions drawn per image by scst (default: %(default)s)")
    g.add_argument("--scst-choices", action="store_true",
                   help="--objective scst rewards the attention's own draws too (hard "
                   "attention samples its locations and REINFORCE trains them with the words; "
                   "default: the words only, hard attention reading its expected context)")
    g.add_argument("--select-by", choices=SELECT_METRICS, default=t.select_by,
                   help="val score that keeps best.safetensors, decays the lr and stops early "
                   "(default: %(default)s)")
    g.add_argument("--lr-decay", type=float_range(0, 1, min_exclusive=True, max_exclusive=True),
                   default=t.lr_decay,
                   help="lr factor when the val score does not improve (default: %(default)s)")
    g.add_argument("--lr-patience", type=int_range(0), default=t.lr_patience,
                   help="epochs without improvement before decaying (default: %(default)s)")
    g.add_argument("--early-stop", type=int_range(1), default=t.early_stop,
                   help="stop after this many epochs without improvement (default: %(default)s)")
    g.add_argument("--val-beam-size", type=int_range(1, MAX_BEAM), default=t.val_beam_size,
                   help="beam size of validation decoding (default: %(default)s)")
    g.add_argument("--val-max-images", type=int_range(0), default=t.val_max_images,
                   help="validate on this many val images (default 0: all)")
    g.add_argument("--save-every", type=int_range(0), default=t.save_every,
                   help="steps between last.safetensors saves, 0: epochs only (default: "
                   "%(default)s)")
    g.add_argument("--keep-epochs", action="store_true",
                   help="also keep each epoch's weights as epochN.safetensors (for `captioner "
                   "average` or an ensemble of epochs)")
    g.add_argument("--seed", type=int_range(0), default=t.seed, help="(default: %(default)s)")
    g.add_argument("--num-workers", type=int_range(0, 64), default=t.num_workers,
                   help="data loading processes (default: %(default)s)")
    g.add_argument("--logdir", default=t.logdir, help="TensorBoard folder (default: none)")
    g.add_argument("--amp", action="store_true", help="bfloat16 mixed precision on CUDA")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_model_arg(p) -> None:
    p.add_argument("--model", nargs="+", action="extend", default=None, metavar="CKPT",
                   help="checkpoint, or several .safetensors files: an ensemble that decodes "
                   "with the average of their word log-probabilities (default: the demo model)")


def _images_after_models(args, parser: argparse.ArgumentParser) -> None:
    """``caption --model A.safetensors B.safetensors photo.jpg``: --model takes checkpoints
    (``.safetensors`` files) and the first value after them that is not one begins the
    command's images, so ``--model CKPT IMAGE`` reads as it always did."""
    models = args.model or []
    n = next((i for i, m in enumerate(models) if i and not m.endswith(".safetensors")),
             len(models))
    if args.command == "caption":
        args.images = models[n:] + args.images
        missing = not args.images
    else:  # attend: one image
        extra = models[n:] + ([args.image] if args.image else [])
        if len(extra) > 1:
            parser.error(f"attend takes one IMAGE, got {len(extra)}: {' '.join(extra)}")
        args.image = extra[0] if extra else None
        missing = args.image is None
    if missing:
        parser.error(f"{args.command}: the following arguments are required: IMAGE")
    args.model = models[:n] or None


def _add_decode_args(p, n_best: bool = True) -> None:
    """The flags of one ``DecodeOptions``; ``decode_options(args)`` builds it."""
    from .decoding import DecodeOptions, strategy_names

    _add_model_arg(p)
    g = p.add_argument_group("decoding")
    g.add_argument("--strategy", choices=strategy_names(), default=DecodeOptions.strategy,
                   help="how captions are decoded (default: %(default)s)")
    g.add_argument("--beam-size", type=int_range(1, MAX_BEAM), default=DecodeOptions.beam_size,
                   metavar="K",
                   help=f"beams per image, 1 to {MAX_BEAM} (default: %(default)s)")
    if n_best:
        g.add_argument("--n-best", type=int_range(1, MAX_BEAM), default=DecodeOptions.n_best,
                       metavar="N",
                       help="captions per image, at most --beam-size (default: %(default)s)")
    g.add_argument("--length-penalty", type=float_range(0), default=DecodeOptions.length_penalty,
                   help="rank by log p / length ** this (default %(default)s: plain "
                   "log-probability)")


def _add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="BLEU-1..4 and COCO metrics of a checkpoint on a split")
    _add_decode_args(ev, n_best=False)
    ev.add_argument("--data", required=True, type=existing_dir, help="prepared folder")
    ev.add_argument("--split", default="test", help="split to score (default: %(default)s)")
    ev.add_argument("--results", default=None, type=output_file((".json",)),
                    help="COCO results JSON to write")
    ev.add_argument("--metrics", default=None, type=output_file((".json",)),
                    help="metrics JSON to write")
    ev.add_argument("--max-images", type=int_range(0), default=0,
                    help="score only the first N images (default 0: all)")
    ev.add_argument("--no-meteor", action="store_true", help="skip METEOR (slow; needs Java)")


def _add_caption(sub) -> None:
    cap = sub.add_parser("caption", help="caption image files and folders, one line each")
    _add_decode_args(cap)
    cap.add_argument("images", nargs="*", metavar="IMAGE", help="image files, or folders "
                     "searched recursively for image files")
    cap.add_argument("--json", action="store_true", help="one JSON object per image")
    cap.add_argument("--output", default=None, metavar="JSONL", type=output_file(),
                     help="append one JSON line per image to this file; images already in it "
                     "are skipped (a killed run resumes)")
    cap.add_argument("--batch-size", type=int_range(1, 1024), default=16,
                     help="images per model batch (default: %(default)s)")
    cap.add_argument("--workers", type=int_range(0, 64), default=2,
                     help="image decoding processes (default: %(default)s)")
    cap.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_engine_args(cap)


def _add_serve(sub) -> None:
    srv = sub.add_parser("serve", help="the HTTP API and the attention web page")
    o = ServeOptions()
    _add_model_arg(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default: "
                     "%(default)s, this machine only)")
    srv.add_argument("--port", type=int_range(0, 65535), default=8000,
                     help="port to listen on, 0: any free one (default: %(default)s)")
    srv.add_argument("--max-upload-mb", type=float_range(0, 1024, min_exclusive=True),
                     default=o.max_upload_mb, help="largest image upload (default: %(default)s)")
    srv.add_argument("--max-batch", type=int_range(1, 256), default=o.max_batch,
                     help="most images captioned in one batch (default: %(default)s)")
    srv.add_argument("--max-wait-ms", type=float_range(0, 10_000), default=o.max_wait_ms,
                     help="how long a batch waits for more requests (default: %(default)s)")


def _add_attend(sub) -> None:
    from .visualize import FIGURE_FORMATS

    att = sub.add_parser("attend", help="write the attention figure of an image's caption")
    _add_decode_args(att, n_best=False)
    att.add_argument("image", nargs="?", metavar="IMAGE")
    att.add_argument("-o", "--out", required=True, type=output_file(FIGURE_FORMATS),
                     help=f"figure to write, its format from the suffix "
                     f"({', '.join(FIGURE_FORMATS)})")


def _add_average(sub) -> None:
    avg = sub.add_parser("average", help="one model whose weights are the mean of several "
                         "checkpoints of one configuration (e.g. a run's last epochs)")
    avg.add_argument("checkpoints", nargs="*", metavar="CKPT", type=existing_file,
                     help="two or more checkpoints with the same config and vocabulary")
    avg.add_argument("--run", type=existing_dir, default=None,
                     help="instead of CKPTs: this run's best epoch and the epochs before it "
                     "(see --up-to-best; the run was trained with --keep-epochs)")
    avg.add_argument("--up-to-best", type=int_range(2, 1000), default=3, metavar="K",
                     help="with --run: how many epochs, ending at the best (default: 3)")
    avg.add_argument("--past-best", type=int_range(0, 1000), default=0, metavar="N",
                     help="with --run: end the epochs N after the best instead (default: 0)")
    avg.add_argument("-o", "--out", required=True, type=output_file((".safetensors",)),
                     help="checkpoint to write (not one of the inputs)")


def _add_demo(sub) -> None:
    from .models.attention import ATTENTIONS

    demo = sub.add_parser("demo", help="the whole pipeline on the built-in shapes data: "
                          "prepare, train (~5 min on CPU), evaluate, caption, attention figures")
    demo.add_argument("--home", default=None, help="where to work (default $CAPTIONER_HOME or "
                      "~/.cache/captioner)")
    demo.add_argument("--minutes", type=float_range(0, min_exclusive=True), default=5.0,
                      help="training time budget (default: %(default)s)")
    demo.add_argument("--attention", default="soft", choices=sorted(ATTENTIONS),
                      help="attention kind (default: %(default)s)")
    demo.add_argument("--fresh", action="store_true", help="retrain even if a demo model exists")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: one subcommand per job, each added by its ``_add_*``."""
    parser = argparse.ArgumentParser(prog="captioner", allow_abbrev=False,
                                     description="Show, Attend and Tell image captioning: prepare "
                                     "data, train, evaluate, caption, attend, serve, average.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_prepare, _add_train, _add_evaluate, _add_caption, _add_serve, _add_attend,
                _add_average, _add_demo):
        add(sub)
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Refuse abbreviated flags in every (sub)command: a flag is written out or unknown."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


def given_flags(argv: list[str]) -> set[str]:
    """The option flags written on the command line (as argparse dests: ``--max-steps`` ->
    ``max_steps``), so that a value left at its default can be told from one given."""
    return {arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv
            if arg.startswith("--") and len(arg) > 2}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("caption", "attend"):
        _images_after_models(args, parser)
    args.given = given_flags(argv) & set(vars(args))
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
