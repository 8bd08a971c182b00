"""Frozen encoder forward on a CPU: eager PyTorch against the ways a CPU runs a CNN fast.

In one run, on the same batch of real photos (scikit-image samples, preprocessed as `prepare`
does), times the frozen ``Encoder`` forward as prepare and caption run it today (eval,
``torch.inference_mode``, "eager") against: channels-last memory format; batch norm folded into
the convolutions ("fused", torch.fx) with and without channels-last; TorchScript frozen and
``optimize_for_inference``; ``torch.compile`` (inductor) plain and with freezing; ONNX Runtime;
OpenVINO in float32 and in bfloat16. The ``channels_last``, ``onnxruntime`` and ``openvino``
rows run ``captioner.models.runtime.accelerate`` - the code `prepare` and `caption` would use.

For each path: images/s (best of --repeats, interleaved with the other paths), CPU time per
image (all threads), the encoder's GFLOP/s and its fraction of this machine's measured
float32 matrix-multiply peak (a large ``torch.mm``, and the same product through oneDNN, timed
in the same run: MKL's sgemm runs a narrower code path on AMD CPUs), setup time
(conversion / export / compile) and first call, and the max abs difference of its features
from eager's in float32 and after the float16 rounding that prepared features get.

"Same features": max |path - eager| <= 2^-11 * max |eager| (half a float16 step at the largest
feature: less than the rounding error `prepare` puts on every stored value). Float32 kernels
that only reorder sums pass by far; bfloat16 does not.

Verdict: the fastest path with the same features, and its speedup over eager; exit status 1
when none beats eager (target --target, default 1.0x).

Run by hand (never by CI; nothing here asserts a timing):

    .venv/bin/python benchmarks/encoder_runtimes.py --threads 1
    .venv/bin/python benchmarks/encoder_runtimes.py --image-size 448 --grid 14 --threads 2
    .venv/bin/python benchmarks/encoder_runtimes.py --encoder efficientnet_lite2 --image-size 288
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

# torch.compile's on-disk caches would make a second run's compile look free: start cold
_INDUCTOR_CACHE = tempfile.mkdtemp(prefix="bench_inductor_")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import print_verdict  # noqa: E402  (benchmarks/ is on sys.path)
from torch import fx, nn  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")
F16_STEP = 2.0 ** -11  # the tolerance of captioner.models.runtime.FEATURE_RTOL, restated


@dataclass
class Path_:
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    setup_s: float = 0.0
    first_s: float = 0.0
    note: str = ""
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    diff32: float = float("nan")
    diff16: float = float("nan")
    changed16: float = float("nan")


def photos(n: int, size: int, pre, seed: int) -> torch.Tensor:
    """``n`` random crops (40-100% of the short side, random mirror) of scikit-image's sample
    photos, preprocessed for the encoder exactly as `prepare` does: (n, 3, size, size)."""
    import skimage.data
    from PIL import Image

    from captioner.config import Preprocess
    from captioner.data.images import build_transform

    transform = build_transform(Preprocess(size, 0, pre.mean, pre.std))
    sources = [getattr(skimage.data, name)() for name in PHOTOS]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        photo = sources[i % len(sources)]
        photo = photo if photo.ndim == 3 else np.stack([photo] * 3, -1)
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.4, 1.0))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = photo[y: y + side, x: x + side]
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        out.append(transform(Image.fromarray(np.ascontiguousarray(crop)).convert("RGB")))
    return torch.stack(out)


def fold_batchnorm(module: nn.Module) -> fx.GraphModule:
    """``module`` with every BatchNorm2d that follows a Conv2d folded into its weights (eval);
    timm's BatchNormAct2d keeps its activation. torch.fx, BatchNorm2d kept as a leaf."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, nn.BatchNorm2d) or super().is_leaf_module(m, qualname)

    graph = Tracer().trace(module)
    gm = fx.GraphModule(module, graph)
    mods = dict(gm.named_modules())
    folded = 0
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods[node.target], nn.BatchNorm2d):
            continue
        prev = node.args[0]
        if (isinstance(prev, fx.Node) and prev.op == "call_module"
                and isinstance(mods[prev.target], nn.Conv2d) and len(prev.users) == 1):
            bn = mods[node.target]
            gm.set_submodule(prev.target, fuse_conv_bn_eval(mods[prev.target], bn))
            rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m]
            gm.set_submodule(node.target, nn.Sequential(*rest) if rest else nn.Identity())
            folded += 1
    gm.recompile()
    gm.folded = folded
    return gm


def cpu_now() -> float:
    return time.process_time()  # all threads of this process (ORT and OpenVINO pools too)


def matmul_peaks(n: int, repeats: int) -> dict[str, float]:
    """Best float32 n x n matrix product in GFLOP/s (2 n^3 per product), per wall second and
    per CPU second (the latter barely moves when neighbours share the cores): ``torch.mm`` (MKL in
    the pip wheels) and the same product through oneDNN (``F.linear`` on mkldnn tensors, the
    library behind PyTorch's CPU convolutions and OpenVINO). MKL takes a narrower code path on
    some non-Intel CPUs, so the larger of the two is the machine's measured peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    products = {"torch.mm": lambda: torch.mm(a, b)}
    try:
        am, bm = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
        nn.functional.linear(am, bm)
        products["oneDNN"] = lambda: nn.functional.linear(am, bm)
    except (RuntimeError, NotImplementedError):
        pass
    out = {}
    for name, product in products.items():
        product()
        walls, cpus = [], []
        for _ in range(repeats):
            c0 = cpu_now()
            walls.append(_timed(product))
            cpus.append(cpu_now() - c0)
        out[name] = 2 * n ** 3 / min(walls) / 1e9
        out[f"{name} per cpu-s"] = 2 * n ** 3 / min(cpus) / 1e9
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def build_paths(encoder, size: int, threads: int, example: torch.Tensor,
                only: list[str] | None = None) -> list[Path_]:
    """Every path (or those whose name starts with one of ``only``; eager always), built with
    its setup time measured; a path that cannot be built keeps a note."""
    from captioner.models.runtime import accelerate

    def runtime(name):
        return lambda: accelerate(encoder, size, name, threads=threads, cache=False, check=False)

    def channels_last(module):
        m = copy.deepcopy(module).to(memory_format=torch.channels_last)
        return lambda x: m(x.contiguous(memory_format=torch.channels_last))

    def fused():
        return fold_batchnorm(copy.deepcopy(encoder))

    def torchscript():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(copy.deepcopy(encoder), example[:2])
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced))

    def compiled(freezing: bool):
        def make():
            import torch._inductor.config as inductor

            inductor.freezing = freezing  # read when the graph compiles (first call, below)
            module = copy.deepcopy(encoder)

            def forward(images):
                return module(images)
            # Dynamo caches compiled graphs per code object and would hand the second variant
            # the first one's graph: give each variant a code object of its own
            code = forward.__code__.replace(co_name=f"forward_freezing_{freezing}")
            fn = types.FunctionType(code, forward.__globals__, None, None, forward.__closure__)
            return torch.compile(fn, dynamic=False)
        return make

    def openvino_bf16():
        import openvino as ov

        from captioner.models.runtime import _onnx_file

        core = ov.Core()
        with _onnx_file(encoder.blocks, size, None) as path:
            model = core.read_model(str(path))
        cm = core.compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
        pool = nn.AdaptiveAvgPool2d(encoder.grid_size)
        return lambda x: pool(torch.from_numpy(cm(x.numpy())[0].copy())).flatten(2).transpose(1, 2)

    builders = [
        ("eager", lambda: encoder),
        ("channels_last (runtime)", lambda: runtime("channels_last")()),
        ("fused", fused),
        ("fused + channels_last", lambda: channels_last(fused())),
        ("torchscript frozen+ofi", torchscript),
        ("torch.compile", compiled(False)),
        ("torch.compile freezing", compiled(True)),
        ("onnxruntime (runtime)", lambda: runtime("onnxruntime")()),
        ("openvino f32 (runtime)", lambda: runtime("openvino")()),
        ("openvino bf16", openvino_bf16),
    ]
    paths = []
    for name, build in builders:
        if only and name != "eager" and not any(name.startswith(o) for o in only):
            continue
        path = Path_(name)
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                path.fn = build()
                path.setup_s = time.perf_counter() - start
                start = time.perf_counter()
                path.fn(example)  # first call: compiles / allocates / picks kernels
                path.first_s = time.perf_counter() - start
        except Exception as exc:  # a missing package or a failed export is a row, not a crash
            path.fn, path.note = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:70]}"
        paths.append(path)
        if name == "fused" and path.fn is not None:
            path.note = f"{path.fn.folded} BN folded"
    return paths


def batch_invariance(paths: list[Path_], images: torch.Tensor, n: int = 4) -> str:
    """Max |features of the first ``n`` images in the whole batch - the same images one at a
    time|, per path that takes any batch size without recompiling (eager PyTorch is not
    batch-invariant: its kernels and their summation order depend on the batch size)."""
    out = []
    for path in paths:
        if path.fn is None or not (path.name == "eager" or "(runtime)" in path.name):
            continue
        with torch.inference_mode():
            whole = torch.as_tensor(path.fn(images))[:n]
            alone = torch.cat([torch.as_tensor(path.fn(images[i: i + 1])) for i in range(n)])
        diff = (whole - alone).abs().max().item()
        out.append(f"{path.name.replace(' (runtime)', '')} {diff:.2e}")
    return (f"batch {len(images)} vs one image at a time, first {n} images, max|d| f32: "
            + ", ".join(out))


def setup_costs(encoder, size: int, threads: int, images: torch.Tensor) -> list[str]:
    """What ``accelerate(encoder, size, name)`` (with its check against eager) costs before the
    first batch, for each installed runtime: with an empty export cache, then with the cache
    filled; and its first calls at batch 1 and at new batch sizes 3 and 16 (some runtimes
    prepare each input shape once), against the second call at batch 1."""
    from captioner.models.runtime import RUNTIMES, accelerate

    lines = []
    for name in ("onnxruntime", "openvino"):
        if RUNTIMES[name].missing():
            continue
        cache = tempfile.mkdtemp(prefix="bench_runtime_cache_")
        try:
            times = []
            for _ in range(2):
                start = time.perf_counter()
                fast = accelerate(encoder, size, name, threads=threads, cache_dir=cache)
                times.append(time.perf_counter() - start)
            first = []
            for n in (1, 1, 3, 16):
                batch = images[torch.arange(n) % len(images)]
                start = time.perf_counter()
                fast(batch)
                first.append(time.perf_counter() - start)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        lines.append(f"accelerate({name!r}): setup {times[0]:.2f} s with an empty cache, "
                     f"{times[1]:.2f} s from the cache (both with the check on 2 images); calls: "
                     f"first at batch 1 {first[0]:.3f} s, second {first[1]:.3f} s, first at "
                     f"batch 3 {first[2]:.3f} s, first at batch 16 {first[3]:.3f} s")
    return lines


def versions() -> str:
    out = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    for name in ("timm", "onnx", "onnxruntime", "openvino"):
        try:
            out.append(f"{name} {importlib.import_module(name).__version__}")
        except ImportError:
            out.append(f"{name} absent")
    return ", ".join(out)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().strip()
    except OSError:
        return "n/a"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=224, help="input side S")
    p.add_argument("--grid", type=int, default=None,
                   help="pooled grid G (default: the backbone's own map at S, e.g. 14 at 448)")
    p.add_argument("--batch", type=int, default=32, help="images per forward")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads of every runtime (torch, ONNX Runtime, OpenVINO)")
    p.add_argument("--repeats", type=int, default=3, help="timed forwards per path (best counts)")
    p.add_argument("--mm-size", type=int, default=4096, help="side of the peak torch.mm")
    p.add_argument("--target", type=float, default=1.0, help="speedup over eager to PASS")
    p.add_argument("--paths", default="", help="comma-separated name prefixes of the paths to "
                   "time besides eager, e.g. 'channels_last,onnxruntime,openvino f32' "
                   "(default: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    torch.set_num_threads(args.threads)

    from torch.utils.flop_counter import FlopCounterMode

    from captioner.models.encoder import Encoder, get_backbone

    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M} | {cpu_model()} | {os.cpu_count()} cores "
          f"| loadavg {loadavg()}")
    print(versions())
    backbone = get_backbone(args.encoder)
    size = args.image_size
    with torch.inference_mode():
        fmap = nn.Sequential(*backbone.blocks).eval()(torch.zeros(1, 3, size, size))
    grid = args.grid or fmap.shape[-1]
    encoder = Encoder(backbone, grid, trainable_blocks=0).eval()
    images = photos(args.batch, size, backbone.preprocess, args.seed)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        encoder(images[:1])
    flops = counter.get_total_flops()  # per image (2 per multiply-add)
    peaks = matmul_peaks(args.mm_size, 3)
    peak = max(v for k, v in peaks.items() if "cpu" not in k)
    peak_cpu = max(v for k, v in peaks.items() if "cpu" in k)
    print(f"config: encoder={args.encoder} S={size} grid={grid}x{grid} (map "
          f"{fmap.shape[-2]}x{fmap.shape[-1]}) D={encoder.feature_dim} batch={args.batch} "
          f"threads={args.threads} repeats={args.repeats} (best, interleaved)")
    print(f"encoder: {flops / 1e9:.3f} GFLOP/image (FlopCounterMode); float32 matmul "
          f"{args.mm_size}^2, best of 3, {args.threads} thread(s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items())
          + f" GFLOP/s; peak = {peak:.1f} per wall second, {peak_cpu:.1f} per CPU second")

    with torch.inference_mode():
        reference = encoder(images)
    only = [o.strip() for o in args.paths.split(",") if o.strip()]
    paths = build_paths(encoder, size, args.threads, images, only)
    for r in range(args.repeats):  # interleaved: a busy neighbour hurts every path alike
        for path in paths:
            if path.fn is None:
                continue
            with torch.inference_mode():
                c0, t0 = cpu_now(), time.perf_counter()
                out = torch.as_tensor(path.fn(images))
                path.walls.append(time.perf_counter() - t0)
                path.cpus.append(cpu_now() - c0)
            if r == 0:
                ref16, out16 = reference.half().float(), out.half().float()
                path.diff32 = (out - reference).abs().max().item()
                path.diff16 = (out16 - ref16).abs().max().item()
                path.changed16 = (out16 != ref16).float().mean().item() * 100
        print(f"  round {r + 1}/{args.repeats} done, loadavg {loadavg()}", flush=True)

    tolerance = F16_STEP * reference.abs().max().item()
    eager_ips = args.batch / min(paths[0].walls)
    eager_cpu = statistics.median(paths[0].cpus) / args.batch * 1e3
    print(f"same features: max|diff| <= {tolerance:.2e} (2^-11 x max|eager| = "
          f"{reference.abs().max().item():.3f}); float16 step at that value "
          f"{2 * tolerance:.2e}")
    head = (f"{'path':<25}{'img/s':>8}{'x eager':>8}{'cpu ms/img':>11}{'x (cpu)':>8}{'GFLOP/s':>9}"
            f"{'% peak':>7}{'%pk cpu':>8}{'setup s':>8}{'1st s':>7}{'max|d| f32':>11}"
            f"{'max|d| f16':>11}"
            f"{'f16 chg%':>9}  same")
    print(head)
    best = None
    for path in paths:
        if path.fn is None:
            print(f"{path.name:<25}  unavailable: {path.note}")
            continue
        ips = args.batch / min(path.walls)
        cpu_ms = statistics.median(path.cpus) / args.batch * 1e3
        gflops = flops * ips / 1e9
        same = path.diff32 <= tolerance
        print(f"{path.name:<25}{ips:>8.1f}{ips / eager_ips:>8.2f}{cpu_ms:>11.1f}"
              f"{eager_cpu / cpu_ms:>8.2f}{gflops:>9.1f}"
              f"{100 * gflops / peak:>7.1f}{100 * flops / cpu_ms / 1e6 / peak_cpu:>8.1f}"
              f"{path.setup_s:>8.2f}{path.first_s:>7.2f}"
              f"{path.diff32:>11.2e}{path.diff16:>11.2e}{path.changed16:>9.3f}  "
              f"{'yes' if same else 'NO'}{'  ' + path.note if path.note else ''}")
        if same and path is not paths[0] and (best is None or ips > best[1]):
            best = (path.name, ips)
    print("img/s: best of the timed forwards; cpu ms/img: median, all threads of this process "
          "(x (cpu): eager's over the path's; steadier under load, but at 2+ threads it counts "
          "PyTorch's spin-waiting OpenMP threads); % peak: GFLOP/s over the matmul peak, "
          "%pk cpu: the same per CPU second; setup: build/convert/export; 1st: first forward "
          "(torch.compile compiles there)")
    print(batch_invariance(paths, images))
    for line in setup_costs(encoder, size, args.threads, images):
        print(line)
    print(f"loadavg at end: {loadavg()}")
    shutil.rmtree(_INDUCTOR_CACHE, ignore_errors=True)
    speedup = best[1] / eager_ips if best else 0.0
    if best:
        best_cpu = statistics.median(next(p for p in paths if p.name == best[0]).cpus)
        best = (best[0], best[1], eager_cpu / (best_cpu / args.batch * 1e3))
    passed = best is not None and speedup > args.target
    text = (f"fastest path with the same features: {best[0]}, {best[1]:.1f} img/s, "
            f"{speedup:.2f}x eager ({eager_ips:.1f} img/s; {best[2]:.2f}x in CPU time per "
            f"image; target > {args.target}x)"
            if best else "no path gives the same features as eager")
    print_verdict(passed, text, load_before)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
