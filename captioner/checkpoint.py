"""Checkpoints: one safetensors file whose header carries the JSON config, vocabulary and
training state. Loading never unpickles anything; writing is atomic (temp file, then rename).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .fileio import atomic_write
from .validate_checkpoint import validate_parts
from .vocab import Vocabulary

FORMAT = "captioner/1"


@dataclass
class Checkpoint:
    config: ModelConfig
    vocab: Vocabulary
    weights: dict[str, torch.Tensor]  # the model's state dict
    train: Any = None  # training state (JSON values and tensors), None in inference-only files


def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor inside nested dicts/lists by a reference, moving it to ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``flatten``; dict keys and tuples keep their types (optimizer state uses int
    keys and tuple betas)."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
        return {k: unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


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
        raise ValueError(f"{path}: not a captioner checkpoint ({type(exc).__name__}: {exc})") from None
    validate_parts(path, metadata, tensors, with_train=False)  # one line naming a bad field
    config = ModelConfig.from_dict(json.loads(metadata["config"]))
    vocab = Vocabulary.from_json(metadata["vocab"])
    train = json.loads(metadata["train"]) if with_train else None
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    train_state = unflatten(train, tensors) if train is not None else None
    return Checkpoint(config, vocab, weights, train_state)


def read_train_header(path: str | Path) -> dict[str, Any] | None:
    """A checkpoint's training state as plain JSON values, read from its header alone (the
    optimizer's tensors are never read; their places hold None): cheap on a large
    ``last.safetensors``. None when the file is missing, not a checkpoint, or carries none."""
    try:
        with safe_open(str(path), framework="pt") as f:
            train = _plain(json.loads((f.metadata() or {}).get("train") or "null"))
    except Exception:  # not there, or not a safetensors file: nothing to say
        return None
    return train if isinstance(train, dict) else None


def _plain(obj: Any) -> Any:
    """``flatten``'s JSON as plain values, tensor references as None."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return None
        if "__tuple__" in obj:
            return [_plain(v) for v in obj["__tuple__"]]
        if "__dict__" in obj:
            return {str(k): _plain(v) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Build the model a checkpoint describes and load its weights: (model, vocab, checkpoint)."""
    from .models.model import build_model

    ckpt = load_checkpoint(path, with_train=False)
    model = build_model(ckpt.config, pretrained=False)
    missing, unexpected = model.load_state_dict(ckpt.weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match its config "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval(), ckpt.vocab, ckpt
