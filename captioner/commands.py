"""One function per CLI subcommand: turn parsed flags into library calls and print results."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from .config import ModelConfig, TrainConfig


def prepare(args) -> int:
    from .data.prepare import FeatureSpec, claim_output, interrupted, prepare as run_prepare
    from .errors import UserError
    from .flags import given
    from .registry import READERS

    feature_flags = given(args, FeatureSpec, "features.")
    spec = FeatureSpec(**feature_flags) if "encoder" in feature_flags else None
    if feature_flags and spec is None:
        flag = next(iter(feature_flags)).replace("_size", "").replace("_", "-")
        raise ValueError(f"--{flag} sets up the features: it needs --features ENCODER")

    engine = _prepare_engine(args, spec)  # None: this machine; refused before any work
    out = Path(args.out)
    created = claim_output(out, args.overwrite)  # before any work: never mixes two datasets
    if interrupted(out):
        print(f"{out}: continuing an interrupted prepare (features already encoded are kept "
              "where the images and encoder are the same)", file=sys.stderr)
    try:
        records = READERS.get(args.source).read(args)
        report = run_prepare(records, out, args.source, args.min_count, args.max_len, spec,
                             not args.no_progress, args.workers, engine=engine)
    except BaseException as exc:
        if not isinstance(exc, (UserError, ValueError)) and interrupted(out):  # keep the work
            print(f"{out}: prepare stopped; run the same command again to continue from the "
                  "features encoded so far", file=sys.stderr)
        elif created:  # a failed prepare leaves no half-made folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    for line in report.skipped[:20]:
        print(f"skipped {line}", file=sys.stderr)
    if len(report.skipped) > 20:
        print(f"... and {len(report.skipped) - 20} more skipped (see meta.json)", file=sys.stderr)
    print(f"prepared {args.out}: {report.summary()}")
    return 0


def train(args) -> int:
    from .flags import given
    from .registry import ATTENTIONS
    from .train import resume, train as new_run

    model = given(args, ModelConfig, "model.")
    options = {kind: found for kind, cls in ATTENTIONS.items()
               if (found := given(args, cls.Options, f"options.{kind}."))}
    if options:
        model["attention_options"] = options
    settings = given(args, TrainConfig, "train.")
    if args.resume:
        result = resume(args.__dict__["train.out"], model, settings)
    else:
        result = new_run(model, TrainConfig(**settings))
    if result.rank != 0:
        return 0
    last = result.run_dir / "last.safetensors"
    if result.stopped == "finished":
        print(f"nothing to do: the run in {result.run_dir} has finished ({result.step} steps, "
              f"{result.epochs_text}); pass a larger --epochs or --max-steps to extend it")
    elif result.stopped.startswith("SIG"):
        print(f"stopped by {result.stopped} at step {result.step}; saved {last}; continue with "
              f"`captioner train --out {result.run_dir} --resume`", file=sys.stderr)
        return 130 if result.stopped == "SIGINT" else 143
    else:
        print(f"trained {result.step} steps ({result.epochs_text} in {result.time_text}, stopped "
              f"by {result.stopped}); "
              f"best val {result.select_by} {result.best_score:.4f}; "
              f"checkpoints in {result.run_dir}")
    return 0


def decode_options(args):
    """The DecodeOptions the decoding flags describe (``cli._add_decode_args``)."""
    from .decoding import DecodeOptions
    from .flags import given

    return DecodeOptions(**given(args, DecodeOptions, "decode."))


def set_threads(threads: int | None) -> None:
    """``--threads``: the CPU threads PyTorch runs the model on (None: its default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _accelerate(cap, args) -> None:
    """``--runtime``: the captioner's frozen encoders on it, one line each on stderr."""
    for runtime in cap.accelerate(args.runtime, args.threads):
        print(f"captioner {args.command}: {runtime.describe()}", file=sys.stderr)


def evaluate(args) -> int:
    from .data.dataset import PreparedData
    from .evaluate import evaluate_checkpoint
    from .inference import load_models

    options = decode_options(args)
    data = PreparedData(args.data)
    model, vocab = load_models(args.model)
    metrics = evaluate_checkpoint(model, vocab, data, args.split, options, args.results,
                                  args.metrics, args.max_images, meteor=not args.no_meteor)
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"{k:<{width}}  {v:.4f}" if v != int(v) else f"{k:<{width}}  {int(v)}")
    return 0


def caption(args) -> int:
    if _ray_options(args, args.batch_size) is not None:
        return caption_ray(args)
    from tqdm import tqdm

    from .folder import ResultsFile, caption_batches, escape, expand_sources
    from .inference import Captioner

    options = decode_options(args)
    paths = expand_sources(args.images)
    set_threads(args.threads)
    cap = Captioner.load(args.model)
    results = ResultsFile(args.output) if args.output else None
    todo = [p for p in paths if results is None or p not in results.done]
    if args.runtime != "auto" or len(todo) > args.batch_size:
        _accelerate(cap, args)
    failed = 0
    with tqdm(total=len(todo), unit="img", desc="caption",
              disable=results is None or args.no_progress) as bar:
        for batch in caption_batches(cap, todo, options, args.batch_size, args.workers):
            for r in batch:  # a bad file never stops the others
                if r.error is not None:
                    tqdm.write(f"captioner caption: error: {escape(r.error)}", file=sys.stderr)
                    failed += 1
                elif results is None and args.json:
                    print(json.dumps(r.record()), flush=True)
                elif results is None:
                    for c in r.captions:
                        print(f"{escape(r.path)}\t{c.text}"
                              + (f"\t{c.score:.3f}" if options.n_best > 1 else ""), flush=True)
            if results is not None:
                results.append([r.record() for r in batch])
            bar.update(len(batch))
    if results is not None:
        print(f"{results.path}: {len(todo) - failed} images captioned, {failed} failed, "
              f"{len(paths) - len(todo)} already there")
    return 1 if failed else 0


def _ray_options(args, batch_size: int):
    """The RayOptions of ``--engine ray`` and its flags, model calls of ``batch_size`` images;
    None for the local engine (which refuses the Ray-only flags)."""
    from .engines.ray_cluster import RayOptions
    from .flags import given

    flags = given(args, RayOptions, "ray.")
    if args.engine != "ray":
        if flags:
            named = ", ".join(f"--{f.replace('_', '-')}" for f in flags)
            raise ValueError(f"{named.replace('--gpus-per-worker', '--worker-gpus')}: only with "
                             "--engine ray")
        return None
    return RayOptions(**flags, batch_size=batch_size)


def _prepare_engine(args, spec):
    """prepare's feature encoder on Ray (``--engine ray``), or None: this machine."""
    from .engines.ray_cluster import RayOptions

    options = _ray_options(args, spec.batch_size if spec else RayOptions.batch_size)
    if options is None:
        return None
    if spec is None:
        raise ValueError("--engine ray encodes features on Ray: give --features ENCODER, or "
                         "leave --engine out")
    from .engines.ray_prepare import RayFeatures

    return RayFeatures(options)


def caption_ray(args) -> int:
    """``caption SOURCE --output OUT --engine ray``: the captions of `caption DIR --output` on
    Ray Data; each bad image is one error line here and one error record in OUT."""
    from tqdm import tqdm

    from .engines.ray_caption import caption_on_ray
    from .folder import escape, expand_sources

    if not args.output:
        raise ValueError("--engine ray writes its results to a file: give --output OUT.jsonl "
                         "(or OUT.parquet)")
    paths = expand_sources(args.images)
    bar = None  # opened by the first results: a refusal before any work prints no bar

    def report(records, total):
        nonlocal bar
        bar = bar or tqdm(total=total, unit="img", desc="caption", disable=args.no_progress)
        for r in records:
            if "error" in r:
                tqdm.write(f"captioner caption: error: {escape(r['error'])}", file=sys.stderr)
        bar.update(len(records))

    try:
        done = caption_on_ray(paths, args.output, args.model, decode_options(args),
                              _ray_options(args, args.batch_size), report)
    finally:
        if bar is not None:
            bar.close()
    print(f"{args.output}: {done.captioned} images captioned, {done.failed} failed, "
          f"{done.already} already there")
    return 1 if done.failed else 0


def serve(args) -> int:
    import uvicorn

    from .config import ServeOptions
    from .flags import given
    from .inference import Captioner, default_model_path
    from .serve import create_app, describe_model

    settings = ServeOptions(**given(args, ServeOptions, "serve."))
    set_threads(args.threads)
    cap = Captioner.load(args.model)
    _accelerate(cap, args)
    info = describe_model(cap, args.model or [default_model_path()])
    app = create_app(cap, info, settings)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    kind = f"{info['encoder']} / {info['attention']} model"
    if "members" in info:
        kind = f"ensemble of {len(info['members'])} models (the first {kind})"
    print(f"captioner serve: {kind} on {cap.device}; "
          f"page and API at http://{host}:{settings.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                access_log=False)
    return 0


def attend(args) -> int:
    from .data.images import ImageError
    from .inference import Captioner
    from .visualize import caption_figure

    options = decode_options(args)
    cap = Captioner.load(args.model)
    try:
        best = caption_figure(cap, args.image, args.out, options=options)
    except ImageError as exc:  # as `caption` reports a bad image: one line, status 1
        print(f"captioner attend: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {best.text}")
    return 0


def average(args) -> int:
    from .average import epochs_near_best, write_average

    if bool(args.run) == bool(args.checkpoints):
        raise ValueError("give either checkpoints to average or --run (a run's epochs near "
                         "its best), not both" if args.run else "nothing to average: give "
                         "checkpoints, or --run")
    if args.run:
        args.checkpoints = epochs_near_best(args.run, args.up_to_best, args.past_best)
        print(f"averaging {', '.join(p.name for p in args.checkpoints)} of {args.run}")
    write_average(args.checkpoints, args.out)
    print(f"{args.out}: the mean of {len(args.checkpoints)} checkpoints' weights")
    return 0


def demo(args) -> int:
    from .demo import run_demo

    run_demo(home=args.home, minutes=args.minutes, attention=args.attention, fresh=args.fresh)
    return 0
