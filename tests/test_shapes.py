"""The built-in shapes data: deterministic images, 5 captions, words aligned with boxes."""

import numpy as np
import pytest
from PIL import Image

from captioner.data.shapes import COLORS, SHAPES, SIZES, generate, make_image

JITTER = 20  # each drawn colour channel is COLORS[c] +- 20
CASES = [(seed, split, i) for seed in (0, 7) for split in ("train", "val", "test")
         for i in range(8)]
RELATIONS = {"left": (0, -1), "right": (0, +1), "above": (1, -1), "below": (1, +1)}


@pytest.fixture(scope="module")
def samples():
    return [(case, *make_image(*case)) for case in CASES]


def test_same_seed_gives_identical_pixels_objects_and_captions():
    img1, objs1, caps1 = make_image(3, "train", 5)
    img2, objs2, caps2 = make_image(3, "train", 5)
    assert np.array_equal(np.asarray(img1), np.asarray(img2))
    assert objs1 == objs2 and caps1 == caps2


def test_different_seed_split_or_index_gives_a_different_image():
    base = np.asarray(make_image(0, "train", 0)[0])
    for other in [(1, "train", 0), (0, "val", 0), (0, "train", 1)]:
        assert not np.array_equal(base, np.asarray(make_image(*other)[0])), other


def test_image_i_does_not_depend_on_how_many_are_generated(tmp_path):
    few = generate(tmp_path / "few", {"train": 2})
    many = generate(tmp_path / "many", {"train": 4, "val": 2})
    assert [r.image_id for r in many] == ["train_000000", "train_000001", "train_000002",
                                          "train_000003", "val_000000", "val_000001"]
    for a, b in zip(few, many):
        assert a.captions == b.captions and a.objects == b.objects
        assert np.array_equal(np.asarray(Image.open(a.path)), np.asarray(Image.open(b.path)))
    on_its_own = np.asarray(make_image(0, "train", 1)[0])
    assert np.array_equal(np.asarray(Image.open(few[1].path).convert("RGB")), on_its_own)


def test_generate_writes_records_with_aligned_word_objects_and_sizes(tmp_path):
    records = generate(tmp_path, {"train": 3, "val": 1, "test": 1}, seed=2, size=48)
    assert [r.split for r in records] == ["train"] * 3 + ["val", "test"]
    for r in records:
        assert r.path.parent == tmp_path / "images" and r.path.is_file()
        assert Image.open(r.path).size == (48, 48) and r.size == (48, 48)
        assert len(r.captions) == len(r.word_objects) == 5
        assert [len(c) for c in r.captions] == [len(w) for w in r.word_objects]
        assert all(set(o) == {"shape", "color", "size", "box"} for o in r.objects)


def test_every_image_has_five_distinct_captions_and_one_to_three_objects(samples):
    counts = set()
    for case, _, objects, captions in samples:
        assert len(captions) == 5, case
        assert len({tuple(w for w, _ in c) for c in captions}) == 5, case
        assert 1 <= len(objects) <= 3
        counts.add(len(objects))
    assert counts == {1, 2, 3}  # the sample covers every template family


def test_words_that_point_at_an_object_name_its_shape_colour_or_size(samples):
    for case, _, objects, captions in samples:
        for caption in captions:
            for word, k in caption:
                if k >= 0:
                    o = objects[k]
                    assert word in (o.shape, o.color, o.size), (case, caption)
                else:  # attribute words never go unaligned
                    assert word not in (*SHAPES, *COLORS, *SIZES), (case, caption)
        for k in range(len(objects)):  # every object is named in some caption
            assert any(j == k for caption in captions for _, j in caption), case


def test_boxes_lie_inside_the_image_and_do_not_overlap(samples):
    for case, image, objects, _ in samples:
        w, h = image.size
        for n, o in enumerate(objects):
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, case
            assert x1 - x0 == y1 - y0 == round(SIZES[o.size] * w), case
            for other in objects[n + 1:]:
                a, b = o.box, other.box
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], case


def test_the_box_centre_has_the_objects_colour(samples):
    for case, image, objects, _ in samples:
        pixels = np.asarray(image).astype(int)
        for o in objects:
            cx, cy = (int(v) for v in o.center)
            assert np.abs(pixels[cy, cx] - COLORS[o.color]).max() <= JITTER, (case, o)


def test_the_objects_pixels_are_inside_its_box(samples):
    for case, image, objects, _ in samples:
        pixels = np.asarray(image)
        h, w = pixels.shape[:2]
        outside_all = np.ones((h, w), bool)
        for o in objects:
            x0, y0, x1, y1 = o.box
            outside_all[y0:y1, x0:x1] = False
        for o in objects:
            x0, y0, x1, y1 = o.box
            cx, cy = (int(v) for v in o.center)
            painted = np.all(pixels == pixels[cy, cx], axis=-1)  # the object's exact fill colour
            inside = painted[y0:y1, x0:x1].sum()
            assert inside >= 0.4 * (x1 - x0) * (y1 - y0), (case, o)  # triangle/diamond: ~half
            assert painted[outside_all].sum() <= 2, (case, o)  # background noise may collide


def test_relation_words_match_the_box_centres(samples):
    checked = 0
    for case, _, objects, captions in samples:
        for caption in captions:
            words = [w for w, _ in caption]
            for pos, word in enumerate(words):
                if word not in RELATIONS:
                    continue
                before = [k for _, k in caption[:pos] if k >= 0]
                after = [k for _, k in caption[pos + 1:] if k >= 0]
                subject, landmark = before[-1], after[0]  # "X <relation> Y"
                axis, sign = RELATIONS[word]
                delta = objects[subject].center[axis] - objects[landmark].center[axis]
                assert sign * delta > 0, (case, words)
                other = objects[subject].center[1 - axis] - objects[landmark].center[1 - axis]
                assert abs(delta) >= abs(other), (case, words)  # the dominant direction
                if word in ("left", "right"):
                    assert words[pos - 2: pos + 2] == ["to", "the", word, "of"], words
                checked += 1
    assert checked >= 10
