"""Images/s of `captioner caption DIR --output OUT --engine ray` (a local Ray instance started
by the command, 1 and 2 model actors) against the one-machine `caption DIR --output OUT` on
the same images and model. Target: Ray's overhead on one machine at most 15%, i.e. Ray with as
many actors as cores >= 0.85x the one-machine run, in steady state.

Each configuration runs as a whole `captioner` process twice, on --base images and on --images
images (fresh OUT each time): the steady rate is the extra images over the extra seconds, which
cancels what every run pays once (process start, model load; for Ray its instance and actors),
shown apart as "fixed". The per-actor rate also gives the scaling on N machines on paper.

Wall time on a shared machine moves with the load, so the same images are also captioned here
in-process, one core each (the one-machine path at one thread, no workers; Ray with one
actor), counting CPU seconds per image: the model's process, the driver, and Ray's own
services (raylet, GCS, agents) while the images flow. That is the steadier overhead figure.

    .venv/bin/python benchmarks/caption_ray.py --lite2           # Lite2, untrained decoder
    .venv/bin/python benchmarks/caption_ray.py --model best.safetensors --images 400
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_verdict  # noqa: E402
from serve_load import benchmark_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(folder: Path, out: Path, flags: list[str], threads: int = 0) -> float:
    """Wall seconds of one `captioner caption FOLDER --output OUT` process (fresh OUT)."""
    out.unlink(missing_ok=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "captioner", "caption", str(folder), "--output",
                          str(out), "--no-progress", *flags], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    lines = out.read_text().count("\n") if out.exists() else 0
    images = len(list(folder.iterdir()))
    assert res.returncode == 0 and lines == images, \
        f"{lines} results for {images} images ({' '.join(flags)}): {res.stderr[-2000:]}"
    return seconds


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ray_processes() -> dict[int, str]:
    """pid -> "model" (the captioning actors) or "services" (everything else Ray runs)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        title = argv[0].decode(errors="replace")
        if "CaptionWorker" in title:
            found[int(pid)] = "model"
        elif title.startswith("ray::") or any(b"site-packages/ray/" in a
                                              for a in argv[:2]):
            found[int(pid)] = "services"
    return found


def _local_cpu(checkpoint: Path, paths: list[str], beam: int, batch: int) -> float:
    """CPU seconds per image of the one-machine path after its first batch (run in a fresh
    process started with OMP_NUM_THREADS=1, as a Ray actor is)."""
    from captioner.folder import caption_batches
    from captioner.inference import Captioner

    cap = Captioner.load(checkpoint, device="cpu")
    options = cap.options(beam_size=beam)
    list(caption_batches(cap, paths[:batch], options, batch, 0))  # warm-up
    c0 = time.process_time()
    for _ in caption_batches(cap, paths[batch:], options, batch, 0):
        pass
    return (time.process_time() - c0) / (len(paths) - batch)


def cpu_per_image(checkpoint: Path, paths: list[str], beam: int, batch: int
                  ) -> tuple[float, dict[str, float]]:
    """CPU seconds per image, one core each: the one-machine path (1 thread, decoding in its
    process) and Ray with one actor (its model process, the driver, Ray's services), both
    counted from after their first batch."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import ray

    from captioner.decoding import DecodeOptions
    from captioner.engines.ray_caption import caption_on_ray
    from captioner.engines.ray_cluster import RayOptions, quiet_ray_data

    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the fresh process's torch
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            local = pool.submit(_local_cpu, checkpoint, paths, beam, batch).result()
    finally:
        if before is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = before
    options = DecodeOptions(beam_size=beam)

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    quiet_ray_data(ray)
    seen: dict = {}

    def on_results(records, total):
        procs = _ray_processes()
        cpu = {pid: _cpu_seconds(pid) for pid in procs}
        if not seen:
            seen.update(procs=procs, start=cpu, driver=time.process_time(), images=-len(records))
        seen.update(end=cpu, driver_end=time.process_time(), images=seen["images"] + len(records))

    with tempfile.TemporaryDirectory() as tmp:
        caption_on_ray(paths, Path(tmp) / "o.jsonl", checkpoint, options,
                       RayOptions(num_workers=1, batch_size=batch), on_results)
    ray.shutdown()
    n = seen["images"]
    parts = {"model actor": 0.0, "services": 0.0}
    for pid, kind in seen["procs"].items():
        if pid in seen["end"]:
            parts["model actor" if kind == "model" else "services"] += \
                seen["end"][pid] - seen["start"][pid]
    parts["driver"] = seen["driver_end"] - seen["driver"]
    return local, {k: v / n for k, v in parts.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the demo model)")
    ap.add_argument("--lite2", action="store_true", help="an EfficientNet-Lite2 model with an "
                    "untrained decoder instead (built in a temp folder)")
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--base", type=int, default=32, help="images of the shorter run")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--beam-size", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="rounds over all configurations; "
                    "each one's fastest run of each size counts")
    ap.add_argument("--threads", type=int, default=0, help="unused (all cores); kept for the "
                    "shared model flags")
    ap.add_argument("--target", type=float, default=0.85)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="caption_ray_") as tmp:
        tmp = Path(tmp)
        cap, checkpoint, images = benchmark_model(args, tmp, tmp / "photos", args.images)
        small, large = tmp / "small", tmp / "large"
        for folder, count in ((small, args.base), (large, args.images)):
            folder.mkdir()
            for image in images[:count]:
                shutil.copy(image, folder / image.name)
        print(f"model: {checkpoint.name} ({cap.model.config.encoder}, grid "
              f"{cap.model.config.grid_size}, vocab {len(cap.vocab)}); {args.base} and "
              f"{args.images} images ({images[0].suffix}); batch {args.batch_size}, beam "
              f"{args.beam_size}; {cores} cores; load {load_before:.2f}")
        del cap
        common = ["--model", str(checkpoint), "--beam-size", str(args.beam_size),
                  "--batch-size", str(args.batch_size)]
        configs = [
            ("one machine: caption DIR (--workers 2, all cores)", [*common, "--workers", "2"], 0),
            ("one machine, one core (--workers 0, 1 thread)", [*common, "--workers", "0"], 1),
            ("ray, 1 actor (1 CPU)", [*common, "--engine", "ray", "--num-workers", "1"], 0),
            (f"ray, {cores} actors", [*common, "--engine", "ray", "--num-workers", str(cores)],
             0),
        ]
        times: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in configs}
        for _ in range(args.repeats):  # interleaved: a burst of load hits one repeat, not one row
            for name, flags, threads in configs:
                pair = (run(small, tmp / "o.jsonl", flags, threads),
                        run(large, tmp / "o.jsonl", flags, threads))
                times[name].append(pair)
                print(f"  {name}: {pair[0]:.1f} s / {pair[1]:.1f} s", flush=True)
        cpu_rounds = [cpu_per_image(checkpoint, [str(p) for p in images], args.beam_size,
                                    args.batch_size) for _ in range(args.repeats)]
        rows = []
        for name, _, _ in configs:
            t_small = min(t for t, _ in times[name])
            t_large = min(t for _, t in times[name])
            if t_large - t_small < 1.0:  # within the noise of start-up: no rate to tell
                raise SystemExit(f"{name}: {args.images} images took {t_large:.1f} s, "
                                 f"{args.base} took {t_small:.1f} s: too close to measure a "
                                 "rate; raise --images")
            steady = (args.images - args.base) / (t_large - t_small)
            rows.append((name, steady, args.images / t_large, t_small - args.base / steady))
    print(f"{'':52} {'steady img/s':>12} {'whole img/s':>12} {'fixed s':>8}")
    for name, steady, whole, fixed in rows:
        print(f"{name:52} {steady:12.2f} {whole:12.2f} {fixed:8.1f}")
    local, one_core, ray1, ray_all = (r[1] for r in rows)
    local_cpu = min(c for c, _ in cpu_rounds)
    ray_cpu = min(cpu_rounds, key=lambda r: sum(r[1].values()))[1]
    print(f"CPU s per image, one core each (best of {args.repeats}): one machine "
          f"{local_cpu:.4f}; ray {sum(ray_cpu.values()):.4f} = "
          + " + ".join(f"{k} {v:.4f}" for k, v in ray_cpu.items())
          + f" ({sum(ray_cpu.values()) / local_cpu - 1:+.0%})")
    print(f"ray 1 actor / one machine on one core: {ray1 / one_core:.2f}x; "
          f"ray {cores} actors / ray 1 actor: {ray_all / ray1:.2f}x")
    bound = 1 / ray_cpu["driver"]
    print(f"on paper, N machines of {cores} cores at this per-actor rate: about "
          f"{ray1:.1f} x {cores} x N = {ray1 * cores:.1f} N images/s, until the driver's one core "
          f"is full at {ray_cpu['driver']:.4f} CPU s per image: {bound:.0f} images/s, "
          f"N = {bound / (ray1 * cores):.0f}")
    cpu_ratio = local_cpu / sum(ray_cpu.values())
    passed = ray_all >= args.target * local and cpu_ratio >= args.target
    return print_verdict(passed, f"ray with {cores} actors {ray_all:.2f} img/s = "
                         f"{ray_all / local:.2f}x the one-machine caption DIR {local:.2f} img/s, "
                         f"and {cpu_ratio:.2f}x its images per CPU second (target >= "
                         f"{args.target:g}x both: overhead <= {1 - args.target:.0%})",
                         load_before)


if __name__ == "__main__":
    sys.exit(main())
