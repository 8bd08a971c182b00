"""Shared fixtures: tiny model configs and a small prepared shapes folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from captioner.config import ModelConfig
from captioner.data.prepare import FeatureSpec, prepare
from captioner.data.shapes import generate

SHARED = Path(__file__).resolve().parents[2] / "shared"


def tiny_config(attention: str = "soft", **overrides) -> ModelConfig:
    """hidden 16, vocab 20, 4x4 grid: the whole suite stays in seconds."""
    base = dict(vocab_size=20, encoder="tiny", grid_size=4, embed_dim=8, hidden_dim=16,
                attention_dim=8, dropout=0.0, attention=attention, max_len=8)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A prepared shapes folder (60 train, 12 val, 12 test images), images only."""
    out = tmp_path_factory.mktemp("shapes")
    records = generate(out, {"train": 60, "val": 12, "test": 12}, seed=0)
    prepare(records, out, "shapes", min_count=1, progress=False)
    return out


@pytest.fixture(scope="session")
def shapes_features_dir(tmp_path_factory) -> Path:
    """The same kind of folder with frozen tiny-CNN features (4x4 grid) precomputed."""
    out = tmp_path_factory.mktemp("shapes_feats")
    records = generate(out, {"train": 40, "val": 10, "test": 10}, seed=1)
    prepare(records, out, "shapes", min_count=1, progress=False,
            features=FeatureSpec("tiny", grid_size=4), workers=0)
    return out
