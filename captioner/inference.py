"""The Python API: ``Captioner.load(path).caption(images)`` - what the CLI uses too."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from .checkpoint import load_model
from .data.images import build_transform, load_image
from . import decoding
from .decoding import DecodeOptions, decode
from .models.ensemble import Ensemble, members
from .models.model import CaptionModel
from .models.runtime import EncoderRuntime, accelerate
from .vocab import Vocabulary

ImageInput = str | Path | Image.Image
ModelPaths = str | Path | Sequence[str | Path] | None


def captioner_home() -> Path:
    """Where the demo puts its data and model: $CAPTIONER_HOME or ~/.cache/captioner."""
    return Path(os.environ.get("CAPTIONER_HOME", Path.home() / ".cache" / "captioner"))


def default_model_path() -> Path:
    """The model `caption` and `attend` use without --model: the demo's best checkpoint."""
    return captioner_home() / "demo" / "run" / "best.safetensors"


@dataclass
class Caption:
    text: str
    words: list[str]
    score: float  # ranking score (log-probability, length-normalised when asked)
    log_prob: float
    alpha: torch.Tensor  # (len(words), P) attention of each word
    grid_size: int


def default_device() -> str:
    """Where models run unless told: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_models(paths: ModelPaths = None, device: str | torch.device | None = None
                ) -> tuple[CaptionModel | Ensemble, Vocabulary]:
    """The model one checkpoint describes (default: the demo model), or the ``Ensemble`` of
    several, with the vocabulary they share, on ``device`` (default: ``default_device()``). A
    missing file raises FileNotFoundError saying how to get a model; members with different
    vocabularies raise ValueError naming the file."""
    device = device or default_device()
    if paths is None or isinstance(paths, (str, Path)):
        paths = [paths or default_model_path()]
    paths = [Path(p) for p in paths]
    for path in paths:  # all checked before any is loaded
        if not path.exists():
            raise FileNotFoundError(f"{path}: no model there; train one with `captioner demo` "
                                    "(about 5 minutes on a CPU) or pass --model CHECKPOINT")
    models, vocab = [], None
    for path in paths:
        model, member_vocab, _ = load_model(path, device)
        if vocab is not None and member_vocab != vocab:
            raise ValueError(f"{path}: its vocabulary is not {paths[0]}'s; the models of an "
                             "ensemble must be trained on the same prepared data")
        models.append(model)
        vocab = member_vocab
    return (models[0] if len(models) == 1 else Ensemble(models)), vocab


class Captioner:
    """A trained model (or an ``Ensemble``) with its vocabulary and preprocessing, ready to
    caption images."""

    def __init__(self, model: CaptionModel | Ensemble, vocab: Vocabulary,
                 device: str | torch.device = "cpu"):
        first = model.config.preprocess
        for i, member in enumerate(members(model)):
            if member.config.preprocess != first:
                raise ValueError(f"ensemble member {i + 1} preprocesses images as "
                                 f"{member.config.preprocess}, the first as {first}; "
                                 "captioning images needs one preprocessing")
        self.model, self.vocab, self.device = model.to(device).eval(), vocab, torch.device(device)
        self.transform = build_transform(model.config.preprocess)
        self.no_end_after = tuple(vocab.no_end_after() or ())  # None: no endings recorded

    @classmethod
    def load(cls, path: ModelPaths = None, device: str | None = None) -> "Captioner":
        """Load a checkpoint (default: the demo model), or several as an ensemble
        (``load_models``)."""
        device = device or default_device()
        return cls(*load_models(path, device), device)

    def accelerate(self, runtime: str = "auto", threads: int | None = None
                   ) -> list[EncoderRuntime]:
        """Run each frozen CPU encoder (one per ensemble member) on ``runtime``
        (``models.runtime.accelerate``: ``"auto"`` is the fastest installed runtime that gives
        eager's features, eager when none is); returns them. Setup costs 0.1-1 s per encoder,
        so it pays off from a few batches on: folders and serving, not one photo."""
        done = []
        for member in members(self.model):
            if member.encoder.trainable:  # fine-tuned: its features are not rounded to float16
                continue
            pre = member.config.preprocess
            member.fast_encoder = accelerate(member.encoder.eval(), pre.input_size, runtime,
                                             threads)
            done.append(member.fast_encoder)
        return done

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """An image file or PIL image -> the model's input tensor (3, S, S), exactly as
        `prepare --features` computes it for training."""
        if not isinstance(image, Image.Image):
            image = load_image(image)
        return self.transform(image.convert("RGB"))

    def options(self, options: DecodeOptions | None = None, **fields) -> DecodeOptions:
        """``options`` (default ``DecodeOptions()``) with ``fields`` replaced, bound to this
        model's caption length and vocabulary."""
        options = replace(options, **fields) if options else decoding.DecodeOptions(**fields)
        return options.bind(self.model.config.max_len, self.no_end_after)

    def caption(self, images: ImageInput | Sequence[ImageInput],
                options: DecodeOptions | None = None, batch_size: int = 16, **fields
                ) -> list[Caption] | list[list[Caption]]:
        """Caption one image (returns its n-best list) or a sequence (a list per image).
        Decoding follows ``options``, or ``DecodeOptions`` fields given by name
        (``beam_size=5``)."""
        options = self.options(options, **fields)
        single = isinstance(images, (str, Path, Image.Image))
        items = [images] if single else list(images)
        results: list[list[Caption]] = []
        for start in range(0, len(items), batch_size):
            batch = torch.stack([self.preprocess(x) for x in items[start: start + batch_size]])
            results.extend(self.caption_tensors(batch, options))
        return results[0] if single else results

    def caption_tensors(self, images: torch.Tensor, options: DecodeOptions | None = None
                        ) -> list[list[Caption]]:
        """Caption a batch of preprocessed images (B, 3, S, S)."""
        options = self.options(options)
        with torch.inference_mode():
            features = self.model.encode(images.to(self.device))
        hyps = decode(self.model.decoder, features, options)
        grid = self.model.config.grid_size
        return [[Caption(" ".join(words := self.vocab.decode(h.tokens)), words, h.score,
                         h.log_prob, h.alpha, grid) for h in per_image] for per_image in hyps]
