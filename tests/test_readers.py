"""Dataset formats by name: each registered reader is a `captioner prepare` subcommand."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from PIL import Image

from captioner.cli import main
from captioner.data.dataset import PreparedData
from captioner.data.readers import Reader
from captioner.data.records import ImageRecord
from captioner.registry import READERS
from captioner.vocab import DEFAULT_MIN_COUNT


class ToyReader(Reader):
    """--count grey squares captioned by their shade."""

    help = "grey squares, for a test"
    min_count = 2

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--count", type=int, required=True, help="images per split")

    @staticmethod
    def read(args: argparse.Namespace) -> list[ImageRecord]:
        records = []
        for split in ("train", "val"):
            for i in range(args.count):
                path = Path(args.out) / f"{split}{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (16, 16), (40 * i, 40 * i, 40 * i)).save(path)
                shade = "dark" if i < 2 else "light"
                records.append(ImageRecord(f"{split}{i}", path, split,
                                           [["a", shade, "square"], ["a", "square"]]))
        return records


@pytest.fixture
def toy_format():
    """The format `toy`, registered for one test only."""
    READERS.register("toy", ToyReader)
    yield ToyReader
    READERS.unregister("toy")


def test_a_format_registered_in_a_test_prepares_a_folder(toy_format, tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["prepare", "toy", "--count", "3", "--out", str(out), "--no-progress"]) == 0
    assert "prepared" in capsys.readouterr().out
    data = PreparedData(out)
    assert data.meta["source"] == "toy" and data.meta["splits"] == {"train": 3, "val": 3}
    assert data.meta["min_count"] == 2  # the format's own default
    assert "dark" in data.vocab.stoi and "light" not in data.vocab.stoi  # seen once in train
    assert READERS.names()[-1] == "toy"


def test_a_formats_own_flags_are_required_and_documented(toy_format, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "toy", "--out", str(tmp_path)])
    assert "--count" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    assert "grey squares, for a test" in capsys.readouterr().out


@pytest.mark.parametrize("name", READERS.names())
def test_every_registered_format_is_a_prepare_subcommand_with_the_shared_flags(name, capsys):
    reader = READERS.get(name)
    with pytest.raises(SystemExit) as exc:
        main(["prepare", name, "--help"])
    assert exc.value.code == 0
    usage = capsys.readouterr().out
    for flag in ("--out", "--min-count", "--max-len", "--features", "--no-progress"):
        assert flag in usage
    assert f"(default: {reader.min_count})" in " ".join(usage.split())


def test_builtin_formats_and_their_vocabulary_thresholds():
    assert READERS.names()[:3] == ["shapes", "karpathy", "coco"]
    assert READERS.get("shapes").min_count == 1  # every word of the tiny grammar
    assert READERS.get("karpathy").min_count == READERS.get("coco").min_count == DEFAULT_MIN_COUNT


def test_unknown_or_twice_registered_formats_raise():
    with pytest.raises(ValueError, match="unknown dataset format 'nope'; known: shapes"):
        READERS.get("nope")
    with pytest.raises(ValueError, match="'coco' is already registered"):
        READERS.register("coco", ToyReader)
