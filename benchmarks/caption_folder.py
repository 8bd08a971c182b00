"""Images/s of `captioner caption DIR --output results.jsonl` (DataLoader workers decoding
while the model runs, batched) against one `captioner caption IMAGE` call per image, and
against the bare eager encoder forward (PyTorch, the encoder as the model holds it) over the
same images preloaded as tensors (target: the folder run >= 0.9x that). Also prints the bare
forward on the encoder runtime `caption` picks (`--runtime`) and the model alone (that encoder
+ beam search on preloaded tensors), the ceiling of any pipeline.

    .venv/bin/python benchmarks/caption_folder.py                  # the demo model
    .venv/bin/python benchmarks/caption_folder.py --lite2          # Lite2, untrained decoder
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_verdict  # noqa: E402
from serve_load import benchmark_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, threads: int = 0) -> float:
    """Wall seconds of one `captioner ...` process (``threads`` > 0: its torch threads)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "captioner", *args], cwd=ROOT, check=False, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the demo model)")
    ap.add_argument("--lite2", action="store_true", help="an EfficientNet-Lite2 model with an "
                    "untrained decoder instead (built in a temp folder)")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--single", type=int, default=4, help="images captioned one call each")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--beam-size", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads here and in the "
                    "`captioner` processes (default: all cores)")
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--runtime", default="auto", help="`caption --runtime`")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="caption_folder_") as tmp:
        tmp = Path(tmp)
        import torch

        cap, checkpoint, images = benchmark_model(args, tmp, tmp / "photos", args.images)
        photos = cap.model.config.encoder != "tiny"
        folder = images[0].parent
        print(f"model: {checkpoint.name} ({cap.model.config.encoder}, grid "
              f"{cap.model.config.grid_size}, vocab {len(cap.vocab)}); {len(images)} "
              f"{'photos 320x240 JPEG' if photos else 'shapes 64x64 PNG'}; batch "
              f"{args.batch_size}, {args.workers} workers, beam {args.beam_size}; "
              f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}")

        tensors = torch.stack([cap.preprocess(p) for p in images])
        options = cap.options(beam_size=args.beam_size)

        def timed(fn) -> float:
            fn(tensors[: args.batch_size])  # warm-up
            t0 = time.perf_counter()
            for start in range(0, len(tensors), args.batch_size):
                fn(tensors[start: start + args.batch_size])
            return len(tensors) / (time.perf_counter() - t0)

        with torch.inference_mode():
            encoder = timed(cap.model.encode)
            runtimes = cap.accelerate(args.runtime)
            fast = timed(cap.model.encode)
        model = timed(lambda x: cap.caption_tensors(x, options))

        flags = ["--model", str(checkpoint), "--beam-size", str(args.beam_size), "--runtime",
                 args.runtime]
        out = tmp / "results.jsonl"
        run = cli("caption", str(folder), "--output", str(out), "--batch-size",
                  str(args.batch_size), "--workers", str(args.workers), "--no-progress", *flags,
                  threads=args.threads)
        lines = out.read_text().count("\n")
        assert lines == len(images), f"{lines} results for {len(images)} images"
        fixed = cli("caption", str(folder), "--output", str(out), "--no-progress", *flags,
                    threads=args.threads)
        single = [cli("caption", str(p), *flags, threads=args.threads)
                  for p in images[: args.single]]

    name = runtimes[0].name if runtimes else "eager"
    rows = [("bare encoder forward (preloaded tensors)", encoder),
            (f"bare forward on {name}", fast),
            (f"model: {name} encoder + beam search", model),
            ("caption DIR --output (whole process)", len(images) / run),
            ("caption DIR --output (less start-up)", len(images) / max(run - fixed, 1e-9)),
            ("one `caption IMAGE` call per image", len(single) / sum(single))]
    print(f"{'':44} {'images/s':>9} {'x bare forward':>15}")
    for name, rate in rows:
        print(f"{name:44} {rate:9.1f} {rate / encoder:15.2f}")
    print(f"start-up of a `caption` process that finds everything done: {fixed:.2f} s")
    folder_rate = len(images) / max(run - fixed, 1e-9)
    return print_verdict(folder_rate >= args.target * encoder,
                         f"caption DIR {folder_rate:.1f} images/s = {folder_rate / encoder:.2f}x "
                         f"the bare eager encoder forward (target >= {args.target:g}x); "
                         f"{folder_rate / model:.2f}x the model alone", load_before)


if __name__ == "__main__":
    sys.exit(main())
