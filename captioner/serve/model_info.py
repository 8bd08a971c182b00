"""What ``GET /v1/model`` says about the loaded model: architecture, preprocessing, data."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..checkpoint import read_train_header
from ..config import ModelConfig
from ..inference import Captioner
from ..models.ensemble import members


def describe_model(cap: Captioner, paths: str | Path | Sequence[str | Path] = ()
                   ) -> dict[str, Any]:
    """The model's description for clients. ``paths`` (the checkpoints, chosen by whoever
    started the server) let it say what the model was trained on, from the run's training
    config. An ensemble is described by its first member, and each member under ``members``."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    described = [_describe(m.config, paths[i] if i < len(paths) else None)
                 for i, m in enumerate(members(cap.model))]
    info = {**described[0], "vocab_size": len(cap.vocab), "device": str(cap.device)}
    if len(described) > 1:
        info["members"] = described
    return info


def _describe(config: ModelConfig, path: Path | None) -> dict[str, Any]:
    return {
        "checkpoint": path.name if path else None,
        "encoder": config.encoder,
        "attention": config.attention,
        "grid_size": config.grid_size,
        "max_len": config.max_len,
        "preprocess": asdict(config.preprocess),
        "trained_on": trained_on(path) if path else None,
    }


def trained_on(path: str | Path) -> dict[str, Any] | None:
    """The prepared folder a checkpoint's run trained on and its source and split sizes, read
    from the run's training config (``best.safetensors`` carries none: its sibling
    ``last.safetensors`` does); None when unknown."""
    path = Path(path)
    for candidate in (path, path.with_name("last.safetensors")):
        train = read_train_header(candidate)
        if train and isinstance(train.get("train_config"), dict):
            data = train["train_config"].get("data") or ""
            info: dict[str, Any] = {"data": Path(data).name or None}
            try:
                meta = json.loads((Path(data) / "meta.json").read_text())
                info.update(source=meta.get("source"), images=meta.get("splits"))
            except (OSError, ValueError):
                pass
            return info
    return None
