"""The one record type every dataset reader produces before `prepare` writes it out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ImageRecord:
    """One image and its human (or generated) captions, tokenized.

    ``objects`` and ``word_objects`` exist only for the built-in shapes data: each object has a
    ``box`` [x0, y0, x1, y1] in pixels, and ``word_objects[c][w]`` is the index of the object
    that word ``w`` of caption ``c`` names, or -1.
    """

    image_id: str
    path: Path
    split: str
    captions: list[list[str]]
    objects: list[dict] | None = None
    word_objects: list[list[int]] | None = None
    size: tuple[int, int] | None = field(default=None)  # (width, height) when known


SPLITS = ("train", "val", "test")
