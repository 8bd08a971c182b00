"""The Ray Data stages `caption` and `prepare` share: image rows, parallel decoding, and the
model actors (one checkpoint or encoder loaded per actor, batches as the service forms them).

A row is ``{"image": the path as the user gave it, "file": that path made absolute}`` plus
whatever the caller carries (``prepare``'s record ``index``). ``decode_images`` adds the
model's input ``pixels`` (3, S, S) and an ``error`` line ("" when the image is fine), with
``load_image`` and the checkpoint's transform: the pixels and messages of the one-machine path.
No module here imports Ray: the functions and classes are handed to ``map_batches``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..config import Preprocess
from ..data.images import ImageError, build_transform, load_image
from ..decoding import DecodeOptions
from ..folder import ImageResult
from ..models.runtime import EncoderRuntime, accelerate

MAX_BLOCKS = 10_000  # input blocks, each one task (and one retry) of a few batches


def image_rows(paths, extra: dict[str, list] | None = None) -> list[dict]:
    """One row per path: the path as given, made absolute against this (the driver's)
    folder, plus ``extra``'s columns. Workers may run elsewhere: they read the absolute path."""
    here = os.getcwd()
    rows = [{"image": str(p), "file": os.path.join(here, str(p))} for p in paths]
    for key, values in (extra or {}).items():
        for row, value in zip(rows, values):
            row[key] = value
    return rows


def block_count(rows: int, batch_size: int) -> int:
    """Input blocks: one per batch, at most MAX_BLOCKS (a block is what a retry redoes)."""
    return max(1, min(-(-rows // batch_size), MAX_BLOCKS))


def _named(message: str, file: str, image: str) -> str:
    """``load_image``'s message about ``file`` told about ``image``, as the user named it."""
    prefix = str(Path(file))
    return str(Path(image)) + message[len(prefix):] if message.startswith(prefix) else message


def decode_images(batch: dict[str, np.ndarray], preprocess: Preprocess) -> dict[str, np.ndarray]:
    """Ray Data stage: read and decode each row's image into ``pixels`` (B, 3, S, S) float32
    (zeros where it failed) and ``error`` (its one line, "" if none); ``file`` is dropped. Any
    failure of one image is its error line, never the batch's."""
    transform = build_transform(preprocess)
    size = preprocess.input_size
    pixels = np.zeros((len(batch["image"]), 3, size, size), np.float32)
    errors = []
    for i, (image, file) in enumerate(zip(batch["image"], batch["file"])):
        try:
            pixels[i] = transform(load_image(file)).numpy()
            errors.append("")
        except ImageError as exc:
            errors.append(_named(str(exc), file, image))
        except Exception as exc:  # one odd file must not fail a million-image job
            errors.append(f"{image}: cannot be decoded ({type(exc).__name__}: {exc})")
    rest = {k: v for k, v in batch.items() if k != "file"}
    return {**rest, "pixels": pixels, "error": np.array(errors, dtype=object)}


def worker_device(gpus: float, cpus: float) -> torch.device:
    """An actor's device: its GPU when it was given one (full float32 there, no TF32, so its
    figures match a CPU's), else the CPU with as many torch threads as CPUs it reserved."""
    if gpus > 0 and torch.cuda.is_available():
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        return torch.device("cuda")
    torch.set_num_threads(max(1, int(cpus)))
    return torch.device("cpu")


def _good(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, torch.Tensor]:
    good = np.array([e == "" for e in batch["error"]], dtype=bool)
    return good, torch.from_numpy(np.ascontiguousarray(batch["pixels"][good]))  # (b, 3, S, S)


class CaptionWorker:
    """Ray Data actor: loads the checkpoint(s) once, then captions each batch of decoded rows
    with ``Captioner.caption_tensors`` into ``record``, the JSON line of ``caption --output``."""

    def __init__(self, model_paths: list[str], options: DecodeOptions, gpus: float = 0.0,
                 cpus: float = 1.0):
        from ..inference import Captioner

        device = worker_device(gpus, cpus)
        self.cap = Captioner.load(model_paths, device=str(device))
        self.options = self.cap.options(options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good, pixels = _good(batch)
        found = iter(self.cap.caption_tensors(pixels, self.options) if len(pixels) else [])
        records = [ImageResult(str(image), next(found) if ok else None,
                               None if ok else str(error)).record()
                   for image, error, ok in zip(batch["image"], batch["error"], good)]
        return {"image": batch["image"],
                "record": np.array([json.dumps(r) for r in records], dtype=object)}


class EncodeWorker:
    """Ray Data actor: holds ``prepare``'s frozen encoder (the driver's own module, weights and
    all) behind the driver's encoder runtime (``runtime``; eager on a GPU) and turns each
    batch's pixels into float16 ``features`` (B, P, D) (zeros for the rows with an error), cast
    exactly as the one-machine path casts them."""

    def __init__(self, encoder: torch.nn.Module, gpus: float = 0.0, cpus: float = 1.0,
                 runtime: str = "eager"):
        self.device = worker_device(gpus, cpus)
        self.module = encoder.to(self.device).eval()
        self.runtime = runtime if self.device.type == "cpu" else "eager"
        self.encoder: EncoderRuntime | None = None  # built on the first batch (its image size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..data.dataset import FEATURE_DTYPE

        good, pixels = _good(batch)
        p, d = self.module.grid_size ** 2, self.module.feature_dim
        features = np.zeros((len(good), p, d), FEATURE_DTYPE)
        if len(pixels):
            if self.encoder is None:
                self.encoder = accelerate(self.module, pixels.shape[-1], self.runtime,
                                          threads=torch.get_num_threads())
            with torch.inference_mode():
                found = self.encoder(pixels.to(self.device))  # (b, P, D)
            features[good] = found.cpu().numpy().astype(FEATURE_DTYPE)
        return {"index": batch["index"], "features": features, "error": batch["error"]}
