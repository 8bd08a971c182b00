"""Throughput of `captioner prepare --features ENCODER` against the bare encoder forward.

Measures images/s of ``prepare(records, out, ..., features=FeatureSpec(encoder))`` - the real
pipeline: JPEG decode + preprocessing in DataLoader worker processes, the frozen encoder's
forward in the main process on ``--runtime`` (``FeatureSpec.runtime``), float16 memmap writes,
vocabulary/manifests/encoder weights - and, in the same run, the bare encoder forward on the same
runtime (``accelerate``, ``torch.inference_mode``) over the same images already decoded into
tensors, with the same batch size and thread count.

Target: prepare >= 0.8x the bare forward (images/s).

Run by hand (never by CI; nothing here asserts a timing):

    .venv/bin/python benchmarks/prepare_features.py
    .venv/bin/python benchmarks/prepare_features.py --images 400 --batch-size 64 --workers 1
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from _common import print_verdict  # noqa: E402  (benchmarks/ is on sys.path)

TARGET = 0.8
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")


def write_images(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    """``n`` JPEGs of ``size`` x ``size``: random crops (40-100% of the short side, random
    position, random mirror) of scikit-image's sample photographs, quality 90."""
    import skimage.data

    photos = [getattr(skimage.data, name)() for name in PHOTOS]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.4, 1.0))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = photo[y: y + side, x: x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        image = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BICUBIC)
        path = folder / f"img_{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the DataLoader workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def bare_forward(encoder, images: torch.Tensor, batch_size: int) -> float:
    """Seconds for the encoder forward over every batch of the preloaded ``images``."""
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            encoder(images[i: i + batch_size])
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="efficientnet_lite0")
    p.add_argument("--images", type=int, default=200, help="JPEGs to write and prepare")
    p.add_argument("--size", type=int, default=224, help="side of the written JPEGs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="prepare's image loading processes")
    p.add_argument("--runtime", default="auto", help="the encoder runtime (FeatureSpec.runtime)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch intra-op threads in the main process (default: all cores)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each; the best counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = p.parse_args()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0

    torch.set_num_threads(args.threads)
    from captioner.data.images import build_transform, load_image
    from captioner.data.prepare import FeatureSpec, prepare
    from captioner.data.records import ImageRecord
    from captioner.models.encoder import Encoder, get_backbone
    from captioner.models.runtime import accelerate

    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        (tmp / "images").mkdir()
        t0 = time.perf_counter()
        paths = write_images(tmp / "images", args.images, args.size, args.seed)
        write_s = time.perf_counter() - t0
        records = [ImageRecord(f"img{i}", path, "train", [["a", "photo", "of", "something"]])
                   for i, path in enumerate(paths)]

        t0 = time.perf_counter()
        backbone = get_backbone(args.encoder)
        build_s = time.perf_counter() - t0
        pre, grid = backbone.preprocess, backbone.grid_size
        encoder = accelerate(Encoder(backbone, grid, trainable_blocks=0).eval(),
                             pre.input_size, args.runtime)
        t0 = time.perf_counter()
        images = torch.stack([build_transform(pre)(load_image(path)) for path in paths])
        decode_s = time.perf_counter() - t0
        bare_forward(encoder, images[: args.batch_size], args.batch_size)  # warm-up

        spec = FeatureSpec(args.encoder, batch_size=args.batch_size, runtime=args.runtime)
        bare_times, prep_times, bare_cpus, prep_cpus = [], [], [], []
        for r in range(args.repeats):  # interleaved, so a busy neighbour hurts both alike
            c0 = cpu_seconds()
            bare_times.append(bare_forward(encoder, images, args.batch_size))
            bare_cpus.append(cpu_seconds() - c0)
            out = tmp / f"prepared_{r}"
            t0, c0 = time.perf_counter(), cpu_seconds()
            report = prepare(records, out, "bench", min_count=1, features=spec, progress=False,
                             workers=args.workers)
            prep_times.append(time.perf_counter() - t0)
            prep_cpus.append(cpu_seconds() - c0)
            assert report.kept == {"train": args.images}, report.summary()
            stored = np.memmap(out / "features" / "train.f16", np.float16, "r")
            assert stored.size == args.images * grid * grid * backbone.feature_dim
            shutil.rmtree(out)

        n = args.images
        bare_s, prep_s = min(bare_times), min(prep_times)
        bare_cpu = bare_cpus[bare_times.index(bare_s)]
        prep_cpu = prep_cpus[prep_times.index(prep_s)]
        bare_ips, prep_ips = n / bare_s, n / prep_s
        prep_ex_ips = n / max(prep_s - build_s, 1e-9)
        ratio = prep_ips / bare_ips

        print("prepare --features vs bare encoder forward")
        print(f"config: encoder={args.encoder} images={n} jpeg={args.size}x{args.size} "
              f"input={pre.input_size} grid={grid}x{grid} D={backbone.feature_dim} "
              f"batch={args.batch_size} workers={args.workers} torch_threads={args.threads} "
              f"runtime={encoder.name} "
              f"(workers run 1 thread each) cores={os.cpu_count()} repeats={args.repeats} (best) "
              f"torch={torch.__version__} python={platform.python_version()}")
        print(f"setup: wrote JPEGs {write_s:.2f}s, get_backbone {build_s:.2f}s, "
              f"decode+preprocess in-process {decode_s:.2f}s ({n / decode_s:.0f} img/s)")
        rows = [
            ("bare forward (preloaded tensors)", bare_s, bare_ips, bare_cpu, bare_times),
            ("prepare(..., features=FeatureSpec)", prep_s, prep_ips, prep_cpu, prep_times)]
        print(f"{'path':<44}{'best s':>8}{'img/s':>9}{'cpu s':>8}   all runs (wall s)")
        for name, s, ips, c, runs in rows:
            print(f"{name:<44}{s:>8.2f}{ips:>9.1f}{c:>8.1f}   "
                  + ", ".join(f"{x:.2f}" for x in runs))
        print("cpu s: CPU time of the best run, all threads; prepare's includes its loader "
              "worker processes")
        median_ratio = statistics.median(bare_times) / statistics.median(prep_times)
        # prepare builds its own backbone; what is left without it (meaningless when tiny)
        aside = (f" (excluding prepare's own get_backbone ~{build_s:.2f}s: "
                 f"{prep_ex_ips / bare_ips:.2f}x)") if prep_s > 3 * build_s else ""
        print(f"ratio prepare/bare: {ratio:.2f}x{aside}; median run ratio {median_ratio:.2f}x")
        status = print_verdict(ratio >= TARGET, f"prepare runs at {ratio:.2f}x the bare "
                               f"forward (target >= {TARGET}x)", load_before)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
