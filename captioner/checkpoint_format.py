"""How a checkpoint's safetensors header holds its parts: the format name, the training state
as JSON whose tensors are references into the file's tensors, and the one-line error every
check of a checkpoint raises."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import torch

FORMAT = "captioner/1"


def fail(path: str | Path, name: str, problem: str) -> NoReturn:
    """Refuse a checkpoint: ``ValueError("{path}: field {name}: {problem}")``, one line."""
    raise ValueError(f"{path}: field {name}: {problem}")


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


def plain(obj: Any) -> Any:
    """``flatten``'s JSON as plain values, tensor references as None."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return None
        if "__tuple__" in obj:
            return [plain(v) for v in obj["__tuple__"]]
        if "__dict__" in obj:
            return {str(k): plain(v) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj
