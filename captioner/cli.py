"""Command line: parse, build configs, call the library, print. No model logic here.

The flags of every declared setting (``ModelConfig``, each attention kind's ``Options``,
``TrainConfig``, ``DecodeOptions``, ``FeatureSpec``, ``ServeOptions``) are generated from the
field declarations (``flags.add_flags``), with their bounds, choices, help and defaults; flags
not given stay out of the parsed namespace, so a command knows exactly what was written.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .argtypes import existing_dir, existing_file, float_range, int_range, output_dir, output_file
from .config import MAX_CAPTION_WORDS, ModelConfig, ServeOptions, TrainConfig
from .fields import FieldError
from .flags import add_flags
from .registry import ATTENTIONS, READERS


def _add_prepare(sub) -> None:
    """``prepare <format>``: one subcommand per registered dataset format, each with the
    format's own flags and the ones every format shares."""
    from .data.prepare import FeatureSpec

    p = sub.add_parser("prepare", help="turn a dataset into a prepared folder (vocabulary, "
                       "manifests, optional encoder features)")
    kinds = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name, reader in READERS.items():
        k = kinds.add_parser(name, help=reader.help)
        reader.add_arguments(k)
        k.add_argument("--out", required=True, type=output_dir,
                       help="prepared folder to write (must be empty or new)")
        k.add_argument("--overwrite", action="store_true",
                       help="replace what an existing --out holds")
        k.add_argument("--min-count", type=int_range(1), default=reader.min_count,
                       help="keep words seen this often in train (default: %(default)s)")
        k.add_argument("--max-len", type=int_range(1, MAX_CAPTION_WORDS), default=20,
                       help="longest caption in words (default: %(default)s)")
        k.add_argument("--workers", type=int_range(0, 64), default=2,
                       help="image loading processes (default: %(default)s)")
        add_flags(k.add_argument_group("features"), FeatureSpec, dest="features.")
        k.add_argument("--no-progress", action="store_true", help="no progress bar")
        _add_engine_args(k)


def _add_engine_args(p) -> None:
    """--engine and the Ray engine's flags (``RayOptions``), for `caption` and `prepare`."""
    from .engines import ENGINES
    from .engines.ray_cluster import RayOptions

    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: this process and its --workers; ray: Ray Data, the model in a "
                   "pool of actors, on a local Ray instance or --address's cluster (needs "
                   "pip install -e \".[ray]\") (default: %(default)s)")
    add_flags(g, RayOptions, dest="ray.")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a captioner on a prepared folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly (a larger --epochs/--max-steps "
                   "extends a finished one)")
    g = p.add_argument_group("model")
    add_flags(g, ModelConfig, dest="model.")
    for kind, cls in ATTENTIONS.items():  # each kind's own options: --KIND-OPTION
        add_flags(g, cls.Options, prefix=f"{kind}-", dest=f"options.{kind}.",
                  help_prefix=f"{kind} attention: ")
    add_flags(p.add_argument_group("training"), TrainConfig, dest="train.")


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


def _add_decode_args(p, skip: tuple[str, ...] = ()) -> None:
    """The flags of one ``DecodeOptions``; ``commands.decode_options(args)`` builds it."""
    from .decoding import DecodeOptions

    _add_model_arg(p)
    add_flags(p.add_argument_group("decoding"), DecodeOptions, dest="decode.", skip=skip)


def _add_cpu_flags(p, when: str) -> None:
    """--threads and --runtime, for the commands that run a model on images."""
    from .models.runtime import RUNTIME_CHOICES

    p.add_argument("--threads", type=int_range(1, 1024), default=None,
                   help="CPU threads for the model (default: PyTorch's, the core count)")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto",
                   help="what runs a frozen encoder on a CPU (default: %(default)s: the fastest "
                   f"installed runtime that gives eager's features, {when}; eager otherwise)")


def _add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="BLEU-1..4 and COCO metrics of a checkpoint on a split")
    _add_decode_args(ev, skip=("n_best",))
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
    cap.add_argument("images", nargs="*", metavar="IMAGE", help="image files, folders "
                     "(searched recursively), list files (.txt/.lst: a path a line) or quoted "
                     "globs ('photos/**/*.jpg')")
    cap.add_argument("--json", action="store_true", help="one JSON object per image")
    cap.add_argument("--output", default=None, metavar="JSONL", type=output_file(),
                     help="append one JSON line per image to this file; images already in it "
                     "are skipped (a killed run resumes)")
    cap.add_argument("--batch-size", type=int_range(1, 1024), default=16,
                     help="images per model batch (default: %(default)s)")
    cap.add_argument("--workers", type=int_range(0, 64), default=2,
                     help="image decoding processes (default: %(default)s)")
    _add_cpu_flags(cap, "when there is more than one batch")
    cap.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_engine_args(cap)


def _add_serve(sub) -> None:
    srv = sub.add_parser("serve", help="the HTTP API and the attention web page")
    _add_model_arg(srv)
    add_flags(srv, ServeOptions, dest="serve.")
    _add_cpu_flags(srv, "always")


def _add_attend(sub) -> None:
    from .visualize import FIGURE_FORMATS

    att = sub.add_parser("attend", help="write the attention figure of an image's caption")
    _add_decode_args(att, skip=("n_best",))
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
    demo = sub.add_parser("demo", help="the whole pipeline on the built-in shapes data: "
                          "prepare, train (~5 min on CPU), evaluate, caption, attention figures")
    demo.add_argument("--home", default=None, help="where to work (default $CAPTIONER_HOME or "
                      "~/.cache/captioner)")
    demo.add_argument("--minutes", type=float_range(0, min_exclusive=True), default=5.0,
                      help="training time budget (default: %(default)s)")
    demo.add_argument("--attention", default="soft", choices=ATTENTIONS.names(),
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


def _flag_of(parser: argparse.ArgumentParser, argv: list[str], field: str) -> str:
    """The flag a FieldError's dotted field path came from (``decode.n_best`` of
    ``--n-best``; ``attention_options.hard.entropy`` of ``--hard-entropy``), else the path."""
    parts = field.split(".")
    if parts[0] == "attention_options" and len(parts) == 3:
        return f"--{parts[1]}-{parts[2]}".replace("_", "-")
    name = parts[-1]
    sub = next((a.choices[argv[0]] for a in parser._actions
                if isinstance(a, argparse._SubParsersAction) and argv and argv[0] in a.choices),
               parser)
    for action in sub._actions:
        if action.option_strings and action.dest.split(".")[-1] == name:
            return action.option_strings[0]
    return field


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("caption", "attend"):
        _images_after_models(args, parser)
    from . import commands
    from .errors import UserError

    try:
        return getattr(commands, args.command)(args) or 0
    except FieldError as exc:  # a value refused when its config was built: as argparse says it
        print(f"captioner {args.command}: error: argument {_flag_of(parser, argv, exc.field)}: "
              f"{exc.problem}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, UserError) as exc:
        # every user-facing error is one line naming the file or flag
        print(f"captioner {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
