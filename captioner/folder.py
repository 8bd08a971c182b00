"""Captioning many images fast: folders searched recursively, images decoded in DataLoader
workers while the model runs, batched, and a JSON Lines results file that a killed run resumes.

``find_images`` lists the work, ``caption_batches`` yields each batch's results in order, and
``ResultsFile`` appends them (flushed and fsynced per batch) and knows which images it already
holds, so a re-run captions only the rest and nothing is captioned twice.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .data.images import ImageError, ImageTransform, load_image
from .decoding import DecodeOptions
from .inference import Caption, Captioner

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
LIST_EXTENSIONS = (".txt", ".lst")  # a SOURCE ending so is a list of paths, one a line


def find_images(inputs: Sequence[str | Path]) -> list[str]:
    """The images to caption: files as given (whatever their name), folders searched
    recursively for files with an image extension, sorted; each path once, in order.
    A folder without image files raises ValueError naming it."""
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(str(p) for p in path.rglob("*")
                            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not images:
                raise ValueError(f"{path}: no image files in this folder "
                                 f"({', '.join(IMAGE_EXTENSIONS)}, searched recursively)")
            found.extend(images)
        else:
            found.append(str(item))
    return list(dict.fromkeys(found))


def expand_sources(sources: Sequence[str | Path]) -> list[str]:
    """``find_images`` over SOURCEs that may also be list files and globs. A ``.txt`` or
    ``.lst`` file names one image (or folder) a line: blank lines and ``#`` comments are
    skipped, relative paths are read from the list's folder. A SOURCE that is no existing
    path but holds ``*``, ``?`` or ``[`` is a glob (``**`` recursive): matching folders are
    searched, matching files kept if they have an image extension, each in sorted order. A
    list or glob that names nothing raises ValueError naming it."""
    items: list[str] = []
    for source in sources:
        path = Path(source)
        if path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            named = [str(path.parent / line) if not Path(line).is_absolute() else line
                     for line in lines if line and not line.startswith("#")]
            if not named:
                raise ValueError(f"{path}: an empty list of images (one path a line)")
            items.extend(named)
        elif not path.exists() and any(c in str(source) for c in "*?["):
            matches = []
            for match in sorted(glob.glob(str(source), recursive=True)):
                if os.path.isdir(match):  # searched as a folder is, here even when empty
                    matches.extend(sorted(str(p) for p in Path(match).rglob("*")
                                          if p.suffix.lower() in IMAGE_EXTENSIONS
                                          and p.is_file()))
                elif match.lower().endswith(IMAGE_EXTENSIONS):
                    matches.append(match)
            if not matches:
                raise ValueError(f"{source}: no image files match this pattern")
            items.extend(matches)
        else:
            items.append(str(source))
    return find_images(items)


def escape(text: str) -> str:
    """``text`` on one line of tab-separated output: backslash, tab and line breaks escaped."""
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


@dataclass
class ImageResult:
    """One image's outcome: its n-best captions, or the one-line reason it could not be used."""

    path: str
    captions: list[Caption] | None = None
    error: str | None = None

    def record(self) -> dict:
        """The image's JSON line (the same fields as ``caption --json``)."""
        if self.error is not None:
            return {"image": self.path, "error": self.error}
        return {"image": self.path, "captions": [
            {"caption": c.text, "score": round(c.score, 4)} for c in self.captions or []]}


class _Images(Dataset):
    """Decodes image files in DataLoader workers: ``load_image`` then the model's transform,
    exactly what ``Captioner.preprocess`` does, without sending the model to the workers."""

    def __init__(self, paths: Sequence[str], transform: ImageTransform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.transform(load_image(self.paths[index])), None
        except ImageError as exc:
            return index, None, str(exc)


def _collate(items):
    return items


def caption_batches(cap: Captioner, paths: Sequence[str], options: DecodeOptions,
                    batch_size: int = 16, workers: int = 2) -> Iterator[list[ImageResult]]:
    """Caption ``paths`` in batches of ``batch_size``, decoding in ``workers`` processes (0:
    here) while the model runs; yields each batch's results in the order of ``paths``. An
    unusable image gets an error result; the others are still captioned."""
    if batch_size < 1 or workers < 0:
        raise ValueError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size}, "
                         f"{workers}")
    batches = -(-len(paths) // batch_size)
    workers = min(workers, max(batches - 1, 0))  # one batch leaves nothing to overlap
    loader = DataLoader(_Images(paths, cap.transform), batch_size=batch_size,
                        num_workers=workers, collate_fn=_collate)
    for items in loader:
        good = [(i, x) for i, x, _ in items if x is not None]
        found = cap.caption_tensors(torch.stack([x for _, x in good]), options) if good else []
        by_index = {i: c for (i, _), c in zip(good, found)}
        yield [ImageResult(paths[i], by_index.get(i), error) for i, _, error in items]


class ResultsFile:
    """A JSON Lines results file, one object per image with its ``"image"`` path, that is
    appended to batch by batch. Opening it reads the images it already holds (``done``) and
    cuts off a partial last line that a killed run left."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.done: set[str] = set()
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        with open(self.path, "rb+") as f:
            data = f.read()
            complete = data.rfind(b"\n") + 1
            if complete < len(data):  # a line the last run did not finish
                f.truncate(complete)
        for number, line in enumerate(data[:complete].splitlines(), 1):
            if not line.strip():
                continue
            try:
                self.done.add(json.loads(line)["image"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{self.path} line {number}: not a results line (a JSON object "
                                 "with \"image\"); fix or delete it, or choose another --output"
                                 ) from None

    def append(self, records: Sequence[dict]) -> None:
        """Append ``records`` and make them durable before returning."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r) + "\n" for r in records)
        with open(self.path, "a", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        self.done.update(r["image"] for r in records)

    def close(self) -> None:
        """Nothing to finish: every batch was durable when ``append`` returned (the
        ``close()`` that other results writers, such as a Parquet file, need)."""
