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
from .decoding import DecodeOptions, decode
from .vocab import Vocabulary

ImageInput = str | Path | Image.Image


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


class Captioner:
    """A trained model with its vocabulary and preprocessing, ready to caption images."""

    def __init__(self, model, vocab: Vocabulary, device: str | torch.device = "cpu"):
        self.model, self.vocab, self.device = model.to(device).eval(), vocab, torch.device(device)
        self.transform = build_transform(model.config.preprocess)
        self.no_end_after = tuple(vocab.no_end_after() or ())  # None: no endings recorded

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | None = None) -> "Captioner":
        """Load a checkpoint (default: the demo model). No model raises FileNotFoundError
        saying how to get one."""
        path = Path(path) if path else default_model_path()
        if not path.exists():
            raise FileNotFoundError(f"{path}: no model there; train one with `captioner demo` "
                                    "(about 5 minutes on a CPU) or pass --model CHECKPOINT")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, vocab, _ = load_model(path, device)
        return cls(model, vocab, device)

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """An image file or PIL image -> the model's input tensor (3, S, S), exactly as
        `prepare --features` computes it for training."""
        if not isinstance(image, Image.Image):
            image = load_image(image)
        return self.transform(image.convert("RGB"))

    def options(self, options: DecodeOptions | None = None, **fields) -> DecodeOptions:
        """``options`` (default ``DecodeOptions()``) with ``fields`` replaced, bound to this
        model's caption length and vocabulary."""
        options = replace(options, **fields) if options else DecodeOptions(**fields)
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
