"""Checkpoints: one safetensors file whose header carries the JSON config, vocabulary and
training state. Loading never unpickles anything; writing is atomic (temp file, then rename).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .checkpoint_format import FORMAT, flatten, plain, unflatten
from .config import ModelConfig
from .fileio import atomic_write
from .models.model import CaptionModel
from .validate_checkpoint import validate_parts
from .vocab import Vocabulary


@dataclass
class Checkpoint:
    config: ModelConfig
    vocab: Vocabulary
    weights: dict[str, torch.Tensor]  # the model's state dict
    train: Any = None  # training state (JSON values and tensors), None in inference-only files
    #: the model the weights were checked against, on the meta device (``load_model`` fills it)
    skeleton: CaptionModel | None = field(default=None, repr=False, compare=False)


def save_checkpoint(path: str | Path, config: ModelConfig, vocab: Vocabulary,
                    weights: dict[str, torch.Tensor], train: Any = None) -> None:
    """Write a checkpoint atomically: a crash mid-write leaves the previous file intact."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in weights.items()}
    train_json = flatten(train, "train", tensors) if train is not None else None
    metadata = {"format": FORMAT, "config": json.dumps(config.to_dict()), "vocab": vocab.to_json(),
                "train": json.dumps(train_json)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(path: str | Path, with_train: bool = True) -> Checkpoint:
    """Read a checkpoint; anything that is not one (a pickle, a truncated file, another
    safetensors file) or whose header disagrees with itself or its tensors (``validate_parts``)
    raises ValueError naming the file and the field, without executing anything."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError("no captioner metadata")
            keys = [k for k in f.keys() if with_train or k.startswith("model.")]
            tensors = {k: f.get_tensor(k) for k in keys}
    except Exception as exc:  # safetensors raises its own error types for foreign files
        raise ValueError(
            f"{path}: not a captioner checkpoint ({type(exc).__name__}: {exc})") from None
    config, vocab, skeleton = validate_parts(path, metadata, tensors, with_train=False)
    train = json.loads(metadata["train"]) if with_train else None
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    train_state = unflatten(train, tensors) if train is not None else None
    return Checkpoint(config, vocab, weights, train_state, skeleton)


def read_train_header(path: str | Path) -> dict[str, Any] | None:
    """A checkpoint's training state as plain JSON values, read from its header alone (the
    optimizer's tensors are never read; their places hold None): cheap on a large
    ``last.safetensors``. None when the file is missing, not a checkpoint, or carries none."""
    try:
        with safe_open(str(path), framework="pt") as f:
            train = plain(json.loads((f.metadata() or {}).get("train") or "null"))
    except Exception:  # not there, or not a safetensors file: nothing to say
        return None
    return train if isinstance(train, dict) else None


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """The model a checkpoint describes with its weights: (model, vocab, checkpoint). The model
    is the one its checks built on the meta device, given the file's tensors (built once, never
    initialised)."""
    ckpt = load_checkpoint(path, with_train=False)
    return materialize(ckpt).to(device).eval(), ckpt.vocab, ckpt


def materialize(ckpt: Checkpoint) -> CaptionModel:
    """``ckpt``'s model as a real one: its meta skeleton filled with the weights."""
    return fill(ckpt.skeleton, ckpt.weights)


def fill(model: CaptionModel, weights: dict[str, torch.Tensor]) -> CaptionModel:
    """A model built on the meta device made real with ``weights``: its tensors allocated
    (uninitialised) on the CPU, then the weights copied in. A copy, not the file's tensors
    themselves: PyTorch's own allocations are aligned as a freshly built model's are, which
    keeps the CPU kernels (and so a resumed run) bit for bit what they were."""
    unfilled = {n for n, _ in [*model.named_parameters(), *model.named_buffers()]} - set(weights)
    assert not unfilled, f"tensors of the model its weights do not hold: {sorted(unfilled)}"
    model.to_empty(device="cpu")
    model.load_state_dict(weights)
    return model
