"""Throughput and latency of `captioner serve` under concurrent clients.

A real `captioner serve` process on 127.0.0.1; C concurrent clients (default 1, 4, 16, 64) each
send N single-image requests, one after another. Prints requests/s, p50/p95/p99 latency and
the mean batch the server ran at every C, against C = 1 (one request at a time, the same server)
and against `Captioner.caption` in this process one image at a time (the floor: no HTTP, no
batching). Target: at 16 clients >= --target x one-at-a-time (3 for the demo model, 2 for an
EfficientNet-Lite2 model), and no request lost or failed at 64 clients.

    .venv/bin/python benchmarks/serve_load.py                       # the demo model
    .venv/bin/python benchmarks/serve_load.py --lite2 --target 2    # Lite2, untrained decoder
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_verdict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def lite2_checkpoint(path: Path, vocab_words: int = 2500) -> Path:
    """An EfficientNet-Lite2 model (ImageNet encoder from pip, 288 px squashed, 9x9 grid, the
    Flickr8k script's decoder sizes) with an untrained, seeded decoder and a vocabulary of
    ``vocab_words``: for speed only, its captions mean nothing."""
    import torch

    from captioner.checkpoint import save_checkpoint
    from captioner.config import ModelConfig, Preprocess
    from captioner.models import build_model, get_backbone
    from captioner.vocab import Vocabulary

    torch.manual_seed(0)
    backbone = get_backbone("efficientnet_lite2", pretrained=False)
    pre = Preprocess(resize=288, crop=0, mean=backbone.preprocess.mean, std=backbone.preprocess.std)
    words = [f"w{i}" for i in range(vocab_words - 4)]
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *words], endings=words)
    config = ModelConfig(vocab_size=len(vocab), encoder="efficientnet_lite2", grid_size=9,
                         embed_dim=256, hidden_dim=512, attention_dim=256, dropout=0.3,
                         preprocess=pre)
    model = build_model(config, pretrained=True)
    save_checkpoint(path, model.config, vocab, model.state_dict())
    return path


def benchmark_model(args, tmp: Path, folder: Path, count: int):
    """(Captioner, its checkpoint, ``count`` sample images in ``folder``) for the flags
    ``--model``/``--lite2``/``--threads`` the benchmarks share."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from captioner.inference import Captioner, default_model_path

    checkpoint = Path(args.model) if args.model else default_model_path()
    if args.lite2:
        checkpoint = lite2_checkpoint(tmp / "lite2.safetensors")
    cap = Captioner.load(checkpoint)
    return cap, checkpoint, sample_images(folder, count, cap.model.config.encoder != "tiny")


def sample_images(folder: Path, count: int, photos: bool) -> list[Path]:
    """``count`` image files: shapes PNGs (64 px), or JPEG crops (320x240, quality 90) of
    scikit-image's sample photos."""
    folder.mkdir(parents=True, exist_ok=True)
    if not photos:
        from captioner.data.shapes import generate

        generate(folder, {"test": count}, seed=0, progress=False)
        return sorted((folder / "images").glob("test_*.png"))[:count]
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(0)
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.cat()]
    out = []
    for i in range(count):
        img = Image.fromarray(sources[i % len(sources)])
        w, h = img.size
        x, y = int(rng.integers(0, max(w - 320, 1))), int(rng.integers(0, max(h - 240, 1)))
        path = folder / f"photo_{i:04d}.jpg"
        img.crop((x, y, x + 320, y + 240)).save(path, quality=90)
        out.append(path)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(checkpoint: Path, extra: list[str] = (), threads: int = 0):
    """A `captioner serve` process on a free port of 127.0.0.1 (``threads`` > 0: its torch
    threads, through OMP_NUM_THREADS): yields its URL."""
    port = free_port()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.Popen([sys.executable, "-m", "captioner", "serve", "--model",
                             str(checkpoint), "--port", str(port), *extra], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"captioner serve exited: {proc.stderr.read()}")
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("captioner serve did not start in 180 s")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def batches(url: str) -> dict[int, int]:
    with urllib.request.urlopen(url + "/healthz") as r:
        return {int(k): v for k, v in json.load(r)["batches"].items()}


def request_bytes(host: str, path: str, name: str, data: bytes) -> bytes:
    """A whole HTTP/1.1 multipart POST of one image, built once: the load generator must cost
    the 2 shared cores far less than the server it measures (httpx costs ~10 ms of CPU a
    request at 64 clients, more than the server)."""
    boundary = "benchmark-boundary-7d1e"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename="
            f"\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> bool:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    body = json.loads(await reader.readexactly(length))
    return status == 200 and "captions" in body["results"][0]


async def run_clients(url: str, payloads: list[tuple[str, bytes]], clients: int, per_client: int,
                      params: dict) -> tuple[list[float], int, float]:
    """``clients`` concurrent clients, each on its own keep-alive connection, sending
    ``per_client`` one-image requests in turn: (latencies in seconds of the successful ones,
    failures, wall seconds)."""
    host, port = url.split("//", 1)[1].split(":")
    path = "/v1/captions?" + "&".join(f"{k}={v}" for k, v in params.items())
    requests = [request_bytes(host, path, name, data) for name, data in payloads]
    latencies: list[float] = []
    failures = 0

    async def one(c: int) -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for i in range(per_client):
                t0 = time.perf_counter()
                try:
                    ok = await _exchange(reader, writer, requests[(c * per_client + i)
                                                                  % len(requests)])
                except (OSError, ValueError, asyncio.IncompleteReadError, StopIteration):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    failures += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(clients)))
    return latencies, failures, time.perf_counter() - t0


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    p = np.percentile(np.array(latencies) * 1000, [50, 95, 99]) if latencies else [np.nan] * 3
    return float(p[0]), float(p[1]), float(p[2])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the demo model)")
    ap.add_argument("--lite2", action="store_true", help="benchmark an EfficientNet-Lite2 model "
                    "with an untrained decoder instead (built in a temp folder)")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--requests", type=int, default=8, help="requests per client (N)")
    ap.add_argument("--beam-size", type=int, default=3)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the server and "
                    "of the in-process floor (default: all cores)")
    ap.add_argument("--target", type=float, default=3.0, help="throughput at 16 clients over "
                    "one-at-a-time")
    ap.add_argument("--runtime", default="auto", help="the encoder runtime of the server and "
                    "of the in-process floor (`serve --runtime`)")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        tmp = Path(tmp)
        import torch

        cap, checkpoint, images = benchmark_model(args, tmp, tmp / "images", 32)
        runtimes = cap.accelerate(args.runtime)
        photos = cap.model.config.encoder != "tiny"
        payloads = [(p.name, p.read_bytes()) for p in images]
        params = {"beam_size": args.beam_size}
        print(f"model: {checkpoint.name} ({cap.model.config.encoder}, {cap.model.config.attention},"
              f" grid {cap.model.config.grid_size}, vocab {len(cap.vocab)}); images: "
              f"{len(images)} {'photos 320x240 JPEG' if photos else 'shapes 64x64 PNG'}; beam "
              f"{args.beam_size}; {args.requests} requests per client; server --max-batch "
              f"{args.max_batch}; {os.cpu_count()} cores, torch threads "
              f"{args.threads or torch.get_num_threads()}; encoder runtime "
              f"{runtimes[0].name if runtimes else 'eager (trained encoder)'}")

        floor = []
        cap.caption(images[0], beam_size=args.beam_size)
        for p in images[: max(8, args.requests)]:
            t0 = time.perf_counter()
            cap.caption(p, beam_size=args.beam_size)
            floor.append(time.perf_counter() - t0)
        del cap
        rows = [("in-process caption()", len(floor), 0, len(floor) / sum(floor),
                 *percentiles(floor), 1.0)]
        results = {}
        with server(checkpoint, ["--max-batch", str(args.max_batch), "--runtime", args.runtime],
                    args.threads) as url:
            asyncio.run(run_clients(url, payloads, 2, 2, params))  # warm-up
            for clients in [int(c) for c in args.clients.split(",")]:
                before = batches(url)
                lat, failed, wall = asyncio.run(run_clients(url, payloads, clients,
                                                            args.requests, params))
                after = batches(url)
                runs = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                mean_batch = sum(k * v for k, v in runs.items()) / max(sum(runs.values()), 1)
                results[clients] = (len(lat) / wall, failed)
                rows.append((f"HTTP, {clients} clients", clients * args.requests, failed,
                             len(lat) / wall, *percentiles(lat), mean_batch))
    one = results.get(1, (np.nan, 0))[0]
    print(f"{'':24} {'requests':>8} {'failed':>6} {'req/s':>7} {'x 1 client':>10} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'p99 ms':>8} {'mean batch':>10}")
    for name, n, failed, rate, p50, p95, p99, batch in rows:
        print(f"{name:24} {n:8d} {failed:6d} {rate:7.1f} {rate / one:10.2f} {p50:8.0f} "
              f"{p95:8.0f} {p99:8.0f} {batch:10.1f}")
    speedup = results.get(16, (np.nan, 0))[0] / one
    failed64 = results.get(64, (0, 0))[1]
    return print_verdict(speedup >= args.target and failed64 == 0,
                         f"16 clients {speedup:.2f}x one-at-a-time (target >= "
                         f"{args.target:g}x); {failed64} failed at 64 clients", load_before)


if __name__ == "__main__":
    sys.exit(main())
