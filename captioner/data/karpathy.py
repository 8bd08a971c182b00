"""Karpathy split JSON reader (dataset_coco.json, dataset_flickr8k.json, dataset_flickr30k.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..argtypes import existing_dir, existing_file
from ..fileio import read_json
from ..registry import READERS
from ..vocab import tokenize
from .readers import Reader
from .records import ImageRecord


def read_karpathy(json_path: str | Path, image_dir: str | Path) -> list[ImageRecord]:
    """Read a Karpathy split file; ``restval`` is folded into ``train`` as is standard.

    Image paths are ``image_dir / filepath / filename``. Captions come from each sentence's
    ``raw`` text when present (tokenized like the file's own ``tokens``), else its ``tokens``.
    A malformed file or an entry missing a field raises ValueError naming the file and entry.
    """
    data = read_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{json_path}: not a Karpathy split file (no 'images' list)")
    records = []
    for n, entry in enumerate(data["images"]):
        where = f"{json_path}: images[{n}]"
        try:
            split = entry["split"]
            filename = entry["filename"]
            sentences = entry["sentences"]
            image_id = entry.get("cocoid", entry.get("imgid", Path(filename).stem))
            captions = [tokenize(s["raw"]) if "raw" in s else [t.lower() for t in s["tokens"]]
                        for s in sentences]
        except (KeyError, TypeError, AttributeError) as exc:  # AttributeError: a non-text caption
            raise ValueError(f"{where}: missing or malformed field ({exc})") from None
        if split == "restval":
            split = "train"
        if split not in ("train", "val", "test"):
            raise ValueError(f"{where}: unknown split {split!r}")
        path = Path(image_dir) / entry.get("filepath", "") / filename
        records.append(ImageRecord(str(image_id), path, split, [c for c in captions if c]))
    return records


@READERS.register("karpathy")
class KarpathyReader(Reader):
    """`prepare karpathy`: ``read_karpathy(--json, --images)``."""

    help = ("a Karpathy split JSON (dataset_coco.json, dataset_flickr8k.json, ...) and its "
            "image folder")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", required=True, type=existing_file,
                            help="the split JSON file")
        parser.add_argument("--images", required=True, type=existing_dir,
                            help="folder the JSON's filepath/filename are relative to")

    @staticmethod
    def read(args: argparse.Namespace) -> list[ImageRecord]:
        return read_karpathy(args.json, args.images)
