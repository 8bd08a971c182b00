"""`captioner prepare`: records -> checked images -> vocabulary, manifests and features."""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import Preprocess
from ..errors import UserError
from ..fields import check, option
from ..fileio import atomic_write, atomic_write_json
from ..models.runtime import RUNTIME_CHOICES, EncoderRuntime, accelerate
from ..registry import ENCODERS
from ..vocab import DEFAULT_MIN_COUNT, Vocabulary
from .dataset import FEATURE_DTYPE
from .images import ImageError, build_transform, load_image
from .progress import PROGRESS, SplitProgress
from .records import SPLITS, ImageRecord


class PrepareError(UserError):
    """Nothing usable remains, or the request cannot be met; the message is one line."""


@dataclass
class FeatureSpec:
    """The frozen-encoder features ``prepare`` computes (``--features ENCODER`` and the flags
    that go with it)."""

    encoder: str = option(choices=ENCODERS, flag="--features", metavar="ENCODER",
                          help="also compute frozen-encoder features once into a float16 memmap")
    grid_size: int | None = option(None, min=1, max=64, flag="--grid", metavar="N",
                                   help="feature grid side (default: the encoder's native grid)")
    image_size: int | None = option(None, min=16, max=4096, help="encoder input side "
                                    "(default: the encoder's own)")
    batch_size: int = option(32, min=1, help="images per encoder batch")
    runtime: str = option("auto", choices=RUNTIME_CHOICES, help="what runs the encoder on a "
                          "CPU: auto (the fastest installed that gives eager's features), or one "
                          "by name")
    seed: int = option(0, min=0, flag="", help="initialises an encoder without pretrained "
                       "weights (tiny) reproducibly")

    def __post_init__(self) -> None:
        check(self)


@dataclass
class PrepareReport:
    kept: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # one line per skipped image

    def summary(self) -> str:
        reasons = Counter(line.split(": ", 1)[-1].split(" (")[0] for line in self.skipped)
        kept = ", ".join(f"{n} {s}" for s, n in self.kept.items()) or "nothing"
        text = f"kept {kept}; skipped {len(self.skipped)} images"
        if reasons:
            text += " (" + "; ".join(f"{n}x {r}" for r, n in reasons.most_common()) + ")"
        return text


class _ImageSet(Dataset):
    """Loads images in DataLoader workers; a bad file yields its error message instead."""

    def __init__(self, records: list[ImageRecord], preprocess: Preprocess | None):
        self.records = records
        self.transform = build_transform(preprocess) if preprocess else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        try:
            image = load_image(self.records[i].path)
        except ImageError as exc:
            return i, str(exc)
        return i, self.transform(image) if self.transform else torch.zeros(0)


def _collate(items):
    """(good indices, their images stacked in the worker: one tensor to pass back, errors)."""
    good = [(i, x) for i, x in items if not isinstance(x, str)]
    stacked = torch.stack([x for _, x in good]) if good else torch.zeros(0)
    return [i for i, _ in good], stacked, [x for _, x in items if isinstance(x, str)], len(items)


def interrupted(out: Path) -> bool:
    """Whether ``out`` holds an unfinished prepare whose encoded features a rerun continues."""
    return not (out / "meta.json").exists() and any((out / "features").glob(f"*{PROGRESS}"))


def claim_output(out: Path, overwrite: bool = False) -> bool:
    """Make ``out`` ready for a new prepared folder: a new or empty folder is fine, and so is an
    interrupted prepare (it continues: see ``prepare``); a prepared folder (it has meta.json) is
    emptied only with ``overwrite`` (an interrupted one too); anything else is refused, one line
    naming it. Returns whether the folder was created here."""
    if not out.exists():
        out.mkdir(parents=True)
        return True
    held, partial = sorted(p.name for p in out.iterdir()), interrupted(out)
    if not held or (partial and not overwrite):
        return False
    if not (out / "meta.json").is_file() and not partial:
        raise ValueError(f"{out}: holds other files ({', '.join(held[:3])}"
                         f"{', ...' if len(held) > 3 else ''}); pick a new or empty --out")
    if not overwrite:
        raise ValueError(f"{out}: already holds a prepared dataset; pass --overwrite to replace "
                         "it or pick another --out")
    for p in out.iterdir():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return False


def prepare(records: list[ImageRecord], out_dir: str | Path, source: str,
            min_count: int = DEFAULT_MIN_COUNT,
            max_len: int = 20, features: FeatureSpec | None = None, progress: bool = True,
            workers: int = 2, engine: EncodeBatches | None = None) -> PrepareReport:
    """Check every image, build the vocabulary on train, write manifests and (optionally)
    encoder features, loading images in ``workers`` processes. Bad images are skipped and
    reported; PrepareError if none is usable.
    Features are written with their progress (``features/SPLIT.progress.json``, after every
    batch): a prepare killed or interrupted mid-way continues where it stopped when run again
    into the same folder with the same images and encoder, and redoes a split where either
    differs. ``engine`` decodes and encodes the images of a split elsewhere (on Ray:
    ``engines.ray_prepare.RayFeatures``; default ``local_batches``, this machine); the
    folder it writes is the same."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = PrepareReport()
    usable = []
    for r in records:
        if r.captions:
            usable.append(r)
        else:
            report.skipped.append(f"{r.path}: no captions")

    encoder, pre, feat_meta = None, None, None
    if features is not None:
        from ..models.encoder import Encoder, get_backbone

        with torch.random.fork_rng():
            torch.manual_seed(features.seed)
            backbone = get_backbone(features.encoder)
        pre = backbone.preprocess
        if features.image_size:
            pre = Preprocess(features.image_size, 0, pre.mean, pre.std)
        grid = features.grid_size or backbone.grid_size
        module = Encoder(backbone, grid, trainable_blocks=0).eval().to(_device())
        encoder = accelerate(module, pre.input_size, features.runtime)
        if progress:
            print(encoder.describe(), file=sys.stderr)
        feat_meta = {"encoder": features.encoder, "grid_size": grid,
                     "feature_dim": backbone.feature_dim, "preprocess": asdict(pre)}

    by_split = {s: [r for r in usable if r.split == s] for s in SPLITS}
    kept_by_split: dict[str, list[ImageRecord]] = {}
    for split, recs in by_split.items():
        if not recs:
            continue
        target = out / "features" / f"{split}.f16" if encoder else None
        kept_by_split[split] = _check_and_encode(recs, split, report, encoder, pre, target,
                                                 features, progress, workers, engine)
    kept_by_split = {s: r for s, r in kept_by_split.items() if r}
    report.kept = {s: len(r) for s, r in kept_by_split.items()}
    if not kept_by_split:
        raise PrepareError(f"no usable images: {report.summary()}")
    if "train" not in kept_by_split:
        print(f"warning: {out}: no train images; the vocabulary is built from "
              f"{next(iter(kept_by_split))}", file=sys.stderr)

    vocab_split = "train" if "train" in kept_by_split else next(iter(kept_by_split))
    vocab = Vocabulary.build((c for r in kept_by_split[vocab_split] for c in r.captions), min_count)
    vocab.save(out / "vocab.json")
    for split in SPLITS:  # a split from an earlier prepare into this folder must not linger
        if split not in kept_by_split:
            (out / f"{split}.json").unlink(missing_ok=True)
            (out / "features" / f"{split}.f16").unlink(missing_ok=True)
    for split, recs in kept_by_split.items():
        atomic_write_json(out / f"{split}.json", {"images": [_entry(r, out) for r in recs]})
    if encoder is not None:
        weights = {k: v.contiguous() for k, v in encoder.encoder.state_dict().items()}
        atomic_write(out / "features" / "encoder.safetensors", lambda tmp: save_file(weights, tmp))
    atomic_write_json(out / "meta.json", {
        "source": source, "splits": report.kept, "min_count": min_count, "max_len": max_len,
        "vocab_size": len(vocab), "features": feat_meta, "skipped": report.skipped[:1000]})
    for leftover in [*(out / "features").glob(f"*{PROGRESS}"), *(out / "features").glob("*.tmp")]:
        leftover.unlink()  # progress of the finished splits, and of any other input's
    return report


def _entry(r: ImageRecord, root: Path) -> dict:
    path = Path(r.path).resolve()
    entry = {"image_id": r.image_id,
             "path": str(path.relative_to(root)) if path.is_relative_to(root) else str(path),
             "captions": [" ".join(c) for c in r.captions]}
    if r.objects is not None:
        entry["objects"] = r.objects
        entry["word_objects"] = r.word_objects
    if r.size is not None:
        entry["size"] = list(r.size)
    return entry


def _device() -> torch.device:
    """The GPU when there is one. Its convolutions run in full float32 (no TF32), so the
    features match what ``caption`` computes on a CPU to float16 precision."""
    if torch.cuda.is_available():
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        return torch.device("cuda")
    return torch.device("cpu")


# (records, preprocess, encoder or None, batch size, workers) -> per batch, in the records'
# order: (indices of the good images, their features (b, P, D) or None, error lines, images)
EncodeBatches = Callable[[list[ImageRecord], Preprocess | None, EncoderRuntime | None, int,
                          int], Iterable[tuple[list[int], torch.Tensor | None, list[str], int]]]


def local_batches(records: list[ImageRecord], pre: Preprocess | None,
                  encoder: EncoderRuntime | None, batch_size: int, workers: int
                  ) -> Iterator[tuple[list[int], torch.Tensor | None, list[str], int]]:
    """This machine's ``EncodeBatches``: images loaded in ``workers`` DataLoader processes
    while this one encodes the previous batch (call it under ``torch.inference_mode()``)."""
    loader = DataLoader(_ImageSet(records, pre), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, pin_memory=torch.cuda.is_available())
    device = encoder.device if encoder is not None else None
    for good, images, errors, count in loader:
        feats = encoder(images.to(device, non_blocking=True)) \
            if encoder is not None and good else None  # (b, P, D)
        yield good, feats, errors, count


def _check_and_encode(records, split, report, encoder, pre, target, spec, progress, workers,
                      engine=None):
    """Load every image once (in worker processes); with an encoder, write the features of the
    good ones in order into a float16 memmap, truncated to the kept rows at the end, recording
    after each batch how far it got (``SplitProgress``) so that a rerun continues from there."""
    batch = spec.batch_size if spec else 64
    kept: list[int] = []
    memmap, tmp, state = None, None, None
    if encoder is not None:
        shape = (len(records), encoder.grid_size ** 2, encoder.feature_dim)
        row_bytes = shape[1] * shape[2] * np.dtype(FEATURE_DTYPE).itemsize
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".f16.tmp")
        state = SplitProgress(target, records, spec.encoder, spec.seed, encoder, pre)
        if state.finished():  # done before an interruption in a later split
            report.skipped.extend(state.skipped)
            return [records[i] for i in state.kept()]
        resumed = state.resumable(tmp, len(records) * row_bytes)
        memmap = np.memmap(tmp, FEATURE_DTYPE, "r+" if resumed else "w+", shape=shape)
        if resumed:
            kept = state.kept()
            report.skipped.extend(state.skipped)
        else:
            state.reset()
    start = done = state.done if state else 0
    batches = (engine if engine is not None and encoder is not None else local_batches)(
        records[start:], pre, encoder, batch, workers)
    bar = tqdm(total=len(records), initial=start, desc=f"{split} images", disable=not progress,
               unit="img")
    with torch.inference_mode():
        for good, feats, errors, count in batches:
            report.skipped.extend(errors)
            good = [start + i for i in good]
            if feats is not None and good:
                memmap[len(kept): len(kept) + len(good)] = feats.cpu().numpy().astype(FEATURE_DTYPE)
            kept.extend(good)
            if state:
                memmap.flush()  # the rows first, then the record that they are there
                state.save(done + count, sorted(set(range(done, done + count)) - set(good)),
                           errors)
            done += count
            bar.update(count)
    bar.close()
    if memmap is not None:
        memmap.flush()
        del memmap
        os.truncate(tmp, len(kept) * row_bytes)
        if kept:
            os.replace(tmp, target)
        else:
            os.unlink(tmp)
        state.finish()
    return [records[i] for i in kept]
