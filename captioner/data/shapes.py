"""The built-in synthetic dataset: coloured shapes on a textured background, no download.

Every image is generated from ``(seed, split, index)`` alone, so the data is identical on every
machine and any image can be regenerated on its own. Each image has 1-3 objects; each object has
a ground-truth box, and each caption word that names an object records which one, which is what
attention correctness (Liu et al. 2017) needs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..argtypes import int_range
from ..registry import READERS
from .readers import Reader
from .records import SPLITS, ImageRecord

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
}
SIZES = {"small": 0.2, "large": 0.36}  # side of the object's box as a fraction of the image
_SPLIT_CODE = {s: i for i, s in enumerate(SPLITS)}
IMAGE_SIZE = 64  # default image side in pixels
DEFAULT_COUNTS = {"train": 3000, "val": 250, "test": 250}  # images per split (`prepare`, demo)


@dataclass
class ShapeObject:
    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, inclusive-exclusive

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def make_image(seed: int, split: str, index: int, size: int = IMAGE_SIZE
               ) -> tuple[Image.Image, list[ShapeObject], list[list[tuple[str, int]]]]:
    """Generate one image, its objects and 5 captions as (word, object index or -1) lists."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    image = _background(rng, size)
    objects = _place_objects(rng, size, int(rng.integers(1, 4)))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw(draw, obj, rng)
    return image, objects, _captions(rng, objects)


def generate(out_dir: str | Path, counts: dict[str, int], seed: int = 0, size: int = IMAGE_SIZE,
             progress: bool = False) -> list[ImageRecord]:
    """Write the shapes images under ``out_dir/images`` and return their records."""
    from tqdm import tqdm

    image_dir = Path(out_dir) / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    jobs = [(split, i) for split in SPLITS for i in range(counts.get(split, 0))]
    for split, i in tqdm(jobs, desc="shapes", disable=not progress, unit="img"):
        image, objects, captions = make_image(seed, split, i, size)
        path = image_dir / f"{split}_{i:06d}.png"
        image.save(path)
        records.append(ImageRecord(
            image_id=f"{split}_{i:06d}", path=path, split=split,
            captions=[[w for w, _ in cap] for cap in captions],
            objects=[{"shape": o.shape, "color": o.color, "size": o.size, "box": list(o.box)}
                     for o in objects],
            word_objects=[[k for _, k in cap] for cap in captions],
            size=(size, size)))
    return records


@READERS.register("shapes")
class ShapesReader(Reader):
    """`prepare shapes`: generate the images into ``args.out`` and return their records."""

    help = "generate the built-in synthetic shapes dataset"
    min_count = 1  # every word of the tiny grammar is seen often: keep them all

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        for split in SPLITS:
            parser.add_argument(f"--{split}", type=int_range(0), default=DEFAULT_COUNTS[split],
                                help=f"{split} images (default: %(default)s)")
        parser.add_argument("--size", type=int_range(16, 1024), default=IMAGE_SIZE,
                            help="image side in pixels (default: %(default)s)")
        parser.add_argument("--seed", type=int_range(0), default=0,
                            help="(default: %(default)s)")

    @staticmethod
    def read(args: argparse.Namespace) -> list[ImageRecord]:
        counts = {split: getattr(args, split) for split in SPLITS}
        return generate(args.out, counts, args.seed, args.size, progress=not args.no_progress)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.uniform(90, 170, size=3)
    yy, xx = np.mgrid[0:size, 0:size]
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.15, 0.5)
    stripes = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))[..., None] * 18
    noise = rng.normal(0, 10, size=(size, size, 3))
    arr = np.clip(base + stripes + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _place_objects(rng: np.random.Generator, size: int, n: int) -> list[ShapeObject]:
    objects: list[ShapeObject] = []
    while len(objects) < n:
        objects = []
        for _ in range(200):  # rejection sampling of non-overlapping boxes
            if len(objects) == n:
                break
            size_word = str(rng.choice(list(SIZES)))
            side = int(round(SIZES[size_word] * size))
            x0, y0 = (int(v) for v in rng.integers(1, size - side - 1, size=2))
            box = (x0, y0, x0 + side, y0 + side)
            if all(_gap(box, o.box) >= 2 for o in objects):
                objects.append(ShapeObject(str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))),
                                           size_word, box))
    return objects


def _gap(a, b) -> int:
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, rng: np.random.Generator) -> None:
    color = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLORS[obj.color])
    x0, y0, x1, y1 = obj.box
    x1, y1 = x1 - 1, y1 - 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=color)
    elif obj.shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=color)
    else:
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=color)


def _relation(a: ShapeObject, b: ShapeObject) -> list[str]:
    """Where ``a`` is relative to ``b``, as words."""
    dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
    if abs(dx) >= abs(dy):
        return ["to", "the", "left" if dx > 0 else "right", "of"]
    return ["above" if dy > 0 else "below"]


def _captions(rng: np.random.Generator, objects: list[ShapeObject]) -> list[list[tuple[str, int]]]:
    def phrase(k: int, with_size: bool = True) -> list[tuple[str, int]]:
        o = objects[k]
        words = [("a", -1)] + ([(o.size, k)] if with_size else []) + [(o.color, k), (o.shape, k)]
        return words

    def rel(a: int, b: int) -> list[tuple[str, int]]:
        return [(w, -1) for w in _relation(objects[a], objects[b])]

    def w(*words: str) -> list[tuple[str, int]]:
        return [(x, -1) for x in words]

    order = sorted(range(len(objects)), key=lambda k: objects[k].center[0])  # left to right
    if len(objects) == 1:
        templates = [
            phrase(0),
            phrase(0, with_size=False),
            w("there", "is") + phrase(0),
            w("one") + phrase(0)[1:],
            phrase(0) + w("on", "a", "textured", "background"),
            w("a", "single") + phrase(0)[1:],
        ]
    elif len(objects) == 2:
        a, b = order
        templates = [
            phrase(a) + rel(a, b) + phrase(b),
            phrase(b) + rel(b, a) + phrase(a),
            phrase(a) + w("and") + phrase(b),
            w("two", "shapes") + phrase(a) + w("and") + phrase(b),
            phrase(a, False) + rel(a, b) + phrase(b, False),
            w("there", "is") + phrase(b) + rel(b, a) + phrase(a),
        ]
    else:
        a, b, c = order
        templates = [
            phrase(a) + phrase(b) + w("and") + phrase(c),
            w("three", "shapes") + phrase(a) + phrase(b) + w("and") + phrase(c),
            phrase(a) + rel(a, b) + phrase(b) + w("and") + phrase(c),
            phrase(c) + rel(c, a) + phrase(a) + w("and") + phrase(b),
            phrase(a, False) + phrase(b, False) + w("and") + phrase(c, False),
            w("three", "shapes") + phrase(b) + rel(b, c) + phrase(c),
        ]
    chosen = rng.choice(len(templates), size=5, replace=False)
    return [templates[int(i)] for i in sorted(chosen)]
