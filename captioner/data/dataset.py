"""Reading a prepared folder as Datasets: ``PreparedData``, ``CaptionDataset``, ``collate``.

``data/prepare.py`` writes the folder (``captioner prepare``); its layout::

    DIR/meta.json            source, counts, vocabulary settings, features description
    DIR/vocab.json           the Vocabulary
    DIR/{split}.json         {"images": [{"image_id", "path", "captions", ...}]}
    DIR/features/{split}.f16 (N, P, D) float16, rows in manifest order
    DIR/features/encoder.safetensors  the encoder weights that computed them
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import ModelConfig, Preprocess
from ..fileio import read_json
from ..vocab import Vocabulary
from .images import build_transform, load_image

FEATURE_DTYPE = np.float16


@dataclass
class Sample:
    index: int  # position in the split's manifest
    image_id: str
    inputs: torch.Tensor  # (P, D) features or (3, S, S) image
    captions: list[list[int]]  # encoded: <start> ... <end>
    references: list[list[str]]  # every caption of the image, tokenized
    encoded: bool  # inputs are precomputed features, not an image


@dataclass
class Batch:
    # (B, P, D) features when ``encoded``, else images (B, 3, S, S); for an ensemble
    # (``collate_members``) a tuple of these, one per member, and ``encoded`` a tuple too
    inputs: torch.Tensor | tuple[torch.Tensor, ...]
    captions: torch.Tensor  # (N, L) all captions of the batch's images, padded
    lengths: torch.Tensor  # (N,) tokens incl. <start>/<end>
    image_index: torch.Tensor  # (N,) which image of the batch each caption belongs to
    indices: list[int]
    image_ids: list[str]
    references: list[list[list[str]]]
    encoded: bool | tuple[bool, ...]


def collate(samples: list[Sample]) -> Batch:
    """Stack inputs and pad every caption of every image into one (N, L) tensor."""
    caps = [c for s in samples for c in s.captions]
    lengths = torch.tensor([len(c) for c in caps], dtype=torch.long)
    padded = torch.zeros(len(caps), int(lengths.max()) if caps else 0, dtype=torch.long)
    for i, c in enumerate(caps):
        padded[i, : len(c)] = torch.tensor(c)
    image_index = torch.tensor([i for i, s in enumerate(samples) for _ in s.captions],
                               dtype=torch.long)
    return Batch(torch.stack([s.inputs for s in samples]), padded, lengths, image_index,
                 [s.index for s in samples], [s.image_id for s in samples],
                 [s.references for s in samples], samples[0].encoded)


def collate_members(items: list[tuple[Sample, ...]]) -> Batch:
    """``collate`` for ``MemberDatasets``: per member, its inputs; the captions once."""
    batches = [collate([item[m] for item in items]) for m in range(len(items[0]))]
    return replace(batches[0], inputs=tuple(b.inputs for b in batches),
                   encoded=tuple(b.encoded for b in batches))


class PreparedData:
    """Read access to a prepared folder; a missing or foreign folder raises ValueError."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / "meta.json").is_file():
            raise ValueError(f"{self.root}: not a prepared data folder (no meta.json); "
                             "run `captioner prepare` first")
        self.meta = read_json(self.root / "meta.json")
        self.vocab = Vocabulary.load(self.root / "vocab.json")
        self.max_len: int = self.meta["max_len"]

    @property
    def features(self) -> dict | None:
        """Description of the precomputed features (encoder, grid, preprocess), if any."""
        return self.meta.get("features")

    def feature_config(self) -> dict:
        """ModelConfig fields the features fix: encoder, grid, feature size, preprocessing."""
        f = self.features
        assert f is not None
        return {"encoder": f["encoder"], "grid_size": f["grid_size"],
                "feature_dim": f["feature_dim"],
                "preprocess": Preprocess.from_dict(f["preprocess"])}

    def serves_features(self, config: ModelConfig) -> bool:
        """Whether a model of ``config`` reads this folder's precomputed features instead of
        its images: the features exist, were made by exactly its encoder, grid and
        preprocessing, and its encoder is frozen. The one place this is decided."""
        f = self.features
        return (f is not None and config.fine_tune_blocks == 0
                and all(getattr(config, k) == v for k, v in self.feature_config().items()))

    def manifest(self, split: str) -> list[dict]:
        path = self.root / f"{split}.json"
        if split not in self.meta["splits"] or not path.is_file():
            raise ValueError(f"{self.root}: has no {split!r} split "
                             f"(have: {', '.join(self.meta['splits'])})")
        return read_json(path)["images"]

    def image_path(self, entry: dict) -> Path:
        path = Path(entry["path"])
        return path if path.is_absolute() else self.root / path

    def dataset(self, split: str, config: ModelConfig) -> "CaptionDataset":
        """The split as a model of ``config`` reads it: precomputed features when it
        ``serves_features``, else images preprocessed as the config says."""
        entries = self.manifest(split)
        if self.serves_features(config):
            return CaptionDataset(self, entries, features=self.root / "features" / f"{split}.f16")
        assert config.preprocess is not None, "a built model's config says how to preprocess"
        return CaptionDataset(self, entries, preprocess=config.preprocess)

    def member_datasets(self, split: str, configs: list[ModelConfig]) -> "MemberDatasets":
        """The split as each model of an ensemble reads it (``dataset``); models that read it
        alike share one reading."""
        keys = [None if self.serves_features(c) else repr(c.preprocess) for c in configs]
        readings = {key: self.dataset(split, c) for key, c in zip(keys, configs)}
        return MemberDatasets([readings[key] for key in keys])


class CaptionDataset(Dataset):
    """One item per image, with all its captions encoded."""

    def __init__(self, data: PreparedData, entries: list[dict], features: Path | None = None,
                 preprocess: Preprocess | None = None):
        self.data, self.entries = data, entries
        self.features_path = features
        self.transform = build_transform(preprocess) if preprocess else None
        self._features: np.memmap | None = None
        if features is not None:
            f = data.features
            self.shape = (len(entries), f["grid_size"] ** 2, f["feature_dim"])
            expected = int(np.prod(self.shape)) * np.dtype(FEATURE_DTYPE).itemsize
            if not features.is_file() or features.stat().st_size != expected:
                raise ValueError(f"{features}: missing or wrong size for {self.shape} float16 "
                                 "features; run prepare again")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> Sample:
        return self.sample(i)

    def sample(self, i: int, caption: int | None = None) -> Sample:
        """Image ``i`` with all its captions encoded, or only caption number ``caption``."""
        entry = self.entries[i]
        if self.features_path is not None:
            if self._features is None:  # opened lazily: once per DataLoader worker
                self._features = np.memmap(self.features_path, FEATURE_DTYPE, "r", shape=self.shape)
            inputs = torch.from_numpy(np.asarray(self._features[i], dtype=np.float32))
        else:
            inputs = self.transform(load_image(self.data.image_path(entry)))
        refs = [c.split() for c in entry["captions"]]
        vocab, max_len = self.data.vocab, self.data.max_len
        chosen = refs if caption is None else [refs[caption]]
        return Sample(i, entry["image_id"], inputs, [vocab.encode(r, max_len) for r in chosen],
                      refs, self.features_path is not None)


class MemberDatasets(Dataset):
    """One split read by several models: item i is image i's Sample for each of them (a
    dataset listed twice is read once)."""

    def __init__(self, datasets: list[CaptionDataset]):
        self.datasets = datasets

    def __len__(self) -> int:
        return len(self.datasets[0])

    def __getitem__(self, i: int) -> tuple[Sample, ...]:
        read: dict[int, Sample] = {}
        for d in self.datasets:
            if id(d) not in read:
                read[id(d)] = d[i]
        return tuple(read[id(d)] for d in self.datasets)


class CaptionPairs(Dataset):
    """One item per (image, caption) pair of a CaptionDataset, so that a batch holds captions
    of as many different images as it holds captions."""

    def __init__(self, images: CaptionDataset):
        self.images = images
        self.pairs = [(i, j) for i, entry in enumerate(images.entries)
                      for j in range(len(entry["captions"]))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> Sample:
        return self.images.sample(*self.pairs[k])
