"""Readers and `prepare`: Karpathy and COCO files over real photos, features, bad inputs, CLI."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.cli import main
from captioner.config import ModelConfig
from captioner.data.coco import read_coco
from captioner.data.dataset import FEATURE_DTYPE, PreparedData, collate
from captioner.data.karpathy import read_karpathy
from captioner.data.prepare import FeatureSpec, PrepareError, prepare
from captioner.data.records import ImageRecord
from captioner.vocab import Vocabulary

SHARED = Path(__file__).resolve().parents[2] / "shared"
COCO_VAL2017 = SHARED / "data" / "coco" / "captions_val2017.json"

CAPTIONS = {
    "astronaut": ["An astronaut in a white suit.", "A woman smiles, holding a helmet."],
    "coffee": ["A cup of coffee on a saucer.", "A white cup with a spoon."],
    "chelsea": ["A cat looks to the side.", "An orange cat."],
    "astronaut_flip": ["A smiling woman in a suit.", "An astronaut with a flag."],
    "coffee_flip": ["Coffee in a white cup.", "A cup and a spoon on a table."],
    "chelsea_flip": ["A tabby cat.", "The cat has whiskers."],
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Six real photos (three scikit-image samples and their mirror images), ~96 px, as JPEG."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    (root / "real").mkdir()
    for name, arr in [("astronaut", data.astronaut()), ("coffee", data.coffee()),
                      ("chelsea", data.chelsea())]:
        for suffix, pixels in [("", arr), ("_flip", arr[:, ::-1])]:
            img = Image.fromarray(np.ascontiguousarray(pixels))
            img.thumbnail((96, 96))
            img.save(root / "real" / f"{name}{suffix}.jpg", quality=90)
    good = (root / "real" / "coffee.jpg").read_bytes()
    (root / "real" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "real" / "empty.jpg").write_bytes(b"")
    (root / "real" / "text.jpg").write_text("not a photo\n")
    return root


def karpathy_entry(name: str, split: str, sentences=None) -> dict:
    raws = CAPTIONS.get(name, ["A picture."]) if sentences is None else sentences
    return {"filepath": "real", "filename": f"{name}.jpg", "split": split, "imgid": name,
            "sentences": [{"raw": r, "tokens": r.lower().strip(".").split()} for r in raws]}


def write_karpathy(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"dataset": "tiny", "images": entries}))
    return path


def write_coco(path: Path, names: list[str]) -> Path:
    images, annotations = [], []
    for image_id, name in enumerate(names, start=1):
        images.append({"id": image_id, "file_name": f"{name}.jpg", "width": 96, "height": 64})
        for caption in CAPTIONS.get(name, ["A picture."]):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "caption": caption})
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images,
                                "annotations": annotations}))
    return path


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of the CLI; argparse's usage lines (printed before a bad
    flag's one-line error) are dropped."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # a flag argparse refused
        rc = exc.code
    out, err = capsys.readouterr()
    err = "".join(l for l in err.splitlines(True) if not l.startswith(("usage:", "       ")))
    return rc, out, err


def encoder_of(folder: Path):
    """The frozen encoder `prepare --features` saved, to recompute features independently."""
    from safetensors.torch import load_file

    from captioner.models.encoder import Encoder, get_backbone

    data = PreparedData(folder)
    encoder = Encoder(get_backbone(data.features["encoder"]), data.features["grid_size"], 0)
    encoder.load_state_dict(load_file(folder / "features" / "encoder.safetensors"))
    return encoder.eval(), data.feature_config()["preprocess"]


def assert_memmap_rows_align(folder: Path, split: str) -> np.ndarray:
    from captioner.data.images import build_transform, load_image

    data = PreparedData(folder)
    entries = data.manifest(split)
    f = data.features
    shape = (len(entries), f["grid_size"] ** 2, f["feature_dim"])
    path = folder / "features" / f"{split}.f16"
    assert path.stat().st_size == int(np.prod(shape)) * np.dtype(FEATURE_DTYPE).itemsize
    rows = np.memmap(path, FEATURE_DTYPE, "r", shape=shape).astype(np.float32)
    encoder, pre = encoder_of(folder)
    with torch.no_grad():
        expected = encoder(torch.stack([build_transform(pre)(load_image(data.image_path(e)))
                                        for e in entries])).numpy()
    assert np.allclose(rows, expected, rtol=1e-2, atol=1e-3)
    for i in range(len(entries)):  # each row is its own image's, not a neighbour's
        distances = np.abs(expected - rows[i]).mean(axis=(1, 2))
        assert int(distances.argmin()) == i
    return rows


# ---- readers ----

def test_read_karpathy_folds_restval_into_train_and_joins_image_paths(photos, tmp_path):
    path = write_karpathy(tmp_path / "dataset.json", [
        karpathy_entry("astronaut", "train"), karpathy_entry("coffee", "restval"),
        karpathy_entry("chelsea", "val"), karpathy_entry("coffee_flip", "test")])
    records = read_karpathy(path, photos)
    assert [r.split for r in records] == ["train", "train", "val", "test"]
    assert [r.image_id for r in records] == ["astronaut", "coffee", "chelsea", "coffee_flip"]
    assert records[0].path == photos / "real" / "astronaut.jpg"
    assert records[0].captions[1] == ["a", "woman", "smiles", "holding", "a", "helmet"]


def test_read_karpathy_uses_tokens_when_there_is_no_raw_text(tmp_path):
    entry = {"filename": "x.jpg", "split": "train", "cocoid": 42,
             "sentences": [{"tokens": ["A", "Red", "bus"]}]}
    [record] = read_karpathy(write_karpathy(tmp_path / "d.json", [entry]), tmp_path)
    assert record.captions == [["a", "red", "bus"]] and record.image_id == "42"
    assert record.path == tmp_path / "x.jpg"


def test_read_coco_groups_captions_by_image(photos, tmp_path):
    path = write_coco(tmp_path / "captions_train2014.json", ["chelsea", "coffee"])
    records = read_coco(path, photos / "real", "train")
    assert [r.image_id for r in records] == ["1", "2"]
    assert records[0].path == photos / "real" / "chelsea.jpg"
    assert records[0].captions == [["a", "cat", "looks", "to", "the", "side"], ["an", "orange", "cat"]]
    assert records[1].size == (96, 64) and {r.split for r in records} == {"train"}


KARPATHY_BAD = {
    "malformed JSON": '{"images": [{"split": "train",',
    "not an object": "[1, 2, 3]",
    "no images list": '{"dataset": "x"}',
    "missing filename": '{"images": [{"split": "train", "sentences": [{"raw": "a dog"}]}]}',
    "missing sentences": '{"images": [{"split": "train", "filename": "a.jpg"}]}',
    "missing split": '{"images": [{"filename": "a.jpg", "sentences": []}]}',
    "sentence not an object": '{"images": [{"split": "train", "filename": "a.jpg", '
                              '"sentences": ["a dog"]}]}',
    "unknown split": '{"images": [{"split": "dev", "filename": "a.jpg", "sentences": []}]}',
    "null raw caption": '{"images": [{"split": "train", "filename": "a.jpg", '
                        '"sentences": [{"raw": null}]}]}',
}

COCO_BAD = {
    "malformed JSON": '{"images": [], "annotations": [',
    "no annotations": '{"images": []}',
    "not an object": '"captions"',
    "image without id": '{"images": [{"file_name": "a.jpg"}], "annotations": []}',
    "image without file_name": '{"images": [{"id": 1}], "annotations": '
                               '[{"id": 1, "image_id": 1, "caption": "a dog"}]}',
    "annotation without caption": '{"images": [{"id": 1, "file_name": "a.jpg"}], '
                                  '"annotations": [{"id": 1, "image_id": 1}]}',
    "annotation without image_id": '{"images": [{"id": 1, "file_name": "a.jpg"}], '
                                   '"annotations": [{"id": 1, "caption": "a dog"}]}',
    "null caption": '{"images": [{"id": 1, "file_name": "a.jpg"}], '
                    '"annotations": [{"id": 1, "image_id": 1, "caption": null}]}',
}


@pytest.mark.parametrize("case", KARPATHY_BAD)
def test_bad_karpathy_file_raises_value_error_naming_it(tmp_path, case):
    path = tmp_path / "dataset_bad.json"
    path.write_text(KARPATHY_BAD[case])
    with pytest.raises(ValueError) as err:
        read_karpathy(path, tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("case", COCO_BAD)
def test_bad_coco_file_raises_value_error_naming_it(tmp_path, case):
    path = tmp_path / "captions_bad.json"
    path.write_text(COCO_BAD[case])
    with pytest.raises(ValueError) as err:
        read_coco(path, tmp_path, "val")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("reader", [lambda p: read_karpathy(p, "."),
                                    lambda p: read_coco(p, ".", "val")])
def test_missing_annotation_file_raises_value_error_naming_it(tmp_path, reader):
    with pytest.raises(ValueError, match="nowhere.json: file not found"):
        reader(tmp_path / "nowhere.json")


# ---- prepare through the Python API ----

def test_prepare_karpathy_writes_vocab_manifests_and_meta(photos, tmp_path):
    path = write_karpathy(tmp_path / "dataset.json", [
        karpathy_entry("astronaut", "train"), karpathy_entry("coffee", "restval"),
        karpathy_entry("chelsea", "val"), karpathy_entry("coffee_flip", "test")])
    out = tmp_path / "prepared"
    report = prepare(read_karpathy(path, photos), out, "karpathy", min_count=1, max_len=4,
                     progress=False)
    assert report.kept == {"train": 2, "val": 1, "test": 1} and report.skipped == []
    assert report.summary() == "kept 2 train, 1 val, 1 test; skipped 0 images"

    data = PreparedData(out)
    assert data.meta["splits"] == {"train": 2, "val": 1, "test": 1}
    assert data.meta["source"] == "karpathy" and data.features is None
    train = data.manifest("train")
    assert [e["image_id"] for e in train] == ["astronaut", "coffee"]  # restval is train
    assert train[1]["captions"] == ["a cup of coffee on a saucer", "a white cup with a spoon"]
    assert data.image_path(train[0]) == photos / "real" / "astronaut.jpg"
    # the vocabulary comes from train only
    assert "coffee" in data.vocab.stoi and "cat" not in data.vocab.stoi
    assert data.vocab == Vocabulary.load(out / "vocab.json")


def test_prepared_images_dataset_encodes_captions_up_to_max_len(photos, tmp_path):
    records = read_karpathy(write_karpathy(tmp_path / "d.json", [
        karpathy_entry("astronaut", "train"), karpathy_entry("coffee", "train")]), photos)
    prepare(records, tmp_path / "p", "karpathy", min_count=1, max_len=4, progress=False)
    data = PreparedData(tmp_path / "p")
    from captioner.config import Preprocess

    dataset = data.dataset("train", ModelConfig(len(data.vocab), preprocess=Preprocess(32, 0)))
    batch = collate([dataset[0], dataset[1]])
    assert batch.inputs.shape == (2, 3, 32, 32) and not batch.encoded
    assert batch.captions.shape == (4, 4 + 2) and batch.lengths.max() == 6
    assert batch.image_index.tolist() == [0, 0, 1, 1]
    assert data.vocab.decode(batch.captions[0]) == ["an", "astronaut", "in", "a"]
    assert batch.references[1][0] == ["a", "cup", "of", "coffee", "on", "a", "saucer"]


def test_tiny_features_memmap_rows_align_with_the_manifest(photos, tmp_path):
    names = ["astronaut", "missing", "coffee", "truncated", "chelsea", "astronaut_flip",
             "empty", "coffee_flip"]
    records = read_karpathy(write_karpathy(tmp_path / "d.json", [
        karpathy_entry(n, "val" if n == "coffee_flip" else "train") for n in names]), photos)
    out = tmp_path / "feats"
    spec = FeatureSpec("tiny", grid_size=2, batch_size=3)
    report = prepare(records, out, "karpathy", min_count=1, features=spec, progress=False)
    assert report.kept == {"train": 4, "val": 1}
    assert len(report.skipped) == 3

    data = PreparedData(out)
    assert data.features["grid_size"] == 2 and data.features["feature_dim"] == 128
    train = data.manifest("train")
    assert [e["image_id"] for e in train] == ["astronaut", "coffee", "chelsea", "astronaut_flip"]
    rows = assert_memmap_rows_align(out, "train")
    assert rows.shape == (4, 4, 128)
    assert_memmap_rows_align(out, "val")
    assert not list((out / "features").glob("*.tmp"))

    frozen = ModelConfig(len(data.vocab), fine_tune_blocks=0, **data.feature_config())
    assert data.serves_features(frozen)
    assert not data.serves_features(replace(frozen, fine_tune_blocks=-1))  # trained: images
    dataset = data.dataset("train", frozen)
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch.inputs.shape == (4, 4, 128) and batch.encoded
    assert np.allclose(batch.inputs.numpy(), rows)


def test_prepare_skips_bad_images_and_says_why(photos, tmp_path):
    good = ["astronaut", "coffee"]
    bad = {"missing": "no such image file", "truncated": "corrupt or truncated image",
           "empty": "empty file", "text": "not an image file"}
    records = read_karpathy(write_karpathy(tmp_path / "d.json", [
        karpathy_entry(n, "train") for n in [good[0], *bad, good[1]]]), photos)
    out = tmp_path / "p"
    report = prepare(records, out, "karpathy", min_count=1, progress=False)
    assert report.kept == {"train": 2}
    assert len(report.skipped) == len(bad)
    for name, reason in bad.items():
        [line] = [s for s in report.skipped if f"{name}.jpg" in s]
        assert reason in line and "\n" not in line
    summary = report.summary()
    assert "kept 2 train" in summary and "skipped 4 images" in summary
    for reason in ("1x no such image file", "1x empty file", "1x corrupt or truncated image"):
        assert reason in summary
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"] == report.skipped
    assert [e["image_id"] for e in PreparedData(out).manifest("train")] == good


def test_an_image_without_usable_captions_is_skipped(photos, tmp_path):
    records = read_karpathy(write_karpathy(tmp_path / "d.json", [
        karpathy_entry("astronaut", "train"),
        karpathy_entry("coffee", "train", sentences=["...", "!"])]), photos)
    assert records[1].captions == []
    report = prepare(records, tmp_path / "p", "karpathy", min_count=1, progress=False)
    assert report.kept == {"train": 1}
    assert report.skipped == [f"{photos / 'real' / 'coffee.jpg'}: no captions"]


def test_a_split_with_only_bad_images_is_dropped_and_reported(photos, tmp_path):
    records = read_karpathy(write_karpathy(tmp_path / "d.json", [
        karpathy_entry("astronaut", "train"), karpathy_entry("empty", "val"),
        karpathy_entry("text", "val")]), photos)
    report = prepare(records, tmp_path / "p", "karpathy", min_count=1, progress=False)
    assert report.kept == {"train": 1} and len(report.skipped) == 2
    assert not (tmp_path / "p" / "val.json").exists()
    with pytest.raises(ValueError, match="no 'val' split"):
        PreparedData(tmp_path / "p").manifest("val")


def test_without_train_the_vocabulary_comes_from_the_split_there_is(photos, tmp_path, capsys):
    records = read_karpathy(write_karpathy(tmp_path / "d.json", [
        karpathy_entry("chelsea", "val")]), photos)
    report = prepare(records, tmp_path / "p", "karpathy", min_count=1, progress=False)
    assert report.kept == {"val": 1}
    assert "cat" in Vocabulary.load(tmp_path / "p" / "vocab.json").stoi
    assert "no train images" in capsys.readouterr().err


def test_prepare_with_nothing_usable_raises_instead_of_writing_an_empty_dataset(photos, tmp_path):
    records = [ImageRecord("a", photos / "real" / "missing.jpg", "train", [["a", "cat"]]),
               ImageRecord("b", photos / "real" / "empty.jpg", "val", [["a", "dog"]]),
               ImageRecord("c", photos / "real" / "coffee.jpg", "train", [])]
    with pytest.raises(PrepareError) as err:
        prepare(records, tmp_path / "p", "test", min_count=1, progress=False)
    message = str(err.value)
    assert "no usable images" in message and "skipped 3 images" in message
    assert "\n" not in message
    assert not (tmp_path / "p" / "meta.json").exists()
    with pytest.raises(PrepareError):
        prepare([], tmp_path / "q", "test", progress=False)


def test_preparing_again_into_the_same_folder_leaves_no_stale_split(photos, tmp_path):
    out = tmp_path / "p"
    first = read_karpathy(write_karpathy(tmp_path / "a.json", [
        karpathy_entry("astronaut", "train"), karpathy_entry("chelsea", "test")]), photos)
    prepare(first, out, "karpathy", min_count=1, progress=False)
    second = read_karpathy(write_karpathy(tmp_path / "b.json", [
        karpathy_entry("coffee", "train")]), photos)
    prepare(second, out, "karpathy", min_count=1, progress=False)
    data = PreparedData(out)
    assert data.meta["splits"] == {"train": 1}
    with pytest.raises(ValueError, match="no 'test' split"):
        data.manifest("test")  # not the chelsea entry left over from the first run


# ---- the command line ----

def test_cli_prepares_coco_with_tiny_features_split_named_by_the_file(photos, tmp_path, capsys):
    ann = write_coco(tmp_path / "captions_val2017.json",
                     ["astronaut", "chelsea", "text", "coffee_flip"])
    out = tmp_path / "coco"
    rc, stdout, stderr = run_cli(["prepare", "coco", "--annotations", ann, "--images",
                                  photos / "real", "--out", out, "--min-count", "1",
                                  "--features", "tiny", "--grid", "3", "--batch-size", "2",
                                  "--workers", "0", "--no-progress"], capsys)
    assert rc == 0
    assert stdout.strip() == (f"prepared {out}: kept 3 val; skipped 1 images "
                              "(1x not an image file Pillow can read)")
    assert stderr.splitlines() == [
        f"warning: {out}: no train images; the vocabulary is built from val",
        f"skipped {photos / 'real' / 'text.jpg'}: not an image file Pillow can read"]
    data = PreparedData(out)
    assert data.meta["source"] == "coco" and data.meta["splits"] == {"val": 3}
    assert [e["image_id"] for e in data.manifest("val")] == ["1", "2", "4"]
    assert data.manifest("val")[0]["size"] == [96, 64]
    assert assert_memmap_rows_align(out, "val").shape == (3, 9, 128)


def test_cli_prepares_karpathy_mixing_good_and_bad_images(photos, tmp_path, capsys):
    path = write_karpathy(tmp_path / "dataset.json", [
        karpathy_entry("astronaut", "train"), karpathy_entry("truncated", "restval"),
        karpathy_entry("coffee", "restval"), karpathy_entry("chelsea", "val")])
    out = tmp_path / "k"
    rc, stdout, stderr = run_cli(["prepare", "karpathy", "--json", path, "--images", photos,
                                  "--out", out, "--min-count", "1", "--no-progress"], capsys)
    assert rc == 0
    assert "kept 2 train, 1 val; skipped 1 images" in stdout
    assert "truncated.jpg" in stderr and len(stderr.splitlines()) == 1
    assert PreparedData(out).meta["splits"] == {"train": 2, "val": 1}


def test_cli_prepares_shapes_with_relative_paths_and_object_boxes(tmp_path, capsys):
    out = tmp_path / "shapes"
    rc, stdout, _ = run_cli(["prepare", "shapes", "--train", "4", "--val", "2", "--test", "0",
                             "--size", "32", "--out", out, "--features", "tiny",
                             "--workers", "0", "--no-progress"], capsys)
    assert rc == 0 and "kept 4 train, 2 val" in stdout
    data = PreparedData(out)
    assert data.meta["min_count"] == 1  # shapes default: every word of the tiny grammar
    entry = data.manifest("train")[0]
    assert entry["path"] == "images/train_000000.png"
    assert len(entry["word_objects"]) == len(entry["captions"]) == 5
    assert all(len(w) == len(c.split()) for w, c in zip(entry["word_objects"], entry["captions"]))
    assert assert_memmap_rows_align(out, "train").shape[0] == 4


@pytest.mark.parametrize("stop_at, rest", [
    (5, ["truncated", "astronaut_flip", "coffee_flip", "chelsea_flip"]),  # mid-train
    (8, ["chelsea_flip"])])  # in val, train's features done
@pytest.mark.slow
def test_an_interrupted_prepare_continues_where_it_stopped_when_run_again(
        photos, tmp_path, capsys, monkeypatch, stop_at, rest):
    import captioner.data.prepare as preparing

    names = ["astronaut", "missing", "coffee", "chelsea", "truncated", "astronaut_flip",
             "coffee_flip", "chelsea_flip"]
    path = write_karpathy(tmp_path / "d.json", [
        karpathy_entry(n, "val" if n == "chelsea_flip" else "train") for n in names])

    def cli(out):
        return run_cli(["prepare", "karpathy", "--json", path, "--images", photos, "--out", out,
                        "--min-count", "1", "--features", "tiny", "--grid", "2", "--batch-size",
                        "2", "--workers", "0", "--no-progress"], capsys)

    whole, out = tmp_path / "whole", tmp_path / "out"
    assert cli(whole)[0] == 0
    loaded, load = [], preparing._ImageSet.__getitem__

    def loading(self, i):  # Ctrl-C while loading an image: the batches (of 2) before are done
        loaded.append(self.records[i].image_id)
        if len(loaded) == stop_at and out_of_patience:
            raise KeyboardInterrupt
        return load(self, i)

    monkeypatch.setattr(preparing._ImageSet, "__getitem__", loading)
    out_of_patience = True
    rc, _, stderr = cli(out)
    assert rc == 130 and "run the same command again to continue" in stderr
    loaded.clear()
    out_of_patience = False
    rc, stdout, stderr = cli(out)
    assert rc == 0 and "continuing an interrupted prepare" in stderr
    assert loaded == rest
    for name in ["meta.json", "train.json", "val.json", "vocab.json", "features/train.f16",
                 "features/val.f16", "features/encoder.safetensors"]:
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    assert sorted(p.name for p in (out / "features").iterdir()) == [
        "encoder.safetensors", "train.f16", "val.f16"]  # no progress or partial file left


def test_an_interrupted_prepare_run_again_with_another_grid_encodes_everything_anew(
        photos, tmp_path, monkeypatch):
    import captioner.data.prepare as preparing

    records = read_karpathy(write_karpathy(tmp_path / "d.json", [
        karpathy_entry(n, "train") for n in ["astronaut", "coffee", "chelsea", "coffee_flip"]]),
        photos)
    out, load, loaded = tmp_path / "out", preparing._ImageSet.__getitem__, []

    def loading(self, i):
        loaded.append(i)
        if len(loaded) == calls_before_stop:
            raise KeyboardInterrupt
        return load(self, i)

    monkeypatch.setattr(preparing._ImageSet, "__getitem__", loading)
    calls_before_stop = 3
    with pytest.raises(KeyboardInterrupt):
        prepare(records, out, "karpathy", min_count=1, progress=False,
                features=FeatureSpec("tiny", grid_size=2, batch_size=2), workers=0)
    loaded.clear()
    calls_before_stop = 0
    prepare(records, out, "karpathy", min_count=1, progress=False,
            features=FeatureSpec("tiny", grid_size=3, batch_size=2), workers=0)
    assert loaded == [0, 1, 2, 3]  # the grid 2 rows were of no use
    assert assert_memmap_rows_align(out, "train").shape == (4, 9, 128)


def test_cli_with_nothing_usable_exits_2_with_one_line_on_stderr(photos, tmp_path, capsys):
    path = write_karpathy(tmp_path / "dataset.json", [
        karpathy_entry("missing", "train"), karpathy_entry("empty", "val")])
    rc, stdout, stderr = run_cli(["prepare", "karpathy", "--json", path, "--images", photos,
                                  "--out", tmp_path / "out", "--no-progress"], capsys)
    assert rc == 2 and stdout == ""
    [line] = stderr.splitlines()
    assert line.startswith("captioner prepare: error: no usable images")
    assert "skipped 2 images" in line


@pytest.mark.parametrize("kind", ["karpathy", "coco"])
def test_cli_with_a_bad_annotation_file_exits_2_naming_it(photos, tmp_path, capsys, kind):
    bad = tmp_path / "broken.json"
    bad.write_text("{oops")
    flag = "--json" if kind == "karpathy" else "--annotations"
    for path in (bad, tmp_path / "absent.json"):
        rc, _, stderr = run_cli(["prepare", kind, flag, path, "--images", photos,
                                 "--out", tmp_path / "out", "--no-progress"], capsys)
        [line] = stderr.splitlines()
        assert rc == 2 and line.startswith("captioner prepare") and "error:" in line
        assert str(path) in line


# ---- the shared real COCO annotations ----

@pytest.mark.skipif(not COCO_VAL2017.is_file(),
                    reason=f"shared COCO annotations not found at {COCO_VAL2017}")
def test_real_coco_val2017_annotations_read_and_build_a_vocabulary(tmp_path):
    records = read_coco(COCO_VAL2017, tmp_path, "val")
    assert len(records) == 5000
    assert sum(len(r.captions) for r in records) == 25_014
    assert all(5 <= len(r.captions) <= 7 for r in records)
    vocab = Vocabulary.build((c for r in records for c in r.captions), min_count=5)
    assert 2000 < len(vocab) < 3000
    assert vocab.itos[4] == "a"  # the most common word in COCO captions
    assert {"man", "dog", "table", "street"} <= set(vocab.stoi)
