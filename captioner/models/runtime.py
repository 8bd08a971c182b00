"""Fast inference for a frozen encoder on a CPU: the same features, computed by a faster runtime.

``accelerate(encoder, input_size)`` turns an ``Encoder`` in eval mode into an ``EncoderRuntime``,
a callable from (B, 3, S, S) float32 images to the (B, P, D) float32 features the encoder gives,
for any batch size. The backbone's blocks run in the runtime; the adaptive pool to the grid stays
in PyTorch (cheap, and it works for any grid). Runtimes are registered by name in ``RUNTIMES``:

* ``eager``: the encoder's own PyTorch forward (the reference, and the fallback everywhere);
* ``channels_last``: the same PyTorch modules with weights and images in channels-last memory
  format (oneDNN's fast convolution layout on x86; no extra package);
* ``onnxruntime``: the blocks exported to ONNX (needs ``onnx``) run by ONNX Runtime;
* ``openvino``: the same ONNX file run by OpenVINO in float32 (its default on CPUs with bf16
  units would be bfloat16, whose features differ by up to ~1.6; we pin f32).

``"auto"`` takes the first available of ``AUTO_ORDER``. A runtime is a snapshot of the weights
at conversion, checked against eager on two random images (``same_features``) before use.
Conversion (an ONNX export, 0.2-0.6 s for efficientnet_lite0) is cached in a temp folder keyed
by the weights, so a second call only loads it (0.1-0.3 s with the check). Nothing is downloaded.
"""

from __future__ import annotations

import getpass
import hashlib
import importlib
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..fileio import atomic_write
from .encoder import Encoder

#: Largest accepted |runtime - eager| as a fraction of max |eager|: half a float16 step
#: (2^-11), the rounding error `prepare` already puts on every stored feature. Float32
#: reorderings (~1e-5 relative) pass with room to spare; bfloat16 (2^-8) does not.
FEATURE_RTOL = 2.0 ** -11

#: What ``runtime="auto"`` tries (benchmarks/encoder_runtimes.py, 2-core AMD EPYC): ONNX Runtime
#: 1.8-2.8x eager at batch 1, 4.5-9x at 16-32; OpenVINO within -20%..+17% of it (ahead at
#: batch 32, behind at 1-16), but 2.3x the install size and slower to load; channels_last 1.2-2x.
AUTO_ORDER = ("onnxruntime", "openvino", "eager")

MapRunner = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, S, S) -> (B, D, H, W) feature map


class RuntimeUnavailable(UserError):
    """A runtime asked for by name cannot run here (its package is missing)."""


@dataclass(frozen=True)
class Runtime:
    """A registered runtime: the pip packages it imports and how it builds a map runner from
    the backbone's blocks (eval mode, CPU), the input side, the thread count and an ONNX cache
    folder (None: no cache)."""

    packages: tuple[str, ...]
    build: Callable[[nn.Module, int, int, Path | None], MapRunner]

    def missing(self) -> list[str]:
        """The packages this runtime needs that cannot be imported here."""
        out = []
        for name in self.packages:
            try:
                importlib.import_module(name)
            except ImportError:
                out.append(name)
        return out


def _build_eager(blocks: nn.Module, size: int, threads: int, cache: Path | None) -> MapRunner:
    return blocks


def _build_channels_last(blocks: nn.Module, size: int, threads: int, cache: Path | None
                         ) -> MapRunner:
    import copy

    fast = copy.deepcopy(blocks).to(memory_format=torch.channels_last)
    return lambda images: fast(images.contiguous(memory_format=torch.channels_last))


def _build_onnxruntime(blocks: nn.Module, size: int, threads: int, cache: Path | None
                       ) -> MapRunner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3  # errors only
    with _onnx_file(blocks, size, cache) as path:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def _build_openvino(blocks: nn.Module, size: int, threads: int, cache: Path | None) -> MapRunner:
    import openvino as ov

    core = ov.Core()
    with _onnx_file(blocks, size, cache) as path:
        model = core.read_model(str(path))
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
    request, lock = compiled.create_infer_request(), threading.Lock()

    def run(images: torch.Tensor) -> torch.Tensor:
        with lock:  # one request, reused: its output buffer is overwritten by the next call
            return torch.from_numpy(request.infer([images.numpy()])[0].copy())
    return run


RUNTIMES: dict[str, Runtime] = {
    "eager": Runtime((), _build_eager),
    "channels_last": Runtime((), _build_channels_last),
    "onnxruntime": Runtime(("onnxruntime", "onnx"), _build_onnxruntime),
    "openvino": Runtime(("openvino", "onnx"), _build_openvino),
}

#: What ``runtime=`` accepts.
RUNTIME_CHOICES = ("auto", *RUNTIMES)


@dataclass
class EncoderRuntime:
    """A frozen encoder behind a runtime: ``runtime(images)`` maps (B, 3, S, S) float32 images
    (S = ``input_size``, any B) to the encoder's (B, P, D) float32 features."""

    name: str
    input_size: int
    grid_size: int
    feature_dim: int
    threads: int
    setup_s: float  # conversion + session + check against eager, seconds
    run_map: MapRunner
    encoder: Encoder  # the eager module it was converted from (what Ray workers are sent)

    @property
    def device(self) -> torch.device:
        """Where images go: the encoder's device for eager, else the CPU."""
        if self.name == "eager":
            return next(self.encoder.parameters()).device
        return torch.device("cpu")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b, s = images.shape[0], self.input_size
        if images.shape[1:] != (3, s, s):
            raise ValueError(f"the {self.name} encoder runtime takes (B, 3, {s}, {s}) images, "
                             f"got {tuple(images.shape)}")
        if b == 0:
            return images.new_zeros(0, self.grid_size ** 2, self.feature_dim)
        with torch.inference_mode():
            fmap = self.run_map(images.detach().float().contiguous())  # (B, D, H, W)
            pooled = nn.functional.adaptive_avg_pool2d(fmap, self.grid_size)  # (B, D, G, G)
            return pooled.flatten(2).transpose(1, 2)  # (B, P, D), as Encoder.forward

    def describe(self) -> str:
        """One line for logs: the runtime, its threads and its setup time."""
        return (f"encoder runtime: {self.name} ({self.threads} thread(s), "
                f"ready in {self.setup_s:.2f} s)")


def same_features(features: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether ``features`` equal the ``reference`` (eager) features to float16 storage
    precision: max |difference| <= ``FEATURE_RTOL`` * max |reference|."""
    if features.shape != reference.shape:
        return False
    if reference.numel() == 0:
        return True
    scale = reference.abs().max().item()
    return (features - reference).abs().max().item() <= FEATURE_RTOL * scale


#: Exports kept in the cache folder; the least recently used beyond this are deleted.
CACHE_KEEP = 8


def default_cache_dir() -> Path:
    """Where exported ONNX files are kept: a per-user folder in the system's temp dir."""
    return Path(tempfile.gettempdir()) / f"captioner-runtimes-{getpass.getuser()}"


def accelerate(encoder: Encoder, input_size: int, runtime: str = "auto",
               threads: int | None = None, cache: bool = True,
               cache_dir: str | Path | None = None, check: bool = True) -> EncoderRuntime:
    """``encoder`` (eval mode) behind ``runtime`` for (B, 3, ``input_size``, ``input_size``)
    images; ONNX Runtime and OpenVINO use ``threads`` CPU threads (default:
    ``torch.get_num_threads()``), the PyTorch runtimes torch's own setting.

    ``runtime`` is a name in ``RUNTIMES`` or ``"auto"``: the first of ``AUTO_ORDER`` that is
    installed, converts and gives the eager features (``same_features`` on two random images
    when ``check``); if none does, eager, with a one-line note on stderr. A runtime asked for by
    name that cannot run raises ``RuntimeUnavailable`` naming the package to install; one that
    converts but gives other features raises ``RuntimeError``. An encoder off the CPU always
    runs eager under "auto". With ``cache``, ONNX exports are kept in ``cache_dir`` (default
    ``default_cache_dir()``) and reused."""
    if encoder.training:
        raise ValueError("accelerate() needs the encoder in eval mode (call encoder.eval())")
    if runtime != "auto" and runtime not in RUNTIMES:
        raise ValueError(f"unknown encoder runtime {runtime!r}; known: auto, "
                         f"{', '.join(RUNTIMES)}")
    threads = threads or torch.get_num_threads()
    folder = Path(cache_dir or default_cache_dir()) if cache else None
    on_cpu = all(p.device.type == "cpu" for p in encoder.parameters())
    if runtime != "auto":
        if runtime != "eager" and not on_cpu:
            raise ValueError(f"the {runtime} encoder runtime runs on the CPU; this encoder is "
                             "on another device (use runtime 'eager')")
        missing = RUNTIMES[runtime].missing()
        if missing:
            raise RuntimeUnavailable(f"encoder runtime {runtime!r} needs {' and '.join(missing)}"
                                     f" (pip install {' '.join(missing)})")
        return _convert(encoder, runtime, input_size, threads, folder, check, strict=True)
    skipped, failed = [], False
    for name in AUTO_ORDER if on_cpu else ("eager",):
        missing = RUNTIMES[name].missing()
        if missing:
            skipped.append(f"{name} needs {' and '.join(missing)} (pip install "
                           f"{' '.join(missing)})")
            continue
        try:
            result = _convert(encoder, name, input_size, threads, folder, check, strict=False)
        except Exception as exc:  # a conversion that fails must not stop prepare or caption
            result, why = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
        else:
            why = "its features differ from eager's"
        if result is None:
            skipped.append(f"{name} failed ({why})")
            failed = True
            continue
        if skipped and (failed or name == "eager"):
            print(f"note: the encoder runs on {name} ({'; '.join(skipped)})", file=sys.stderr)
        return result
    raise AssertionError("eager is always available")


def _convert(encoder: Encoder, name: str, size: int, threads: int, cache: Path | None,
             check: bool, strict: bool) -> EncoderRuntime | None:
    """Build runtime ``name``; None when ``check`` finds other features and not ``strict``."""
    start = time.perf_counter()
    with torch.no_grad():
        run_map = RUNTIMES[name].build(encoder.blocks, size, threads, cache)
    result = EncoderRuntime(name, size, encoder.grid_size, encoder.feature_dim, threads, 0.0,
                            run_map, encoder)
    if check and name != "eager":
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(2, 3, size, size, generator=generator)
        with torch.inference_mode():
            reference = encoder(images)
        features = result(images)
        if not same_features(features, reference):
            diff = (features - reference).abs().max().item()
            if strict:
                raise RuntimeError(f"encoder runtime {name!r} gives other features than eager "
                                   f"here (max abs difference {diff:.3g}); use runtime 'eager'")
            return None
    result.setup_s = time.perf_counter() - start
    return result


class _onnx_file:
    """Context manager giving the ONNX export of ``blocks`` (dynamic batch, fixed S): from
    the cache when there, else exported (into the cache, or a temp folder removed on exit)."""

    def __init__(self, blocks: nn.Module, size: int, cache: Path | None):
        self.blocks, self.size, self.cache, self._tmp = blocks, size, cache, None

    def __enter__(self) -> Path:
        if self.cache is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="captioner-onnx-")
            path = Path(self._tmp.name) / "encoder.onnx"
            _export(self.blocks, self.size, str(path))
            return path
        path = self.cache / f"{_fingerprint(self.blocks, self.size)}.onnx"
        if path.exists():
            os.utime(path)  # recently used: kept by the pruning below
        else:
            atomic_write(path, lambda tmp: _export(self.blocks, self.size, tmp))
            _prune(self.cache)
        return path

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _prune(folder: Path) -> None:
    """Delete all but the ``CACHE_KEEP`` most recently used exports (another process may be
    pruning too: a file gone meanwhile is fine)."""
    def used(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    for old in sorted(folder.glob("*.onnx"), key=used)[:-CACHE_KEEP]:
        old.unlink(missing_ok=True)


def _fingerprint(blocks: nn.Module, size: int) -> str:
    """A key for the export: the architecture, every weight and buffer, the input side and the
    exporter's versions."""
    import onnx

    h = hashlib.blake2b(digest_size=16)
    h.update(f"{torch.__version__} {onnx.__version__} {size} {blocks!r}".encode())
    for key, value in blocks.state_dict().items():
        h.update(f"{key} {value.dtype} {tuple(value.shape)}".encode())
        h.update(value.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _export(blocks: nn.Module, size: int, path: str) -> None:
    example = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notices
        torch.onnx.export(blocks, (example,), path, dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["map"],
                          dynamic_axes={"images": {0: "batch"}, "map": {0: "batch"}})
