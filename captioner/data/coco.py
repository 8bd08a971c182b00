"""Raw COCO caption annotations (captions_train2014.json, ...) read with pycocotools."""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

from ..argtypes import existing_dir, existing_file
from ..fileio import read_json
from ..registry import READERS
from ..vocab import tokenize
from .readers import Reader
from .records import SPLITS, ImageRecord


def read_coco(annotation_file: str | Path, image_dir: str | Path, split: str) -> list[ImageRecord]:
    """Read a COCO captions file into records of one split (COCO files are one split each).

    A malformed file, or one without ``images``/``annotations``, raises ValueError naming it.
    """
    from pycocotools.coco import COCO

    data = read_json(annotation_file)  # clear error for a missing or malformed file
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{annotation_file}: not a COCO annotation file "
                         "(needs 'images' and 'annotations')")
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        records = []
        for image_id in sorted(coco.getImgIds()):
            info = coco.loadImgs(image_id)[0]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            captions = [tokenize(a["caption"]) for a in anns]
            records.append(ImageRecord(str(image_id), Path(image_dir) / info["file_name"], split,
                                       [c for c in captions if c],
                                       size=(info.get("width"), info.get("height"))))
    except (KeyError, TypeError, AttributeError) as exc:  # AttributeError: a non-text caption
        raise ValueError(f"{annotation_file}: missing or malformed field ({exc})") from None
    return records


@READERS.register("coco")
class CocoReader(Reader):
    """`prepare coco`: one split, ``--split`` or the one the file name mentions, else train."""

    help = "raw COCO caption annotations (captions_*.json)"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--annotations", required=True, type=existing_file,
                            help="captions_train2014.json or similar")
        parser.add_argument("--images", required=True, type=existing_dir,
                            help="folder with the images it names")
        parser.add_argument("--split", default=None, choices=list(SPLITS),
                            help="split to file it under (default: from the file name, else "
                                 "train)")

    @staticmethod
    def read(args: argparse.Namespace) -> list[ImageRecord]:
        split = args.split or next((s for s in SPLITS if s in Path(args.annotations).name),
                                   "train")
        return read_coco(args.annotations, args.images, split)
